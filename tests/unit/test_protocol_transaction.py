"""
The TRANSACTION and UPDATE states (L{securepop.protocol.transaction}):
the maildrop commands, RETR/TOP streaming, QUIT and what a dropped
connection leaves.
"""

import pytest

from securepop.protocol.streaming import MessageProducer
from tests.unit.protocol_harness import (  # noqa: F401 (fixtures)
    Harness, PausingTransport, identity, login, secure,
)


def _retr_all(h, line):
    h.session.dataReceived(line)
    while isinstance(h.transport.producer, MessageProducer):
        h.transport.producer.resumeProducing()
    return h.lines()


@pytest.mark.parametrize("only_crlf, first_line", [(False, b"Subject: one"),
                                                   (True, b"Subject: one\n\n..first\n.")])
def test_retr_asks_the_mailbox_whether_the_message_needs_conversion(secure, only_crlf,
                                                                    first_line):
    """A message the mailbox declares CRLF-only goes out as stored (no LF pass)."""
    login(secure)
    asked = []
    secure.session.mailbox.hasOnlyCRLF = lambda i: asked.append(i) or only_crlf
    out = _retr_all(secure, b"RETR 1\r\n")
    assert asked == [0]
    assert out[0] == b"+OK 24 octets" and out[1] == first_line


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


def test_retr_streams_and_stuffs(secure):
    login(secure)
    secure.session.dataReceived(b"RETR 1\r\nNOOP\r\n")
    # The message producer is pulled until done; then the session registers
    # itself again (a streaming producer, for reply backpressure).
    while isinstance(secure.transport.producer, MessageProducer):
        secure.transport.producer.resumeProducing()
    assert secure.lines() == [b"+OK 24 octets", b"Subject: one", b"", b"..first", b".",
                              b"+OK"]


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
