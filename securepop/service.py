"""
makeService(settings, reactor): securepop as an IService, for twistd and
for embedding in another Twisted application.

Everything is built here from the frozen settings: credential source,
portal, mechanisms, TLS, access policy, limits, penalty; then one listener
per C{[[listen]]}.  C{reload()} rebuilds them from the file and hands them
to the shared L{ServerContext} (L{ServerContext.replace_from}): open
sessions are untouched.

L{compose_server} puts around that server what one serving process runs
(L{ServerRoot}: metrics, protocol log, graceful stop); it is what a worker
process runs, and what L{securepop.assembly} runs when there is one process.
"""

from __future__ import annotations

import stat

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, threads
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from securepop import config as configmodule
from securepop import events, serversecret
from securepop.access.dns import AccessResolver, makeTwistedResolver
from securepop.access.limits import LimitRule
from securepop.access.policy import AccessPolicy
from securepop.access.proxy import ProxyProtocolFactory, parseTrustedProxies
from securepop.access.rules import DomainRule, HostRule, RuleError, parseRules
from securepop.auth.ad import ADCredentialSource
from securepop.auth.cache import AuthCache
from securepop.auth.gate import PenaltyGate
from securepop.auth.kerberos import KerberosAcceptor
from securepop.auth.ldap import LDAPCredentialSource
from securepop.auth.oauth2 import build_validator
from securepop.auth.penalty import LockoutRule, PenaltyRule
from securepop.auth.portal import MaildirRealm, build_portal
from securepop.auth.sharedcache import SharedAuthCache
from securepop.auth.userfile import FileCredentialSource
from securepop.auth.usernames import for_settings, normalise_username
from securepop.auth.verifyqueue import VerificationQueue
from securepop.errors import ConfigError
from securepop.interfaces import PLAINTEXT
from securepop.lmtp.server import LMTPFactory
from securepop.mailstore.lease import LEASE_METHOD, LeasedMaildirStore, local_method
from securepop.mailstore.maildir import MaildirStore
from securepop.ops import limits as ops_limits
from securepop.ops import metrics as ops_metrics
from securepop.ops.protolog import ProtocolLog
from securepop.ops.shutdown import add_graceful_shutdown
from securepop.protocol.context import ServerContext, source_kinds
from securepop.protocol.server import POP3Factory
from securepop.sasl.registry import check_pairings, mechanism_for
from securepop.sasl.scram import ScramSHA256Mechanism
from securepop.state.build import build_state
from securepop.schemes import HashParameters
from securepop.tls import certificates
from securepop.tls.contextfactory import ServerTLS
from securepop.tls.profiles import TLSPolicy
from securepop.tls.transport import ServerTLSFactory


def prepare_data_dir(settings):
    """Create the data directory (0700) and refuse one others can enter."""
    path = settings.data_path
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        events.emit("config.warning", "warn", key="server.data_dir",
                    problem=f"data directory mode is {mode:04o}; 0700 is expected")
    return path


class BlockingPool:
    """A dedicated, bounded thread pool for password hashing and disk scans."""

    def __init__(self, reactor, name, size=4):
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def start(self):
        self.pool.start()

    def stop(self):
        self.pool.stop()

    def __call__(self, f, *args):
        return threads.deferToThreadPool(self.reactor, self.pool, f, *args)


def build_credential_source(settings, reactor, run_blocking=None):
    """
    The ICredentialSource the configuration names; C{run_blocking} runs its
    password hashing (a L{VerificationQueue}: never the mailbox pool).
    """
    auth = settings.auth
    if auth.source == "file":
        return FileCredentialSource(settings.resolve(auth.file.path), run_blocking,
                                    params=HashParameters.from_settings(auth.file),
                                    normalise=for_settings(settings))
    if auth.source == "ldap":
        return LDAPCredentialSource.fromSettings(auth.ldap, reactor, settings)
    return ADCredentialSource.fromSettings(auth.ad, reactor, settings)


def ntlm_verifier_of(source):
    """
    The winbind verifier that checks NTLM with the domain controller for an
    Active Directory source, or None (other sources, or AD without
    C{ntlm_auth}).
    """
    if isinstance(source, ADCredentialSource):
        return source.ntlmVerifier
    return None


def build_mechanisms(settings, source, server_secret=None, gssapi=None):
    """
    The enabled SASL mechanisms the source can serve; an impossible pairing
    (e.g. CRAM-MD5 with Active Directory) stops the start.  Mechanisms that
    key something by the server secret (SCRAM's made-up salts) get it: the
    data directory's one unless C{server_secret} is given.  GSSAPI needs
    C{gssapi}, the Kerberos acceptor.
    """
    capabilities = source_kinds(source, gssapi)
    wanted = list(settings.auth.mechanisms)
    try:
        check_pairings(wanted + (["APOP"] if settings.auth.apop else []), capabilities)
    except ValueError as e:
        raise ConfigError(settings.path or "(defaults)", "auth.mechanisms", str(e))
    mechanisms = {name: mechanism_for(name, capabilities) for name in wanted}
    keyed = [name for name, m in mechanisms.items() if isinstance(m, ScramSHA256Mechanism)]
    if keyed:
        if server_secret is None:
            server_secret = serversecret.for_settings(settings)
        for name in keyed:
            mechanisms[name] = mechanisms[name].withServerSecret(server_secret)
    return mechanisms


def build_bearer(settings, reactor):
    """The OAuth 2.0 token validator, or None without OAUTHBEARER/XOAUTH2."""
    return build_validator(settings, reactor, lambda raw: normalise_username(
        raw, settings.auth, settings.server.hostname))


def build_tls(settings, clock):
    """The shared TLS server creator (profiles, certificates, SNI, reload)."""
    tls = settings.tls
    if tls.certificate:
        cert, key = str(settings.resolve(tls.certificate)), str(settings.resolve(tls.key))
    else:
        made = certificates.ensure_default_certificate(str(settings.data_path),
                                                       settings.server.hostname)
        cert, key = made.certificate, made.key
        events.emit("tls.default_certificate", path=cert, action=made.action,
                    message="covers " + (", ".join(made.names) or "no subjectAltName"))
        if made.problem:
            # securepop's own certificate lacks a name of this machine and
            # could not be re-made; one that is not its own is the
            # administrator's choice (ServerTLS warns if it misses
            # server.hostname).
            events.emit("tls.certificate_warning", "warn", path=cert,
                        message=f"it does not cover {', '.join(made.missing)}: "
                                f"{made.problem}")
    try:
        policy = TLSPolicy(profile=tls.profile, min_cipher_bits=tls.min_cipher_bits)
    except ValueError as e:
        key = "tls.min_cipher_bits" if "min_cipher_bits" in str(e) else "tls.profile"
        raise ConfigError(settings.path or "(defaults)", key, str(e))
    sni = [(s.hostname, str(settings.resolve(s.certificate)), str(settings.resolve(s.key)))
           for s in tls.sni]
    creator = ServerTLS(policy, cert, key, sni=sni, hostname=settings.server.hostname,
                        clock=clock)
    for warning in creator.warnings():
        events.emit("tls.certificate_warning", "warn", problem=str(warning))
    return creator


def build_access(settings, reactor):
    """The access policy (rules, DNS) and the connection limits."""
    a = settings.access
    try:
        rules = parseRules(a.rules)
        resolver = None
        needs_dns = any(isinstance(r, HostRule) for r in rules) or (
            a.reverse_dns and any(isinstance(r, DomainRule) for r in rules))
        if needs_dns:
            resolver = AccessResolver(
                makeTwistedResolver(reactor, a.dns_servers), reactor,
                timeout=a.dns_timeout, maxConcurrentLookups=a.max_concurrent_lookups)
        policy = AccessPolicy(rules, a.mode, resolver, reactor, reverse_dns=a.reverse_dns,
                              dns_failure=a.dns_failure)
    except ValueError as e:
        index = e.index if isinstance(e, RuleError) else None
        key = "access.rules" if index is None else f"access.rules[{index}]"
        raise ConfigError(settings.path or "(defaults)", key, str(e))
    limits = LimitRule(a.max_connections, a.max_connections_per_ip,
                       a.max_connections_per_user)
    return policy, limits


def build_penalty(settings, clock, state):
    """
    The failure penalty and lockout rules, and the gate in front of every
    verification; the counts they judge live in C{state} (an IStateStore).
    """
    a = settings.auth
    penalty = PenaltyRule(base=a.failure_delay, maximum=a.failure_delay_max)
    gate = PenaltyGate(clock, state, penalty, max_per_address=a.max_verifications_per_ip)
    lockout = None
    if a.lockout_threshold:
        lockout = LockoutRule(a.lockout_threshold, a.lockout_window)
    return penalty, gate, lockout


def build_verifications(settings, reactor):
    """The hashing pool: its own threads, bounded, fair across clients."""
    a = settings.auth
    return VerificationQueue(reactor, threads=a.hash_threads or None,
                             max_queued=a.max_queued_verifications,
                             max_per_client=a.max_verifications_per_ip)


def build_context(settings, reactor, pool, verifications=None, state=None):
    """
    Everything a session needs, from the settings.

    @param state: the L{securepop.interfaces.IStateStore} to count in (the
        process's one store, kept across reloads); a fresh memory store
        when None.
    """
    prepare_data_dir(settings)
    if state is None:
        state = build_state(settings, reactor)
    secret = serversecret.for_settings(settings)
    source = build_credential_source(settings, reactor, verifications or pool)
    gssapi = KerberosAcceptor.fromSettings(settings, verifications or pool)
    mechanisms = build_mechanisms(settings, source, secret, gssapi)
    if settings.auth.user_pass and PLAINTEXT not in source.capabilities():
        raise ConfigError(settings.path or "(defaults)", "auth.user_pass",
                          f"the {source.name} source cannot verify passwords")
    trash = settings.mail.trash_folder if settings.mail.on_delete == "trash" else None
    store = MaildirStore(settings.mail.root, str(settings.data_path), trash=trash,
                         reactor=reactor, threadpool=pool.pool if pool else None,
                         staleAfter=settings.mail.lock_stale_after,
                         lockMethod=local_method(settings.mail.lock),
                         inlineOpenMax=settings.mail.inline_open_max_messages)
    if settings.mail.lock == LEASE_METHOD:
        store = LeasedMaildirStore(store, state)
    realm = MaildirRealm(store)
    cache = shared = None
    if settings.auth.cache_ttl > 0:
        # A fresh cache (and HMAC key) for every context: a reload forgets
        # every cached login of this process.
        cache = AuthCache(reactor, ttl=settings.auth.cache_ttl,
                          negative_ttl=min(5.0, settings.auth.cache_ttl),
                          max_entries=settings.auth.cache_max_entries)
        if state.kind != "memory":
            # The shared level: what one worker or node verified, the others
            # trust for what is left of its TTL (keys and values MACed under
            # the server secret every node shares).
            shared = SharedAuthCache(state, secret, reactor, ttl=cache.ttl,
                                     negative_ttl=cache.negative_ttl)
    portal = build_portal(source, realm, cache, build_bearer(settings, reactor), shared)
    tls = build_tls(settings, reactor)
    policy, limits = build_access(settings, reactor)
    penalty, gate, lockout = build_penalty(settings, reactor, state)
    verifier = ntlm_verifier_of(source)
    delegate = verifier.newExchange if verifier is not None else None
    return ServerContext(settings, reactor, portal, source, mechanisms, tls=tls,
                         policy=policy, limits=limits, penalty=penalty, gate=gate,
                         lockout=lockout, ntlm_delegate=delegate,
                         verifications=verifications, gssapi=gssapi, state=state)


class SecurePOPService(service.MultiService):
    """
    The whole server: listeners over one shared L{ServerContext}.

    C{reload()} re-reads the configuration file; an invalid file is logged
    and the settings in force stay.

    @ivar listeners: the listener services, in C{[[listen]]} order; each has
        C{listener} (its L{securepop.config.ListenSettings}) and C{proxy}
        (the L{ProxyProtocolFactory} in front of it).
    """

    def __init__(self, settings, reactor):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.pool = BlockingPool(reactor, "securepop-blocking")
        self.verifications = build_verifications(settings, reactor)
        self.state = build_state(settings, reactor)
        self.context = build_context(settings, reactor, self.pool, self.verifications,
                                     self.state)
        self.listeners = []
        for listener in settings.listen:
            self._add_listener(listener)
        self.lmtp_listeners = [self._add_lmtp_listener(i, lmtp)
                               for i, lmtp in enumerate(settings.lmtp)]

    def _add_listener(self, listener):
        factory = POP3Factory(self.context, listener)
        if listener.tls == "implicit":
            factory = ServerTLSFactory(CurrentTLS(self.context), factory)
        # The PROXY header comes before TLS on the wire, and the policy must
        # see the real client before the greeting.  Every listener has the
        # PROXY factory, so a reload can switch trusted_proxies on, change
        # it or switch it off; with an empty list it adds nothing.
        proxy = ProxyProtocolFactory(factory, trusted_proxies(self.settings), self.reactor)
        try:
            endpoint = endpoints.serverFromString(self.reactor, listener.endpoint)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(self.settings.path or "(defaults)", "listen.endpoint",
                              f"{listener.endpoint!r}: {e}")
        svc = StreamServerEndpointService(endpoint, proxy)
        svc._raiseSynchronously = True
        svc.setName(f"listen:{listener.endpoint}")
        svc.listener = listener
        svc.proxy = proxy
        svc.setServiceParent(self)
        self.listeners.append(svc)

    def _add_lmtp_listener(self, index, lmtp):
        """An C{[[lmtp]]} listener: a Unix socket gets C{lmtp.mode}."""
        description = lmtp.endpoint
        if description.startswith("unix:") and ":mode=" not in description:
            description += f":mode={lmtp.mode:o}"
        try:
            endpoint = endpoints.serverFromString(self.reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(self.settings.path or "(defaults)", f"lmtp[{index}].endpoint",
                              f"{lmtp.endpoint!r}: {e}")
        svc = StreamServerEndpointService(endpoint, LMTPFactory(self.context, lmtp, self.pool))
        svc._raiseSynchronously = True
        svc.setName(f"lmtp:{lmtp.endpoint}")
        svc.setServiceParent(self)
        return svc

    def startService(self):
        ops_limits.raise_open_files_limit(self.settings)
        self.pool.start()
        self.verifications.start()
        self.state.start().addErrback(
            lambda f: events.emit("state.start_failed", "error", store=self.state.kind,
                                  error=f.getErrorMessage()))
        self.context.policy.start()
        super().startService()
        for svc in self.listeners:
            events.emit("listen", endpoint=svc.listener.endpoint, tls=svc.listener.tls)
        for lmtp in self.settings.lmtp:
            events.emit("listen", endpoint=lmtp.endpoint, protocol="lmtp")
        source = self.context.source
        if isinstance(source, FileCredentialSource) and not source.users:
            cfg = f" --config {self.settings.path}" if self.settings.path else ""
            events.emit("users.none", "warn",
                        message=f"no users yet; add one with: securepop{cfg} --data-dir "
                                f"{self.settings.server.data_dir} user add NAME"
                                + ("" if cfg else " (with --config FILE once the daemon runs"
                                   " with one: auth.mechanisms decide the secrets stored)"))

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda r: (self.pool.stop(), self.verifications.stop(),
                             self.context.policy.stop(), r)[3])
        d.addBoth(lambda r: self.state.stop().addBoth(lambda _: r))
        return d

    def reload(self):
        """SIGHUP: rebuild from the file; keep the old settings on any error."""
        path = self.settings.path
        try:
            fresh = configmodule.load(path, self.settings.server.data_dir) if path else \
                self.settings
            context = build_context(fresh, self.reactor, self.pool, self.verifications,
                                    self.state)
            trusted = trusted_proxies(fresh)
        except Exception as e:
            events.emit("config.reload_failed", "error", error=str(e))
            return False
        old_source = self.context.source
        context.policy.start()
        self.context.policy.stop()
        self.context.replace_from(context)
        auth = fresh.auth
        self.verifications.max_queued = auth.max_queued_verifications
        self.verifications.max_per_client = auth.max_verifications_per_ip
        if fresh.access.max_connections != self.settings.access.max_connections:
            ops_limits.raise_open_files_limit(fresh)    # warns if the new limit is out of reach
        for svc in self.listeners:
            svc.proxy.setTrustedProxies(trusted)
        if old_source is not self.context.source:
            # Sessions in flight may still use the old source's threads or DC
            # helpers: retire it after a grace period.
            self.reactor.callLater(RETIRE_AFTER, retire_source, old_source)
        self.settings = fresh
        events.emit("config.reloaded", path=path)
        return True


def trusted_proxies(settings):
    """C{access.trusted_proxies} as networks; a bad entry is a L{ConfigError}."""
    try:
        return parseTrustedProxies(settings.access.trusted_proxies)
    except ValueError as e:
        raise ConfigError(settings.path or "(defaults)", "access.trusted_proxies", str(e))


RETIRE_AFTER = 60.0     # seconds a replaced credential source lives on after a reload


def retire_source(source):
    """
    Stop a replaced credential source's threads and helper processes: its
    own (C{shutdown()}, which every source the service builds has) and those
    of the winbind verifier that checks NTLM for it.
    """
    source.shutdown()
    verifier = ntlm_verifier_of(source)
    if verifier is not None:
        verifier.stop()


@implementer(IOpenSSLServerConnectionCreator)
class CurrentTLS:
    """
    The TLS creator an implicit-TLS listener holds: it asks the shared
    context for the creator in force, so a reload that replaces it reaches
    listeners built before the reload.
    """

    def __init__(self, context):
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol):
        return self.context.tls.serverConnectionForTLS(tlsProtocol)


def makeService(settings=None, reactor=None):
    """
    Build securepop as an L{IService}.

    @param settings: L{securepop.config.Settings}; the embedded default when
        None.
    @param reactor: the reactor to use; the global one when None.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if settings is None:
        settings = configmodule.load(None)
    return SecurePOPService(settings, reactor)


# -- one serving process -------------------------------------------------------------


class ServerRoot(service.MultiService):
    """
    One process serving POP3: the L{SecurePOPService} plus metrics,
    protocol log and graceful stop.  C{reload()} reloads all of them.

    @ivar server: the L{SecurePOPService}.
    @ivar metrics: the L{securepop.ops.metrics.Metrics} or None.
    @ivar protocol_log: the L{securepop.ops.protolog.ProtocolLog} or None.
    """

    def __init__(self, server, serve_metrics=True):
        super().__init__()
        self.server = server
        self.reactor = server.reactor
        self.metrics = None
        self.instrumentation = None
        self.protocol_log = None
        server.setServiceParent(self)
        self.shutdown = add_graceful_shutdown(server, server.settings.server.shutdown_grace)
        self._configure_protocol_log(server.settings)
        self._configure_metrics(server.settings, serve_metrics)

    def _configure_metrics(self, settings, serve):
        multiprocess = ops_metrics.multiprocess_enabled()
        if not (settings.metrics.endpoint or multiprocess):
            return
        self.metrics = ops_metrics.Metrics()
        self.instrumentation = ops_metrics.instrument(self.server.context, self.metrics)
        if serve and settings.metrics.endpoint:
            try:
                svc = ops_metrics.metrics_service(self.reactor, settings.metrics.endpoint,
                                                  self.metrics.render)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(settings.path or "(defaults)", "metrics.endpoint", str(e))
            svc.setServiceParent(self)

    def _configure_protocol_log(self, settings):
        wanted = str(settings.resolve(settings.log.protocol_log)) \
            if settings.log.protocol_log else None
        current = self.protocol_log.path if self.protocol_log is not None else None
        if wanted == current:
            if self.protocol_log is not None:
                self.protocol_log.reopen()
            return
        old = self.protocol_log
        self.protocol_log = ProtocolLog(wanted) if wanted else None
        self.server.context.use_protocol_log(self.protocol_log)
        if old is not None:
            old.close()

    def reload(self):
        """SIGHUP: the server's reload, then the protocol log (logrotate) and grace."""
        ok = self.server.reload()
        settings = self.server.settings
        try:
            self._configure_protocol_log(settings)
        except OSError as e:
            events.emit("protocol_log.reopen_failed", "error", error=e.strerror or str(e))
        self.shutdown.grace = settings.server.shutdown_grace
        return ok

    def stopService(self):
        d = service.MultiService.stopService(self)

        def closed(result):
            if self.protocol_log is not None:
                self.protocol_log.close()
            if self.instrumentation is not None:
                self.instrumentation.uninstall()
            return result

        return d.addBoth(closed)


def compose_server(settings, reactor, serve_metrics=True):
    """
    The L{ServerRoot} for C{settings}: one serving process (the only one, or
    one worker).

    @raise ConfigError: the configuration cannot work.
    """
    return ServerRoot(SecurePOPService(settings, reactor), serve_metrics)
