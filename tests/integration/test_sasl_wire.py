"""
What crosses the wire during login, and
hostile input on AUTH.

The article's check, automated: with Basic authentication off, USER/PASS is
neither advertised nor accepted, and a tcpdump capture of an NTLM login on a
test-only cleartext listener holds neither the password nor its NT hash.  The
same capture of PLAIN and USER/PASS logins does hold them: the check can fail.

Hostile AUTH input (bad base64, overlong continuation, cancel, unknown
mechanism, the empty initial response, NULs, a foreign authzid) gets exactly
one -ERR, and the same connection and other clients go on being served.
"""

from __future__ import annotations

import base64
import os
import re
import select
import signal
import subprocess
import time

import pytest

from tests.integration import clients
from tests.integration.clients import IMPLICIT, PLAIN, STARTTLS
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import require_tool, wait_for_port
from tests.integration.test_sasl_clients import (
    LogCursor, SourcePOP3, auth_plain, b64, nt_hash, ntlm_login, sasl_daemon_for,
)

WIRE_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{{data_dir}}"
idle_timeout_login = 30
[[listen]]
endpoint = "tcp:{{pop3_port}}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{{pop3s_port}}:interface=127.0.0.1"
tls = "implicit"
[[listen]]
endpoint = "tcp:{{port3}}:interface=127.0.0.1"
tls = "none"
insecure_allow_cleartext = true
[auth]
mechanisms = {mechanisms}
user_pass = {user_pass}
apop = false
failure_delay = 0.2
failure_delay_max = 1.0
max_attempts = 3
[access]
max_connections_per_ip = 200
"""

#: Basic off, only challenge-response mechanisms: the article's second level.
ARTICLE_CONFIG = WIRE_CONFIG.format(mechanisms='["NTLM", "CRAM-MD5", "SCRAM-SHA-256"]',
                                    user_pass="false")
#: The negative control: Basic on, PLAIN offered, the same cleartext listener.
CONTROL_CONFIG = WIRE_CONFIG.format(mechanisms='["PLAIN", "NTLM"]', user_pass="true")


def _wire_daemon(daemon_factory, config, name):
    d = daemon_factory(config, users=(("alice", ALICE_PASSWORD),), name=name)
    wait_for_port("127.0.0.1", d.ports["port3"], proc=d.proc)
    d.cleartext_port = d.ports["port3"]
    return d


@pytest.fixture(scope="module")
def article_daemon(daemon_factory):
    return _wire_daemon(daemon_factory, ARTICLE_CONFIG, "article")


@pytest.fixture(scope="module")
def control_daemon(daemon_factory):
    return _wire_daemon(daemon_factory, CONTROL_CONFIG, "control")


@pytest.fixture(scope="module")
def sasl_daemon(daemon_factory):
    return sasl_daemon_for(daemon_factory)


def sasl_line(capabilities):
    found = [c for c in capabilities if c.startswith(b"SASL")]
    assert len(found) <= 1, capabilities
    return found[0].split()[1:] if found else []


# -- Basic authentication off ----------------

def test_basic_off_is_not_advertised(article_daemon):
    with SourcePOP3(article_daemon, PLAIN) as conn:          # before STLS
        caps = conn.capa()
        assert b"STLS" in caps and b"USER" not in caps and not sasl_line(caps), caps
    for tls in (STARTTLS, IMPLICIT):
        with SourcePOP3(article_daemon, tls) as conn:
            caps = conn.capa()
            assert b"USER" not in caps and b"STLS" not in caps, caps
            assert sasl_line(caps) == [b"NTLM", b"CRAM-MD5", b"SCRAM-SHA-256"], caps
            assert conn.command(b"AUTH") == b"+OK Supported mechanisms follow"
            assert conn.multiline() == [b"NTLM", b"CRAM-MD5", b"SCRAM-SHA-256"]


def test_basic_on_is_advertised(control_daemon):
    """Negative twin: the same check sees USER and PLAIN when Basic is on."""
    with SourcePOP3(control_daemon, STARTTLS) as conn:
        caps = conn.capa()
        assert b"USER" in caps and b"PLAIN" in sasl_line(caps), caps


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
def test_basic_off_is_not_accepted(article_daemon, tls):
    cursor = LogCursor(article_daemon)
    with SourcePOP3(article_daemon, tls) as conn:
        assert conn.command(b"USER alice") == b"-ERR USER/PASS authentication is disabled"
        assert conn.command(b"PASS " + ALICE_PASSWORD.encode()).startswith(b"-ERR")
        assert auth_plain(conn, "alice", ALICE_PASSWORD) == \
            b"-ERR [AUTH] Authentication mechanism not available"
        assert conn.command(b"AUTH LOGIN") == \
            b"-ERR [AUTH] Authentication mechanism not available"
        assert conn.command(b"STAT") == b"-ERR Command not valid in this state"
        # A challenge-response login still works on the same connection.
        reply, _ = ntlm_login(conn, "alice", ALICE_PASSWORD)
        assert reply.startswith(b"+OK Logged in"), reply
    assert [e["mechanism"] for e in cursor.wait("auth.success")] == ["NTLM"]


def test_poplib_user_is_refused_and_curl_picks_a_challenge_response(article_daemon):
    import poplib

    client = clients.pop3(article_daemon, IMPLICIT)
    try:
        with pytest.raises(poplib.error_proto, match="USER/PASS authentication is disabled"):
            client.user("alice")
    finally:
        client.close()
    cursor = LogCursor(article_daemon)
    r = clients.curl(article_daemon, "alice", ALICE_PASSWORD, tls=STARTTLS, timeout=30)
    assert r.returncode == 0, r.stderr
    hits = cursor.wait("auth.success")
    assert hits and hits[0]["mechanism"] in ("NTLM", "CRAM-MD5", "SCRAM-SHA-256"), hits


def test_cleartext_listener_offers_only_challenge_response(article_daemon):
    with SourcePOP3(article_daemon, PLAIN, port=article_daemon.cleartext_port) as conn:
        caps = conn.capa()
        assert b"STLS" not in caps and b"USER" not in caps, caps
        assert sasl_line(caps) == [b"NTLM", b"CRAM-MD5", b"SCRAM-SHA-256"], caps
        assert conn.command(b"STLS") == b"-ERR STLS not available"


def test_cleartext_listener_of_the_control_offers_plain(control_daemon):
    """Negative twin: with cleartext explicitly allowed, PLAIN and USER are offered."""
    with SourcePOP3(control_daemon, PLAIN, port=control_daemon.cleartext_port) as conn:
        caps = conn.capa()
        assert b"USER" in caps and sasl_line(caps) == [b"PLAIN", b"NTLM"], caps


def test_without_the_insecure_switch_no_credentials_before_tls(article_daemon):
    """The STLS port (no insecure_allow_cleartext) takes no login before TLS."""
    with SourcePOP3(article_daemon, PLAIN) as conn:
        assert conn.command(b"AUTH NTLM") == \
            b"-ERR [AUTH] Authentication requires TLS: use STLS first"


# -- the wire capture ----------------

class Capture:
    """
    tcpdump on the loopback interface for one TCP port (root only).  Ready
    when tcpdump says it is listening; stopped with SIGINT so it flushes.
    """

    def __init__(self, port, path):
        tcpdump = require_tool("tcpdump")
        if os.geteuid() != 0:
            if os.environ.get("CI") == "true":
                pytest.fail("tcpdump capture needs root")
            pytest.skip("tcpdump capture needs root")
        self.path = path
        # -Z root: the pcap is written into a root-only temporary directory.
        self.proc = subprocess.Popen(
            [tcpdump, "-i", "lo", "-U", "--immediate-mode", "-Z", "root", "-s", "0",
             "-w", str(path), f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        banner = b""
        while b"listening on" not in banner:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"tcpdump did not start: {banner!r}")
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                banner += os.read(self.proc.stderr.fileno(), 4096)

    def stop(self) -> bytes:
        time.sleep(0.2)        # the last segments (QUIT, FIN) reach the capture
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=10)
        return self.path.read_bytes()


def _decoded_base64_runs(data: bytes) -> bytes:
    """
    Every base64-looking run in the capture, decoded (what an eavesdropper
    does).  A run may start with a header byte that happens to be a base64
    letter, so every one of the four alignments is decoded.
    """
    out = []
    for run in re.findall(rb"[A-Za-z0-9+/]{8,}={0,2}", data):
        for skip in range(4):
            piece = run[skip:]
            piece = piece[:len(piece) - len(piece) % 4]
            try:
                out.append(base64.b64decode(piece))
            except ValueError:
                pass
    return b"\n".join(out)


def secrets_in(capture: bytes, password: str):
    """Which forms of the password (or its NT hash) the capture reveals."""
    digest = nt_hash(password)
    forms = {
        "password utf-8": password.encode(),
        "password utf-16le": password.encode("utf-16-le"),
        "password base64": base64.b64encode(password.encode()),
        "nt hash raw": digest,
        "nt hash hex": digest.hex().encode(),
        "nt hash HEX": digest.hex().upper().encode(),
    }
    haystack = capture + b"\n" + _decoded_base64_runs(capture)
    return sorted(name for name, form in forms.items() if form in haystack)


def test_ntlm_login_on_the_wire_reveals_neither_password_nor_nt_hash(article_daemon,
                                                                          tmp_path):
    port = article_daemon.cleartext_port
    cursor = LogCursor(article_daemon)
    capture = Capture(port, tmp_path / "ntlm.pcap")
    try:
        with SourcePOP3(article_daemon, PLAIN, port=port) as conn:
            reply, _ = ntlm_login(conn, "alice", ALICE_PASSWORD)
            assert reply.startswith(b"+OK Logged in"), reply
            assert conn.command(b"QUIT") == b"+OK Bye"
    finally:
        data = capture.stop()
    # The capture did see the login, in cleartext...
    assert b"AUTH NTLM" in data and b"+OK Logged in" in data, data[-500:]
    assert b"NTLMSSP\x00\x03" in _decoded_base64_runs(data)          # the AUTHENTICATE
    assert "alice".encode("utf-16-le") in _decoded_base64_runs(data)  # names the user
    # ...and holds no form of the secret.
    assert secrets_in(data, ALICE_PASSWORD) == []
    assert [e["mechanism"] for e in cursor.wait("auth.success")] == ["NTLM"]
    assert [e["tls"] for e in cursor.events("auth.success")] == ["False"]


def test_plain_and_user_pass_on_the_wire_do_reveal_the_password(control_daemon, tmp_path):
    """The same capture and scan on Basic logins: the check is able to fail."""
    port = control_daemon.cleartext_port
    capture = Capture(port, tmp_path / "plain.pcap")
    try:
        with SourcePOP3(control_daemon, PLAIN, port=port) as conn:
            assert auth_plain(conn, "alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
            assert conn.command(b"QUIT") == b"+OK Bye"
        with SourcePOP3(control_daemon, PLAIN, port=port) as conn:
            assert conn.login("alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
            assert conn.command(b"QUIT") == b"+OK Bye"
    finally:
        data = capture.stop()
    credentials = b64(b"\0alice\0" + ALICE_PASSWORD.encode())
    assert credentials in data
    assert b"PASS " + ALICE_PASSWORD.encode() in data
    assert "password utf-8" in secrets_in(data, ALICE_PASSWORD)


def test_plain_alone_is_caught_by_the_scan(control_daemon, tmp_path):
    """Only base64 on the wire (no USER/PASS): the decoding scan still finds it."""
    port = control_daemon.cleartext_port
    capture = Capture(port, tmp_path / "plain-only.pcap")
    try:
        with SourcePOP3(control_daemon, PLAIN, port=port) as conn:
            assert auth_plain(conn, "alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
            assert conn.command(b"QUIT") == b"+OK Bye"
    finally:
        data = capture.stop()
    assert ALICE_PASSWORD.encode() not in data          # not there as such...
    assert secrets_in(data, ALICE_PASSWORD) == ["password utf-8"]   # ...but decoded


# -- hostile input on AUTH ----------------

MALFORMED = b"-ERR [AUTH] Malformed authentication data"
FAILED = b"-ERR [AUTH] Authentication failed"
UNAVAILABLE = b"-ERR [AUTH] Authentication mechanism not available"
CANCELLED = b"-ERR [AUTH] Authentication cancelled"
def _plain(text: str) -> bytes:
    return b64(text.encode())


def case(name, *steps, marks=()):
    """One hostile exchange: (line sent, reply expected, or a prefix ending in '*')..."""
    return pytest.param(list(steps), id=name, marks=marks)


HOSTILE = [
    case("bad-base64-continuation", (b"AUTH PLAIN", b"+ "), (b"!!not*base64!!", MALFORMED)),
    case("bad-base64-initial", (b"AUTH PLAIN AGFsaWNl!!", MALFORMED)),
    case("base64-bad-padding", (b"AUTH PLAIN AGFsaWNlAA=", MALFORMED)),
    # An overlong AUTH continuation ends the exchange with one -ERR, no traceback.
    case("overlong-continuation", (b"AUTH LOGIN", b"+ VXNlcm5hbWU6"),
         (b"QUFB" * 2300, MALFORMED)),
    case("overlong-continuation-in-pieces", (b"AUTH NTLM", b"+ "),
         (b"QUFB" * 5000, MALFORMED)),
    case("overlong-initial-response", (b"AUTH PLAIN " + b"QUFB" * 80, b"-ERR Line too long")),
    case("cancel-at-once", (b"AUTH LOGIN", b"+ VXNlcm5hbWU6"), (b"*", CANCELLED)),
    case("cancel-after-user", (b"AUTH LOGIN", b"+ VXNlcm5hbWU6"),
         (_plain("alice"), b"+ UGFzc3dvcmQ6"), (b"*", CANCELLED)),
    case("cancel-ntlm", (b"AUTH NTLM", b"+ "), (b"*", CANCELLED)),
    case("unknown-mechanism", (b"AUTH X-UNKNOWN", UNAVAILABLE)),
    case("unknown-mechanism-with-ir", (b"AUTH GSSAPI " + _plain("x"), UNAVAILABLE)),
    case("empty-initial-response-plain", (b"AUTH PLAIN =", b"-ERR*")),
    case("empty-initial-response-login", (b"AUTH LOGIN =", b"-ERR*")),
    case("empty-response-plain", (b"AUTH PLAIN", b"+ "), (b"=", b"-ERR*")),
    case("nul-inside-user", (b"AUTH PLAIN " + _plain(f"\0al\0ice\0{ALICE_PASSWORD}"), b"-ERR*")),
    case("nul-inside-password", (b"AUTH PLAIN " + _plain("\0alice\0Correct\0-Horse-7"), b"-ERR*")),
    case("nul-only", (b"AUTH PLAIN " + _plain("\0\0"), b"-ERR*")),
    case("no-nul", (b"AUTH PLAIN " + _plain(f"alice {ALICE_PASSWORD}"), b"-ERR*")),
    case("nul-in-login-user", (b"AUTH LOGIN " + _plain("ali\0ce"), b"-ERR*")),
    case("other-authzid", (b"AUTH PLAIN " + _plain(f"bob\0alice\0{ALICE_PASSWORD}"), b"-ERR*")),
    case("nul-on-the-command-line", (b"AUTH PLAIN\0", b"-ERR Syntax error in arguments")),
    case("three-arguments", (b"AUTH PLAIN x y", b"-ERR Syntax error in arguments")),
    case("not-utf8-user", (b"AUTH PLAIN " + b64(b"\0\xff\xfe\0pw"), b"-ERR*")),
    case("cram-md5-garbage", (b"AUTH CRAM-MD5", b"+ *"), (_plain("alice nothex"), b"-ERR*")),
    case("ntlm-garbage", (b"AUTH NTLM", b"+ "), (_plain("NTLMSSP\0\x01\0\0\0"), b"-ERR*")),
    case("scram-garbage", (b"AUTH SCRAM-SHA-256 " + _plain("x,y"), b"-ERR*")),
]


def _matches(reply, expected):
    if expected.endswith(b"*"):
        return reply.startswith(expected[:-1])
    return reply == expected


@pytest.mark.parametrize("steps", HOSTILE)
def test_hostile_auth_gets_one_error_and_service_goes_on(sasl_daemon, steps):
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        for line, expected in steps:
            reply = conn.command(line)
            assert _matches(reply, expected), (line[:60], reply)
        # Exactly one -ERR: the next line answers the next command, and the
        # connection still takes a login.
        assert auth_plain(conn, "alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
        assert conn.command(b"QUIT") == b"+OK Bye"
    clients.still_serving(sasl_daemon, "alice", ALICE_PASSWORD)
    log = cursor.text()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    assert ALICE_PASSWORD not in log


def test_hostile_auth_never_logs_a_credential(sasl_daemon):
    """After everything above: no password, in any form, in the daemon's log."""
    log = sasl_daemon.log().encode()
    assert secrets_in(log, ALICE_PASSWORD) == []
