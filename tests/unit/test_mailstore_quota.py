"""
Tests for L{securepop.mailstore.quota}: limits and the Maildir++
C{maildirsize} use count.
"""

import os

import pytest

from securepop.mailstore.delivery import deliver
from securepop.mailstore.maildir import MaildirMailbox
from securepop.mailstore.quota import (
    MAILDIRSIZE, NO_QUOTA, Quota, current_use, format_quota, parse_quota, record, scan_use,
)


@pytest.mark.parametrize("text, quota", [("100", Quota(100, 0)), ("100,5", Quota(100, 5)),
                                         (" 0,0 ", NO_QUOTA)])
def test_parse_quota(text, quota):
    assert parse_quota(text) == quota
    assert parse_quota(format_quota(quota)) == quota


@pytest.mark.parametrize("text", ["", "-1", "1,2,3", "abc", "1.5", "１２", "9" * 19])
def test_parse_quota_refuses(text):
    with pytest.raises(ValueError):
        parse_quota(text)


def test_refuses():
    q = Quota(100, 2)
    assert not q.refuses((0, 0), 100)
    assert q.refuses((1, 0), 100)
    assert q.refuses((0, 2), 1)
    assert not NO_QUOTA.refuses((10**12, 10**9), 10**12)
    assert Quota(0, 3).describe() == "3 messages" and NO_QUOTA.describe() == "none"


def test_use_is_counted_once_then_kept_in_maildirsize(tmp_path):
    maildir = str(tmp_path / "M")
    deliver(maildir, b"a" * 10)
    deliver(maildir, b"b" * 20)
    q = Quota(1000, 10)
    assert current_use(maildir, q) == (30, 2)
    text = (tmp_path / "M" / MAILDIRSIZE).read_text()
    assert text.splitlines()[0] == "1000S,10C"
    # a delivery recorded: counted without a rescan (a file the scan would see is not)
    record(maildir, 5, 1)
    assert current_use(maildir, q) == (35, 3)
    assert scan_use(maildir) == (30, 2)


def test_maildirsize_is_rebuilt_when_untrustworthy(tmp_path):
    maildir = str(tmp_path / "M")
    deliver(maildir, b"a" * 10)
    path = tmp_path / "M" / MAILDIRSIZE
    q = Quota(1000, 10)
    current_use(maildir, q)
    record(maildir, -100, -5)                      # below zero: rebuilt
    assert current_use(maildir, q) == (10, 1)
    record(maildir, 7, 1)
    assert current_use(maildir, Quota(5, 0)) == (10, 1)    # another limit: rebuilt
    path.write_text("5S,0C\n" + "1 1\n" * 2000)             # too long: rebuilt
    assert current_use(maildir, Quota(5, 0)) == (10, 1)
    record(maildir, 3, 1)
    assert current_use(maildir, Quota(5, 0), now=lambda: 10**12) == (10, 1)   # too old
    path.unlink()
    os.symlink("/etc/passwd", path)                         # not a regular file: rebuilt
    assert current_use(maildir, Quota(5, 0)) == (10, 1)
    assert not path.is_symlink()


def test_a_missing_maildir_is_empty_and_not_created(tmp_path):
    assert current_use(str(tmp_path / "none"), Quota(1, 1)) == (0, 0)
    assert not (tmp_path / "none").exists()
    record(str(tmp_path / "none"), 5)
    assert not (tmp_path / "none").exists()


def test_a_report_does_not_write(tmp_path):
    maildir = str(tmp_path / "M")
    deliver(maildir, b"abc")
    assert current_use(maildir, Quota(9, 9), rewrite=False) == (3, 1)
    assert not (tmp_path / "M" / MAILDIRSIZE).exists()


def test_pop3_deletion_is_recorded(tmp_path):
    maildir = str(tmp_path / "M")
    deliver(maildir, b"a" * 10)
    deliver(maildir, b"b" * 20)
    q = Quota(1000, 10)
    assert current_use(maildir, q) == (30, 2)
    box = MaildirMailbox.open(maildir)
    box.deleteMessage(0)
    box.commit()
    box.release()
    lines = (tmp_path / "M" / MAILDIRSIZE).read_text().splitlines()
    assert lines[-1] in ("-10 -1", "-20 -1")
    assert current_use(maildir, q) == scan_use(maildir) != (30, 2)
