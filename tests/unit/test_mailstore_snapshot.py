"""
Tests for L{securepop.mailstore.snapshot}: UIDLs from unique names, the
in-memory size memo, the tmp/ cleanup (the scan and the sizes are tested
through L{MaildirMailbox.open} in test_mailstore_maildir.py).
"""

import os

import pytest

from securepop.mailstore import snapshot
from securepop.mailstore.delivery import ensureMaildir
from securepop.mailstore.snapshot import uidlFor


@pytest.fixture
def maildir(tmp_path):
    path = str(tmp_path / "Maildir")
    ensureMaildir(path)
    return path


def place(maildir, subdir, name, data, mtime):
    path = os.path.join(maildir, subdir, name)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize(
    "unique",
    ["with space", "caf\u00e9", "x" * 71, "tab\there", "h" + "0" * 40, "\udcff"],
)
def test_uidl_hashed_when_not_printable(unique):
    uidl = uidlFor(unique)
    assert 1 <= len(uidl) <= 70
    assert all(0x21 <= octet <= 0x7E for octet in uidl)
    assert uidl != os.fsencode(unique)
    assert uidl == uidlFor(unique)  # stable


def test_uidl_kept_when_printable():
    assert uidlFor("x" * 70) == b"x" * 70
    assert uidlFor("1.M2P3.host") == b"1.M2P3.host"


def test_size_memo_is_bounded_by_messages():
    memo = snapshot._SizeMemo(maxEntries=7)       # a Maildir counts 1 + its entries
    memo.put("a", {str(i): [1, 1, 1] for i in range(3)}, count=10)
    memo.put("b", {str(i): [1, 1, 1] for i in range(1)})
    assert memo.get("a") is not None and memo.count("a") == 10   # a: most recent
    memo.put("c", {"x": [1, 1, 1]})                     # 8 > 7: the oldest (b) goes
    assert memo.get("b") is None and memo.count("b") is None
    assert memo.get("a") and memo.get("c")
    memo.put("huge", {str(i): [1, 1, 1] for i in range(8)})   # never held at all
    assert memo.get("huge") is None and memo._entries <= 7
    memo.put("a", {})                                   # replaced, counted again
    assert memo._entries == 3 and memo.count("a") == 0


def test_tmp_cleaned_at_most_once_an_hour(maildir):
    old = 1000.0
    place(maildir, "tmp", "1.dead.host", b"half", old)
    now = old + snapshot.TMP_MAX_AGE + 10
    assert snapshot.cleanTmpSometimes(maildir, now) == 1
    place(maildir, "tmp", "2.dead.host", b"half", old)
    assert snapshot.cleanTmpSometimes(maildir, now + 60) == 0      # skipped
    assert os.path.exists(os.path.join(maildir, "tmp", "2.dead.host"))
    assert snapshot.cleanTmpSometimes(maildir, now + 3601) == 1    # an hour later
