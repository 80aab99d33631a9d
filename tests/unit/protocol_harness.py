"""
A POP3 session in memory for the protocol unit tests: StringTransport and a
fake clock for the states, timers and hostile input; STLS with real TLS
(pyOpenSSL) over iosim's in-memory pump.  The session gets a real
L{ServerContext} with an in-memory credential source and a real
MaildirMailbox in tmp_path.
"""

import os

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet._newtls import _BypassTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim
from zope.interface import implementer

from securepop import config
from securepop.auth.gate import PenaltyGate
from securepop.auth.penalty import PenaltyRule
from securepop.auth.portal import MaildirRealm, build_portal
from securepop.auth.records import UserRecord
from securepop.interfaces import ICredentialSource, PLAINTEXT
from securepop.mailstore.maildir import MaildirStore
from securepop.protocol.context import ServerContext
from securepop.protocol.server import POP3Factory
from securepop.protocol.streaming import MessageProducer
from securepop.sasl import registry
from securepop.state.memory import MemoryStateStore
from securepop.tls.contextfactory import ServerTLS
from securepop.testing import tls as tlstesting


PASSWORD = b"s3cret pass"
MESSAGES = [b"Subject: one\n\n.first\n", b"Subject: two\r\n\r\nsecond\r\n",
            b"Subject: three\n\nthird"]


@implementer(ICredentialSource)
class MemorySource:
    """An in-memory credential source: plaintext passwords only."""

    name = "memory"

    def __init__(self, users):
        self.users = users
        self.verified = []

    def capabilities(self):
        return frozenset({PLAINTEXT})

    def verifyPassword(self, username, password):
        self.verified.append(username)
        if self.users.get(username) == password:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("bad-password"))

    def lookupSecret(self, username, kind):
        return defer.fail(UnauthorizedLogin("no-secret"))

    def lookupUser(self, username):
        if username in self.users:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("no-user"))


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca = tlstesting.TestCA(intermediate=False)
    result = ca.issue(("localhost",))
    leaf, key = result[0], result[1]
    cert_path, key_path = tlstesting.write_identity(str(d), "server", [leaf], key)
    ca_path = str(d / "ca.pem")
    ca.write_root(ca_path)
    return cert_path, key_path, ca_path


TOML = """
[server]
hostname = "localhost"
idle_timeout_login = 30
idle_timeout = 600
max_bad_commands = 5
[auth]
mechanisms = ["PLAIN"]
failure_delay = 2.0
failure_delay_max = 2.0
max_attempts = 3
"""


class Harness:
    def __init__(self, tmp_path, identity, listener_tls="starttls", penalty=True):
        self.clock = task.Clock()
        self.settings = config.parse(TOML, data_dir=str(tmp_path))
        self.source = MemorySource({"alice": PASSWORD})
        realm = MaildirRealm(MaildirStore(self.settings.mail.root, str(tmp_path),
                                          reactor=self.clock))
        cert, key, self.ca_path = identity
        tls = ServerTLS(certificate=cert, key=key, hostname="localhost", clock=self.clock)
        mechanisms = {"PLAIN": registry.mechanism_for("PLAIN", self.source.capabilities())}
        self.state = MemoryStateStore(self.clock)
        self.penalty = PenaltyRule(base=2.0, maximum=2.0) if penalty else None
        self.ctx = ServerContext(
            self.settings, self.clock, build_portal(self.source, realm), self.source,
            mechanisms, tls=tls, state=self.state, penalty=self.penalty,
            gate=PenaltyGate(self.clock, self.state, self.penalty) if penalty else None)
        self.listener = config.ListenSettings(endpoint="tcp:0", tls=listener_tls)
        self.maildir = tmp_path / "mail" / "alice" / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for i, body in enumerate(MESSAGES):
            (self.maildir / "new" / f"100{i}.M1P1.host").write_bytes(body)

    def failures(self, address):
        """The failures the store holds for C{address} now."""
        key = self.penalty.key(address)
        return self.state.login_state(key, None).result.failures

    def record_failure(self, address):
        self.state.record_failure(self.penalty.key(address), None, 900.0, 900.0)

    def connect(self, transport=None):
        self.transport = transport or StringTransport()
        self.session = POP3Factory(self.ctx, self.listener).buildProtocol(None)
        self.session.makeConnection(self.transport)
        return self.session

    def lines(self):
        """Everything written since the last call, as lines."""
        data = self.transport.value()
        self.transport.clear()
        return data.split(b"\r\n")[:-1]

    def send(self, data):
        self.session.dataReceived(data)
        return self.lines()

    def stored(self):
        return sorted(os.listdir(self.maildir / "new") + os.listdir(self.maildir / "cur"))


@pytest.fixture
def starttls(tmp_path, identity):
    h = Harness(tmp_path, identity)
    h.connect()
    return h


@pytest.fixture
def secure(tmp_path, identity):
    """A session on an implicit-TLS listener (the transport stands for TLS)."""
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.connect()
    h.lines()
    return h


def login(h):
    assert h.send(b"USER alice\r\n") == [b"+OK Send PASS"]
    reply = h.send(b"PASS " + PASSWORD + b"\r\n")
    assert reply[0].startswith(b"+OK Logged in, 3 messages"), reply
    return reply


class RecordingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.tls_started = []

    def startTLS(self, contextFactory, beNormal=True):
        self.tls_started.append((contextFactory, self.value()))


class TLSFakeTransport(iosim.FakeTransport):
    """iosim's transport with a real startTLS (as twisted.internet._newtls)."""

    _tlsProtocol = None

    def startTLS(self, contextFactory, beNormal=True):
        factory = TLSMemoryBIOFactory(contextFactory, not self.isServer, None)
        # The unbuffered protocol: writes go out at once, no reactor needed.
        tlsProtocol = TLSMemoryBIOProtocol(factory, self.protocol, False)
        self.protocol = tlsProtocol
        self._tlsProtocol = tlsProtocol
        tlsProtocol.makeConnection(_BypassTLS(iosim.FakeTransport, self))

    def write(self, data):
        if self._tlsProtocol is not None:
            self._tlsProtocol.write(data)
        else:
            iosim.FakeTransport.write(self, data)

    def getHandle(self):
        """The OpenSSL connection once TLS started (as Twisted's startTLS sets it)."""
        if self._tlsProtocol is None:
            raise AttributeError("getHandle")
        return self._tlsProtocol.getHandle()

    def loseConnection(self):
        if self._tlsProtocol is not None:
            self._tlsProtocol.loseConnection()
        else:
            iosim.FakeTransport.loseConnection(self)


class ClientProtocol(Protocol):
    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


def stls_in_memory(h, server, peer=None):
    """Connect C{server} to a TLS client over iosim, STLS, handshake; return (client, send)."""
    client = ClientProtocol()
    serverTransport = TLSFakeTransport(server, isServer=True, peerAddress=peer)
    clientTransport = TLSFakeTransport(client, isServer=False)
    pump = iosim.connect(server, serverTransport, client, clientTransport, greet=False)
    pump.flush()
    greeting = client.received
    clientTransport.write(b"STLS\r\n")
    pump.flush()
    trust = Certificate.loadPEM(open(h.ca_path, "rb").read())
    clientTransport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
    pump.flush()
    client.received = b""

    def send(data):
        clientTransport.write(data)
        pump.flush()
        out, client.received = client.received, b""
        return out.split(b"\r\n")[:-1]

    return greeting, send


class _Publisher:
    def addObserver(self, observer):
        pass

    def removeObserver(self, observer):
        pass


class PausingTransport(StringTransport):
    """A client that reads slowly: the message producer is paused after each write."""

    def write(self, data):
        super().write(data)
        if isinstance(self.producer, MessageProducer):
            self.producer.pauseProducing()
