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
