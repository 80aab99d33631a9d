"""The securepop command: user management, delivery, check-config, errors."""

import io
import stat

import pytest
from argon2 import PasswordHasher

from securepop.auth import userfile
from securepop.cli import main as cli


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(userfile, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))
    data = tmp_path / "data"

    def run(*args, stdin=""):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code = cli.main(["--data-dir", str(data), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    run.data = data
    return run


def test_user_lifecycle(run):
    assert run("user", "add", "alice", stdin="pw1\n")[0] == 0
    assert run("user", "add", "bob", stdin="pw2\n")[0] == 0
    assert run("user", "list")[1].split() == ["alice", "bob"]
    users = run.data / "users"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert stat.S_IMODE(run.data.stat().st_mode) == 0o700
    before = users.read_text()
    assert run("user", "passwd", "alice", stdin="pw3\n")[0] == 0
    assert users.read_text() != before
    assert run("user", "del", "bob")[0] == 0
    assert run("user", "list")[1].split() == ["alice"]


def test_user_errors(run):
    run("user", "add", "alice", stdin="pw\n")
    code, _, err = run("user", "add", "alice", stdin="pw\n")
    assert code == cli.EX_NOUSER and "already exists" in err
    assert run("user", "del", "nobody")[0] == cli.EX_NOUSER
    assert run("user", "passwd", "nobody", stdin="x\n")[0] == cli.EX_NOUSER
    assert run("user", "add", "carol", stdin="")[0] == cli.EX_DATAERR       # no password
    assert run("user", "add", "carol", stdin="\n")[0] == cli.EX_DATAERR     # empty password
    code, _, err = run("user", "add", "../evil", stdin="pw\n")
    assert code == cli.EX_DATAERR and "Traceback" not in err
    assert run("user", "list")[1].split() == ["alice"]


def test_deliver_from_stdin_and_file(run, tmp_path, monkeypatch):
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: a\n\nbody\n")
    assert run("deliver", "alice", str(message))[0] == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: b\n\nx\n")))
    code = cli.main(["--data-dir", str(run.data), "deliver", "alice"])
    assert code == 0
    new = run.data / "mail" / "alice" / "Maildir" / "new"
    bodies = sorted(p.read_bytes() for p in new.iterdir())
    assert bodies == [b"Subject: a\n\nbody\n", b"Subject: b\n\nx\n"]
    assert not any((run.data / "mail" / "alice" / "Maildir" / "tmp").iterdir())


def test_deliver_refuses_hostile_names(run):
    for name in ("../x", "a/b", "."):
        code, _, err = run("deliver", name, stdin="x")
        assert code != 0 and "Traceback" not in err
    assert not (run.data / "x").exists()


def test_check_config(run, tmp_path):
    code, out, _ = run("check-config")
    assert "no users yet" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[tls]\nprofile = "fast"\n')
    code = cli.main(["--config", str(bad), "check-config"])
    assert code == cli.EX_CONFIG


def test_subcommand_options_after_the_command(run, tmp_path):
    code = cli.main(["user", "--data-dir", str(tmp_path / "other"), "list"])
    assert code == 0
