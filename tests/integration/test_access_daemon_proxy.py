"""
The real daemon behind HAProxy (send-proxy-v2 and send-proxy v1) with
C{[access] trusted_proxies}: rules, limits and logs see the original client
address; STLS and implicit TLS work through the proxy; a PROXY header from
an untrusted peer is only a bad command after the greeting.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.fixtures_haproxy import Frontend, HAProxyServer, missingTools
from tests.integration.test_access_daemon import (
    DECLINE_LINE,
    TOO_MANY,
    SourcePOP3,
    SourcePOP3SSL,
    accessConfig,
    connect,
    readAll,
    rulesText,
    tlsContext,
)

PROXY = "127.0.0.1"          # haproxy's source towards the daemons
ALLOWED = "127.0.0.50"       # allowed by the rule 127.0.0.50/31
ALLOWED_TOO = "127.0.0.51"
DECLINED = "127.0.0.52"


def requireTools():
    missing = missingTools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


@pytest.fixture(scope="session")
def proxied_daemon(daemon_factory):
    """Trusts 127.0.0.1 (haproxy); allows only 127.0.0.50/31; 3 per address."""
    requireTools()
    config = accessConfig(
        'mode = "allow-listed"', rulesText(["127.0.0.50/31"]),
        f'trusted_proxies = ["{PROXY}/32"]', "max_connections_per_ip = 3")
    return daemon_factory(config, users=(("alice", ALICE_PASSWORD),), name="proxied")


@pytest.fixture(scope="session")
def untrusting_daemon(daemon_factory):
    """Trusts only 127.0.0.3, so haproxy's headers are not honoured; declines .52."""
    requireTools()
    config = accessConfig(
        'mode = "deny-listed"', rulesText([DECLINED]), 'trusted_proxies = ["127.0.0.3/32"]')
    return daemon_factory(config, users=(), name="untrusting")


@pytest.fixture(scope="session")
def haproxy(proxied_daemon, untrusting_daemon, tmp_path_factory):
    server = HAProxyServer(
        tmp_path_factory.mktemp("access-haproxy"),
        [
            Frontend("v2", proxied_daemon.pop3_port, proxy="v2", source=PROXY),
            Frontend("v1", proxied_daemon.pop3_port, proxy="v1", source=PROXY),
            Frontend("v2tls", proxied_daemon.pop3s_port, proxy="v2", source=PROXY),
            Frontend("untrusted-v1", untrusting_daemon.pop3_port, proxy="v1", source=PROXY),
            Frontend("untrusted-v2", untrusting_daemon.pop3_port, proxy="v2", source=PROXY),
        ],
    ).start()
    yield server
    server.stop()


def lines(data):
    return data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n")


@pytest.mark.parametrize("frontend", ["v2", "v1"])
def test_rules_and_log_see_original_client(haproxy, proxied_daemon, frontend):
    d = proxied_daemon
    start = len(d.log())
    with connect(haproxy.port(frontend), ALLOWED) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK ")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline() == b"+OK Bye\r\n"
    assert d.wait_log(f"session.end ip={ALLOWED} ", start=start)
    # the same proxy, a client the rules decline: only the decline line
    with connect(haproxy.port(frontend), DECLINED) as sock:
        assert readAll(sock) == DECLINE_LINE + b"\r\n"
    assert d.wait_log(f"access.declined ip={DECLINED} ", start=start)
    assert f"ip={PROXY} " not in d.log()[start:]


def test_per_address_limit_counts_original_client(haproxy, proxied_daemon):
    d = proxied_daemon
    port = haproxy.port("v2")
    start = len(d.log())
    held = []
    try:
        for _ in range(3):
            sock = connect(port, ALLOWED)
            assert sock.makefile("rb").readline().startswith(b"+OK ")
            held.append(sock)
        with connect(port, ALLOWED) as sock:
            assert readAll(sock).startswith(TOO_MANY)
        # another client behind the same proxy is not counted with it
        with connect(port, ALLOWED_TOO) as sock:
            assert sock.makefile("rb").readline().startswith(b"+OK ")
    finally:
        for sock in held:
            sock.close()
    assert d.wait_log(f"access.limit ip={ALLOWED} limit=max_connections_per_ip", start=start)


def test_stls_through_haproxy_v2(haproxy, proxied_daemon):
    d = proxied_daemon
    start = len(d.log())
    client = SourcePOP3("127.0.0.1", haproxy.port("v2"), ALLOWED)
    try:
        assert client.stls(tlsContext(d)).startswith(b"+OK")
        client.user("alice")
        assert client.pass_(ALICE_PASSWORD).startswith(b"+OK")
        assert client.stat()[0] >= 0
    finally:
        client.quit()
    assert d.wait_log(f"tls.starttls ip={ALLOWED}", start=start)
    assert d.wait_log(f"auth.success ip={ALLOWED} user=alice", start=start)


def test_implicit_tls_through_haproxy_v2(haproxy, proxied_daemon):
    d = proxied_daemon
    start = len(d.log())
    client = SourcePOP3SSL("127.0.0.1", haproxy.port("v2tls"), ALLOWED, tlsContext(d))
    try:
        assert client.getwelcome().startswith(b"+OK ")
        client.user("alice")
        assert client.pass_(ALICE_PASSWORD).startswith(b"+OK")
    finally:
        client.quit()
    assert d.wait_log(f"auth.success ip={ALLOWED} user=alice", start=start)
    # a declined client through the TLS frontend: the decline inside TLS
    raw = connect(haproxy.port("v2tls"), DECLINED)
    with tlsContext(d).wrap_socket(raw) as tls:
        data = b""
        while True:
            try:
                piece = tls.recv(4096)
            except OSError:
                break
            if not piece:
                break
            data += piece
    assert data == DECLINE_LINE + b"\r\n"


def test_untrusted_v1_header_is_a_bad_command(haproxy, untrusting_daemon):
    d = untrusting_daemon
    start = len(d.log())
    # .52 is deny-listed, but the daemon sees haproxy's address, not the header's
    with connect(haproxy.port("untrusted-v1"), DECLINED) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        assert greeting.startswith(b"+OK "), greeting
        assert reader.readline().startswith(b"-ERR"), "the PROXY line is a bad command"
        sock.sendall(b"QUIT\r\n")
        assert reader.readline() == b"+OK Bye\r\n"
    assert d.wait_log(f"session.end ip={PROXY} ", start=start)
    assert f"ip={DECLINED}" not in d.log()[start:]


def test_untrusted_v2_header_is_not_honoured(haproxy, untrusting_daemon):
    """The v2 signature reads as blank lines, a NUL line and QUIT: answered, then closed."""
    d = untrusting_daemon
    start = len(d.log())
    with connect(haproxy.port("untrusted-v2"), DECLINED) as sock:
        answers = lines(readAll(sock))
    assert answers[0].startswith(b"+OK "), answers
    assert answers[1].startswith(b"-ERR"), answers
    assert answers[-1] == b"+OK Bye", answers
    assert DECLINE_LINE not in answers
    assert d.wait_log(f"session.end ip={PROXY} ", start=start)
    assert f"ip={DECLINED}" not in d.log()[start:]


def test_forged_header_from_a_client_is_not_honoured(proxied_daemon):
    """A client that is not a trusted proxy cannot claim another address."""
    d = proxied_daemon
    forged = f"PROXY TCP4 {ALLOWED} 127.0.0.1 40000 {d.pop3_port}\r\n".encode()
    with connect(d.pop3_port, DECLINED) as sock:
        sock.sendall(forged)
        data = readAll(sock)
    assert data in (DECLINE_LINE + b"\r\n", b""), data  # b"": reset over unread input
    assert b"+OK" not in data
    # an allowed client sending the same header: greeting, then a bad command
    with connect(d.pop3_port, ALLOWED) as sock:
        reader = sock.makefile("rb")
        sock.sendall(forged.replace(ALLOWED.encode(), DECLINED.encode()))
        assert reader.readline().startswith(b"+OK ")
        assert reader.readline().startswith(b"-ERR")


def test_trusted_peer_without_header_gets_nothing(proxied_daemon):
    d = proxied_daemon
    with connect(d.pop3_port, PROXY) as sock:
        sock.sendall(b"CAPA\r\n")
        try:
            data = readAll(sock)
        except socket.timeout:
            pytest.fail("the connection stayed open")
    assert data == b""
