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

from securepop.testing import tls as tlstesting
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


class SocketPair:
    """
    securepop's TLS layer on a real Twisted TCP connection (one end of a
    socketpair, a MemoryReactor: no reactor runs), a Twisted TLS client in
    memory on the other end.
    """

    def __init__(self, creator, ca, sndbuf=None):
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactor

        self.ours, self.peer = socket.socketpair()
        if sndbuf:
            self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.reactor = MemoryReactor()
        self.conn = tcp.Connection(self.ours, None, self.reactor)
        self.conn.connected = 1
        self.server = Answering()
        factory = ServerTLSFactory(creator, Factory.forProtocol(lambda: self.server))
        self.proto = factory.buildProtocol(None)
        self.conn.protocol = self.proto
        self.proto.makeConnection(self.conn)
        self.client = Client()
        trust = Certificate.loadPEM(ca.root.public_bytes(Encoding.PEM))
        clientFactory = TLSMemoryBIOFactory(optionsForClientTLS("localhost", trustRoot=trust),
                                            True, Factory.forProtocol(lambda: self.client),
                                            clock=Clock())
        self.clientProto = clientFactory.buildProtocol(None)
        self.clientTransport = StringTransport()
        self.clientProto.makeConnection(self.clientTransport)
        self.queued = 0  # how often the server's connection asked to be written

    def pump(self):
        moved = True
        while moved:
            moved = False
            out = self.clientTransport.value()
            self.clientTransport.clear()
            if out:
                self.proto.dataReceived(out)
                moved = True
            if self.conn in self.reactor.writers:
                self.queued += 1
                self.conn.doWrite()
                moved = True
            try:
                data = self.peer.recv(1 << 20)
            except BlockingIOError:
                data = b""
            if data:
                self.clientProto.dataReceived(data)
                moved = True

    def send(self, data):
        self.clientProto.write(data)
        self.clientProto._aggregator.flush()
        self.pump()

    def close(self):
        self.ours.close()
        self.peer.close()


@pytest.fixture
def pair(creator, ca):
    p = SocketPair(creator, ca)
    p.pump()          # the handshake
    yield p
    p.close()


def test_replies_go_straight_to_the_socket(pair):
    assert pair.proto._socketOwner is pair.conn
    pair.queued = 0
    pair.send(b"hello\r\n")
    assert pair.client.received == b"one two three\r\n"
    assert pair.queued == 0                       # no writable event asked for
    assert pair.conn not in pair.reactor.writers


def test_queued_output_keeps_its_place(pair):
    # Something already waits in Twisted's buffer: the reply goes behind it,
    # through the reactor, never ahead of it.
    pair.conn.write(b"")             # nothing: still direct
    assert pair.conn not in pair.reactor.writers
    pair.proto._tlsConnection.send(b"first\r\n")
    first = pair.proto._tlsConnection.bio_read(1 << 16)
    pair.conn.write(first)           # queued raw TLS bytes, as a slow socket would leave
    assert pair.conn in pair.reactor.writers
    pair.send(b"hello\r\n")
    assert pair.client.received == b"first\r\none two three\r\n"
    assert pair.queued >= 1


def test_what_the_socket_refuses_is_queued_in_order(creator, ca):
    p = SocketPair(creator, ca, sndbuf=4096)
    try:
        p.pump()
        p.queued = 0
        p.send(b"big\r\n")
        assert p.client.received == b"one two three\r\n" + b"B" * (3 * BATCH_LIMIT + 5)
        assert p.queued >= 1                      # the rest went through the reactor
    finally:
        p.close()


def test_other_transports_are_not_sent_on_directly(ours):
    assert ours.proto._socketOwner is None        # iosim: Twisted's write path
