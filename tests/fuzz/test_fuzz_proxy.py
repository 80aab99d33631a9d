"""
Fuzz the PROXY v1/v2 header parser and the wrapper that uses it: any bytes
give a header, "read more" or L{ProxyHeaderError}; a valid header parses
the same however it is cut, every proper prefix asks for more, and the
bytes after the header reach the POP3 session exactly once.
"""

import struct

from hypothesis import given, strategies as st
from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from securepop.access.proxy import (
    ProxyHeader, ProxyHeaderError, ProxyProtocolFactory, V2_SIGNATURE, acceptedAddresses,
    parseProxyHeader,
)
from tests.fuzz.harness import corpus, fuzz_settings, split

SEEDS = corpus("proxy")


def parse_or_error(data):
    try:
        return parseProxyHeader(data)
    except ProxyHeaderError as e:
        return e


def mutate(data, edits):
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


headers = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: V2_SIGNATURE + b, st.binary(max_size=300)),
    st.builds(lambda b: b"PROXY " + b, st.binary(max_size=120)),
    st.builds(mutate, st.sampled_from(SEEDS),
              st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=6)),
    st.builds(lambda s, n: s[:n], st.sampled_from(SEEDS), st.integers(0, 250)),
    st.builds(lambda fam, cmd, length, body: V2_SIGNATURE + bytes([cmd, fam])
              + struct.pack("!H", length) + body,
              st.integers(0, 255), st.integers(0, 255), st.integers(0, 2000),
              st.binary(max_size=300)),
)


@fuzz_settings(600)
@given(headers)
def test_parser_outcomes(data):
    result = parse_or_error(data)
    assert result is None or isinstance(result, (ProxyHeader, ProxyHeaderError))
    if isinstance(result, ProxyHeader):
        assert 0 < result.length <= len(data)
        # Every proper prefix of the header asks for more bytes; the header
        # alone parses to the same thing.
        for n in range(result.length):
            assert parse_or_error(data[:n]) is None, n
        assert parse_or_error(data[:result.length]) == result
        try:
            acceptedAddresses(result, IPv4Address("TCP", "127.0.0.1", 1),
                              IPv4Address("TCP", "127.0.0.1", 2))
        except ProxyHeaderError:
            pass


class Recorder(protocol.Protocol):
    def connectionMade(self):
        self.received = b""
        self.peer = self.transport.getPeer()

    def dataReceived(self, data):
        self.received += data


@fuzz_settings(300)
@given(st.sampled_from(SEEDS), st.binary(max_size=60),
       st.lists(st.integers(0, 400), max_size=6))
def test_wrapper_any_segmentation(seed, rest, cuts):
    outcomes = []
    for chunks in ([seed + rest], split(seed + rest, cuts)):
        factory = protocol.Factory.forProtocol(Recorder)
        wrapper = ProxyProtocolFactory(factory, ["127.0.0.0/8"], task.Clock())
        proto = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        inner = proto.wrappedProtocol
        outcomes.append((inner is not None, inner and inner.received, inner and inner.peer,
                         transport.value(), transport.disconnecting))
    assert outcomes[0] == outcomes[1]
    accepted, received, peer, written, closed = outcomes[0]
    assert written == b""                   # nothing is ever written before the header
    if accepted:
        header = parseProxyHeader(seed + rest)
        assert received == (seed + rest)[header.length:]
    else:
        assert closed


def test_untrusted_peer_bytes_pass_unchanged():
    """The negative case: a header from an untrusted peer is just data."""
    factory = protocol.Factory.forProtocol(Recorder)
    wrapper = ProxyProtocolFactory(factory, ["192.0.2.0/24"], task.Clock())
    proto = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555)))
    proto.dataReceived(SEEDS[0])
    assert proto.wrappedProtocol.received == SEEDS[0]
    assert proto.wrappedProtocol.peer.host == "127.0.0.1"
