"""
Tests for L{securepop.tls.transport}: the lean TLS layer (real TLS in
memory over iosim, no reactor).
"""

import ast
import hashlib
import inspect
import re
import socket
import textwrap
from configparser import ConfigParser
from pathlib import Path

import twisted
from twisted.internet import _newtls, tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.test import iosim
from zope.interface.verify import verifyObject

from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from securepop.testing import tls as tlstesting
from securepop.tls.contextfactory import ServerTLS
from securepop.tls.profiles import TLSPolicy
from securepop.tls import transport
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


def test_start_tls_on_other_transports_uses_their_own():
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


# -- Twisted's private names -------------------------------------------------
#
# securepop.tls.transport overrides and copies private Twisted code.  These
# tests fail, naming what changed, when a Twisted release renames or rewrites
# it: then re-read that Twisted code, adapt transport.py, and widen the pin
# in setup.cfg.

# (owner, name, what securepop.tls.transport does with it)
PRIVATE_METHODS = [
    (TLSMemoryBIOProtocol, "_flushSendBIO",
     "ServerTLSProtocol overrides it: Twisted calls it to send what OpenSSL produced"),
    (TLSMemoryBIOProtocol, "_write", "ServerTLSProtocol encrypts its batches with it"),
    (TLSMemoryBIOProtocol, "_checkHandshakeStatus",
     "ServerTLSProtocol.makeConnection starts the handshake with it"),
]
# Attributes of a connected TLSMemoryBIOProtocol (set by Twisted's code).
PRIVATE_PROTOCOL_ATTRIBUTES = [
    ("_tlsConnection", "the pyOpenSSL connection ServerTLSProtocol reads and writes"),
    ("_appSendBuffer", "initialised by ServerTLSProtocol.makeConnection"),
    ("_connectWrapped", "read by ServerTLSProtocol.makeConnection"),
    ("_producer", "read by ServerTLSProtocol.write"),
]
# The TCP connection's write buffer, read to decide whether TLS bytes may go
# straight to the socket.
PRIVATE_CONNECTION_ATTRIBUTES = [
    ("dataBuffer", "bytes queued before ours"),
    ("_tempDataLen", "bytes queued before ours"),
    ("_writeDisconnected", "the write side was closed"),
]

# Twisted functions whose code securepop.tls.transport copies, with the
# fingerprints (docstring and comments left out) of the versions it was
# checked against.
COPIED = {
    "twisted.protocols.tls.TLSMemoryBIOProtocol.makeConnection":
        (TLSMemoryBIOProtocol.makeConnection, {"a7cc8000dcfdab5d"},   # 26.10.0
         "ServerTLSProtocol.makeConnection"),
    "twisted.internet._newtls.startTLS":
        (_newtls.startTLS, {"8f5a01a49e8d8e49"},                      # 26.10.0
         "securepop.tls.transport.startTLS"),
    "twisted.protocols.tls.TLSMemoryBIOProtocol.write":
        (TLSMemoryBIOProtocol.write, {"1db0b9b6fdcb1640"},            # 26.10.0
         "ServerTLSProtocol.write"),
}


def fingerprint(function):
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    if node.body and isinstance(node.body[0], ast.Expr) \
            and isinstance(node.body[0].value, ast.Constant):
        node.body = node.body[1:]
    node.name = "f"
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


@pytest.mark.parametrize("owner, name, use", PRIVATE_METHODS,
                         ids=[n for _, n, _ in PRIVATE_METHODS])
def test_private_twisted_methods_exist(owner, name, use):
    assert callable(getattr(owner, name, None)), (
        f"Twisted {twisted.__version__} has no {owner.__qualname__}.{name}: {use}; "
        f"securepop.tls.transport must be adapted to this Twisted")


def test_private_protocol_attributes_exist(ours):
    missing = [f"TLSMemoryBIOProtocol.{name} ({use})"
               for name, use in PRIVATE_PROTOCOL_ATTRIBUTES
               if not hasattr(ours.proto, name)]
    assert not missing, (
        f"Twisted {twisted.__version__} no longer sets: {', '.join(missing)}; "
        f"securepop.tls.transport must be adapted to this Twisted")


def test_private_factory_attribute_exists(creator):
    factory = ServerTLSFactory(creator, Factory.forProtocol(Protocol))
    assert callable(getattr(factory, "_creatorCallable", None)), (
        f"Twisted {twisted.__version__} has no TLSMemoryBIOFactory._creatorCallable: "
        f"ServerTLSProtocol.makeConnection makes the TLS connection with it")


def test_private_connection_attributes_exist(pair):
    missing = [f"{name} ({use})" for name, use in PRIVATE_CONNECTION_ATTRIBUTES
               if not hasattr(pair.conn, name)]
    assert not missing, (
        f"Twisted {twisted.__version__}'s TCP connection has no {', '.join(missing)}: "
        f"ServerTLSProtocol._flushSendBIO reads them")
    assert isinstance(pair.conn.socket, socket.socket)


def test_bypass_tls_exists():
    assert transport._BypassTLS is _newtls._BypassTLS, (
        f"Twisted {twisted.__version__} has no twisted.internet._newtls._BypassTLS: "
        f"STLS falls back to Twisted's own (slower) TLS layer")
    bypass = _newtls._BypassTLS(FileDescriptor, "connection")
    assert bypass._connection == "connection", (
        "twisted.internet._newtls._BypassTLS no longer keeps the connection in "
        "_connection: ServerTLSProtocol finds the socket through it")


def test_server_connections_are_tcp_servers():
    # startTLS takes its own path only for tcp.Server (and unix.Server, a
    # subclass); anything else gets the transport's startTLS.
    assert issubclass(unix.Server, tcp.Server)
    assert tcp.Server._tlsClientDefault is False


@pytest.mark.parametrize("name", sorted(COPIED))
def test_copied_twisted_code_unchanged(name):
    function, known, ours_ = COPIED[name]
    got = fingerprint(function)
    assert got in known, (
        f"{name} changed in Twisted {twisted.__version__} (fingerprint {got}): "
        f"{ours_} copies it.  Compare the two, adapt {ours_}, then add {got!r} to "
        f"COPIED in {__name__}")


def test_fingerprint_sees_a_change():
    # The negative control: two functions differing in one statement.
    def a(self):
        """Doc."""
        self.x = 1

    def b(self):
        """Doc."""
        self.x = 2

    def c(self):
        # a comment, another docstring: the same code
        """Other doc."""
        self.x = 1

    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(c)


def test_twisted_version_is_within_the_pin():
    config = ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    requirement = next(line for line in config["options"]["install_requires"].splitlines()
                       if line.strip().startswith("twisted"))
    upper = re.search(r"<\s*([\d.]+)", requirement)
    assert upper, f"setup.cfg must bound Twisted from above: {requirement.strip()!r}"
    installed = tuple(int(p) for p in twisted.__version__.split(".")[:2])
    bound = tuple(int(p) for p in upper.group(1).split("."))
    assert installed < bound, (
        f"Twisted {twisted.__version__} is outside setup.cfg's {requirement.strip()!r}: "
        f"run these tests, adapt securepop.tls.transport, then raise the bound")
