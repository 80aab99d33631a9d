"""
The server-wide collaborators every session shares, behind one object.

A session asks its L{ServerContext} what is allowed now (capabilities,
mechanisms, credentials before TLS), to admit a peer, to log a user in, and
what a failure costs.  Reload swaps the settings and collaborators here, so
open sessions keep running and new ones see the new policy.
"""

from __future__ import annotations

import secrets
import os

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from securepop import events
from securepop.access.rules import Decision
from securepop.auth.gate import holder_ids
from securepop.auth.penalty import address_key
from securepop.auth.portal import LoginMind
from securepop.auth.verifyqueue import ALIVE, CLIENT
from securepop.errors import StateUnavailable
from securepop.interfaces import KERBEROS, ISecureMailbox
from securepop.protocol.states import AUTHORIZATION
from securepop.state.memory import MemoryStateStore
from securepop.state.slots import SlotLease

STATE_LOG_EVERY = 60.0      # seconds between two state.unavailable events


def source_kinds(source, gssapi=None):
    """
    The credential kinds logins can use: the source's, plus KERBEROS when a
    Kerberos acceptor (a keytab) is configured (GSSAPI needs the source only
    to look the user up, which every source can).
    """
    kinds = frozenset(source.capabilities())
    return kinds | {KERBEROS} if gssapi is not None else kinds


class ServerContext:
    """
    @ivar settings: the L{securepop.config.Settings} in force.
    @ivar portal: a twisted.cred Portal whose avatars are L{ISecureMailbox}.
    @ivar source: the L{securepop.interfaces.ICredentialSource}.
    @ivar mechanisms: name -> L{securepop.interfaces.ISASLMechanism}, enabled
        in the configuration and servable by the source.
    @ivar tls: the server TLS connection creator for STLS / implicit TLS.
    @ivar policy: an L{securepop.interfaces.IAccessPolicy} or None.
    @ivar state: the L{securepop.interfaces.IStateStore} every count lives
        in (connection slots, failures, lockout, turns): the same one for
        the life of the process, across reloads.
    @ivar limits: a L{securepop.access.limits.LimitRule} or None (nothing
        counted).
    @ivar penalty: a L{securepop.auth.penalty.PenaltyRule} or None.
    @ivar lockout: a L{securepop.auth.penalty.LockoutRule} or None.
    @ivar gate: a L{securepop.auth.gate.PenaltyGate} every login passes
        before its credentials are checked, or None.
    @ivar verifications: the L{securepop.auth.verifyqueue.VerificationQueue}
        password hashing runs on, or None.
    """

    def __init__(self, settings, clock, portal, source, mechanisms, tls=None,
                 policy=None, limits=None, penalty=None, lockout=None,
                 metrics=None, protocol_log=None, ntlm_delegate=None, gate=None,
                 verifications=None, gssapi=None, state=None):
        self.settings = settings
        self.state = state if state is not None else MemoryStateStore(clock)
        self._new_lease = holder_ids()
        self._state_logged = None
        self.clock = clock
        self.portal = portal
        self.source = source
        self.mechanisms = mechanisms
        self.tls = tls
        self.policy = policy
        self.limits = limits
        self.penalty = penalty
        self.lockout = lockout
        self.gate = gate
        self.verifications = verifications
        self.metrics = metrics
        self._protocol_log = protocol_log
        self._ntlm_delegate = ntlm_delegate
        self._gssapi = gssapi
        self.sessions = set()

    @property
    def hostname(self):
        return self.settings.server.hostname

    @property
    def apop_enabled(self):
        return self.settings.auth.apop

    # -- connection ----------------------------------------------------------

    def peer_address(self, transport):
        """The real client address: from a trusted PROXY header, else the socket."""
        real = getattr(transport, "proxied_peer", None)
        if real is not None:
            return real
        peer = transport.getPeer()
        host = getattr(peer, "host", str(peer))
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]         # IPv4-mapped: log and match the IPv4 form
        return host

    def admit(self, address):
        if self.policy is None:
            return Decision(True, None, "no-policy")
        return self.policy.check(address)

    def acquire_connection(self, address):
        """
        Count a new connection from C{address} (the real client address).

        @return: Deferred firing with a L{SlotLease} (C{release()} it when
            the connection ends; its user slot is added by
            L{acquire_user}), or failing with L{LimitExceeded} (nothing
            taken) or L{StateUnavailable}.
        """
        lease = SlotLease(self.state, self._new_lease())
        if self.limits is None:
            return defer.succeed(lease)
        try:
            counts = self.limits.connectionCounts(address)
        except ValueError:
            return defer.fail()
        return lease.add(counts).addCallback(lambda _: lease)

    def acquire_user(self, lease, username):
        """
        Add C{username}'s session slot to the connection's C{lease}.

        @return: Deferred firing with None, or failing with L{LimitExceeded}
            (answer C{-ERR [IN-USE]}) or L{StateUnavailable}.
        """
        if self.limits is None or lease is None:
            return defer.succeed(None)
        return lease.add(self.limits.userCounts(username))

    def state_unavailable(self, failure, **fields):
        """
        The one place a store outage is logged: C{state.unavailable} at most
        once a minute, never a traceback.  The caller answers C{[SYS/TEMP]}.
        """
        now = self.clock.seconds()
        if self._state_logged is None or now - self._state_logged >= STATE_LOG_EVERY:
            self._state_logged = now
            events.emit("state.unavailable", "error", store=self.state.kind,
                        error=failure.getErrorMessage(), **fields)

    def session_started(self, session):
        self.sessions.add(session)

    def session_ended(self, session):
        self.sessions.discard(session)

    def tls_started(self, session):
        events.emit("tls.starttls", ip=session.peer)

    # -- what is allowed now -----------------------------------------------------

    def credentials_allowed(self, session):
        """Require secure channel: no credentials before TLS unless allowed."""
        if session.secure:
            return True
        if session.listener.insecure_allow_cleartext:
            return True
        return not self.settings.tls.require_secure_channel

    def offered_mechanisms(self, session):
        """Mechanism names usable on this connection now, in configured order."""
        if not self.credentials_allowed(session):
            return []
        from securepop.sasl.registry import mechanisms_for

        allow_cleartext = session.listener.insecure_allow_cleartext or \
            not self.settings.tls.require_secure_channel
        offered = mechanisms_for(self.settings.auth.mechanisms, self.kinds(),
                                 session.secure, allow_cleartext)
        return [m.name for m in offered if m.name in self.mechanisms]

    def usable_mechanism(self, session, name):
        if name in self.offered_mechanisms(session):
            return self.mechanisms[name]
        return None

    def capabilities(self, session):
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if session.state == AUTHORIZATION:
            if (session.listener.tls == "starttls" and not session.secure
                    and self.tls is not None):
                caps.append(b"STLS")
            if self.settings.auth.user_pass and self.credentials_allowed(session):
                caps.append(b"USER")
            mechs = self.offered_mechanisms(session)
            if mechs:
                caps.append(b"SASL " + " ".join(mechs).encode("ascii"))
        if self.settings.server.implementation:
            caps.append(b"IMPLEMENTATION " + self.settings.server.implementation.encode(
                "ascii", "replace"))
        return caps

    def normalise(self, raw):
        """User name rules shared by every entry point (L{securepop.auth.usernames})."""
        from securepop.auth.usernames import normalise_username
        return normalise_username(raw, self.settings.auth, self.hostname)

    def apop_timestamp(self):
        """RFC 1939 timestamp: unguessable, fresh per connection."""
        return "<%s.%d@%s>" % (secrets.token_hex(12), os.getpid(), self.hostname)

    # -- login -------------------------------------------------------------------

    def enter_gate(self, address, username=None):
        """
        @param username: the user the credentials are for, when known
            before the check (its lockout count comes with the same read).
        @return: a Deferred firing with a ticket (C{release()} it once the
            outcome is recorded) when C{address} may have credentials
            checked: after its penalty, one at a time when penalised.
        """
        if self.gate is None:
            return defer.succeed(None)
        return self.gate.enter(address, username)

    def check_policy(self, username, ticket=None):
        """
        Refuse a user that policy refuses whatever the credentials (a
        lockout), before any mechanism proves anything to the client: with
        the user's count read at the gate (C{ticket}); without it, the
        login reads it (L{login}).

        @raise UnauthorizedLogin: C{locked-out}.
        """
        state = _state_for(ticket, username)
        if self.lockout is not None and username and state is not None \
                and self.lockout.locked(state):
            raise UnauthorizedLogin("locked-out")

    def login(self, credentials, address=None, alive=None, ticket=None):
        """
        @param address: the client the verification runs for (its hashing
            takes turns with other clients').
        @param alive: a callable, false once the client has gone (its
            queued hashing is then dropped).
        @param ticket: the gate's ticket; its state spares a second read
            of the user's lockout count when it was read for this user.
        @return: Deferred firing with (UserRecord, mailbox, logout); failing
            with L{UnauthorizedLogin} (C{locked-out} too) or
            L{StateUnavailable} when the lockout count cannot be read.
        """
        user = getattr(credentials, "username", None)
        if self.lockout is None or not user:
            return self._portal_login(credentials, address, alive)
        state = _state_for(ticket, user)
        if state is not None:
            d = defer.succeed(state)
        else:
            d = self.state.login_state(self._address_key(address), user)

        def checked(state):
            if self.lockout is not None and self.lockout.locked(state):
                raise UnauthorizedLogin("locked-out")
            return self._portal_login(credentials, address, alive)

        return d.addCallback(checked)

    def _portal_login(self, credentials, address, alive):
        mind = LoginMind()
        token, alive_token = CLIENT.set(address or "-"), ALIVE.set(alive)
        try:
            d = self.portal.login(credentials, mind, ISecureMailbox)
        finally:
            CLIENT.reset(token)
            ALIVE.reset(alive_token)
        return d.addCallback(lambda result: (mind.record, result[1], result[2]))

    def _address_key(self, address):
        if self.penalty is not None:
            return self.penalty.key(address)
        return address_key(address or "-")

    def penalty_failure(self, address, user):
        """
        A guess that failed: grows the address's penalty and the user's
        lockout (one write).

        @return: Deferred firing when it is recorded (never failing: an
            outage is logged, and the guess then counts nowhere).
        """
        if self.penalty is None and self.lockout is None:
            return defer.succeed(None)
        forget = self.penalty.forget_after if self.penalty is not None else 900.0
        window = self.lockout.window if self.lockout is not None else 0.0
        d = self.state.record_failure(self._address_key(address),
                                      user if self.lockout is not None else None,
                                      forget, window)
        return d.addCallbacks(lambda _: None, self._record_failed, errbackArgs=(address,))

    def penalty_success(self, address, ticket=None):
        """
        A success clears the address's failures; an address with none on
        record at the gate (C{ticket}) costs no write.  The user's lockout
        count stays: a success does not give an attacker new guesses.
        """
        if self.penalty is None:
            return defer.succeed(None)
        if ticket is not None and ticket.state.failures == 0:
            return defer.succeed(None)
        d = self.state.record_success(self._address_key(address), None)
        return d.addCallbacks(lambda _: None, self._record_failed, errbackArgs=(address,))

    def _record_failed(self, failure, address):
        failure.trap(StateUnavailable)
        self.state_unavailable(failure, ip=address)

    def channel_binding(self, transport, kind):
        from securepop.tls.contextfactory import channel_binding

        return channel_binding(transport, kind)

    def ntlm_delegate(self):
        if self._ntlm_delegate is None:
            return None
        return self._ntlm_delegate()

    def kinds(self):
        """What logins can be verified with: the source's kinds, and KERBEROS with a keytab."""
        return source_kinds(self.source, self._gssapi)

    def gssapi_acceptor(self, peer):
        """A fresh GSS-API acceptor context charged to C{peer}, or None without a keytab."""
        if self._gssapi is None:
            return None
        return self._gssapi.newExchange(peer)

    # -- reload --------------------------------------------------------------------

    def replace_from(self, fresh):
        """
        Serve with the settings and collaborators of C{fresh}, a context the
        reloaded configuration built: settings, portal, source, mechanisms,
        TLS, policy, the NTLM delegate, and the limit, penalty and lockout
        rules.  What must survive a reload stays: the state store (open
        sessions' connection counts, the failure history of attacking
        addresses, the lockout counts) and the line at the gate.
        Starting the new policy and retiring the old source are the
        caller's.
        """
        self.settings = fresh.settings
        self.portal = fresh.portal
        self.source = fresh.source
        self.mechanisms = fresh.mechanisms
        self.tls = fresh.tls
        self.policy = fresh.policy
        self._ntlm_delegate = fresh._ntlm_delegate
        self._gssapi = fresh._gssapi
        # The counts live in the store, which stays; only the rules change.
        self.limits = fresh.limits
        self.penalty = fresh.penalty
        self.lockout = fresh.lockout
        if self.gate is not None and fresh.gate is not None:
            self.gate.penalty = fresh.penalty
            self.gate.max_per_address = fresh.gate.max_per_address

    def use_protocol_log(self, protocol_log):
        """Write the protocol log to C{protocol_log} (a ProtocolLog), or nowhere for None."""
        self._protocol_log = protocol_log

    # -- observability -------------------------------------------------------------

    def count(self, *labels):
        if self.metrics is not None:
            self.metrics.count(*labels)

    def protocol_log(self, session, direction, line):
        if self._protocol_log is not None:
            self._protocol_log.write(session, direction, line)

    def protocol_log_reply(self, session, lines):
        """A multi-line reply: one protocol log entry, however many lines."""
        if self._protocol_log is not None:
            self._protocol_log.write_reply(session, lines)


def _state_for(ticket, username):
    """The L{securepop.state.LoginState} the gate read for C{username}, or None."""
    if ticket is None or ticket.username is None or ticket.username != username:
        return None
    return ticket.state
