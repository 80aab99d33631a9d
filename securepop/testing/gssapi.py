"""
The client side of SASL GSSAPI (RFC 4752) with python-gssapi: what a POP3
client does with its Kerberos ticket cache.  C{securepop test-auth
--mechanism gssapi} and the tests use it; the daemon never does.
"""

from __future__ import annotations

import gssapi
from gssapi.raw import ChannelBindings

from securepop.sasl.gssapi import NO_SECURITY_LAYER, TLS_SERVER_END_POINT


class GSSAPIClientError(Exception):
    """The server's answer is not what RFC 4752 says it must be."""


class GSSAPIClient:
    """
    One login: call L{initial} for the first response, then L{respond} with
    each server challenge (decoded) until the server says +OK or -ERR.

    @param hostname: the server's name; the ticket is for
        C{service/hostname} (C{pop@hostname}, host-based).
    @param binding: the server certificate's tls-server-end-point hash, to
        bind the authenticator to the TLS channel, or None.
    @param authzid: the authorization id to ask for (C{""}: none).
    @param credentials: C{gssapi.Credentials}; default: the ticket cache
        (C{KRB5CCNAME}).
    @raise gssapi.exceptions.GSSError: no ticket cache.
    """

    def __init__(self, hostname, service="pop", binding=None, authzid="", credentials=None):
        name = gssapi.Name(f"{service}@{hostname}", gssapi.NameType.hostbased_service)
        self.credentials = credentials or gssapi.Credentials(usage="initiate")
        bindings = None
        if binding is not None:
            bindings = ChannelBindings(application_data=TLS_SERVER_END_POINT + binding)
        self.context = gssapi.SecurityContext(
            name=name, usage="initiate", creds=self.credentials, channel_bindings=bindings,
            flags=gssapi.RequirementFlag.mutual_authentication
            | gssapi.RequirementFlag.integrity)
        self.authzid = authzid.encode("utf-8")
        self.layer_offer = None

    def initial(self):
        """@return: the first context token (the AP-REQ)."""
        return self.context.step()

    def respond(self, challenge):
        """
        @param challenge: the server's decoded continuation data.
        @return: the next response (bytes, possibly empty).
        """
        if not self.context.complete:
            return self.context.step(challenge) or b""
        offer = self.context.unwrap(challenge).message
        if len(offer) != 4 or not offer[0] & NO_SECURITY_LAYER:
            raise GSSAPIClientError("the server offers no 'no security layer'")
        self.layer_offer = offer
        return self.context.wrap(bytes((NO_SECURITY_LAYER, 0, 0, 0)) + self.authzid,
                                 False).message
