"""
The PROXY protocol wrapper behind a real HAProxy (send-proxy-v2 and
send-proxy): the wrapped protocol sees the original client address in
connectionMade; a header from an untrusted peer is not honoured.
"""

import os

import pytest
import pytest_twisted
from twisted.internet import threads

from securepop.access.proxy import ProxyProtocolFactory
from tests.integration.fixtures_haproxy import (
    Frontend,
    HAProxyServer,
    PeerReportingFactory,
    missingTools,
    talk,
)

TRUSTED_PROXY = "127.0.0.1"
UNTRUSTED_PROXY = "127.0.0.3"


def requireTools():
    missing = missingTools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


@pytest.fixture(scope="session")
def proxied_backend():
    """
    A PeerReporting server on 127.0.0.1 behind the PROXY wrapper, trusting
    only 127.0.0.1/32.  Yields (factory with .records, port).
    """
    from twisted.internet import reactor

    inner = PeerReportingFactory()
    wrapped = ProxyProtocolFactory(inner, [f"{TRUSTED_PROXY}/32"], reactor, headerTimeout=2.0)
    port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
    yield inner, port.getHost().port
    port.stopListening()


@pytest.fixture(scope="session")
def haproxy(proxied_backend, tmp_path_factory):
    """haproxy with frontends v2, v1 (from 127.0.0.1) and v2 from an untrusted source."""
    requireTools()
    _, backendPort = proxied_backend
    server = HAProxyServer(
        tmp_path_factory.mktemp("haproxy"),
        [
            Frontend("v2", backendPort, proxy="v2", source=TRUSTED_PROXY),
            Frontend("v1", backendPort, proxy="v1", source=TRUSTED_PROXY),
            Frontend("untrusted", backendPort, proxy="v2", source=UNTRUSTED_PROXY),
        ],
    ).start()
    yield server
    server.stop()


def recordsFrom(factory, peer):
    return [r for r in factory.records if r["peer"] == peer]


@pytest.mark.parametrize("frontend, client", [("v2", "127.0.0.9"), ("v1", "127.0.0.10")])
@pytest_twisted.inlineCallbacks
def test_wrapped_protocol_sees_original_client(haproxy, proxied_backend, frontend, client):
    factory, _ = proxied_backend
    greeting, reply = yield threads.deferToThread(
        talk, haproxy.port(frontend), client, b"CAPA\r\n"
    )
    assert greeting == f"+OK peer={client}".encode()
    assert reply == b"+OK got 5"
    (record,) = recordsFrom(factory, client)
    assert record["data"] == b"CAPA\r\n"  # the header was consumed, not delivered


@pytest_twisted.inlineCallbacks
def test_header_from_untrusted_proxy_is_not_honoured(haproxy, proxied_backend):
    factory, _ = proxied_backend
    greeting, _ = yield threads.deferToThread(
        talk, haproxy.port("untrusted"), "127.0.0.11", b"CAPA\r\n"
    )
    assert greeting == f"+OK peer={UNTRUSTED_PROXY}".encode()
    assert recordsFrom(factory, "127.0.0.11") == []
    # the protocol received haproxy's binary header as ordinary data
    assert any(
        r["data"].startswith(b"\r\n\r\n\x00\r\nQUIT\n") for r in recordsFrom(factory, UNTRUSTED_PROXY)
    )


@pytest_twisted.inlineCallbacks
def test_direct_untrusted_client_header_is_a_bad_command(proxied_backend):
    factory, port = proxied_backend
    forged = b"PROXY TCP4 127.0.0.5 127.0.0.1 1234 110\r\n"
    greeting, reply = yield threads.deferToThread(talk, port, "127.0.0.12", forged)
    assert greeting == b"+OK peer=127.0.0.12"
    assert reply == b"+OK got %d" % (len(forged) - 1)
    assert recordsFrom(factory, "127.0.0.5") == []
    (record,) = recordsFrom(factory, "127.0.0.12")
    assert record["data"] == forged


@pytest_twisted.inlineCallbacks
def test_trusted_peer_without_valid_header_is_closed_before_greeting(proxied_backend):
    factory, port = proxied_backend
    before = len(factory.records)
    greeting, _ = yield threads.deferToThread(
        talk, port, TRUSTED_PROXY, b"", sendFirst=b"USER alice\r\n"
    )
    assert greeting == b""
    assert len(factory.records) == before
    # silence is refused too, after the header timeout
    greeting, _ = yield threads.deferToThread(talk, port, TRUSTED_PROXY, b"")
    assert greeting == b""
    assert len(factory.records) == before
