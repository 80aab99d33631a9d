"""
Tests for L{securepop.migrate.target}: the mailbox lock for the whole run,
pending records and the files they name after a run that died.
"""

import os

import pytest

from securepop.errors import MailboxInUse
from securepop.mailstore import uidlist
from securepop.mailstore.maildir import MaildirMailbox
from securepop.migrate.target import TargetMaildir
from tests.unit.test_migrate_engine import MESSAGES, FakeSource, run, served


@pytest.fixture
def maildir(tmp_path):
    return str(tmp_path / "Maildir")


def test_file_written_before_record_saved_is_kept_not_fetched_again(maildir):
    """A run killed between a message's file and the uidlist rewrite."""
    target = TargetMaildir.open(maildir)
    planned = target.plan(["UID-one"])
    unique = planned[0][1]
    target.store(unique, MESSAGES[0][1])
    target.close()  # no save: the record on disk is still pending
    assert uidlist.read(maildir)[unique].state == uidlist.PENDING
    source = FakeSource(MESSAGES[:1])
    run(maildir, source)
    assert source.fetched == []
    assert uidlist.read(maildir)[unique].state == uidlist.KEPT

def test_pending_record_without_file_is_fetched_under_its_planned_name(maildir):
    target = TargetMaildir.open(maildir)
    unique = target.plan(["UID-one"])[0][1]
    target.close()
    source = FakeSource(MESSAGES[:1])
    run(maildir, source)
    assert source.fetched == ["UID-one"]
    assert list(uidlist.read(maildir)) == [unique]
    assert served(maildir)[0][0] == "UID-one"

def test_migration_waits_for_no_session(maildir):
    os.makedirs(maildir)
    mailbox = MaildirMailbox.open(maildir)
    try:
        with pytest.raises(MailboxInUse):
            TargetMaildir.open(maildir)
    finally:
        mailbox.release()
    TargetMaildir.open(maildir).close()
