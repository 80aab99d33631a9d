"""Per-address failure delay and per-user lockout, on a fake clock."""

import pytest
from twisted.internet.task import Clock

from securepop.auth.penalty import FailurePenalty, UserLockout, address_key


def test_fifty_failures_follow_the_schedule_and_spare_others():
    clock = Clock()
    penalty = FailurePenalty(clock, base=2.0, maximum=15.0)
    delays = []
    for _ in range(50):
        assert penalty.delay_for("192.0.2.99") == 0.0
        delays.append(penalty.record_failure("192.0.2.7"))
        clock.advance(delays[-1])          # the client waits the delay
    assert delays[:4] == [2.0, 4.0, 8.0, 15.0]
    assert delays[4:] == [15.0] * 46
    assert penalty.delay_for("192.0.2.7") == 15.0
    assert penalty.delay_for("192.0.2.99") == 0.0
    assert penalty.failures("192.0.2.7") == 50


def test_no_failure_no_delay():
    assert FailurePenalty(Clock()).delay_for("192.0.2.1") == 0.0


def test_success_clears_only_that_address():
    penalty = FailurePenalty(Clock())
    penalty.record_failure("192.0.2.1")
    penalty.record_failure("192.0.2.2")
    penalty.record_success("192.0.2.1")
    assert penalty.delay_for("192.0.2.1") == 0.0
    assert penalty.delay_for("192.0.2.2") == 2.0


def test_forgotten_after_quiet_period():
    clock = Clock()
    penalty = FailurePenalty(clock, forget_after=600)
    for _ in range(5):
        penalty.record_failure("192.0.2.1")
    clock.advance(600)
    assert penalty.delay_for("192.0.2.1") == 15.0
    clock.advance(1)
    assert penalty.delay_for("192.0.2.1") == 0.0
    assert penalty.record_failure("192.0.2.1") == 2.0


def test_ipv6_grouped_by_prefix():
    penalty = FailurePenalty(Clock(), ipv6_prefix=64)
    penalty.record_failure("2001:db8:1:2::1")
    penalty.record_failure("2001:db8:1:2:ffff::9")
    assert penalty.delay_for("2001:db8:1:2::abcd") == 4.0
    assert penalty.delay_for("2001:db8:1:3::1") == 0.0


def test_ipv4_mapped_is_the_ipv4_address():
    penalty = FailurePenalty(Clock())
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
    penalty = FailurePenalty(clock, max_entries=100)
    for i in range(10_000):
        penalty.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(penalty) == 100
    # the most recent failures are the ones remembered
    assert penalty.delay_for("10.0.39.15") == 2.0
    assert penalty.delay_for("10.0.0.0") == 0.0


def test_expired_entries_make_room_first():
    clock = Clock()
    penalty = FailurePenalty(clock, max_entries=2, forget_after=10)
    penalty.record_failure("192.0.2.1")
    clock.advance(5)
    penalty.record_failure("192.0.2.2")
    clock.advance(6)                       # .1 expired, .2 not
    penalty.record_failure("192.0.2.3")
    assert penalty.delay_for("192.0.2.2") == 2.0
    assert penalty.delay_for("192.0.2.3") == 2.0


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"base": 20, "maximum": 15},
                                    {"ipv6_prefix": 129},
                                    {"max_entries": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        FailurePenalty(Clock(), **kwargs)


def test_huge_failure_counts_do_not_overflow():
    penalty = FailurePenalty(Clock())
    for _ in range(2000):
        penalty.record_failure("192.0.2.1")
    assert penalty.delay_for("192.0.2.1") == 15.0


# -- per-user lockout -------------------------------------------------------

def test_lockout_after_threshold_within_window():
    clock = Clock()
    lockout = UserLockout(clock, threshold=3, window=60)
    for _ in range(2):
        lockout.record_failure("alice")
        clock.advance(1)
    assert not lockout.is_locked("alice")
    lockout.record_failure("alice")
    assert lockout.is_locked("alice") and lockout.locked("alice")
    assert lockout.locked_until("alice") == 60
    assert not lockout.is_locked("bob")
    clock.advance(57)                      # now 59: still inside
    assert lockout.is_locked("alice")
    clock.advance(1)                       # now 60: oldest failure left
    assert not lockout.is_locked("alice")


def test_failures_spread_beyond_window_do_not_lock():
    clock = Clock()
    lockout = UserLockout(clock, threshold=3, window=60)
    for _ in range(10):
        lockout.record_failure("alice")
        clock.advance(31)
    assert not lockout.is_locked("alice")


def test_lockout_success_clears_and_memory_bounded():
    clock = Clock()
    lockout = UserLockout(clock, threshold=1, window=60, max_entries=10)
    lockout.record_failure("alice")
    lockout.record_success("alice")
    assert not lockout.is_locked("alice")
    for i in range(1000):
        lockout.record_failure(f"user{i}")
    assert len(lockout) == 10
    assert lockout.is_locked("user999") and not lockout.is_locked("user0")
    assert lockout.locked_until("nobody") is None


def test_lockout_bad_parameters():
    with pytest.raises(ValueError):
        UserLockout(Clock(), threshold=0)
