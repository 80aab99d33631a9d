"""
GSSAPI (RFC 4752): Kerberos V5 logins, verified by the service key.

POP3 flow: C{AUTH GSSAPI [token]} -> C{+ token} ... until the GSS-API
context is established (the last server token, when there is one, gives the
client mutual authentication and is answered with an empty line) -> the
server offers, wrapped, "no security layer" with a maximum size of 0 ->
the client's wrapped answer chooses no layer and may name an authorization
id -> credentials.

The GSS-API work (decrypting the ticket with the keytab, the replay cache)
is the acceptor's (L{IGSSAcceptorExchange}, L{securepop.auth.kerberos});
this module keeps the SASL framing and the policy: which realms' users may
log in (C{user@REALM} -> C{user} as C{DOMAIN\\user} is for NTLM: the realm
must be accepted, then the server's one user-name rule applies), the
authorization id (honoured only when empty or the same user), and channel
binding (C{auth.channel_binding}: with C{"require"} a client that did not
bind its Kerberos authenticator to this TLS connection is refused).
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from zope.interface import Attribute, Interface, implementer

from securepop.errors import SASLError
from securepop.interfaces import KERBEROS, ISASLExchange, ISASLMechanism
from securepop.sasl.base import Challenge
from securepop.sasl.credentials import VerifiedCredentials, normalise

#: A Kerberos AP-REQ is a few KB (a PAC with many groups makes it larger).
MAX_TOKEN = 64 * 1024
#: RFC 4752 3.1: the bit of "no security layer", and our offer: that
#: layer only, maximum message size 0.
NO_SECURITY_LAYER = 0x01
LAYER_OFFER = bytes((NO_SECURITY_LAYER, 0, 0, 0))
MAX_AUTHZID_OCTETS = 1024
TLS_SERVER_END_POINT = b"tls-server-end-point:"


class GSSAPIRefused(SASLError):
    """
    A GSSAPI login refused; C{reason} is the failure log's token
    (C{foreign-realm}, C{not-a-user}, C{authzid-mismatch},
    C{channel-binding-missing}, C{gss-failed}, ...).
    """

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class IGSSAcceptorExchange(Interface):
    """
    One GSS-API security context on the acceptor side, for one AUTH.
    C{context.gssapiAcceptor()} returns a fresh one.
    """

    realms = Attribute("The realms whose principals may log in (tuple of str).")

    def step(token, binding):
        """
        Feed one initiator token to the acceptor (off the reactor thread).

        @param binding: the channel bindings' application data (bytes), or
            None to accept without them.
        @return: Deferred firing with C{(output token or None, complete)};
            fails with L{GSSAPIRefused} when the token is refused.
        """

    def initiator():
        """
        @return: the authenticated client principal (C{user@REALM}) once
            the context is complete.
        @raise GSSAPIRefused: the ticket was for another service principal,
            or the login is anonymous.
        """

    def channelBound():
        """@return: True when the client's channel bindings matched ours."""

    def wrap(data):
        """@return: C{data} wrapped (integrity, no confidentiality)."""

    def unwrap(message):
        """
        @return: the data of a wrapped message.
        @raise GSSAPIRefused: a message that does not verify.
        """

    def abort():
        """Release the context (idempotent)."""


def principal_user(principal, realms, context):
    """
    Map an authenticated principal to the user name logins use.

    @param principal: C{user@REALM} as the GSS-API library displays it.
    @param realms: the accepted realms (compared exactly: realms are case
        sensitive).
    @return: the normalised user name.
    @raise GSSAPIRefused: a principal with an instance (C{user/admin}),
        escaped characters, or a realm not accepted; L{SASLError} for a name
        the user-name rule refuses.
    """
    user, at, realm = principal.rpartition("@")
    if not at or not user or not realm or "\\" in principal:
        raise GSSAPIRefused("GSSAPI principal malformed", "malformed-principal")
    if "/" in user or "@" in user:
        raise GSSAPIRefused("GSSAPI principal is not a user's", "not-a-user")
    if realm not in realms:
        raise GSSAPIRefused("GSSAPI principal in a realm not accepted", "foreign-realm")
    return normalise(context, user)


def parse_layer_choice(data):
    """
    The client's unwrapped answer to our security-layer offer (RFC 4752 3.1).

    @return: the authorization id (str, possibly empty).
    @raise GSSAPIRefused: too short, a layer other than "none", or an
        authorization id that is not UTF-8 text.
    """
    if len(data) < 4:
        raise GSSAPIRefused("GSSAPI security layer answer truncated", "malformed")
    if data[0] != NO_SECURITY_LAYER:
        raise GSSAPIRefused("GSSAPI client chose a security layer not offered",
                            "bad-security-layer")
    # The size is meaningless without a layer (RFC 4752 says 0; not all send 0).
    raw = data[4:]
    if len(raw) > MAX_AUTHZID_OCTETS:
        raise GSSAPIRefused("GSSAPI authorization id too long", "malformed")
    try:
        authzid = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GSSAPIRefused("GSSAPI authorization id is not UTF-8", "malformed") from None
    if any(ord(c) < 0x20 or c == "\x7f" for c in authzid):
        raise GSSAPIRefused("GSSAPI authorization id with a control character", "malformed")
    return authzid


def _mode(context):
    return getattr(context.settings, "channel_binding", "allow")


@implementer(ISASLExchange)
class _GSSAPIExchange:
    username = None         # the principal, once known (for the failure log line)

    def __init__(self, context):
        self._context = context
        self._state = "start"
        self._acceptor = None
        self._user = None

    def step(self, response):
        state, self._state = self._state, "failed"
        if state == "start" and not response:
            self._state = "token"
            return Challenge(b"")
        if state in ("start", "token"):
            return self._accept(response or b"")
        if state == "mutual":
            if response:
                raise GSSAPIRefused("GSSAPI expects an empty response here", "malformed")
            return self._offer_layer()
        if state == "layer":
            return self._choose_layer(response or b"")
        raise SASLError("GSSAPI exchange already finished")

    def _accept(self, token):
        if not token:
            raise GSSAPIRefused("GSSAPI token expected", "malformed")
        if len(token) > MAX_TOKEN:
            raise GSSAPIRefused("GSSAPI token too long", "malformed")
        if self._acceptor is None:
            self._acceptor = self._context.gssapiAcceptor()
            if self._acceptor is None:
                raise GSSAPIRefused("GSSAPI has no acceptor", "unavailable")
        d = maybeDeferred(self._acceptor.step, token, self._binding())

        def stepped(result):
            out, complete = result
            if not complete:
                self._state = "token"
                return Challenge(out or b"")
            self._established()
            if out:
                self._state = "mutual"
                return Challenge(out)
            return self._offer_layer()

        return d.addCallback(stepped)

    def _binding(self):
        """The channel bindings' application data to check, or None."""
        if _mode(self._context) == "off":
            return None
        data = self._context.channelBinding("tls-server-end-point")
        return TLS_SERVER_END_POINT + data if data else None

    def _established(self):
        principal = self._acceptor.initiator()
        self.username = principal
        self._user = principal_user(principal, self._acceptor.realms, self._context)
        if _mode(self._context) == "require" and not self._acceptor.channelBound():
            raise GSSAPIRefused("GSSAPI without channel binding", "channel-binding-missing")

    def _offer_layer(self):
        self._state = "layer"
        return Challenge(self._acceptor.wrap(LAYER_OFFER))

    def _choose_layer(self, message):
        authzid = parse_layer_choice(self._acceptor.unwrap(message))
        if authzid and self._authzid_user(authzid) != self._user:
            raise UnauthorizedLogin("authzid-mismatch")
        self._state = "done"
        self.abort()
        return VerifiedCredentials(self._user, "GSSAPI")

    def _authzid_user(self, authzid):
        user, _, realm = authzid.rpartition("@")
        if user and realm in self._acceptor.realms:
            return principal_user(authzid, self._acceptor.realms, self._context)
        return normalise(self._context, authzid)

    def abort(self):
        """Release the GSS-API context."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.abort()


@implementer(ISASLMechanism)
class GSSAPIMechanism:
    """Kerberos V5 through C{context.gssapiAcceptor()}; no password is involved."""

    name = "GSSAPI"
    exposesPassword = False
    requires = KERBEROS

    def newExchange(self, context):
        return _GSSAPIExchange(context)


GSSAPI = GSSAPIMechanism()
