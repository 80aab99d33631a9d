"""
The C{redis} state store against a real redis-server: every IStateStore
method, two store instances standing for two nodes, a node that dies
without giving its slots back, an outage (SIGSTOP) under both
C{on_outage} policies, TLS with a CA file and a password file.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from securepop.access.limits import LimitExceeded
from securepop.errors import ConfigError, StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState
from securepop.state.outage import OutageGuard
from securepop.state.redis import RedisStateStore, read_password_file
from tests.integration.fixtures_redis import PASSWORD
from tests.unit.state_doubles import LocalStore

TIMEOUT = 0.5
MARGIN = 0.3


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def stores(redis):
    """Make started stores on the test server; all are stopped afterwards."""
    made = []

    async def make(**options):
        options.setdefault("timeout", TIMEOUT)
        store = RedisStateStore(reactor, options.pop("url", redis.url), **options)
        made.append(store)
        await store.start()
        return store

    yield make
    for store in made:
        pytest_twisted.blockon(store.stop())


@pytest.fixture
def logged():
    seen = []

    def observe(event):
        if "securepop_event" in event:
            seen.append(event["securepop_event"])
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def refused(deferred):
    try:
        await deferred
    except LimitExceeded as e:
        return e.limit, e.key
    return None


COUNTS = [("total", "*", 5), ("ip", "192.0.2.7", 4)]


@pytest_twisted.ensureDeferred
async def test_interface(stores):
    store = await stores()
    assert verifyObject(IStateStore, store)
    assert store.kind == "redis" and store.lease_ttl == 30.0


@pytest_twisted.ensureDeferred
async def test_slots_are_shared_all_or_none_across_two_nodes(stores):
    a, b = await stores(), await stores()
    await a.acquire("a1", COUNTS)
    await a.acquire("a2", COUNTS)
    await b.acquire("b1", COUNTS)
    await b.acquire("b2", COUNTS)
    # the fifth connection from the address is refused on either node...
    assert await refused(a.acquire("a3", COUNTS)) == ("max_connections_per_ip", "192.0.2.7")
    assert await refused(b.acquire("b3", COUNTS)) == ("max_connections_per_ip", "192.0.2.7")
    # ...and, all or none, took no total slot either
    assert await a.count("total", "*") == 4
    assert await b.count("ip", "192.0.2.7") == 4
    # another address is only counted in the total, which is now full at 5
    assert await refused(b.acquire("b4", [("total", "*", 5), ("ip", "192.0.2.8", 4)])) is None
    assert await refused(a.acquire("a5", [("total", "*", 5), ("ip", "192.0.2.9", 4)])) \
        == ("max_connections", None)
    assert await refused(b.acquire("b5", COUNTS)) == ("max_connections", None)   # the first full
    # a slot freed on one node is usable on the other at once
    await a.release("a1")
    await a.release("a1")      # idempotent
    assert await refused(b.acquire("b5", COUNTS)) is None
    assert await refused(b.acquire("b6", COUNTS)) == ("max_connections", None)
    await b.release("b4")
    # 0 = unlimited: counted, never refused; the same lease adds a user slot
    await a.acquire("a2", [("user", "alice", 0)])
    assert await a.count("user", "alice") == 1
    await a.release("a2")
    assert await a.count("user", "alice") == 0 and await a.count("ip", "192.0.2.7") == 3
    with pytest.raises(ValueError):
        await a.acquire("a9", [("planet", "x", 1)])


@pytest_twisted.ensureDeferred
async def test_a_dead_node_loses_its_slots_within_the_lease_ttl(stores):
    live = await stores(lease_ttl=2.0)
    dead = await stores(lease_ttl=2.0)
    await live.acquire("live", COUNTS)
    await dead.acquire("dead", COUNTS)
    dead._heartbeat.stop()          # the node dies: no heartbeat, nothing released
    assert await live.count("ip", "192.0.2.7") == 2
    await sleep(2.3)
    # the live node's slot outlived the TTL thanks to its heartbeat; the dead one's is gone
    assert await live.count("ip", "192.0.2.7") == 1
    assert await refused(live.acquire("x", [("ip", "192.0.2.7", 2)])) is None
    assert await refused(live.acquire("y", [("ip", "192.0.2.7", 2)])) \
        == ("max_connections_per_ip", "192.0.2.7")


@pytest_twisted.ensureDeferred
async def test_turn_is_exclusive_across_nodes(stores):
    a, b = await stores(), await stores()
    assert await a.claim_turn("192.0.2.7", "a:1", 5) is True
    assert await b.claim_turn("192.0.2.7", "b:1", 5) is False
    assert await a.claim_turn("192.0.2.7", "a:1", 5) is True     # still ours
    await b.release_turn("192.0.2.7", "b:1")                      # not b's: no effect
    assert await b.claim_turn("192.0.2.7", "b:1", 5) is False
    await a.release_turn("192.0.2.7", "a:1")
    assert await b.claim_turn("192.0.2.7", "b:1", 0.3) is True
    await sleep(0.4)                                              # a turn ends with its ttl
    assert await a.claim_turn("192.0.2.7", "a:2", 5) is True


@pytest_twisted.ensureDeferred
async def test_maildrop_lease_is_exclusive_and_refreshed(stores):
    a, b = await stores(lease_ttl=1.5), await stores(lease_ttl=1.5)
    assert await a.acquire_maildrop("alice", "a:1") is True
    assert await b.acquire_maildrop("alice", "b:1") is False
    await sleep(2.0)                 # past the TTL: a's heartbeat kept it
    assert await b.acquire_maildrop("alice", "b:1") is False
    await a.release_maildrop("alice", "a:1")
    assert await b.acquire_maildrop("alice", "b:1") is True
    b._heartbeat.stop()              # b dies holding it
    await sleep(1.7)
    assert await a.acquire_maildrop("alice", "a:2") is True


@pytest_twisted.ensureDeferred
async def test_penalty_and_lockout_are_shared_and_forgotten(stores):
    a, b = await stores(), await stores()
    assert await a.login_state("192.0.2.7", "alice") == LoginState()
    first = await a.record_failure("192.0.2.7", "alice", 1.0, 60.0)
    assert first.failures == 1 and first.user_failures == 1
    assert abs(first.last_failure - time.time()) < 1 and first.user_oldest == first.last_failure
    second = await b.record_failure("192.0.2.7", "alice", 1.0, 60.0)
    assert second.failures == 2 and second.user_failures == 2
    assert second.user_oldest == first.user_oldest
    seen = await a.login_state("192.0.2.7", "alice")
    assert seen == second
    # no user name: only the address counts; another user starts clean
    assert (await b.record_failure("192.0.2.7", None, 1.0, 60.0)).failures == 3
    assert (await a.login_state("192.0.2.7", "bob")).user_failures == 0
    # the address is forgotten forget_after seconds after its last failure
    await sleep(1.2)
    state = await b.login_state("192.0.2.7", "alice")
    assert state.failures == 0 and state.user_failures == 2
    # a user failure counts for `window` seconds only
    await a.record_failure("192.0.2.8", "carol", 60.0, 0.5)
    await sleep(0.6)
    assert (await a.login_state("192.0.2.8", "carol")).user_failures == 0
    # success clears both
    await b.record_success("192.0.2.7", "alice")
    assert await a.login_state("192.0.2.7", "alice") == LoginState()


@pytest_twisted.ensureDeferred
async def test_keys_cannot_be_injected(stores, redis):
    store = await stores()
    await store.record_failure("x", "a:b\r\n*1\r\n$8\r\nFLUSHALL", 60, 60)
    await store.cache_put(b"k", b"v", 60)
    names = redis.command("KEYS", "*")
    assert b"securepop:cache:6b" in names
    assert b"FLUSHALL" not in names and b"\r\n*1" not in names
    assert await store.cache_get(b"k") == b"v"


@pytest_twisted.ensureDeferred
async def test_cache_ttl_and_forget(stores):
    a, b = await stores(), await stores()
    key = bytes(range(32))
    assert await b.cache_get(key) is None
    await a.cache_put(key, b"\x00\xff positive", 0.4)
    assert await b.cache_get(key) == b"\x00\xff positive"
    await sleep(0.5)
    assert await b.cache_get(key) is None
    await a.cache_put(key, b"x", 60)
    await b.cache_forget(key)
    assert await a.cache_get(key) is None
    await a.cache_put(key, b"x", 0)          # no ttl: not stored
    assert await a.cache_get(key) is None


@pytest_twisted.ensureDeferred
async def test_scripts_reload_after_script_flush(stores, redis):
    store = await stores()
    assert redis.command("SCRIPT", "FLUSH").startswith(b"+OK")
    assert (await store.record_failure("192.0.2.7", None, 60, 60)).failures == 1
    assert await store.claim_turn("192.0.2.7", "h", 5) is True


@pytest_twisted.ensureDeferred
async def test_stop_gives_everything_back(stores):
    a, b = await stores(), await stores()
    await a.acquire("a1", COUNTS)
    assert await a.acquire_maildrop("alice", "a:1")
    await a.stop()
    assert await b.count("ip", "192.0.2.7") == 0
    assert await b.acquire_maildrop("alice", "b:1") is True


async def timed(deferred):
    started = time.monotonic()
    try:
        await deferred
    except StateUnavailable:
        return time.monotonic() - started
    raise AssertionError("the call did not fail")


@pytest_twisted.ensureDeferred
async def test_paused_server_fails_within_the_timeout(stores, redis):
    store = await stores()
    await store.acquire("a1", COUNTS)
    redis.pause()
    try:
        assert await timed(store.login_state("192.0.2.7", "alice")) < TIMEOUT + MARGIN
        # the connection was dropped: the next calls fail within the timeout too
        assert await timed(store.cache_get(b"k")) < TIMEOUT + MARGIN
        assert await timed(store.acquire("a2", COUNTS)) < TIMEOUT + MARGIN
    finally:
        redis.resume()
    # reconnects by itself; the slot request that timed out but ran once the
    # server resumed is fenced and taken back (not left for lease_ttl)
    counts = []
    for _ in range(50):
        await sleep(0.1)
        try:
            counts.append(await store.count("ip", "192.0.2.7"))
        except StateUnavailable:
            continue
        if counts[-1] == 1:
            break
    assert counts and counts[-1] == 1, counts
    assert await store.count("total", "*") == 1


@pytest_twisted.ensureDeferred
async def test_outage_local_answers_locally_then_recovers(stores, redis, logged):
    store = await stores()
    local = LocalStore()
    guard = OutageGuard(store, local, "local", reactor, probe_interval=0.2)
    await guard.start()
    assert verifyObject(IStateStore, guard) and guard.kind == "redis"
    await guard.acquire("before", COUNTS)
    await guard.record_failure("192.0.2.7", "alice", 60, 60)
    redis.pause()
    try:
        started = time.monotonic()
        state = await guard.login_state("192.0.2.7", "alice")
        assert time.monotonic() - started < TIMEOUT + MARGIN
        assert state == LoginState() and guard.outage
        await guard.acquire("during", COUNTS)       # taken locally, at once
        assert local.leases == {"during"}
        started = time.monotonic()
        await guard.login_state("192.0.2.7", "alice")
        await guard.record_failure("192.0.2.7", "alice", 60, 60)
        assert time.monotonic() - started < 0.1      # no second wait on the store
        assert logged.count("state.outage") == 1
    finally:
        redis.resume()
    for _ in range(50):
        if not guard.outage:
            break
        await sleep(0.1)
    assert not guard.outage and logged.count("state.recovered") == 1
    assert logged.count("state.outage") == 1
    # Redis again: what was there before the outage is still there
    assert (await guard.login_state("192.0.2.7", "alice")).failures == 1
    assert await guard.count("ip", "192.0.2.7") == 1
    await guard.release("during")                    # given back locally
    assert local.leases == set()
    await guard.release("before")
    assert await store.count("ip", "192.0.2.7") == 0
    await guard.stop()


@pytest_twisted.ensureDeferred
async def test_outage_refuse_fails_with_state_unavailable(stores, redis, logged):
    store = await stores()
    local = LocalStore()
    guard = OutageGuard(store, local, "refuse", reactor, probe_interval=0.2)
    await guard.start()
    assert await guard.login_state("192.0.2.7", "alice") == LoginState()
    redis.pause()
    try:
        assert await timed(guard.login_state("192.0.2.7", "alice")) < TIMEOUT + MARGIN
        assert await timed(guard.acquire("x", COUNTS)) < 0.1
        await guard.release("x")                      # giving back never fails
        assert local.calls == [] and logged.count("state.outage") == 1
    finally:
        redis.resume()
    for _ in range(50):
        if not guard.outage:
            break
        await sleep(0.1)
    assert await guard.login_state("192.0.2.7", "alice") == LoginState()
    await guard.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_at_start(redis, logged):
    port = redis.port + 1 if redis.port < 65535 else redis.port - 1
    store = RedisStateStore(reactor, f"redis://127.0.0.1:{port}/0", timeout=0.2)
    guard = OutageGuard(store, LocalStore(), "local", reactor, probe_interval=0.2)
    try:
        await guard.start()                          # an outage, not a failed start
        assert guard.outage and logged.count("state.outage") == 1
        assert await guard.login_state("192.0.2.7", None) == LoginState()
    finally:
        await guard.stop()


@pytest_twisted.ensureDeferred
async def test_tls_with_ca_file_and_password_file(redis_tls_server, tmp_path):
    server = redis_tls_server
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_password_file(str(secret))
    secret.chmod(0o600)
    password = read_password_file(str(secret))
    store = RedisStateStore(reactor, server.url, password=password, ca_file=server.ca_file,
                            timeout=2)
    try:
        await store.start()
        await store.cache_put(b"k", b"over TLS", 60)
        assert await store.cache_get(b"k") == b"over TLS"
    finally:
        await store.stop()
    # negative: a wrong password, and a server certificate not from the CA
    wrong = RedisStateStore(reactor, server.url, password="wrong", ca_file=server.ca_file,
                            timeout=0.5)
    other_ca = tmp_path / "other-ca.pem"
    from tests.integration.fixtures_redis import make_tls_files
    other_ca.write_bytes(open(make_tls_files(str(tmp_path))["ca"], "rb").read())
    untrusted = RedisStateStore(reactor, server.url, password=password, ca_file=str(other_ca),
                                timeout=0.5)
    for store in (wrong, untrusted):
        try:
            with pytest.raises(StateUnavailable):
                await store.start()
            with pytest.raises(StateUnavailable):
                await store.cache_get(b"k")
        finally:
            await store.stop()
    assert os.path.exists(server.ca_file)


@pytest_twisted.ensureDeferred
async def test_master_found_through_sentinel(stores, redis, redis_sentinel):
    store = await stores(url="redis://ignored.invalid:1/0", sentinels=[redis_sentinel.address],
                         sentinel_master="mymaster")
    await store.cache_put(b"k", b"via sentinel", 60)
    assert redis.command("GET", "securepop:cache:6b").endswith(b"via sentinel\r\n")
    assert await store.cache_get(b"k") == b"via sentinel"
    # negative: a service the Sentinel does not know is never reached
    lost = RedisStateStore(reactor, redis.url, sentinels=[redis_sentinel.address],
                           sentinel_master="nosuchmaster", timeout=0.2)
    try:
        with pytest.raises(StateUnavailable):
            await lost.start()
        with pytest.raises(StateUnavailable):
            await lost.cache_get(b"k")
    finally:
        await lost.stop()


@pytest_twisted.ensureDeferred
async def test_a_heartbeat_never_brings_back_a_slot_redis_no_longer_holds(stores, redis):
    """A beat after the slot is gone (released elsewhere, data lost) creates no phantom."""
    a = await stores()
    await a.acquire("a1", COUNTS)
    await a.beat()
    assert await a.count("ip", "192.0.2.7") == 1          # a live slot is re-dated
    assert redis.command("FLUSHALL").startswith(b"+OK")
    await a.beat()
    assert await a.count("ip", "192.0.2.7") == 0
    assert await refused(a.acquire("a2", [("ip", "192.0.2.7", 1)])) is None
