"""
A test OAuth issuer for the integration tests: its JWKS served over HTTPS
(http.server in a thread, on loopback, with a certificate from a test CA)
and a securepop daemon that fetches it.  The served key ids can be changed
(a key rotation) and the endpoint can be made to fail (the issuer down).
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import urllib.parse

import pytest

from securepop.testing import tls as tlstesting
from securepop.testing.oauth import Issuer
from tests.integration.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG


class JWKSServer:
    """
    @ivar kids: the key ids published now (None: all of the issuer's).
    @ivar down: True to answer 503 (the issuer's endpoint failing).
    @ivar requests: how many GETs arrived.
    """

    def __init__(self, issuer, directory):
        self.issuer, self.kids, self.down, self.requests = issuer, None, False, 0
        #: RFC 7662: opaque token -> the answer's claims; the client's credentials.
        self.opaque, self.client = {}, ("securepop", "Introspection-Secret-1")
        ca = tlstesting.TestCA(intermediate=False)
        leaf, key = ca.issue(("localhost", "127.0.0.1"))
        cert, keyfile = tlstesting.write_identity(str(directory), "jwks", [leaf], key)
        self.ca_file = str(directory / "jwks-ca.pem")
        ca.write_root(self.ca_file)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                if owner.down or self.path != "/jwks":
                    self.send_error(503 if owner.down else 404)
                    return
                body = owner.issuer.jwks_bytes(owner.kids)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                owner.requests += 1
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                expected = "Basic " + base64.b64encode(":".join(owner.client).encode()).decode()
                if self.path != "/introspect" or owner.down:
                    self.send_error(503)
                    return
                if self.headers.get("Authorization") != expected:
                    self.send_error(401)
                    return
                token = form.get("token", [""])[0]
                body = json.dumps(owner.opaque.get(token, {"active": False})).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, keyfile)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}/jwks"
        self.introspection_url = self.url.replace("/jwks", "/introspect")
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


OAUTH_CONFIG = DEFAULT_CONFIG.replace(
    '"NTLM", "CRAM-MD5"]', '"OAUTHBEARER", "XOAUTH2"]') + """
[[listen]]
endpoint = "tcp:{port3}:interface=127.0.0.1"
tls = "none"
insecure_allow_cleartext = true
[auth.oauth2]
issuer = "ISSUER"
audience = "AUDIENCE"
jwks_url = "JWKS_URL"
jwks_ca_file = "JWKS_CA"
jwks_min_refresh = 1.0
jwks_wait = 2.0
required_scope = "pop"
"""


@pytest.fixture(scope="session")
def oauth_issuer(tmp_path_factory):
    issuer = Issuer(kinds=("rsa", "ec", "ed"))
    server = JWKSServer(issuer, tmp_path_factory.mktemp("jwks"))
    server.kids = ["rsa-1", "ec-2", "ed-3"]
    yield issuer, server
    server.close()


def _config(oauth_issuer, mechanisms):
    issuer, server = oauth_issuer
    return (OAUTH_CONFIG.replace('"OAUTHBEARER", "XOAUTH2"]', mechanisms)
            .replace("ISSUER", issuer.issuer).replace("AUDIENCE", issuer.audience)
            .replace("JWKS_URL", server.url).replace("JWKS_CA", server.ca_file))


@pytest.fixture(scope="session")
def oauth_daemon(daemon_factory, oauth_issuer):
    text = _config(oauth_issuer, '"OAUTHBEARER", "XOAUTH2"]')
    assert "OAUTHBEARER" in text
    return daemon_factory(text, users=(("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)),
                          name="oauth")


@pytest.fixture(scope="session")
def xoauth2_daemon(daemon_factory, oauth_issuer):
    """XOAUTH2 without OAUTHBEARER: curl 7.88 picks OAUTHBEARER whenever it is offered."""
    text = _config(oauth_issuer, '"XOAUTH2"]')
    assert "OAUTHBEARER" not in text
    return daemon_factory(text, users=(("alice", ALICE_PASSWORD),), name="xoauth2")

