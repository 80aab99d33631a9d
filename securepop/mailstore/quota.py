"""
Mailbox quotas: a limit in octets and in messages, and the current use of
a Maildir kept in its Maildir++ C{maildirsize} file, so a delivery never
rescans the mailbox to learn it.

C{maildirsize} (the Maildir++ convention Courier and Dovecot share): a
first line with the limit (C{<octets>S,<messages>C}), then one line
C{<octets> <messages>} per change: a delivery appends C{"1234 1"}, a POP3
deletion C{"-1234 -1"} (appends of a few octets with C{O_APPEND} do not
interleave).  The use is the sum of the lines.  The file is rebuilt from
the names in C{new/} and C{cur/} (the C{,S=} size field, else one lstat;
no message is read) when it is missing, unreadable, larger than 5120
octets, older than 15 minutes, names another limit, or sums below zero.

Only the inbox (C{new/} and C{cur/}, what POP3 serves) counts; a trash
folder inside the Maildir does not.  The LMTP listener checks and delivers
one message per Maildir at a time; a delivery by another process at the
same moment (C{securepop deliver}) may still pass with it: the limit is
soft by one message, as with Maildir++ everywhere.

Blocking (small reads and writes; a directory scan when rebuilding): call
it off the reactor thread.
"""

import os
import stat
import time
from dataclasses import dataclass

from securepop.fileio import atomic_write
from securepop.mailstore.snapshot import nameFields

MAILDIRSIZE = "maildirsize"
REBUILD_OVER_OCTETS = 5120
REBUILD_AFTER_SECONDS = 15 * 60
_MAX_READ = 64 * 1024


@dataclass(frozen=True)
class Quota:
    """
    A mailbox limit; 0 means none.

    @ivar octets: the stored size limit (message files as stored).
    @ivar messages: the message count limit.
    """

    octets: int = 0
    messages: int = 0

    @property
    def unlimited(self):
        return not self.octets and not self.messages

    def header(self):
        """The first line of C{maildirsize}."""
        return f"{self.octets}S,{self.messages}C"

    def refuses(self, use, octets, messages=1):
        """
        @param use: C{(octets, messages)} in the mailbox now.
        @return: whether adding C{octets} in C{messages} goes over the limit.
        """
        if self.octets and use[0] + octets > self.octets:
            return True
        return bool(self.messages and use[1] + messages > self.messages)

    def describe(self):
        """C{"1048576 octets, 100 messages"}, C{"none"} when unlimited."""
        if self.unlimited:
            return "none"
        parts = []
        if self.octets:
            parts.append(f"{self.octets} octets")
        if self.messages:
            parts.append(f"{self.messages} messages")
        return ", ".join(parts)


NO_QUOTA = Quota()


def parse_quota(text):
    """
    A per-user override as the users file and a directory attribute hold
    it: C{"OCTETS,MESSAGES"} or C{"OCTETS"} (0 = no limit).

    @raise ValueError: anything else.
    """
    parts = text.strip().split(",")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() and p.strip().isascii()
                                           and len(p.strip()) <= 18 for p in parts):
        raise ValueError("a quota is OCTETS or OCTETS,MESSAGES (whole numbers, 0 = none)")
    values = [int(p) for p in parts] + [0]
    return Quota(values[0], values[1])


def format_quota(quota):
    """The inverse of L{parse_quota}."""
    return f"{quota.octets},{quota.messages}"


def scan_use(maildir):
    """
    The use counted from the names in C{new/} and C{cur/}.

    @return: C{(octets, messages)}.
    """
    octets = messages = 0
    for sub in ("new", "cur"):
        try:
            iterator = os.scandir(os.path.join(maildir, sub))
        except FileNotFoundError:
            continue
        with iterator:
            for entry in iterator:
                if entry.name.startswith("."):
                    continue
                size = nameFields(entry.name).get("S")
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if size is None:
                        size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                octets += size
                messages += 1
    return octets, messages


def _read(path):
    """The text and mtime of C{maildirsize}, or None (missing, not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_READ:
            return None
        data = os.read(fd, _MAX_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data, info.st_mtime


def _sum(lines):
    octets = messages = 0
    for line in lines:
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            octets += int(fields[0])
            messages += int(fields[1])
        except ValueError:
            return None
    return octets, messages


def current_use(maildir, quota=NO_QUOTA, now=time.time, rewrite=True):
    """
    The mailbox's use from C{maildirsize}, rebuilding the file when it
    cannot be trusted (see the module docstring).

    @param rewrite: C{False} only counts (a report must not write).
    @return: C{(octets, messages)}; C{(0, 0)} for a Maildir not made yet.
    """
    if not os.path.isdir(maildir):
        return 0, 0
    path = os.path.join(os.fspath(maildir), MAILDIRSIZE)
    found = _read(path)
    if found is not None:
        data, mtime = found
        try:
            lines = data.decode("ascii").split("\n")
        except UnicodeDecodeError:
            lines = None
        fresh = (lines and len(data) <= REBUILD_OVER_OCTETS
                 and now() - mtime < REBUILD_AFTER_SECONDS and lines[0] == quota.header())
        use = _sum(lines[1:]) if fresh else None
        if use is not None and use[0] >= 0 and use[1] >= 0:
            return use
    use = scan_use(maildir)
    if not rewrite:
        return use
    try:
        atomic_write(path, f"{quota.header()}\n{use[0]} {use[1]}\n".encode("ascii"), 0o600)
    except OSError:
        pass  # a read-only or full file system: the count is right for now anyway
    return use


def record(maildir, octets, messages=1):
    """
    Append a change to C{maildirsize} when it exists (a missing file is
    rebuilt by the next L{current_use}).  Best effort: a failure only makes
    the next check rebuild sooner or count less exactly.
    """
    path = os.path.join(os.fspath(maildir), MAILDIRSIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, f"{octets} {messages}\n".encode("ascii"))
    except OSError:
        pass
    finally:
        os.close(fd)
