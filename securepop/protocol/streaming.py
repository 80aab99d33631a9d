"""
RETR and TOP as byte streams: CRLF-normalised, dot-stuffed, bounded memory.

Twisted's POP3 dot-stuffs per chunk and misses a "." at the start of a
message or of a read chunk, which lets a crafted mail inject protocol
responses.  Here the transformation carries its state (are we at the start
of a line?  did the last chunk end in CR?) across chunk boundaries, so the
result is the same for any chunk size.
"""

from __future__ import annotations

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

CHUNK_SIZE = 64 * 1024


class DotStuffer:
    """
    Turns stored message bytes into the octets POP3 sends.

    Every LF not preceded by CR becomes CRLF; every line starting with "."
    gets one more "."; L{finish} adds a final CRLF when the message did not
    end with one, then the ".\\r\\n" terminator.  Bare CRs are left alone,
    so sizes computed by the mail store match what is sent.
    """

    def __init__(self, crlf=False):
        """
        @param crlf: the message is known to have CRLF line ends only (its
            store said so): only dot-stuffing is left to do.
        """
        self.at_line_start = True
        self.pending_cr = False
        self.crlf = crlf

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self.pending_cr:
            data = b"\r" + data
            self.pending_cr = False
        if data.endswith(b"\r"):
            # It may be the CR of a CRLF split across two reads.
            data = data[:-1]
            self.pending_cr = True
            if not data:
                return b""
        # Each pass copies the chunk; skip the ones with nothing to do (a
        # Maildir file is usually all LF or all CRLF): RETR spent half its
        # CPU in bytes.replace with three unconditional passes.
        if self.crlf:
            pass
        elif b"\r" not in data:
            data = data.replace(b"\n", b"\r\n")
        elif data.count(b"\n") != data.count(b"\r\n"):  # some bare LF
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if b"\n." in data:
            data = data.replace(b"\n.", b"\n..")
        if self.at_line_start and data.startswith(b"."):
            data = b"." + data
        self.at_line_start = data.endswith(b"\n")
        return data

    def finish(self) -> bytes:
        tail = b""
        if self.pending_cr:
            # A bare CR at the very end: send it, then end the line.
            tail = b"\r"
            self.pending_cr = False
            self.at_line_start = False
        if not self.at_line_start:
            tail += b"\r\n"
        return tail + b".\r\n"


class TopFilter:
    """
    Cuts a message after its header and C{lines} body lines, wherever the
    empty separator line falls (a chunk boundary in the middle of CRLF CRLF
    included).  Works on the stuffed CRLF stream from L{DotStuffer}.
    """

    def __init__(self, lines: int):
        self.remaining = lines
        self.in_header = True
        self.done = False
        self.line_has_text = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            if nl < 0:
                out.append(data[start:])
                # DotStuffer holds back a CR that may start a CRLF, so a CR
                # at the end of its output is a bare CR: text, not a line end.
                if data[start:]:
                    self.line_has_text = True
                break
            line = data[start:nl + 1]
            out.append(line)
            whole_empty = not self.line_has_text and line in (b"\n", b"\r\n")
            self.line_has_text = False
            start = nl + 1
            if self.in_header:
                if whole_empty:
                    self.in_header = False
                    if self.remaining == 0:
                        self.done = True
                        break
            else:
                self.remaining -= 1
                if self.remaining <= 0:
                    self.done = True
                    break
        return b"".join(out)


@implementer(IPushProducer)
class MessageProducer:
    """
    Streams one message to a transport: chunk after chunk until the
    transport pauses it (its buffer is full: the client is not reading
    fast enough), again when it resumes.  Memory stays bounded and a client
    that stops reading stops the reads from disk; a message that fits in
    the buffer goes out at once, in the same write as its C{+OK} line (a
    pull producer would wait for another reactor turn, and under TLS for
    Twisted's cooperator).  C{onProgress} lets the protocol restart its
    idle timer only when the client reads.
    """

    def __init__(self, fileobj, transport, top_lines=None, onProgress=None,
                 chunk_size=CHUNK_SIZE, crlf=False):
        self.file = fileobj
        self.transport = transport
        self.stuffer = DotStuffer(crlf)
        self.top = TopFilter(top_lines) if top_lines is not None else None
        self.onProgress = onProgress
        self.chunk_size = chunk_size
        self.bytes_sent = 0
        self.deferred = None
        self._stopped = False
        self._paused = False
        self._producing = False

    def start(self):
        from twisted.internet.defer import Deferred

        # The message may be sent entirely inside start(): keep our own
        # reference to the Deferred.
        d = self.deferred = Deferred()
        self.transport.registerProducer(self, True)
        self._produce()
        return d

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        if self._stopped:
            return
        self._paused = False
        self._produce()

    def _produce(self):
        if self._producing:  # resumed from inside one of our own writes
            return
        self._producing = True
        try:
            while not (self._paused or self._stopped):
                self._step()
        finally:
            self._producing = False

    def _step(self):
        if self.onProgress is not None:
            self.onProgress()
        try:
            data = self.file.read(self.chunk_size)
        except OSError as e:
            self._finish(e)
            return
        if data:
            out = self.stuffer.feed(data)
            if self.top is not None:
                out = self.top.feed(out)
                if self.top.done:
                    data = b""
            if out:
                self.bytes_sent += len(out)
                self.transport.write(out)
            if data:
                return
        # End of message (or of the TOP window).
        if self.top is not None and self.top.done:
            tail = b".\r\n"
        else:
            # The whole message was sent (TOP asked for more lines than it has).
            tail = self.stuffer.finish()
        self.bytes_sent += len(tail)
        self.transport.write(tail)
        self._finish(None)

    def stopProducing(self):
        if not self._stopped:
            self._stopped = True
            self._close()
            if self.deferred is not None:
                d, self.deferred = self.deferred, None
                d.errback(ConnectionError("stopped"))

    def _close(self):
        try:
            self.file.close()
        except OSError:
            pass

    def _finish(self, error):
        self._stopped = True
        self._close()
        self.transport.unregisterProducer()
        d, self.deferred = self.deferred, None
        if d is None:
            return
        if error is None:
            d.callback(self.bytes_sent)
        else:
            d.errback(error)

