"""
The login's outcome in the AUTHORIZATION state: the portal's answer, the
user's session slot, the maildrop opened, and the failure accounting (the
penalty and the lockout in the state store, the attempts per connection).

A client sees one generic failure text whatever went wrong; the precise
reason goes to the log.
"""

from __future__ import annotations

import base64

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import CancelledError

from securepop import events
from securepop.access.limits import LimitExceeded
from securepop.errors import (
    MailboxInUse, MailboxUnavailable, SourceUnavailable, StateUnavailable, VerificationBusy,
)
from securepop.protocol import responses as R
from securepop.protocol.states import CLOSED

# Refusals that are policy, not a wrong guess: no secret was tried, so they
# feed neither the penalty nor the lockout; the log says what to use instead.
POLICY_REFUSALS = {
    "ntlmv1-refused": "the client sent NTLMv1: use NTLMv2 (or PLAIN/SCRAM over TLS)",
    "lm-refused": "the client sent only an LM response: use NTLMv2",
    "channel-binding-missing": "auth.channel_binding = require and the client did not bind "
                               "its login to the TLS channel: use a client with Extended "
                               "Protection (docs/clients.rst)",
    "secret-missing": "no stored secret for this mechanism: set the password again "
                      "with securepop --config FILE user passwd, or use PLAIN over TLS",
}


class LoginOutcome:
    """
    Mixed into L{securepop.protocol.authorization.AuthorizationCommands}:
    C{_login} runs a checked login to its end; C{_login_failed} accounts
    for a failure.  The session provides C{ctx}, C{sendLine}, the timers,
    C{_leases}, C{_ticket} and the maildrop (C{_open_mailbox}).
    """

    def _login(self, credentials, mechanism):
        started = self.clock.seconds()
        self._cancel_timer()
        d = self._inflight = self.ctx.login(credentials, self.peer, self._alive, self._ticket)

        def success(result):
            self._inflight = None
            record, mailbox, logout = result
            if self.state == CLOSED:
                return self._abandoned(mechanism, record, mailbox, logout)
            lease = self._leases[0] if self._leases else None
            counted = self._inflight = self.ctx.acquire_user(lease, record.username)
            counted.addCallbacks(self._user_counted, self._user_refused,
                                 callbackArgs=(mechanism, record, mailbox, logout, started),
                                 errbackArgs=(record, mailbox, logout))
            return counted

        def failure(f):
            self._inflight = None
            user = credentials.username
            if f.check(CancelledError):
                return None     # dropped before it ran: the client had gone
            if self.state == CLOSED:
                if f.check(UnauthorizedLogin):   # a guess is a guess, answered or not
                    self._login_failed(mechanism, user, _reason(f))
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
            if f.check(StateUnavailable):
                self.ctx.state_unavailable(f, ip=self.peer, user=user)
                self.sendLine(R.STATE_UNAVAILABLE)
                return None
            if f.check(MailboxUnavailable):
                events.emit("mailbox.unavailable", "error", ip=self.peer, user=user,
                            error=f.getErrorMessage())
                self.sendLine(R.MAILBOX_UNAVAILABLE)
                return None
            if f.check(UnauthorizedLogin):
                challenge = getattr(credentials, "failureChallenge", None)
                if challenge is not None:
                    return _bearer_refused(self, mechanism, user, _reason(f), challenge)
                return self._login_failed(mechanism, user, _reason(f))
            events.log.failure("Login error", failure=f)
            self.sendLine(R.INTERNAL)
            return None

        d.addCallbacks(success, failure)
        d.addBoth(self._after_login)
        return d

    def _abandoned(self, mechanism, record, mailbox, logout):
        mailbox.release()
        logout()
        # The client never saw this success: it counts as a failure, or
        # hanging up would tell a right guess by the next delay.
        self._login_failed(mechanism, record.username, "abandoned")

    def _user_counted(self, _, mechanism, record, mailbox, logout, started):
        """The user's session slot is taken: open the maildrop, say +OK."""
        self._inflight = None
        if self.state == CLOSED:
            return self._abandoned(mechanism, record, mailbox, logout)
        self._open_mailbox(mailbox, logout)
        self.username = record.username
        self.mechanism = mechanism
        self._logged_in()
        sizes = self._list_messages()
        ticket, self._ticket = self._ticket, None
        recorded = defer.maybeDeferred(self.ctx.penalty_success, self.peer, ticket)
        if ticket is not None:
            recorded.addBoth(lambda _: ticket.release())
        events.emit("auth.success", ip=self.peer, user=record.username,
                    mechanism=mechanism, tls=self.secure,
                    ms="%.1f" % ((self.clock.seconds() - started) * 1000))
        self.ctx.count("login", mechanism, "success")
        self.sendLine(b"+OK Logged in, %d messages (%d octets)" % (len(sizes), sum(sizes)))

    def _user_refused(self, f, record, mailbox, logout):
        """No session slot for the user (the limit, or the store is away)."""
        self._inflight = None
        mailbox.release()
        logout()
        if self.state == CLOSED:
            return None
        if f.check(LimitExceeded):
            events.emit("auth.limit", ip=self.peer, user=record.username)
            self.sendLine(R.TOO_MANY_SESSIONS)
        elif f.check(StateUnavailable):
            self.ctx.state_unavailable(f, ip=self.peer, user=record.username)
            self.sendLine(R.STATE_UNAVAILABLE)
        else:
            events.log.failure("Login error", failure=f)
            self.sendLine(R.INTERNAL)
        return None

    def _alive(self):
        return not self._gone

    def _after_login(self, result):
        self._release_ticket()      # the outcome is recorded: the next may go
        return result

    def _login_failed(self, mechanism, user, reason, reply=R.LOGIN_FAILED):
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
            ticket, self._ticket = self._ticket, None
            recorded = defer.maybeDeferred(self.ctx.penalty_failure, self.peer, user)
            if ticket is not None:      # the next check waits for this failure
                recorded.addBoth(lambda _: ticket.release())
        self._release_ticket()
        if self.state != CLOSED:
            self._count_attempt(mechanism, reason, reply)
        return defer.succeed(None)

    def _count_attempt(self, mechanism, reason, reply=None):
        self._attempts += 1
        if self._attempts >= self.ctx.settings.auth.max_attempts:
            events.emit("auth.attempts_exceeded", "warn", ip=self.peer)
            if reply is not None:
                self.sendLine(reply)
            self._abort(R.TOO_MANY_ATTEMPTS)
        elif reply is not None:
            self.sendLine(reply)


class _AwaitingDummy:
    """After a bearer error challenge: the client's next line only ends the AUTH."""

    username = None

    def abort(self):
        """Nothing is held."""


_AWAITING_DUMMY = _AwaitingDummy()


def _bearer_refused(session, mechanism, user, reason, challenge):
    """
    RFC 7628 section 3.2.2: a refused bearer token gets the error JSON as a
    continuation; the client's dummy response then gets the C{-ERR}.  The
    failure counts now, so a client that hangs up instead of answering has
    paid for its guess all the same.
    """
    session._login_failed(mechanism, user, reason, reply=None)
    if session.state != CLOSED:
        session._exchange, session._exchange_mech = _AWAITING_DUMMY, mechanism
        session.sendLine(b"+ " + base64.b64encode(challenge))
    return defer.succeed(None)


def _reason(failure):
    text = failure.getErrorMessage()
    return text if text and len(text) < 64 and text.isascii() else "unauthorized"
