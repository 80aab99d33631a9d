"""
The C{redis} state store: workers and nodes share one Redis (6+, or
Valkey), standalone or found through Sentinel.

Client: txredisapi, Twisted-native (no second event loop, no reactor
swap), with TLS and Sentinel built in.  One connection, reconnected in the
background (L{securepop.state.redislink}); every operation is one Lua
script (L{securepop.state.scripts}) or one plain command: atomic on the
server, one round trip.

Every call is bounded by C{timeout}: when no answer comes in time (or no
connection comes up in time) it fails with L{StateUnavailable} and the
connection is aborted, so nothing piles up while the server hangs;
txredisapi reconnects.  A command already in the socket of a stopped
server may still run when it resumes: a slot request is then fenced (each
attempt has a fence key the script checks; the store sets it and takes the
slots back, whichever runs first), a failure count or cache entry so
written is harmless, a turn or maildrop lease expires with its ttl.

Keys: C{<prefix>slot:<scope>:<hex>}, C{<prefix>fail:<hex>},
C{<prefix>user:<hex>}, C{<prefix>turn:<hex>}, C{<prefix>drop:<hex>},
C{<prefix>cache:<hex>}; C{<hex>} is the UTF-8 of the user name, address
or cache key in hex, so no client-chosen text can name another key.
Multi-key scripts: a standalone Redis or Sentinel, not Redis Cluster.
"""

from __future__ import annotations

import itertools
import secrets

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from securepop.access.limits import PER_IP, PER_USER, TOTAL, LimitExceeded
from securepop.errors import ConfigError, StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState
from securepop.state.redislink import RedisLink
from securepop.tls.checks import check_key_file_mode

SCOPES = {"total": TOTAL, "ip": PER_IP, "user": PER_USER}
MAX_USER_FAILURES = 1024     # failures remembered per user: far above any threshold
BEAT_BATCH = 1000            # keys per heartbeat script call


def hex_key(value):
    """A key part from C{value} (str or bytes): its bytes in hex."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return bytes(value).hex()


def read_password_file(path, key="state.password_file"):
    """
    The Redis password in C{path} (its first line), read at start.

    @raise ConfigError: unreadable, or readable by group or others.
    """
    check_key_file_mode(path, key, "the Redis password file")
    try:
        with open(path, "rb") as f:
            return f.read().split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    except OSError as e:
        raise ConfigError(path, key, f"cannot read the file: {e.strerror or e}")
    except UnicodeDecodeError:
        raise ConfigError(path, key, "is not UTF-8 text")


def from_settings(settings, reactor):
    """A L{RedisStateStore} for C{settings.state} (C{[state] backend = "redis"})."""
    state = settings.state
    password = read_password_file(str(settings.resolve(state.password_file))) \
        if state.password_file else None
    return RedisStateStore(
        reactor, state.url, sentinels=state.sentinels, sentinel_master=state.sentinel_master,
        password=password, ca_file=str(settings.resolve(state.ca_file)) if state.ca_file else "",
        key_prefix=state.key_prefix, timeout=state.timeout, lease_ttl=state.lease_ttl)


def _bytes(value):
    """A reply as bytes (txredisapi decodes what is valid UTF-8)."""
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ms(seconds):
    return max(1, int(seconds * 1000))


def _oldest(member):
    """The failure time in a user failure's member C{"time:nonce"}."""
    text = _text(member)
    return float(text.split(":", 1)[0]) if text else 0.0


def _login_state(reply):
    failures, last, user_failures, oldest = reply
    return LoginState(int(_text(failures) or 0), float(_text(last) or 0), int(user_failures),
                      _oldest(oldest))


@implementer(IStateStore)
class RedisStateStore:
    """
    @param reactor: L{IReactorTime} and L{IReactorTCP}; its C{seconds()} is
        the wall time every node's leases are dated with.
    @param url: C{redis://host:port/db} or C{rediss://...}.
    @param sentinels: C{"host:port"} of Sentinels (then C{url} gives only
        the database) and C{sentinel_master}, the service they watch.
    @param password: the Redis password (str) or None.
    @param ca_file: PEM CAs a C{rediss://} server's certificate must chain
        to (default: the system's).
    @param timeout: seconds a call may take.
    @param lease_ttl: seconds a slot outlives its holder's last heartbeat;
        the heartbeat runs every third of it.
    """

    kind = "redis"

    def __init__(self, reactor, url="redis://127.0.0.1:6379/0", sentinels=(),
                 sentinel_master="mymaster", password=None, ca_file="",
                 key_prefix="securepop:", timeout=0.5, lease_ttl=30.0):
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self._link = RedisLink(reactor, url, sentinels, sentinel_master, password, ca_file,
                               timeout)
        self._command, self._script = self._link.command, self._link.script
        self._reactor = reactor
        self._prefix = key_prefix
        self.timeout = self._link.timeout
        self.lease_ttl = float(lease_ttl)
        self._attempts = itertools.count()
        self._leases = {}       # lease id -> [counter key, ...]
        self._maildrops = {}    # maildrop key -> holder
        self._giving_back = set()   # releases sent, not yet answered (stop waits)
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = reactor

    @property
    def round_trips(self):
        """Commands sent so far (for measurements)."""
        return self._link.round_trips

    # -- life --------------------------------------------------------------------------

    def start(self):
        """
        Connect, start the heartbeat and load the scripts.  Fails with
        L{StateUnavailable} when no usable connection comes within a few
        timeouts; the store goes on trying in the background.
        """
        if not self._link.started:
            self._heartbeat.start(self.lease_ttl / 3, now=False)
        return self._link.start()

    def stop(self):
        """
        Give back every slot and maildrop lease of this process, wait for
        the releases already sent (a session that ended as the stop
        began), then disconnect.
        """
        if self._heartbeat.running:
            self._heartbeat.stop()
        keys, members = self._held(self._leases.items(), self._maildrops.items())
        self._leases.clear()
        self._maildrops.clear()
        waits = [self._script("release", keys, [len(keys) - len(members[1]), *members[0],
                                                *members[1]])] if keys else []
        waits += list(self._giving_back)
        d = defer.gatherResults(waits, consumeErrors=True).addErrback(lambda _: None)
        return d.addCallback(lambda _: self._link.stop())

    def _given_back(self, d):
        """Keep C{d} (a release) until it is answered: L{stop} waits for it."""
        self._giving_back.add(d)
        d.addBoth(lambda r: (self._giving_back.discard(d), r)[1])
        return d

    @staticmethod
    def _held(leases, maildrops):
        """KEYS and the two ARGV lists (slot members, maildrop holders)."""
        keys, slot_members, holders = [], [], []
        for lease, counters in leases:
            keys.extend(counters)
            slot_members.extend([lease] * len(counters))
        for key, holder in maildrops:
            keys.append(key)
            holders.append(holder)
        return keys, (slot_members, holders)

    def beat(self):
        """
        Re-date this process's slots and maildrop leases: one script call
        per L{BEAT_BATCH} keys, all sent at once (pipelined), so a node with
        many sessions never holds the server up for long.
        """
        keys, (slot_members, holders) = self._held(self._leases.items(), self._maildrops.items())
        if not keys:
            return defer.succeed(None)
        expiry, ttl = f"{self._reactor.seconds() + self.lease_ttl:.6f}", _ms(self.lease_ttl * 2)
        members, slots = slot_members + holders, len(slot_members)
        calls = []
        for start in range(0, len(keys), BEAT_BATCH):
            end = min(start + BEAT_BATCH, len(keys))
            n = max(0, min(slots, end) - start)
            calls.append(self._script("heartbeat", keys[start:end],
                                      [expiry, ttl, n, *members[start:end]]))
        # a missed beat: the next one catches up
        return defer.gatherResults(calls, consumeErrors=True).addBoth(lambda _: None)

    # -- connection slots --------------------------------------------------------------

    def _slot_key(self, scope, key):
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        return f"{self._prefix}slot:{scope}:{hex_key(key)}"

    def acquire(self, lease, counts):
        try:
            wanted = [(scope, key, self._slot_key(scope, key), int(limit))
                      for scope, key, limit in counts]
        except ValueError as e:
            return defer.fail(e)
        if not wanted:
            return defer.succeed(None)
        now = self._reactor.seconds()
        keys = [k for _s, _k, k, _l in wanted]
        fence = f"{self._prefix}fence:{hex_key(lease)}:{next(self._attempts)}"
        d = self._script("acquire", keys + [fence],
                         [f"{now:.6f}", f"{now + self.lease_ttl:.6f}", lease,
                          _ms(self.lease_ttl * 2), *[max(0, l) for _s, _k, _r, l in wanted]])

        def taken(full):
            full = int(full)
            if full < 0:
                raise StateUnavailable("redis: the slot request was fenced")
            if full:
                scope, key, _r, _l = wanted[full - 1]
                raise LimitExceeded(SCOPES[scope], None if scope == "total" else key)
            held = self._leases.setdefault(lease, [])
            held.extend(k for k in keys if k not in held)

        def lost(failure):
            # It may still run (it waits in a socket of a stopped server): fence it.
            if failure.check(StateUnavailable):
                self._reactor.callLater(0, self._forget, lease, keys, fence, now + self.lease_ttl)
            return failure

        return d.addCallbacks(taken, lost)

    def _forget(self, lease, keys, fence, until):
        """Fence a timed-out acquire, retried each second until it expires anyway."""
        new = [k for k in keys if k not in self._leases.get(lease, ())]

        def failed(failure):
            if self._link.started and self._reactor.seconds() + 1 < until:
                self._reactor.callLater(1, self._forget, lease, new, fence, until)
        self._script("fence", new + [fence], [lease, _ms(self.lease_ttl * 2)]).addErrback(failed)

    def release(self, lease):
        keys = self._leases.pop(lease, None)
        if not keys:
            return defer.succeed(None)
        return self._given_back(self._script("release", keys, [len(keys)] + [lease] * len(keys))
                                .addCallback(lambda _: None))

    def count(self, scope, key):
        try:
            slot = self._slot_key(scope, key)
        except ValueError as e:
            return defer.fail(e)
        return self._command("ZCOUNT", slot, f"({self._reactor.seconds():.6f}", "+inf") \
            .addCallback(int)

    # -- failure penalty and lockout ---------------------------------------------------

    def _login_keys(self, address_key, username):
        keys = [f"{self._prefix}fail:{hex_key(address_key)}"]
        if username:
            keys.append(f"{self._prefix}user:{hex_key(username)}")
        return keys

    def login_state(self, address_key, username):
        return self._script("login_state", self._login_keys(address_key, username),
                            [f"{self._reactor.seconds():.6f}"]).addCallback(_login_state)

    def record_failure(self, address_key, username, forget_after, window):
        now = self._reactor.seconds()
        member = f"{now:.6f}:{secrets.token_hex(6)}"
        return self._script("record_failure", self._login_keys(address_key, username),
                            [f"{now:.6f}", _ms(forget_after), f"{now + window:.6f}", member,
                             _ms(window), MAX_USER_FAILURES]).addCallback(_login_state)

    def record_success(self, address_key, username):
        return self._command("DEL", *self._login_keys(address_key, username)).addCallback(
            lambda _: None)

    def claim_turn(self, address_key, holder, ttl):
        return self._script("claim", [f"{self._prefix}turn:{hex_key(address_key)}"],
                            [holder, _ms(ttl)]).addCallback(bool)

    def release_turn(self, address_key, holder):
        return self._script("unclaim", [f"{self._prefix}turn:{hex_key(address_key)}"],
                            [holder]).addCallback(lambda _: None)

    # -- auth cache --------------------------------------------------------------------

    def _cache_key(self, key):
        return f"{self._prefix}cache:{hex_key(key)}"

    def cache_get(self, key):
        return self._command("GET", self._cache_key(key)).addCallback(
            lambda v: None if v is None else _bytes(v))

    def cache_put(self, key, value, ttl):
        if ttl <= 0:
            return self.cache_forget(key)
        return self._command("SET", self._cache_key(key), bytes(value), "PX", _ms(ttl)) \
            .addCallback(lambda _: None)

    def cache_forget(self, key):
        return self._command("DEL", self._cache_key(key)).addCallback(lambda _: None)

    # -- maildrop leases ---------------------------------------------------------------

    def acquire_maildrop(self, username, holder):
        key = f"{self._prefix}drop:{hex_key(username)}"

        def claimed(won):
            if won:
                self._maildrops[key] = holder
            return bool(won)
        return self._script("claim", [key], [holder, _ms(self.lease_ttl)]).addCallback(claimed)

    def release_maildrop(self, username, holder):
        key = f"{self._prefix}drop:{hex_key(username)}"
        if self._maildrops.get(key) == holder:
            del self._maildrops[key]
        return self._given_back(self._script("unclaim", [key], [holder])
                                .addCallback(lambda _: None))
