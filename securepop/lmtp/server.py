"""
The LMTP listener (RFC 2033): mail from the MTA into the users' Maildirs.

Built on Twisted's ESMTP server class (its reply framing, timeout and
host name) with the parts LMTP and a mail store need done here:

 - C{LHLO} (C{HELO}/C{EHLO} are refused), advertising PIPELINING,
   ENHANCEDSTATUSCODES, 8BITMIME and SIZE;
 - commands are answered strictly in order: while a recipient is being
   looked up or a message delivered, later pipelined lines wait (and the
   socket stops being read when many wait);
 - one reply per accepted recipient after the final dot;
 - every line (command or message text) is at most 1000 octets with its
   CRLF (RFC 5321 section 4.5.3.1.6): a longer command gets C{500 5.5.2};
   a longer message line makes the message refused with C{500 5.5.2} for
   every recipient; the rest of an overlong line is skipped without being
   buffered;
 - a message over C{max_message_size} is refused with C{552 5.3.4} (the
   rest is read and dropped, so the connection stays in step);
 - nothing is written before the final dot: a connection lost in DATA
   leaves no file anywhere.

TCP connections pass the server's access policy before the greeting, as
POP3 connections do; a Unix socket is guarded by its file mode.
"""

from __future__ import annotations

import collections
import re

from twisted.internet import address as twisted_address
from twisted.internet import defer, protocol
from twisted.mail.smtp import ESMTP
from twisted.python.failure import Failure

from securepop import events
from securepop.lmtp.delivery import (
    BAD_ADDRESS, LINE_TOO_LONG, LOCAL_ERROR, TOO_BIG, Reply, Recipients, check_quota,
    deliver_all,
)

#: RFC 5321 section 4.5.3.1.6 (text line) and 4.5.3.1.4 (command line,
#: extended by parameters): 1000 octets with the CRLF.
MAX_LINE = 998
#: Lines waiting while a command is in flight before the socket stops being read.
MAX_QUEUED_LINES = 200
MAX_BAD_COMMANDS = 10

_TOO_LONG = object()      # queued in place of an overlong line
_PATH_RE = re.compile(rb"^\s*<([^<>]*)>(?:\s+(.*))?$", re.S)
_SIZE_RE = re.compile(rb"^[0-9]{1,20}$")

COMMAND, DATA = "COMMAND", "DATA"


def parse_path(argument, keyword):
    """
    C{FROM:<path> params} / C{TO:<path> params}.

    @return: C{(path, {PARAM: value})} with upper-case parameter names.
    @raise Reply: C{501 5.5.4} for a malformed argument.
    """
    head, colon, rest = argument.partition(b":")
    if not colon or head.strip().upper() != keyword:
        raise Reply(501, "5.5.4", f"Syntax: {keyword.decode()}:<address>")
    match = _PATH_RE.match(rest)
    if not match:
        raise Reply(501, "5.5.4", f"Syntax: {keyword.decode()}:<address>")
    params = {}
    for word in (match.group(2) or b"").split():
        name, _, value = word.partition(b"=")
        params[name.upper()] = value
    return match.group(1), params


class LMTPServer(ESMTP):
    """
    One LMTP connection.

    @ivar factory: the L{LMTPFactory} (context, recipients, settings).
    """

    def __init__(self, factory):
        ESMTP.__init__(self)
        self.factory = factory
        self.lmtp = factory.lmtp
        self.host = (factory.context.settings.server.hostname or "localhost").encode(
            "ascii", "replace")
        self.timeout = self.lmtp.timeout
        self._buffer = b""
        self._skipping = False         # inside an overlong line: drop up to its CRLF
        self._queue = collections.deque()
        self._busy = True              # nothing is read before the greeting
        self._paused = False
        self._bad_commands = 0
        self._lhlo = False
        self._reset_transaction()
        self.peer = None

    # -- connection ----------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.setTimeout(self.timeout)
        if isinstance(peer, (twisted_address.IPv4Address, twisted_address.IPv6Address)):
            self.peer = self.factory.context.peer_address(self.transport)
            try:
                decision = self.factory.context.admit(self.peer)
            except Exception:
                self._admit_error(Failure())
                return
            d = defer.maybeDeferred(lambda: decision)
            d.addCallbacks(self._admitted, self._admit_error)
        else:
            self.peer = "unix"
            self._admitted(None)

    def _admit_error(self, failure):
        events.emit("access.error", "error", ip=self.peer, error=failure.getErrorMessage())
        self._decline()

    def _admitted(self, decision):
        if self.transport is None or self.transport.disconnecting:
            return
        if decision is not None and not decision.allowed:
            events.emit("access.declined", ip=self.peer, rule=decision.rule,
                        reason=decision.reason, service="lmtp")
            self.factory.context.count("declined", decision.rule or decision.reason)
            self._decline()
            return
        self._send(220, "", self.host.decode("ascii", "replace") + " LMTP securepop ready")
        self._busy = False
        self._drain()

    def _decline(self):
        self._send(421, "4.7.0", "Connection declined by access policy")
        self.transport.loseConnection()

    def timeoutConnection(self):
        self._send(421, "4.4.2", "Idle too long, closing")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self._message = None           # a half-received message is dropped, never written
        self._queue.clear()
        self.setTimeout(None)

    # -- framing -------------------------------------------------------------------

    def dataReceived(self, data):
        self.resetTimeout()
        buffer = self._buffer + data
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            elif end - start > MAX_LINE:
                self._queue.append(_TOO_LONG)
            else:
                self._queue.append(buffer[start:end])
            start = end + 2
        rest = buffer[start:]
        if len(rest) > MAX_LINE + 1:      # an overlong line still arriving: drop it
            if not self._skipping:
                self._queue.append(_TOO_LONG)
                self._skipping = True
            rest = rest[-1:] if rest.endswith(b"\r") else b""
        self._buffer = rest
        self._drain()

    def _drain(self):
        while self._queue and not self._busy and self.transport is not None \
                and not self.transport.disconnecting:
            line = self._queue.popleft()
            if self.mode == DATA:
                self._data_line(line)
            else:
                self._command(line)
        if self._paused and not self._queue:
            self._paused = False
            self.transport.resumeProducing()
        elif not self._paused and len(self._queue) > MAX_QUEUED_LINES:
            self._paused = True
            self.transport.pauseProducing()

    def _wait(self, d):
        """Hold later lines until C{d} (whose callbacks replied) fires."""
        self._busy = True

        def done(result):
            self._busy = False
            if self.transport is not None:
                self._drain()
            return result

        d.addBoth(done)
        d.addErrback(self._internal_error)

    def _internal_error(self, failure):
        events.emit("lmtp.error", "error", error=failure.getErrorMessage())
        if self.transport is not None and not self.transport.disconnecting:
            self._send_reply(LOCAL_ERROR)

    def _send(self, code, status, text):
        self.sendLine(f"{code} {status} {text}".replace("  ", " ").encode("ascii", "replace"))

    def _send_reply(self, reply):
        self.sendLine(reply.line())

    # -- commands ------------------------------------------------------------------

    def _command(self, line):
        if line is _TOO_LONG:
            self._bad(Reply(500, "5.5.2", "Line too long"))
            return
        verb, _, argument = line.strip().partition(b" ")
        handler = _COMMANDS.get(verb.upper())
        if handler is None:
            self._bad(Reply(500, "5.5.1", "Command unrecognized"))
            return
        try:
            handler(self, argument.strip())
        except Reply as reply:
            self._bad(reply)

    def _bad(self, reply):
        self._send_reply(reply)
        if reply.code >= 500:
            self._bad_commands += 1
            if self._bad_commands >= MAX_BAD_COMMANDS:
                self._send(421, "4.7.0", "Too many errors, closing")
                self.transport.loseConnection()

    def _reset_transaction(self):
        self._sender = None
        self._size_hint = 0
        self._recipients = []
        self._message = None
        self._failed = None
        self.mode = COMMAND

    def do_LHLO(self, argument):
        if not argument:
            raise Reply(501, "5.5.4", "Syntax: LHLO hostname")
        self._reset_transaction()
        self._lhlo = True
        host = self.host.decode("ascii", "replace")
        lines = [host, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                 f"SIZE {self.lmtp.max_message_size}"]
        for line in lines[:-1]:
            self.sendLine(f"250-{line}".encode("ascii", "replace"))
        self.sendLine(f"250 {lines[-1]}".encode("ascii"))

    def do_HELO(self, argument):
        raise Reply(500, "5.5.1", "This is LMTP: use LHLO")

    do_EHLO = do_HELO

    def do_MAIL(self, argument):
        if not self._lhlo:
            raise Reply(503, "5.5.1", "LHLO first")
        if self._sender is not None:
            raise Reply(503, "5.5.1", "Nested MAIL command")
        path, params = parse_path(argument, b"FROM")
        if len(path) > 256 or any(c < 0x21 or c > 0x7e for c in path):   # no SMTPUTF8
            raise Reply(501, "5.1.7", "Bad sender address syntax")
        size = 0
        for name, value in params.items():
            if name == b"SIZE" and _SIZE_RE.match(value):
                size = int(value)
            elif name == b"BODY" and value.upper() in (b"7BIT", b"8BITMIME"):
                pass
            else:
                raise Reply(555, "5.5.4", "Unsupported MAIL parameter")
        if size > self.lmtp.max_message_size:
            self._count(TOO_BIG.result)
            raise TOO_BIG
        self._sender = path
        self._size_hint = size
        self._send(250, "2.1.0", "Sender OK")

    def do_RCPT(self, argument):
        if self._sender is None:
            raise Reply(503, "5.5.1", "MAIL first")
        path, params = parse_path(argument, b"TO")
        if params:
            raise Reply(555, "5.5.4", "Unsupported RCPT parameter")
        if len(self._recipients) >= self.lmtp.max_recipients:
            self._send(452, "4.5.3", "Too many recipients")
            return
        if len(path) > 256:
            raise BAD_ADDRESS
        d = self.factory.recipients.resolve(path)
        d.addCallback(self._check_quota_now)
        d.addCallbacks(self._recipient_ok, self._recipient_refused)
        self._wait(d)

    def _check_quota_now(self, recipient):
        if recipient.quota.unlimited:
            return recipient
        d = self.factory.run_blocking(check_quota, recipient, self._size_hint)
        return d.addCallback(lambda _: recipient)

    def _recipient_ok(self, recipient):
        self._recipients.append(recipient)
        self._send(250, "2.1.5", "Recipient OK")

    def _recipient_refused(self, failure):
        failure.trap(Reply)
        reply = failure.value
        self._count(reply.result)
        self._send_reply(reply)         # a refused recipient is no protocol error

    def do_DATA(self, argument):
        if argument:
            raise Reply(501, "5.5.4", "DATA takes no argument")
        if self._sender is None:
            raise Reply(503, "5.5.1", "MAIL first")
        if not self._recipients:
            raise Reply(503, "5.5.1", "No valid recipients")
        self.mode = DATA
        self._message = bytearray()
        self._failed = None
        self._send(354, "", "Start mail input; end with <CRLF>.<CRLF>")

    def do_RSET(self, argument):
        self._reset_transaction()
        self._send(250, "2.0.0", "OK")

    def do_NOOP(self, argument):
        self._send(250, "2.0.0", "OK")

    def do_QUIT(self, argument):
        self._send(221, "2.0.0", "Bye")
        self.transport.loseConnection()

    def do_VRFY(self, argument):
        raise Reply(502, "5.5.1", "VRFY not implemented")

    # -- message text ----------------------------------------------------------------

    def _data_line(self, line):
        if line is _TOO_LONG:
            self._failed = self._failed or LINE_TOO_LONG
            self._message = None
            return
        if line == b".":
            self._end_of_data()
            return
        if line.startswith(b"."):
            line = line[1:]
        if self._failed is not None:
            return
        if len(self._message) + len(line) + 2 > self.lmtp.max_message_size:
            self._failed = TOO_BIG
            self._message = None      # the rest is read and dropped
            return
        self._message += line
        self._message += b"\r\n"

    def _end_of_data(self):
        recipients, sender = self._recipients, self._sender
        message, failed = self._message, self._failed
        self._reset_transaction()
        if failed is not None:
            for _ in recipients:
                self._count(failed.result)
                self._send_reply(failed)
            return
        d = self.factory.run_blocking(deliver_all, recipients, sender, message)
        d.addCallback(self._delivered, recipients, len(message))
        self._wait(d)

    def _delivered(self, outcomes, recipients, octets):
        for recipient, outcome in zip(recipients, outcomes):
            if isinstance(outcome, Reply):
                self._count(outcome.result)
                events.emit("lmtp.refused", user=recipient.username, code=outcome.code,
                            status=outcome.status)
                reply = outcome.line()
            else:
                self._count("delivered")
                events.emit("lmtp.delivered", user=recipient.username, size=octets,
                            file=outcome)
                reply = f"250 2.0.0 <{recipient.address}> Delivered".encode("ascii")
            if self.transport is not None and not self.transport.disconnecting:
                self.sendLine(reply)

    def _count(self, result):
        if result:
            self.factory.context.count("lmtp_delivery", result)


_COMMANDS = {
    b"LHLO": LMTPServer.do_LHLO, b"HELO": LMTPServer.do_HELO, b"EHLO": LMTPServer.do_EHLO,
    b"MAIL": LMTPServer.do_MAIL, b"RCPT": LMTPServer.do_RCPT, b"DATA": LMTPServer.do_DATA,
    b"RSET": LMTPServer.do_RSET, b"NOOP": LMTPServer.do_NOOP, b"QUIT": LMTPServer.do_QUIT,
    b"VRFY": LMTPServer.do_VRFY,
}


class LMTPFactory(protocol.ServerFactory):
    """
    Builds L{LMTPServer}s over the shared server context.

    @param context: the L{securepop.protocol.context.ServerContext}.
    @param lmtp: the listener's L{securepop.config.LMTPSettings}.
    @param store: the L{securepop.mailstore.maildir.MaildirStore}; None:
        the one of the context's realm in force.
    @param run_blocking: C{f, *args -> Deferred} in a thread pool.
    """

    def __init__(self, context, lmtp, run_blocking, store=None):
        self.context = context
        self.lmtp = lmtp
        self.run_blocking = run_blocking
        self.recipients = Recipients(context, store, lmtp.domains)

    def buildProtocol(self, addr):
        p = LMTPServer(self)
        p.factory = self
        return p
