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
from securepop.auth.portal import LoginMind
from securepop.auth.verifyqueue import ALIVE, CLIENT
from securepop.interfaces import KERBEROS, ISecureMailbox
from securepop.protocol.states import AUTHORIZATION


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
    @ivar limits: a L{securepop.access.limits.ConnectionLimits} or None.
    @ivar penalty: a L{securepop.auth.penalty.FailurePenalty} or None.
    @ivar gate: a L{securepop.auth.gate.PenaltyGate} every login passes
        before its credentials are checked, or None.
    @ivar verifications: the L{securepop.auth.verifyqueue.VerificationQueue}
        password hashing runs on, or None.
    """

    def __init__(self, settings, clock, portal, source, mechanisms, tls=None,
                 policy=None, limits=None, penalty=None, lockout=None,
                 metrics=None, protocol_log=None, ntlm_delegate=None, gate=None,
                 verifications=None, gssapi=None):
        self.settings = settings
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

    def enter_gate(self, address):
        """
        @return: a Deferred firing with a ticket (C{release()} it once the
            outcome is recorded) when C{address} may have credentials
            checked: after its penalty, one at a time when penalised.
        """
        if self.gate is None:
            return defer.succeed(None)
        return self.gate.enter(address)

    def check_policy(self, username):
        """
        Refuse a user that policy refuses whatever the credentials (a
        lockout), before any mechanism proves anything to the client.

        @raise UnauthorizedLogin: C{locked-out}.
        """
        if self.lockout is not None and username and self.lockout.locked(username):
            raise UnauthorizedLogin("locked-out")

    def login(self, credentials, address=None, alive=None):
        """
        @param address: the client the verification runs for (its hashing
            takes turns with other clients').
        @param alive: a callable, false once the client has gone (its
            queued hashing is then dropped).
        @return: Deferred firing with (UserRecord, mailbox, logout).
        """
        user = getattr(credentials, "username", None)
        try:
            self.check_policy(user)
        except UnauthorizedLogin:
            return defer.fail()
        mind = LoginMind()
        token, alive_token = CLIENT.set(address or "-"), ALIVE.set(alive)
        try:
            d = self.portal.login(credentials, mind, ISecureMailbox)
        finally:
            CLIENT.reset(token)
            ALIVE.reset(alive_token)
        return d.addCallback(lambda result: (mind.record, result[1], result[2]))

    def penalty_failure(self, address, user):
        """A guess that failed: grows the address's penalty and the user's lockout."""
        if self.lockout is not None and user:
            self.lockout.record_failure(user)
        if self.penalty is None:
            return 0.0
        self.penalty.record_failure(address)
        return self.penalty.delay_for(address)

    def penalty_success(self, address):
        if self.penalty is not None:
            self.penalty.record_success(address)

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
        TLS, policy and the NTLM delegate.  What must survive a reload stays
        (open sessions and their connection counts, the failure history of
        attacking addresses, the lockout counts); only its limits change.
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
        if self.limits is not None and fresh.limits is not None:
            self.limits.maxConnections = fresh.limits.maxConnections
            self.limits.maxPerIP = fresh.limits.maxPerIP
            self.limits.maxPerUser = fresh.limits.maxPerUser
        if self.penalty is not None and fresh.penalty is not None:
            self.penalty.base, self.penalty.maximum = fresh.penalty.base, fresh.penalty.maximum
        if self.gate is not None and fresh.gate is not None:
            self.gate.max_per_address = fresh.gate.max_per_address
        if (self.lockout is None) != (fresh.lockout is None):
            self.lockout = fresh.lockout
        elif self.lockout is not None:
            self.lockout.threshold = fresh.lockout.threshold
            self.lockout.window = fresh.lockout.window

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
