"""
The AUTHORIZATION state: STLS, USER/PASS, APOP and AUTH (RFC 1939, 2595,
5034), the SASL exchange they drive, and the penalty gate every check waits
at; the login's outcome is L{securepop.protocol.login}.

A client sees one generic failure text whatever went wrong; the precise
reason goes to the log, and a guess (not a policy refusal) grows the
address's penalty and the user's lockout.
"""

from __future__ import annotations

import base64
import binascii
import re

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from zope.interface import implementer

from securepop import events
from securepop.errors import SASLError, SourceUnavailable, StateUnavailable, VerificationBusy
from securepop.interfaces import ISASLContext
from securepop.protocol import responses as R
from securepop.protocol.commands import command
from securepop.protocol.login import _AWAITING_DUMMY, LoginOutcome
from securepop.protocol.states import AUTHORIZATION, CLOSED
from securepop.sasl.apop import APOPCredentials
from securepop.sasl.base import Challenge
from securepop.tls.transport import startTLS

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")


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

    def gssapiAcceptor(self):
        return self._session.ctx.gssapi_acceptor(self._session.peer)

    def checkPolicy(self, username):
        self._session.ctx.check_policy(username, self._session._ticket)


def _user_pass_enabled(session):
    return session.ctx.settings.auth.user_pass


def _apop_enabled(session):
    return session.ctx.apop_enabled


class AuthorizationCommands(LoginOutcome):
    """
    The commands and the login of the AUTHORIZATION state, mixed into
    L{securepop.protocol.session.POP3Session}: the session provides the
    connection (C{ctx}, C{sendLine}, C{_wait}, C{_bad_command}, the timers,
    C{_logged_in}), L{securepop.protocol.transaction.TransactionCommands}
    the maildrop a login opens (C{_open_mailbox}, C{_list_messages}).
    """

    def _init_authorization(self):
        self._attempts = 0
        self._user = None
        self._exchange = None
        self._exchange_mech = None
        self._apop_stamp = None
        self._ticket = None         # this session's place at the penalty gate
        self._gate_wait = None
        self._inflight = None       # the login being verified now

    def _greeting(self):
        greeting = "+OK " + self.ctx.settings.server.greeting
        # The APOP timestamp only under TLS: in a cleartext greeting it
        # invites clients to send the digest before STLS.
        if self.ctx.apop_enabled and self.secure:
            self._apop_stamp = self.ctx.apop_timestamp()
            greeting += " " + self._apop_stamp
        return greeting.encode("ascii", "replace")

    def _cleartext_refused(self, command_name):
        """
        True (after one counted -ERR) when credentials may not be sent on
        this connection now: TLS is required and not up.
        """
        if self.ctx.credentials_allowed(self):
            return False
        # A misconfigured client sends credentials in clear: say so in the
        # log (never what it sent), and count it as a refused command.
        events.emit("auth.refused_cleartext", "warn", ip=self.peer, command=command_name)
        self._bad_command(R.TLS_REQUIRED)
        return True

    # -- commands -----------------------------------------------------------------

    @command("STLS", AUTHORIZATION, wrong_state=R.STLS_NOT_AVAILABLE)
    def do_STLS(self):
        if self.secure or self.listener.tls != "starttls" or self.ctx.tls is None \
                or self._user is not None:
            self.sendLine(R.STLS_NOT_AVAILABLE)
            return
        self.sendLine(R.STLS_READY)
        # Anything pipelined after STLS came in cleartext: it is dropped, never
        # answered inside TLS (the STARTTLS command injection).
        self._discard_input()
        # A greeting sent in clear carried no APOP timestamp (it would invite
        # the digest before TLS), so APOP stays unavailable after STLS.
        self._stop_producing_replies()
        startTLS(self.transport, self.ctx.tls)
        self._produce_replies()
        self.secure = True
        self.ctx.tls_started(self)

    @command("USER", AUTHORIZATION, arity=(1, 1), wrong_state=R.ALREADY_LOGGED_IN,
             enabled=_user_pass_enabled, disabled=R.USER_PASS_DISABLED)
    def do_USER(self, name):
        if self._cleartext_refused("USER"):
            return
        self._user = name
        self.sendLine(b"+OK Send PASS")

    @command("PASS", AUTHORIZATION, arity=(1, 1), raw=True, wrong_state=R.ALREADY_LOGGED_IN,
             enabled=_user_pass_enabled, disabled=R.USER_PASS_DISABLED)
    def do_PASS(self, password):
        if self._cleartext_refused("PASS"):
            return
        if self._user is None:
            self.sendLine(b"-ERR USER first")
            return
        raw, self._user = self._user, None
        username = self._normalised(raw)

        def verify():
            if username is None:
                return self._login_failed("USER", raw, "bad-username")
            return self._login(UsernamePassword(username, password), "USER")

        return self._gated("USER", verify, username=username)

    def _normalised(self, raw):
        """The user name rules applied to C{raw} (bytes), or None when it breaks them."""
        try:
            return self.ctx.normalise(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    @command("APOP", AUTHORIZATION, arity=(2, 2), wrong_state=R.ALREADY_LOGGED_IN,
             enabled=_apop_enabled, disabled=R.APOP_DISABLED)
    def do_APOP(self, name, digest):
        if self._cleartext_refused("APOP"):
            return
        if self._apop_stamp is None:
            self.sendLine(R.MECHANISM_UNAVAILABLE)
            return

        username = self._normalised(name)

        def verify():
            try:
                if username is None:
                    raise ValueError
                digest_text = digest.decode("ascii")
                if not _HEX_DIGEST.fullmatch(digest_text):
                    raise ValueError
            except (UnicodeDecodeError, ValueError):
                return self._login_failed("APOP", name, "malformed")
            creds = APOPCredentials(username, self._apop_stamp.encode("ascii"),
                                    digest_text.lower().encode("ascii"))
            return self._login(creds, "APOP")

        return self._gated("APOP", verify, username=username)

    @command("AUTH", AUTHORIZATION, arity=(0, 2), wrong_state=R.ALREADY_LOGGED_IN)
    def do_AUTH(self, *args):
        if not args:
            self.sendLines([b"+OK Supported mechanisms follow",
                            *(n.encode("ascii") for n in self.ctx.offered_mechanisms(self)),
                            b"."])
            return
        if self._cleartext_refused("AUTH"):
            return
        name = args[0].upper().decode("ascii", "replace")
        mech = self.ctx.usable_mechanism(self, name)
        if mech is None:
            self.sendLine(R.MECHANISM_UNAVAILABLE)
            return

        def begin():
            initial = None
            if len(args) == 2:
                initial = _decode64(args[1])
                if initial is None:
                    return self._login_failed(name, None, "malformed-initial-response",
                                              R.AUTH_MALFORMED)
            self._exchange = mech.newExchange(SASLContext(self))
            self._exchange_mech = name
            return self._auth_step(initial, wait=False)

        return self._gated(name, begin)

    # -- the SASL exchange ------------------------------------------------------------

    def _auth_continue(self, line):
        name = self._exchange_mech
        if self._exchange is _AWAITING_DUMMY:   # counted at the error challenge
            self._exchange = None
            return self.sendLine(R.LOGIN_FAILED)
        if line == b"*":
            _abort_exchange(self._exchange)
            self._exchange = None
            self._release_ticket()
            self.sendLine(R.AUTH_CANCELLED)
            self._count_attempt(name, "cancelled")
            return
        data = _decode64(line)
        if data is None:
            _abort_exchange(self._exchange)
            self._exchange = None
            return self._wait(self._login_failed(name, None, "malformed-response",
                                                 R.AUTH_MALFORMED))
        exchange = self._exchange

        def resume():
            if self._exchange is not exchange:
                return None
            return self._auth_step(data, wait=False)

        # The server's turn again: through the gate, as at AUTH (at once
        # unless another login of this address is being checked right now).
        return self._gated(name, resume, on_busy=self._drop_exchange,
                           username=getattr(exchange, "username", None) or None)

    def _auth_step(self, data, wait=True):
        exchange = self._exchange
        name = self._exchange_mech
        self._cancel_timer()        # the server's turn: not the client's idle time
        d = defer.maybeDeferred(exchange.step, data)

        def stepped(result):
            if self._exchange is not exchange or self.state == CLOSED:
                return None
            if isinstance(result, Challenge):
                # The client's turn: the address's place in flight is free
                # meanwhile (a client that stalls mid-exchange holds nobody).
                self._release_ticket()
                self.sendLine(b"+ " + base64.b64encode(result.data))
                return None
            self._exchange = None
            return self._login(result, name)

        def failed(f):
            _abort_exchange(exchange)
            if self._exchange is exchange:
                self._exchange = None
            if self.state == CLOSED:
                return None
            if f.check(SourceUnavailable):
                self._release_ticket()
                events.emit("auth.unavailable", "warn", ip=self.peer, mechanism=name)
                self.sendLine(R.SOURCE_UNAVAILABLE)
                return None
            # NTLMRefused names its policy reason; other SASL errors do not.
            reason = getattr(f.value, "reason", "malformed") if f.check(SASLError) \
                else "refused"
            if f.check(UnauthorizedLogin):
                reason = "bad-credentials"
            return self._login_failed(name, exchange.username, reason)

        d.addCallbacks(stepped, failed)
        return self._wait(d) if wait else d

    def _auth_line_too_long(self):
        """An AUTH continuation over L{MAX_AUTH_LINE}: the exchange ends as malformed."""
        name, exchange, self._exchange = self._exchange_mech, self._exchange, None
        _abort_exchange(exchange)
        self._wait(self._login_failed(name, None, "auth-line-too-long", R.AUTH_MALFORMED))

    def _drop_exchange(self):
        """The connection ended: an unfinished exchange frees what it holds."""
        if self._exchange is not None:
            _abort_exchange(self._exchange)
            self._exchange = None

    # -- the penalty gate -----------------------------------------------------------

    def _gated(self, mechanism, verify, on_busy=None, username=None):
        """
        Wait at the penalty gate, then run C{verify} (which checks the
        credentials, or takes one SASL step, and writes the one reply).  The
        delay of a penalised address comes before its check whatever the
        result, so the time to an answer tells nothing; the idle timer stops
        meanwhile, since the wait is the server's, not the client's.
        C{on_busy} runs when the gate refuses (an exchange in progress ends).
        C{username}, when known, has its lockout count read with the
        address's failures (one read).
        """
        self._cancel_timer()
        if not isinstance(username, str):
            username = None
        d = self._gate_wait = self.ctx.enter_gate(self.peer, username)

        def entered(ticket):
            self._gate_wait = None
            if self.state == CLOSED or self._gone:
                if ticket is not None:
                    ticket.release()
                return None
            self._ticket = ticket
            return verify()

        def refused(f):
            self._gate_wait = None
            if f.check(CancelledError) or self.state == CLOSED:
                return None
            if f.check(StateUnavailable):
                if on_busy is not None:
                    on_busy()
                self.ctx.state_unavailable(f, ip=self.peer)
                self.ctx.count("login", mechanism, "unavailable")
                self.sendLine(R.STATE_UNAVAILABLE)
                return None
            f.trap(VerificationBusy)
            if on_busy is not None:
                on_busy()
            events.emit("auth.busy", "warn", ip=self.peer, mechanism=mechanism,
                        reason=f.getErrorMessage())
            self.ctx.count("login", mechanism, "busy")
            self._count_attempt(mechanism, "busy", R.LOGINS_BUSY)
            return None

        d.addCallbacks(entered, refused)
        return self._wait(d)

    def _release_ticket(self):
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()

    def _leave_gate(self):
        """
        The connection ended.  A login still waiting at the gate is dropped,
        and one waiting for a hashing thread never runs (ALIVE); one being
        checked now runs to its end and counts, and keeps the address's one
        place in flight.
        """
        if self._gate_wait is not None:
            self._gate_wait.cancel()
        if self._inflight is None:
            self._release_ticket()


def _decode64(data):
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _abort_exchange(exchange):
    """Let an unfinished SASL exchange free what it holds (a DC helper)."""
    try:
        exchange.abort()
    except Exception:
        events.log.failure("SASL exchange abort failed")
