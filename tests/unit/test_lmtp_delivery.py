"""
Tests for L{securepop.lmtp.delivery}: address splitting, the user mapping,
per-user quotas and one delivery per recipient.
"""

import os
import threading
from types import SimpleNamespace

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from securepop import config
from securepop.auth.records import UserRecord
from securepop.lmtp.delivery import (
    BAD_ADDRESS, FOREIGN_DOMAIN, OVER_QUOTA, UNKNOWN_USER, Recipient, Recipients, Reply,
    deliver_all, deliver_to, split_address, trace_header,
)
from securepop.mailstore.maildir import MaildirStore
from securepop.mailstore.quota import Quota


@pytest.mark.parametrize("raw, expected", [
    (b"alice@example.com", ("alice", "example.com")),
    (b"alice", ("alice", "")),
    (b"first.last+tag@x.example", ("first.last+tag", "x.example")),
])
def test_split_address_accepts(raw, expected):
    assert split_address(raw) == expected


@pytest.mark.parametrize("raw, reply", [
    (b"", BAD_ADDRESS), (b"a@", BAD_ADDRESS), (b"@x", BAD_ADDRESS),
    (b"a b@x", BAD_ADDRESS), (b"a\x00@x", BAD_ADDRESS), (b"\xff@x", BAD_ADDRESS),
    (b"a" * 257, BAD_ADDRESS), (b"../x@y", UNKNOWN_USER), (b"..@y", UNKNOWN_USER),
    (b"a/b@y", UNKNOWN_USER), (b"a\\b@y", UNKNOWN_USER), (b"a@b@y", UNKNOWN_USER),
    (b'"a"@y', UNKNOWN_USER),
])
def test_split_address_refuses(raw, reply):
    with pytest.raises(Reply) as e:
        split_address(raw)
    assert e.value is reply


class Source:
    def __init__(self, records):
        self.records = records

    def lookupUser(self, name):
        if name in self.records:
            return defer.succeed(self.records[name])
        return defer.fail(UnauthorizedLogin("no-such-user"))


def recipients(tmp_path, records, mail="", auth=""):
    settings = config.parse(f'[server]\nhostname = "mx.example.org"\n[mail]\n{mail}\n'
                            f'[auth]\n{auth}\n', data_dir=str(tmp_path))
    store = MaildirStore(settings.mail.root, str(tmp_path))
    context = SimpleNamespace(settings=settings, source=Source(records))
    return Recipients(context, store, domains=["Example.COM."])


def resolved(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_domains_and_case(tmp_path):
    r = recipients(tmp_path, {"alice": UserRecord("alice")})
    for raw in (b"Alice@MX.example.org", b"alice@localhost", b"alice@example.com",
                b"alice@example.com.", b"alice"):
        result = resolved(r.resolve(raw))
        assert isinstance(result, Recipient), raw
        assert result.username == "alice" and result.address == raw.decode()
        assert result.maildir == str(tmp_path / "mail" / "alice" / "Maildir")
    assert resolved(r.resolve(b"alice@example.net")).value is FOREIGN_DOMAIN
    assert resolved(r.resolve(b"bob@localhost")).value is UNKNOWN_USER


def test_preserved_case_is_a_different_user(tmp_path):
    r = recipients(tmp_path, {"alice": UserRecord("alice")}, auth='username_case = "preserve"')
    assert resolved(r.resolve(b"Alice@localhost")).value is UNKNOWN_USER
    assert resolved(r.resolve(b"alice@localhost")).username == "alice"


def test_a_directory_mailbox_outside_the_mail_root_is_refused(tmp_path):
    r = recipients(tmp_path, {"eve": UserRecord("eve", mailbox=str(tmp_path / ".." / "x"))})
    assert resolved(r.resolve(b"eve@localhost")).value is UNKNOWN_USER
    assert not (tmp_path.parent / "x").exists()


def test_quota_default_and_per_user_override(tmp_path):
    r = recipients(tmp_path, {"a": UserRecord("a"), "b": UserRecord("b", info={"quota": "10,2"}),
                              "c": UserRecord("c", info={"quota": "lots"})},
                   mail="quota_bytes = 1000\nquota_messages = 5")
    assert resolved(r.resolve(b"a@localhost")).quota == Quota(1000, 5)
    assert resolved(r.resolve(b"b@localhost")).quota == Quota(10, 2)
    assert resolved(r.resolve(b"c@localhost")).quota == Quota(1000, 5)   # malformed: default


def test_trace_header_is_on_top_and_the_message_unchanged(tmp_path):
    rcpt = Recipient("alice@example.com", "alice", str(tmp_path / "M"))
    message = b"Subject: x\r\n\r\nbody\r\n"
    name = deliver_to(rcpt, b"", message)
    data = (tmp_path / "M" / "new" / name).read_bytes()
    assert data == trace_header(b"", rcpt) + message
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: <alice@example.com>\r\n")


def test_deliver_all_one_outcome_per_recipient_and_quota(tmp_path):
    ok = Recipient("a@x", "a", str(tmp_path / "A"))
    tight = Recipient("b@x", "b", str(tmp_path / "B"), Quota(50, 0))
    outcomes = deliver_all([ok, tight], b"s@x", b"y" * 40 + b"\r\n")
    assert isinstance(outcomes[0], str) and outcomes[1] is OVER_QUOTA
    assert not (tmp_path / "B" / "new").exists() or os.listdir(tmp_path / "B" / "new") == []
    small = deliver_all([tight], b"", b"hi\r\n")
    assert isinstance(small[0], str)


def test_concurrent_deliveries_to_one_mailbox_keep_its_quota(tmp_path):
    rcpt = Recipient("a@x", "a", str(tmp_path / "A"), Quota(0, 5))
    outcomes = []

    def one():
        outcomes.extend(deliver_all([rcpt], b"", b"m\r\n"))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(o, str) for o in outcomes) == 5
    assert outcomes.count(OVER_QUOTA) == 15
    assert len(os.listdir(tmp_path / "A" / "new")) == 5
