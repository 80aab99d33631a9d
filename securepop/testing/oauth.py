"""
A test OAuth 2.0 issuer: signing keys made here (RSA, EC P-256, Ed25519),
their JWKS, and JWT access tokens with any claim changed, for the unit and
integration tests of OAUTHBEARER and XOAUTH2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test/realms/corp"
AUDIENCE = "pop.test"

_ALG = {"rsa": "RS256", "ec": "ES256", "ed": "EdDSA"}


def new_key(kind):
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(kind, key, kid):
    algorithm = {"rsa": RSAAlgorithm, "ec": ECAlgorithm, "ed": OKPAlgorithm}[kind]
    jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


class Issuer:
    """
    @ivar keys: kid -> (kind, private key); C{jwks()} publishes them all.
    """

    def __init__(self, kinds=("rsa", "ec", "ed"), issuer=ISSUER, audience=AUDIENCE):
        self.issuer, self.audience = issuer, audience
        self.keys = {}
        for kind in kinds:
            self.add_key(kind)

    def add_key(self, kind, kid=None):
        kid = kid or f"{kind}-{len(self.keys) + 1}"
        self.keys[kid] = (kind, new_key(kind))
        return kid

    def jwks(self, kids=None):
        chosen = self.keys if kids is None else {k: self.keys[k] for k in kids}
        return {"keys": [public_jwk(kind, key, kid) for kid, (kind, key) in chosen.items()]}

    def jwks_bytes(self, kids=None):
        return json.dumps(self.jwks(kids)).encode()

    def claims(self, user="alice", now=None, **changes):
        now = time.time() if now is None else now
        claims = {"iss": self.issuer, "aud": self.audience, "sub": "id-" + user,
                  "preferred_username": user, "scope": "openid pop",
                  "iat": int(now), "nbf": int(now), "exp": int(now) + 600}
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(self, kid=None, user="alice", pad_to=0, **changes):
        """
        A signed token (str) with C{kid}'s key (the first key by default).

        @param pad_to: make the token at least this many characters long
            (an extra claim, as large Microsoft 365 tokens have).
        """
        kid = kid or next(iter(self.keys))
        kind, key = self.keys[kid]
        claims = self.claims(user, **changes)
        if pad_to:
            claims["padding"] = ""
            token = jwt.encode(claims, key, algorithm=_ALG[kind], headers={"kid": kid})
            # base64url: 4 characters for every 3 octets of padding.
            claims["padding"] = "x" * max(0, (pad_to - len(token)) * 3 // 4 + 4)
        return jwt.encode(claims, key, algorithm=_ALG[kind], headers={"kid": kid})


def unsigned_token(claims):
    """An C{alg: none} token (no signature)."""
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hmac_token(claims, secret, kid):
    """An HS256 token whose secret is C{secret} (e.g. the issuer's public key PEM)."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"
