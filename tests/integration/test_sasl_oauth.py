"""
OAuth 2.0 bearer tokens against the real daemon: the issuer's JWKS served
over HTTPS by a test server, tokens made here.  curl logs in with
C{--oauth2-bearer} (OAUTHBEARER whenever the server offers it; XOAUTH2
from a server that offers only XOAUTH2); every bad token is refused with the
RFC 7628 error and the server goes on; a 3 KB token works in the two-line
form; a key rotation at the issuer is picked up without a restart; the
issuer being down keeps the cached keys; nothing bearer-related before TLS.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization

from securepop.audit.engine import Audit, AuditOptions
from securepop.audit.judge import PASS
from securepop.audit.pop3client import parseURL
from securepop.testing.oauth import Issuer, hmac_token, unsigned_token
from tests.integration import clients
from tests.integration.clients import ADDRESS, HOST, IMPLICIT, STARTTLS
from tests.integration.fixtures_oauth import (  # noqa: F401
    OAUTH_CONFIG, oauth_daemon, oauth_issuer, xoauth2_daemon,
)
from tests.integration.daemon import VENV_BIN, require_tool
from tests.integration.test_clients_guide import fill, guide_block, run_mutt
from tests.integration.test_sasl_clients import LogCursor, assert_logged_in

BODY = b"Subject: oauth\r\n\r\nbearer tokens work\r\n"


@pytest.fixture(scope="module")
def daemon(oauth_daemon):  # noqa: F811
    clients.reset_mailbox(oauth_daemon, "alice")
    clients.store_message(oauth_daemon, "alice", BODY)
    return oauth_daemon


class Wire:
    """A raw POP3 client over TLS (implicit, or STLS first)."""

    def __init__(self, daemon, tls=IMPLICIT):
        ctx = clients.client_context(daemon)
        if tls == IMPLICIT:
            raw = socket.create_connection((ADDRESS, daemon.pop3s_port), timeout=15)
            self.sock = ctx.wrap_socket(raw, server_hostname=HOST)
        else:
            self.sock = socket.create_connection((ADDRESS, daemon.pop3_port), timeout=15)
        self.file = self.sock.makefile("rb")
        assert self.line().startswith(b"+OK")
        if tls == STARTTLS:
            assert self.command(b"STLS").startswith(b"+OK")
            self.sock = ctx.wrap_socket(self.sock, server_hostname=HOST)
            self.file = self.sock.makefile("rb")

    def line(self):
        return self.file.readline().rstrip(b"\r\n")

    def command(self, line):
        self.sock.sendall(line + b"\r\n")
        return self.line()

    def capa(self):
        assert self.command(b"CAPA").startswith(b"+OK")
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def close(self):
        try:
            self.command(b"QUIT")
        finally:
            self.sock.close()


def oauthbearer(token, user="alice"):
    return base64.b64encode(f"n,a={user},\x01host=localhost\x01port=995\x01"
                            f"auth=Bearer {token}\x01\x01".encode())


def xoauth2(token, user="alice"):
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


def curl_bearer(daemon, token, tls, login_options=None, path="1"):
    return clients.curl(daemon, "alice", "", path=path, tls=tls, login_options=login_options,
                        extra=["--oauth2-bearer", token])


# -- curl -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xoauth2_only(xoauth2_daemon):  # noqa: F811
    clients.reset_mailbox(xoauth2_daemon, "alice")
    clients.store_message(xoauth2_daemon, "alice", BODY)
    return xoauth2_daemon


@pytest.mark.parametrize("tls, options", [(STARTTLS, None), (IMPLICIT, "AUTH=XOAUTH2")])
def test_curl_xoauth2_retrieves_a_message(xoauth2_only, oauth_issuer, tls, options):  # noqa: F811
    issuer, _ = oauth_issuer
    cursor = LogCursor(xoauth2_only)
    result = curl_bearer(xoauth2_only, issuer.token("rsa-1"), tls, options)
    assert result.returncode == 0, result.stderr
    assert clients.crlf_normalise(result.stdout) == BODY
    assert_logged_in(cursor, "XOAUTH2")


def test_curl_default_with_both_offered_is_oauthbearer(daemon, oauth_issuer):  # noqa: F811
    """curl 7.88 sends OAUTHBEARER whenever the server offers it, even with AUTH=XOAUTH2."""
    issuer, _ = oauth_issuer
    for options in (None, "AUTH=XOAUTH2"):
        cursor = LogCursor(daemon)
        result = curl_bearer(daemon, issuer.token(), IMPLICIT, options)
        assert result.returncode == 0, result.stderr
        assert_logged_in(cursor, "OAUTHBEARER")


@pytest.mark.parametrize("tls, kid", [(STARTTLS, "ec-2"), (IMPLICIT, "ed-3")])
def test_curl_oauthbearer_retrieves_a_message(daemon, oauth_issuer, tls, kid):  # noqa: F811
    issuer, _ = oauth_issuer
    cursor = LogCursor(daemon)
    result = curl_bearer(daemon, issuer.token(kid), tls, "AUTH=OAUTHBEARER")
    assert result.returncode == 0, result.stderr
    assert clients.crlf_normalise(result.stdout) == BODY
    assert_logged_in(cursor, "OAUTHBEARER")


def test_curl_with_an_expired_token_is_refused(daemon, oauth_issuer):  # noqa: F811
    issuer, _ = oauth_issuer
    cursor = LogCursor(daemon)
    result = curl_bearer(daemon, issuer.token(exp=int(time.time()) - 3600), IMPLICIT,
                         "AUTH=OAUTHBEARER")
    assert result.returncode == 67, (result.returncode, result.stderr)   # login denied
    hits = cursor.wait("auth.failure", mechanism="OAUTHBEARER")
    assert [h["reason"] for h in hits] == ["token-expired"], cursor.text()[-2000:]
    assert "eyJ" not in cursor.text()           # no token in the log


# -- bad tokens: the RFC 7628 error, then the server goes on --------------------------------

def bad_tokens(issuer):
    stranger = Issuer(kinds=("rsa",))
    rogue = Issuer(kinds=("rsa",))
    rogue.keys["unknown-kid"] = rogue.keys.pop("rsa-1")
    pem = issuer.keys["rsa-1"][1].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    return {
        "expired": (issuer.token(exp=now - 3600), "token-expired"),
        "wrong-audience": (issuer.token(aud="imap.other"), "token-wrong-audience"),
        "wrong-issuer": (issuer.token(iss="https://evil.test/"), "token-wrong-issuer"),
        "foreign-key": (stranger.token("rsa-1"), "token-bad-signature"),
        "unknown-kid": (rogue.token("unknown-kid"), "token-unknown-key"),
        "alg-none": (unsigned_token(issuer.claims()), "token-bad-algorithm"),
        "hs256-public-key": (hmac_token(issuer.claims(), pem, "rsa-1"), "token-bad-algorithm"),
        "another-user": (issuer.token(user="bob"), "token-for-another-user"),
        "missing-scope": (issuer.token(scope="openid"), "token-missing-scope"),
        "not-yet-valid": (issuer.token(nbf=now + 3600), "token-not-yet-valid"),
    }


@pytest.mark.parametrize("case", ["expired", "wrong-audience", "wrong-issuer", "foreign-key",
                                  "unknown-kid", "alg-none", "hs256-public-key",
                                  "another-user", "missing-scope", "not-yet-valid"])
@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_bad_token_gets_the_rfc7628_error(daemon, oauth_issuer, case, mechanism):  # noqa: F811
    issuer, _ = oauth_issuer
    token, reason = bad_tokens(issuer)[case]
    encode = oauthbearer if mechanism == "OAUTHBEARER" else xoauth2
    cursor = LogCursor(daemon)
    wire = Wire(daemon)
    started = time.monotonic()
    reply = wire.command(f"AUTH {mechanism} ".encode() + encode(token))
    assert reply.startswith(b"+ "), reply
    assert time.monotonic() - started < 5            # refused, not waited on
    error = json.loads(base64.b64decode(reply[2:]))
    assert error == {"status": "invalid_token", "scope": "pop",
                     "openid-configuration":
                         issuer.issuer + "/.well-known/openid-configuration"}
    dummy = b"AQ==" if mechanism == "OAUTHBEARER" else b""
    assert wire.command(dummy) == b"-ERR [AUTH] Authentication failed"
    wire.close()
    hits = cursor.wait("auth.failure", mechanism=mechanism)
    assert [h["reason"] for h in hits] == [reason], cursor.text()[-2000:]
    # The server goes on: a good token logs in on a new connection.
    wire = Wire(daemon)
    assert wire.command(b"AUTH XOAUTH2 " + xoauth2(issuer.token())).startswith(b"+OK Logged in")
    wire.close()


# -- the two-line form and a 3 KB token ---------------------------------------------------

@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_3kb_token_in_two_lines_and_one_line(daemon, oauth_issuer, mechanism):  # noqa: F811
    issuer, _ = oauth_issuer
    token = issuer.token("rsa-1", pad_to=3072)
    assert len(token) >= 3072
    encode = oauthbearer if mechanism == "OAUTHBEARER" else xoauth2
    wire = Wire(daemon, STARTTLS)
    assert wire.command(f"AUTH {mechanism}".encode()) == b"+ "
    assert wire.command(encode(token)).startswith(b"+OK Logged in")
    wire.close()
    wire = Wire(daemon)
    assert wire.command(f"AUTH {mechanism} ".encode() + encode(token)).startswith(
        b"+OK Logged in")
    wire.close()


# -- the issuer: rotation and outage -----------------------------------------------------

def test_key_rotation_is_picked_up_without_restart(daemon, oauth_issuer):  # noqa: F811
    issuer, server = oauth_issuer
    pid = daemon.proc.pid
    kid = issuer.add_key("ec", "rotated-ec")
    token = issuer.token(kid)
    server.kids = ["rsa-1", kid]                 # the issuer rotates: ec-2/ed-3 retired
    time.sleep(1.1)                              # past jwks_min_refresh
    wire = Wire(daemon)
    assert wire.command(b"AUTH OAUTHBEARER " + oauthbearer(token)).startswith(b"+OK Logged in")
    wire.close()
    assert daemon.proc.pid == pid and daemon.proc.poll() is None
    server.kids = ["rsa-1", "ec-2", "ed-3", kid]


def test_issuer_down_keeps_cached_keys(daemon, oauth_issuer):  # noqa: F811
    issuer, server = oauth_issuer
    server.down = True
    try:
        time.sleep(1.1)
        before = server.requests
        wire = Wire(daemon)
        started = time.monotonic()
        # An unknown kid starts a fetch that fails: refused within jwks_wait.
        rogue = Issuer(kinds=("ec",))
        reply = wire.command(b"AUTH XOAUTH2 " + xoauth2(rogue.token()))
        assert reply.startswith(b"+ ") and time.monotonic() - started < 4
        assert wire.command(b"") == b"-ERR [AUTH] Authentication failed"
        wire.close()
        assert server.requests > before
        # The cached keys still verify.
        wire = Wire(daemon)
        assert wire.command(b"AUTH XOAUTH2 " + xoauth2(issuer.token("rsa-1"))).startswith(
            b"+OK Logged in")
        wire.close()
    finally:
        server.down = False


# -- nothing before TLS ------------------------------------------------------------------

def test_nothing_bearer_before_tls(daemon, oauth_issuer):  # noqa: F811
    issuer, _ = oauth_issuer
    token = issuer.token()
    # The cleartext listener that allows PLAIN without TLS (insecure_allow_cleartext).
    sock = socket.create_connection((ADDRESS, daemon.ports["port3"]), timeout=15)
    plain = sock.makefile("rb")
    assert plain.readline().startswith(b"+OK")
    sock.sendall(b"CAPA\r\n")
    capa = []
    while (line := plain.readline().rstrip(b"\r\n")) != b".":
        capa.append(line)
    sasl = [c for c in capa if c.startswith(b"SASL ")]
    assert sasl and b"PLAIN" in sasl[0]
    assert b"OAUTHBEARER" not in sasl[0] and b"XOAUTH2" not in sasl[0]
    for line in (b"AUTH XOAUTH2 " + xoauth2(token)[:150], b"AUTH OAUTHBEARER"):
        sock.sendall(line + b"\r\n")
        assert plain.readline().startswith(b"-ERR")
    sock.close()
    # The STLS listener before STLS: no SASL at all (require_secure_channel).
    sock = socket.create_connection((ADDRESS, daemon.pop3_port), timeout=15)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    sock.sendall(b"CAPA\r\n")
    capa = b""
    while (line := f.readline()) != b".\r\n":
        capa += line
    assert b"OAUTHBEARER" not in capa and b"XOAUTH2" not in capa
    sock.sendall(b"AUTH XOAUTH2 " + xoauth2(token)[:150] + b"\r\n")
    assert f.readline().startswith(b"-ERR")
    sock.close()
    # After STLS they are offered.
    wire = Wire(daemon, STARTTLS)
    sasl = [c for c in wire.capa() if c.startswith(b"SASL ")][0]
    assert b"OAUTHBEARER" in sasl and b"XOAUTH2" in sasl
    wire.close()


# -- securepop audit ----------------------------------------------------------------------

def test_audit_lists_bearer_mechanisms_under_tls_only(daemon):
    result = Audit(AuditOptions(target=parseURL(f"pop3://127.0.0.1:{daemon.pop3_port}"),
                                timeout=5.0, cafile=daemon.ca_file,
                                servername="localhost")).run()
    found = {f.check: f for f in result.findings}
    assert found["auth.bearer"].status == PASS, found["auth.bearer"].reason
    assert "OAUTHBEARER, XOAUTH2" in found["auth.bearer"].reason
    assert found["auth.mechanisms"].reason == (
        "before TLS: none; under TLS: USER, PLAIN, LOGIN, SCRAM-SHA-256, OAUTHBEARER, XOAUTH2")


# -- docs/clients.rst, run as written ---------------------------------------------------------

@pytest.mark.parametrize("which, mechanism", [("both", "OAUTHBEARER"), ("xoauth2", "XOAUTH2")])
def test_guide_curl_bearer(daemon, xoauth2_only, oauth_issuer, which, mechanism):  # noqa: F811
    d = daemon if which == "both" else xoauth2_only
    issuer, _ = oauth_issuer
    for token, ok in ((issuer.token(), True), (issuer.token(aud="other"), False)):
        command = shlex.split(fill(guide_block("curl-oauth2"), d).replace("TOKEN", token))
        command[0] = require_tool("curl")
        cursor = LogCursor(d)
        result = subprocess.run(command + ["--max-time", "30"], capture_output=True, timeout=60)
        if ok:
            assert result.returncode == 0 and result.stdout == BODY, result.stderr
            assert_logged_in(cursor, mechanism)
        else:
            assert result.returncode == 67, result.stderr
            assert cursor.wait("auth.failure", mechanism=mechanism, reason="token-wrong-audience")


def test_guide_mutt_oauthbearer(daemon, oauth_issuer, tmp_path):  # noqa: F811
    issuer, _ = oauth_issuer
    for name, token, ok in (("ok", issuer.token(), True),
                            ("bad", issuer.token(user="bob"), False)):
        tokens = tmp_path / f"{name}.token"
        tokens.write_text(token + "\n")
        rc = guide_block("muttrc-oauthbearer").replace(
            "mutt_oauth2.py /home/alice/.mutt-alice.tokens", f"cat {tokens}")
        cursor = LogCursor(daemon)
        screen = run_mutt("mutt", daemon, rc, tmp_path / name)
        if ok:
            assert "[Msgs:1" in screen, screen[-1500:]
            assert_logged_in(cursor, "OAUTHBEARER")
        else:
            assert "[Msgs:1" not in screen
            assert cursor.wait("auth.failure", mechanism="OAUTHBEARER",
                               reason="token-for-another-user"), cursor.text()[-2000:]


def test_guide_getmail_xoauth2(daemon, oauth_issuer, tmp_path):  # noqa: F811
    issuer, _ = oauth_issuer
    exe = str(VENV_BIN / "getmail")
    if not os.path.exists(exe):
        exe = require_tool("getmail")
    for name, token, ok in (("ok", issuer.token(pad_to=3072), True),
                            ("bad", issuer.token(exp=int(time.time()) - 3600), False)):
        work = tmp_path / name
        out = work / "mail"
        out.mkdir(parents=True)
        (work / "token").write_text(token + "\n")
        rc_text = fill(guide_block("getmailrc-xoauth2"), daemon).replace(
            '("getmail-gmail-xoauth-tokens", "/home/alice/.getmail/alice.json")',
            f'("/bin/cat", "{work / "token"}")')
        rc_text = rc_text.split("[destination]")[0] + (
            "[destination]\ntype = MDA_external\npath = /bin/sh\n"
            "allow_root_commands = true\n"
            f"arguments = (\"-c\", \"cat > {out}/$(date +%s%N).$$$$\")\n"
            "[options]\nread_all = true\ndelete = false\n")
        (work / "getmailrc").write_text(rc_text)
        cursor = LogCursor(daemon)
        proc = subprocess.run([exe, f"--rcfile={work / 'getmailrc'}", f"--getmaildir={work}"],
                              capture_output=True, timeout=90)
        messages = list(out.iterdir())
        if ok:
            assert proc.returncode == 0 and len(messages) == 1, proc.stderr
            assert_logged_in(cursor, "XOAUTH2")
        else:
            assert proc.returncode != 0 and not messages
            assert cursor.wait("auth.failure", mechanism="XOAUTH2", reason="token-expired")


def test_guide_neomutt_token_too_big(daemon, oauth_issuer, tmp_path):  # noqa: F811
    """The guide's pitfall: neomutt 20220429 puts the token in one line of at most 512 octets."""
    issuer, _ = oauth_issuer
    tokens = tmp_path / "token"
    tokens.write_text(issuer.token("rsa-1") + "\n")
    rc = guide_block("muttrc-oauthbearer").replace(
        "mutt_oauth2.py /home/alice/.mutt-alice.tokens", f"cat {tokens}")
    cursor = LogCursor(daemon)
    screen = run_mutt("neomutt", daemon, rc, tmp_path / "neomutt")
    assert "OAUTH token is too big" in screen, screen[-1500:]
    assert "[Msgs:1" not in screen
    assert not cursor.events("auth.success")


# -- jwks_file, re-read on SIGHUP ---------------------------------------------------------------

def test_jwks_file_is_reread_on_sighup(daemon_factory, oauth_issuer, tmp_path_factory):
    issuer, _ = oauth_issuer
    jwks = tmp_path_factory.mktemp("jwks-file") / "jwks.json"
    jwks.write_bytes(issuer.jwks_bytes(["rsa-1"]))
    config = OAUTH_CONFIG.replace('"OAUTHBEARER", "XOAUTH2"]', '"XOAUTH2"]') \
        .replace("ISSUER", issuer.issuer).replace("AUDIENCE", issuer.audience) \
        .replace('jwks_url = "JWKS_URL"\njwks_ca_file = "JWKS_CA"\n', f'jwks_file = "{jwks}"\n')
    assert "jwks_url" not in config
    d = daemon_factory(config, users=(("alice", "Unused-Pass-1"),), name="oauth-file")
    kid = issuer.add_key("ed", "file-ed")
    token = issuer.token(kid)

    def login():
        wire = Wire(d)
        reply = wire.command(b"AUTH XOAUTH2 " + xoauth2(token))
        if reply.startswith(b"+ "):
            reply = wire.command(b"")
        wire.close()
        return reply

    assert login() == b"-ERR [AUTH] Authentication failed"      # not in the file yet
    jwks.write_bytes(issuer.jwks_bytes(["rsa-1", kid]))
    start = len(d.log())
    d.sighup()
    assert d.wait_log("config.reloaded", start=start), d.log()[-2000:]
    assert login().startswith(b"+OK Logged in")


# -- RFC 7662 introspection of opaque tokens ----------------------------------------------------

@pytest.fixture(scope="module")
def introspecting(daemon_factory, oauth_issuer, tmp_path_factory):  # noqa: F811
    issuer, server = oauth_issuer
    secret = tmp_path_factory.mktemp("introspection") / "client-secret"
    secret.write_text(server.client[1] + "\n")
    secret.chmod(0o600)
    config = OAUTH_CONFIG.replace('"OAUTHBEARER", "XOAUTH2"]', '"OAUTHBEARER"]') \
        .replace("ISSUER", issuer.issuer).replace("AUDIENCE", issuer.audience) \
        .replace("JWKS_URL", server.url).replace("JWKS_CA", server.ca_file) + (
            f'introspection_url = "{server.introspection_url}"\n'
            f'introspection_client_id = "{server.client[0]}"\n'
            f'introspection_secret_file = "{secret}"\n')
    d = daemon_factory(config, users=(("alice", "Unused-Pass-1"), ("bob", "Unused-Pass-2")),
                       name="oauth-introspect")
    clients.store_message(d, "alice", BODY)
    return d


def test_opaque_token_is_introspected(introspecting, oauth_issuer):  # noqa: F811
    issuer, server = oauth_issuer
    server.opaque["opaque-alice-1"] = dict(issuer.claims(), active=True)
    server.opaque["opaque-revoked"] = {"active": False}
    server.opaque["opaque-bob"] = dict(issuer.claims(user="bob"), active=True)
    cursor = LogCursor(introspecting)
    result = curl_bearer(introspecting, "opaque-alice-1", IMPLICIT)
    assert result.returncode == 0 and result.stdout == BODY, result.stderr
    assert_logged_in(cursor, "OAUTHBEARER")
    for token, reason in (("opaque-revoked", "token-inactive"),
                          ("opaque-unknown", "token-inactive"),
                          ("opaque-bob", "token-for-another-user")):
        cursor = LogCursor(introspecting)
        wire = Wire(introspecting)
        reply = wire.command(b"AUTH OAUTHBEARER " + oauthbearer(token))
        assert reply.startswith(b"+ ") and b"invalid_token" in base64.b64decode(reply[2:])
        assert wire.command(b"AQ==") == b"-ERR [AUTH] Authentication failed"
        wire.close()
        assert cursor.wait("auth.failure", reason=reason), cursor.text()[-2000:]
    # A JWT still goes to the keys.
    wire = Wire(introspecting)
    assert wire.command(b"AUTH OAUTHBEARER " + oauthbearer(issuer.token())).startswith(
        b"+OK Logged in")
    wire.close()


def test_introspection_endpoint_refusing_us_is_a_temporary_failure(introspecting,
                                                                   oauth_issuer):  # noqa: F811
    issuer, server = oauth_issuer
    server.opaque["opaque-alice-2"] = dict(issuer.claims(), active=True)
    good = server.client
    server.client = (good[0], "rotated-secret")     # our secret no longer matches
    try:
        wire = Wire(introspecting)
        reply = wire.command(b"AUTH OAUTHBEARER " + oauthbearer("opaque-alice-2"))
        assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
        wire.close()
    finally:
        server.client = good
    assert "Introspection-Secret-1" not in introspecting.log()
