"""
OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's and Microsoft's form): an
OAuth 2.0 bearer token in one client response.

OAUTHBEARER: C{gs2-header ^A host=..^A port=..^A auth=Bearer TOKEN ^A^A},
the gs2 header C{n,,} or C{n,a=USER,} (channel binding, C{p=}, is not
defined for it and is refused).  XOAUTH2: C{user=USER ^A auth=Bearer TOKEN
^A^A}.  The exchange only parses: the checker
(L{securepop.auth.oauth2.BearerChecker}) validates the token.  A token is a
password: the registry offers these only under TLS, whatever the cleartext
options say.  When the token is refused the server sends the RFC 7628
error (C{failureChallenge}) as a continuation, waits for the client's
dummy response, then answers C{-ERR [AUTH]}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import IBearerCredentials, ISASLExchange, ISASLMechanism
from securepop.sasl.base import OneResponseExchange
from securepop.sasl.credentials import normalise

#: The largest client response these mechanisms accept (decoded).
MAX_RESPONSE = 12 * 1024

_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_KEY = re.compile(r"[A-Za-z]+")


@implementer(IBearerCredentials)
@dataclass(frozen=True)
class BearerCredentials:
    username: str | None
    token: str = ""
    mechanism: str = ""
    failureChallenge: bytes = b""

    def __repr__(self):
        return f"BearerCredentials({self.username!r}, {self.mechanism}, <token>)"


def failure_challenge(settings):
    """The RFC 7628 error JSON for C{[auth.oauth2]}."""
    o = settings.oauth2
    error = {"status": "invalid_token"}
    if o.required_scope:
        error["scope"] = o.required_scope
    if o.issuer:
        error["openid-configuration"] = \
            o.issuer.rstrip("/") + "/.well-known/openid-configuration"
    return json.dumps(error, separators=(",", ":")).encode("ascii")


def _kvpairs(data, what):
    """C{key=value^A...^A^A} -> dict (a key twice, or a bad pair, is malformed)."""
    if not data.endswith(b"\x01\x01"):
        raise SASLError(f"{what} response does not end with ^A^A")
    pairs = {}
    for item in data[:-2].split(b"\x01"):
        key, sep, value = item.partition(b"=")
        try:
            key, value = key.decode("ascii"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLError(f"{what} pair is not UTF-8") from None
        if not sep or not _KEY.fullmatch(key) or key in pairs:
            raise SASLError(f"{what} malformed key/value pair")
        pairs[key] = value
    return pairs


def _bearer(pairs, what):
    auth = pairs.get("auth", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        raise SASLError(f"{what} has no auth=Bearer token")
    return token


def _saslname(raw):
    """RFC 5801 saslname: C{=2C} is ',', C{=3D} is '='; any other '=' is malformed."""
    if re.search(r"=(?!2C|3D)", raw):
        raise SASLError("OAUTHBEARER authzid with a bad escape")
    return raw.replace("=2C", ",").replace("=3D", "=")


def _parse_oauthbearer(data):
    """@return: (authzid or None, token)."""
    header, sep, rest = data.partition(b"\x01")
    if not sep:
        raise SASLError("OAUTHBEARER response without ^A")
    try:
        header = header.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("OAUTHBEARER gs2 header is not UTF-8") from None
    parts = header.split(",")
    if len(parts) != 3 or parts[2] != "":
        raise SASLError("OAUTHBEARER malformed gs2 header")
    if parts[0] not in ("n", "y"):
        raise SASLError("OAUTHBEARER channel binding is not supported")
    authzid = None
    if parts[1]:
        if not parts[1].startswith("a=") or len(parts[1]) == 2:
            raise SASLError("OAUTHBEARER malformed authzid")
        authzid = _saslname(parts[1][2:])
    return authzid, _bearer(_kvpairs(rest, "OAUTHBEARER"), "OAUTHBEARER")


def _parse_xoauth2(data):
    pairs = _kvpairs(data, "XOAUTH2")
    if not pairs.get("user"):
        raise SASLError("XOAUTH2 response without user=")
    return pairs["user"], _bearer(pairs, "XOAUTH2")


@implementer(ISASLExchange)
class _BearerExchange(OneResponseExchange):

    def __init__(self, mechanism, context):
        super().__init__(context)
        self._mechanism = mechanism
        self.mechanism_name = mechanism.name

    def respond(self, data):
        if len(data) > MAX_RESPONSE:
            raise SASLError(f"{self._mechanism.name} response too long")
        authzid, token = self._mechanism.parse(data)
        username = normalise(self._context, authzid) if authzid is not None else None
        self.username = username
        return BearerCredentials(username, token, self._mechanism.name,
                                 failure_challenge(self._context.settings))


@implementer(ISASLMechanism)
class BearerMechanism:
    """
    @ivar requires: None: any credential source serves it (the checker only
        asks the source whether the token's user may log in).
    """

    exposesPassword = True
    requires = None

    def __init__(self, name, parse):
        self.name = name
        self.parse = parse

    def newExchange(self, context):
        return _BearerExchange(self, context)


OAUTHBEARER = BearerMechanism("OAUTHBEARER", _parse_oauthbearer)
XOAUTH2 = BearerMechanism("XOAUTH2", _parse_xoauth2)
