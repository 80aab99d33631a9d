"""
CRAM-MD5 (RFC 2195): the client answers a fresh challenge with
C{user HMAC-MD5(secret, challenge)}; the password does not cross the wire,
but the server must hold a cleartext-equivalent secret.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import (
    CLEARTEXT_SECRET, ISASLExchange, ISASLMechanism, ISecretCredentials,
)
from securepop.sasl.base import Challenge
from securepop.sasl.credentials import normalise

MAX_RESPONSE = 1024
_RESPONSE = re.compile(rb"(.+) ([0-9a-fA-F]{32})", re.DOTALL)


def new_challenge(hostname):
    """
    A challenge in RFC 2195's msg-id form, unpredictable (the C{random}
    module Twisted's CramMD5Credentials uses is not).
    """
    return (f"<{secrets.token_hex(8)}.{secrets.token_hex(8)}@{hostname}>"
            .encode("ascii"))


@implementer(ISecretCredentials)
@dataclass(frozen=True)
class CramMD5Credentials:
    username: str
    challenge: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    kind: str = CLEARTEXT_SECRET
    mechanism: str = "CRAM-MD5"

    def checkSecret(self, secret):
        """@param secret: the shared secret (bytes)."""
        if not isinstance(secret, bytes):
            return False
        expected = hmac.new(secret, self.challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest)


@implementer(ISASLExchange)
class _CramMD5Exchange:
    username = None         # the credentials carry the user name to the portal

    def __init__(self, context, challenge_factory):
        self._context = context
        self._challenge_factory = challenge_factory
        self._challenge = None

    def step(self, response):
        if self._challenge is None:
            if response:
                raise SASLError("CRAM-MD5 takes no initial response")
            self._challenge = self._challenge_factory(self._context.hostname)
            return Challenge(self._challenge)
        if self._challenge == b"":
            raise SASLError("CRAM-MD5 exchange already finished")
        challenge, self._challenge = self._challenge, b""
        match = _RESPONSE.fullmatch(response or b"")
        if not match or len(response) > MAX_RESPONSE:
            raise SASLError("CRAM-MD5 response is not 'user hexdigest'")
        try:
            raw = match.group(1).decode("utf-8")
        except UnicodeDecodeError:
            raise SASLError("CRAM-MD5 user name is not UTF-8") from None
        return CramMD5Credentials(
            username=normalise(self._context, raw),
            challenge=challenge,
            digest=match.group(2).lower(),
        )

    def abort(self):
        """Nothing is held between steps: nothing to release."""


@implementer(ISASLMechanism)
class CramMD5Mechanism:
    """
    @param challenge_factory: hostname -> challenge bytes (tests fix it).
    """

    name = "CRAM-MD5"
    exposesPassword = False
    requires = CLEARTEXT_SECRET

    def __init__(self, challenge_factory=new_challenge):
        self._challenge_factory = challenge_factory

    def newExchange(self, context):
        return _CramMD5Exchange(context, self._challenge_factory)


CRAM_MD5 = CramMD5Mechanism()
