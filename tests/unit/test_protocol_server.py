"""
The POP3 state machine in memory: StringTransport and a fake clock for the
states, timers and hostile input; STLS with real TLS (pyOpenSSL) over
iosim's in-memory pump.  The session gets a real L{ServerContext} with an
in-memory credential source and a real MaildirMailbox in tmp_path.
"""

import os

from cryptography.hazmat.primitives.serialization import Encoding

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet._newtls import _BypassTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import StringTransport

from securepop.protocol.streaming import MessageProducer
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.gate import PenaltyGate
from securepop.auth.penalty import FailurePenalty
from securepop.auth.portal import MaildirRealm, build_portal
from securepop.auth.records import UserRecord
from securepop.mailstore.maildir import MaildirStore
from securepop.interfaces import ICredentialSource, PLAINTEXT
from securepop.protocol.context import ServerContext
from securepop.protocol.server import POP3Factory, POP3Session
from securepop.sasl import registry
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


def test_memory_source_provides_interface():
    verifyObject(ICredentialSource, MemorySource({}))


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
        self.penalty = FailurePenalty(self.clock, base=2.0, maximum=2.0) if penalty else None
        self.ctx = ServerContext(
            self.settings, self.clock, build_portal(self.source, realm), self.source,
            mechanisms, tls=tls,
            penalty=self.penalty, gate=PenaltyGate(self.clock, self.penalty) if penalty else None)
        self.listener = config.ListenSettings(endpoint="tcp:0", tls=listener_tls)
        self.maildir = tmp_path / "mail" / "alice" / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for i, body in enumerate(MESSAGES):
            (self.maildir / "new" / f"100{i}.M1P1.host").write_bytes(body)

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


# -- greeting, CAPA, secure channel ----------------------------------------------------

def test_greeting_and_capa_before_tls(starttls):
    assert starttls.lines()[0].startswith(b"+OK")
    caps = starttls.send(b"CAPA\r\n")
    assert caps[0].startswith(b"+OK") and caps[-1] == b"."
    assert b"STLS" in caps and b"USER" not in caps
    assert not any(c.startswith(b"SASL") for c in caps)


@pytest.mark.parametrize("line", [b"USER alice", b"PASS x", b"AUTH PLAIN",
                                  b"AUTH PLAIN AGFsaWNlAHgK"])
def test_credentials_before_tls_refused_unchecked(starttls, line):
    starttls.lines()
    reply = starttls.send(line + b"\r\n")
    assert len(reply) == 1 and reply[0].startswith(b"-ERR [AUTH]")
    assert starttls.source.verified == []            # nothing was checked


def test_capa_on_secure_listener(secure):
    caps = secure.send(b"CAPA\r\n")
    assert b"USER" in caps and b"SASL PLAIN" in caps and b"STLS" not in caps
    login(secure)
    caps = secure.send(b"CAPA\r\n")
    assert b"USER" not in caps and not any(c.startswith(b"SASL") for c in caps)


# -- state machine ---------------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 0",
                                  b"RSET", b"NOOP"])
def test_transaction_commands_need_login(secure, line):
    assert secure.send(line + b"\r\n") == [b"-ERR Command not valid in this state"]


def test_commands_refused_before_login_count_toward_the_bad_command_limit(secure):
    # NOOP before login used to keep a pre-login slot for ever.
    for _ in range(4):
        assert secure.send(b"NOOP\r\n") == [b"-ERR Command not valid in this state"]
    assert secure.send(b"NOOP\r\n") == [b"-ERR [SYS/PERM] Too many errors, closing connection"]
    assert secure.transport.disconnecting


def test_commands_refused_after_login_do_not_count(secure):
    login(secure)
    for _ in range(8):
        assert secure.send(b"NOOP\r\n") == [b"+OK"]
    assert not secure.transport.disconnecting


def test_login_and_second_login_refused(secure):
    login(secure)
    assert secure.send(b"USER alice\r\n") == [b"-ERR Already authenticated"]
    assert secure.send(b"PASS " + PASSWORD + b"\r\n") == [b"-ERR Already authenticated"]
    assert secure.send(b"AUTH PLAIN\r\n") == [b"-ERR Already authenticated"]
    assert secure.send(b"STAT\r\n")[0].startswith(b"+OK 3 ")


@pytest.mark.parametrize("password, answer", [
    (PASSWORD, b"+OK Logged in, 3 messages"),
    (b"wrong", b"-ERR [AUTH] Authentication failed"),
])
def test_penalty_comes_before_the_check_whatever_the_result(secure, password, answer):
    """A right password after a failure waits exactly as long as a wrong one: no oracle."""
    assert secure.send(b"USER alice\r\nPASS wrong\r\n") == [
        b"+OK Send PASS", b"-ERR [AUTH] Authentication failed"]   # the first: no penalty yet
    assert secure.send(b"USER alice\r\n") == [b"+OK Send PASS"]
    assert secure.send(b"PASS " + password + b"\r\n") == []      # waits before its check
    secure.clock.advance(1.9)
    assert secure.lines() == []
    secure.clock.advance(0.2)
    assert secure.lines()[0].startswith(answer)


def test_unknown_user_same_text_as_wrong_password(secure):
    unknown = secure.send(b"USER nobody\r\nPASS " + PASSWORD + b"\r\n")
    wrong = secure.send(b"USER alice\r\nPASS wrong\r\n")
    secure.clock.advance(5)
    wrong += secure.lines()
    assert unknown == wrong == [b"+OK Send PASS", b"-ERR [AUTH] Authentication failed"]


def test_too_many_attempts_close(secure):
    out = []
    for _ in range(3):
        out += secure.send(b"USER alice\r\nPASS wrong\r\n")
        secure.clock.advance(5)
        out += secure.lines()
    assert out[-1] == b"-ERR [AUTH] Too many failed attempts, closing connection"
    assert secure.transport.disconnecting


@pytest.mark.parametrize("number", [b"0", b"4", b"-1", b"+1", b"1x", b"99999999999"])
def test_dele_bad_number_deletes_nothing(secure, number):
    login(secure)
    stored = secure.stored()
    reply = secure.send(b"DELE " + number + b"\r\n")
    assert len(reply) == 1 and reply[0].startswith(b"-ERR")
    assert secure.send(b"QUIT\r\n") == [b"+OK Bye"]
    assert secure.stored() == stored


def test_dele_rset_quit(secure):
    login(secure)
    uidl = secure.send(b"UIDL\r\n")
    assert secure.send(b"DELE 2\r\n") == [b"+OK Message 2 deleted"]
    assert secure.send(b"LIST\r\n")[1:-1] == [b"1 24", b"3 25"]
    assert secure.send(b"RSET\r\nUIDL\r\n") == [b"+OK"] + uidl
    assert secure.send(b"DELE 1\r\nQUIT\r\n") == [b"+OK Message 1 deleted", b"+OK Bye"]
    assert len(secure.stored()) == 2
    assert secure.transport.disconnecting


def test_dropped_connection_commits_nothing(secure):
    login(secure)
    secure.send(b"DELE 1\r\nDELE 2\r\n")
    secure.session.connectionLost(None)
    assert len(secure.stored()) == 3
    # The lock went with the connection: a new session logs in.
    secure.connect()
    secure.lines()
    login(secure)


def test_pipelined_commands_answered_in_order(secure):
    login(secure)
    out = secure.send(b"NOOP\r\nSTAT\r\nLIST 1\r\nBOGUS\r\nUIDL 9\r\nNOOP\r\n")
    assert out[0] == b"+OK" and out[1].startswith(b"+OK 3 ") and out[2] == b"+OK 1 24"
    assert out[3:] == [b"-ERR Unknown command", b"-ERR No such message", b"+OK"]


def test_retr_streams_and_stuffs(secure):
    login(secure)
    secure.session.dataReceived(b"RETR 1\r\nNOOP\r\n")
    # The message producer is pulled until done; then the session registers
    # itself again (a streaming producer, for reply backpressure).
    while isinstance(secure.transport.producer, MessageProducer):
        secure.transport.producer.resumeProducing()
    assert secure.lines() == [b"+OK 24 octets", b"Subject: one", b"", b"..first", b".",
                              b"+OK"]


def test_overlong_and_nul_lines(secure):
    assert secure.send(b"N" * 300 + b"\r\n") == [b"-ERR Line too long"]
    assert secure.send(b"CAPA\x00\r\n") == [b"-ERR Syntax error in arguments"]
    assert secure.send(b"\xff\xfe\r\n") == [b"-ERR Unknown command"]
    assert secure.send(b"CAPA\r\n")[0].startswith(b"+OK")


def test_repeated_errors_close(secure):
    out = secure.send(b"X\r\n" * 5)
    assert out[-1] == b"-ERR [SYS/PERM] Too many errors, closing connection"
    assert secure.transport.disconnecting
    assert secure.send(b"CAPA\r\n") == []               # nothing more is answered


def test_no_exception_text_on_internal_error(secure):
    login(secure)
    secure.session.mailbox.getUidl = lambda i: 1 / 0
    out = secure.send(b"UIDL 1\r\n")
    assert out == [b"-ERR [SYS/TEMP] Temporary server error"]
    assert b"ZeroDivision" not in secure.transport.value()


# -- idle timeouts --------------------------------------------------------------------------------

def test_idle_timeout_before_login(starttls):
    starttls.clock.advance(29)
    assert not starttls.transport.disconnecting
    starttls.send(b"CAPA\r\n")                     # activity restarts the timer
    starttls.clock.advance(29)
    assert not starttls.transport.disconnecting
    starttls.clock.advance(2)
    assert starttls.transport.disconnecting


def test_idle_timeout_after_login_is_long(secure):
    login(secure)
    secure.clock.advance(599)
    assert not secure.transport.disconnecting
    secure.clock.advance(2)
    assert secure.transport.disconnecting
    assert len(secure.stored()) == 3


def test_idle_timeout_applies_to_stalled_retr(secure):
    login(secure)
    (secure.maildir / "new" / "2000.M1P1.big").write_bytes(b"x" * 10**6)
    secure.session.connectionLost(None)          # re-login to see the new message
    secure.connect()
    login_ok = secure.send(b"USER alice\r\nPASS " + PASSWORD + b"\r\n")
    assert login_ok[-1].startswith(b"+OK Logged in, 4 messages")
    write = secure.transport.write

    def fullAfterEachWrite(data):                # a slow reader: the buffer fills
        write(data)
        if isinstance(secure.transport.producer, MessageProducer):
            secure.transport.producer.pauseProducing()

    secure.transport.write = fullAfterEachWrite
    secure.send(b"RETR 4\r\n")
    producer = secure.transport.producer
    assert isinstance(producer, MessageProducer)
    for _ in range(3):                           # a reader that keeps reading stays
        secure.clock.advance(500)
        producer.resumeProducing()
    assert secure.transport.producer is producer  # 1 MB: not sent yet
    assert not secure.transport.disconnecting
    secure.clock.advance(601)                    # then stops reading
    assert secure.transport.disconnecting


# -- STLS -----------------------------------------------------------------------------------------

class RecordingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.tls_started = []

    def startTLS(self, contextFactory, beNormal=True):
        self.tls_started.append((contextFactory, self.value()))


def test_stls_discards_pipelined_lines(tmp_path, identity):
    h = Harness(tmp_path, identity)
    h.connect(RecordingTransport())
    h.lines()
    assert h.send(b"STLS\r\nCAPA\r\nUSER alice\r\n") == [b"+OK Begin TLS negotiation"]
    assert h.transport.tls_started and h.transport.tls_started[0][0] is h.ctx.tls
    assert h.session.secure
    caps = h.send(b"CAPA\r\n")
    assert b"STLS" not in caps and b"USER" in caps
    assert h.send(b"PASS x\r\n") == [b"-ERR USER first"]        # USER was forgotten


def test_stls_refused_on_implicit_and_twice(secure, tmp_path):
    assert secure.send(b"STLS\r\n") == [b"-ERR STLS not available"]


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


def test_stls_with_real_tls_in_memory(tmp_path, identity):
    h = Harness(tmp_path, identity)
    server = POP3Factory(h.ctx, h.listener).buildProtocol(None)
    client = ClientProtocol()
    serverTransport = TLSFakeTransport(server, isServer=True)
    clientTransport = TLSFakeTransport(client, isServer=False)
    pump = iosim.connect(server, serverTransport, client, clientTransport, greet=True)
    assert client.received.startswith(b"+OK")
    clientTransport.write(b"STLS\r\nCAPA\r\n")
    pump.flush()
    assert client.received.endswith(b"+OK Begin TLS negotiation\r\n")
    client.received = b""
    trust = Certificate.loadPEM(open(h.ca_path, "rb").read())
    clientTransport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
    pump.flush()
    assert server.secure
    assert client.received == b""                        # pipelined CAPA never answered
    clientTransport.write(b"CAPA\r\n")
    pump.flush()
    assert b"\r\nUSER\r\n" in client.received and b"STLS" not in client.received
    client.received = b""
    clientTransport.write(b"USER alice\r\nPASS " + PASSWORD + b"\r\nSTAT\r\n")
    pump.flush()
    lines = client.received.split(b"\r\n")
    assert lines[0] == b"+OK Send PASS"
    assert lines[1].startswith(b"+OK Logged in")
    assert lines[2].startswith(b"+OK 3 ")


def test_stls_handshake_with_untrusted_ca_fails(tmp_path, identity):
    h = Harness(tmp_path, identity)
    server = POP3Factory(h.ctx, h.listener).buildProtocol(None)
    client = ClientProtocol()
    serverTransport = TLSFakeTransport(server, isServer=True)
    clientTransport = TLSFakeTransport(client, isServer=False)
    pump = iosim.connect(server, serverTransport, client, clientTransport, greet=True)
    clientTransport.write(b"STLS\r\n")
    pump.flush()
    other = tlstesting.TestCA(name="other CA", intermediate=False)
    pem = other.root.public_bytes(Encoding.PEM)
    clientTransport.startTLS(optionsForClientTLS("localhost",
                                                 trustRoot=Certificate.loadPEM(pem)))
    client.received = b""
    pump.flush()
    connection = server.transport._tlsProtocol._tlsConnection
    assert connection is None or not connection.get_state_string().endswith(b"successfully")
    clientTransport.write(b"CAPA\r\n")
    pump.flush()
    assert b"USER" not in client.received           # no session over a refused handshake


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


def test_tls_facts_and_metric_once_per_handshake(tmp_path, identity):
    from securepop.ops import metrics

    h = Harness(tmp_path, identity)
    m = metrics.Metrics()
    metrics.instrument(h.ctx, m, publisher=_Publisher())
    server = POP3Factory(h.ctx, h.listener).buildProtocol(None)
    _, send = stls_in_memory(h, server)
    assert server.tls_info["protocol"] == "TLSv1.3"
    assert send(b"USER alice\r\nPASS " + PASSWORD + b"\r\n")[1].startswith(b"+OK Logged in")
    assert send(b"QUIT\r\n") == [b"+OK Bye"]
    server.connectionLost(None)
    # one TLS session: counted at the handshake, not again when it ends
    assert m.registry.get_sample_value("securepop_tls_sessions_total",
                                       {"version": "TLSv1.3"}) == 1


def test_stls_behind_proxy_header_keeps_tls_facts(tmp_path, identity):
    """The TLS layer under the PROXY wrapper reports its handshake to the session."""
    from twisted.internet.address import IPv4Address

    from securepop.access.proxy import ProxyProtocolFactory

    h = Harness(tmp_path, identity)
    factory = ProxyProtocolFactory(POP3Factory(h.ctx, h.listener), ["127.0.0.1/32"], h.clock)
    proxy = IPv4Address("TCP", "127.0.0.1", 40000)
    wrapper = factory.buildProtocol(proxy)
    client = ClientProtocol()
    serverTransport = TLSFakeTransport(wrapper, isServer=True, peerAddress=proxy)
    clientTransport = TLSFakeTransport(client, isServer=False)
    pump = iosim.connect(wrapper, serverTransport, client, clientTransport, greet=False)
    clientTransport.write(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 110\r\nSTLS\r\n")
    pump.flush()
    assert client.received.startswith(b"+OK") and b"Begin TLS" in client.received
    session = wrapper.wrappedProtocol
    assert session.peer == "198.51.100.7"
    trust = Certificate.loadPEM(open(h.ca_path, "rb").read())
    clientTransport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
    pump.flush()
    assert session.secure
    assert session.tls_info["protocol"] == "TLSv1.3"
    assert session.tls_info["cipher"] and session.tls_info["sni"] == "localhost"


def test_apop_timestamp_only_in_a_greeting_under_tls(tmp_path, identity):
    apop = config.parse(TOML.replace("[auth]\n", "[auth]\napop = true\n"),
                        data_dir=str(tmp_path))
    plain = Harness(tmp_path, identity)
    plain.ctx.settings = apop
    plain.connect()
    (greeting,) = plain.lines()
    assert greeting.startswith(b"+OK") and b"<" not in greeting
    implicit = Harness(tmp_path, identity, listener_tls="implicit")
    implicit.ctx.settings = apop
    implicit.connect()
    (greeting,) = implicit.lines()
    assert greeting.endswith(b"@localhost>") and b" <" in greeting
    # after STLS there is still no timestamp: APOP is refused, unchecked
    h = Harness(tmp_path, identity)
    h.ctx.settings = apop
    server = POP3Factory(h.ctx, h.listener).buildProtocol(None)
    greeting, send = stls_in_memory(h, server)
    assert b"<" not in greeting
    assert send(b"APOP alice 0123456789abcdef0123456789abcdef\r\n") == \
        [b"-ERR [AUTH] Authentication mechanism not available"]
    assert h.source.verified == []


def test_apop_disabled_has_no_timestamp_anywhere(secure):
    assert secure.session._apop_stamp is None
    assert secure.send(b"APOP alice 0123456789abcdef0123456789abcdef\r\n") == \
        [b"-ERR APOP is disabled"]


def test_multiline_reply_is_one_protocol_log_entry(secure, tmp_path):
    from securepop.ops.protolog import ProtocolLog

    log = ProtocolLog(tmp_path / "protocol.log", now=lambda: 0.0)
    secure.ctx._protocol_log = log
    login(secure)
    listing = secure.send(b"LIST\r\n")
    assert len(listing) == 5
    secure.send(b"CAPA\r\n")
    log.close()
    entries = (tmp_path / "protocol.log").read_text().splitlines()
    replies = [e.split(" S ", 1)[1] for e in entries if " S " in e]
    octets = sum(len(line) + 2 for line in listing[1:])
    assert "+OK [+4 lines, %d octets]" % octets in replies
    assert not any(r.startswith(("1 ", "2 ", "3 ")) for r in replies)
    assert any(r.startswith("+OK Capability list follows [+") for r in replies)
    assert "C LIST" in " ".join(entries)


class _Publisher:
    def addObserver(self, observer):
        pass

    def removeObserver(self, observer):
        pass


def test_overlong_line_over_several_reads_gets_one_answer(secure):
    out = secure.send(b"x" * 300)
    out += secure.send(b"y" * 300)
    out += secure.send(b"z" * 300 + b"\r\nCAPA\r\n")
    assert out[0] == b"-ERR Line too long"
    assert out[1].startswith(b"+OK")                # the next answer belongs to CAPA


# -- admission: a plain decision, a later one (DNS), a broken policy ----------------

def test_admission_decided_now_greets_at_once(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.connect()
    assert h.lines()[0].startswith(b"+OK")


def test_admission_decided_later_greets_when_it_is(tmp_path, identity):
    from twisted.internet import defer

    from securepop.access.policy import Decision

    h = Harness(tmp_path, identity, listener_tls="implicit")
    pending = defer.Deferred()
    h.ctx.admit = lambda address: pending
    h.connect()
    assert h.lines() == []
    assert h.send(b"CAPA\r\n") == []          # nothing is read before the greeting
    pending.callback(Decision(True, None, "allowed"))
    lines = h.lines()
    assert lines[0].startswith(b"+OK") and b"+OK Capability list follows" in lines


@pytest.mark.parametrize("how", ["raises", "fails-later"])
def test_broken_admission_declines_without_internals(tmp_path, identity, how):
    from twisted.internet import defer

    h = Harness(tmp_path, identity, listener_tls="implicit")

    def admit(address):
        if how == "raises":
            raise RuntimeError("secret internal detail")
        return defer.fail(RuntimeError("secret internal detail"))

    h.ctx.admit = admit
    h.connect()
    out = h.transport.value()
    assert out.startswith(b"-ERR [SYS/PERM]") and out.count(b"\r\n") == 1
    assert b"secret" not in out and b"Traceback" not in out
    assert h.transport.disconnecting


class PausingTransport(StringTransport):
    """A client that reads slowly: the message producer is paused after each write."""

    def write(self, data):
        super().write(data)
        if isinstance(self.producer, MessageProducer):
            self.producer.pauseProducing()


def test_reset_during_retr_runs_nothing_pipelined_behind_it(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    (h.maildir / "new" / "1000.M1P1.host").write_bytes(
        b"Subject: big\n\n" + b"x" * 500_000 + b"\n")
    h.connect(PausingTransport())
    h.lines()
    login(h)
    h.session.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    producer = h.transport.producer
    assert isinstance(producer, MessageProducer)
    # The connection resets: the transport stops the producer, then the protocol.
    producer.stopProducing()
    h.session.connectionLost(None)
    out = h.transport.value()
    assert b"deleted" not in out and b"+OK Bye" not in out
    assert len(h.stored()) == 3
    h.connect()                     # the lock went with the connection
    h.lines()
    login(h)


def test_reset_during_retr_read_to_the_end_is_the_negative_case(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.connect()
    h.lines()
    login(h)
    out = h.send(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert out[-2:] == [b"+OK Message 1 deleted", b"+OK Bye"]
    assert len(h.stored()) == 2


def test_overlong_auth_line_aborts_the_exchange(secure):
    assert secure.send(b"AUTH PLAIN\r\n") == [b"+ "]
    aborted = []
    secure.session._exchange.abort = lambda: aborted.append(True)
    reply = secure.send(b"A" * 9000 + b"\r\n")
    assert reply == [b"-ERR [AUTH] Malformed authentication data"]
    assert aborted == [True]            # a delegated NTLM helper is freed at once
    assert secure.session._exchange is None


def test_policy_refusal_is_no_guess(secure):
    """An NTLMv1 refusal (a policy) grows neither the penalty nor the lockout."""
    session = secure.session
    session._loginFailed("NTLM", "alice", "ntlmv1-refused")
    assert secure.penalty.failures(session.peer) == 0
    session._loginFailed("PLAIN", "alice", "bad-password")
    assert secure.penalty.failures(session.peer) == 1


def test_credentials_before_tls_are_refused_and_counted(starttls):
    starttls.lines()
    for _ in range(4):
        assert starttls.send(b"USER alice\r\n") == [
            b"-ERR [AUTH] Authentication requires TLS: use STLS first"]
    assert starttls.send(b"USER alice\r\n") == [
        b"-ERR [SYS/PERM] Too many errors, closing connection"]


def test_login_deadline_closes_a_session_that_never_logs_in(secure):
    for _ in range(19):                     # login_deadline: the default 120 s
        secure.clock.advance(6)             # each CAPA restarts the idle timer (30 s)
        assert secure.send(b"CAPA\r\n")[0] == b"+OK Capability list follows"
    secure.clock.advance(7)
    assert secure.lines() == [b"-ERR [SYS/TEMP] No login in the time allowed, closing connection"]
    assert secure.transport.disconnecting


def test_login_deadline_does_not_touch_a_logged_in_session(secure):
    login(secure)
    secure.clock.advance(130)
    assert secure.send(b"NOOP\r\n") == [b"+OK"]
