"""
The connections to a directory: servers, pooled connections, failover and
the thread pool they are used on (Dovecot's C{db-ldap.c}, beside the
credential source in L{securepop.auth.ldap} as C{passdb-ldap.c}).

ldap3 is a blocking library, so every directory operation runs on a
dedicated, bounded L{ThreadPool} (never the reactor's default pool, which
also resolves host names).  Connections are pooled per server and reused: a
TLS handshake costs far more than a search.  Servers are tried in the
configured order; a server that failed is skipped for C{retry_down_after}
seconds and then tried again, so the first server takes over again when it
is back, and logins recover without a restart.
"""

import math
import ssl
import threading

import ldap3
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from securepop.config import parse_ldap_url
from securepop.errors import SourceUnavailable

# LDAP result codes (RFC 4511) that are an answer, not an outage.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49

_ROLES = ("search", "bind")


class ServerFailure(Exception):
    """This server cannot answer now; the next one may."""


class Refused(Exception):
    """The directory answered: this login is refused (reason for logs)."""


def read_bind_password(settings):
    """
    @return: the service account's password from C{bind_password_file}
        (without the line end), or L{None} when no file is configured.
    """
    if not settings.bind_password_file:
        return None
    with open(settings.bind_password_file, "rb") as password_file:
        return password_file.read().rstrip(b"\r\n").decode("utf-8")


class _Server:
    """
    One directory server, its health and its idle connections.
    """

    def __init__(self, url, settings):
        host, port, use_ssl, use_start_tls = parse_ldap_url(url, settings)
        # CERT_REQUIRED: ldap3 then checks the chain against ca_file (else
        # the system CAs) and the host name against the URL's.
        tls = None
        if use_ssl or use_start_tls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                            ca_certs_file=settings.ca_file or None, sni=host)
        self.url = url
        self.start_tls = use_start_tls
        self._server_args = dict(
            host=host, port=port, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE,
            connect_timeout=settings.connect_timeout, mode=ldap3.IP_V4_PREFERRED)
        self.ldap_server = self.fresh_ldap_server()
        self.down_until = None
        self.last_error = None
        self.idle = {role: [] for role in _ROLES}

    def fresh_ldap_server(self):
        """
        A new L{ldap3.Server}: ldap3 remembers unreachable addresses for
        minutes, and a fresh object lets a retry really try.
        """
        return ldap3.Server(**self._server_args)

    def take_idle(self):
        """Forget the idle connections and return them (for closing)."""
        idle = [connection for role in _ROLES for connection in self.idle[role]]
        self.idle = {role: [] for role in _ROLES}
        return idle


class LDAPPool:
    """
    The servers of one directory and the threads that talk to them.

    L{run} runs C{work(session)} on a pool thread against the first server
    that answers, within C{request_timeout}; C{work} raises L{Refused} for a
    refusal and L{ServerFailure} (or lets ldap3 raise) for an outage.
    """

    _log = Logger()

    def __init__(self, settings, reactor, name, bind_password=None,
                 threadpool=None, connection_factory=None, run_in_thread=None):
        """
        @param settings: L{securepop.config.LDAPSettings}.
        @param reactor: provides IReactorTime and IReactorCore (the thread
            pool starts and stops with it) and IReactorFromThreads.
        @param name: the source's name, for logs and the thread names.
        @param bind_password: the service password (else read from
            C{settings.bind_password_file}).
        @param threadpool: a L{ThreadPool} to use instead of a fresh one
            (the caller then starts and stops it).
        @param connection_factory: C{f(ldap3.Server, user, password) ->
            ldap3.Connection}; tests give ldap3's MOCK_SYNC strategy here.
        @param run_in_thread: C{f(callable) -> Deferred}; tests run inline.
        @raise ValueError: no URL, a URL the TLS policy refuses, or a
            C{bind_dn} without a password.
        """
        if not settings.urls:
            raise ValueError("at least one LDAP URL is needed")
        if bind_password is None:
            bind_password = read_bind_password(settings)
        if isinstance(bind_password, bytes):
            bind_password = bind_password.decode("utf-8")
        if settings.bind_dn and not bind_password:
            raise ValueError("bind_dn is set but no bind password was given")
        self.settings = settings
        self.name = name
        self._reactor = reactor
        self._bind_password = bind_password
        self._connection_factory = connection_factory or self._make_connection
        self._lock = threading.Lock()
        self._pending = 0
        self.servers = [_Server(url, settings) for url in settings.urls]
        self.threadpool = threadpool
        if run_in_thread is None:
            if threadpool is None:
                self.threadpool = ThreadPool(
                    minthreads=0, maxthreads=settings.pool_size,
                    name=f"securepop-{name}")
                reactor.callWhenRunning(self.threadpool.start)
                reactor.addSystemEventTrigger("during", "shutdown", self.shutdown)

            def run_in_thread(function):
                return deferToThreadPool(reactor, self.threadpool, function)

        self._run_in_thread = run_in_thread

    def run(self, work):
        """
        Run C{work(session)} in the pool, against the first server that
        answers, with an overall deadline.

        @return: Deferred with C{work}'s result, or failing with
            L{UnauthorizedLogin} (refused) or L{SourceUnavailable} (outage,
            timeout, queue full).
        """
        settings = self.settings
        if self._pending >= settings.max_pending:
            return fail(SourceUnavailable(f"{self.name}: too many queued logins"))
        self._pending += 1
        outer = Deferred()

        def finished(result):
            self._pending -= 1
            if timer.active():
                timer.cancel()
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)

        def expired():
            if not outer.called:
                self._log.warn("{source}: directory request timed out",
                               source=self.name)
                outer.errback(SourceUnavailable(
                    f"{self.name}: no answer within {settings.request_timeout} s"))

        timer = self._reactor.callLater(settings.request_timeout, expired)
        self._run_in_thread(lambda: self._failover(work)).addBoth(finished)
        return outer.addErrback(self._translate)

    def shutdown(self):
        """
        Stop the thread pool and close idle connections (reactor shutdown).
        """
        if self.threadpool is not None and self.threadpool.started:
            self.threadpool.stop()
        with self._lock:
            connections = [c for server in self.servers for c in server.take_idle()]
        for connection in connections:
            quiet_unbind(connection)

    def _translate(self, failure):
        if failure.check(Refused):
            self._log.info("{source}: login refused: {reason}",
                           source=self.name, reason=str(failure.value))
            raise UnauthorizedLogin(str(failure.value))
        if failure.check(SourceUnavailable, UnauthorizedLogin):
            return failure
        self._log.failure("{source}: unexpected error", failure, source=self.name)
        raise SourceUnavailable(f"{self.name}: {failure.value!r}")

    # -- failover (pool threads) ------------------------------------------

    def _candidates(self):
        now = self._reactor.seconds()
        with self._lock:
            ready = [server for server in self.servers
                     if server.down_until is None or server.down_until <= now]
        # When every server is marked down, try them all anyway: it is the
        # only way to notice they are back.
        return ready or list(self.servers)

    def _failover(self, work):
        last_error = "no server"
        for server in self._candidates():
            session = Session(self, server)
            try:
                result = work(session)
            except ServerFailure as error:
                session.discard()
                self._mark_down(server, error)
                last_error = f"{server.url}: {error}"
                continue
            except BaseException:
                session.release()
                raise
            session.release()
            self._mark_up(server)
            return result
        raise SourceUnavailable(f"{self.name}: no directory server answered "
                                f"({last_error})")

    def _mark_down(self, server, error):
        with self._lock:
            was_up = server.down_until is None
            server.down_until = self._reactor.seconds() + self.settings.retry_down_after
            server.last_error = str(error)
            server.ldap_server = server.fresh_ldap_server()
            idle = server.take_idle()
        for connection in idle:
            quiet_unbind(connection)
        if was_up:
            self._log.warn("{source}: server {url} failed ({error}); "
                           "skipping it for {seconds} s",
                           source=self.name, url=server.url, error=str(error),
                           seconds=self.settings.retry_down_after)

    def _mark_up(self, server):
        with self._lock:
            was_down = server.down_until is not None
            server.down_until = None
            server.last_error = None
        if was_down:
            self._log.info("{source}: server {url} answers again",
                           source=self.name, url=server.url)

    # -- the connection pool (pool threads) ---------------------------------

    def checkout(self, server, role):
        """
        An idle connection of C{role} (C{"search"}: bound as the service
        account; C{"bind"}: for binds as users), or a new one.

        @raise ServerFailure: the server cannot be reached, refuses
            StartTLS, or refuses the service account.
        """
        with self._lock:
            if server.idle[role]:
                return server.idle[role].pop()
        if role == "search":
            user, password = self.settings.bind_dn or None, self._bind_password
        else:
            user, password = None, None
        connection = None
        try:
            connection = self._connection_factory(server.ldap_server, user, password)
            connection.open()
            if server.start_tls and not connection.start_tls():
                raise ServerFailure(f"StartTLS refused: {connection.result}")
            if role == "search" and not connection.bind():
                # A service account that cannot bind makes every login
                # fail: an outage, never "wrong password".
                raise ServerFailure(
                    f"service bind failed: {describe(connection.result)}")
        except Exception as error:  # ldap3 raises more than LDAPException
            if connection is not None:
                quiet_unbind(connection)
            if isinstance(error, ServerFailure):
                raise
            raise ServerFailure(repr(error)) from None
        return connection

    def checkin(self, server, role, connection):
        """Keep C{connection} for the next request, up to C{pool_size}."""
        with self._lock:
            if len(server.idle[role]) < self.settings.pool_size:
                server.idle[role].append(connection)
                return
        quiet_unbind(connection)

    def _make_connection(self, ldap_server, user, password):
        return ldap3.Connection(
            ldap_server, user=user, password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            # ldap3 packs this into SO_RCVTIMEO as an integer: whole seconds.
            receive_timeout=max(1, math.ceil(self.settings.timeout)),
            raise_exceptions=False,
            read_only=True, auto_referrals=False, check_names=False,
            return_empty_attributes=False,
        )


class Session:
    """
    The connections one request uses on one server (one per role).

    @ivar server: the server this request talks to (its C{url} is reported).
    """

    def __init__(self, pool, server):
        self.pool = pool
        self.server = server
        self._connections = {}

    def _connection(self, role):
        if role not in self._connections:
            self._connections[role] = self.pool.checkout(self.server, role)
        return self._connections[role]

    def search(self, base, search_filter, attributes, scope=ldap3.SUBTREE,
               size_limit=0):
        """
        Search as the service account.

        @return: list of C{{"dn": str, "raw": {lowercased name: [bytes]}}};
            empty when C{base} does not exist.
        @raise Refused: more than C{size_limit} entries match.
        @raise ServerFailure: any other error.
        """
        connection = self._connection("search")
        time_limit = max(1, int(self.pool.settings.timeout))
        try:
            connection.search(base, search_filter, search_scope=scope,
                              attributes=attributes or [ldap3.NO_ATTRIBUTES],
                              size_limit=size_limit, time_limit=time_limit)
        except Exception as error:  # ldap3 raises more than LDAPException
            self._drop("search")
            raise ServerFailure(repr(error)) from None
        code = connection.result.get("result")
        if code == _NO_SUCH_OBJECT:
            return []
        if code == _SIZE_LIMIT_EXCEEDED and size_limit:
            raise Refused("more entries match than expected")
        if code != _SUCCESS:
            self._drop("search")
            raise ServerFailure(f"search: {describe(connection.result)}")
        entries = []
        for item in connection.response or ():
            if item.get("type") != "searchResEntry":
                continue
            raw = {name.lower(): list(values)
                   for name, values in item.get("raw_attributes", {}).items()}
            entries.append({"dn": item["dn"], "raw": raw})
        return entries

    def bind_as(self, dn, password):
        """
        Bind as C{dn} with C{password} on the bind connection.

        @raise Refused: invalid credentials.
        @raise ServerFailure: any other error.
        """
        connection = self._connection("bind")
        connection.user = dn
        connection.password = password
        connection.authentication = ldap3.SIMPLE
        try:
            bound = connection.bind()
        except Exception as error:  # ldap3 raises more than LDAPException
            self._drop("bind")
            raise ServerFailure(repr(error)) from None
        if bound:
            return
        code = connection.result.get("result")
        if code == _INVALID_CREDENTIALS:
            raise Refused(f"bind as {dn}: {describe(connection.result)}")
        self._drop("bind")
        raise ServerFailure(f"bind: {describe(connection.result)}")

    def _drop(self, role):
        connection = self._connections.pop(role, None)
        if connection is not None:
            quiet_unbind(connection)

    def release(self):
        """Give the connections back to the pool (the server answered)."""
        for role, connection in self._connections.items():
            self.pool.checkin(self.server, role, connection)
        self._connections = {}

    def discard(self):
        """Close the connections (the server failed)."""
        for connection in self._connections.values():
            quiet_unbind(connection)
        self._connections = {}


def describe(result):
    """An ldap3 result as one line for logs: code, description, message."""
    return f"{result.get('result')} {result.get('description')} " \
           f"{result.get('message') or ''}".strip()


def quiet_unbind(connection):
    """Close C{connection}, ignoring errors (it may be broken already)."""
    try:
        connection.unbind()
    except Exception:
        pass
