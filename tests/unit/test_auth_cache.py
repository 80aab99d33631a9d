"""
Tests for securepop.auth.cache.AuthCache (fake clock, no timing).
"""

import pytest
from twisted.internet.task import Clock

from securepop.auth.cache import MISS, NEGATIVE, AuthCache
from securepop.auth.records import UserRecord


def makeCache(**kwargs):
    clock = Clock()
    return clock, AuthCache(clock, **kwargs)


def test_key_never_contains_the_password():
    _, cache = makeCache()
    key = cache.keyFor("ldap", "alice", b"Secret-pass-1")
    assert b"Secret-pass-1" not in key
    assert len(key) == 32


def test_key_depends_on_every_part_and_the_process_key():
    _, cache = makeCache()
    _, other = makeCache()
    key = cache.keyFor("alice", b"pw")
    assert key == cache.keyFor("alice", b"pw")
    assert key != cache.keyFor("alice", b"pW")
    assert key != cache.keyFor("alicE", b"pw")
    assert key != other.keyFor("alice", b"pw")


def test_key_parts_cannot_be_shifted_into_each_other():
    _, cache = makeCache()
    assert cache.keyFor("ab", "c") != cache.keyFor("a", "bc")
    assert cache.keyFor("a\x00", "b") != cache.keyFor("a", "\x00b")


def test_key_refuses_other_types():
    _, cache = makeCache()
    with pytest.raises(TypeError):
        cache.keyFor(123)


def test_positive_hit_until_ttl():
    clock, cache = makeCache(ttl=60, negative_ttl=5)
    record = UserRecord("alice")
    key = cache.keyFor("alice", b"pw")
    assert cache.get(key) is MISS
    cache.putPositive(key, record)
    clock.advance(59)
    assert cache.get(key) == record
    clock.advance(1)
    assert cache.get(key) is MISS
    assert len(cache) == 0


def test_negative_is_short_lived():
    clock, cache = makeCache(ttl=60, negative_ttl=5)
    key = cache.keyFor("alice", b"wrong")
    cache.putNegative(key)
    assert cache.get(key) is NEGATIVE
    clock.advance(5)
    assert cache.get(key) is MISS


def test_zero_ttls_disable_caching():
    _, cache = makeCache(ttl=0, negative_ttl=0)
    key = cache.keyFor("x")
    cache.putPositive(key, UserRecord("x"))
    cache.putNegative(cache.keyFor("y"))
    assert len(cache) == 0
    assert cache.get(key) is MISS


def test_bounded_least_recently_used_goes_first():
    _, cache = makeCache(max_entries=2)
    first, second, third = (cache.keyFor(name) for name in "abc")
    cache.putPositive(first, 1)
    cache.putPositive(second, 2)
    assert cache.get(first) == 1  # first is now the most recently used
    cache.putPositive(third, 3)
    assert len(cache) == 2
    assert cache.get(second) is MISS
    assert cache.get(first) == 1
    assert cache.get(third) == 3


def test_many_entries_never_exceed_the_bound():
    _, cache = makeCache(max_entries=10)
    for number in range(1000):
        cache.putNegative(cache.keyFor(str(number)))
    assert len(cache) == 10


def test_discard_and_clear():
    _, cache = makeCache()
    key = cache.keyFor("a")
    cache.putPositive(key, 1)
    cache.discard(key)
    assert cache.get(key) is MISS
    cache.discard(key)  # idempotent
    cache.putPositive(key, 1)
    cache.clear()
    assert len(cache) == 0


def test_bad_arguments():
    clock = Clock()
    with pytest.raises(ValueError):
        AuthCache(clock, ttl=-1)
    with pytest.raises(ValueError):
        AuthCache(clock, max_entries=0)


def test_injected_key_gives_stable_keys():
    clock = Clock()
    one = AuthCache(clock, key=b"k" * 32)
    two = AuthCache(clock, key=b"k" * 32)
    assert one.keyFor("a", b"b") == two.keyFor("a", b"b")


def test_defaults_fit_polling_clients():
    _, cache = makeCache()
    assert (cache.ttl, cache.negative_ttl, cache.max_entries) == (3600.0, 5.0, 50000)


def test_hits_never_extend_an_entry():
    """A client polling more often than the TTL is still verified once per TTL."""
    clock, cache = makeCache(ttl=3600, negative_ttl=5)
    key = cache.keyFor("alice", b"pw")
    cache.putPositive(key, UserRecord("alice"))
    for _ in range(35):
        clock.advance(100)
        assert cache.get(key) == UserRecord("alice")
    clock.advance(100)
    assert cache.get(key) is MISS


def test_refusal_replaces_a_positive_entry_for_the_same_key():
    clock, cache = makeCache(ttl=3600, negative_ttl=5)
    key = cache.keyFor("alice", b"pw")
    cache.putPositive(key, UserRecord("alice"))
    cache.putNegative(key)
    assert cache.get(key) is NEGATIVE
    clock.advance(5)
    assert cache.get(key) is MISS          # not the positive one back


def test_bound_holds_with_mixed_lifetimes_and_the_recently_used_survive():
    clock, cache = makeCache(ttl=3600, negative_ttl=5, max_entries=100)
    keep = cache.keyFor("keep")
    cache.putPositive(keep, 1)
    for number in range(1000):
        if number % 10 == 0:
            assert cache.get(keep) == 1
        cache.putPositive(cache.keyFor("p", str(number)), number)
        cache.putNegative(cache.keyFor("n", str(number)))
        clock.advance(1)
        assert len(cache) <= 100
    assert cache.get(keep) == 1
