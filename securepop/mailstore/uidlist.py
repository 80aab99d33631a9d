"""
The UIDLs a Maildir keeps from another server: C{securepop-uidlist.json}
in the Maildir, written by C{securepop migrate}, read by every login.

It maps a message's unique name (L{securepop.mailstore.snapshot.uniquePart})
to the UIDL the old server gave it and to its place in the old server's
order, so clients that leave mail on the server see the same UIDLs in the
same order after the move and download nothing again.  A record is
C{"pending"} from the moment the migration plans the message until its file
is in C{new/} and C{"kept"} after; a pending record whose file exists is as
good as kept (the file was written, the record not yet rewritten).

Blocking (a small read, or an atomic rewrite): off the reactor thread,
except for the one read of a login that opens its Maildir there.
"""

import json
import os
import re
import threading

from securepop.fileio import atomic_write
from securepop.mailstore.sizes import openRegularFile

UIDLIST_NAME = "securepop-uidlist.json"
VERSION = 1
PENDING, KEPT = "pending", "kept"
MAX_BYTES = 256 * 1024 * 1024
_UIDL_RE = re.compile(r"[\x21-\x7e]{1,70}")


def valid_uidl(uidl):
    """
    @return: True when C{uidl} (L{str} or L{bytes}) is a UIDL RFC 1939
        allows: 1 to 70 characters in 0x21-0x7E.
    """
    if isinstance(uidl, bytes):
        try:
            uidl = uidl.decode("ascii")
        except UnicodeDecodeError:
            return False
    return isinstance(uidl, str) and _UIDL_RE.fullmatch(uidl) is not None


class KeptUidl:
    """
    One record: C{uidl} (L{str}), C{order} (L{int}, the old server's order
    among the kept messages), C{state} (L{PENDING} or L{KEPT}).
    """

    __slots__ = ("uidl", "order", "state")

    def __init__(self, uidl, order, state=KEPT):
        self.uidl, self.order, self.state = uidl, order, state

    def __eq__(self, other):
        return (isinstance(other, KeptUidl)
                and (self.uidl, self.order, self.state) == (other.uidl, other.order, other.state))

    def __repr__(self):
        return f"KeptUidl({self.uidl!r}, {self.order!r}, {self.state!r})"


def parse(data):
    """
    @param data: the file's bytes.
    @return: C{{unique: KeptUidl}}; records that are not well formed (an
        invalid UIDL, a non-integer order) are left out, so a login never
        serves a UIDL RFC 1939 forbids.
    @raise ValueError: the file is not a uidlist of this version.
    """
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError("not a securepop uidlist of version 1")
    messages = document.get("messages")
    if not isinstance(messages, dict):
        raise ValueError("no messages object")
    kept = {}
    for unique, record in messages.items():
        if not isinstance(record, list) or len(record) != 3:
            continue
        uidl, order, state = record
        if (valid_uidl(uidl) and isinstance(order, int) and not isinstance(order, bool)
                and state in (PENDING, KEPT) and unique and "/" not in unique):
            kept[unique] = KeptUidl(uidl, order, state)
    return kept


def serialise(kept):
    """
    @param kept: C{{unique: KeptUidl}}.
    @return: the file's bytes.
    @raise ValueError: a record with a UIDL RFC 1939 forbids.
    """
    messages = {}
    for unique, record in sorted(kept.items(), key=lambda item: (item[1].order, item[0])):
        if not valid_uidl(record.uidl):
            raise ValueError(f"UIDL {record.uidl!r} is not 1-70 printable characters")
        messages[unique] = [record.uidl, record.order, record.state]
    return json.dumps({"version": VERSION, "messages": messages},
                      indent=0, ensure_ascii=True).encode("ascii")


# The last file read per Maildir, by (inode, size, mtime): a login reads
# the file only when it changed.
_memo = {}
_memo_lock = threading.Lock()
_MEMO_MAX = 10_000


def read(maildir_path):
    """
    The kept UIDLs of the Maildir at C{maildir_path}: C{{}} when it has
    none, or when the file is unreadable or damaged (the messages then get
    UIDLs from their names, as without the file).

    @rtype: C{dict} of L{str} to L{KeptUidl}
    """
    path = os.path.join(os.fspath(maildir_path), UIDLIST_NAME)
    try:
        fd = openRegularFile(path)
    except OSError:
        with _memo_lock:
            _memo.pop(path, None)
        return {}
    try:
        st = os.fstat(fd)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with _memo_lock:
            cached = _memo.get(path)
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        with os.fdopen(fd, "rb") as f:
            fd = None
            data = f.read(MAX_BYTES)
        kept = parse(data)
    except (OSError, ValueError):
        return {}
    finally:
        if fd is not None:
            os.close(fd)
    with _memo_lock:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[path] = (key, kept)
    return dict(kept)


def write(maildir_path, kept):
    """
    Replace the Maildir's uidlist atomically (a reader sees the old file or
    the new one).  Blocking: writes and fsyncs.
    """
    atomic_write(os.path.join(os.fspath(maildir_path), UIDLIST_NAME), serialise(kept), 0o600)
