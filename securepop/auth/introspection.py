"""
RFC 7662 token introspection: for opaque (non-JWT) bearer tokens, the
issuer says whether a token is active and whose it is.

The request is a POST over verified HTTPS with the server's client
credentials (HTTP Basic, RFC 7662 section 2.1); the answer's claims then go
through the same checks as a JWT's (issuer, audience, times, scope, user).
An endpoint that does not answer is the source being unavailable
(C{-ERR [SYS/TEMP]}), not a wrong token.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

from securepop.auth.jwks import https_agent, request
from securepop.errors import SourceUnavailable

INTROSPECTION_TIMEOUT = 5.0


class Introspector:
    """
    @param agent: the verifying HTTP client (L{https_agent}).
    @param reactor: IReactorTime for the request's timeout.
    @param url: the introspection endpoint.
    @param client_id: this server's client id at the issuer.
    @param secret: its client secret (str).
    """

    def __init__(self, agent, reactor, url, client_id, secret):
        self._agent, self._reactor, self.url = agent, reactor, url
        credentials = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
        self._authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))

    def __repr__(self):
        return f"Introspector({self.url!r}, <client credentials>)"

    def introspect(self, token):
        """
        @return: Deferred firing with the answer's claims (dict; C{active}
            may be false), or failing with L{SourceUnavailable}.
        """
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        headers = {b"Authorization": [self._authorization],
                   b"Content-Type": [b"application/x-www-form-urlencoded"],
                   b"Accept": [b"application/json"]}
        d = request(self._agent, self._reactor, b"POST", self.url, headers, body,
                    INTROSPECTION_TIMEOUT)

        def parsed(data):
            try:
                claims = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise SourceUnavailable("introspection answer is not JSON") from None
            if not isinstance(claims, dict):
                raise SourceUnavailable("introspection answer is not a JSON object")
            return claims

        def failed(failure):
            if failure.check(SourceUnavailable):
                return failure
            raise SourceUnavailable(f"introspection failed: {failure.getErrorMessage()[:200]}")

        return d.addCallback(parsed).addErrback(failed)


def build_introspector(o, reactor, resolve):
    """
    The introspector C{[auth.oauth2]} asks for, or None.

    @param o: the L{securepop.auth.oauth2_settings.OAuth2Settings}.
    @param resolve: path -> path relative to the data directory.
    @raise OSError: the secret file cannot be read.
    @raise ValueError: the secret file is empty, or the CA file has no certificate.
    """
    if not o.introspection_url:
        return None
    with open(resolve(o.introspection_secret_file), encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError("the introspection secret file is empty")
    agent = https_agent(reactor, resolve(o.jwks_ca_file) if o.jwks_ca_file else "")
    return Introspector(agent, reactor, o.introspection_url, o.introspection_client_id, secret)
