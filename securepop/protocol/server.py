"""
The POP3 state machine: AUTHORIZATION -> TRANSACTION -> UPDATE.

Built on L{twisted.internet.protocol.Protocol} with its own line splitting,
because every line length, queue and timer here is a security decision:
command lines are bounded (RFC 2449: 255 octets), AUTH continuations are
bounded, pipelined input is read only as fast as it is answered, and nothing
pipelined after STLS is ever answered.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from securepop import events
from securepop.access.limits import LimitExceeded
from securepop.errors import (
    MailboxInUse, MailboxUnavailable, SASLError, SourceUnavailable, VerificationBusy,
)
from securepop.interfaces import ISASLContext, ISecureMailbox
from securepop.protocol import responses as R
from securepop.protocol.streaming import MessageProducer
from securepop.sasl.base import Challenge
from securepop.tls.transport import startTLS

MAX_COMMAND_LINE = 255          # RFC 2449, including CRLF
MAX_AUTH_LINE = 8 * 1024        # an AUTH continuation (NTLM tokens are ~1-2 KiB)
MAX_BUFFER = 64 * 1024          # unread pipelined input before we stop reading
COMMANDS_PER_TURN = 32          # pipelined commands answered before others get a turn
CLOSE_GRACE = 5.0               # seconds a closing line may take to reach the client

_NUMBER = re.compile(rb"^[0-9]{1,10}$")

# Refusals that are policy, not a wrong guess: no secret was tried, so they
# feed neither the penalty nor the lockout; the log says what to use instead.
POLICY_REFUSALS = {
    "ntlmv1-refused": "the client sent NTLMv1: use NTLMv2 (or PLAIN/SCRAM over TLS)",
    "lm-refused": "the client sent only an LM response: use NTLMv2",
    "secret-missing": "no stored secret for this mechanism: set the password again "
                      "with securepop --config FILE user passwd, or use PLAIN over TLS",
}

AUTHORIZATION, TRANSACTION, UPDATE, CLOSED = "AUTHORIZATION", "TRANSACTION", "UPDATE", "CLOSED"


class _LineTooLong(Exception):
    pass


@implementer(ISASLContext)
class SASLContext:
    """What a SASL exchange may ask of this connection (L{ISASLContext})."""

    def __init__(self, session):
        self._session = session
        self.hostname = session.ctx.hostname
        self.clock = session.ctx.clock
        self.settings = session.ctx.settings.auth

    @property
    def secure(self):
        return self._session.secure

    def normaliseUsername(self, raw):
        return self._session.ctx.normalise(raw)

    def lookupSecret(self, username, kind):
        return self._session.ctx.source.lookupSecret(username, kind)

    def channelBinding(self, kind):
        return self._session.ctx.channel_binding(self._session.transport, kind)

    def ntlmDelegate(self):
        return self._session.ctx.ntlm_delegate()

    def checkPolicy(self, username):
        self._session.ctx.check_policy(username)


@implementer(IHandshakeListener)
class POP3Session(Protocol):
    """
    One POP3 connection.

    All collaborators come from C{factory.ctx} (a L{ServerContext}); the
    session itself holds only per-connection state, which STLS resets.
    """

    def __init__(self, ctx, listener):
        self.ctx = ctx
        self.listener = listener
        self.clock = ctx.clock
        self.state = AUTHORIZATION
        self.secure = listener.tls == "implicit"
        self.peer = None
        self._buffer = b""
        self._busy = False
        self._paused = False
        self._discarding = False
        self._bad = 0
        self._attempts = 0
        self._timer = None
        self._deadline = 0.0
        self._user = None
        self._exchange = None
        self._exchange_mech = None
        self._apop_stamp = None
        self.mailbox = None
        self._logout = None
        self.username = None
        self.mechanism = None
        self._started = time.monotonic()
        self._retrieved = self._deleted = self._bytes = 0
        self._leases = []
        self._greeted = False
        self._draining = False
        self._sizes = []
        self.tls_info = {}
        self._outputPaused = False
        self._replyProducer = False
        self._nextTurn = None
        self._producer = None
        self._gone = False          # the transport is lost: nothing more runs
        self._ticket = None         # this session's place at the penalty gate
        self._gateWait = None
        self._inflight = None       # the login being verified now
        self._loginDeadline = None
        self._deadlinePassed = False

    # -- connection ------------------------------------------------------

    def connectionMade(self):
        self.peer = self.ctx.peer_address(self.transport)
        _noDelay(self.transport)
        self.ctx.session_started(self)
        deadline = self.ctx.settings.server.login_deadline
        if deadline > 0:
            self._loginDeadline = self.clock.callLater(deadline, self._loginDeadlineReached)
        self._busy = True           # nothing is read before the greeting
        try:
            decision = self.ctx.admit(self.peer)
        except Exception:
            self._admitError(Failure())
            return
        if isinstance(decision, defer.Deferred):   # a DNS rule: answered later
            decision.addCallbacks(self._admitted, self._admitError)
        else:                                      # no Deferred round for the usual case
            self._admitted(decision)

    def _admitError(self, failure):
        events.emit("access.error", "error", ip=self.peer, error=failure.getErrorMessage())
        self._decline(self.ctx.settings.access.decline_message, "error")

    def _admitted(self, decision):
        if self.state == CLOSED:
            return
        if not decision.allowed:
            events.emit("access.declined", ip=self.peer, rule=decision.rule,
                        reason=decision.reason)
            self.ctx.count("declined", decision.rule or decision.reason)
            self._decline(self.ctx.settings.access.decline_message, decision.rule)
            return
        if self.ctx.limits is not None:
            try:
                self._leases.append(self.ctx.limits.acquireConnection(self.peer))
            except LimitExceeded as e:
                events.emit("access.limit", ip=self.peer, limit=e.limit)
                self.ctx.count("declined", "limit")
                self.sendLine(R.TOO_MANY_CONNECTIONS)
                self._close()
                return
        greeting = "+OK " + self.ctx.settings.server.greeting
        # The APOP timestamp only under TLS: in a cleartext greeting it
        # invites clients to send the digest before STLS.
        if self.ctx.apop_enabled and self.secure:
            self._apop_stamp = self.ctx.apop_timestamp()
            greeting += " " + self._apop_stamp
        self.sendLine(greeting.encode("ascii", "replace"))
        self._produceReplies()
        self._greeted = True
        self._resetTimer()
        self._busy = False
        self._drain()

    def _decline(self, message, rule):
        text = message.replace("\r", " ").replace("\n", " ")
        self._closeWith(b"-ERR [SYS/PERM] " + text.encode("ascii", "replace"))

    def handshakeCompleted(self):
        """TLS is up (implicit or after STLS): note and log what was agreed."""
        from securepop.tls.contextfactory import tls_facts

        self.tls_info = tls_facts(self.transport) or {}
        events.emit("tls.handshake", ip=self.peer, protocol=self.tls_info.get("protocol"),
                    cipher=self.tls_info.get("cipher"), bits=self.tls_info.get("bits"),
                    sni=self.tls_info.get("sni"))
        self.ctx.count("tls", self.tls_info.get("protocol") or "unknown")

    def connectionLost(self, reason):
        was = self.state
        self.state = CLOSED
        self._gone = True
        self._buffer = b""
        self._cancelTimer()
        if self._exchange is not None:
            _abortExchange(self._exchange)
            self._exchange = None
        for call in (getattr(self, "_abortLater", None), self._nextTurn, self._loginDeadline):
            if call is not None and call.active():
                call.cancel()
        self._nextTurn = None
        # A login still waiting at the gate is dropped, and one waiting for a
        # hashing thread never runs (ALIVE); one being checked now runs to
        # its end and counts, and keeps the address's one place in flight.
        if self._gateWait is not None:
            self._gateWait.cancel()
        if self._inflight is None:
            self._releaseTicket()
        if was != UPDATE:
            # Not a completed QUIT: nothing marked is removed.  (During UPDATE
            # the lock stays until the deletions are done: do_QUIT releases it.)
            self._releaseMailbox()
        while self._leases:
            self._leases.pop().release()
        while self._leases:
            self._leases.pop().release()
        self.ctx.session_ended(self)
        if self._greeted:
            events.emit(
                "session.end", ip=self.peer, user=self.username,
                tls=self.tls_info.get("protocol") or self.secure,
                mechanism=self.mechanism, retrieved=self._retrieved,
                deleted=self._deleted, bytes=self._bytes,
                duration="%.3f" % (time.monotonic() - self._started),
                state=was,
            )

    def _releaseMailbox(self):
        mailbox, self.mailbox = self.mailbox, None
        if mailbox is not None:
            try:
                mailbox.release()
            except Exception:
                events.emit("mailbox.release_failed", "error", user=self.username)
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def _transportGone(self):
        """
        The transport is going away (it stopped one of our producers): from
        now on no buffered command runs, whatever is still in the buffer.
        """
        self._gone = True
        self._busy = True
        self._buffer = b""

    # -- output ------------------------------------------------------------

    def sendLine(self, line: bytes):
        if self.state != CLOSED or line:
            self.transport.write(line + b"\r\n")
        self.ctx.protocol_log(self, "S", line)

    def sendLines(self, lines):
        """A multi-line answer in one write: one TLS record, one segment."""
        self.transport.write(b"".join(line + b"\r\n" for line in lines))
        self.ctx.protocol_log_reply(self, lines)

    def _close(self):
        # TLS waits for a registered producer before it shuts down: drop it.
        self._stopProducingReplies()
        self._busy = True
        self._buffer = b""
        self.transport.loseConnection()

    def _abort(self, line=None):
        if line:
            self.sendLine(line)
        self._close()

    # -- timers ----------------------------------------------------------------

    def _resetTimer(self):
        """
        Restart the idle timeout.  Called for every command and every chunk
        of RETR, so it only moves a deadline: the one timer, when it fires
        early, sleeps again for the rest (no timer heap work per command).
        """
        if self.state == CLOSED:
            self._cancelTimer()
            return
        s = self.ctx.settings.server
        timeout = s.idle_timeout if self.state == TRANSACTION else s.idle_timeout_login
        if timeout <= 0:
            self._cancelTimer()
            return
        self._deadline = self.clock.seconds() + timeout
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self.clock.callLater(timeout, self._timerFired)
        elif timer.getTime() > self._deadline:  # a shorter timeout applies now
            timer.reset(timeout)

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timerFired(self):
        self._timer = None
        remaining = self._deadline - self.clock.seconds()
        if remaining > 0:
            self._timer = self.clock.callLater(remaining, self._timerFired)
            return
        self._timedOut()

    def _timedOut(self):
        self._timer = None
        events.emit("session.timeout", ip=self.peer, user=self.username, state=self.state)
        self._closeWith(R.TIMEOUT)

    def _closeWith(self, line):
        """
        Say why, then close; a client that does not read gets aborted after
        L{CLOSE_GRACE} seconds, so it cannot hold the connection open.
        """
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
            self.transport.unregisterProducer()
        self._stopProducingReplies()
        if self.state != CLOSED:
            self.sendLine(line)
        self.state = CLOSED
        self._busy = True
        self._buffer = b""
        self.transport.loseConnection()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self._abortLater = self.clock.callLater(CLOSE_GRACE, abort)

    # -- input -------------------------------------------------------------------

    def dataReceived(self, data):
        if self.state == CLOSED:
            return
        self._buffer += data
        self._drain()

    def _lineLimit(self):
        return MAX_AUTH_LINE if self._exchange is not None else MAX_COMMAND_LINE

    def _nextLine(self):
        """The next complete line without its terminator, or None."""
        nl = self._buffer.find(b"\n")
        limit = self._lineLimit()
        if nl < 0:
            if self._discarding:
                self._buffer = b""      # still inside a line already answered
            elif len(self._buffer) > limit:
                self._buffer = b""
                self._discarding = True
                raise _LineTooLong()
            return None
        line, self._buffer = self._buffer[:nl], self._buffer[nl + 1:]
        if self._discarding:
            self._discarding = False
            return self._nextLine()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > limit:
            raise _LineTooLong()
        return line

    def _drain(self):
        if self._draining:
            return      # a reply finished inside the loop below: it goes on
        self._draining = True
        try:
            self._drainLines()
        finally:
            self._draining = False

    def _drainLines(self):
        handled = 0
        while not (self._busy or self._outputPaused or self._gone) \
                and self.state not in (CLOSED, UPDATE):
            if handled >= COMMANDS_PER_TURN:
                # Fairness: a client pipelining thousands of commands gets
                # them answered in turns, and other clients in between.
                if self._nextTurn is None:
                    self._nextTurn = self.clock.callLater(0, self._turn)
                break
            try:
                line = self._nextLine()
            except _LineTooLong:
                handled += 1
                if self._exchange is not None:
                    name, exchange, self._exchange = self._exchange_mech, self._exchange, None
                    _abortExchange(exchange)
                    self._wait(self._loginFailed(name, None, "auth-line-too-long",
                                                 R.AUTH_MALFORMED))
                    continue
                if self._badCommand(R.LINE_TOO_LONG):
                    return
                continue
            if line is None:
                break
            handled += 1
            self._resetTimer()
            try:
                self._dispatch(line)
            except Exception:
                events.log.failure("Unhandled error in command", failure=Failure())
                self.sendLine(R.INTERNAL)
        # Input backpressure: stop reading while replies are pending and the
        # unread input is large; bounded memory whatever the client sends.
        held = self._busy or self._outputPaused or self._nextTurn is not None
        if held and len(self._buffer) > MAX_BUFFER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif self._paused and not held and len(self._buffer) <= MAX_BUFFER:
            self._paused = False
            self.transport.resumeProducing()

    def _turn(self):
        self._nextTurn = None
        self._drain()

    # -- output backpressure (IPushProducer for the replies) --------------------

    def pauseProducing(self):
        """The client is not reading: stop answering until it does."""
        self._outputPaused = True

    def resumeProducing(self):
        self._outputPaused = False
        if self.state not in (CLOSED,):
            self._drain()

    def stopProducing(self):
        """The transport is gone (IPushProducer): never answer again."""
        self._outputPaused = True
        self._replyProducer = False
        self._transportGone()

    def _produceReplies(self):
        if self.state != CLOSED and not self._gone and not self._replyProducer:
            self.transport.registerProducer(self, True)
            self._replyProducer = True

    def _stopProducingReplies(self):
        if self._replyProducer and not self._gone:
            self._replyProducer = False
            self._outputPaused = False
            self.transport.unregisterProducer()

    def _wait(self, d):
        """Hold further input until C{d} has written its one reply."""
        self._busy = True

        def done(_):
            if self._gone:
                return
            self._busy = False
            if self.state not in (CLOSED,):
                if self._deadlinePassed and self.state == AUTHORIZATION:
                    self._loginDeadlineReached()
                    return
                self._resetTimer()
                self._drain()

        def crashed(f):
            events.log.failure("Unhandled error in deferred command", failure=f)
            if self.state != CLOSED:
                self.sendLine(R.INTERNAL)

        d.addErrback(crashed)
        d.addBoth(done)
        return d

    def _badCommand(self, reply):
        """One -ERR; too many in a row close the connection.  True if closed."""
        self._bad += 1
        if self._bad >= self.ctx.settings.server.max_bad_commands:
            events.emit("session.abuse", "warn", ip=self.peer, reason="too-many-errors")
            self._abort(R.TOO_MANY_ERRORS)
            return True
        self.sendLine(reply)
        return False

    def _dispatch(self, line):
        if self._exchange is not None:
            self.ctx.protocol_log(self, "C", b"<sasl response redacted>")
            return self._authContinue(line)
        if b"\x00" in line:
            self.ctx.protocol_log(self, "C", b"<line with NUL>")
            self._badCommand(R.BAD_SYNTAX)
            return
        parts = line.split(b" ")
        command = parts[0].upper()
        args = parts[1:]
        self.ctx.protocol_log(self, "C", _redact(command, args))
        handler = None
        if command.isalpha() and len(command) <= 8:
            handler = getattr(self, "do_" + command.decode("ascii"), None)
        if handler is None:
            self._badCommand(R.UNKNOWN_COMMAND)
            return
        if getattr(handler, "raw", False):
            # The rest of the line is one argument (RFC 1939: PASS may hold spaces).
            args = [line.split(b" ", 1)[1]] if b" " in line else []
        if not self._arity_ok(handler, args):
            self._badCommand(R.BAD_SYNTAX)
            return
        handler(*args)

    @staticmethod
    def _arity_ok(handler, args):
        lo, hi = getattr(handler, "arity", (0, 0))
        return lo <= len(args) <= hi and all(args)

    # -- helpers -----------------------------------------------------------------

    def _message(self, arg, allow_deleted=False):
        """Message index (0-based) from a 1-based argument, or None after -ERR."""
        if not _NUMBER.match(arg):
            self._badCommand(R.BAD_SYNTAX)
            return None
        n = int(arg)
        count = len(self._sizes)
        if not 1 <= n <= count:
            self.sendLine(R.NO_SUCH_MESSAGE)
            return None
        if not allow_deleted and self.mailbox.isDeleted(n - 1):
            self.sendLine(R.MESSAGE_DELETED)
            return None
        return n - 1

    def _requireTransaction(self):
        """
        True in TRANSACTION; else one -ERR, which before login counts toward
        the bad-command limit (NOOP must not keep a pre-login slot forever).
        """
        if self.state == TRANSACTION:
            return True
        if self.state == AUTHORIZATION:
            self._badCommand(R.NOT_NOW)
        else:
            self.sendLine(R.NOT_NOW)
        return False

    def _loginAllowed(self, command):
        """Gate for USER/PASS/APOP/AUTH: state and secure channel."""
        if self.state != AUTHORIZATION:
            self.sendLine(R.ALREADY_LOGGED_IN)
            return False
        if not self.ctx.credentials_allowed(self):
            # A misconfigured client sends credentials in clear: say so in
            # the log (never what it sent), and count it as a refused command.
            events.emit("auth.refused_cleartext", "warn", ip=self.peer, command=command)
            self._badCommand(R.TLS_REQUIRED)
            return False
        return True

    # -- AUTHORIZATION commands --------------------------------------------------

    def do_CAPA(self):
        self.sendLines([b"+OK Capability list follows", *self.ctx.capabilities(self), b"."])
    do_CAPA.arity = (0, 0)

    def do_NOOP(self):
        if self._requireTransaction():
            self.sendLine(b"+OK")
    do_NOOP.arity = (0, 0)

    def do_QUIT(self):
        if self.state != TRANSACTION:
            self.sendLine(b"+OK Bye")
            self._close()
            return
        if self._gone or getattr(self.transport, "disconnecting", False):
            return None     # no +OK can reach the client: no UPDATE either
        self.state = UPDATE
        self._cancelTimer()
        self._busy = True
        d = defer.maybeDeferred(self.mailbox.commit)

        # The lock is held until the deletions are done, even when the client
        # has gone meanwhile (connectionLost leaves it to us); it is released
        # before "+OK" so a client that reconnects at once does not meet its
        # own session's lock ([IN-USE]).
        def committed(_):
            self._releaseMailbox()
            if self.state != CLOSED:
                self.sendLine(b"+OK Bye")

        def failed(f):
            events.emit("mailbox.commit_failed", "error", user=self.username,
                        error=f.getErrorMessage())
            self._releaseMailbox()
            if self.state != CLOSED:
                self.sendLine(R.COMMIT_FAILED)

        d.addCallbacks(committed, failed)
        d.addBoth(lambda _: None if self.state == CLOSED else self._close())
        return d
    do_QUIT.arity = (0, 0)

    def do_STLS(self):
        if self.state != AUTHORIZATION or self.secure or self.listener.tls != "starttls" \
                or self.ctx.tls is None or self._user is not None:
            self.sendLine(R.STLS_NOT_AVAILABLE)
            return
        self.sendLine(R.STLS_READY)
        # Anything pipelined after STLS came in cleartext: it is dropped, never
        # answered inside TLS (the STARTTLS command injection).
        self._buffer = b""
        self._discarding = False
        self._bad = 0
        # A greeting sent in clear carried no APOP timestamp (it would invite
        # the digest before TLS), so APOP stays unavailable after STLS.
        self._stopProducingReplies()
        startTLS(self.transport, self.ctx.tls)
        self._produceReplies()
        self.secure = True
        self.ctx.tls_started(self)
    do_STLS.arity = (0, 0)

    def do_USER(self, name):
        if not self.ctx.settings.auth.user_pass:
            self._badCommand(R.USER_PASS_DISABLED)
            return
        if not self._loginAllowed("USER"):
            return
        self._user = name
        self.sendLine(b"+OK Send PASS")
    do_USER.arity = (1, 1)

    def do_PASS(self, password):
        if not self.ctx.settings.auth.user_pass:
            self._badCommand(R.USER_PASS_DISABLED)
            return
        if not self._loginAllowed("PASS"):
            return
        if self._user is None:
            self.sendLine(b"-ERR USER first")
            return
        raw, self._user = self._user, None

        def verify():
            try:
                username = self.ctx.normalise(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return self._loginFailed("USER", raw, "bad-username")
            return self._login(UsernamePassword(username, password), "USER")

        return self._gated("USER", verify)
    do_PASS.arity = (1, 1)
    do_PASS.raw = True

    def do_APOP(self, name, digest):
        if not self.ctx.apop_enabled:
            self._badCommand(R.APOP_DISABLED)
            return
        if not self._loginAllowed("APOP"):
            return
        if self._apop_stamp is None:
            self.sendLine(R.MECHANISM_UNAVAILABLE)
            return
        from securepop.sasl.apop import APOPCredentials

        def verify():
            try:
                username = self.ctx.normalise(name.decode("utf-8"))
                digest_text = digest.decode("ascii")
                if not re.fullmatch(r"[0-9a-fA-F]{32}", digest_text):
                    raise ValueError
            except (UnicodeDecodeError, ValueError):
                return self._loginFailed("APOP", name, "malformed")
            creds = APOPCredentials(username, self._apop_stamp.encode("ascii"),
                                    digest_text.lower().encode("ascii"))
            return self._login(creds, "APOP")

        return self._gated("APOP", verify)
    do_APOP.arity = (2, 2)

    def do_AUTH(self, *args):
        if not args:
            if self.state != AUTHORIZATION:
                self.sendLine(R.ALREADY_LOGGED_IN)
                return
            self.sendLines([b"+OK Supported mechanisms follow",
                            *(n.encode("ascii") for n in self.ctx.offered_mechanisms(self)),
                            b"."])
            return
        if not self._loginAllowed("AUTH"):
            return
        name = args[0].upper().decode("ascii", "replace")
        mech = self.ctx.usable_mechanism(self, name)
        if mech is None:
            self.sendLine(R.MECHANISM_UNAVAILABLE)
            return

        def begin():
            initial = None
            if len(args) == 2:
                initial = self._decode64(args[1])
                if initial is None:
                    return self._loginFailed(name, None, "malformed-initial-response",
                                             R.AUTH_MALFORMED)
            self._exchange = mech.newExchange(SASLContext(self))
            self._exchange_mech = name
            return self._authStep(initial, wait=False)

        return self._gated(name, begin)
    do_AUTH.arity = (0, 2)

    def _decode64(self, data):
        if data == b"=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _authContinue(self, line):
        name = self._exchange_mech
        if line == b"*":
            _abortExchange(self._exchange)
            self._exchange = None
            self._releaseTicket()
            self.sendLine(R.AUTH_CANCELLED)
            self._countAttempt(name, "cancelled")
            return
        data = self._decode64(line)
        if data is None:
            _abortExchange(self._exchange)
            self._exchange = None
            return self._wait(self._loginFailed(name, None, "malformed-response",
                                                R.AUTH_MALFORMED))
        self._authStep(data)

    def _authStep(self, data, wait=True):
        exchange = self._exchange
        name = self._exchange_mech
        self._cancelTimer()         # the server's turn: not the client's idle time
        d = defer.maybeDeferred(exchange.step, data)

        def stepped(result):
            if self._exchange is not exchange or self.state == CLOSED:
                return None
            if isinstance(result, Challenge):
                self.sendLine(b"+ " + base64.b64encode(result.data))
                return None
            self._exchange = None
            return self._login(result, name)

        def failed(f):
            _abortExchange(exchange)
            if self._exchange is exchange:
                self._exchange = None
            if self.state == CLOSED:
                return None
            if f.check(SourceUnavailable):
                self._releaseTicket()
                events.emit("auth.unavailable", "warn", ip=self.peer, mechanism=name)
                self.sendLine(R.SOURCE_UNAVAILABLE)
                return None
            reason = getattr(f.value, "reason", "malformed") if f.check(SASLError) \
                else "refused"
            if f.check(UnauthorizedLogin):
                reason = "bad-credentials"
            user = getattr(f.value, "username", None) or getattr(exchange, "username", None)
            return self._loginFailed(name, user, reason)

        d.addCallbacks(stepped, failed)
        return self._wait(d) if wait else d

    # -- the penalty gate --------------------------------------------------------

    def _gated(self, mechanism, verify):
        """
        Wait at the penalty gate, then run C{verify} (which checks the
        credentials and writes the one reply).  The delay of a penalised
        address comes before its check whatever the result, so the time to
        an answer tells nothing; the idle timer stops meanwhile, since the
        wait is the server's, not the client's.
        """
        self._cancelTimer()
        d = self._gateWait = self.ctx.enter_gate(self.peer)

        def entered(ticket):
            self._gateWait = None
            if self.state == CLOSED or self._gone:
                if ticket is not None:
                    ticket.release()
                return None
            self._ticket = ticket
            return verify()

        def refused(f):
            self._gateWait = None
            if f.check(CancelledError) or self.state == CLOSED:
                return None
            f.trap(VerificationBusy)
            events.emit("auth.busy", "warn", ip=self.peer, mechanism=mechanism,
                        reason=f.getErrorMessage())
            self.ctx.count("login", mechanism, "busy")
            self._countAttempt(mechanism, "busy", R.LOGINS_BUSY)
            return None

        d.addCallbacks(entered, refused)
        return self._wait(d)

    def _releaseTicket(self):
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()

    def _loginDeadlineReached(self):
        """
        The absolute limit before login: a client that never logs in (NOOP
        forever, an endless exchange) loses its slot.  While the server
        itself is still checking this client's credentials, it waits for
        that answer first.
        """
        self._loginDeadline = None
        if self.state != AUTHORIZATION:
            return
        if self._busy and not self._gone:
            self._deadlinePassed = True     # _wait's done() comes back here
            return
        self._deadlinePassed = False
        events.emit("session.login_deadline", ip=self.peer,
                    seconds=self.ctx.settings.server.login_deadline)
        self._closeWith(R.LOGIN_DEADLINE)

    # -- login --------------------------------------------------------------------

    def _login(self, credentials, mechanism):
        started = self.clock.seconds()
        self._cancelTimer()
        d = self._inflight = self.ctx.login(credentials, self.peer, self._alive)

        def success(result):
            self._inflight = None
            record, mailbox, logout = result
            if self.state == CLOSED:
                mailbox.release()
                logout()
                # The client never saw this success: it counts as a failure,
                # or hanging up would tell a right guess by the next delay.
                self._loginFailed(mechanism, record.username, "abandoned")
                return
            if self.ctx.limits is not None:
                try:
                    self._leases.append(self.ctx.limits.acquireUser(record.username))
                except LimitExceeded:
                    mailbox.release()
                    logout()
                    events.emit("auth.limit", ip=self.peer, user=record.username)
                    self.sendLine(R.TOO_MANY_SESSIONS)
                    return
            self.mailbox = mailbox
            self._logout = logout
            self.username = record.username
            self.mechanism = mechanism
            self.state = TRANSACTION
            if self._loginDeadline is not None and self._loginDeadline.active():
                self._loginDeadline.cancel()
            self._loginDeadline = None
            self._deadlinePassed = False
            self._sizes = mailbox.listMessages()
            self.ctx.penalty_success(self.peer)
            self._releaseTicket()
            events.emit("auth.success", ip=self.peer, user=record.username,
                        mechanism=mechanism, tls=self.secure,
                        ms="%.1f" % ((self.clock.seconds() - started) * 1000))
            self.ctx.count("login", mechanism, "success")
            total = sum(self._sizes)
            self.sendLine(b"+OK Logged in, %d messages (%d octets)" % (len(self._sizes), total))

        def failure(f):
            self._inflight = None
            user = getattr(credentials, "username", None)
            if f.check(CancelledError):
                return None     # dropped before it ran: the client had gone
            if self.state == CLOSED:
                if f.check(UnauthorizedLogin):   # a guess is a guess, answered or not
                    self._loginFailed(mechanism, user, _reason(f))
                return None
            if f.check(VerificationBusy):
                events.emit("auth.busy", "warn", ip=self.peer, user=user,
                            mechanism=mechanism, reason=f.getErrorMessage())
                self.ctx.count("login", mechanism, "busy")
                self.sendLine(R.LOGINS_BUSY)
                return None
            if f.check(MailboxInUse):
                events.emit("auth.in_use", ip=self.peer, user=user)
                self.sendLine(R.IN_USE)
                return None
            if f.check(SourceUnavailable):
                events.emit("auth.unavailable", "warn", ip=self.peer, user=user,
                            mechanism=mechanism, error=f.getErrorMessage())
                self.sendLine(R.SOURCE_UNAVAILABLE)
                return None
            if f.check(MailboxUnavailable):
                events.emit("mailbox.unavailable", "error", ip=self.peer, user=user,
                            error=f.getErrorMessage())
                self.sendLine(R.MAILBOX_UNAVAILABLE)
                return None
            if f.check(UnauthorizedLogin):
                return self._loginFailed(mechanism, user, _reason(f))
            events.log.failure("Login error", failure=f)
            self.sendLine(R.INTERNAL)
            return None

        d.addCallbacks(success, failure)
        d.addBoth(self._afterLogin)
        return d

    def _alive(self):
        return not self._gone

    def _afterLogin(self, result):
        self._releaseTicket()       # the outcome is recorded: the next may go
        return result

    def _loginFailed(self, mechanism, user, reason, reply=R.LOGIN_FAILED):
        """
        Log the precise reason, record the guess in the penalty (which the
        next attempt from this address waits out before its check), send
        the generic text.  A policy refusal (L{POLICY_REFUSALS}) tried no
        secret: it is logged with what to use instead and counts nowhere.
        """
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        hint = POLICY_REFUSALS.get(reason)
        if hint is not None:
            events.emit("auth.refused", ip=self.peer, user=user, mechanism=mechanism,
                        reason=reason, hint=hint)
            self.ctx.count("login", mechanism, "refused")
        else:
            events.emit("auth.failure", ip=self.peer, user=user, mechanism=mechanism,
                        reason=reason)
            self.ctx.count("login", mechanism, "failure")
            self.ctx.penalty_failure(self.peer, user)
        self._releaseTicket()
        if self.state != CLOSED:
            self._countAttempt(mechanism, reason, reply)
        return defer.succeed(None)

    def _countAttempt(self, mechanism, reason, reply=None):
        self._attempts += 1
        if self._attempts >= self.ctx.settings.auth.max_attempts:
            events.emit("auth.attempts_exceeded", "warn", ip=self.peer)
            if reply is not None:
                self.sendLine(reply)
            self._abort(R.TOO_MANY_ATTEMPTS)
        elif reply is not None:
            self.sendLine(reply)

    # -- TRANSACTION commands ------------------------------------------------------

    def do_STAT(self):
        if not self._requireTransaction():
            return
        live = [s for i, s in enumerate(self._sizes) if not self.mailbox.isDeleted(i)]
        self.sendLine(b"+OK %d %d" % (len(live), sum(live)))
    do_STAT.arity = (0, 0)

    def _listing(self, args, value):
        if not self._requireTransaction():
            return
        if args:
            i = self._message(args[0])
            if i is not None:
                self.sendLine(b"+OK %d %s" % (i + 1, value(i)))
            return
        lines = [b"+OK"]
        for i in range(len(self._sizes)):
            if not self.mailbox.isDeleted(i):
                lines.append(b"%d %s" % (i + 1, value(i)))
        lines.append(b".")
        self.sendLines(lines)

    def do_LIST(self, *args):
        self._listing(args, lambda i: b"%d" % self._sizes[i])
    do_LIST.arity = (0, 1)

    def do_UIDL(self, *args):
        self._listing(args, self._uidl)
    do_UIDL.arity = (0, 1)

    def _uidl(self, i):
        uid = self.mailbox.getUidl(i)
        return uid.encode("ascii") if isinstance(uid, str) else uid

    def do_DELE(self, arg):
        if not self._requireTransaction():
            return
        i = self._message(arg)
        if i is not None:
            self.mailbox.deleteMessage(i)
            self._deleted += 1
            self.sendLine(b"+OK Message %d deleted" % (i + 1))
    do_DELE.arity = (1, 1)

    def do_RSET(self):
        if not self._requireTransaction():
            return
        self.mailbox.undeleteMessages()
        self._deleted = 0
        self.sendLine(b"+OK")
    do_RSET.arity = (0, 0)

    def do_RETR(self, arg):
        if not self._requireTransaction():
            return
        i = self._message(arg)
        if i is not None:
            self._retrieved += 1
            return self._stream(i, b"+OK %d octets" % self._sizes[i], None)
    do_RETR.arity = (1, 1)

    def do_TOP(self, arg, lines):
        if not self._requireTransaction():
            return
        if not _NUMBER.match(lines):
            self._badCommand(R.BAD_SYNTAX)
            return
        i = self._message(arg)
        if i is not None:
            return self._stream(i, b"+OK", int(lines))
    do_TOP.arity = (2, 2)

    def _stream(self, index, first, top_lines):
        try:
            f = self.mailbox.getMessage(index)
        except (OSError, IndexError) as e:
            events.emit("mailbox.read_failed", "error", user=self.username, error=str(e))
            self.sendLine(b"-ERR [SYS/TEMP] Message could not be read")
            return None
        self.sendLine(first)
        # One producer at a time per transport: the message, then the replies.
        self._stopProducingReplies()
        onlyCRLF = getattr(self.mailbox, "hasOnlyCRLF", None)  # optional in ISecureMailbox
        producer = MessageProducer(f, self.transport, top_lines, onProgress=self._resetTimer,
                                   crlf=bool(onlyCRLF and onlyCRLF(index)))
        self._producer = producer
        d = producer.start()

        def sent(n):
            self._bytes += n

        def lost(f):
            if self._producer is producer:
                # Stopped by the transport, not by us: the connection is
                # going, and the DELE/QUIT pipelined behind this RETR must
                # never run.
                self._transportGone()
            return None

        def done(_):
            self._producer = None
            self._produceReplies()

        d.addCallbacks(sent, lost)
        d.addBoth(done)
        return self._wait(d)


def _noDelay(transport):
    """
    TCP_NODELAY on the socket under any wrapper (TLS, PROXY): a POP3 reply is
    a small write the client waits for; Nagle plus delayed ACKs would add
    ~40 ms to many of them.
    """
    for _ in range(4):
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


def _abortExchange(exchange):
    """Let an unfinished SASL exchange free what it holds (a DC helper)."""
    abort = getattr(exchange, "abort", None)
    if abort is not None:
        try:
            abort()
        except Exception:
            events.log.failure("SASL exchange abort failed")


def _reason(failure):
    text = failure.getErrorMessage()
    return text if text and len(text) < 64 and text.isascii() else "unauthorized"


def _redact(command, args):
    """A command line as the protocol log may show it: no credentials."""
    if command in (b"PASS",):
        return command + b" <redacted>"
    if command == b"APOP" and args:
        return b"APOP " + args[0][:64] + b" <redacted>"
    if command == b"AUTH" and len(args) > 1:
        return b"AUTH " + args[0][:32] + b" <redacted>"
    return b" ".join([command] + [a[:64] for a in args])


class POP3Factory(Factory):
    """Makes one L{POP3Session} per connection of one listener."""

    noisy = False

    def __init__(self, ctx, listener):
        self.ctx = ctx
        self.listener = listener

    def buildProtocol(self, addr):
        session = POP3Session(self.ctx, self.listener)
        session.factory = self
        return session
