"""
Tests for L{securepop.audit.pop3client}: URL parsing, response parsing and
the bounded reader, over an in-kernel socket pair (no network).
"""

import socket
import threading

import pytest
from OpenSSL import SSL

from securepop.audit.pop3client import (
    MAX_LINE,
    MAX_LINES,
    BudgetExhausted,
    ConnectionClosed,
    POP3Probe,
    ProbeBudget,
    ProbeError,
    ProbeTimeout,
    Response,
    Target,
    TLSChannel,
    isIPAddress,
    parseCapabilities,
    parseStatusLine,
    parseURL,
)
from securepop.audit.tlsprobe import handshakeFacts, makeContext

from tests.unit.audit_certificates import makeCertificate, serverContext


# -- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("pop3://mail.example.com", Target("pop3", "mail.example.com", 110)),
    ("pop3s://mail.example.com", Target("pop3s", "mail.example.com", 995)),
    ("POP3://127.0.0.1:1110", Target("pop3", "127.0.0.1", 1110)),
    ("pop3s://[::1]:1995/", Target("pop3s", "::1", 1995)),
])
def test_parse_url_accepts(url, expected):
    assert parseURL(url) == expected


def test_implicit_tls_only_for_pop3s():
    assert parseURL("pop3s://h").implicitTLS
    assert not parseURL("pop3://h").implicitTLS


@pytest.mark.parametrize("url", [
    "imap://mail.example.com", "http://x", "mail.example.com", "pop3://",
    "pop3://alice:secret@mail.example.com", "pop3://alice@mail.example.com",
    "pop3://h/INBOX", "pop3://h?x=1", "pop3://h#f", "pop3://h:99999",
    "pop3://h:abc", "pop3://" + "a" * 2000, "pop3://h\r\nQUIT", None, b"pop3://h",
])
def test_parse_url_refuses(url):
    with pytest.raises(ValueError):
        parseURL(url)


def test_parse_url_never_echoes_credentials():
    with pytest.raises(ValueError) as e:
        parseURL("pop3://alice:s3cr3t@h")
    assert "s3cr3t" not in str(e.value)


# -- responses -------------------------------------------------------------------


def test_parse_status_line():
    assert parseStatusLine(b"+OK ready") == Response("+OK", "ready")
    assert parseStatusLine(b"+OK") == Response("+OK", "")
    assert parseStatusLine(b"-ERR [AUTH] no") == Response("-ERR", "[AUTH] no")
    assert parseStatusLine(b"+ ") == Response("+", "")
    assert parseStatusLine(b"+ VXNlcm5hbWU6").continuation
    assert parseStatusLine(b"+OKAY").status == "?"
    assert parseStatusLine(b"hello").status == "?"
    assert parseStatusLine(b"-ERRx").status == "?"


def test_parse_status_line_hostile_bytes():
    response = parseStatusLine(b"+OK \xff\xfe\x00\x1b[2J")
    assert response.ok
    assert "\ufffd" in response.text


def test_response_code():
    assert Response("-ERR", "[AUTH] no").code == "AUTH"
    assert Response("-ERR", "[sys/temp] later").code == "SYS/TEMP"
    assert Response("-ERR", "no code").code is None
    assert Response("-ERR", "[]").code is None
    assert Response("-ERR", "[" + "A" * 100 + "]").code is None


def test_parse_capabilities():
    caps = parseCapabilities(["TOP", "SASL plain Login", "STLS", "", "IMPLEMENTATION x y"])
    assert caps["SASL"] == ("PLAIN", "LOGIN")
    assert caps["STLS"] == ()
    assert caps["IMPLEMENTATION"] == ("x", "y")
    assert "" not in caps


def test_parse_capabilities_bounded():
    caps = parseCapabilities([f"X{i}" for i in range(MAX_LINES + 50)])
    assert len(caps) == MAX_LINES


def test_is_ip_address():
    assert isIPAddress("127.0.0.1") and isIPAddress("::1")
    assert not isIPAddress("localhost") and not isIPAddress("1.2.3")


# -- budget ----------------------------------------------------------------------


def test_budget_limits_connections():
    budget = ProbeBudget(maxConnections=2)
    budget.spend()
    budget.spend()
    with pytest.raises(BudgetExhausted):
        budget.spend()


def test_budget_limits_time():
    budget = ProbeBudget(maxConnections=10, maxSeconds=5.0, started=0.0)
    with pytest.raises(BudgetExhausted):
        budget.spend()


# -- the reader over a socket pair -------------------------------------------------


@pytest.fixture
def pair():
    client, server = socket.socketpair()
    probe = POP3Probe(Target("pop3", "localhost", 110), timeout=2.0)
    probe.sock = client
    yield probe, server
    client.close()
    server.close()


def test_read_response_multiline(pair):
    probe, server = pair
    server.sendall(b"+OK caps\r\nTOP\r\n..dotted\r\nSASL PLAIN\r\n.\r\n+OK next\r\n")
    response = probe.readResponse(multiline=True)
    assert response.ok and response.lines == ("TOP", ".dotted", "SASL PLAIN")
    assert probe.readResponse().text == "next"


def test_multiline_error_has_no_body(pair):
    probe, server = pair
    server.sendall(b"-ERR no\r\n+OK after\r\n")
    assert probe.readResponse(multiline=True) == Response("-ERR", "no")
    assert probe.readResponse().ok


def test_command_sends_one_line(pair):
    probe, server = pair
    server.sendall(b"+OK\r\n")
    probe.command("NOOP")
    assert server.recv(100) == b"NOOP\r\n"
    with pytest.raises(ValueError):
        probe.command("NOOP\r\nQUIT")


def test_overlong_line_refused(pair):
    probe, server = pair
    server.sendall(b"+OK " + b"x" * (MAX_LINE + 10))
    with pytest.raises(ProbeError):
        probe.readLine()


def test_endless_multiline_refused(pair):
    probe, server = pair
    server.sendall(b"+OK\r\n" + b"line\r\n" * (MAX_LINES + 5))
    with pytest.raises(ProbeError):
        probe.readResponse(multiline=True)


def test_close_before_line(pair):
    probe, server = pair
    server.sendall(b"+OK partial")
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed):
        probe.readLine()


def test_silent_server_times_out(pair):
    probe, server = pair
    with pytest.raises(ProbeTimeout):
        probe.readLine(timeout=0.05)


def test_poll_data_collects_unsolicited_bytes(pair):
    probe, server = pair
    server.sendall(b"+OK surprise\r\n")
    assert probe.pollData(0.5) == b"+OK surprise\r\n"
    assert probe.pollData(0.05) == b""


def test_start_tls_hands_back_clear_leftovers(pair):
    """Bytes buffered after the STLS answer are returned, not fed to TLS."""
    probe, server = pair
    server.sendall(b"+OK begin\r\n-ERR injected\r\n")
    assert probe.readResponse().ok
    assert probe.buffer == b"-ERR injected\r\n"


# -- TLS over memory BIOs ----------------------------------------------------------


def _serveTLS(sock, context, reply):
    conn = SSL.Connection(context, sock)
    conn.set_accept_state()
    try:
        conn.do_handshake()
        conn.sendall(reply)
        conn.shutdown()
    except SSL.Error:
        pass


def test_tls_channel_handshake_and_read(tmp_path):
    certificate, key = makeCertificate()
    client, server = socket.socketpair()
    thread = threading.Thread(
        target=_serveTLS, args=(server, serverContext(certificate, key), b"+OK tls\r\n"))
    thread.start()
    try:
        channel = TLSChannel(client, makeContext(), "localhost", timeout=5.0)
        channel.handshake()
        facts = handshakeFacts(channel)
        assert facts.version.startswith("TLS")
        assert facts.bits >= 128
        assert facts.chain[0].subject == certificate.subject
        assert channel.recv(100, 5.0) == b"+OK tls\r\n"
        assert channel.recv(100, 5.0) == b""
    finally:
        thread.join(5)
        client.close()
        server.close()


def test_tls_channel_handshake_with_non_tls_peer():
    client, server = socket.socketpair()
    server.sendall(b"-ERR this is not TLS at all, sorry\r\n" * 4)
    server.shutdown(socket.SHUT_WR)
    try:
        with pytest.raises(ProbeError):
            TLSChannel(client, makeContext(), "localhost", timeout=2.0).handshake()
    finally:
        client.close()
        server.close()
