"""
The shared level of the auth cache (L{securepop.auth.sharedcache}): one
verification serves every worker; nothing written to the store by someone
without the server secret makes a login succeed.
"""

import json

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from securepop.auth.cache import MISS, NEGATIVE, AuthCache
from securepop.auth.checkers import PasswordChecker
from securepop.auth.records import UserRecord
from securepop.auth.sharedcache import MAGIC, SharedAuthCache
from securepop.errors import StateUnavailable
from securepop.serversecret import ServerSecret
from securepop.state.memory import MemoryStateStore
from tests.unit.test_auth_checkers import MemorySource


def now(d):
    out = []
    d.addBoth(out.append)
    return out[0]


class Node:
    """One worker: its own local cache, the shared store and secret."""

    def __init__(self, clock, source, store, secret):
        self.shared = SharedAuthCache(store, secret, clock, ttl=3600.0, negative_ttl=5.0)
        self.checker = PasswordChecker(source, AuthCache(clock, ttl=3600.0, negative_ttl=5.0),
                                       self.shared)

    def login(self, password=b"right", user="alice"):
        return now(self.checker.requestAvatarId(UsernamePassword(user, password)))


@pytest.fixture
def two():
    clock = Clock()
    clock.advance(1_700_000_000)
    source = MemorySource({"alice": b"right"})
    store = MemoryStateStore(clock)
    secret = ServerSecret(b"s" * 32)
    return clock, source, store, Node(clock, source, store, secret), \
        Node(clock, source, store, secret)


def test_one_verification_serves_every_worker(two):
    clock, source, store, a, b = two
    assert a.login() == UserRecord("alice")
    assert b.login() == UserRecord("alice")
    assert source.calls == 1                       # b trusted what a verified
    assert b.login() == UserRecord("alice") and source.calls == 1   # b's own level now


def test_another_secret_shares_nothing(two):
    clock, source, store, a, _ = two
    other = Node(clock, source, store, ServerSecret(b"t" * 32))
    a.login()
    other.login()
    assert source.calls == 2


def test_a_refusal_is_shared_for_its_short_ttl(two):
    clock, source, store, a, b = two
    assert now(a.checker.requestAvatarId(UsernamePassword("alice", b"wrong"))).check(
        UnauthorizedLogin)
    refused = b.login(b"wrong")
    assert refused.check(UnauthorizedLogin) and refused.getErrorMessage() == \
        "bad-password-cached"
    assert source.calls == 1
    clock.advance(5)
    assert Node(clock, source, store, ServerSecret(b"s" * 32)).login(b"wrong").check(
        UnauthorizedLogin)
    assert source.calls == 2                       # expired: the source answers again


def test_the_key_and_value_hold_no_password(two):
    clock, source, store, a, _ = two
    a.login(b"right")
    [(key, (_, value))] = store._cache.items()
    assert len(key) == 64 and int(key, 16) >= 0
    assert b"right" not in value and b"right" not in key.encode()


def test_an_entry_keeps_the_lifetime_it_has_left(two):
    clock, source, store, a, b = two
    a.login()
    clock.advance(3000)
    b.login()                                      # 600 s left when b takes it
    clock.advance(601)
    assert source.calls == 1
    b.login()
    assert source.calls == 2                       # b's copy ended with the shared one


def forge(store, key, payload, mac=b"\0" * 32):
    store._cache[key] = (store._clock.seconds() + 3600, MAGIC + mac + payload)


@pytest.mark.parametrize("how", ["bad-mac", "garbage", "moved", "extended"])
def test_a_forged_value_is_a_miss(two, how):
    """Someone who can write to the store but has no secret cannot log anyone in."""
    clock, source, store, a, b = two
    key = b.shared.keyFor("alice", b"guess", "")
    if how == "bad-mac":
        forge(store, key, json.dumps({"v": "+", "exp": clock.seconds() + 60,
                                      "user": "alice"}).encode())
    elif how == "garbage":
        store._cache[key] = (clock.seconds() + 60, b"not a record")
    elif how == "moved":                           # a genuine value under another key
        a.login(b"right")
        genuine = next(v for k, (_, v) in store._cache.items() if k != key)
        store._cache[key] = (clock.seconds() + 60, genuine)
    else:                                          # a captured value replayed after its time
        a.login(b"right")
        genuine_key = a.shared.keyFor("alice", b"right", "")
        captured = now(store.cache_get(genuine_key))
        clock.advance(3601)
        store._cache[genuine_key] = (clock.seconds() + 3600, captured)
        assert now(b.shared.get(genuine_key)) == (MISS, None)
        assert b.login(b"right") == UserRecord("alice")
        assert source.calls == 2                   # verified again, not trusted
        return
    calls = source.calls
    refused = b.login(b"guess")
    assert refused.check(UnauthorizedLogin)        # the source decided, not the store
    assert source.calls == calls + 1


def test_an_outage_is_a_miss_never_a_wait(two):
    clock, source, store, a, b = two
    store.cache_get = lambda key: defer.fail(StateUnavailable("no answer"))
    store.cache_put = lambda key, value, ttl: defer.fail(StateUnavailable("no answer"))
    assert a.login() == UserRecord("alice")        # the source answered at once
    assert source.calls == 1


def test_a_warm_login_costs_one_store_read(two):
    clock, source, store, a, b = two
    a.login()
    calls = []
    real_get = store.cache_get
    store.cache_get = lambda key: calls.append(key) or real_get(key)
    store.cache_put = lambda *args: calls.append(args) or defer.succeed(None)
    b.login()
    assert len(calls) == 1                         # one get, no write
    b.login()
    assert len(calls) == 1                         # b's own level: no round trip


def test_a_record_that_does_not_serialise_stays_local(two):
    clock, source, store, a, _ = two
    a.shared.putPositive("k" * 64, UserRecord("alice", info={"x": object()}))
    assert store._cache == {}


def test_get_answers_negative_with_its_time_left(two):
    clock, source, store, a, _ = two
    a.shared.putNegative("k" * 64)
    assert now(a.shared.get("k" * 64)) == (NEGATIVE, 5.0)
