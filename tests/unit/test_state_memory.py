"""
The memory state store (L{securepop.state.memory.MemoryStateStore}): every
method of L{IStateStore}, on a fake clock, with its negative cases.
"""

import pytest
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from securepop.access.limits import PER_IP, PER_USER, TOTAL, LimitExceeded
from securepop.auth.penalty import address_key
from securepop.interfaces import IStateStore
from securepop.state import CLEAN, LoginState
from securepop.state.memory import MAX_USER_FAILURES, MemoryStateStore


def now(d):
    """The result of an already-fired Deferred (the store never makes one wait)."""
    assert isinstance(d, defer.Deferred) and d.called
    out = []
    d.addBoth(out.append)
    return out[0]


def make(**kwargs):
    clock = task.Clock()
    clock.advance(1_000_000)        # wall-clock-like times
    return clock, MemoryStateStore(clock, **kwargs)


def test_provides_the_interface():
    clock, store = make()
    assert verifyObject(IStateStore, store)
    assert store.kind == "memory" and store.lease_ttl == 30.0
    assert now(store.start()) is None and now(store.stop()) is None


@pytest.mark.parametrize("kwargs", [{"lease_ttl": 0}, {"max_entries": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        MemoryStateStore(task.Clock(), **kwargs)


# -- connection slots -------------------------------------------------------------


def test_acquire_counts_and_refuses_at_the_limit():
    clock, store = make()
    counts = [("total", "*", 3), ("ip", "192.0.2.1", 2)]
    assert now(store.acquire("a", counts)) is None
    assert now(store.acquire("b", counts)) is None
    refused = now(store.acquire("c", counts))
    assert refused.check(LimitExceeded) and refused.value.limit == PER_IP
    assert refused.value.key == "192.0.2.1"
    assert now(store.count("ip", "192.0.2.1")) == 2 and now(store.count("total", "*")) == 2
    assert now(store.acquire("d", [("total", "*", 3), ("ip", "192.0.2.2", 2)])) is None
    total = now(store.acquire("e", [("total", "*", 3), ("ip", "192.0.2.3", 2)]))
    assert total.value.limit == TOTAL and total.value.key is None


def test_acquire_is_all_or_none():
    clock, store = make()
    now(store.acquire("a", [("user", "alice", 1)]))
    refused = now(store.acquire("b", [("total", "*", 0), ("ip", "192.0.2.1", 0),
                                      ("user", "alice", 1)]))
    assert refused.value.limit == PER_USER
    assert now(store.count("total", "*")) == 0 and now(store.count("ip", "192.0.2.1")) == 0
    assert now(store.release("b")) is None          # nothing held: nothing given back
    assert now(store.count("user", "alice")) == 1


def test_zero_is_unlimited_but_counted():
    clock, store = make()
    for n in range(50):
        assert now(store.acquire(f"l{n}", [("ip", "192.0.2.1", 0)])) is None
    assert now(store.count("ip", "192.0.2.1")) == 50


def test_release_gives_back_everything_a_lease_holds_once():
    clock, store = make()
    now(store.acquire("s1", [("total", "*", 10), ("ip", "192.0.2.1", 2)]))
    now(store.acquire("s1", [("user", "alice", 1)]))        # the login adds to the lease
    now(store.acquire("s2", [("total", "*", 10), ("ip", "192.0.2.1", 2)]))
    now(store.release("s1"))
    now(store.release("s1"))                                # idempotent
    now(store.release("never-held"))
    assert now(store.count("total", "*")) == 1
    assert now(store.count("ip", "192.0.2.1")) == 1
    assert now(store.count("user", "alice")) == 0
    now(store.release("s2"))
    assert store._counters == {} and store._leases == {}   # nothing left behind


def test_stop_gives_back_this_process_slots_and_turns():
    clock, store = make()
    now(store.acquire("s1", [("total", "*", 1)]))
    assert now(store.claim_turn("192.0.2.1", "h1", 10)) is True
    now(store.stop())
    assert now(store.count("total", "*")) == 0
    assert now(store.claim_turn("192.0.2.1", "h2", 10)) is True


@pytest.mark.parametrize("counts", [[("node", "x", 1)], [("ip", "x", -1)], [("ip", "x", True)]])
def test_malformed_counts_are_refused(counts):
    clock, store = make()
    assert now(store.acquire("a", counts)).check(ValueError)
    assert now(store.count("node", "x")).check(ValueError)
    assert store._counters == {}


# -- failure penalty and lockout ---------------------------------------------------------


def test_clean_state_and_a_failure_on_record():
    clock, store = make()
    assert now(store.login_state("192.0.2.1", "alice")) == CLEAN
    state = now(store.record_failure("192.0.2.1", "alice", 900.0, 60.0))
    t = clock.seconds()
    assert state == LoginState(failures=1, last_failure=t, user_failures=1, user_oldest=t)
    clock.advance(5)
    state = now(store.record_failure("192.0.2.1", None, 900.0, 60.0))
    assert (state.failures, state.last_failure) == (2, t + 5)
    assert state.user_failures == 0                          # read without a user
    assert now(store.login_state("192.0.2.1", "alice")).user_failures == 1
    assert now(store.login_state("198.51.100.7", None)) == CLEAN   # others are spared


def test_penalty_is_forgotten_after_a_quiet_period():
    clock, store = make()
    now(store.record_failure("192.0.2.1", None, 900.0, 60.0))
    clock.advance(900)
    assert now(store.login_state("192.0.2.1", None)).failures == 1
    clock.advance(1)
    assert now(store.login_state("192.0.2.1", None)) == CLEAN
    assert now(store.record_failure("192.0.2.1", None, 900.0, 60.0)).failures == 1


def test_success_clears_the_address_and_only_when_asked_the_user():
    clock, store = make()
    now(store.record_failure("192.0.2.1", "alice", 900.0, 60.0))
    now(store.record_failure("192.0.2.2", "alice", 900.0, 60.0))
    now(store.record_success("192.0.2.1", None))
    assert now(store.login_state("192.0.2.1", "alice")) == LoginState(
        0, 0.0, 2, clock.seconds())
    assert now(store.login_state("192.0.2.2", None)).failures == 1
    now(store.record_success("192.0.2.2", "alice"))
    assert now(store.login_state("192.0.2.2", "alice")) == CLEAN


def test_lockout_window_counts_each_failure_for_its_window():
    clock, store = make()
    first = clock.seconds()
    for step in (20, 20, 19.9):           # failures at 0, 20 and 40 s; now 59.9 s
        now(store.record_failure("192.0.2.1", "alice", 900.0, 60.0))
        clock.advance(step)
    state = now(store.login_state("192.0.2.9", "alice"))
    assert (state.user_failures, state.user_oldest) == (3, first)
    clock.advance(0.1)                    # the first is 60 s old now: out of the window
    state = now(store.login_state("192.0.2.9", "alice"))
    assert (state.user_failures, state.user_oldest) == (2, first + 20)
    clock.advance(60)
    assert now(store.login_state("192.0.2.9", "alice")).user_failures == 0
    assert "alice" not in store._users


def test_a_user_keeps_a_bounded_history():
    clock, store = make()
    for _ in range(MAX_USER_FAILURES + 10):
        now(store.record_failure("192.0.2.1", "alice", 900.0, 3600.0))
    assert now(store.login_state("192.0.2.1", "alice")).user_failures == MAX_USER_FAILURES


def test_failure_and_user_tables_are_bounded():
    clock, store = make(max_entries=100)
    for n in range(1000):
        now(store.record_failure(f"10.0.{n // 256}.{n % 256}", f"user{n}", 900.0, 60.0))
    assert len(store._failures) == 100 and len(store._users) == 100
    assert now(store.login_state("10.0.3.231", "user999")).failures == 1   # the newest stays
    assert now(store.login_state("10.0.0.0", "user0")) == CLEAN           # the oldest went


def test_expired_entries_make_room_before_live_ones():
    clock, store = make(max_entries=3)
    now(store.record_failure("192.0.2.1", None, 10.0, 60.0))     # forgotten after 10 s
    now(store.record_failure("192.0.2.2", None, 900.0, 60.0))
    now(store.record_failure("192.0.2.3", None, 900.0, 60.0))
    clock.advance(11)
    now(store.record_failure("192.0.2.4", None, 900.0, 60.0))
    assert sorted(store._failures) == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_ipv6_clients_share_their_64_through_address_key():
    clock, store = make()
    for host in ("2001:db8::1", "2001:db8::ffff:1", "2001:db8:0:0:1::9"):
        now(store.record_failure(address_key(host), None, 900.0, 60.0))
    assert now(store.login_state(address_key("2001:db8::abcd"), None)).failures == 3
    assert now(store.login_state(address_key("2001:db8:0:1::1"), None)) == CLEAN
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_huge_failure_counts_do_not_overflow():
    clock, store = make()
    store._failures["192.0.2.1"] = [1 << 20, clock.seconds(), 900.0]
    assert now(store.record_failure("192.0.2.1", None, 900.0, 60.0)).failures == 1 << 20


# -- the turn ------------------------------------------------------------------------


def test_one_turn_per_address_until_released_or_expired():
    clock, store = make()
    assert now(store.claim_turn("192.0.2.1", "h1", 30.0)) is True
    assert now(store.claim_turn("192.0.2.1", "h1", 30.0)) is True        # its own, again
    assert now(store.claim_turn("192.0.2.1", "h2", 30.0)) is False
    assert now(store.claim_turn("192.0.2.2", "h2", 30.0)) is True        # another address
    now(store.release_turn("192.0.2.1", "h2"))                           # not its turn
    assert now(store.claim_turn("192.0.2.1", "h3", 30.0)) is False
    now(store.release_turn("192.0.2.1", "h1"))
    assert now(store.claim_turn("192.0.2.1", "h3", 30.0)) is True
    clock.advance(30)                                                    # h3 never came back
    assert now(store.claim_turn("192.0.2.1", "h4", 30.0)) is True


def test_turns_are_bounded():
    clock, store = make(max_entries=2)
    assert now(store.claim_turn("a", "h", 5.0)) and now(store.claim_turn("b", "h", 5.0))
    assert now(store.claim_turn("c", "h", 5.0)) is False     # full: no one jumps the line
    clock.advance(5)
    assert now(store.claim_turn("c", "h", 5.0)) is True      # expired turns make room
    assert len(store._turns) == 1


# -- auth cache ----------------------------------------------------------------------------


def test_cache_holds_a_value_for_its_ttl():
    clock, store = make()
    assert now(store.cache_get(b"k")) is None
    now(store.cache_put(b"k", b"value", 10.0))
    assert now(store.cache_get(b"k")) == b"value"
    clock.advance(9.9)
    assert now(store.cache_get(b"k")) == b"value"                # reading never extends it
    clock.advance(0.1)
    assert now(store.cache_get(b"k")) is None
    now(store.cache_put(b"k", b"value", 0))                      # no lifetime: not stored
    assert now(store.cache_get(b"k")) is None


def test_cache_forget_and_only_bytes():
    clock, store = make()
    now(store.cache_put(b"k", b"v", 10.0))
    now(store.cache_forget(b"k"))
    now(store.cache_forget(b"never"))
    assert now(store.cache_get(b"k")) is None
    assert now(store.cache_put(b"k", "a str", 10.0)).check(TypeError)


def test_cache_is_bounded_least_recently_used_first():
    clock, store = make(max_entries=3)
    for key in (b"a", b"b", b"c"):
        now(store.cache_put(key, key, 60.0))
    now(store.cache_get(b"a"))                                   # a is used: b is oldest
    now(store.cache_put(b"d", b"d", 60.0))
    assert [now(store.cache_get(k)) for k in (b"a", b"b", b"c", b"d")] == [
        b"a", None, b"c", b"d"]
    assert len(store._cache) == 3


# -- maildrop leases -------------------------------------------------------------------------


def test_maildrop_lease_has_one_holder():
    clock, store = make()
    assert now(store.acquire_maildrop("alice", "s1")) is True
    assert now(store.acquire_maildrop("alice", "s2")) is False
    assert now(store.acquire_maildrop("bob", "s2")) is True
    now(store.release_maildrop("alice", "s2"))                   # not its lease
    assert now(store.acquire_maildrop("alice", "s2")) is False
    now(store.release_maildrop("alice", "s1"))
    assert now(store.acquire_maildrop("alice", "s2")) is True
