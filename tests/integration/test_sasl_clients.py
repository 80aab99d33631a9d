"""
Real clients log in to the real daemon with every mechanism they speak, and
fail with a wrong password.

curl (PLAIN, LOGIN, CRAM-MD5, NTLM, APOP; with and without C{--sasl-ir}),
fetchmail (CRAM-MD5, APOP, NTLMv1 refused unless
C{insecure_allow_ntlmv1}), pyspnego as an NTLMv2 client with MIC, a SCRAM
client written here (RFC 5802/7677, and -PLUS with tls-server-end-point),
Python's poplib (USER/PASS, APOP) and mutt driven through C{script}.

Every login is checked on the wire (the client's exit status or reply) and
in the daemon's log (one C{auth.success} / C{auth.failure} event naming the
mechanism), so a client silently falling back to another mechanism fails
the test.  The SCRAM, NTLM and attempt helpers here are shared with
L{tests.integration.test_sasl_wire} and L{tests.integration.test_bruteforce}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import poplib
import re
import socket
import struct
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration import clients
from tests.integration.clients import ADDRESS, HOST, IMPLICIT, STARTTLS
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG, require_tool

WRONG_PASSWORD = "Wrong-Horse-8"

#: The default test configuration plus SCRAM-SHA-256-PLUS.
SASL_CONFIG = DEFAULT_CONFIG.replace('"CRAM-MD5"]', '"CRAM-MD5", "SCRAM-SHA-256-PLUS"]')
#: The same with NTLMv1 allowed (fetchmail and mutt only speak v1).  fetchmail
#: sends the server's own NetBIOS domain (from the CHALLENGE) with the user
#: name, which only strip_domain maps to the local user (see
#: test_ntlm_user_in_the_servers_own_domain_is_the_local_user).
NTLMV1_CONFIG = SASL_CONFIG.replace(
    "max_attempts = 3\n",
    "max_attempts = 3\ninsecure_allow_ntlmv1 = true\nstrip_domain = true\n")
assert SASL_CONFIG != DEFAULT_CONFIG and NTLMV1_CONFIG != SASL_CONFIG

def sasl_daemon_for(daemon_factory, config=SASL_CONFIG, name="sasl"):
    """The daemon these tests share (one per session per configuration)."""
    return daemon_factory(config, users=(("alice", ALICE_PASSWORD),), name=name)


@pytest.fixture(scope="module")
def sasl_daemon(daemon_factory):
    d = sasl_daemon_for(daemon_factory)
    if not d.messages("alice"):
        clients.store_message(d, "alice", b"Subject: sasl\r\n\r\nhello\r\n")
    return d


@pytest.fixture(scope="module")
def ntlmv1_daemon(daemon_factory):
    return sasl_daemon_for(daemon_factory, NTLMV1_CONFIG, name="ntlmv1")


# -- the daemon's log ----------------

class LogCursor:
    """The daemon's log events after a point in time (the log only grows)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.start = len(daemon.log())

    def text(self):
        return self.daemon.log()[self.start:]

    def events(self, name):
        """Field dicts of every C{securepop NAME k=v ...} line since the start."""
        found = []
        for line in self.text().splitlines():
            m = re.search(r"\] securepop " + re.escape(name) + r" (.*)$", line)
            if m:
                found.append(dict(f.split("=", 1) for f in m.group(1).split() if "=" in f))
        return found

    def wait(self, name, count=1, timeout=10.0, **fields):
        """The matching events once at least C{count} are there (else what there is)."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.events(name)
                    if all(e.get(k) == v for k, v in fields.items())]
            if len(hits) >= count or time.monotonic() > deadline:
                return hits
            time.sleep(0.05)


def assert_logged_in(cursor, mechanism, user="alice"):
    hits = cursor.wait("auth.success", mechanism=mechanism)
    assert [h["user"] for h in hits] and all(h["user"] == user for h in hits), \
        cursor.text()[-2000:]
    assert not cursor.events("auth.failure"), cursor.text()[-2000:]


def assert_refused(cursor, mechanism, user="alice", reason=None, event="auth.failure"):
    """
    A refusal in the log: C{auth.failure} for a wrong guess, C{auth.refused}
    for a policy refusal (NTLMv1, a missing secret), which is no guess.
    """
    hits = cursor.wait(event, mechanism=mechanism)
    assert hits, cursor.text()[-2000:]
    for name, wanted in (("user", user), ("reason", reason)):
        if wanted is not None:
            assert [h[name] for h in hits] == [wanted] * len(hits), cursor.text()[-2000:]
    assert not cursor.events("auth.success"), cursor.text()[-2000:]


# -- a byte-level client with a chosen source address ----------------

_sources = itertools.count(1)


def fresh_source():
    """
    A loopback address no other test used (127.0.1.1, 127.0.1.2, ...): its
    failure penalty starts at zero, so failures in one test do not slow the next.
    """
    n = next(_sources)
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


class SourcePOP3(clients.RawPOP3):
    """
    L{clients.RawPOP3} connecting from C{source} (a 127.0.0.0/8 address: the
    server sees it as the peer; default L{fresh_source}) and to any C{port}
    of the daemon.
    """

    def __init__(self, daemon, tls=IMPLICIT, source=None, port=None, timeout=15):
        source = source or fresh_source()
        self.source = source
        self.daemon = daemon
        self.timeout = timeout
        self.buf = b""
        self.received = bytearray()
        port = port or clients.port_for(daemon, tls)
        self.sock = socket.create_connection((ADDRESS, port), timeout=timeout,
                                             source_address=(source, 0))
        if tls == IMPLICIT:
            self.sock = clients.client_context(daemon).wrap_socket(
                self.sock, server_hostname=HOST)
        self.greeting = self.readline()
        if tls == STARTTLS:
            self.starttls()

    def capa(self):
        assert self.command(b"CAPA").startswith(b"+OK")
        return self.multiline()

    def server_certificate(self):
        return self.sock.getpeercert(binary_form=True)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth_plain(conn, user, password, authzid=""):
    token = f"{authzid}\0{user}\0{password}".encode()
    return conn.command(b"AUTH PLAIN " + b64(token))


# -- NTLM with pyspnego (NTLMv2 with MIC) ----------------

def nt_hash(password: str) -> bytes:
    """MD4 of the UTF-16LE password (OpenSSL 3 has no MD4: pyspnego's own)."""
    from spnego._ntlm_raw.crypto import md4

    return md4(password.encode("utf-16-le"))


def ntlm_client(user, password):
    import spnego

    return spnego.client(user, password, hostname="localhost", service="pop",
                         protocol="ntlm")


def ntlm_login(conn, user, password, initial_response=False, tamper=None):
    """
    Drive C{AUTH NTLM} with pyspnego.

    @param tamper: bytes -> bytes applied to the AUTHENTICATE message.
    @return: (final server reply, AUTHENTICATE message as sent).
    """
    client = ntlm_client(user, password)
    negotiate = client.step()
    assert negotiate[:8] == b"NTLMSSP\0"
    if initial_response:
        reply = conn.command(b"AUTH NTLM " + b64(negotiate))
    else:
        assert conn.command(b"AUTH NTLM") == b"+ "
        reply = conn.command(b64(negotiate))
    assert reply.startswith(b"+ "), reply
    challenge = base64.b64decode(reply[2:])
    assert challenge[:12] == b"NTLMSSP\0\x02\0\0\0"
    authenticate = client.step(challenge)
    if tamper is not None:
        authenticate = tamper(authenticate)
    return conn.command(b64(authenticate)), authenticate


def ntlm_fields(authenticate):
    """NTLMv2 facts of an AUTHENTICATE_MESSAGE ([MS-NLMP] 2.2.1.3)."""
    assert authenticate[8:12] == b"\x03\0\0\0"
    nt_len, _, nt_off = struct.unpack_from("<HHI", authenticate, 20)
    nt = authenticate[nt_off:nt_off + nt_len]
    av_flags = 0
    pos = 16 + 28            # NTProofStr, then the NTLMv2_CLIENT_CHALLENGE header
    while pos + 4 <= len(nt):
        av_id, av_len = struct.unpack_from("<HH", nt, pos)
        if av_id == 0:
            break
        if av_id == 6:
            av_flags = struct.unpack_from("<I", nt, pos + 4)[0]
        pos += 4 + av_len
    return {"nt_response_len": nt_len, "av_flags": av_flags, "mic": authenticate[72:88]}


def flip_mic(authenticate):
    data = bytearray(authenticate)
    data[72] ^= 0x01
    return bytes(data)


# -- SCRAM-SHA-256 (RFC 5802 / RFC 7677, client side) ----------------

def _hmac(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def tls_server_end_point(certificate_der):
    """RFC 5929: the hash of the server certificate (SHA-256 for MD5/SHA-1/SHA-256 certs)."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    name = "sha256" if algorithm is None or algorithm.name in ("md5", "sha1") \
        else algorithm.name
    return hashlib.new(name, certificate_der).digest()


def scram_login(conn, user, password, plus=False, binding_data=None, gs2=None):
    """
    One SCRAM-SHA-256[-PLUS] exchange with an initial response.

    @param binding_data: the channel binding data to send (-PLUS); default
        the real tls-server-end-point of this connection.
    @param gs2: override the GS2 header (e.g. C{b"y,,"}).
    @return: (final reply, whether the server signature was right or None).
    """
    mechanism = b"SCRAM-SHA-256-PLUS" if plus else b"SCRAM-SHA-256"
    if gs2 is None:
        gs2 = b"p=tls-server-end-point,," if plus else b"n,,"
    if plus and binding_data is None:
        binding_data = tls_server_end_point(conn.server_certificate())
    nonce = b64(os.urandom(18))
    name = user.encode().replace(b"=", b"=3D").replace(b",", b"=2C")
    first_bare = b"n=" + name + b",r=" + nonce
    reply = conn.command(b"AUTH " + mechanism + b" " + b64(gs2 + first_bare))
    if not reply.startswith(b"+ "):
        return reply, None
    server_first = base64.b64decode(reply[2:])
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    assert attrs[b"r"].startswith(nonce) and len(attrs[b"r"]) > len(nonce)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]),
                                 int(attrs[b"i"]))
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = b"c=" + b64(gs2 + (binding_data or b"")) + b",r=" + attrs[b"r"]
    auth_message = first_bare + b"," + server_first + b"," + without_proof
    proof = bytes(a ^ b for a, b in zip(client_key, _hmac(stored_key, auth_message)))
    reply = conn.command(b64(without_proof + b",p=" + b64(proof)))
    if not reply.startswith(b"+ "):
        return reply, None
    server_final = base64.b64decode(reply[2:])
    expected = b"v=" + b64(_hmac(_hmac(salted, b"Server Key"), auth_message))
    return conn.command(b""), hmac.compare_digest(server_final, expected)


# -- curl ----------------

CURL_CASES = [
    pytest.param(mech, ir, tls, id=f"{mech}-{'ir' if ir else 'noir'}-{tls}")
    for mech in ("PLAIN", "LOGIN", "CRAM-MD5", "NTLM")
    for ir in (False, True)
    for tls in (STARTTLS, IMPLICIT)
] + [
    # APOP only on pop3s://: the STLS port's greeting carries no timestamp
    # (test_curl_apop_over_stls_finds_no_timestamp).
    pytest.param("+APOP", False, IMPLICIT, id="APOP-implicit"),
]


def _curl(daemon, password, mech, ir, tls):
    extra = ["-v"] + (["--sasl-ir"] if ir else [])
    return clients.curl(daemon, "alice", password, tls=tls, login_options=f"AUTH={mech}",
                        extra=extra, timeout=30)


@pytest.mark.parametrize("mech, ir, tls", CURL_CASES)
def test_curl_logs_in_and_fails_with_a_wrong_password(sasl_daemon, mech, ir, tls):
    logged = mech.lstrip("+")
    cursor = LogCursor(sasl_daemon)
    good = _curl(sasl_daemon, ALICE_PASSWORD, mech, ir, tls)
    assert good.returncode == 0, good.stderr.decode()[-1500:]
    assert good.stdout.strip().startswith(b"1 "), good.stdout      # the listing
    assert_logged_in(cursor, logged)
    sent = good.stderr.decode(errors="replace")
    command = "APOP alice " if logged == "APOP" else f"AUTH {logged}"
    lines = [ln for ln in sent.splitlines() if ln.startswith("> " + command)]
    assert len(lines) == 1, sent
    if logged != "APOP":
        # --sasl-ir: the first response is on the AUTH line (never for CRAM-MD5).
        has_ir = lines[0].strip() != f"> AUTH {logged}"
        assert has_ir == (ir and logged != "CRAM-MD5"), lines

    cursor = LogCursor(sasl_daemon)
    bad = _curl(sasl_daemon, WRONG_PASSWORD, mech, ir, tls)
    assert bad.returncode == 67, bad.stderr.decode()[-1500:]      # CURLE_LOGIN_DENIED
    assert b"-ERR [AUTH] Authentication failed" in bad.stderr
    assert_refused(cursor, logged)


def test_curl_apop_over_stls_finds_no_timestamp(sasl_daemon):
    """
    The STLS port's cleartext greeting carries no APOP timestamp, so curl
    (pop3:// with --ssl-reqd) has nothing to send APOP with: it never sends
    the digest, in clear or inside TLS, and no login is attempted.
    """
    cursor = LogCursor(sasl_daemon)
    r = _curl(sasl_daemon, ALICE_PASSWORD, "+APOP", False, STARTTLS)
    assert r.returncode == 67, r.stderr.decode()[-1500:]      # CURLE_LOGIN_DENIED
    sent = r.stderr.decode(errors="replace")
    assert not [ln for ln in sent.splitlines() if ln.startswith("> APOP")], sent
    assert "> STLS" in sent
    time.sleep(0.2)
    assert not cursor.events("auth.success") and not cursor.events("auth.failure")


def test_curl_refuses_a_server_it_cannot_verify(sasl_daemon):
    """Negative control for the TLS half: without the CA, curl must not log in."""
    cursor = LogCursor(sasl_daemon)
    r = clients.curl(sasl_daemon, "alice", ALICE_PASSWORD, tls=IMPLICIT,
                     login_options="AUTH=PLAIN", cacert=False, timeout=30)
    assert r.returncode == 60, r.stderr      # CURLE_PEER_FAILED_VERIFICATION
    assert not cursor.events("auth.success")


# -- fetchmail ----------------

def fetchmail_apop(daemon, password, workdir, tls):
    """fetchmail with C{proto apop} (clients.fetchmail always says proto pop3)."""
    exe = require_tool("fetchmail")
    workdir = Path(workdir)
    port = clients.port_for(daemon, tls)
    tls_opts = ("ssl " if tls == IMPLICIT else "") + \
        f"sslproto 'tls1.2+' sslcertck sslcertfile '{daemon.ca_file}' sslcommonname '{HOST}'"
    rc = workdir / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no bouncemail
        poll {HOST} via {ADDRESS} service {port} proto apop timeout 30
          user 'alice' there with password '{password}' is 'root' here
          {tls_opts}
          keep fetchall no rewrite
          mda 'cat > /dev/null'
        """))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir))
    return subprocess.run([exe, "-f", str(rc), "--nosyslog", "--invisible", "-v"],
                          capture_output=True, timeout=60, env=env)


def _fetchmail_sent(proc):
    return [ln.split("POP3> ", 1)[1] for ln in proc.stdout.decode(errors="replace").splitlines()
            if "POP3> " in ln]


def test_fetchmail_cram_md5(sasl_daemon, tmp_path):
    cursor = LogCursor(sasl_daemon)
    proc, messages = clients.fetchmail(sasl_daemon, "alice", ALICE_PASSWORD, tmp_path / "ok",
                                       tls=STARTTLS, auth="cram-md5", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(messages) >= 1 and b"hello" in messages[0]
    sent = _fetchmail_sent(proc)
    assert "STLS" in sent and "AUTH CRAM-MD5" in sent, sent
    assert_logged_in(cursor, "CRAM-MD5")

    cursor = LogCursor(sasl_daemon)
    proc, messages = clients.fetchmail(sasl_daemon, "alice", WRONG_PASSWORD, tmp_path / "bad",
                                       tls=STARTTLS, auth="cram-md5", timeout=60)
    assert proc.returncode == 3 and not messages, proc.stderr.decode()
    assert_refused(cursor, "CRAM-MD5")


def test_fetchmail_apop_over_implicit_tls(sasl_daemon, tmp_path):
    cursor = LogCursor(sasl_daemon)
    (tmp_path / "ok").mkdir()
    proc = fetchmail_apop(sasl_daemon, ALICE_PASSWORD, tmp_path / "ok", IMPLICIT)
    assert any(s.startswith("APOP alice ") for s in _fetchmail_sent(proc)), proc.stdout
    assert proc.returncode == 0, proc.stdout.decode()[-1500:]
    assert_logged_in(cursor, "APOP")

    cursor = LogCursor(sasl_daemon)
    (tmp_path / "bad").mkdir()
    proc = fetchmail_apop(sasl_daemon, WRONG_PASSWORD, tmp_path / "bad", IMPLICIT)
    assert proc.returncode == 3, proc.stdout.decode()[-1500:]
    assert_refused(cursor, "APOP")


def test_fetchmail_apop_before_tls_is_never_sent(sasl_daemon, tmp_path):
    """
    fetchmail's C{proto apop} sends no CAPA and so never STLS, even with
    C{sslproto tls1.2+}: on the STLS port it would send APOP in cleartext.
    The cleartext greeting carries no timestamp, so it has nothing to send.
    """
    cursor = LogCursor(sasl_daemon)
    proc = fetchmail_apop(sasl_daemon, ALICE_PASSWORD, tmp_path, STARTTLS)
    sent = _fetchmail_sent(proc)
    assert not any(s.startswith("APOP") for s in sent), sent
    said = (proc.stdout + proc.stderr).decode(errors="replace")
    assert "timestamp" in said.lower(), said[-1500:]
    assert proc.returncode == 3, said[-1500:]                  # AUTHFAIL
    time.sleep(0.2)
    assert not cursor.events("auth.success") and not cursor.events("auth.failure")


def test_fetchmail_ntlmv1_is_refused_by_default(sasl_daemon, tmp_path):
    cursor = LogCursor(sasl_daemon)
    proc, _ = clients.fetchmail(sasl_daemon, "alice", ALICE_PASSWORD, tmp_path,
                                tls=STARTTLS, auth="ntlm", timeout=60)
    assert "AUTH NTLM" in _fetchmail_sent(proc)
    assert proc.returncode == 3, proc.stdout.decode()[-1500:]
    # The user name is in the AUTHENTICATE message, but the refusal logs user=-
    # (see test_ntlmv1_refusal_names_the_user).
    assert_refused(cursor, "NTLM", user=None, reason="ntlmv1-refused", event="auth.refused")


def test_ntlmv1_refusal_names_the_user(sasl_daemon, tmp_path):
    cursor = LogCursor(sasl_daemon)
    clients.fetchmail(sasl_daemon, "alice", ALICE_PASSWORD, tmp_path, tls=STARTTLS,
                      auth="ntlm", timeout=60)
    assert_refused(cursor, "NTLM", user="alice", reason="ntlmv1-refused", event="auth.refused")


def test_fetchmail_ntlmv1_with_insecure_allow_ntlmv1(ntlmv1_daemon, tmp_path):
    cursor = LogCursor(ntlmv1_daemon)
    proc, _ = clients.fetchmail(ntlmv1_daemon, "alice", ALICE_PASSWORD, tmp_path / "ok",
                                tls=STARTTLS, auth="ntlm", timeout=60)
    assert "AUTH NTLM" in _fetchmail_sent(proc)
    assert proc.returncode in (0, 1), proc.stdout.decode()[-1500:]   # 1: no mail
    assert_logged_in(cursor, "NTLM")

    cursor = LogCursor(ntlmv1_daemon)
    proc, _ = clients.fetchmail(ntlmv1_daemon, "alice", WRONG_PASSWORD, tmp_path / "bad",
                                tls=STARTTLS, auth="ntlm", timeout=60)
    assert proc.returncode == 3, proc.stdout.decode()[-1500:]
    assert_refused(cursor, "NTLM", user=None)


# -- pyspnego: NTLMv2 with MIC ----------------

@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
@pytest.mark.parametrize("initial_response", [False, True], ids=["noir", "ir"])
def test_pyspnego_ntlmv2_with_mic(sasl_daemon, tls, initial_response):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        reply, authenticate = ntlm_login(conn, "alice", ALICE_PASSWORD, initial_response)
        assert reply.startswith(b"+OK Logged in"), reply
        facts = ntlm_fields(authenticate)
        assert facts["nt_response_len"] > 24                 # NTLMv2, not v1
        assert facts["av_flags"] & 0x2 and facts["mic"] != bytes(16)   # MIC present
        assert conn.command(b"STAT").startswith(b"+OK")
        assert conn.command(b"QUIT") == b"+OK Bye"
    assert_logged_in(cursor, "NTLM")

    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        reply, _ = ntlm_login(conn, "alice", WRONG_PASSWORD, initial_response)
        assert reply == b"-ERR [AUTH] Authentication failed"
        assert conn.command(b"STAT") == b"-ERR Command not valid in this state"
    assert_refused(cursor, "NTLM")


def test_ntlm_tampered_mic_is_refused(sasl_daemon):
    """The right password with a changed MIC: the server checks the MIC."""
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = ntlm_login(conn, "alice", ALICE_PASSWORD, tamper=flip_mic)
        assert reply == b"-ERR [AUTH] Authentication failed"
    assert_refused(cursor, "NTLM", user=None)


def test_ntlm_user_in_the_servers_own_domain_is_the_local_user(sasl_daemon):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = ntlm_login(conn, "SECUREPOP\\alice", ALICE_PASSWORD)
        assert reply.startswith(b"+OK Logged in"), reply
    assert_logged_in(cursor, "NTLM")


def test_ntlm_user_in_another_domain_is_refused(sasl_daemon):
    """Negative twin: strip_domain is off, so OTHER\\alice is not alice."""
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = ntlm_login(conn, "OTHER\\alice", ALICE_PASSWORD)
        assert reply == b"-ERR [AUTH] Authentication failed"
    assert cursor.wait("auth.failure", mechanism="NTLM", user="OTHER\\alice",
                       reason="foreign-domain"), \
        cursor.text()[-1000:]
    assert not cursor.events("auth.success")


def test_ntlm_unknown_user_is_refused(sasl_daemon):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = ntlm_login(conn, "mallory", ALICE_PASSWORD)
        assert reply == b"-ERR [AUTH] Authentication failed"
    assert cursor.wait("auth.failure", mechanism="NTLM")
    assert not cursor.events("auth.success")


# -- SCRAM-SHA-256 and -PLUS ----------------

@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
def test_scram_sha_256(sasl_daemon, tls):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        assert b"SCRAM-SHA-256" in b" ".join(conn.capa())
        reply, server_ok = scram_login(conn, "alice", ALICE_PASSWORD)
        assert reply.startswith(b"+OK Logged in"), reply
        assert server_ok is True             # the server proved it knows the keys
    assert_logged_in(cursor, "SCRAM-SHA-256")

    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        reply, server_ok = scram_login(conn, "alice", WRONG_PASSWORD)
        assert reply == b"-ERR [AUTH] Authentication failed" and server_ok is None
    # user=- in the log: see test_scram_failure_names_the_user.
    assert_refused(cursor, "SCRAM-SHA-256", user=None, reason="bad-credentials")


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
def test_scram_sha_256_plus_tls_server_end_point(sasl_daemon, tls):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        sasl = [c for c in conn.capa() if c.startswith(b"SASL ")]
        assert sasl and b"SCRAM-SHA-256-PLUS" in sasl[0].split(), sasl
        reply, server_ok = scram_login(conn, "alice", ALICE_PASSWORD, plus=True)
        assert reply.startswith(b"+OK Logged in"), reply
        assert server_ok is True
    assert_logged_in(cursor, "SCRAM-SHA-256-PLUS")

    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        reply, _ = scram_login(conn, "alice", WRONG_PASSWORD, plus=True)
        assert reply == b"-ERR [AUTH] Authentication failed"
    assert_refused(cursor, "SCRAM-SHA-256-PLUS", user=None, reason="bad-credentials")


def test_scram_failure_names_the_user(sasl_daemon):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = scram_login(conn, "alice", WRONG_PASSWORD)
        assert reply == b"-ERR [AUTH] Authentication failed"
    assert_refused(cursor, "SCRAM-SHA-256", user="alice")


def test_scram_plus_with_another_channel_is_refused(sasl_daemon):
    """The right password bound to another TLS channel (a MITM's): refused."""
    other = hashlib.sha256(b"another server's certificate").digest()
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = scram_login(conn, "alice", ALICE_PASSWORD, plus=True, binding_data=other)
        assert reply.startswith(b"-ERR"), reply
    assert cursor.wait("auth.failure", mechanism="SCRAM-SHA-256-PLUS")
    assert not cursor.events("auth.success")


def test_scram_downgrade_flag_is_refused(sasl_daemon):
    """GS2 'y': the client could bind but thinks the server cannot, though -PLUS is offered."""
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        reply, _ = scram_login(conn, "alice", ALICE_PASSWORD, gs2=b"y,,")
        assert reply.startswith(b"-ERR"), reply
    assert cursor.wait("auth.failure", mechanism="SCRAM-SHA-256")
    assert not cursor.events("auth.success")


# -- poplib ----------------

@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
def test_poplib_user_pass(sasl_daemon, tls):
    cursor = LogCursor(sasl_daemon)
    client = clients.pop3(sasl_daemon, tls, "alice", ALICE_PASSWORD)
    try:
        assert client.stat()[0] >= 1
    finally:
        client.quit()
    assert_logged_in(cursor, "USER")

    cursor = LogCursor(sasl_daemon)
    with pytest.raises(poplib.error_proto, match=r"Authentication failed"):
        clients.pop3(sasl_daemon, tls, "alice", WRONG_PASSWORD)
    assert_refused(cursor, "USER")


@pytest.mark.parametrize("tls", [IMPLICIT])   # STLS: no timestamp (test_hardening_wire)
def test_poplib_apop(sasl_daemon, tls):
    cursor = LogCursor(sasl_daemon)
    client = clients.pop3(sasl_daemon, tls)
    try:
        assert re.search(rb"<[^<>@]+@localhost>", client.getwelcome())
        client.apop("alice", ALICE_PASSWORD)
        assert client.stat()[0] >= 1
    finally:
        client.quit()
    assert_logged_in(cursor, "APOP")

    cursor = LogCursor(sasl_daemon)
    client = clients.pop3(sasl_daemon, tls)
    try:
        with pytest.raises(poplib.error_proto, match=r"Authentication failed"):
            client.apop("alice", WRONG_PASSWORD)
    finally:
        client.close()
    assert_refused(cursor, "APOP")


def test_apop_timestamp_is_fresh_per_connection(sasl_daemon):
    stamps = set()
    for _ in range(3):
        with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
            m = re.search(rb"<([0-9a-f]+)\.\d+@localhost>", conn.greeting)
            assert m and len(m.group(1)) >= 16, conn.greeting
            stamps.add(m.group(0))
    assert len(stamps) == 3


# -- mutt ----------------

def run_mutt(daemon, password, workdir, authenticators="cram-md5"):
    """
    mutt with a terminal (C{script}), STLS required, the daemon's CA; it
    opens the POP mailbox and quits at once.
    """
    script = require_tool("script")
    mutt = require_tool("mutt")
    workdir = Path(workdir)
    (workdir / "mail").mkdir(parents=True, exist_ok=True)
    rc = workdir / "muttrc"
    rc.write_text(textwrap.dedent(f"""\
        set pop_user="alice"
        set pop_pass="{password}"
        set pop_authenticators="{authenticators}"
        set pop_auth_try_all=no
        set ssl_starttls=yes
        set ssl_force_tls=yes
        set ssl_ca_certificates_file="{daemon.ca_file}"
        set certificate_file="{workdir}/certificates"
        set folder="{workdir}/mail"
        set spoolfile=""
        set record=""
        set postponed=""
        set header_cache=""
        set message_cachedir=""
        set mail_check=0
        set timeout=1
        """))
    command = (f"{mutt} -n -F {rc} -f pop://alice@{HOST}:{daemon.pop3_port}/ "
               "-e 'push <quit>'")
    env = dict(os.environ, TERM="xterm", HOME=str(workdir))
    return subprocess.run([script, "-qc", command, "/dev/null"], capture_output=True,
                          timeout=15, env=env, stdin=subprocess.DEVNULL)


def test_mutt_cram_md5_over_stls(sasl_daemon, tmp_path):
    cursor = LogCursor(sasl_daemon)
    proc = run_mutt(sasl_daemon, ALICE_PASSWORD, tmp_path / "ok")
    screen = proc.stdout.decode(errors="replace")
    assert "Authenticating (CRAM-MD5)" in screen, screen[-1500:]
    assert "[Msgs:" in screen, screen[-1500:]
    assert_logged_in(cursor, "CRAM-MD5")
    assert all(e["tls"] == "True" for e in cursor.events("auth.success"))

    cursor = LogCursor(sasl_daemon)
    proc = run_mutt(sasl_daemon, WRONG_PASSWORD, tmp_path / "bad")
    screen = proc.stdout.decode(errors="replace")
    assert "authentication failed" in screen.lower(), screen[-1500:]
    assert "[Msgs:" not in screen
    assert_refused(cursor, "CRAM-MD5")
