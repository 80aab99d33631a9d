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

from securepop.interfaces import ISecretCredentials, IVerifiedCredentials


@implementer(ICredentialsChecker)
class PasswordChecker:
    """USER/PASS, PLAIN, LOGIN: the source verifies the password."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, source, cache=None):
        self.source = source
        self.cache = cache

    def requestAvatarId(self, credentials):
        username, password = credentials.username, credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        if not username or not password:
            return defer.fail(UnauthorizedLogin("empty"))
        if self.cache is not None:
            hit = self.cache.get(username, password)
            if hit is not None:
                return defer.succeed(hit)
        d = defer.maybeDeferred(self.source.verifyPassword, username, password)
        if self.cache is not None:
            d.addCallback(self._remember, username, password)
        return d

    def _remember(self, record, username, password):
        self.cache.put(username, password, record)
        return record


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
