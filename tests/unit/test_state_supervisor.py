"""
The supervisor's store served to workers over AMP: every IStateStore call
crosses the channel and back, errors keep their meaning, a call never
hangs, and a worker whose channel closes gives back all it held.
"""

import socket

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop import config
from securepop.access.limits import LimitExceeded
from securepop.errors import StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState, build, supervisor
from securepop.state.memory import MemoryStateStore
from securepop.state.supervisor import StateChannel, StateHub, SupervisorStateStore

LIMIT_NAMES = {"total": "max_connections", "ip": "max_connections_per_ip",
               "user": "max_connections_per_user"}


@implementer(IStateStore)
class DictStore:
    """A trivial synchronous store: enough to see what crosses the channel."""

    kind = "memory"
    lease_ttl = 30.0

    def __init__(self):
        self.slots = {}          # lease -> [(scope, key)]
        self.failures = {}
        self.users = {}
        self.turns = {}
        self.maildrops = {}
        self.cache = {}
        self.broken = None       # an exception every call raises

    def _check(self):
        if self.broken is not None:
            raise self.broken

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def _count(self, scope, key):
        return sum(1 for held in self.slots.values() for s, k in held if (s, k) == (scope, key))

    def acquire(self, lease, counts):
        self._check()
        for scope, key, limit in counts:
            if limit and self._count(scope, key) >= limit:
                return defer.fail(LimitExceeded(LIMIT_NAMES[scope], key))
        self.slots.setdefault(lease, []).extend((s, k) for s, k, _ in counts)
        return defer.succeed(None)

    def release(self, lease):
        self.slots.pop(lease, None)
        return defer.succeed(None)

    def count(self, scope, key):
        self._check()
        return defer.succeed(self._count(scope, key))

    def _state(self, address_key, username):
        n, last = self.failures.get(address_key, (0, 0.0))
        times = self.users.get(username, [])
        return LoginState(n, last, len(times), min(times) if times else 0.0)

    def login_state(self, address_key, username):
        self._check()
        return defer.succeed(self._state(address_key, username))

    def record_failure(self, address_key, username, forget_after, window):
        n, _ = self.failures.get(address_key, (0, 0.0))
        self.failures[address_key] = (n + 1, 1000.0 + n)
        if username is not None:
            self.users.setdefault(username, []).append(900.0 + n)
        return defer.succeed(self._state(address_key, username))

    def record_success(self, address_key, username):
        self.failures.pop(address_key, None)
        self.users.pop(username, None)
        return defer.succeed(None)

    def claim_turn(self, address_key, holder, ttl):
        granted = self.turns.setdefault(address_key, holder) == holder
        return defer.succeed(granted)

    def release_turn(self, address_key, holder):
        if self.turns.get(address_key) == holder:
            del self.turns[address_key]
        return defer.succeed(None)

    def cache_get(self, key):
        return defer.succeed(self.cache.get(key))

    def cache_put(self, key, value, ttl):
        self.cache[key] = value
        return defer.succeed(None)

    def cache_forget(self, key):
        self.cache.pop(key, None)
        return defer.succeed(None)

    def acquire_maildrop(self, username, holder):
        return defer.succeed(self.maildrops.setdefault(username, holder) == holder)

    def release_maildrop(self, username, holder):
        if self.maildrops.get(username) == holder:
            del self.maildrops[username]
        return defer.succeed(None)


class Pair:
    """A worker's store connected in memory to a supervisor's channel."""

    def __init__(self, store, worker=0, timeout=0.5):
        self.clock = task.Clock()
        self.channel = StateChannel(store, worker)
        self.pump = None
        self.worker = SupervisorStateStore(self.clock, timeout=timeout, connect=self.connect)
        self.started = self.worker.start()

    def connect(self, factory):
        client = factory.buildProtocol(None)
        self.pump = iosim.connect(self.channel, iosim.makeFakeServer(self.channel),
                                  client, iosim.makeFakeClient(client), greet=False)
        return defer.succeed(None)

    def run(self, d):
        """Pump until C{d} has its result; @return: the result (or raise it)."""
        self.pump.flush()
        results = []
        d.addBoth(results.append)
        assert results, "no answer after the pump"
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def close(self):
        self.pump.clientIO.loseConnection()
        self.pump.flush()


@pytest.fixture
def store():
    return DictStore()


@pytest.fixture
def pair(store):
    return Pair(store)


def test_provides_the_interface(pair):
    assert verifyObject(IStateStore, pair.worker)
    assert pair.worker.kind == "supervisor"
    assert verifyObject(IStateStore, DictStore())


def test_slots_are_shared_and_a_full_counter_refuses(pair, store):
    other = Pair(store, worker=1)
    counts = [("total", "*", 0), ("ip", "192.0.2.7", 2)]
    assert pair.run(pair.worker.acquire("w0:1", counts)) is None
    assert other.run(other.worker.acquire("w1:1", counts)) is None
    with pytest.raises(LimitExceeded) as refused:
        pair.run(pair.worker.acquire("w0:2", counts))
    assert refused.value.limit == "max_connections_per_ip"
    assert refused.value.key == "192.0.2.7"
    assert other.run(other.worker.count("ip", "192.0.2.7")) == 2
    other.run(other.worker.release("w1:1"))
    assert pair.run(pair.worker.acquire("w0:2", counts)) is None   # the freed slot, at once
    assert pair.run(pair.worker.count("total", "*")) == 2


def test_penalty_state_crosses_with_and_without_a_user(pair):
    assert pair.run(pair.worker.login_state("a1", None)) == LoginState()
    state = pair.run(pair.worker.record_failure("a1", "alice", 300.0, 600.0))
    assert state == LoginState(1, 1000.0, 1, 900.0)
    state = pair.run(pair.worker.record_failure("a1", None, 300.0, 600.0))
    assert (state.failures, state.user_failures) == (2, 0)
    assert pair.run(pair.worker.login_state("a1", "alice")) == LoginState(2, 1001.0, 1, 900.0)
    pair.run(pair.worker.record_success("a1", "alice"))
    assert pair.run(pair.worker.login_state("a1", "alice")) == LoginState()


def test_turns_and_maildrops_have_one_holder(pair, store):
    other = Pair(store, worker=1)
    assert pair.run(pair.worker.claim_turn("a1", "w0:1", 10.0)) is True
    assert other.run(other.worker.claim_turn("a1", "w1:1", 10.0)) is False
    pair.run(pair.worker.release_turn("a1", "w0:1"))
    assert other.run(other.worker.claim_turn("a1", "w1:1", 10.0)) is True
    assert pair.run(pair.worker.acquire_maildrop("alice", "w0:1")) is True
    assert other.run(other.worker.acquire_maildrop("alice", "w1:1")) is False
    pair.run(pair.worker.release_maildrop("alice", "w0:1"))
    assert other.run(other.worker.acquire_maildrop("alice", "w1:1")) is True


def test_cache_keeps_bytes_and_key_types(pair, store):
    assert pair.run(pair.worker.cache_get("k1")) is None
    pair.run(pair.worker.cache_put("k1", b"\x00ok\xff", 60.0))
    pair.run(pair.worker.cache_put(b"k1", b"other", 60.0))
    assert store.cache == {"k1": b"\x00ok\xff", b"k1": b"other"}
    assert pair.run(pair.worker.cache_get("k1")) == b"\x00ok\xff"
    pair.run(pair.worker.cache_forget("k1"))
    assert pair.run(pair.worker.cache_get("k1")) is None
    assert pair.run(pair.worker.cache_get(b"k1")) == b"other"


def test_a_call_without_answer_fails_within_the_timeout(pair, store):
    d = pair.worker.acquire("w0:1", [("ip", "192.0.2.7", 1)])   # not pumped: no answer
    results = []
    d.addBoth(results.append)
    pair.clock.advance(0.49)
    assert results == []
    pair.clock.advance(0.02)
    assert results[0].check(StateUnavailable)
    pair.pump.flush()            # the late answer is ignored, and the slot given back
    assert store.slots == {}
    assert pair.run(pair.worker.acquire("w0:2", [("ip", "192.0.2.7", 1)])) is None


def test_a_turn_granted_too_late_is_given_back(pair, store):
    d = pair.worker.claim_turn("a1", "w0:1", 10.0)
    d.addErrback(lambda f: f.trap(StateUnavailable))
    pair.clock.advance(1.0)
    pair.pump.flush()
    assert store.turns == {}


def test_store_errors_keep_their_meaning_and_the_channel(pair, store):
    store.broken = StateUnavailable("redis away")
    with pytest.raises(StateUnavailable):
        pair.run(pair.worker.count("ip", "x"))
    store.broken = KeyError("a bug")          # not on the wire: StateUnavailable
    with pytest.raises(StateUnavailable):
        pair.run(pair.worker.login_state("a1", None))
    store.broken = None                        # the channel is still open
    assert pair.run(pair.worker.count("ip", "x")) == 0
    assert not pair.channel.transport.disconnecting


def test_a_closed_channel_gives_back_what_the_worker_held(pair, store):
    other = Pair(store, worker=1)
    pair.run(pair.worker.acquire("w0:1", [("ip", "192.0.2.7", 0)]))
    pair.run(pair.worker.acquire("w0:2", [("user", "bob", 0)]))
    pair.run(pair.worker.claim_turn("a1", "w0:1", 10.0))
    pair.run(pair.worker.acquire_maildrop("alice", "w0:1"))
    other.run(other.worker.acquire("w1:1", [("ip", "192.0.2.7", 0)]))
    other.run(other.worker.acquire_maildrop("carol", "w1:1"))
    assert set(store.slots) == {"w0:1", "w0:2", "w1:1"}
    pair.close()                                  # worker 0 died
    assert set(store.slots) == {"w1:1"}
    assert store.turns == {} and store.maildrops == {"carol": "w1:1"}
    assert other.run(other.worker.claim_turn("a1", "w1:1", 10.0)) is True


def test_released_leases_are_not_released_again(pair, store):
    pair.run(pair.worker.acquire("w0:1", [("ip", "x", 0)]))
    pair.run(pair.worker.release("w0:1"))
    assert pair.channel.leases == set()
    pair.run(pair.worker.acquire("w0:2", [("ip", "x", 0)]))
    assert pair.channel.leases == {"w0:2"}


def test_after_the_channel_closes_calls_fail_at_once(pair):
    pair.close()
    d = pair.worker.count("ip", "x")
    results = []
    d.addBoth(results.append)
    assert results[0].check(StateUnavailable)


def test_pending_calls_fail_when_the_supervisor_goes(pair):
    d = pair.worker.count("ip", "x")
    results = []
    d.addBoth(results.append)
    pair.pump.serverIO.loseConnection()
    pair.pump.flush()
    assert results[0].check(StateUnavailable)


def test_hub_gives_each_worker_its_own_socketpair_end(store):
    reactor = MemoryReactorClock()
    hub = StateHub(store, reactor)
    first = hub.channel_for(0)
    second = hub.channel_for(1)
    try:
        assert first.family == socket.AF_UNIX and first.fileno() != second.fileno()
        assert len(reactor.adoptedStreamConnections) == 2
        fd, family, factory = reactor.adoptedStreamConnections[0]
        assert family == socket.AF_UNIX
        assert factory.buildProtocol(None) is hub.channels[0]
        assert hub.channels[0].worker == 0 and hub.channels[1].store is store
    finally:
        first.close()
        second.close()


def test_worker_adopts_its_inherited_fd():
    reactor = MemoryReactorClock()
    mine, theirs = socket.socketpair()
    fd = theirs.detach()
    worker = SupervisorStateStore(reactor, fd=fd)
    worker.start()
    try:
        assert reactor.adoptedStreamConnections[0][:2] == (fd, socket.AF_UNIX)
        with pytest.raises(OSError):
            socket.socket(fileno=fd)   # the inherited fd itself is closed
    finally:
        mine.close()


def test_only_a_worker_given_a_channel_gets_a_supervisor_store():
    reactor = MemoryReactorClock()
    assert supervisor.inherited_store(reactor) is None        # not a worker
    supervisor.inherit_channel(7)
    store = supervisor.inherited_store(reactor, timeout=0.25)
    assert (store.kind, store.fd, store.timeout) == ("supervisor", 7, 0.25)
    assert supervisor.inherited_store(reactor) is None        # handed out once


def settings_with(tmp_path, text=""):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return config.load(str(path), str(tmp_path / "data"))


def test_the_supervisor_shares_a_memory_store_only_with_workers(tmp_path):
    plain = settings_with(tmp_path)
    redis = settings_with(tmp_path, '[state]\nbackend = "redis"\n')
    assert supervisor.shares_store(plain, 2) and not supervisor.shares_store(plain, 1)
    assert not supervisor.shares_store(redis, 2)          # the workers use Redis
    reactor = MemoryReactorClock()
    hub = supervisor.hub_for(plain, reactor, 2)
    assert isinstance(hub.store, MemoryStateStore) and hub.store.lease_ttl == 30.0
    assert supervisor.hub_for(plain, reactor, 1) is None
    assert supervisor.hub_for(redis, reactor, 4) is None


def test_a_worker_builds_its_store_on_the_inherited_channel(tmp_path):
    settings = settings_with(tmp_path, '[state]\ntimeout = 0.25\non_outage = "refuse"\n')
    reactor = MemoryReactorClock()
    assert build.build_state(settings, reactor).kind == "memory"   # no channel: alone
    mine, theirs = socket.socketpair()
    fd = theirs.detach()
    supervisor.inherit_channel(fd)
    try:
        store = build.build_state(settings, reactor)
        assert verifyObject(IStateStore, store)
        assert (store.kind, store.on_outage) == ("supervisor", "refuse")
        store.start()                                  # adopts the inherited fd
        assert reactor.adoptedStreamConnections[0][:2] == (fd, socket.AF_UNIX)
    finally:
        mine.close()


def test_check_config_line_names_the_store(tmp_path):
    plain = settings_with(tmp_path)
    redis = settings_with(tmp_path, '[state]\nbackend = "redis"\n')
    assert build.describe(plain, 2) == "state: supervisor (shared by the supervisor's workers)"
    assert build.describe(plain, 1) == "state: memory (this process only)"
    assert build.describe(redis, 2).startswith("state: redis")
