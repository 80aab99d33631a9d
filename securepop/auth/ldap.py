"""
An LDAP directory (OpenLDAP and friends) as a credential source.

ldap3 is a blocking library, so every directory operation runs on a
dedicated, bounded L{ThreadPool} (never the reactor's default pool, which
also resolves host names).  Connections are pooled per server and reused: a
TLS handshake costs far more than a search.  Servers are tried in the
configured order; a server that failed is skipped for C{retry_down_after}
seconds and then tried again, so the first server takes over again when it
is back, and logins recover without a restart.

A login is "search, then bind": the service account finds the user's entry
with a filter in which the user name is escaped (RFC 4515), then a second
connection binds with the user's DN and password.
"""

import math
import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import ldap3
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import to_dn
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from securepop.auth.cache import MISS, NEGATIVE
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.interfaces import (
    CLEARTEXT_SECRET,
    NT_HASH,
    PLAINTEXT,
    ICredentialSource,
)

_TRUE_VALUES = frozenset({"true", "1", "yes", "on", "enabled"})

# LDAP result codes (RFC 4511) that are an answer, not an outage.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49


@dataclass(frozen=True)
class LDAPSettings:
    """
    Everything the LDAP source needs; the lead maps C{[auth.ldap]} onto it.

    @ivar urls: C{ldaps://host[:port]} or C{ldap://host[:port]} (StartTLS),
        tried in this order.
    @ivar user_filter: C{{user}} is replaced by the escaped user name.
    @ivar insecure_cleartext: allow C{ldap://} without StartTLS.
    @ivar timeout: seconds for one network operation (each search, bind).
    @ivar request_timeout: seconds for a whole login, failover included.
    @ivar retry_down_after: seconds a failed server is skipped.
    @ivar pool_size: threads (and so parallel directory operations).
    @ivar max_pending: queued logins beyond which the source answers
        L{SourceUnavailable} at once instead of queueing more.
    """

    urls: tuple
    base_dn: str
    bind_dn: str = ""
    bind_password_file: str = ""
    user_filter: str = "(uid={user})"
    username_attribute: str = "uid"
    lowercase_username: bool = False
    ca_file: str = ""
    start_tls: bool = True
    insecure_cleartext: bool = False
    required_group: str = ""
    nested_groups: bool = False
    group_member_attribute: str = "member"
    group_base_dn: str = ""
    pop3_attribute: str = ""
    pop3_attribute_default: bool = False
    pop3_denied_group: str = ""
    mailbox_attribute: str = ""
    nt_hash_attribute: str = ""
    secret_attribute: str = ""
    timeout: float = 5.0
    connect_timeout: float = 3.0
    request_timeout: float = 15.0
    retry_down_after: float = 30.0
    pool_size: int = 4
    max_pending: int = 64
    max_username_length: int = 256
    extra_attributes: tuple = field(default=())


class _ServerFailure(Exception):
    """This server cannot answer now; the next one may."""


class _Refused(Exception):
    """The directory answered: this login is refused (reason for logs)."""


class _Server:
    """
    One directory server, its health and its idle connections.
    """

    def __init__(self, url, makeLDAPServer, startTls):
        self.url = url
        self.makeLDAPServer = makeLDAPServer
        self.ldapServer = makeLDAPServer()
        self.startTls = startTls
        self.downUntil = None
        self.lastError = None
        # role ("search" | "bind") -> idle ldap3 connections
        self.idle = {"search": [], "bind": []}


def _firstValue(entry, attribute):
    values = entry["raw"].get(attribute.lower())
    if not values:
        return None
    return values[0]


def _text(raw):
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")


def parseURL(url, insecureCleartext, startTls):
    """
    Check a directory URL against the TLS policy.

    @return: C{(host, port, useSSL, useStartTLS)}.
    @raise ValueError: for another scheme, or cleartext not asked for by
        its insecure option.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError(f"not an ldap:// or ldaps:// URL: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"LDAP URL must be scheme://host[:port]: {url!r}")
    useSSL = scheme == "ldaps"
    useStartTLS = (not useSSL) and startTls
    if not useSSL and not useStartTLS and not insecureCleartext:
        raise ValueError(
            f"{url!r} would send passwords in clear: use ldaps://, StartTLS, "
            "or set insecure_cleartext"
        )
    port = parts.port or (636 if useSSL else 389)
    return parts.hostname, port, useSSL, useStartTLS


@implementer(ICredentialSource)
class LDAPCredentialSource:
    """
    Users in an LDAP directory: search with a service account, bind as the
    user.

    @ivar name: C{"ldap"}.
    """

    name = "ldap"
    _log = Logger()

    def __init__(self, settings, reactor, cache=None, threadpool=None,
                 connectionFactory=None, runInThread=None,
                 bindPassword=None):
        """
        @param settings: L{LDAPSettings}.
        @param reactor: provides IReactorTime and IReactorCore (the pool
            starts and stops with it) and IReactorFromThreads.
        @param cache: an optional L{securepop.auth.cache.AuthCache}.
        @param threadpool: a L{ThreadPool} to use instead of a fresh one
            (the caller then starts and stops it).
        @param connectionFactory: C{f(ldap3.Server, user, password) ->
            ldap3.Connection}; tests give ldap3's MOCK_SYNC strategy here.
        @param runInThread: C{f(callable) -> Deferred}; tests run inline.
        @param bindPassword: the service password (else read from
            C{settings.bind_password_file}).
        """
        self.settings = settings
        self._reactor = reactor
        self._cache = cache
        self._connectionFactory = connectionFactory or self._makeConnection
        self._lock = threading.Lock()
        self._pending = 0
        if not settings.urls:
            raise ValueError("at least one LDAP URL is needed")
        if bindPassword is None and settings.bind_password_file:
            with open(settings.bind_password_file, "rb") as passwordFile:
                bindPassword = passwordFile.read().rstrip(b"\r\n")
        if bindPassword is not None and not isinstance(bindPassword, str):
            bindPassword = bindPassword.decode("utf-8")
        if settings.bind_dn and not bindPassword:
            raise ValueError("bind_dn is set but no bind password was given")
        self._bindPassword = bindPassword
        self._servers = []
        for url in settings.urls:
            host, port, useSSL, useStartTLS = parseURL(
                url, settings.insecure_cleartext, settings.start_tls)
            # CERT_REQUIRED: ldap3 then checks the chain against ca_file
            # (else the system CAs) and the host name against the URL's.
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                            ca_certs_file=settings.ca_file or None, sni=host)

            def makeLDAPServer(host=host, port=port, useSSL=useSSL, tls=tls,
                               useTLS=useSSL or useStartTLS):
                return ldap3.Server(
                    host, port=port, use_ssl=useSSL,
                    tls=tls if useTLS else None, get_info=ldap3.NONE,
                    connect_timeout=settings.connect_timeout,
                    mode=ldap3.IP_V4_PREFERRED)

            self._servers.append(_Server(url, makeLDAPServer, useStartTLS))
        if runInThread is None:
            if threadpool is None:
                threadpool = ThreadPool(
                    minthreads=0, maxthreads=settings.pool_size,
                    name=f"securepop-{self.name}")
                reactor.callWhenRunning(threadpool.start)
                reactor.addSystemEventTrigger(
                    "during", "shutdown", self.shutdown)
            self._threadpool = threadpool

            def runInThread(function):
                return deferToThreadPool(reactor, threadpool, function)

        else:
            self._threadpool = threadpool
        self._runInThread = runInThread

    @classmethod
    def fromSettings(cls, section, reactor, settings, **kwargs):
        """
        Build the source from C{securepop.config}'s C{[auth.ldap]} section.

        @param section: the config's LDAP settings object.
        @param settings: the whole C{securepop.config.Settings} (for paths).
        @raise securepop.errors.ConfigError: for an unusable section.
        """
        return cls(_fromConfig(section, settings, cls.defaultOverrides()),
                   reactor, **kwargs)

    @classmethod
    def defaultOverrides(cls):
        """
        @return: L{LDAPSettings} fields this directory flavour defaults
            differently.
        """
        return {}

    # -- ICredentialSource ---------------------------------------------

    def capabilities(self):
        kinds = {PLAINTEXT}
        if self.settings.nt_hash_attribute:
            kinds.add(NT_HASH)
        if self.settings.secret_attribute:
            kinds.add(CLEARTEXT_SECRET)
        return frozenset(kinds)

    def verifyPassword(self, username, password):
        if not isinstance(password, bytes):
            return fail(TypeError("password must be bytes"))
        cacheKey = None
        if self._cache is not None:
            cacheKey = self._cache.keyFor(self.name, "password", username,
                                          password)
            cached = self._cache.get(cacheKey)
            if cached is NEGATIVE:
                return fail(UnauthorizedLogin("refused (cached)"))
            if cached is not MISS:
                return succeed(cached)

        def work(session):
            entry = self._findUser(session, username)
            self._bindAsUser(session, entry, password)
            self._checkMayLogIn(session, entry)
            return self._record(entry, session)

        return self._cached(self._run(work), cacheKey)

    def lookupSecret(self, username, kind):
        if kind == NT_HASH and NT_HASH in self.capabilities():
            attribute = self.settings.nt_hash_attribute
        elif kind == CLEARTEXT_SECRET and CLEARTEXT_SECRET in self.capabilities():
            attribute = self.settings.secret_attribute
        else:
            return fail(ValueError(f"{self.name} source cannot serve {kind!r}"))

        def work(session):
            entry = self._findUser(session, username)
            self._checkMayLogIn(session, entry)
            raw = _firstValue(entry, attribute)
            if raw is None:
                raise _Refused(f"{entry['dn']} has no {attribute}")
            if kind == NT_HASH:
                secret = _parseNTHash(raw)
                if secret is None:
                    raise _Refused(f"{entry['dn']}: {attribute} is not 32 hex digits")
            else:
                secret = raw
            return (self._record(entry, session), secret)

        return self._run(work)

    def lookupUser(self, username):
        cacheKey = None
        if self._cache is not None:
            cacheKey = self._cache.keyFor(self.name, "user", username)
            cached = self._cache.get(cacheKey)
            if cached is NEGATIVE:
                return fail(UnauthorizedLogin("refused (cached)"))
            if cached is not MISS:
                return succeed(cached)

        def work(session):
            entry = self._findUser(session, username)
            self._checkMayLogIn(session, entry)
            return self._record(entry, session)

        return self._cached(self._run(work), cacheKey)

    # -- diagnostics -----------------------------------------------------

    def explain(self, username, password=None):
        """
        Walk a login step by step for C{securepop test-auth}: which server,
        which DN, which groups, the account state, and the outcome.  Never
        uses the cache.  The secrets themselves are not reported.

        @param password: L{bytes}, or L{None} to check only whether the user
            may log in (as after an NTLM verification).
        @return: Deferred firing with a L{dict} (never failing for a refusal;
            C{"result"} is C{"ok"}, C{"refused"} or C{"unavailable"}).
        """
        report = {"source": self.name, "user": username}

        def work(session):
            report["server"] = session.server.url
            entry = self._findUser(session, username)
            report["dn"] = entry["dn"]
            report["groups"] = self._groupsOf(session, entry)
            report["account"] = self._accountState(entry)[1]
            report["attributes"] = sorted(
                name for name in (self.settings.mailbox_attribute,
                                  self.settings.nt_hash_attribute,
                                  self.settings.secret_attribute)
                if name and _firstValue(entry, name) is not None)
            if password is not None:
                self._bindAsUser(session, entry, password)
                report["bind"] = "ok"
            self._checkMayLogIn(session, entry)
            record = self._record(entry, session)
            report["username"] = record.username
            report["mailbox"] = record.mailbox
            return report

        def refused(failure):
            failure.trap(UnauthorizedLogin, SourceUnavailable)
            if failure.check(SourceUnavailable):
                report["result"] = "unavailable"
            else:
                report["result"] = "refused"
            report["reason"] = str(failure.value)
            return report

        def ok(result):
            result["result"] = "ok"
            return result

        return self._run(work).addCallbacks(ok, refused)

    def shutdown(self):
        """
        Stop the thread pool and close idle connections (reactor shutdown).
        """
        if self._threadpool is not None and self._threadpool.started:
            self._threadpool.stop()
        with self._lock:
            connections = [c for server in self._servers
                           for role in server.idle.values() for c in role]
            for server in self._servers:
                server.idle = {"search": [], "bind": []}
        for connection in connections:
            _quietUnbind(connection)

    # -- what each directory flavour may change ---------------------------

    def userFilter(self, username):
        """
        @return: the search filter for C{username}, escaped; L{None} when
            the name cannot be a user of this source.
        """
        return self.settings.user_filter.replace(
            "{user}", escape_filter_chars(username))

    def attributesWanted(self):
        names = [self.settings.username_attribute]
        for name in (self.settings.mailbox_attribute,
                     self.settings.nt_hash_attribute,
                     self.settings.secret_attribute,
                     self.settings.pop3_attribute):
            if name:
                names.append(name)
        names.extend(self.settings.extra_attributes)
        return names

    def _accountState(self, entry):
        """
        @return: C{(mayLogIn, description)} from the entry's own attributes.
        """
        return True, "enabled"

    # -- steps (all run in a pool thread) ---------------------------------

    def _findUser(self, session, username):
        if (not isinstance(username, str) or not username
                or len(username) > self.settings.max_username_length):
            raise _Refused("user name empty or too long")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in username):
            # Escaping keeps NUL from changing the filter, but some servers
            # (Samba) compare values as C strings: "alice\0" finds alice.
            raise _Refused("control character in user name")
        searchFilter = self.userFilter(username)
        if searchFilter is None:
            raise _Refused("user name not valid for this directory")
        entries = session.search(self.settings.base_dn, searchFilter,
                                 self.attributesWanted(), sizeLimit=2)
        if len(entries) != 1:
            raise _Refused(f"{len(entries)} entries match the user name")
        return entries[0]

    def _bindAsUser(self, session, entry, password):
        if not password:
            # An empty password is an unauthenticated bind (RFC 4513
            # 5.1.2), which many servers accept: never a login.
            raise _Refused("empty password")
        session.bindAs(entry["dn"], password)

    def _checkMayLogIn(self, session, entry):
        ok, state = self._accountState(entry)
        if not ok:
            raise _Refused(f"{entry['dn']}: account {state}")
        settings = self.settings
        if settings.required_group and not self._isMember(
                session, entry, settings.required_group):
            raise _Refused(f"{entry['dn']} not in {settings.required_group}")
        if settings.pop3_attribute:
            raw = _firstValue(entry, settings.pop3_attribute)
            if raw is None:
                allowed = settings.pop3_attribute_default
            else:
                allowed = _text(raw).strip().lower() in _TRUE_VALUES
            if not allowed:
                raise _Refused(f"{entry['dn']}: POP3 switched off")
        if settings.pop3_denied_group and self._isMember(
                session, entry, settings.pop3_denied_group):
            raise _Refused(f"{entry['dn']}: in {settings.pop3_denied_group}")

    def _isMember(self, session, entry, groupDN):
        if self.settings.nested_groups:
            # AD's LDAP_MATCHING_RULE_IN_CHAIN follows nested groups.
            found = session.search(
                entry["dn"],
                "(memberOf:1.2.840.113556.1.4.1941:="
                f"{escape_filter_chars(groupDN)})",
                [], scope=ldap3.BASE, sizeLimit=1)
        else:
            found = session.search(
                groupDN,
                f"({self.settings.group_member_attribute}="
                f"{escape_filter_chars(entry['dn'])})",
                [], scope=ldap3.BASE, sizeLimit=1)
        return bool(found)

    def _groupsOf(self, session, entry):
        memberOf = entry["raw"].get("memberof")
        if memberOf:
            return sorted(_text(value) for value in memberOf)
        base = self.settings.group_base_dn or self.settings.base_dn
        if not self.settings.group_base_dn and self.settings.required_group:
            # groups usually live beside the required one
            parts = to_dn(self.settings.required_group)
            if len(parts) > 1:
                base = ",".join(parts[1:])
        found = session.search(
            base,
            f"({self.settings.group_member_attribute}="
            f"{escape_filter_chars(entry['dn'])})",
            [], sizeLimit=100)
        return sorted(found_entry["dn"] for found_entry in found)

    def _record(self, entry, session):
        settings = self.settings
        username = _text(_firstValue(entry, settings.username_attribute))
        if not username:
            raise _Refused(f"{entry['dn']} has no {settings.username_attribute}")
        if settings.lowercase_username:
            username = username.lower()
        mailbox = None
        if settings.mailbox_attribute:
            mailbox = _text(_firstValue(entry, settings.mailbox_attribute))
        return UserRecord(
            username=username, mailbox=mailbox,
            info={"source": self.name, "dn": entry["dn"],
                  "server": session.server.url})

    # -- threads, failover and the connection pool -------------------------

    def _run(self, work):
        """
        Run C{work(session)} in the pool, against the first server that
        answers, with an overall deadline.
        """
        if self._pending >= self.settings.max_pending:
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
                    f"{self.name}: no answer within "
                    f"{self.settings.request_timeout} s"))

        timer = self._reactor.callLater(self.settings.request_timeout, expired)
        self._runInThread(lambda: self._failover(work)).addBoth(finished)
        return outer.addErrback(self._translate)

    def _translate(self, failure):
        if failure.check(_Refused):
            self._log.info("{source}: login refused: {reason}",
                           source=self.name, reason=str(failure.value))
            raise UnauthorizedLogin(str(failure.value))
        if failure.check(SourceUnavailable, UnauthorizedLogin):
            return failure
        self._log.failure("{source}: unexpected error", failure,
                          source=self.name)
        raise SourceUnavailable(f"{self.name}: {failure.value!r}")

    def _cached(self, deferred, cacheKey):
        if cacheKey is None:
            return deferred

        def remember(record):
            self._cache.putPositive(cacheKey, record)
            return record

        def forget(failure):
            if failure.check(UnauthorizedLogin):
                self._cache.putNegative(cacheKey)
            return failure

        return deferred.addCallbacks(remember, forget)

    def _candidates(self):
        now = self._reactor.seconds()
        with self._lock:
            ready = [server for server in self._servers
                     if server.downUntil is None or server.downUntil <= now]
        # When every server is marked down, try them all anyway: it is the
        # only way to notice they are back.
        return ready or list(self._servers)

    def _failover(self, work):
        lastError = "no server"
        for server in self._candidates():
            session = _Session(self, server)
            try:
                result = work(session)
            except _ServerFailure as error:
                session.discard()
                self._markDown(server, error)
                lastError = f"{server.url}: {error}"
                continue
            except BaseException:
                session.release()
                raise
            session.release()
            self._markUp(server)
            return result
        raise SourceUnavailable(f"{self.name}: no directory server answered "
                                f"({lastError})")

    def _markDown(self, server, error):
        with self._lock:
            wasUp = server.downUntil is None
            server.downUntil = (self._reactor.seconds()
                                + self.settings.retry_down_after)
            server.lastError = str(error)
            # ldap3 remembers unreachable addresses for minutes; a fresh
            # Server object lets the retry really try.
            server.ldapServer = server.makeLDAPServer()
            idle = server.idle
            server.idle = {"search": [], "bind": []}
        for connection in idle["search"] + idle["bind"]:
            _quietUnbind(connection)
        if wasUp:
            self._log.warn("{source}: server {url} failed ({error}); "
                           "skipping it for {seconds} s",
                           source=self.name, url=server.url, error=str(error),
                           seconds=self.settings.retry_down_after)

    def _markUp(self, server):
        with self._lock:
            wasDown = server.downUntil is not None
            server.downUntil = None
            server.lastError = None
        if wasDown:
            self._log.info("{source}: server {url} answers again",
                           source=self.name, url=server.url)

    def _checkout(self, server, role):
        with self._lock:
            if server.idle[role]:
                return server.idle[role].pop()
        if role == "search":
            user, password = self.settings.bind_dn or None, self._bindPassword
        else:
            user, password = None, None
        connection = None
        try:
            connection = self._connectionFactory(server.ldapServer, user,
                                                 password)
            connection.open()
            if server.startTls and not connection.start_tls():
                raise _ServerFailure(f"StartTLS refused: {connection.result}")
            if role == "search" and not connection.bind():
                # A service account that cannot bind makes every login
                # fail: an outage, never "wrong password".
                raise _ServerFailure(
                    f"service bind failed: {_describe(connection.result)}")
        except Exception as error:  # ldap3 raises more than LDAPException
            if connection is not None:
                _quietUnbind(connection)
            if isinstance(error, _ServerFailure):
                raise
            raise _ServerFailure(repr(error)) from None
        return connection

    def _checkin(self, server, role, connection):
        with self._lock:
            if len(server.idle[role]) < self.settings.pool_size:
                server.idle[role].append(connection)
                return
        _quietUnbind(connection)

    def _makeConnection(self, ldapServer, user, password):
        return ldap3.Connection(
            ldapServer, user=user, password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            # ldap3 packs this into SO_RCVTIMEO as an integer: whole seconds.
            receive_timeout=max(1, math.ceil(self.settings.timeout)),
            raise_exceptions=False,
            read_only=True, auto_referrals=False, check_names=False,
            return_empty_attributes=False,
        )


class _Session:
    """
    The connections one request uses on one server (one per role).
    """

    def __init__(self, source, server):
        self.source = source
        self.server = server
        self._connections = {}

    def _connection(self, role):
        if role not in self._connections:
            self._connections[role] = self.source._checkout(self.server, role)
        return self._connections[role]

    def search(self, base, searchFilter, attributes, scope=ldap3.SUBTREE,
               sizeLimit=0):
        """
        @return: list of C{{"dn": str, "raw": {lowercased name: [bytes]}}}.
        """
        connection = self._connection("search")
        timeLimit = max(1, int(self.source.settings.timeout))
        try:
            connection.search(base, searchFilter, search_scope=scope,
                              attributes=attributes or [ldap3.NO_ATTRIBUTES],
                              size_limit=sizeLimit, time_limit=timeLimit)
        except Exception as error:  # ldap3 raises more than LDAPException
            self._drop("search")
            raise _ServerFailure(repr(error)) from None
        code = connection.result.get("result")
        if code == _NO_SUCH_OBJECT:
            return []
        if code == _SIZE_LIMIT_EXCEEDED and sizeLimit:
            raise _Refused("more entries match than expected")
        if code != _SUCCESS:
            self._drop("search")
            raise _ServerFailure(f"search: {_describe(connection.result)}")
        entries = []
        for item in connection.response or ():
            if item.get("type") != "searchResEntry":
                continue
            raw = {name.lower(): list(values)
                   for name, values in item.get("raw_attributes", {}).items()}
            entries.append({"dn": item["dn"], "raw": raw})
        return entries

    def bindAs(self, dn, password):
        connection = self._connection("bind")
        connection.user = dn
        connection.password = password
        connection.authentication = ldap3.SIMPLE
        try:
            bound = connection.bind()
        except Exception as error:  # ldap3 raises more than LDAPException
            self._drop("bind")
            raise _ServerFailure(repr(error)) from None
        if bound:
            return
        code = connection.result.get("result")
        if code == _INVALID_CREDENTIALS:
            raise _Refused(f"bind as {dn}: {_describe(connection.result)}")
        self._drop("bind")
        raise _ServerFailure(f"bind: {_describe(connection.result)}")

    def _drop(self, role):
        connection = self._connections.pop(role, None)
        if connection is not None:
            _quietUnbind(connection)

    def release(self):
        for role, connection in self._connections.items():
            self.source._checkin(self.server, role, connection)
        self._connections = {}

    def discard(self):
        for connection in self._connections.values():
            _quietUnbind(connection)
        self._connections = {}


def _describe(result):
    return f"{result.get('result')} {result.get('description')} " \
           f"{result.get('message') or ''}".strip()


def _quietUnbind(connection):
    try:
        connection.unbind()
    except Exception:
        pass


def _parseNTHash(raw):
    text = raw.strip()
    if len(text) != 32:
        return None
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


# config key (lead's section) -> LDAPSettings field, for keys that differ
_RENAMED = {"pop3_enabled_attribute": "pop3_attribute",
            "apop_secret_attribute": "secret_attribute"}


def _fromConfig(section, settings, overrides):
    """
    Map the configuration's LDAP section onto L{LDAPSettings}; keys the
    section lacks keep their defaults.
    """
    from dataclasses import fields

    from securepop.errors import ConfigError

    values = dict(overrides)
    names = {item.name for item in fields(LDAPSettings)}
    for item in fields(section):
        target = _RENAMED.get(item.name, item.name)
        if target in names:
            values[target] = getattr(section, item.name)
    values["urls"] = tuple(values.get("urls") or ())
    for name in ("bind_password_file", "ca_file"):
        if values.get(name):
            values[name] = str(settings.resolve(values[name]))
    where = getattr(settings, "path", None) or "(defaults)"
    try:
        result = LDAPSettings(**values)
        for url in result.urls:
            parseURL(url, result.insecure_cleartext, result.start_tls)
    except (TypeError, ValueError) as error:
        raise ConfigError(where, "auth.ldap", str(error))
    if not result.urls:
        raise ConfigError(where, "auth.ldap.urls", "at least one URL is needed")
    return result
