"""
C{[auth.oauth2]}: where bearer tokens (OAUTHBEARER, XOAUTH2) come from and
what they must say.  Kept apart from L{securepop.config} so that module
stays small; it builds and checks this section like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

#: The SASL mechanisms that carry an OAuth 2.0 bearer token.
BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")

USERNAME_CLAIMS = ("preferred_username", "email", "upn", "sub", "unique_name")


@dataclass(frozen=True)
class OAuth2Settings:
    """
    @ivar issuer: the C{iss} every token must carry (exact string).
    @ivar audience: the C{aud} (one of, when a list) every token must carry.
    @ivar jwks_url: the issuer's JSON Web Key Set, fetched over verified HTTPS.
    @ivar jwks_file: or a local JWKS (re-read on SIGHUP).
    @ivar jwks_ca_file: CA bundle for C{jwks_url} and C{introspection_url}
        (default: the system's).
    @ivar jwks_refresh: seconds between background refreshes of C{jwks_url}.
    @ivar jwks_min_refresh: at most one fetch per this many seconds, however
        many unknown key ids arrive.
    @ivar jwks_wait: the longest a login waits for a fetch its unknown key id
        started.
    @ivar username_claim: the claim naming the user.
    @ivar required_scope: a scope the token must grant ("" = none).
    @ivar introspection_url: RFC 7662 endpoint for opaque (non-JWT) tokens.
    @ivar introspection_client_id: this server's client id there.
    @ivar introspection_secret_file: the file holding its client secret.
    @ivar leeway: seconds of clock skew allowed for C{exp}, C{nbf}, C{iat}.
    """

    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    jwks_ca_file: str = ""
    jwks_refresh: float = 3600.0
    jwks_min_refresh: float = 30.0
    jwks_wait: float = 2.0
    username_claim: str = "preferred_username"
    required_scope: str = ""
    introspection_url: str = ""
    introspection_client_id: str = ""
    introspection_secret_file: str = ""
    leeway: float = 60.0


def oauth2_problem(auth):
    """
    What is wrong with C{[auth.oauth2]} for the configured mechanisms.

    @param auth: the L{securepop.config.AuthSettings}.
    @return: C{(key, reason)} or None.
    """
    o = auth.oauth2
    bearer = [m for m in auth.mechanisms if m in BEARER_MECHANISMS]
    if not bearer:
        return None
    for key in ("issuer", "audience"):
        if not getattr(o, key):
            return (f"auth.oauth2.{key}", f"is required with {', '.join(bearer)}")
    if o.jwks_url and o.jwks_file:
        return ("auth.oauth2.jwks_url", "jwks_url and jwks_file exclude each other")
    if not (o.jwks_url or o.jwks_file or o.introspection_url):
        return ("auth.oauth2.jwks_url",
                "one of jwks_url, jwks_file (JWT tokens) or introspection_url is needed")
    for key in ("jwks_url", "introspection_url"):
        url = getattr(o, key)
        parts = urlsplit(url)
        if url and (parts.scheme != "https" or not parts.hostname):
            return (f"auth.oauth2.{key}", f"must be an https:// URL, not {url!r}")
    if bool(o.introspection_url) != bool(o.introspection_client_id) or \
            bool(o.introspection_url) != bool(o.introspection_secret_file):
        return ("auth.oauth2.introspection_url",
                "introspection_url, introspection_client_id and "
                "introspection_secret_file go together")
    if o.username_claim not in USERNAME_CLAIMS:
        return ("auth.oauth2.username_claim",
                f"must be one of {', '.join(USERNAME_CLAIMS)}, not {o.username_claim!r}")
    if any(c.isspace() for c in o.required_scope):
        return ("auth.oauth2.required_scope", "must be one scope (no spaces)")
    if o.leeway > 600:
        return ("auth.oauth2.leeway", "must be at most 600 seconds")
    if not 0 < o.jwks_wait <= 30:
        return ("auth.oauth2.jwks_wait", "must be more than 0 and at most 30 seconds")
    if o.jwks_min_refresh < 1 or o.jwks_refresh < o.jwks_min_refresh:
        return ("auth.oauth2.jwks_refresh",
                "jwks_min_refresh must be at least 1 and jwks_refresh at least that")
    return None
