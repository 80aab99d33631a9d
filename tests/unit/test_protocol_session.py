"""
The connection side of a POP3 session (L{securepop.protocol.session}):
greeting and admission, framing and line limits, pipelining, idle timeout
and login deadline, TLS facts, the protocol log of replies.
"""

import pytest
from twisted.internet import task
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.test import iosim

from securepop.protocol.server import POP3Factory
from securepop.protocol.session import IdleTimer, LineBuffer, _LineTooLong
from securepop.protocol.streaming import MessageProducer
from tests.unit.protocol_harness import (  # noqa: F401 (fixtures)
    PASSWORD, ClientProtocol, Harness, TLSFakeTransport, _Publisher, identity, login, secure,
    starttls, stls_in_memory,
)


# -- the line buffer and the idle timer ------------------------------------------------

def test_line_buffer_splits_lines_and_answers_an_overlong_one_once():
    buffer = LineBuffer()
    buffer.feed(b"CAPA\r\nNOOP\nST")
    assert buffer.next_line(255) == b"CAPA"
    assert buffer.next_line(255) == b"NOOP"         # a bare LF ends a line too
    assert buffer.next_line(255) is None            # incomplete: waits
    assert len(buffer) == 2
    buffer.feed(b"x" * 300)
    with pytest.raises(_LineTooLong):
        buffer.next_line(255)
    buffer.feed(b"y" * 300)
    assert buffer.next_line(255) is None            # the same line: no second answer
    buffer.feed(b"z\r\nQUIT\r\n")
    assert buffer.next_line(255) == b"QUIT"


def test_line_buffer_reset_forgets_the_discarded_line():
    buffer = LineBuffer()
    buffer.feed(b"x" * 300)
    with pytest.raises(_LineTooLong):
        buffer.next_line(255)
    buffer.reset()
    buffer.feed(b"CAPA\r\n")
    assert buffer.next_line(255) == b"CAPA"
    buffer.feed(b"x" * 253 + b"\r\n")               # 255 with CRLF: the most allowed
    assert buffer.next_line(255) == b"x" * 253
    buffer.feed(b"x" * 254 + b"\r\n")
    with pytest.raises(_LineTooLong):
        buffer.next_line(255)


def test_idle_timer_moves_its_deadline_with_one_delayed_call():
    clock, fired = task.Clock(), []
    timer = IdleTimer(clock, lambda: fired.append(clock.seconds()))
    timer.restart(30)
    clock.advance(20)
    timer.restart(30)                               # moved, not rescheduled
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(29)
    assert fired == []
    clock.advance(1)
    assert fired == [50]
    timer.restart(600)
    timer.restart(30)                               # a shorter timeout applies at once
    clock.advance(30)
    assert fired == [50, 80]
    timer.restart(10)
    timer.cancel()
    clock.advance(20)
    assert fired == [50, 80] and clock.getDelayedCalls() == []


def test_greeting_and_capa_before_tls(starttls):
    assert starttls.lines()[0].startswith(b"+OK")
    caps = starttls.send(b"CAPA\r\n")
    assert caps[0].startswith(b"+OK") and caps[-1] == b"."
    assert b"STLS" in caps and b"USER" not in caps
    assert not any(c.startswith(b"SASL") for c in caps)


def test_capa_on_secure_listener(secure):
    caps = secure.send(b"CAPA\r\n")
    assert b"USER" in caps and b"SASL PLAIN" in caps and b"STLS" not in caps
    login(secure)
    caps = secure.send(b"CAPA\r\n")
    assert b"USER" not in caps and not any(c.startswith(b"SASL") for c in caps)


def test_pipelined_commands_answered_in_order(secure):
    login(secure)
    out = secure.send(b"NOOP\r\nSTAT\r\nLIST 1\r\nBOGUS\r\nUIDL 9\r\nNOOP\r\n")
    assert out[0] == b"+OK" and out[1].startswith(b"+OK 3 ") and out[2] == b"+OK 1 24"
    assert out[3:] == [b"-ERR Unknown command", b"-ERR No such message", b"+OK"]


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


def test_overlong_line_over_several_reads_gets_one_answer(secure):
    out = secure.send(b"x" * 300)
    out += secure.send(b"y" * 300)
    out += secure.send(b"z" * 300 + b"\r\nCAPA\r\n")
    assert out[0] == b"-ERR Line too long"
    assert out[1].startswith(b"+OK")                # the next answer belongs to CAPA


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


class _Peek:
    def __init__(self, data):
        self.data = data

    def peek(self, n):
        return self.data[:n]


class _LimitSession:
    def __init__(self, mech=None, line=b"", secure=True):
        from securepop.protocol.states import AUTHORIZATION

        self._exchange = object() if mech else None
        self._exchange_mech = mech
        self._input = _Peek(line)
        self.secure = secure
        self.state = AUTHORIZATION


def test_line_limits_fit_each_mechanisms_tokens():
    """A Kerberos ticket with a large PAC (Windows: 48,000 octets) fits; others keep theirs."""
    from securepop.protocol import session as s

    assert s._line_limit(_LimitSession("GSSAPI")) == s.MAX_KERBEROS_LINE >= 64002
    assert s._line_limit(_LimitSession("XOAUTH2")) == s.MAX_BEARER_LINE
    assert s._line_limit(_LimitSession("NTLM")) == s.MAX_AUTH_LINE
    assert s._line_limit(_LimitSession(line=b"AUTH GSSAPI YII=")) == s.MAX_KERBEROS_LINE
    assert s._line_limit(_LimitSession(line=b"AUTH gssapi YII=")) == s.MAX_KERBEROS_LINE
    assert s._line_limit(_LimitSession(line=b"AUTH PLAIN AGEA")) == s.MAX_COMMAND_LINE
    # Before TLS no command line grows.
    assert s._line_limit(_LimitSession(line=b"AUTH GSSAPI YII=", secure=False)) == \
        s.MAX_COMMAND_LINE
    assert s.MAX_KERBEROS_LINE <= s.MAX_BUFFER
