"""
PLAIN (RFC 4616): C{authzid NUL authcid NUL password} in one response.

The password crosses the wire, so the registry offers PLAIN only under TLS
unless cleartext is explicitly allowed.  Proxy authorisation is not
supported: the authzid must be empty or name the same user.
"""

from twisted.cred.credentials import UsernamePassword
from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import PLAINTEXT, ISASLExchange, ISASLMechanism
from securepop.sasl.base import OneResponseExchange
from securepop.sasl.credentials import normalise

#: RFC 4616 allows 255 octets for each part; be a little generous.
MAX_PART = 1024


def _text(raw, what):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"PLAIN {what} is not UTF-8") from None


@implementer(ISASLExchange)
class _PlainExchange(OneResponseExchange):
    mechanism_name = "PLAIN"

    def respond(self, data):
        parts = data.split(b"\x00")
        if len(parts) != 3:
            raise SASLError("PLAIN response needs exactly two NULs")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLError("PLAIN response with an empty user or password")
        if max(map(len, parts)) > MAX_PART:
            raise SASLError("PLAIN response part too long")
        username = normalise(self._context, _text(authcid, "authcid"))
        if authzid:
            wanted = normalise(self._context, _text(authzid, "authzid"))
            if wanted != username:
                raise SASLError("PLAIN authzid differs from authcid")
        return UsernamePassword(username, password)


@implementer(ISASLMechanism)
class PlainMechanism:
    name = "PLAIN"
    exposesPassword = True
    requires = PLAINTEXT

    def newExchange(self, context):
        return _PlainExchange(context)


PLAIN = PlainMechanism()
