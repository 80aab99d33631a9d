"""
Tests for L{securepop.cli.migrate}: usage checks, the users CSV, the
password file, and a whole C{--from-maildir} run through C{securepop}'s
main (JSON report, a second run adding nothing).
"""

import json
import os

import pytest

from securepop.cli import main as cli_main
from securepop.cli import migrate as cli_migrate
from securepop.mailstore.maildir import MaildirMailbox
from tests.unit.test_migrate_sources import make_dovecot_maildir


def securepop(*argv):
    return cli_main.main(list(argv))


@pytest.mark.parametrize("argv", [
    ["migrate"],
    ["migrate", "pop3://old.example"],                                  # no user
    ["migrate", "pop3://old.example", "--user", "a"],                   # no password file
    ["migrate", "pop3://old.example", "--user", "a", "--password-file", "p", "--users", "u"],
    ["migrate", "--from-maildir", "/x"],                                # no user
    ["migrate", "--from-maildir", "/x", "--user", "a", "--verify"],
    ["migrate", "imap://old.example", "--user", "a", "--password-file", "p"],
])
def test_usage_errors(argv, tmp_path, capsys):
    assert securepop(*argv, "--data-dir", str(tmp_path)) == cli_migrate.EX_USAGE
    assert "securepop migrate:" in capsys.readouterr().err


def test_users_csv(tmp_path):
    csv_path = tmp_path / "users.csv"
    csv_path.write_text("# name,password_file\nalice,alice.pw\n\nbob , /abs/bob.pw\n")
    assert cli_migrate.read_users_csv(str(csv_path)) == [
        ("alice", str(tmp_path / "alice.pw")), ("bob", "/abs/bob.pw")]
    csv_path.write_text("alice\n")
    with pytest.raises(ValueError, match="line 1"):
        cli_migrate.read_users_csv(str(csv_path))


def test_password_file(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\r\nignored\n")
    assert cli_migrate.read_password_file(str(path)) == "s3cret"
    path.write_bytes(b"\n")
    with pytest.raises(ValueError):
        cli_migrate.read_password_file(str(path))


def test_from_maildir_run_json_and_second_run(tmp_path, capsys):
    source = make_dovecot_maildir(str(tmp_path / "old"))
    data = str(tmp_path / "data")
    argv = ["migrate", "--from-maildir", source, "--user", "Alice", "--data-dir", data, "--json"]
    assert securepop(*argv) == 0
    report = json.loads(capsys.readouterr().out)["users"][0]
    assert (report["fetched"], report["already"], report["error"]) == (4, 0, None)
    maildir = os.path.join(data, "mail", "alice", "Maildir")
    mailbox = MaildirMailbox.open(maildir, create=False)
    try:
        assert [mailbox.getUidl(i) for i in range(4)] == [
            b"OLD-3", b"0001.legacy", b"000000016553f100", b"000000046553f100"]
        with mailbox.getMessage(0) as f:
            assert f.read() == b"three\n"
    finally:
        mailbox.release()
    assert securepop(*argv) == 0
    report = json.loads(capsys.readouterr().out)["users"][0]
    assert (report["fetched"], report["already"]) == (0, 4)
    # never touched the source
    assert len(os.listdir(os.path.join(source, "cur"))) == 3


def test_from_maildir_reports_unlisted_files(tmp_path, capsys):
    source = make_dovecot_maildir(str(tmp_path / "old"), extra={"new/9.M9.x": b"x\n"})
    status = securepop("migrate", "--from-maildir", source, "--user", "bob",
                       "--data-dir", str(tmp_path / "data"))
    out = capsys.readouterr().out
    assert status == cli_migrate.EX_DIFFERENT
    assert "not in the UIDL list" in out and "4 fetched" in out


def test_missing_source_is_not_a_traceback(tmp_path, capsys):
    status = securepop("migrate", "--from-maildir", str(tmp_path / "none"), "--user", "bob",
                       "--data-dir", str(tmp_path / "data"))
    assert status == cli_migrate.EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert "neither dovecot-uidlist (Dovecot) nor courierpop3dsizelist (Courier)" in err
    assert not os.path.exists(tmp_path / "data" / "mail" / "bob")


def test_unreachable_server(tmp_path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    status = securepop("migrate", "pop3s://127.0.0.1:1", "--user", "bob",
                       "--password-file", str(pw), "--data-dir", str(tmp_path / "data"))
    assert status == cli_migrate.EX_UNAVAILABLE
    assert "cannot connect" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "data" / "mail")


def test_progress_on_standard_error(tmp_path, capsys):
    source = make_dovecot_maildir(str(tmp_path / "old"))
    assert securepop("migrate", "--from-maildir", source, "--user", "bob", "--progress", "on",
                     "--data-dir", str(tmp_path / "data")) == 0
    captured = capsys.readouterr()
    assert "4/4 messages" in captured.err
    assert "4 fetched" in captured.out
    assert securepop("migrate", "--from-maildir", source, "--user", "carl", "--progress", "off",
                     "--data-dir", str(tmp_path / "data")) == 0
    assert "messages" not in capsys.readouterr().err
