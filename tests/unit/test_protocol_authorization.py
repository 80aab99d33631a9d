"""
The AUTHORIZATION state (L{securepop.protocol.authorization}): the secure
channel rule, USER/PASS, APOP, AUTH and its exchange, STLS, the penalty gate
and the failure accounting.
"""

from cryptography.hazmat.primitives.serialization import Encoding

import pytest
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from zope.interface.verify import verifyObject

from securepop import config
from securepop.interfaces import ICredentialSource, ISASLContext
from securepop.protocol.authorization import SASLContext
from securepop.protocol.server import POP3Factory
from securepop.testing import tls as tlstesting
from tests.unit.protocol_harness import (  # noqa: F401 (fixtures)
    PASSWORD, TOML, ClientProtocol, Harness, MemorySource, RecordingTransport,
    TLSFakeTransport, identity, login, secure, starttls, stls_in_memory,
)


def test_sasl_context_provides_interface(secure):
    context = SASLContext(secure.session)
    assert verifyObject(ISASLContext, context)
    assert context.ntlmDelegate() is None           # no domain controller configured
    secure.ctx._ntlm_delegate = lambda: "helper"
    assert context.ntlmDelegate() == "helper"
    assert context.secure and context.hostname == "localhost"


def test_a_failed_exchange_is_charged_to_the_user_it_names(secure):
    """The exchange's C{username} reaches the lockout; PLAIN names none."""
    charged = []
    secure.ctx.penalty_failure = lambda address, user: charged.append(user) or 0.0
    assert secure.send(b"AUTH PLAIN\r\n") == [b"+ "]
    secure.session._exchange.username = "mallory"
    assert secure.send(b"AAB4\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert secure.send(b"AUTH PLAIN AAB4\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert charged == ["mallory", None]


def test_memory_source_provides_interface():
    verifyObject(ICredentialSource, MemorySource({}))


@pytest.mark.parametrize("line", [b"USER alice", b"PASS x", b"AUTH PLAIN",
                                  b"AUTH PLAIN AGFsaWNlAHgK"])
def test_credentials_before_tls_refused_unchecked(starttls, line):
    starttls.lines()
    reply = starttls.send(line + b"\r\n")
    assert len(reply) == 1 and reply[0].startswith(b"-ERR [AUTH]")
    assert starttls.source.verified == []            # nothing was checked


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
    session._login_failed("NTLM", "alice", "ntlmv1-refused")
    assert secure.failures(session.peer) == 0
    session._login_failed("PLAIN", "alice", "bad-password")
    assert secure.failures(session.peer) == 1


def test_credentials_before_tls_are_refused_and_counted(starttls):
    starttls.lines()
    for _ in range(4):
        assert starttls.send(b"USER alice\r\n") == [
            b"-ERR [AUTH] Authentication requires TLS: use STLS first"]
    assert starttls.send(b"USER alice\r\n") == [
        b"-ERR [SYS/PERM] Too many errors, closing connection"]


def test_a_penalised_address_waiting_for_its_client_holds_no_one(tmp_path, identity):
    """
    Two connections of one penalised address, both mid-exchange: the gate
    holds an address's place only while the server checks, never while it
    waits for a client (else one stalled client would block the other).
    """
    h = Harness(tmp_path, identity, listener_tls="implicit")
    first = h.connect()
    h.lines()
    h.record_failure(first.peer)
    h.clock.advance(10)                              # the penalty has elapsed
    assert h.send(b"AUTH PLAIN\r\n") == [b"+ "]      # first: the client's turn now
    second_transport = StringTransport()
    second = POP3Factory(h.ctx, h.listener).buildProtocol(None)
    second.makeConnection(second_transport)
    second_transport.clear()
    second.dataReceived(b"AUTH PLAIN\r\n")
    assert second_transport.value() == b"+ \r\n"     # not held behind the first client
