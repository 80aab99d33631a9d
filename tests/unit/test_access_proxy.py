"""Tests for securepop.access.proxy: the parser (hostile headers) and the wrapper."""

import ipaddress
import socket
import struct

import pytest
from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python import failure

from securepop.access.proxy import (
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyProtocolFactory,
    acceptedAddresses,
    parseProxyHeader,
    parseTrustedProxies,
)


def v2(command=1, family=1, transport=1, payload=None, length=None, version=2, signature=V2_SIGNATURE):
    if payload is None:
        if family == 1:
            payload = socket.inet_aton("192.0.2.10") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 40000, 110)
        elif family == 2:
            payload = (
                socket.inet_pton(socket.AF_INET6, "2001:db8::10")
                + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
                + struct.pack("!HH", 40000, 995)
            )
        elif family == 3:
            payload = b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")
        else:
            payload = b""
    if length is None:
        length = len(payload)
    return signature + bytes([(version << 4) | command, (family << 4) | transport]) + struct.pack("!H", length) + payload


V1_TCP4 = b"PROXY TCP4 192.0.2.10 192.0.2.1 40000 110\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 995\r\n"


# -- parser --------------------------------------------------------------------


def test_v1_tcp4():
    h = parseProxyHeader(V1_TCP4 + b"USER x\r\n")
    assert (h.version, h.command, h.family) == (1, "PROXY", "inet")
    assert h.source == IPv4Address("TCP", "192.0.2.10", 40000)
    assert h.destination == IPv4Address("TCP", "192.0.2.1", 110)
    assert h.length == len(V1_TCP4)


def test_v1_tcp6():
    h = parseProxyHeader(V1_TCP6)
    assert h.source == IPv6Address("TCP", "2001:db8::10", 40000)


def test_v1_unknown_parses_but_is_refused():
    h = parseProxyHeader(b"PROXY UNKNOWN whatever\r\n")
    assert h.command == "UNKNOWN"
    with pytest.raises(ProxyHeaderError):
        acceptedAddresses(h, None, None)


def test_v2_inet_and_inet6():
    h = parseProxyHeader(v2())
    assert (h.version, h.command, h.family, h.transport) == (2, "PROXY", "inet", "stream")
    assert h.source == IPv4Address("TCP", "192.0.2.10", 40000)
    h6 = parseProxyHeader(v2(family=2))
    assert h6.source == IPv6Address("TCP", "2001:db8::10", 40000)
    assert h6.destination.port == 995


def test_v2_with_tlvs_skipped():
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    base = v2()[16:]
    h = parseProxyHeader(v2(payload=base + tlv) + b"rest")
    assert h.length == 16 + len(base) + len(tlv)


def test_v2_local_uses_socket_addresses():
    h = parseProxyHeader(v2(command=0, family=0, transport=0))
    assert h.command == "LOCAL"
    peer = IPv4Address("TCP", "127.0.0.1", 5)
    assert acceptedAddresses(h, peer, "host") == (peer, "host")


@pytest.mark.parametrize(
    "header",
    [
        v2(family=0, transport=0),  # PROXY over UNSPEC
        v2(family=3),  # unix
        v2(family=1, transport=2),  # UDP
    ],
    ids=["unspec", "unix", "dgram"],
)
def test_v2_families_without_tcp_client_ip_are_refused(header):
    h = parseProxyHeader(header)
    with pytest.raises(ProxyHeaderError):
        acceptedAddresses(h, IPv4Address("TCP", "127.0.0.1", 1), None)


@pytest.mark.parametrize("cut", [1, 5, 12, 15, 16, 20, 27])
def test_v2_truncated_needs_more(cut):
    assert parseProxyHeader(v2()[:cut]) is None


@pytest.mark.parametrize("cut", [1, 3, 6, 20, len(V1_TCP4) - 1])
def test_v1_truncated_needs_more(cut):
    assert parseProxyHeader(V1_TCP4[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"USER alice\r\n",
        b"PROXX TCP4",
        b"proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIX\n",
    ],
)
def test_bad_signature(data):
    with pytest.raises(ProxyHeaderError):
        parseProxyHeader(data)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.10 192.0.2.1 40000\r\n",  # missing field
        b"PROXY TCP4 192.0.2.10 192.0.2.1 40000 110 extra\r\n",
        b"PROXY TCP4  192.0.2.10 192.0.2.1 40000 110\r\n",  # double space
        b"PROXY TCP4 192.0.2.10 192.0.2.1 70000 110\r\n",
        b"PROXY TCP4 192.0.2.10 192.0.2.1 040000 110\r\n",
        b"PROXY TCP4 192.0.2.10 192.0.2.1 -1 110\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 110\r\n",  # family mismatch
        b"PROXY TCP6 192.0.2.10 2001:db8::1 1 110\r\n",
        b"PROXY TCP4 192.0.2.300 192.0.2.1 1 110\r\n",
        b"PROXY TCP5 192.0.2.10 192.0.2.1 1 110\r\n",
        b"PROXY\r\n",
        b"PROXY TCP4 192.0.2.10 192.0.2.1 1 110\n",  # LF only
        b"PROXY TCP4 192.0.2.\xff 192.0.2.1 1 110\r\n",
        b"PROXY TCP4 " + b"1" * 200 + b"\r\n",  # oversized
        b"PROXY " + b" " * 150,  # no CRLF within 107 bytes
    ],
)
def test_v1_hostile_lines(line):
    with pytest.raises(ProxyHeaderError):
        parseProxyHeader(line)


@pytest.mark.parametrize(
    "header",
    [
        v2(version=1),
        v2(version=3),
        v2(command=2),
        v2(family=4),
        v2(transport=3),
        v2(length=11, payload=b"\0" * 11),  # too short for inet
        v2(family=2, length=20, payload=b"\0" * 20),  # too short for inet6
        v2(family=3, length=100, payload=b"\0" * 100),  # too short for unix
        v2(length=65535, payload=b""),  # oversized
        v2(length=2000, payload=b""),  # over the buffer limit
        v2(payload=v2()[16:] + b"\x04\x00\x10ab"),  # TLV longer than header
        v2(payload=v2()[16:] + b"\x04\x00"),  # truncated TLV
    ],
)
def test_v2_hostile_headers(header):
    with pytest.raises(ProxyHeaderError):
        parseProxyHeader(header + b"\0" * 40)


def test_v2_wrong_length_swallowing_data_is_bounded():
    # a length larger than the real header makes us wait, never read past the limit
    h = v2(length=12 + 30, payload=v2()[16:])
    assert parseProxyHeader(h) is None
    with pytest.raises(ProxyHeaderError, match="TLV"):
        parseProxyHeader(h + b"USER alice\r\nPASS secret\r\nxxxxxx")


# -- wrapper -------------------------------------------------------------------


class Recorder(protocol.Protocol):
    def __init__(self, addr):
        self.addr = addr
        self.peerAtConnectionMade = None
        self.data = b""
        self.lost = False

    def connectionMade(self):
        self.peerAtConnectionMade = self.transport.getPeer()
        self.hostAtConnectionMade = self.transport.getHost()
        self.transport.write(b"+OK hello\r\n")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class RecorderFactory(protocol.Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = Recorder(addr)
        self.built.append(p)
        return p


def connect(peerHost, trusted=("127.0.0.1/32",), timeout=5.0):
    clock = task.Clock()
    inner = RecorderFactory()
    factory = ProxyProtocolFactory(inner, list(trusted), clock, headerTimeout=timeout)
    peer = IPv4Address("TCP", peerHost, 50000)
    wrapper = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 1110))
    wrapper.makeConnection(transport)
    return clock, inner, factory, wrapper, transport


def test_trusted_v2_header_read_before_connection_made():
    clock, inner, factory, wrapper, transport = connect("127.0.0.1")
    assert inner.built == []
    assert transport.value() == b""
    header = v2()
    wrapper.dataReceived(header[:10])
    wrapper.dataReceived(header[10:] + b"CAPA\r\n")
    (p,) = inner.built
    assert p.addr == IPv4Address("TCP", "192.0.2.10", 40000)
    assert p.peerAtConnectionMade == IPv4Address("TCP", "192.0.2.10", 40000)
    assert p.hostAtConnectionMade == IPv4Address("TCP", "192.0.2.1", 110)
    assert wrapper.getProxyPeer() == IPv4Address("TCP", "127.0.0.1", 50000)
    assert p.data == b"CAPA\r\n"
    assert transport.value() == b"+OK hello\r\n"
    assert clock.getDelayedCalls() == []
    wrapper.dataReceived(b"QUIT\r\n")
    assert p.data == b"CAPA\r\nQUIT\r\n"
    wrapper.connectionLost(failure.Failure(ConnectionDone()))
    assert p.lost and factory.protocols == {}


def test_trusted_v1_header_byte_by_byte():
    clock, inner, factory, wrapper, transport = connect("127.0.0.1")
    for byte in V1_TCP4:
        assert inner.built == []
        wrapper.dataReceived(bytes([byte]))
    (p,) = inner.built
    assert p.peerAtConnectionMade.host == "192.0.2.10"
    assert p.data == b""


def test_trusted_v2_local_keeps_socket_address():
    clock, inner, factory, wrapper, transport = connect("127.0.0.1")
    wrapper.dataReceived(v2(command=0, family=0, transport=0))
    (p,) = inner.built
    assert p.peerAtConnectionMade.host == "127.0.0.1"


def test_untrusted_peer_header_reaches_protocol_as_data():
    clock, inner, factory, wrapper, transport = connect("127.0.0.2")
    (p,) = inner.built
    assert p.peerAtConnectionMade.host == "127.0.0.2"
    assert transport.value() == b"+OK hello\r\n"
    wrapper.dataReceived(V1_TCP4)
    assert p.data == V1_TCP4
    assert p.transport.getPeer().host == "127.0.0.2"
    assert wrapper.getProxyPeer() is None
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "data",
    [
        b"USER alice\r\n",
        b"PROXY UNKNOWN\r\n",
        v2(family=3),
        v2(family=0, transport=0),
        v2(length=2000, payload=b""),
        b"PROXY " + b"9" * 200,
    ],
)
def test_trusted_peer_bad_header_closes_without_a_byte(data):
    clock, inner, factory, wrapper, transport = connect("127.0.0.1")
    wrapper.dataReceived(data)
    assert inner.built == []
    assert transport.value() == b""
    assert transport.disconnecting or getattr(transport, "disconnected", False)
    wrapper.dataReceived(b"more data is ignored")
    wrapper.connectionLost(failure.Failure(ConnectionDone()))
    assert inner.built == []
    assert clock.getDelayedCalls() == []


def test_trusted_peer_timeout_closes():
    clock, inner, factory, wrapper, transport = connect("127.0.0.1", timeout=3)
    wrapper.dataReceived(V1_TCP4[:10])
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting or transport.disconnected
    assert inner.built == []


def test_connection_lost_before_header():
    clock, inner, factory, wrapper, transport = connect("127.0.0.1")
    wrapper.dataReceived(V1_TCP4[:10])
    wrapper.connectionLost(failure.Failure(ConnectionDone()))
    assert inner.built == [] and clock.getDelayedCalls() == []


def test_wrapped_factory_may_refuse():
    clock = task.Clock()

    class Refusing(protocol.Factory):
        def buildProtocol(self, addr):
            return None

    factory = ProxyProtocolFactory(Refusing(), ["127.0.0.1"], clock)
    wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    wrapper.makeConnection(transport)
    wrapper.dataReceived(V1_TCP4)
    assert transport.disconnecting


def test_trusted_proxies_matching():
    factory = ProxyProtocolFactory(RecorderFactory(), ["10.0.0.0/8", "::1"], task.Clock())
    assert factory.isTrusted(IPv4Address("TCP", "10.1.2.3", 1))
    assert factory.isTrusted(IPv6Address("TCP", "::1", 1))
    assert factory.isTrusted(IPv6Address("TCP", "::ffff:10.0.0.1", 1))
    assert not factory.isTrusted(IPv4Address("TCP", "11.0.0.1", 1))
    assert not factory.isTrusted(object())
    with pytest.raises(ValueError):
        ProxyProtocolFactory(RecorderFactory(), ["10.0.0.1/8"], task.Clock())
    with pytest.raises(ValueError):
        ProxyProtocolFactory(RecorderFactory(), "10.0.0.0/8", task.Clock())


def test_replacing_the_trusted_list_applies_to_new_connections():
    """A reload: a header from the proxy is honoured only after it is added."""
    clock, inner, factory, wrapper, transport = connect("127.0.0.1", trusted=["10.0.0.0/8"])
    (before,) = inner.built
    assert before.peerAtConnectionMade.host == "127.0.0.1"   # no header expected
    factory.setTrustedProxies(["127.0.0.1/32"])
    after = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
    after.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001)))
    after.dataReceived(V1_TCP4)
    assert inner.built[1].peerAtConnectionMade.host == "192.0.2.10"
    wrapper.dataReceived(V1_TCP4)               # the earlier connection is unchanged
    assert before.data == V1_TCP4
    factory.setTrustedProxies([])               # and off again
    third = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50002))
    assert isinstance(third, Recorder)          # no wrapper at all
    third.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50002)))
    third.dataReceived(V1_TCP4)
    assert third.peerAtConnectionMade.host == "127.0.0.1" and third.data == V1_TCP4


def test_a_bad_replacement_list_keeps_the_one_in_force():
    factory = ProxyProtocolFactory(RecorderFactory(), ["127.0.0.1"], task.Clock())
    for bad in (["127.0.0.1/8"], ["nonsense"], "127.0.0.1"):
        with pytest.raises(ValueError):
            factory.setTrustedProxies(bad)
    assert factory.isTrusted(IPv4Address("TCP", "127.0.0.1", 1))
    assert parseTrustedProxies([" 10.0.0.0/8 ", "::1"]) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert parseTrustedProxies(()) == ()


def test_start_tls_passes_through_and_updates_provided_interfaces():
    from zope.interface import alsoProvides
    from twisted.internet.interfaces import ISSLTransport, ITLSTransport
    from zope.interface import implementer

    @implementer(ITLSTransport)
    class TLSCapable(StringTransport):
        started = None

        def startTLS(self, ctx, normal=True):
            self.started = ctx
            alsoProvides(self, ISSLTransport)

    clock = task.Clock()
    inner = RecorderFactory()
    factory = ProxyProtocolFactory(inner, ["127.0.0.1"], clock)
    transport = TLSCapable(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    wrapper = factory.buildProtocol(transport.getPeer())
    wrapper.makeConnection(transport)
    wrapper.dataReceived(V1_TCP4)
    (p,) = inner.built
    assert ITLSTransport.providedBy(p.transport)
    assert not ISSLTransport.providedBy(p.transport)
    p.transport.startTLS("ctx")
    assert transport.started == "ctx"
    assert ISSLTransport.providedBy(p.transport)
    assert p.transport.getPeer().host == "192.0.2.10"


def test_tls_handshake_reaches_the_wrapped_protocol():
    """After STLS the TLS layer reports its handshake to the wrapper: it passes it on."""
    from twisted.internet.interfaces import IHandshakeListener
    from zope.interface import implementer
    from zope.interface.verify import verifyObject

    @implementer(IHandshakeListener)
    class Listening(Recorder):
        handshakes = 0

        def handshakeCompleted(self):
            self.handshakes += 1

    class ListeningFactory(RecorderFactory):
        def buildProtocol(self, addr):
            p = Listening(addr)
            self.built.append(p)
            return p

    factory = ProxyProtocolFactory(ListeningFactory(), ["127.0.0.1/32"], task.Clock())
    peer = IPv4Address("TCP", "127.0.0.1", 50000)
    wrapper = factory.buildProtocol(peer)
    wrapper.makeConnection(StringTransport(peerAddress=peer))
    verifyObject(IHandshakeListener, wrapper)
    wrapper.handshakeCompleted()                 # before the header: nothing to tell
    wrapper.dataReceived(V1_TCP4)
    (p,) = factory.wrappedFactory.built
    wrapper.handshakeCompleted()
    assert p.handshakes == 1
    # a wrapped protocol that does not listen is not called
    clock, inner, _, plain, _ = connect("127.0.0.1")
    plain.dataReceived(V1_TCP4)
    plain.handshakeCompleted()
    assert inner.built[0].data == b""
