"""
Tests for L{securepop.lmtp.server}: an LMTP session driven through a
StringTransport, with an in-memory credential source and real Maildirs in
the test's directory.
"""

import errno
import os
from types import SimpleNamespace

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import address, defer
from twisted.internet.testing import StringTransport

from securepop import config
from securepop.access.rules import Decision
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.lmtp import delivery as lmtp_delivery
from securepop.lmtp.server import MAX_LINE, LMTPFactory
from securepop.mailstore.maildir import MaildirStore

HOST = "mx.example.org"


class FakeSource:
    """lookupUser over a dict; C{down} answers SourceUnavailable; C{held} delays."""

    def __init__(self, users):
        self.users = users
        self.down = False
        self.held = None
        self.asked = []

    def lookupUser(self, name):
        self.asked.append(name)
        if self.down:
            return defer.fail(SourceUnavailable("directory down"))
        if name not in self.users:
            result = defer.fail(UnauthorizedLogin("no-such-user"))
        else:
            result = defer.succeed(UserRecord(name, info=self.users[name]))
        if self.held is not None:
            d = defer.Deferred()
            self.held.append((d, result))
            return d
        return result


class FakeContext:
    def __init__(self, settings, source, decision=Decision(True, None, "no-policy")):
        self.settings = settings
        self.source = source
        self.decision = decision
        self.counted = []
        store = MaildirStore(settings.mail.root, settings.server.data_dir)
        self.portal = SimpleNamespace(realm=SimpleNamespace(store=store))

    def peer_address(self, transport):
        return transport.getPeer().host

    def admit(self, peer):
        return self.decision

    def count(self, *labels):
        self.counted.append(labels)


def make_settings(tmp_path, mail="", lmtp=""):
    text = f"""
[server]
hostname = "{HOST}"
[mail]
root = "mail/{{user}}/Maildir"
{mail}
[[lmtp]]
endpoint = "unix:{tmp_path}/lmtp"
domains = ["example.com"]
{lmtp}
"""
    return config.parse(text, data_dir=str(tmp_path / "data"))


class Session:
    def __init__(self, tmp_path, users=("alice", "bob"), mail="", lmtp="", peer=None,
                 decision=Decision(True, None, "no-policy")):
        self.settings = make_settings(tmp_path, mail, lmtp)
        (tmp_path / "data").mkdir(exist_ok=True)
        self.source = FakeSource({u: {} for u in users})
        self.context = FakeContext(self.settings, self.source, decision)
        factory = LMTPFactory(self.context, self.settings.lmtp[0],
                              lambda f, *a: defer.maybeDeferred(f, *a))
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(
            peerAddress=peer or address.UNIXAddress(str(tmp_path / "lmtp")))
        self.proto.makeConnection(self.transport)
        self.data_dir = tmp_path / "data"

    def send(self, data):
        self.proto.dataReceived(data)

    def replies(self):
        out = self.transport.value().decode("ascii")
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def maildir(self, user):
        return self.data_dir / "mail" / user / "Maildir"

    def messages(self, user):
        new = self.maildir(user) / "new"
        if not new.exists():
            return []
        return [(new / name).read_bytes() for name in sorted(os.listdir(new))]

    def close(self):
        self.proto.connectionLost(None)


def start(session):
    session.send(b"LHLO mta.example.org\r\n")
    return session.replies()


def test_greeting_and_lhlo_extensions(tmp_path):
    s = Session(tmp_path)
    greeting = s.replies()
    assert greeting[0].startswith(f"220 {HOST} LMTP")
    s.send(b"LHLO mta.example.org\r\n")
    lines = s.replies()
    assert lines[0] == f"250-{HOST}"
    assert {l[4:] for l in lines[1:]} == {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                                          f"SIZE {50 * 1024 * 1024}"}
    assert lines[-1].startswith("250 ") and all(l.startswith("250-") for l in lines[:-1])


def test_helo_and_ehlo_are_refused_and_mail_needs_lhlo(tmp_path):
    s = Session(tmp_path)
    s.replies()
    s.send(b"HELO x\r\nEHLO x\r\nMAIL FROM:<a@b>\r\n")
    assert [l[:9] for l in s.replies()] == ["500 5.5.1", "500 5.5.1", "503 5.5.1"]


def test_two_recipients_one_reply_each_after_data_and_unknown_550(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<sender@far.example>\r\n"
           b"RCPT TO:<alice@mx.example.org>\r\n"
           b"RCPT TO:<nobody@mx.example.org>\r\n"
           b"RCPT TO:<BOB@Example.COM>\r\n")
    assert [l[:9] for l in s.replies()] == ["250 2.1.0", "250 2.1.5", "550 5.1.1",
                                            "250 2.1.5"]
    s.send(b"DATA\r\n")
    assert s.replies()[0].startswith("354")
    body = b"Subject: hi\r\n\r\n.dot line\r\n..two\r\nbare\nLF in a line\r\n\xe9 8-bit\r\n"
    wire = b"Subject: hi\r\n\r\n..dot line\r\n...two\r\nbare\nLF in a line\r\n\xe9 8-bit\r\n"
    s.send(wire + b".\r\n")
    replies = s.replies()
    assert replies == ["250 2.0.0 <alice@mx.example.org> Delivered",
                       "250 2.0.0 <BOB@Example.COM> Delivered"]
    expected = body
    assert s.messages("alice") == [b"Return-Path: <sender@far.example>\r\n"
                                   b"Delivered-To: <alice@mx.example.org>\r\n" + expected]
    assert s.messages("bob")[0].endswith(expected)
    assert s.messages("nobody") == []
    assert ("lmtp_delivery", "delivered") in s.context.counted
    assert ("lmtp_delivery", "unknown_user") in s.context.counted


def test_data_without_valid_recipient_is_refused(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<>\r\nRCPT TO:<nobody@localhost>\r\nDATA\r\nRSET\r\n")
    assert [l[:9] for l in s.replies()] == ["250 2.1.0", "550 5.1.1", "503 5.5.1",
                                            "250 2.0.0"]


def test_pipelined_replies_stay_in_order_while_lookups_wait(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.source.held = []
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\n"
           b"RCPT TO:<ghost@localhost>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n")
    assert [l[:9] for l in s.replies()] == ["250 2.1.0"]     # RCPT in flight: nothing more
    assert s.source.asked == ["alice"]                     # the next waits its turn
    while s.source.held:
        d, result = s.source.held.pop(0)
        result.chainDeferred(d)
    assert [l[:9] for l in s.replies()] == ["250 2.1.5", "550 5.1.1", "354 Start",
                                            "250 2.0.0", "221 2.0.0"]
    assert s.messages("alice")[0].endswith(b">\r\nhello\r\n")


def test_dropped_connection_in_data_leaves_nothing(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
           b"Subject: partial\r\n\r\nhalf of the")
    s.close()
    assert s.messages("alice") == []
    tmp = s.maildir("alice") / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []


@pytest.mark.parametrize("rcpt, code", [
    (b"../../etc@localhost", "550 5.1.1"),
    (b"a/b@localhost", "550 5.1.1"),
    (b"..@localhost", "550 5.1.1"),
    (b"x\x00y@localhost", "501 5.1.3"),
    (b"x\x01y@localhost", "501 5.1.3"),
    (b"alice@evil.example", "550 5.1.2"),
    (b"\"alice\"@localhost", "550 5.1.1"),
    (b"@relay.example:alice@localhost", "501 5.1.3"),
    (b"a\\b@localhost", "550 5.1.1"),
    (b"x" * 300 + b"@localhost", "501 5.1.3"),
    (b"\xc3\xa9@localhost", "501 5.1.3"),
])
def test_hostile_recipients_are_refused_and_create_nothing(tmp_path, rcpt, code):
    s = Session(tmp_path, users=("alice", "../../etc", "a/b", "x\x00y"))
    s.replies()
    start(s)
    before = sorted(p for p in tmp_path.rglob("*"))
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<" + rcpt + b">\r\n")
    assert s.replies()[1].startswith(code)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert "../../etc" not in s.source.asked and "a/b" not in s.source.asked


def test_a_5000_character_recipient_is_a_line_too_long(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    before = sorted(tmp_path.rglob("*"))
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<" + b"../" * 1700 + b"@localhost>\r\nNOOP\r\n")
    assert [l[:9] for l in s.replies()] == ["250 2.1.0", "500 5.5.2", "250 2.0.0"]
    assert sorted(tmp_path.rglob("*")) == before


def test_an_overlong_line_arriving_in_pieces_is_not_buffered(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    for _ in range(100):
        s.send(b"A" * 1000)
        assert len(s.proto._buffer) <= MAX_LINE + 1
    s.send(b"\r\nNOOP\r\n")
    assert [l[:9] for l in s.replies()] == ["500 5.5.2", "250 2.0.0"]


def test_a_message_over_the_size_limit_is_refused_for_every_recipient(tmp_path):
    s = Session(tmp_path, lmtp="max_message_size = 2048")
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<a@b.example> SIZE=4096\r\n")
    assert s.replies()[0].startswith("552 5.3.4")
    s.send(b"MAIL FROM:<a@b.example> SIZE=100\r\nRCPT TO:<alice@localhost>\r\n"
           b"RCPT TO:<bob@localhost>\r\nDATA\r\n")
    s.replies()
    s.send((b"x" * 70 + b"\r\n") * 40 + b".\r\nNOOP\r\n")
    assert [l[:9] for l in s.replies()] == ["552 5.3.4", "552 5.3.4", "250 2.0.0"]
    assert s.messages("alice") == s.messages("bob") == []
    # a message under the limit still goes through on the same connection
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nsmall\r\n.\r\n")
    assert s.replies()[-1].startswith("250 2.0.0")
    assert len(s.messages("alice")) == 1


def test_a_long_message_line_refuses_the_message_and_is_never_a_command(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
    s.replies()
    # the overlong line ends with what looks like a command: it must stay message text
    s.send(b"Subject: x\r\n\r\n" + b"y" * 2000 + b"\r\nQUIT\r\n.\r\nNOOP\r\n")
    assert [l[:9] for l in s.replies()] == ["500 5.5.2", "250 2.0.0"]
    assert s.messages("alice") == []
    assert not s.transport.disconnecting


def test_a_directory_outage_is_451(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.source.down = True
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\n")
    assert s.replies()[1].startswith("451 4.3.0")
    assert ("lmtp_delivery", "temp_failure") in s.context.counted


def test_a_full_disk_is_452_and_leaves_nothing(tmp_path, monkeypatch):
    s = Session(tmp_path)
    s.replies()
    start(s)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lmtp_delivery, "deliver", full)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nx\r\n.\r\n")
    assert s.replies()[-1].startswith("452 4.3.1")
    assert s.messages("alice") == []
    monkeypatch.setattr(lmtp_delivery, "deliver",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nx\r\n.\r\n")
    assert s.replies()[-1].startswith("451 4.3.0")


def test_over_quota_refused_at_rcpt_and_after_data(tmp_path):
    s = Session(tmp_path, mail="quota_messages = 1\nquota_bytes = 200")
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
           + b"z" * 300 + b"\r\n.\r\n")
    assert s.replies()[-1].startswith("552 5.2.2")        # the message alone is too big
    assert s.messages("alice") == []
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nsmall\r\n.\r\n")
    assert s.replies()[-1].startswith("250 2.0.0")
    before = s.messages("alice")
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\n")
    assert s.replies()[-1].startswith("552 5.2.2")        # one message already: full
    assert s.messages("alice") == before
    assert ("lmtp_delivery", "over_quota") in s.context.counted


def test_too_many_recipients(tmp_path):
    s = Session(tmp_path, lmtp="max_recipients = 1")
    s.replies()
    start(s)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\n")
    assert [l[:9] for l in s.replies()] == ["250 2.1.0", "250 2.1.5", "452 4.5.3"]


def test_bad_mail_from_and_parameters(tmp_path):
    s = Session(tmp_path)
    s.replies()
    start(s)
    s.send(b"MAIL FROM:a@b\r\nMAIL FROM:<a@b> NOTIFY=NEVER\r\nMAIL FROM:<a\x01b@c>\r\n"
           b"MAIL FROM:<a\nX-Injected: 1@c>\r\nMAIL FROM:<\xc3\xa9@c>\r\n"
           b"MAIL FROM:<a@b> BODY=8BITMIME\r\nMAIL FROM:<a@b>\r\n"
           b"RCPT TO:<alice@localhost> NOTIFY=NEVER\r\n")
    assert [l[:9] for l in s.replies()] == ["501 5.5.4", "555 5.5.4", "501 5.1.7", "501 5.1.7",
                                            "501 5.1.7", "250 2.1.0", "503 5.5.1", "555 5.5.4"]


def test_unknown_commands_close_after_ten(tmp_path):
    s = Session(tmp_path)
    s.replies()
    s.send(b"\xff\xfe\r\n" * 3 + b"VRFY x\r\n" + b"BOGUS\r\n" * 20)
    replies = s.replies()
    assert replies[0].startswith("500 5.5.1") and replies[3].startswith("502 5.5.1")
    assert replies[-1].startswith("421") and len(replies) == 11
    assert s.transport.disconnecting


def test_tcp_client_passes_the_access_policy(tmp_path):
    declined = Decision(False, "deny 192.0.2.0/24", "rule")
    s = Session(tmp_path, peer=address.IPv4Address("TCP", "192.0.2.9", 4000), decision=declined)
    assert s.replies() == ["421 4.7.0 Connection declined by access policy"]
    assert s.transport.disconnecting
    s.send(b"LHLO x\r\n")
    assert s.replies() == []
    allowed = Session(tmp_path, peer=address.IPv4Address("TCP", "127.0.0.1", 4000))
    assert allowed.replies()[0].startswith("220 ")


def test_a_policy_answered_later_holds_the_greeting(tmp_path):
    later = defer.Deferred()
    s = Session(tmp_path, peer=address.IPv4Address("TCP", "127.0.0.1", 4000), decision=later)
    s.send(b"LHLO x\r\n")
    assert s.replies() == []
    later.callback(Decision(True, None, "no-match"))
    replies = s.replies()
    assert replies[0].startswith("220 ") and replies[1] == f"250-{HOST}"
