"""
Tests for L{securepop.mailstore.uidlist} and how a login uses it: kept
UIDLs served verbatim, in the kept order, invalid ones never served.
"""

import json
import os

import pytest

from securepop.mailstore import uidlist
from securepop.mailstore.delivery import deliver, ensureMaildir
from securepop.mailstore.maildir import MaildirMailbox
from securepop.mailstore.snapshot import uniquePart
from securepop.mailstore.uidlist import KEPT, PENDING, KeptUidl


@pytest.fixture
def maildir(tmp_path):
    return ensureMaildir(str(tmp_path / "Maildir"))


@pytest.mark.parametrize("uidl", ["a", "x" * 70, "000000016553f100", "!~"])
def test_valid_uidl(uidl):
    assert uidlist.valid_uidl(uidl)
    assert uidlist.valid_uidl(uidl.encode("ascii"))


@pytest.mark.parametrize("uidl", ["", "x" * 71, "with space", "tab\t", "caf\u00e9", "a\x7f",
                                  b"\xff", None, 5])
def test_invalid_uidl(uidl):
    assert not uidlist.valid_uidl(uidl)


def test_round_trip(maildir):
    kept = {"1.M1P1.h": KeptUidl("old-1", 0), "2.M2P2.h": KeptUidl("old-2", 1, PENDING)}
    uidlist.write(maildir, kept)
    assert uidlist.read(maildir) == kept
    assert oct(os.stat(os.path.join(maildir, uidlist.UIDLIST_NAME)).st_mode & 0o777) == "0o600"


def test_serialise_refuses_invalid_uidl():
    with pytest.raises(ValueError):
        uidlist.serialise({"u": KeptUidl("has space", 0)})


def test_damaged_or_missing_file_is_empty(maildir):
    assert uidlist.read(maildir) == {}
    path = os.path.join(maildir, uidlist.UIDLIST_NAME)
    with open(path, "wb") as f:
        f.write(b"{not json")
    assert uidlist.read(maildir) == {}
    with open(path, "w") as f:
        json.dump({"version": 99, "messages": {}}, f)
    assert uidlist.read(maildir) == {}


def test_bad_records_are_dropped():
    data = json.dumps({"version": 1, "messages": {
        "good": ["ok", 1, "kept"], "space": ["no good", 2, "kept"],
        "long": ["x" * 71, 3, "kept"], "order": ["y", "3", "kept"],
        "state": ["z", 4, "other"], "a/b": ["w", 5, "kept"], "short": ["v", 6]}})
    assert uidlist.parse(data) == {"good": KeptUidl("ok", 1, KEPT)}


def test_reread_after_change(maildir):
    uidlist.write(maildir, {"a": KeptUidl("one", 0)})
    assert uidlist.read(maildir)["a"].uidl == "one"
    uidlist.write(maildir, {"a": KeptUidl("two", 0)})
    assert uidlist.read(maildir)["a"].uidl == "two"


def _open(maildir):
    return MaildirMailbox.open(maildir, create=False)


def test_login_serves_kept_uidls_in_kept_order(maildir):
    names = [deliver(maildir, b"Subject: %d\r\n\r\nbody\r\n" % i) for i in range(3)]
    native = deliver(maildir, b"Subject: native\r\n\r\n")
    # The old server's order is 2, 0, 1.
    uidlist.write(maildir, {uniquePart(names[0]): KeptUidl("old-B", 5),
                            uniquePart(names[1]): KeptUidl("old-C", 6),
                            uniquePart(names[2]): KeptUidl("old-A", 1, PENDING)})
    mailbox = _open(maildir)
    try:
        uidls = [mailbox.getUidl(i) for i in range(4)]
    finally:
        mailbox.release()
    assert uidls == [b"old-A", b"old-B", b"old-C", uniquePart(native).encode()]


def test_without_file_uidls_come_from_names(maildir):
    name = deliver(maildir, b"x\r\n")
    mailbox = _open(maildir)
    try:
        assert mailbox.getUidl(0) == uniquePart(name).encode()
    finally:
        mailbox.release()


def test_record_without_file_is_ignored_and_invalid_never_served(maildir):
    name = deliver(maildir, b"x\r\n")
    path = os.path.join(maildir, uidlist.UIDLIST_NAME)
    with open(path, "w") as f:
        json.dump({"version": 1, "messages": {
            uniquePart(name): ["bad uidl", 0, "kept"], "gone.M1": ["gone", 1, "kept"]}}, f)
    mailbox = _open(maildir)
    try:
        assert mailbox.listMessages() == [3]
        assert mailbox.getUidl(0) == uniquePart(name).encode()
    finally:
        mailbox.release()


def test_kept_uidl_wins_over_a_clashing_name(maildir):
    first = deliver(maildir, b"a\r\n")
    second = deliver(maildir, b"b\r\n")
    # second's kept UIDL is first's name-derived UIDL: first gets another.
    uidlist.write(maildir, {uniquePart(second): KeptUidl(uniquePart(first), 0)})
    mailbox = _open(maildir)
    try:
        uidls = [mailbox.getUidl(i) for i in range(2)]
    finally:
        mailbox.release()
    assert uidls[1] == uniquePart(first).encode()
    assert len(set(uidls)) == 2
