"""
The connection of L{securepop.state.redis.RedisStateStore}: one Redis
connection (direct, over TLS, or to the master Sentinel names) kept up in
the background by txredisapi, and every command bounded by C{timeout}.

When no answer comes in time (or no connection comes up in time) a command
fails with L{StateUnavailable} and the connection is aborted, so nothing
piles up while the server hangs; txredisapi reconnects.  Scripts are called
by their SHA1 and sent in full when the server lost them.
"""

from __future__ import annotations

import txredisapi
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.python.failure import Failure

from securepop.errors import StateUnavailable
from securepop.state.scripts import LOADED
from securepop.state.settings import parse_redis_url, parse_sentinel

RECONNECT_MAX_DELAY = 2.0    # seconds between reconnection attempts, at most


class RedisLink:
    """
    @param reactor: L{IReactorTime} and L{IReactorTCP}.
    @param url: C{redis://host:port/db} or C{rediss://...}.
    @param sentinels: C{"host:port"} of Sentinels (then C{url} gives only
        the database) and C{sentinel_master}, the service they watch.
    @param password: the Redis password (str) or None.
    @param ca_file: PEM CAs a C{rediss://} server's certificate must chain
        to (default: the system's).
    @param timeout: seconds a command may take.
    """

    def __init__(self, reactor, url, sentinels=(), sentinel_master="mymaster", password=None,
                 ca_file="", timeout=0.5):
        self._tls, self._host, self._port, self._db = parse_redis_url(url)
        self._sentinels = [parse_sentinel(s) for s in sentinels]
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._reactor = reactor
        self._sentinel_master = sentinel_master
        self._password = password or None
        self._ca_file = ca_file
        self.timeout = float(timeout)
        self._factory = None
        self._sentinel = None
        self._waiters = []      # commands waiting for a connection
        self.round_trips = 0    # commands sent (for measurements)

    @property
    def started(self):
        return self._factory is not None

    def start(self):
        """
        Connect and load the scripts.  Fails with L{StateUnavailable} when
        no usable connection comes within a few timeouts; the link goes on
        trying in the background.
        """
        if self._factory is None:
            self._factory = self._connect()
        ready = defer.Deferred()
        first = self._factory.deferred
        if first is None:
            ready.callback(None)
        else:
            first.addCallbacks(lambda _: ready.callback(None) if not ready.called else None,
                               lambda f: ready.errback(StateUnavailable(
                                   f"redis: {f.getErrorMessage()}")) if not ready.called else None)
            wait = max(5 * self.timeout, 2.0)
            timer = self._reactor.callLater(wait, lambda: ready.called or ready.errback(
                StateUnavailable(f"redis: not connected within {wait:g} s")))
            ready.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return ready.addCallback(lambda _: self._load_scripts())

    def stop(self):
        """Disconnect, and stop reconnecting."""
        factory, self._factory = self._factory, None
        sentinel, self._sentinel = self._sentinel, None
        waits = [factory.disconnect()] if factory is not None else []
        if sentinel is not None:
            waits.append(sentinel.disconnect())
        return defer.gatherResults(waits, consumeErrors=True).addBoth(lambda _: None)

    def _load_scripts(self):
        calls = [self.command("SCRIPT", "LOAD", text) for _sha, text in LOADED.values()]
        return defer.gatherResults(calls, consumeErrors=True).addCallbacks(
            lambda _: None, lambda f: Failure(f.value.subFailure.value))

    def _connect(self):
        """A txredisapi factory keeping one connection up (or trying to)."""
        options = dict(charset="utf-8", convertNumbers=False, password=self._password,
                       replyTimeout=None)
        dbid = self._db or None
        if self._sentinels:
            made = []

            def factory_class(**kwargs):
                made.append(self._watch(txredisapi.SentinelConnectionFactory(**kwargs)))
                return made[-1]

            self._sentinel = txredisapi.Sentinel(self._sentinels)
            self._sentinel.master_for(self._sentinel_master, factory_class=factory_class,
                                      dbid=dbid, poolsize=1, **options)
            return made[0]
        factory = self._watch(txredisapi.RedisFactory(f"{self._host}:{self._port}", dbid, 1,
                                                      True, **options))
        endpoint = HostnameEndpoint(self._reactor, self._host, self._port,
                                    timeout=max(2 * self.timeout, 1.0))
        if self._tls:
            endpoint = wrapClientTLS(self._tls_options(), endpoint)
        factory.startConnecting(endpoint)
        return factory

    def _watch(self, factory):
        """Reconnect soon after a loss, and hear of each usable connection."""
        added = factory.addConnection

        def add_connection(conn):
            added(conn)
            if conn in factory.pool:
                self._connection_ready()
        factory.addConnection = add_connection
        factory.maxDelay = RECONNECT_MAX_DELAY
        factory.initialDelay = min(factory.initialDelay, 0.5)
        return factory

    def _tls_options(self):
        trust = None
        if self._ca_file:
            with open(self._ca_file, "rb") as f:
                pem = f.read()
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(block + b"-----END CERTIFICATE-----\n")
                 for block in pem.split(b"-----END CERTIFICATE-----") if b"-----BEGIN" in block])
        return ssl.optionsForClientTLS(self._host, trustRoot=trust)

    # -- one round trip ----------------------------------------------------------------

    def _connection(self):
        factory = self._factory
        if factory is not None:
            for conn in factory.pool:
                if conn.connected:
                    return conn
        return None

    def _connection_ready(self):
        """A connection joined the pool: the calls waiting for one go."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def command(self, *command):
        """
        Send one command; its answer within C{timeout} or L{StateUnavailable}.
        With no connection up (the first one of a start, a reconnection),
        the call waits for one within the same C{timeout}.
        """
        if self._factory is None:
            return defer.fail(StateUnavailable("redis: not started"))
        conn = self._connection()
        if conn is not None:
            return self._send(conn, command, self.timeout)
        deadline = self._reactor.seconds() + self.timeout
        waiter = defer.Deferred()
        self._waiters.append(waiter)

        def expire():
            self._waiters.remove(waiter)
            waiter.errback(StateUnavailable("redis: not connected"))

        timer = self._reactor.callLater(self.timeout, expire)

        def connected(_):
            timer.cancel()
            conn = self._connection()
            if conn is None:
                raise StateUnavailable("redis: not connected")
            return self._send(conn, command, deadline - self._reactor.seconds())
        return waiter.addCallback(connected)

    def _send(self, conn, command, timeout):
        self.round_trips += 1
        try:
            sent = conn.execute_command(*command)
        except txredisapi.RedisError as e:
            return defer.fail(StateUnavailable(f"redis: {e}"))
        return self._bounded(sent, conn, command, max(timeout, 0.001))

    def script(self, name, keys, args):
        sha, _text_ = LOADED[name]
        return self.command("EVALSHA", sha, len(keys), *keys, *args)

    def _bounded(self, sent, conn, command, timeout):
        result = defer.Deferred()

        def expire():
            result.errback(StateUnavailable(f"redis: no answer within {self.timeout:g} s"))
            conn.transport.abortConnection()

        timer = self._reactor.callLater(timeout, expire)

        def answered(value):
            if not timer.active():
                return None
            if isinstance(value, Failure) and value.check(txredisapi.ResponseError) \
                    and str(value.value).startswith("NOSCRIPT") and command[0] == "EVALSHA":
                # The server lost its scripts (restart, SCRIPT FLUSH): send the text.
                self.round_trips += 1
                name = next(n for n, (sha, _t) in LOADED.items() if sha == command[1])
                try:
                    again = conn.execute_command("EVAL", LOADED[name][1], *command[2:])
                except txredisapi.RedisError as e:
                    again = defer.fail(e)
                again.addBoth(answered)
                return None
            timer.cancel()
            if isinstance(value, Failure):
                result.errback(StateUnavailable(f"redis: {value.getErrorMessage()}"))
            else:
                result.callback(value)
            return None

        sent.addBoth(answered)
        return result
