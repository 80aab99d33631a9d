"""
Tests for L{securepop.tls.transport}: the lean TLS layer (real TLS in
memory over iosim, no reactor).
"""

from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface.verify import verifyObject

from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from securepop.tls import testing as tlstesting
from securepop.tls.contextfactory import ServerTLS
from securepop.tls.profiles import TLSPolicy
from securepop.tls.transport import BATCH_LIMIT, ServerTLSFactory, ServerTLSProtocol, startTLS


class Answering(Protocol):
    """Answers each read with three separate writes; 'bye' closes after them."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        for part in (b"one ", b"two ", b"three\r\n"):
            self.transport.write(part)
        if b"big" in data:
            self.transport.write(b"B" * (3 * BATCH_LIMIT + 5))
        if b"bye" in data:
            self.transport.loseConnection()


class Client(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


@pytest.fixture(scope="module")
def ca():
    return tlstesting.TestCA(intermediate=False)


@pytest.fixture
def creator(ca, tmp_path):
    leaf, key = ca.issue(("localhost",))[:2]
    cert, key = tlstesting.write_identity(str(tmp_path), "server", [leaf], key)
    return ServerTLS(TLSPolicy(), cert, key, hostname="localhost", clock=Clock())


def connect(creator, ca, serverFactory):
    server = Answering()
    serverFactory = serverFactory(Factory.forProtocol(lambda: server))
    serverProto = serverFactory.buildProtocol(None)
    client = Client()
    trust = Certificate.loadPEM(ca.root.public_bytes(Encoding.PEM))
    clientFactory = TLSMemoryBIOFactory(optionsForClientTLS("localhost", trustRoot=trust),
                                        True, Factory.forProtocol(lambda: client),
                                        clock=Clock())
    clientProto = clientFactory.buildProtocol(None)
    serverTransport = iosim.FakeTransport(serverProto, isServer=True)
    writes = []
    original = serverTransport.write

    def counting(data):
        writes.append(data)
        original(data)

    serverTransport.write = counting
    clientTransport = iosim.FakeTransport(clientProto, isServer=False)
    pump = iosim.connect(serverProto, serverTransport, clientProto, clientTransport)
    return SimpleNamespace(server=server, proto=serverProto, client=client,
                           clientProto=clientProto, pump=pump, writes=writes)


@pytest.fixture
def ours(creator, ca):
    """A connected pair through securepop's TLS layer."""
    return connect(creator, ca, lambda f: ServerTLSFactory(creator, f))


def send(c, data):
    c.clientProto.write(data)
    c.clientProto._aggregator.flush()
    c.pump.flush()


def test_interfaces(ours):
    assert isinstance(ours.proto, ServerTLSProtocol)
    verifyObject(ISSLTransport, ours.proto)
    assert ITCPTransport.providedBy(ours.proto) == ITCPTransport.providedBy(ours.proto.transport)


def test_replies_to_one_read_leave_in_one_write(ours):
    del ours.writes[:]
    send(ours, b"hello\r\n")
    assert ours.server.received == b"hello\r\n"
    assert ours.client.received == b"one two three\r\n"
    assert len(ours.writes) == 1                  # three writes, one TLS record


def test_twisted_default_needs_a_reactor_turn(creator, ca):
    # The negative control: Twisted's buffering transport holds the same
    # replies until its clock turns (callLater(0)); ours needs no turn.
    clock = Clock()
    c = connect(creator, ca, lambda f: TLSMemoryBIOFactory(creator, False, f, clock=clock))
    assert isinstance(c.proto, BufferingTLSTransport)
    send(c, b"hello\r\n")
    assert c.client.received == b""
    clock.advance(0)
    c.pump.flush()
    assert c.client.received == b"one two three\r\n"


def test_write_outside_a_read_goes_out_at_once(ours):
    del ours.writes[:]
    ours.server.transport.write(b"late reply\r\n")   # e.g. a login result from a thread
    assert len(ours.writes) == 1
    ours.pump.flush()
    assert ours.client.received == b"late reply\r\n"


def test_close_after_replies_keeps_their_order(ours):
    send(ours, b"bye\r\n")
    ours.pump.flush()
    assert ours.client.received == b"one two three\r\n"
    assert ours.proto.disconnecting
    ours.server.transport.write(b"after close")  # dropped, as Twisted does
    ours.pump.flush()
    assert ours.client.received == b"one two three\r\n"


def test_large_batch_flushed_early_and_intact(ours):
    del ours.writes[:]
    send(ours, b"big\r\n")
    ours.pump.flush()
    assert ours.client.received == b"one two three\r\n" + b"B" * (3 * BATCH_LIMIT + 5)
    assert len(ours.writes) > 1                   # not held until the end of the read


def test_abort_discards_the_batch(ours):
    ours.proto._batch = [b"never sent"]
    ours.proto.abortConnection()
    assert ours.proto._batch == []


def test_startTLS_on_other_transports_uses_their_own():
    started = []

    class Recording(StringTransport):
        def startTLS(self, creator, normal=True):
            started.append(creator)

    startTLS(Recording(), "creator")
    assert started == ["creator"]
