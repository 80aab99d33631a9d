"""
Maildir delivery: the only way a message enters a mailbox without a window
in which a reader could see half of it.

The message is written to C{tmp/} under a unique name, fsynced, linked (or
renamed) into C{new/} with C{,S=<size>,W=<crlf-size>} in its name (Dovecot's
convention, so a login never reads the file to learn its POP3 size), and
C{new/} is fsynced so the name survives a power loss.  Any failure before
the link removes the temporary file and leaves C{new/} untouched.

Blocking (writes and fsyncs the whole message): call it off the reactor
thread.
"""

import os
import stat
import secrets
import socket
import time

from securepop.fileio import atomic_write, fsync_directory
from securepop.mailstore.sizes import CHUNK_SIZE, CRLFCounter

MAILDIR_SUBDIRS = ("tmp", "new", "cur")
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def _makeDirectory(path):
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path):
            raise
        return False
    return True


def ensureMaildir(path):
    """
    Create C{path} (and missing parents) with C{tmp/ new/ cur/}, mode 0700.

    @return: C{path}.
    """
    path = os.fspath(path)
    try:  # the usual case, every login: three lstat calls, no mkdir
        if all(stat.S_ISDIR(os.lstat(os.path.join(path, sub)).st_mode)
               for sub in MAILDIR_SUBDIRS):
            return path
    except OSError:
        pass
    missing = []
    parent = os.path.abspath(path)
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    created = [p for p in reversed(missing) if _makeDirectory(p)]
    for sub in MAILDIR_SUBDIRS:
        if _makeDirectory(os.path.join(path, sub)):
            created.append(os.path.join(path, sub))
    for directory in {os.path.dirname(p) for p in created}:
        fsync_directory(directory)
    return path


def _encodeHost(host):
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def uniqueName(now=time.time):
    """
    A Maildir unique name: C{<sec>.M<usec>P<pid>R<random>.<host>}.
    """
    moment = now()
    seconds = int(moment)
    micro = int((moment - seconds) * 1_000_000)
    host = _encodeHost(socket.gethostname() or "localhost")
    return f"{seconds}.M{micro}P{os.getpid()}R{secrets.token_hex(8)}.{host}"


def _chunks(dataOrFile):
    if isinstance(dataOrFile, (list, tuple)):   # parts: added header lines, the message
        for part in dataOrFile:
            yield from _chunks(part)
        return
    if isinstance(dataOrFile, (bytes, bytearray, memoryview)):
        view = memoryview(dataOrFile)
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])
        return
    while True:
        chunk = dataOrFile.read(CHUNK_SIZE)
        if not chunk:
            return
        if not isinstance(chunk, bytes):
            raise TypeError("deliver() needs bytes or a binary file")
        yield chunk


def deliver(maildir_path, data_or_file, now=time.time):
    """
    Deliver one message into the Maildir at C{maildir_path}, creating it
    when missing.

    @param data_or_file: the message: L{bytes}, a binary file object
        (read to its end in chunks), or a list of those written one after
        the other; stored exactly as given, LF or CRLF.
    @return: the file name in C{new/} (L{str}).
    """
    maildir = ensureMaildir(maildir_path)
    new_dir = os.path.join(maildir, "new")
    counter = CRLFCounter()

    def counted():
        for chunk in _chunks(data_or_file):
            counter.feed(chunk)
            yield chunk

    def in_new(tmp_path):
        unique = os.path.basename(tmp_path)
        return os.path.join(new_dir, f"{unique},S={counter.rawSize},W={counter.crlfSize}")

    # Linked into new/, never renamed over a file there: a name clash fails
    # the delivery instead of losing the message already delivered.
    final = atomic_write(in_new, counted(), FILE_MODE, replace=False,
                         temp_dir=os.path.join(maildir, "tmp"),
                         temp_names=(uniqueName(now) for _ in range(10)))
    return os.path.basename(final)
