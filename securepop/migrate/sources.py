"""
Where migrated mail comes from: a POP3 server (L{POP3Source}), or the
Maildir of a Dovecot server with its C{dovecot-uidlist}
(L{DovecotMaildirSource}) or of a Courier server with its
C{courierpop3dsizelist} (L{CourierMaildirSource}), for a cut-over by
copying files (L{maildir_source} tells which).

A source lists its messages in its own POP3 order as L{SourceMessage}s
(the UIDL the old server gave), hands out a message's octets, and deletes
on request only.
"""

import os
import re
from dataclasses import dataclass

from securepop.mailstore.snapshot import uniquePart
from securepop.mailstore.uidlist import valid_uidl
from securepop.mailstore.sizes import crlfSizeOfBytes
from securepop.migrate.pop3 import SourceError

DOVECOT_UIDLIST = "dovecot-uidlist"
COURIER_SIZELIST = "courierpop3dsizelist"
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


def _maildir_files(path):
    """C{{unique part: path}} of the messages in C{cur/} and C{new/}."""
    files = {}
    for sub in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(path, sub))
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                files[uniquePart(name)] = os.path.join(path, sub, name)
    return files


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
        return _maildir_files(self.path)

    def listing(self):
        try:
            with open(os.path.join(self.path, DOVECOT_UIDLIST), "rb") as f:
                uidvalidity, records = parse_dovecot_uidlist(f.read())
        except FileNotFoundError:
            raise SourceError(f"{self.path} has no {DOVECOT_UIDLIST}: not a Dovecot "
                              f"Maildir") from None
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


# Courier (courier-imap's imap/pop3dserver.c, as in svarshavchik/courier-libs
# at 9c45d9ad13fdf439d44d7443ae75da15ea0223ed) keeps its POP3 state in the
# Maildir's courierpop3dsizelist, written by savepop3dlist():
#     "/%d %lu %lu\n"       LISTVERSION (3; 2 is still read), next uid, uidvalidity
#     "%s %lu %lu:%lu:%d\n" file name, LIST size, uid, uidvalidity, is-UTF-8
# (version 2 lines end at the uidvalidity: "%s %lu %lu:%lu").  readpop3dlist()
# splits a line at its last two spaces (a name may hold a space).  Its
# print_uidl() answers UIDL with "UID%lu-%lu" (uid, uidvalidity), "UID%lu"
# when the uidvalidity is 0, and for uid 0 (the "VERSION 0 UIDL" of
# Courier before 0.43, whose sizelist had no "/" header and lines
# "<name> <size>") the file name up to ":" with every octet outside
# 0x21-0x7E and ' " + written "+%02X".  Messages are numbered in cmpmsgs()
# order: the number the name starts with (its delivery time), then the
# name up to the ":" of its flags; savepop3dlist() writes the lines in that
# order, so for a file Courier wrote it is also the line order.
_COURIER_HEADER_RE = re.compile(r"/(\d+) (\d+)(?: (\d+))?\s*")
_COURIER_UID_RE = re.compile(r"(\d+):(\d+)(?::\d+)?")
_LEADING_NUMBER_RE = re.compile(r"\d*")


def courier_filename_uidl(name):
    """
    The UIDL Courier's C{print_uidl} gives a message without a uid: its
    file name up to the first C{:}, with octets outside 0x21-0x7E and
    C{' " +} written C{+%02X}.
    """
    unique = os.fsencode(name).split(b":", 1)[0]
    return "".join(f"+{octet:02X}" if octet < 0x21 or octet > 0x7E or octet in b"'\"+"
                   else chr(octet) for octet in unique)


def courier_order_key(name):
    """Courier's C{cmpmsgs}: leading number, then the name up to its C{:}."""
    number = _LEADING_NUMBER_RE.match(name).group()
    colon = name.find(":")
    return (int(number) if number else 0, name if colon < 0 else name[:colon + 1])


def parse_courier_sizelist(data):
    """
    Parse a C{courierpop3dsizelist} (version 3 or 2, or the header-less
    format before Courier 0.43).

    @param data: its bytes.
    @return: C{[(line number, file name, size, uidl)]} in Courier's POP3
        order.
    @raise ValueError: a header or line this reader does not know, or a
        UIDL RFC 1939 does not allow (the message names the line).
    """
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("empty file")
    first = 1
    version = None
    if lines[0].startswith("/"):
        header = _COURIER_HEADER_RE.fullmatch(lines[0])
        if not header or header.group(1) not in ("2", "3"):
            raise ValueError(f"line 1: header {lines[0][:80]!r} is not '/3 <nextuid> "
                             f"<uidvalidity>' (or /2)")
        version = int(header.group(1))
        first = 2
    records = []
    for number, line in enumerate(lines[first - 1:], first):
        words = line.rsplit(" ", 2 if version else 1)
        if version:
            good = (len(words) == 3 and words[0] and words[1].isdigit()
                    and _COURIER_UID_RE.fullmatch(words[2]))
            expected = "'<file> <size> <uid>:<uidvalidity>[:<utf8>]'"
        else:
            good = len(words) == 2 and words[0] and words[1].isdigit()
            expected = "'<file> <size>'"
        if not good:
            raise ValueError(f"line {number}: {line[:80]!r} is not {expected}")
        uid = uidvalidity = 0
        if version:
            uid, uidvalidity = (int(n) for n in good.group(1, 2))
        if uid:
            uidl = f"UID{uid}-{uidvalidity}" if uidvalidity else f"UID{uid}"
        else:
            uidl = courier_filename_uidl(words[0])
        if not valid_uidl(uidl):
            raise ValueError(f"line {number}: UIDL {uidl[:80]!r} is not 1-70 printable "
                             f"characters (RFC 1939)")
        records.append((number, words[0], int(words[1]), uidl))
    records.sort(key=lambda record: courier_order_key(record[1]))
    return records


class CourierMaildirSource:
    """
    A Courier Maildir on disk, read-only: its messages in courier-pop3d's
    order with its UIDLs, from C{courierpop3dsizelist}.  A file the list
    does not name (Courier would give it a new uid at the next login) is
    reported in L{unlisted} and not migrated.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.unlisted = []

    def listing(self):
        sizelist = os.path.join(self.path, COURIER_SIZELIST)
        try:
            with open(sizelist, "rb") as f:
                records = parse_courier_sizelist(f.read())
        except FileNotFoundError:
            raise SourceError(f"{self.path} has no {COURIER_SIZELIST}: not a Courier "
                              f"Maildir") from None
        except ValueError as e:
            raise SourceError(f"{sizelist}: {e}") from None
        files = _maildir_files(self.path)
        found = []
        for _, filename, size, uidl in records:
            path = files.pop(uniquePart(filename), None)
            if path is not None:      # else expunged since
                found.append(SourceMessage(path, uidl, size))
        self.unlisted = sorted(files.values())
        return found

    def fetch(self, message):
        """The file's octets; the size stays Courier's LIST size, to compare."""
        with open(message.key, "rb") as f:
            data = f.read(MAX_MESSAGE + 1)
        if len(data) > MAX_MESSAGE:
            raise SourceError(f"{message.key}: over {MAX_MESSAGE} octets")
        return data

    delete = DovecotMaildirSource.delete
    close = DovecotMaildirSource.close


def maildir_source(path, uidl_format=DOVECOT_DEFAULT_UIDL_FORMAT):
    """
    The source for a Maildir copied from the old server: Dovecot's when it
    holds a C{dovecot-uidlist}, else Courier's when it holds a
    C{courierpop3dsizelist}.

    @raise SourceError: it holds neither (both are named).
    """
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, DOVECOT_UIDLIST)):
        return DovecotMaildirSource(path, uidl_format)
    if os.path.exists(os.path.join(path, COURIER_SIZELIST)):
        return CourierMaildirSource(path)
    raise SourceError(f"{path} has neither {DOVECOT_UIDLIST} (Dovecot) nor "
                      f"{COURIER_SIZELIST} (Courier): no old UIDLs to keep")
