"""
APOP (RFC 1939 section 7): not SASL.  The greeting carries a timestamp; the
client answers C{APOP user MD5(timestamp + secret)}.  MD5 over a
cleartext-equivalent secret: off by default.

Twisted's own APOPCredentials never matches on Python 3 and is not
constant-time; this one is both right and constant-time.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from zope.interface import implementer

from securepop.interfaces import CLEARTEXT_SECRET, ISecretCredentials

_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")
_HOSTNAME = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def new_timestamp(hostname):
    """
    A fresh, unpredictable greeting timestamp, e.g.
    C{b"<3f2a...9c.51e0...77@mail.example.com>"}.

    @type hostname: L{str}
    @rtype: L{bytes}
    """
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError("host name unfit for an APOP timestamp")
    return (f"<{secrets.token_hex(8)}.{secrets.token_hex(8)}@{hostname}>"
            .encode("ascii"))


@implementer(ISecretCredentials)
@dataclass(frozen=True)
class APOPCredentials:
    """
    @ivar username: the normalised user name (str).
    @ivar timestamp: the greeting's timestamp (bytes, with the angle
        brackets).
    @ivar digest: the client's hex digest (bytes or str).
    """

    username: str
    timestamp: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    kind: str = CLEARTEXT_SECRET
    mechanism: str = "APOP"

    def checkSecret(self, secret):
        """@param secret: the shared secret (bytes)."""
        digest = self.digest
        if isinstance(digest, str):
            digest = digest.encode("ascii", "replace")
        if not isinstance(secret, bytes) or not _DIGEST.fullmatch(digest):
            return False
        expected = hashlib.md5(self.timestamp + secret).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), digest.lower())
