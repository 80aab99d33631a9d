"""
twisted.cred checkers: the checker does the crypto, the source is swappable.

As in C{twisted.conch.checkers}, a checker never knows where secrets live:
it asks an L{ICredentialSource} for the secret (or to verify a password)
and lets the credentials prove themselves against it.  Every avatar ID is a
L{securepop.auth.records.UserRecord}.
"""

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from securepop.auth.cache import MISS, NEGATIVE
from securepop.auth.verifyqueue import ALIVE, PURPOSE
from securepop.interfaces import ISecretCredentials, IVerifiedCredentials


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    USER/PASS, PLAIN, LOGIN: the source verifies the password.

    With a L{securepop.auth.cache.AuthCache}, a polling client's repeated
    login skips the hash (or the directory) until the cache's TTL.  The key
    is an HMAC of the user name, the password and the source's
    C{userStamp(username)} when it has one (the users file: a digest of the
    user's entry), so C{securepop user passwd}/C{del} takes effect at the
    next login while other users' entries stay.  A source without it (LDAP,
    AD) is trusted for the TTL.  Only the source's own answer is cached: a
    hit never extends an entry by itself, and a refusal replaces nothing but
    the key it was for.

    A hit on an entry due for renewal (L{AuthCache.due}: the second half
    of its TTL) is answered from the cache at once while the source checks
    the same credentials again in the background: a success renews the
    entry, a refusal drops it.  A client polling every few minutes then
    never meets a cold login, and a password changed in a directory still
    stops working at most one TTL after the change.  A source with user
    stamps is not asked again: the stamp in the key proves its answer
    unchanged (L{_reconfirm}).

    With a L{securepop.auth.sharedcache.SharedAuthCache} (C{shared}: the
    state store of several workers or nodes), a miss here asks the shared
    level next (one round trip) before the source, and what the source
    answers is shared: a client polling through any worker is verified
    once per TTL.  An entry taken from it keeps the lifetime it has left.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, source, cache=None, shared=None):
        self.source = source
        self.cache = cache
        self.shared = shared if cache is not None else None
        self._renewing = set()      # keys with a background check in flight

    def requestAvatarId(self, credentials):
        username, password = credentials.username, credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        if not username or not password:
            return defer.fail(UnauthorizedLogin("empty"))
        if self.cache is None:
            return defer.maybeDeferred(self.source.verifyPassword, username, password)
        # The user's stamp is part of the key, so a changed or deleted entry
        # invalidates what was cached for it (and only for it).
        userStamp = getattr(self.source, "userStamp", None)
        stamp = userStamp(username) if userStamp is not None else ""
        key = self.cache.keyFor(username, password, stamp)
        hit = self.cache.get(key)
        if hit is NEGATIVE:
            return defer.fail(UnauthorizedLogin("bad-password-cached"))
        if hit is not MISS:
            if self.cache.due(key) and key not in self._renewing:
                if stamp:
                    self._reconfirm(key, hit, username, password, stamp)
                else:
                    self._renew(key, username, password, stamp)
            return defer.succeed(hit)
        if self.shared is None:
            return self._verify(key, None, username, password)
        shared_key = self.shared.keyFor(username, password, stamp)

        def found(answer):
            outcome, left = answer
            if outcome is MISS:
                return self._verify(key, shared_key, username, password)
            if outcome is NEGATIVE:
                self.cache.putNegative(key, left)
                raise UnauthorizedLogin("bad-password-cached")
            self.cache.putPositive(key, outcome, left)
            return outcome

        return self.shared.get(shared_key).addCallback(found)

    def _verify(self, key, shared_key, username, password):
        """Ask the source; remember its answer here and, when shared, there."""
        d = defer.maybeDeferred(self.source.verifyPassword, username, password)

        def remember(record):
            self.cache.putPositive(key, record)
            if shared_key is not None:
                self.shared.putPositive(shared_key, record)
            return record

        def refused(failure):
            failure.trap(UnauthorizedLogin)
            self.cache.putNegative(key)
            if shared_key is not None:
                self.shared.putNegative(shared_key)
            return failure

        return d.addCallbacks(remember, refused)

    def _reconfirm(self, key, record, username, password, stamp):
        """
        Renew a due entry of a source with user stamps (the users file)
        without asking it: the key holds the digest of the very entry the
        password was verified against, and that entry is still the user's
        (else this key would not have been hit).  Verifying the same
        password against the same hash again can only give the same answer,
        so a polling user of the users file costs one argon2 run per entry
        change, not one per renewal.
        """
        self.cache.putPositive(key, record)
        if self.shared is not None:
            self.shared.putPositive(self.shared.keyFor(username, password, stamp), record)

    def _renew(self, key, username, password, stamp=""):
        """Verify again in the background; the login that asked does not wait."""
        self._renewing.add(key)
        # It runs even if that client hangs up meanwhile, and is no login's wait.
        alive, purpose = ALIVE.set(None), PURPOSE.set("renewal")
        try:
            d = defer.maybeDeferred(self.source.verifyPassword, username, password)
        finally:
            ALIVE.reset(alive)
            PURPOSE.reset(purpose)

        shared_key = self.shared.keyFor(username, password, stamp) \
            if self.shared is not None else None

        def renewed(record):
            self.cache.putPositive(key, record)
            if shared_key is not None:
                self.shared.putPositive(shared_key, record)

        def refused(failure):
            if failure.check(UnauthorizedLogin):
                self.cache.discard(key)             # the answer changed: ask again
                if shared_key is not None:
                    self.shared.discard(shared_key)
            # An outage or a full queue is no answer: the entry stays until its TTL.

        d.addCallbacks(renewed, refused)
        d.addBoth(lambda _: self._renewing.discard(key))


@implementer(ICredentialsChecker)
class SecretChecker:
    """APOP, CRAM-MD5, NTLM: the credentials verify against a stored secret."""

    credentialInterfaces = (ISecretCredentials,)

    def __init__(self, source):
        self.source = source

    def requestAvatarId(self, credentials):
        d = defer.maybeDeferred(self.source.lookupSecret, credentials.username,
                                credentials.kind)

        def check(result):
            record, secret = result
            if credentials.checkSecret(secret):
                return record
            raise UnauthorizedLogin("bad-credentials")

        return d.addCallback(check)


@implementer(ICredentialsChecker)
class VerifiedChecker:
    """SCRAM and delegated NTLM: proven in the exchange; may the user log in?"""

    credentialInterfaces = (IVerifiedCredentials,)

    def __init__(self, source):
        self.source = source

    def requestAvatarId(self, credentials):
        return defer.maybeDeferred(self.source.lookupUser, credentials.username)
