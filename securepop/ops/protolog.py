"""
The protocol log (Exchange's ProtocolLogEnabled): every command and
response of every session, one line each, for support cases.

Line format (UTC time, session id, peer, user, direction C or S, line)::

    2025-01-31T12:00:00.123Z s=1f2a-7 peer=192.0.2.7 user=alice C RETR 1

A multi-line reply (LIST, UIDL, CAPA, the AUTH list) is one entry: its
first line, then how many lines and octets followed
(C{S +OK [+100001 lines, 988898 octets]}), so a LIST of a big maildrop
costs one write, not one per message.  RETR and TOP bodies are never logged,
only their status line.

The protocol already replaces credentials before it calls L{ProtocolLog.write};
this writer redacts again (PASS, APOP digests, AUTH initial responses, SASL
continuations, anything unrecognised), so a change in the protocol cannot
leak a password into a file handed to a vendor.  The file is opened in
append mode, mode 0600, one C{write} per line (several worker processes may
share it), and reopened by L{ProtocolLog.reopen} on SIGHUP after logrotate
has moved it.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import weakref

from securepop import events

MAX_LINE = 512

# Commands whose arguments are safe to keep, as the client sent them.
_PLAIN_COMMANDS = frozenset(
    b"USER STLS CAPA QUIT NOOP STAT LIST UIDL RETR TOP DELE RSET".split())
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")


def _escape(data: bytes) -> str:
    return _UNPRINTABLE.sub(lambda m: b"\\x%02x" % m.group()[0], data).decode("ascii")


def redact_client_line(line: bytes) -> bytes:
    """
    What the log may show of a client line: no password, digest, SASL
    response or unknown text (an unknown line may be a SASL continuation the
    protocol did not mark).
    """
    if line.startswith(b"<") and line.endswith(b">") and len(line) < 64:
        return line                       # the protocol's own markers
    parts = line.split(b" ")
    command = parts[0].upper()
    if command == b"PASS":
        return b"PASS <redacted>"
    if command == b"APOP":
        return b"APOP " + parts[1][:64] + b" <redacted>" if len(parts) > 1 else b"APOP"
    if command == b"AUTH":
        if len(parts) > 2:
            return b"AUTH " + parts[1][:32] + b" <redacted>"
        return line[:64]
    if command in _PLAIN_COMMANDS:
        return b" ".join(p[:64] for p in parts[:3])
    return b"<unrecognised line redacted, %d octets>" % len(line)


def redact_server_line(line: bytes) -> bytes:
    """SASL challenges (C{+ ...}) carry server proofs and NTLM target data."""
    if line.startswith(b"+ ") or line == b"+":
        return b"+ <sasl challenge, %d octets>" % max(len(line) - 2, 0)
    return line


class ProtocolLog:
    """
    Writes the protocol log file.

    @param path: the file (C{[log] protocol_log}).
    @param now: returns the wall-clock time (seconds), for tests.
    """

    def __init__(self, path, now=time.time):
        self.path = os.fspath(path)
        self._now = now
        self._ids = weakref.WeakKeyDictionary()
        self._counter = itertools.count(1)
        self._prefix = "%x" % os.getpid()
        self._fd = None
        self.open()

    def open(self):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o600)

    def reopen(self):
        """After logrotate moved the file: write to a new one at C{path}."""
        old, self._fd = self._fd, None
        try:
            self.open()
        except OSError as e:
            self._fd = old
            events.emit("protocol_log.reopen_failed", "error", path=self.path,
                        error=e.strerror or str(e))
            return False
        if old is not None:
            os.close(old)
        return True

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def session_id(self, session) -> str:
        sid = self._ids.get(session)
        if sid is None:
            sid = self._ids[session] = f"{self._prefix}-{next(self._counter)}"
        return sid

    def format(self, session, direction, line, suffix="") -> bytes:
        if isinstance(line, str):
            line = line.encode("utf-8", "replace")
        if direction == "C":
            line = redact_client_line(line)
        else:
            direction = "S"
            line = redact_server_line(line)
        text = _escape(line[:MAX_LINE]) + suffix
        stamp = self._now()
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + \
            ".%03dZ" % int((stamp % 1) * 1000)
        user = events.clean(session.username)
        peer = events.clean(session.peer)
        tls = "tls" if session.secure else "plain"
        return (f"{when} s={self.session_id(session)} peer={peer} user={user} "
                f"{tls} {direction} {text}\n").encode("ascii")

    def write(self, session, direction, line):
        if self._fd is None:
            return
        self._write(self.format(session, direction, line))

    def write_reply(self, session, lines):
        """
        A multi-line server reply as one entry: the first line, then the
        count and octets (CRLF included, as sent) of the lines after it.
        """
        if self._fd is None or not lines:
            return
        rest = lines[1:]
        octets = sum(len(line) + 2 for line in rest)
        self._write(self.format(session, "S", lines[0],
                                " [+%d lines, %d octets]" % (len(rest), octets)))

    def _write(self, data):
        try:
            os.write(self._fd, data)
        except OSError as e:
            events.emit("protocol_log.write_failed", "error", path=self.path,
                        error=e.strerror or str(e))
