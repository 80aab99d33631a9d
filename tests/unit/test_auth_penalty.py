"""
Per-address failure delay and per-user lockout, on a fake clock: the rules
(L{PenaltyRule}, L{LockoutRule}) judging the counts of a memory state store.
"""

import pytest
from twisted.internet.task import Clock

from securepop.auth.penalty import LockoutRule, PenaltyRule, address_key
from securepop.state import CLEAN, LoginState
from securepop.state.memory import MemoryStateStore


def now(d):
    out = []
    d.addBoth(out.append)
    return out[0]


class Penalty:
    """A rule over a store, as the gate and the context use them."""

    def __init__(self, clock, max_entries=100_000, forget_after=900.0, **rule):
        self.clock = clock
        self.rule = PenaltyRule(forget_after=forget_after, **rule)
        self.store = MemoryStateStore(clock, max_entries=max_entries)

    def state(self, address):
        return now(self.store.login_state(self.rule.key(address), None))

    def delay_for(self, address):
        return self.rule.delay(self.state(address).failures)

    def record_failure(self, address):
        state = now(self.store.record_failure(self.rule.key(address), None,
                                              self.rule.forget_after, 60.0))
        return self.rule.delay(state.failures)

    def record_success(self, address):
        now(self.store.record_success(self.rule.key(address), None))


def test_fifty_failures_follow_the_schedule_and_spare_others():
    clock = Clock()
    penalty = Penalty(clock, base=2.0, maximum=15.0)
    delays = []
    for _ in range(50):
        assert penalty.delay_for("192.0.2.99") == 0.0
        delays.append(penalty.record_failure("192.0.2.7"))
        clock.advance(delays[-1])          # the client waits the delay
    assert delays[:4] == [2.0, 4.0, 8.0, 15.0]
    assert delays[4:] == [15.0] * 46
    assert penalty.delay_for("192.0.2.7") == 15.0
    assert penalty.delay_for("192.0.2.99") == 0.0
    assert penalty.state("192.0.2.7").failures == 50


def test_no_failure_no_delay_and_ready_at_once():
    rule = PenaltyRule()
    assert rule.delay(0) == 0.0 and rule.ready_at(CLEAN) == 0.0
    assert rule.ready_at(LoginState(failures=2, last_failure=100.0)) == 104.0


def test_success_clears_only_that_address():
    penalty = Penalty(Clock())
    penalty.record_failure("192.0.2.1")
    penalty.record_failure("192.0.2.2")
    penalty.record_success("192.0.2.1")
    assert penalty.delay_for("192.0.2.1") == 0.0
    assert penalty.delay_for("192.0.2.2") == 2.0


def test_forgotten_after_quiet_period():
    clock = Clock()
    penalty = Penalty(clock, forget_after=600)
    for _ in range(5):
        penalty.record_failure("192.0.2.1")
    clock.advance(600)
    assert penalty.delay_for("192.0.2.1") == 15.0
    clock.advance(1)
    assert penalty.delay_for("192.0.2.1") == 0.0
    assert penalty.record_failure("192.0.2.1") == 2.0


def test_ipv6_grouped_by_prefix():
    penalty = Penalty(Clock(), ipv6_prefix=64)
    penalty.record_failure("2001:db8:1:2::1")
    penalty.record_failure("2001:db8:1:2:ffff::9")
    assert penalty.delay_for("2001:db8:1:2::abcd") == 4.0
    assert penalty.delay_for("2001:db8:1:3::1") == 0.0


def test_ipv4_mapped_is_the_ipv4_address():
    penalty = Penalty(Clock())
    penalty.record_failure("::ffff:192.0.2.5")
    assert penalty.delay_for("192.0.2.5") == 2.0
    assert penalty.delay_for("::ffff:192.0.2.6") == 0.0


@pytest.mark.parametrize("address, key", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not-an-ip", "not-an-ip"),
])
def test_address_key(address, key):
    assert address_key(address) == key


def test_memory_is_bounded():
    clock = Clock()
    penalty = Penalty(clock, max_entries=100)
    for i in range(10_000):
        penalty.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(penalty.store._failures) == 100
    # the most recent failures are the ones remembered
    assert penalty.delay_for("10.0.39.15") == 2.0
    assert penalty.delay_for("10.0.0.0") == 0.0


def test_expired_entries_make_room_first():
    clock = Clock()
    penalty = Penalty(clock, max_entries=2, forget_after=10)
    penalty.record_failure("192.0.2.1")
    clock.advance(5)
    penalty.record_failure("192.0.2.2")
    clock.advance(6)                       # .1 expired, .2 not
    penalty.record_failure("192.0.2.3")
    assert penalty.delay_for("192.0.2.2") == 2.0
    assert penalty.delay_for("192.0.2.3") == 2.0


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"base": 20, "maximum": 15},
                                    {"ipv6_prefix": 129}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        PenaltyRule(**kwargs)


def test_huge_failure_counts_do_not_overflow():
    penalty = Penalty(Clock())
    for _ in range(2000):
        penalty.record_failure("192.0.2.1")
    assert penalty.delay_for("192.0.2.1") == 15.0
    assert PenaltyRule().delay(1 << 40) == 15.0


# -- per-user lockout -------------------------------------------------------


def locked(rule, store, user):
    return rule.locked(now(store.login_state("192.0.2.200", user)))


def fail(store, user, window=60.0):
    now(store.record_failure("192.0.2.100", user, 900.0, window))


def test_lockout_after_threshold_within_window():
    clock = Clock()
    store, rule = MemoryStateStore(clock), LockoutRule(threshold=3, window=60)
    for _ in range(2):
        fail(store, "alice")
        clock.advance(1)
    assert not locked(rule, store, "alice")
    fail(store, "alice")
    assert locked(rule, store, "alice")
    assert now(store.login_state("x", "alice")).user_oldest + rule.window == 60
    assert not locked(rule, store, "bob")
    clock.advance(57)                      # now 59: still inside
    assert locked(rule, store, "alice")
    clock.advance(1)                       # now 60: oldest failure left
    assert not locked(rule, store, "alice")


def test_failures_spread_beyond_window_do_not_lock():
    clock = Clock()
    store, rule = MemoryStateStore(clock), LockoutRule(threshold=3, window=60)
    for _ in range(10):
        fail(store, "alice")
        clock.advance(31)
    assert not locked(rule, store, "alice")


def test_lockout_success_clears_when_asked_and_memory_bounded():
    clock = Clock()
    store, rule = MemoryStateStore(clock, max_entries=10), LockoutRule(threshold=1, window=60)
    fail(store, "alice")
    now(store.record_success("192.0.2.100", "alice"))
    assert not locked(rule, store, "alice")
    for i in range(1000):
        fail(store, f"user{i}")
    assert len(store._users) == 10
    assert locked(rule, store, "user999") and not locked(rule, store, "user0")


@pytest.mark.parametrize("kwargs", [{"threshold": 0}, {"window": 0}])
def test_lockout_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LockoutRule(**kwargs)
