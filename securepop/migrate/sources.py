"""
Where migrated mail comes from: a POP3 server (L{POP3Source}) or the
Maildir of a Dovecot server with its C{dovecot-uidlist}
(L{DovecotMaildirSource}), for a cut-over by copying files.

A source lists its messages in its own POP3 order as L{SourceMessage}s
(the UIDL the old server gave), hands out a message's octets, and deletes
on request only.
"""

import os
import re
from dataclasses import dataclass

from securepop.mailstore.snapshot import uniquePart
from securepop.mailstore.sizes import crlfSizeOfBytes
from securepop.migrate.pop3 import SourceError

DOVECOT_UIDLIST = "dovecot-uidlist"
DOVECOT_DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"   # Dovecot's pop3_uidl_format default
_FORMAT_RE = re.compile(r"%(%|(0?\d*)(X?)([uvg]))")
MAX_MESSAGE = 1024 * 1024 * 1024


@dataclass
class SourceMessage:
    """
    @ivar key: how the source finds it again (a message number, a path).
    @ivar uidl: the UIDL the old server gave it (L{str}).
    @ivar size: its POP3 size on the old server (CRLF octets), or None.
    """

    key: object
    uidl: str
    size: int = None


class POP3Source:
    """A logged-in L{securepop.migrate.pop3.POP3Client}."""

    unlisted = ()

    def __init__(self, client):
        self.client = client
        self._deleting = False

    def listing(self):
        sizes = self.client.sizes()
        return [SourceMessage(number, uidl, sizes.get(number))
                for number, uidl in self.client.uidl()]

    def fetch(self, message):
        return self.client.retr(message.key)

    def delete(self, messages):
        """DELE each, then QUIT: the server removes them only then."""
        self._deleting = True
        for message in messages:
            self.client.dele(message.key)
        self.client.quit()

    def close(self):
        """
        QUIT when nothing was marked (a polite end); after a DELE that did
        not reach L{delete}'s QUIT, only close: the server then removes
        nothing (RFC 1939).
        """
        if not self._deleting:
            try:
                self.client.quit()
            except SourceError:
                pass
        self.client.close()


def dovecot_uidl(fmt, uid, uidvalidity, guid=""):
    """
    A UIDL as Dovecot's C{pop3_uidl_format} makes it, for a message without
    a C{P} field: C{%u} (uid), C{%v} (uidvalidity), C{%g} (GUID), with an
    optional zero-padded width and C{X} for hex (lower case, as Dovecot
    writes it), C{%%}.

    @raise ValueError: a variable this reader does not know (C{%m}, ...).
    """
    if "%" in _FORMAT_RE.sub("", fmt):
        raise ValueError(f"pop3_uidl_format {fmt!r}: only %u, %v, %g (with a width, X) "
                         f"can be computed from dovecot-uidlist")

    def variable(match):
        if match.group(1) == "%":
            return "%"
        pad, hexa, var = match.group(2), match.group(3), match.group(4)
        if var == "g":
            return guid
        return format(uid if var == "u" else uidvalidity, f"{pad}{'x' if hexa else 'd'}")

    return _FORMAT_RE.sub(variable, fmt)


def parse_dovecot_uidlist(data):
    """
    Parse a C{dovecot-uidlist} (version 3, or 1).

    @param data: its bytes.
    @return: C{(uidvalidity, [(uid, fields, filename)])} with C{fields} a
        dict of the extension fields (C{"P"}: POP3 UIDL, C{"O"}: POP3
        order, C{"G"}: GUID, ...).
    @raise ValueError: not a dovecot-uidlist this reader knows.
    """
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    if not lines:
        raise ValueError("empty dovecot-uidlist")
    header = lines[0].split()
    if not header or header[0] not in ("1", "3"):
        raise ValueError(f"dovecot-uidlist version {header[:1]} is not 1 or 3")
    if header[0] == "1":
        if len(header) < 3:
            raise ValueError("dovecot-uidlist v1 header needs uidvalidity and next uid")
        uidvalidity = int(header[1])
    else:
        fields = {word[0]: word[1:] for word in header[1:] if word}
        if "V" not in fields:
            raise ValueError("dovecot-uidlist header has no V (uidvalidity)")
        uidvalidity = int(fields["V"])
    records = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        if header[0] == "1":
            uid, _, filename = line.partition(" ")
            records.append((int(uid), {}, filename))
            continue
        before, colon, filename = line.partition(" :")
        if not colon:
            before, _, filename = line.partition(" ")
        words = before.split()
        if not words or not words[0].isdigit() or not filename:
            raise ValueError(f"dovecot-uidlist line {number} is not '<uid> [fields] :<file>'")
        fields = {word[0]: word[1:] for word in words[1:]}
        records.append((int(words[0]), fields, filename))
    return uidvalidity, records


class DovecotMaildirSource:
    """
    A Dovecot Maildir on disk, read-only: its messages in Dovecot's POP3
    order (the C{O} field when set, else by uid) with Dovecot's UIDLs (the
    C{P} field when set, else C{pop3_uidl_format} applied to uid and
    uidvalidity).  A file the uidlist does not name yet (no POP3 client
    can have seen it) is reported in L{unlisted} and not migrated.
    """

    def __init__(self, path, uidl_format=DOVECOT_DEFAULT_UIDL_FORMAT):
        self.path = os.fspath(path)
        self.uidl_format = uidl_format
        self.unlisted = []

    def _files(self):
        files = {}
        for sub in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith("."):
                    files[uniquePart(name)] = os.path.join(self.path, sub, name)
        return files

    def listing(self):
        try:
            with open(os.path.join(self.path, DOVECOT_UIDLIST), "rb") as f:
                uidvalidity, records = parse_dovecot_uidlist(f.read())
        except FileNotFoundError:
            raise SourceError(f"{self.path} has no {DOVECOT_UIDLIST}: not a Dovecot "
                              f"Maildir (Courier's UIDLs are not read yet)") from None
        except ValueError as e:
            raise SourceError(f"{os.path.join(self.path, DOVECOT_UIDLIST)}: {e}") from None
        files = self._files()
        found = []
        for uid, fields, filename in records:
            path = files.pop(uniquePart(filename), None)
            if path is None:
                continue  # expunged since
            if "P" in fields:
                uidl = fields["P"]
            else:
                try:
                    uidl = dovecot_uidl(self.uidl_format, uid, uidvalidity, fields.get("G", ""))
                except ValueError as e:
                    raise SourceError(str(e)) from None
            order = int(fields["O"]) if fields.get("O", "").isdigit() else None
            found.append((order is None, order or 0, uid, SourceMessage(path, uidl)))
        self.unlisted = sorted(files.values())
        found.sort(key=lambda item: item[:3])
        return [item[3] for item in found]

    def fetch(self, message):
        with open(message.key, "rb") as f:
            data = f.read(MAX_MESSAGE + 1)
        if len(data) > MAX_MESSAGE:
            raise SourceError(f"{message.key}: over {MAX_MESSAGE} octets")
        message.size = crlfSizeOfBytes(data)
        return data

    def delete(self, messages):
        for message in messages:
            try:
                os.unlink(message.key)
            except FileNotFoundError:
                pass

    def close(self):
        pass
