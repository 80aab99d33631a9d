"""
One POP3 connection: framing, line limits, timers, backpressure, closing,
and the dispatch of each command line through L{securepop.protocol.commands}.

Built on L{twisted.internet.protocol.Protocol} with its own line splitting,
because every line length, queue and timer here is a security decision:
command lines are bounded (RFC 2449: 255 octets), AUTH continuations are
bounded, pipelined input is read only as fast as it is answered, and nothing
pipelined after STLS is ever answered.  The commands of each state live in
L{securepop.protocol.authorization} and L{securepop.protocol.transaction}.
"""

from __future__ import annotations

import re
import time

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from securepop import events
from securepop.access.limits import LimitExceeded
from securepop.auth.oauth2_settings import BEARER_MECHANISMS
from securepop.errors import StateUnavailable
from securepop.protocol import responses as R
from securepop.protocol.authorization import AuthorizationCommands
from securepop.protocol.commands import command, lookup, redact
from securepop.protocol.states import AUTHORIZATION, CLOSED, READING, TRANSACTION, UPDATE
from securepop.protocol.transaction import TransactionCommands
from securepop.tls.contextfactory import tls_facts

MAX_COMMAND_LINE = 255          # RFC 2449, including CRLF
MAX_AUTH_LINE = 8 * 1024        # an AUTH continuation (NTLM tokens are ~1-2 KiB)
MAX_BEARER_LINE = 16 * 1024     # OAUTHBEARER/XOAUTH2 under TLS: Microsoft 365 tokens pass 2 KiB
#: GSSAPI: a Kerberos ticket carries the user's groups (its PAC); Windows
#: allows tokens up to 48,000 octets (MaxTokenSize): 64,000 in base64, + CRLF.
MAX_KERBEROS_LINE = 4 * ((48000 + 2) // 3) + 2
_LONG_AUTH = re.compile(rb"AUTH +(OAUTHBEARER|XOAUTH2|GSSAPI) ", re.IGNORECASE)
MAX_BUFFER = 64 * 1024          # unread pipelined input before we stop reading
COMMANDS_PER_TURN = 32          # pipelined commands answered before others get a turn
CLOSE_GRACE = 5.0               # seconds a closing line may take to reach the client


class _LineTooLong(Exception):
    pass


class LineBuffer:
    """
    Unread input, split into lines of bounded length.  A line over the
    limit is answered once, however many reads it arrives in: the rest of
    it is dropped up to its end.
    """

    def __init__(self):
        self._data = b""
        self._discarding = False

    def __len__(self):
        return len(self._data)

    def feed(self, data):
        self._data += data

    def clear(self):
        """Drop what is unread (the connection is closing)."""
        self._data = b""

    def reset(self):
        """Drop what is unread, and forget a line being discarded."""
        self._data = b""
        self._discarding = False

    def peek(self, size):
        """The first C{size} unread octets (a line's command, before its end arrives)."""
        return self._data[:size]

    def next_line(self, limit):
        """
        The next complete line without its terminator, or None.

        @param limit: the most octets a line may have, with its CRLF.
        @raise _LineTooLong: once per line over C{limit}.
        """
        nl = self._data.find(b"\n")
        if nl < 0:
            if self._discarding:
                self._data = b""        # still inside a line already answered
            elif len(self._data) > limit:
                self._data = b""
                self._discarding = True
                raise _LineTooLong()
            return None
        line, self._data = self._data[:nl], self._data[nl + 1:]
        if self._discarding:
            self._discarding = False
            return self.next_line(limit)
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > limit:
            raise _LineTooLong()
        return line


def _line_limit(session):
    """The longest line the session reads now (with its CRLF)."""
    if session._exchange is not None:
        return _token_line_limit(session._exchange_mech, MAX_AUTH_LINE)
    # A token in the initial response (AUTH XOAUTH2 <base64>): only under
    # TLS, where bearer mechanisms are offered at all.
    if session.secure and session.state == AUTHORIZATION:
        found = _LONG_AUTH.match(session._input.peek(32))
        if found:
            return _token_line_limit(found.group(1).upper().decode("ascii"), MAX_COMMAND_LINE)
    return MAX_COMMAND_LINE


def _token_line_limit(mechanism, otherwise):
    if mechanism in BEARER_MECHANISMS:
        return MAX_BEARER_LINE
    if mechanism == "GSSAPI":
        return MAX_KERBEROS_LINE
    return otherwise


class IdleTimer:
    """
    One idle deadline, moved by every command and every chunk of RETR
    without timer heap work: the one delayed call, when it fires early,
    sleeps again for the rest.
    """

    def __init__(self, clock, expired):
        self._clock = clock
        self._expired = expired
        self._call = None
        self._deadline = 0.0

    def restart(self, timeout):
        self._deadline = self._clock.seconds() + timeout
        call = self._call
        if call is None or not call.active():
            self._call = self._clock.callLater(timeout, self._fired)
        elif call.getTime() > self._deadline:   # a shorter timeout applies now
            call.reset(timeout)

    def cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fired(self):
        self._call = None
        remaining = self._deadline - self._clock.seconds()
        if remaining > 0:
            self._call = self._clock.callLater(remaining, self._fired)
            return
        self._expired()


@implementer(IHandshakeListener)
class POP3Session(AuthorizationCommands, TransactionCommands, Protocol):
    """
    One POP3 connection.

    All collaborators come from C{ctx} (a L{ServerContext}); the session
    itself holds only per-connection state.  The command mixins keep the
    state of their own phase (L{AuthorizationCommands},
    L{TransactionCommands}); this class owns the connection.
    """

    def __init__(self, ctx, listener):
        self.ctx = ctx
        self.listener = listener
        self.clock = ctx.clock
        self.state = AUTHORIZATION
        self.secure = listener.tls == "implicit"
        self.peer = None
        self.username = None
        self.mechanism = None
        self.tls_info = {}
        self._input = LineBuffer()
        self._idle = IdleTimer(self.clock, self._timed_out)
        self._busy = False
        self._paused = False
        self._bad = 0
        self._started = time.monotonic()
        self._leases = []
        self._greeted = False
        self._draining = False
        self._output_paused = False
        self._reply_producer = False
        self._next_turn = None
        self._abort_later = None
        self._gone = False          # the transport is lost: nothing more runs
        self._login_deadline = None
        self._deadline_passed = False
        self._init_authorization()
        self._init_transaction()

    # -- connection ------------------------------------------------------

    def connectionMade(self):
        self.peer = self.ctx.peer_address(self.transport)
        _no_delay(self.transport)
        self.ctx.session_started(self)
        deadline = self.ctx.settings.server.login_deadline
        if deadline > 0:
            self._login_deadline = self.clock.callLater(deadline, self._login_deadline_reached)
        self._busy = True           # nothing is read before the greeting
        try:
            decision = self.ctx.admit(self.peer)
        except Exception:
            self._admit_error(Failure())
            return
        if isinstance(decision, defer.Deferred):   # a DNS rule: answered later
            decision.addCallbacks(self._admitted, self._admit_error)
        else:                                      # no Deferred round for the usual case
            self._admitted(decision)

    def _admit_error(self, failure):
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
        d = self.ctx.acquire_connection(self.peer)
        d.addCallbacks(self._counted, _not_counted, errbackArgs=(self,))

    def _counted(self, lease):
        """The connection has its slots: greet."""
        if self.state == CLOSED:
            lease.release()
            return
        self._leases.append(lease)
        self.sendLine(self._greeting())
        self._produce_replies()
        self._greeted = True
        self._reset_timer()
        self._busy = False
        self._drain()

    def _decline(self, message, rule):
        text = message.replace("\r", " ").replace("\n", " ")
        self._close_with(b"-ERR [SYS/PERM] " + text.encode("ascii", "replace"))

    def handshakeCompleted(self):
        """TLS is up (implicit or after STLS): note and log what was agreed."""
        self.tls_info = tls_facts(self.transport) or {}
        events.emit("tls.handshake", ip=self.peer, protocol=self.tls_info.get("protocol"),
                    cipher=self.tls_info.get("cipher"), bits=self.tls_info.get("bits"),
                    sni=self.tls_info.get("sni"))
        self.ctx.count("tls", self.tls_info.get("protocol") or "unknown")

    def connectionLost(self, reason):
        was = self.state
        self.state = CLOSED
        self._gone = True
        self._input.clear()
        self._cancel_timer()
        self._drop_exchange()
        for call in (self._abort_later, self._next_turn, self._login_deadline):
            if call is not None and call.active():
                call.cancel()
        self._next_turn = None
        self._leave_gate()
        if was != UPDATE:
            # Not a completed QUIT: nothing marked is removed.  (During UPDATE
            # the lock stays until the deletions are done: QUIT releases it.)
            self._release_mailbox()
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

    def _transport_gone(self):
        """
        The transport is going away (it stopped one of our producers): from
        now on no buffered command runs, whatever is still in the buffer.
        """
        self._gone = True
        self._busy = True
        self._input.clear()

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
        self._stop_producing_replies()
        self._busy = True
        self._input.clear()
        self.transport.loseConnection()

    def _abort(self, line=None):
        if line:
            self.sendLine(line)
        self._close()

    def _close_with(self, line):
        """
        Say why, then close; a client that does not read gets aborted after
        L{CLOSE_GRACE} seconds, so it cannot hold the connection open.
        """
        self._stop_message()
        self._stop_producing_replies()
        if self.state != CLOSED:
            self.sendLine(line)
        self.state = CLOSED
        self._busy = True
        self._input.clear()
        self.transport.loseConnection()
        self._abort_later = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # -- timers ----------------------------------------------------------------

    def _reset_timer(self):
        """Restart the idle timeout of the state (long after login, short before)."""
        s = self.ctx.settings.server
        timeout = s.idle_timeout if self.state == TRANSACTION else s.idle_timeout_login
        if self.state == CLOSED or timeout <= 0:
            self._idle.cancel()
        else:
            self._idle.restart(timeout)

    def _cancel_timer(self):
        self._idle.cancel()

    def _timed_out(self):
        events.emit("session.timeout", ip=self.peer, user=self.username, state=self.state)
        self._close_with(R.TIMEOUT)

    def _login_deadline_reached(self):
        """
        The absolute limit before login: a client that never logs in (NOOP
        forever, an endless exchange) loses its slot.  While the server
        itself is still checking this client's credentials, it waits for
        that answer first.
        """
        self._login_deadline = None
        if self.state != AUTHORIZATION:
            return
        if self._busy and not self._gone:
            self._deadline_passed = True     # _wait's done() comes back here
            return
        self._deadline_passed = False
        events.emit("session.login_deadline", ip=self.peer,
                    seconds=self.ctx.settings.server.login_deadline)
        self._close_with(R.LOGIN_DEADLINE)

    def _logged_in(self):
        """Leave AUTHORIZATION: the login deadline no longer applies."""
        self.state = TRANSACTION
        if self._login_deadline is not None and self._login_deadline.active():
            self._login_deadline.cancel()
        self._login_deadline = None
        self._deadline_passed = False

    # -- input -------------------------------------------------------------------

    def dataReceived(self, data):
        if self.state == CLOSED:
            return
        self._input.feed(data)
        self._drain()

    def _line_limit(self):
        return _line_limit(self)

    def _discard_input(self):
        """Forget everything unread (STLS: what came in cleartext after it)."""
        self._input.reset()
        self._bad = 0

    def _drain(self):
        if self._draining:
            return      # a reply finished inside the loop below: it goes on
        self._draining = True
        try:
            self._drain_lines()
        finally:
            self._draining = False

    def _drain_lines(self):
        handled = 0
        while not (self._busy or self._output_paused or self._gone) \
                and self.state in READING:
            if handled >= COMMANDS_PER_TURN:
                # Fairness: a client pipelining thousands of commands gets
                # them answered in turns, and other clients in between.
                if self._next_turn is None:
                    self._next_turn = self.clock.callLater(0, self._turn)
                break
            try:
                line = self._input.next_line(self._line_limit())
            except _LineTooLong:
                handled += 1
                if self._exchange is not None:
                    self._auth_line_too_long()
                    continue
                if self._bad_command(R.LINE_TOO_LONG):
                    return
                continue
            if line is None:
                break
            handled += 1
            self._reset_timer()
            try:
                self._dispatch(line)
            except Exception:
                events.log.failure("Unhandled error in command", failure=Failure())
                self.sendLine(R.INTERNAL)
        # Input backpressure: stop reading while replies are pending and the
        # unread input is large; bounded memory whatever the client sends.
        held = self._busy or self._output_paused or self._next_turn is not None
        if held and len(self._input) > MAX_BUFFER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif self._paused and not held and len(self._input) <= MAX_BUFFER:
            self._paused = False
            self.transport.resumeProducing()

    def _turn(self):
        self._next_turn = None
        self._drain()

    # -- output backpressure (IPushProducer for the replies) --------------------

    def pauseProducing(self):
        """The client is not reading: stop answering until it does."""
        self._output_paused = True

    def resumeProducing(self):
        self._output_paused = False
        if self.state != CLOSED:
            self._drain()

    def stopProducing(self):
        """The transport is gone (IPushProducer): never answer again."""
        self._output_paused = True
        self._reply_producer = False
        self._transport_gone()

    def _produce_replies(self):
        if self.state != CLOSED and not self._gone and not self._reply_producer:
            self.transport.registerProducer(self, True)
            self._reply_producer = True

    def _stop_producing_replies(self):
        if self._reply_producer and not self._gone:
            self._reply_producer = False
            self._output_paused = False
            self.transport.unregisterProducer()

    def _wait(self, d):
        """Hold further input until C{d} has written its one reply."""
        self._busy = True

        def done(_):
            if self._gone:
                return
            self._busy = False
            if self.state != CLOSED:
                if self._deadline_passed and self.state == AUTHORIZATION:
                    self._login_deadline_reached()
                    return
                self._reset_timer()
                self._drain()

        def crashed(f):
            events.log.failure("Unhandled error in deferred command", failure=f)
            if self.state != CLOSED:
                self.sendLine(R.INTERNAL)

        d.addErrback(crashed)
        d.addBoth(done)
        return d

    # -- dispatch ------------------------------------------------------------------

    def _bad_command(self, reply):
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
            return self._auth_continue(line)
        if b"\x00" in line:
            self.ctx.protocol_log(self, "C", b"<line with NUL>")
            self._bad_command(R.BAD_SYNTAX)
            return
        parts = line.split(b" ")
        word = parts[0].upper()
        args = parts[1:]
        self.ctx.protocol_log(self, "C", redact(word, args))
        found = lookup(word)
        if found is None:
            self._bad_command(R.UNKNOWN_COMMAND)
            return
        if found.raw:
            # The rest of the line is one argument (RFC 1939: PASS may hold spaces).
            args = [line.split(b" ", 1)[1]] if b" " in line else []
        if not found.arity_ok(args):
            self._bad_command(R.BAD_SYNTAX)
            return
        if found.enabled is not None and not found.enabled(self):
            self._bad_command(found.disabled)
            return
        if self.state not in found.states:
            # Before login a refusal counts toward the bad-command limit
            # (NOOP must not keep a pre-login slot forever).
            if self.state == AUTHORIZATION:
                self._bad_command(found.wrong_state)
            else:
                self.sendLine(found.wrong_state)
            return
        found.handler(self, *args)

    # -- every state ---------------------------------------------------------------

    @command("CAPA")
    def do_CAPA(self):
        self.sendLines([b"+OK Capability list follows", *self.ctx.capabilities(self), b"."])


def _no_delay(transport):
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


def _not_counted(failure, session):
    """A limit is reached, or the state store did not answer: one -ERR, then close."""
    if session.state == CLOSED:
        return
    if failure.check(LimitExceeded):
        events.emit("access.limit", ip=session.peer, limit=failure.value.limit)
        session.ctx.count("declined", "limit")
        session.sendLine(R.TOO_MANY_CONNECTIONS)
    elif failure.check(StateUnavailable):
        session.ctx.state_unavailable(failure, ip=session.peer)
        session.ctx.count("declined", "state")
        session.sendLine(R.STATE_UNAVAILABLE)
    else:
        events.log.failure("Connection admission error", failure=failure)
        session.sendLine(R.INTERNAL)
    session._close()
