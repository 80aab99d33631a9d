"""Checkers do the crypto; the credential source is swappable (conch model)."""

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.auth.cache import AuthCache
from securepop.auth.checkers import PasswordChecker, SecretChecker, VerifiedChecker
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.interfaces import ICredentialSource, ISecretCredentials, PLAINTEXT


@implementer(ICredentialSource)
class MemorySource:
    """An in-memory source double; counts calls so caching can be seen."""

    name = "memory"

    def __init__(self, users, secrets=None, down=False):
        self.users, self.secrets, self.down = users, secrets or {}, down
        self.calls = 0

    def capabilities(self):
        return frozenset({PLAINTEXT})

    def verifyPassword(self, username, password):
        self.calls += 1
        if self.down:
            return defer.fail(SourceUnavailable("down"))
        if self.users.get(username) == password:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("bad-password"))

    def lookupSecret(self, username, kind):
        if username not in self.secrets:
            return defer.fail(UnauthorizedLogin("no-such-user"))
        return defer.succeed((UserRecord(username), self.secrets[username]))

    def lookupUser(self, username):
        if username in self.users:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("no-such-user"))


@implementer(ISecretCredentials)
class Proof:
    kind = "cleartext-secret"

    def __init__(self, username, answer):
        self.username, self.answer = username, answer

    def checkSecret(self, secret):
        return secret == self.answer


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_interfaces():
    source = MemorySource({})
    verifyObject(ICredentialSource, source)
    for checker in (PasswordChecker(source), SecretChecker(source), VerifiedChecker(source)):
        verifyObject(ICredentialsChecker, checker)


def test_password_checker():
    checker = PasswordChecker(MemorySource({"alice": b"pw"}))
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username == "alice"
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"no"))).check(
        UnauthorizedLogin)
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b""))).check(
        UnauthorizedLogin)


def test_cache_positive_negative_and_outage():
    clock = Clock()
    source = MemorySource({"alice": b"pw"})
    checker = PasswordChecker(source, AuthCache(clock, ttl=60, negative_ttl=5))
    for _ in range(3):
        assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
    assert source.calls == 1
    for _ in range(3):
        outcome(checker.requestAvatarId(UsernamePassword("alice", b"bad")))
    assert source.calls == 2
    clock.advance(61)
    outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw")))
    assert source.calls == 3
    # An outage is never cached as a refusal.
    source.down = True
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"x"))).check(
        SourceUnavailable)
    source.down = False
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"x"))).check(
        UnauthorizedLogin)


def test_secret_checker():
    checker = SecretChecker(MemorySource({}, {"alice": b"s3"}))
    assert outcome(checker.requestAvatarId(Proof("alice", b"s3"))).username == "alice"
    assert outcome(checker.requestAvatarId(Proof("alice", b"xx"))).check(UnauthorizedLogin)
    assert outcome(checker.requestAvatarId(Proof("bob", b"s3"))).check(UnauthorizedLogin)


# -- the auth cache over the users file -------------------------------------------

from securepop.auth import userfile  # noqa: E402
from securepop.schemes import HashParameters  # noqa: E402
from securepop.auth.cache import MISS  # noqa: E402

CHEAP = HashParameters(memory_kib=64, time_cost=1, parallelism=1)


class CountingRun:
    """run_blocking inline, counting the verifications (cold logins)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, f, *args):
        if f is not userfile.rehash_entry:
            self.calls += 1
        return defer.maybeDeferred(f, *args)


@pytest.fixture
def filecache(tmp_path):
    path = tmp_path / "users"
    for name in ("alice", "bob"):
        userfile.set_password(path, name, f"pw-{name}", set(), create=True, params=CHEAP)
    clock, run = Clock(), CountingRun()
    source = userfile.FileCredentialSource(path, run, params=CHEAP)
    checker = PasswordChecker(source, AuthCache(clock, ttl=3600, negative_ttl=5,
                                                max_entries=100))

    def login(name, password):
        return outcome(checker.requestAvatarId(UsernamePassword(name, password)))

    return path, clock, run, checker, login


def test_cache_serves_polling_logins_for_the_ttl(filecache):
    path, clock, run, checker, login = filecache
    assert login("alice", b"pw-alice").username == "alice"
    for _ in range(5):                # a client polling every 5 minutes: 25 minutes
        clock.advance(300)
        assert login("alice", b"pw-alice").username == "alice"
    assert run.calls == 1             # from the cache


def test_users_file_entries_are_renewed_without_hashing_while_the_entry_stands(filecache):
    """The key holds the entry's digest: a due hit is renewed with no argon2 run."""
    path, clock, run, checker, login = filecache
    assert login("alice", b"pw-alice").username == "alice"
    for _ in range(36):               # every 5 minutes for 3 hours: three TTLs
        clock.advance(300)
        assert login("alice", b"pw-alice").username == "alice"
    assert run.calls == 1             # the first login's verification, and no other
    # A wrong password is no hit: verified, refused, and alice's entry stays.
    assert login("alice", b"wrong").check(UnauthorizedLogin)
    assert run.calls == 2
    # The entry changes (`user passwd`): the old password is verified again and refused.
    userfile.set_password(path, "alice", "pw-new", set(), create=False, params=CHEAP)
    assert login("alice", b"pw-alice").check(UnauthorizedLogin)
    assert run.calls == 3


def test_users_file_entry_not_polled_in_its_second_half_expires(filecache):
    path, clock, run, checker, login = filecache
    assert login("alice", b"pw-alice").username == "alice"
    clock.advance(1700)               # before the renewal window
    assert login("alice", b"pw-alice").username == "alice"
    clock.advance(1900)               # 3600 s after the verification: expired
    assert login("alice", b"pw-alice").username == "alice"
    assert run.calls == 2             # a hit never extends an entry outside the window


class HeldSource(MemorySource):
    """A source whose verifications wait until the test answers them."""

    def __init__(self, users):
        super().__init__(users)
        self.pending = []

    def verifyPassword(self, username, password):
        self.calls += 1
        d = defer.Deferred()
        self.pending.append((d, username, password))
        return d

    def answer_all(self):
        while self.pending:
            d, username, password = self.pending.pop(0)
            if self.users.get(username) == password:
                d.callback(UserRecord(username))
            else:
                d.errback(UnauthorizedLogin("bad-password"))


def test_polling_client_never_meets_a_cold_login():
    """In the second half of the TTL a hit renews the entry in the background."""
    clock = Clock()
    source = HeldSource({"alice": b"pw"})
    checker = PasswordChecker(source, AuthCache(clock, ttl=3600, negative_ttl=5))
    first = checker.requestAvatarId(UsernamePassword("alice", b"pw"))
    source.answer_all()
    assert outcome(first).username == "alice"
    for _ in range(36):               # every 5 minutes for 3 hours
        clock.advance(300)
        # Answered at once from the cache, even while a renewal is pending.
        assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
        source.answer_all()
    assert 1 + 36 // 7 <= source.calls <= 1 + 36 // 6 + 1   # one renewal per ~30 minutes


def test_renewal_drops_an_entry_whose_password_changed():
    clock = Clock()
    directory = MemorySource({"alice": b"old"})
    checker = PasswordChecker(directory, AuthCache(clock, ttl=3600, negative_ttl=5))
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).username
    directory.users["alice"] = b"new"
    clock.advance(2700)               # due: served, and checked again behind it
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).username
    clock.advance(1)                  # the renewal was refused: the old password is out
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).check(
        UnauthorizedLogin)


def test_renewal_during_an_outage_keeps_the_entry_until_its_ttl():
    clock = Clock()
    directory = MemorySource({"alice": b"pw"})
    checker = PasswordChecker(directory, AuthCache(clock, ttl=3600, negative_ttl=5))
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
    directory.down = True
    clock.advance(2700)
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
    clock.advance(600)                # an outage is no answer: still served
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
    clock.advance(300)                # the TTL is over: no cached answer in an outage
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).check(
        SourceUnavailable)


def test_passwd_invalidates_only_that_user(filecache):
    path, clock, run, checker, login = filecache
    login("alice", b"pw-alice"), login("bob", b"pw-bob")
    assert run.calls == 2
    userfile.set_password(path, "alice", "new-alice", set(), create=False, params=CHEAP)
    assert login("alice", b"pw-alice").check(UnauthorizedLogin)      # at once
    assert login("alice", b"new-alice").username == "alice"
    assert login("bob", b"pw-bob").username == "bob"                  # still cached
    assert run.calls == 4
    assert login("alice", b"new-alice").username == "alice"
    assert run.calls == 4


def test_add_of_another_user_flushes_nobody_and_del_refuses_at_once(filecache):
    path, clock, run, checker, login = filecache
    login("alice", b"pw-alice"), login("bob", b"pw-bob")
    userfile.set_password(path, "carol", "pw-carol", set(), create=True, params=CHEAP)
    login("alice", b"pw-alice"), login("bob", b"pw-bob")
    assert run.calls == 2
    userfile.delete_user(path, "bob")
    assert login("bob", b"pw-bob").check(UnauthorizedLogin)
    assert login("alice", b"pw-alice").username == "alice"
    assert run.calls == 3


def test_refusal_before_passwd_does_not_hide_the_new_password(filecache):
    path, clock, run, checker, login = filecache
    assert login("alice", b"new-alice").check(UnauthorizedLogin)      # cached refusal
    assert login("alice", b"new-alice").check(UnauthorizedLogin)
    assert run.calls == 1
    userfile.set_password(path, "alice", "new-alice", set(), create=False, params=CHEAP)
    assert login("alice", b"new-alice").username == "alice"


def test_failed_verification_never_extends_a_positive_entry(filecache):
    path, clock, run, checker, login = filecache
    assert login("alice", b"pw-alice").username == "alice"
    clock.advance(3000)
    for _ in range(3):
        assert login("alice", b"guess").check(UnauthorizedLogin)
        clock.advance(10)
    clock.advance(570)                                                # 3600 s after
    calls = run.calls
    assert login("alice", b"pw-alice").username == "alice"
    assert run.calls == calls + 1                                     # verified again


def test_source_outage_after_expiry_is_not_served_from_the_cache():
    clock = Clock()
    source = MemorySource({"alice": b"pw"})
    cache = AuthCache(clock, ttl=3600, negative_ttl=5)
    checker = PasswordChecker(source, cache)
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).username
    clock.advance(3600)
    source.down = True
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"pw"))).check(
        SourceUnavailable)
    assert cache.get(cache.keyFor("alice", b"pw", "")) is MISS


def test_cache_key_holds_no_password(filecache):
    path, clock, run, checker, login = filecache
    login("alice", b"pw-alice")
    for key, (_, value) in checker.cache._entries.items():
        assert b"pw-alice" not in key and "pw-alice" not in repr(value)


def test_cache_is_bounded_under_many_users(tmp_path):
    clock = Clock()
    source = MemorySource({f"u{n}": b"pw" for n in range(500)})
    checker = PasswordChecker(source, AuthCache(clock, ttl=3600, negative_ttl=5,
                                                max_entries=50))
    for n in range(500):
        outcome(checker.requestAvatarId(UsernamePassword(f"u{n}", b"pw")))
        outcome(checker.requestAvatarId(UsernamePassword(f"u{n}", b"bad")))
    assert len(checker.cache) == 50
    calls = source.calls
    outcome(checker.requestAvatarId(UsernamePassword("u499", b"pw")))     # recent: hit
    outcome(checker.requestAvatarId(UsernamePassword("u0", b"pw")))       # evicted: cold
    assert source.calls == calls + 1


def test_directory_password_change_is_honoured_at_the_latest_after_the_ttl():
    """A source without userStamp (LDAP, AD) is trusted for the TTL, no longer."""
    clock = Clock()
    directory = MemorySource({"alice": b"old"})
    checker = PasswordChecker(directory, AuthCache(clock, ttl=3600, negative_ttl=5))
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).username
    directory.users["alice"] = b"new"                 # changed in the directory
    clock.advance(3599)
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).username
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"new"))).username
    clock.advance(1)
    assert outcome(checker.requestAvatarId(UsernamePassword("alice", b"old"))).check(
        UnauthorizedLogin)
    # cache_ttl = 0 (no cache): at once.
    directory.users["alice"] = b"newer"
    uncached = PasswordChecker(directory, None)
    assert outcome(uncached.requestAvatarId(UsernamePassword("alice", b"new"))).check(
        UnauthorizedLogin)
