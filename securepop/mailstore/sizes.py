"""
Message sizes as POP3 sends them, in CRLF octets.

The protocol streams a stored message by turning every LF that does not
follow a CR into CRLF, leaving every other octet alone (a bare CR stays
bare), and appending CRLF when a non-empty file does not end with LF (an
empty file sends nothing: 0 octets), as L{securepop.protocol.streaming}
does.  LIST and STAT must announce
exactly the octets RETR will send (before dot-stuffing, RFC 1939 section
11), so the counting here mirrors that rule octet for octet.
"""

import errno
import os
import stat

CHUNK_SIZE = 64 * 1024


class CRLFCounter:
    """
    Count the raw and the CRLF-normalised size of a byte stream fed in
    chunks of any size (a CR at the end of one chunk and the LF at the start
    of the next are one line ending, not a bare LF).

    @ivar rawSize: octets fed so far.
    @ivar bareLineFeeds: LFs not preceded by CR.
    """

    def __init__(self):
        self.rawSize = 0
        self.bareLineFeeds = 0
        self._lastOctet = b""

    def feed(self, chunk):
        """
        @type chunk: L{bytes}
        """
        if not chunk:
            return
        bare = chunk.count(b"\n") - chunk.count(b"\r\n")
        if chunk[:1] == b"\n" and self._lastOctet == b"\r":
            bare -= 1
        self.bareLineFeeds += bare
        self.rawSize += len(chunk)
        self._lastOctet = chunk[-1:]

    @property
    def crlfSize(self):
        """
        @return: the octets the protocol will send for what was fed.
        """
        trailer = 0 if self._lastOctet in (b"\n", b"") else 2
        return self.rawSize + self.bareLineFeeds + trailer


def crlfSizeOfBytes(data):
    """
    @type data: L{bytes}
    @return: the CRLF size of C{data} (L{int}).
    """
    counter = CRLFCounter()
    counter.feed(data)
    return counter.crlfSize


def crlfSizeOfFile(fileobj):
    """
    Read a binary file object to its end with bounded memory.

    @return: the CRLF size (L{int}).
    """
    counter = CRLFCounter()
    while True:
        chunk = fileobj.read(CHUNK_SIZE)
        if not chunk:
            return counter.crlfSize
        counter.feed(chunk)


def openRegularFile(path):
    """
    Open C{path} for reading only if it is a regular file: never through a
    symlink, and never blocking on a FIFO or device someone put there.

    @return: a file descriptor.
    @raise OSError: C{ELOOP} for a symlink, C{EINVAL} for anything not a
        regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def crlfSizeOfPath(path):
    """
    Count the regular file at C{path}.  Slow for large files: call it off
    the reactor thread.

    @return: the CRLF size (L{int}).
    """
    with os.fdopen(openRegularFile(path), "rb", buffering=0) as fileobj:
        return crlfSizeOfFile(fileobj)
