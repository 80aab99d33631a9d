"""
OAuth 2.0 bearer tokens (JWT access tokens, RFC 9068) for OAUTHBEARER and
XOAUTH2: the validator and the twisted.cred checker.

A token is accepted when it is signed by one of the issuer's keys with an
algorithm that key allows (never C{none}, never an HMAC), names the
configured issuer and audience, is inside its C{nbf}/C{exp} window (and
not issued in the future) give or take C{leeway}, grants the required
scope, and names a user (C{username_claim}, through the server's one
user-name rule) equal to the SASL authorization identity when the client
gave one.  The credential source then decides as for every mechanism: the
user must exist and be enabled, so a disabled account stops working before
its token expires.
"""

from __future__ import annotations

import math
import weakref

import jwt
from jwt.exceptions import (
    DecodeError, ExpiredSignatureError, ImmatureSignatureError, InvalidAlgorithmError,
    InvalidAudienceError, InvalidIssuerError, InvalidSignatureError, InvalidTokenError,
    MissingRequiredClaimError,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from securepop.auth.introspection import build_introspector
from securepop.auth.jwks import ALGORITHMS, FileKeys, JWKSError, RemoteKeys, https_fetcher
from securepop.auth.oauth2_settings import BEARER_MECHANISMS
from securepop.errors import ConfigError
from securepop.interfaces import IBearerCredentials
from securepop.tls.checks import check_key_file_mode

#: A JWT's three base64url parts; longer tokens are refused before parsing.
MAX_TOKEN = 12 * 1024

_REASONS = (
    (ExpiredSignatureError, "token-expired"),
    (ImmatureSignatureError, "token-not-yet-valid"),
    (InvalidAudienceError, "token-wrong-audience"),
    (InvalidIssuerError, "token-wrong-issuer"),
    (InvalidSignatureError, "token-bad-signature"),
    (InvalidAlgorithmError, "token-bad-algorithm"),
    (MissingRequiredClaimError, "token-missing-claim"),
    (DecodeError, "token-malformed"),
)


class TokenRefused(UnauthorizedLogin):
    """A bearer token that does not prove who the client is; the text is a short reason."""


def _reason(error):
    for cls, reason in _REASONS:
        if isinstance(error, cls):
            return reason
    return "token-invalid"


def _scopes(claims):
    granted = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(v for v in value if isinstance(v, str))
    return granted


def _number(claims, name, required):
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRefused("token-missing-claim")
        return None
    # JSON as Python reads it allows NaN and Infinity: an exp of NaN would
    # never compare as expired.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise TokenRefused("token-malformed")
    return value


class BearerValidator:
    """
    Checks one token against C{[auth.oauth2]}.

    @param settings: the L{securepop.auth.oauth2_settings.OAuth2Settings}.
    @param keys: L{FileKeys} or L{RemoteKeys} (C{lookup(kid, alg)}).
    @param clock: IReactorTime: the time C{exp}, C{nbf} and C{iat} are
        compared with.
    @param normalise: the server's user-name rule (str -> str, ValueError).
    """

    def __init__(self, settings, keys, clock, normalise, introspector=None):
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self.normalise = normalise
        self.introspector = introspector

    def validate(self, token):
        """
        @param token: the bearer token (str).
        @return: Deferred firing with the normalised user name, or failing
            with L{TokenRefused}.
        """
        if not token or len(token) > MAX_TOKEN or not token.isascii():
            return defer.fail(TokenRefused("token-malformed"))
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            header = None
        if self.keys is None or (header is None and self.introspector is not None):
            return self._introspect(token)
        if header is None:
            return defer.fail(TokenRefused("token-malformed"))
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            return defer.fail(TokenRefused("token-malformed"))
        if alg not in ALGORITHMS:
            # none, HS256 with the public key as secret, anything unknown.
            return defer.fail(TokenRefused("token-bad-algorithm"))
        d = self.keys.lookup(kid, alg)
        d.addCallback(self._verify, token, alg)
        return d

    def _verify(self, key, token, alg):
        if key is None:
            # An unknown key id, or an algorithm this key does not allow
            # (ES256 on an RSA key): no key to try.
            raise TokenRefused("token-unknown-key")
        s = self.settings
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=s.audience, issuer=s.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["iss", "aud", "exp"]})
        except InvalidTokenError as e:
            raise TokenRefused(_reason(e)) from None
        return self._check(claims)

    def _introspect(self, token):
        """An opaque token (or no keys configured): ask the issuer (RFC 7662)."""
        if self.introspector is None:
            return defer.fail(TokenRefused("token-malformed"))

        def answered(claims):
            if claims.get("active") is not True:
                raise TokenRefused("token-inactive")
            s = self.settings
            if "iss" in claims and claims["iss"] != s.issuer:
                raise TokenRefused("token-wrong-issuer")
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if s.audience not in audiences:
                raise TokenRefused("token-wrong-audience")
            if s.username_claim not in claims and "username" in claims:
                claims = dict(claims, **{s.username_claim: claims["username"]})
            return self._check(claims, exp_required=False)

        return self.introspector.introspect(token).addCallback(answered)

    def _check(self, claims, exp_required=True):
        """The times, the scope and the user, whatever said the token is genuine."""
        s = self.settings
        now, leeway = self.clock.seconds(), s.leeway
        exp = _number(claims, "exp", exp_required)
        nbf, iat = _number(claims, "nbf", False), _number(claims, "iat", False)
        if exp is not None and exp <= now - leeway:
            raise TokenRefused("token-expired")
        if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
            raise TokenRefused("token-not-yet-valid")
        if s.required_scope and s.required_scope not in _scopes(claims):
            raise TokenRefused("token-missing-scope")
        raw = claims.get(s.username_claim)
        if not isinstance(raw, str) or not raw:
            raise TokenRefused("token-no-username")
        try:
            return self.normalise(raw)
        except ValueError:
            raise TokenRefused("token-unacceptable-username") from None


@implementer(ICredentialsChecker)
class BearerChecker:
    """OAUTHBEARER and XOAUTH2: a valid token, then may the user log in?"""

    credentialInterfaces = (IBearerCredentials,)

    def __init__(self, validator, source):
        self.validator = validator
        self.source = source

    def requestAvatarId(self, credentials):
        d = self.validator.validate(credentials.token)

        def valid(username):
            if credentials.username is not None and credentials.username != username:
                raise TokenRefused("token-for-another-user")
            return self.source.lookupUser(username)

        return d.addCallback(valid)


def build_validator(settings, reactor, normalise):
    """
    The validator C{settings} ask for, or None when no bearer mechanism is
    enabled.  A remote key set starts its first fetch now.

    @raise ConfigError: the JWKS file is unusable (naming file, key, reason).
    """
    auth = settings.auth
    if not any(m in BEARER_MECHANISMS for m in auth.mechanisms):
        return None
    o = auth.oauth2
    path = settings.path or "(defaults)"

    def resolve(name):
        return str(settings.resolve(name))

    keys = None
    if o.jwks_file:
        try:
            keys = FileKeys(resolve(o.jwks_file))
        except JWKSError as e:
            raise ConfigError(path, "auth.oauth2.jwks_file", str(e)) from None
    elif o.jwks_url:
        try:
            fetch = https_fetcher(reactor, o.jwks_url, resolve(o.jwks_ca_file)
                                  if o.jwks_ca_file else "")
        except (OSError, ValueError) as e:
            raise ConfigError(path, "auth.oauth2.jwks_ca_file", str(e)) from None
        keys = _REMOTE.get((o.jwks_url, o.jwks_ca_file, id(reactor)))
        if keys is None:
            keys = RemoteKeys(fetch, reactor, o.jwks_url)
            _REMOTE[(o.jwks_url, o.jwks_ca_file, id(reactor))] = keys
            keys.start()
        keys.refresh, keys.min_refresh, keys.wait = \
            o.jwks_refresh, o.jwks_min_refresh, o.jwks_wait
    introspector = None
    if o.introspection_url:
        secret = resolve(o.introspection_secret_file)
        check_key_file_mode(secret, "auth.oauth2.introspection_secret_file",
                            "the introspection secret file")
        try:
            introspector = build_introspector(o, reactor, resolve)
        except (OSError, ValueError) as e:
            raise ConfigError(path, "auth.oauth2.introspection_secret_file", str(e)) from None
    return BearerValidator(o, keys, reactor, normalise, introspector)


#: The remote key sets in use, by (URL, CA file, reactor): a reload (SIGHUP)
#: keeps the keys already fetched, so logins go on while the issuer is down.
_REMOTE = weakref.WeakValueDictionary()
