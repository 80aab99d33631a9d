"""The securepop command: user management, delivery, check-config, errors."""

import io
import stat

import pytest
from argon2 import PasswordHasher

from securepop import schemes
from securepop.auth import userfile
from securepop.cli import main as cli


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(schemes, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
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


# -- user names: one rule for the CLI and every login (securepop.auth.usernames) -----

def test_user_add_stores_the_login_name_and_deliver_uses_it(run):
    code, out, _ = run("user", "add", "Eve", stdin="pw\n")
    assert code == 0
    assert "'Eve' is 'eve' for every login" in out and "added user eve" in out
    assert run.data.joinpath("users").read_text().startswith("eve:$argon2")
    assert run("deliver", "EVE", stdin="Subject: x\n\n")[0] == 0
    assert run("deliver", "eve@example.test", stdin="Subject: y\n\n")[0] != 0   # foreign
    assert sorted(p.name for p in (run.data / "mail").iterdir()) == ["eve"]
    assert len(list((run.data / "mail" / "eve" / "Maildir" / "new").iterdir())) == 1
    code, _, err = run("user", "add", "eVE", stdin="pw\n")
    assert code == cli.EX_NOUSER and "user eve already exists" in err
    assert run("user", "passwd", "EVE", stdin="pw2\n")[0] == 0
    assert run("user", "del", "Eve")[0] == 0
    assert run("user", "list")[1] == ""


@pytest.mark.parametrize("name", ["EVE@other.example", "OTHER\\eve", "a@b@c", "  "])
def test_user_add_refuses_names_no_login_can_use(run, name):
    code, _, err = run("user", "add", name, stdin="pw\n")
    assert code == cli.EX_DATAERR and repr(name) in err and "Traceback" not in err
    assert not (run.data / "users").exists()


def test_user_commands_find_entries_written_before_the_rule(run):
    """A users file from before: 'Eve' as typed; every command finds it as eve."""
    userfile.set_password(run.data / "users", "Eve", "old", set(), create=True)
    code, out, _ = run("user", "list")
    assert out == "Eve  (logs in as eve)\n"
    code, _, err = run("user", "add", "eve", stdin="pw\n")
    assert code == cli.EX_NOUSER and "already exists (as 'Eve')" in err
    before = (run.data / "users").read_text()
    code, out, _ = run("user", "passwd", "eve", stdin="new\n")
    assert code == 0 and "updated user Eve (logs in as eve)" in out
    after = (run.data / "users").read_text()
    assert after.startswith("Eve:") and after != before
    assert run("user", "del", "EVE")[0] == 0
    assert (run.data / "users").read_text() == ""


def test_check_config_names_entries_logins_see_differently(run):
    users = run.data / "users"
    for name in ("Eve", "bob", "Carol", "carol", "dave@other.example"):
        userfile.set_password(users, name, "pw", set(), create=True)
    old = run.data / "mail" / "Eve" / "Maildir"
    old.mkdir(parents=True)
    code, out, _ = run("check-config")
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert any("'Eve' logs in as 'eve'" in w for w in warnings), warnings
    assert any(f"{old}" in w and "move its messages" in w for w in warnings), warnings
    assert any("no login can use: 'dave@other.example'" in w for w in warnings), warnings
    assert any("'Carol', 'carol'; only 'carol' can log in" in w for w in warnings), warnings
    assert not any("bob" in w for w in warnings)
    assert code == 0            # warnings, not errors


def test_check_config_quiet_about_names_as_logins_send_them(run):
    run("user", "add", "Eve", stdin="pw\n")
    _, out, _ = run("check-config")
    assert "WARNING" not in out


# -- option order ------------------------------------------------------------------------

@pytest.fixture
def cheap_hash(monkeypatch):
    monkeypatch.setattr(schemes, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


def _main(argv, monkeypatch, capsys, stdin=""):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = cli.main(argv)
    return code, capsys.readouterr()


@pytest.mark.parametrize("form", [
    "--data-dir {d} user {action} {name}",
    "user --data-dir {d} {action} {name}",
    "user {action} --data-dir {d} {name}",
    "user {action} {name} --data-dir {d}",
    "-d {d} user {action} {name}",
    "user {action} -d {d} {name}",
])
def test_options_before_or_after_the_command_and_its_action(form, tmp_path, monkeypatch,
                                                            capsys, cheap_hash):
    d = tmp_path / "data"

    def argv(action, name="alice"):
        return form.format(d=d, action=action, name=name).split()

    code, out = _main(argv("add"), monkeypatch, capsys, "pw\n")
    assert code == 0, out.err
    assert userfile.UsersFile(d / "users").load().keys() == {"alice"}
    assert _main(argv("passwd"), monkeypatch, capsys, "pw2\n")[0] == 0
    code, out = _main(argv("list", ""), monkeypatch, capsys)
    assert code == 0 and out.out == "alice\n"
    assert _main(argv("del"), monkeypatch, capsys)[0] == 0
    assert userfile.UsersFile(d / "users").load() == {}


@pytest.mark.parametrize("form", [
    "--data-dir {d} deliver alice {m}",
    "deliver --data-dir {d} alice {m}",
    "deliver alice --data-dir {d} {m}",
    "deliver alice {m} --data-dir {d}",
])
def test_deliver_options_anywhere(form, tmp_path, monkeypatch, capsys):
    d, m = tmp_path / "data", tmp_path / "m.eml"
    m.write_bytes(b"Subject: hi\n\n")
    code, out = _main(form.format(d=d, m=m).split(), monkeypatch, capsys)
    assert code == 0, out.err
    new = d / "mail" / "alice" / "Maildir" / "new"
    assert [p.read_bytes() for p in new.iterdir()] == [b"Subject: hi\n\n"]


@pytest.mark.parametrize("argv", [
    ["check-config", "--data-dir", "{d}"],
    ["cert", "show", "--data-dir", "{d}"],
    ["cert", "--data-dir", "{d}", "show"],
])
def test_other_commands_take_options_after_them(argv, tmp_path, monkeypatch, capsys):
    d = tmp_path / "data"
    try:
        _, out = _main([a.format(d=d) for a in argv], monkeypatch, capsys)
    except SystemExit as e:          # argparse: a usage error
        pytest.fail(f"usage error {e.code}: {capsys.readouterr().err}")
    assert f"server.data_dir = {d}" in out.out or str(d) in out.out + out.err


def test_config_after_the_command_is_used(tmp_path, monkeypatch, capsys, cheap_hash):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    code, out = _main(["user", "add", "bob", "--config", str(conf)], monkeypatch, capsys,
                      "pw\n")
    assert code == 0, out.err
    assert (tmp_path / "elsewhere" / "users").exists()


def test_usage_errors_name_what_is_missing(monkeypatch, capsys):
    for argv, wanted in ((["user"], "ACTION"), (["user", "add"], "name"),
                         (["user", "rename", "x"], "invalid choice")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert wanted in capsys.readouterr().err


# -- what user add stored -----------------------------------------------------------------

def test_user_add_without_config_says_what_will_not_work(run):
    code, out, _ = run("user", "add", "alice", stdin="pw\n")
    assert code == 0
    assert "stored: argon2id hash (USER/PASS, PLAIN, LOGIN); SCRAM-SHA-256 keys" in out
    assert ("will not work for alice: NTLM, CRAM-MD5, APOP (no secret stored: without "
            "--config the embedded default enables only PLAIN, LOGIN, SCRAM-SHA-256)") in out
    assert "securepop --config FILE user passwd alice" in out


def test_user_add_with_config_stores_what_it_names(run, tmp_path):
    conf = tmp_path / "all.toml"
    conf.write_text('[auth]\nmechanisms = ["PLAIN", "SCRAM-SHA-256", "NTLM", "CRAM-MD5"]\n')
    code, out, _ = run("user", "add", "--config", str(conf), "alice", stdin="pw\n")
    assert code == 0
    assert "NT hash (NTLM)" in out and "password-equivalent secret (CRAM-MD5, APOP)" in out
    assert "every mechanism has its secret for alice" in out
    assert "will not work" not in out
    conf.write_text('[auth]\nmechanisms = ["PLAIN", "NTLM"]\n')
    code, out, _ = run("user", "passwd", "--config", str(conf), "alice", stdin="pw\n")
    assert code == 0
    assert (f"will not work for alice: SCRAM-SHA-256, SCRAM-SHA-256-PLUS, CRAM-MD5, APOP "
            f"(no secret stored: {conf} enables only PLAIN, NTLM)") in out
    assert f"securepop --config {conf} user passwd alice" in out


def test_user_add_hashes_with_the_configured_parameters(tmp_path, monkeypatch):
    """[auth.file] argon2 parameters reach the hashes `securepop user add` makes."""
    from argon2 import extract_parameters

    from securepop.auth.userfile import UsersFile
    from securepop.cli import main as climain

    cfg = tmp_path / "securepop.toml"
    cfg.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                   "[auth.file]\nargon2_memory_kib = 8192\nargon2_time_cost = 3\n")
    monkeypatch.setattr(climain, "read_password", lambda: "Pw-123456")
    assert climain.main(["--config", str(cfg), "user", "add", "carol"]) == 0
    entry = UsersFile(tmp_path / "data" / "users").load()["carol"]
    p = extract_parameters(entry.password_hash)
    assert (p.memory_cost, p.time_cost) == (8192, 3)


def test_deliver_keeps_the_quota(run, tmp_path):
    config_file = tmp_path / "q.toml"
    config_file.write_text("[mail]\nquota_messages = 1\n")
    assert run("user", "add", "alice", stdin="pw\n")[0] == 0
    new = run.data / "mail" / "alice" / "Maildir" / "new"
    assert run("--config", str(config_file), "deliver", "alice", stdin="Subject: 1\n\n")[0] == 0
    code, _, err = run("--config", str(config_file), "deliver", "alice", stdin="Subject: 2\n\n")
    assert code == cli.EX_CANTCREAT and "full" in err
    assert len(list(new.iterdir())) == 1               # the mailbox is unchanged
    # the user's own quota overrides [mail]'s, and survives a password change
    assert run("user", "quota", "alice", "0,5")[0] == 0
    assert run("user", "passwd", "alice", stdin="pw2\n")[0] == 0
    assert "quota=0,5" in (run.data / "users").read_text()
    assert run("--config", str(config_file), "deliver", "alice", stdin="Subject: 2\n\n")[0] == 0
    assert len(list(new.iterdir())) == 2
    code, out, _ = run("user", "list", "--quota")
    assert out.split("\n")[0].startswith("alice  use ") and "2 messages; quota 5 messages" in out
    assert run("user", "list")[1].split() == ["alice"]
    assert run("user", "quota", "alice", "lots")[0] == cli.EX_DATAERR
    assert run("user", "quota", "alice", "default")[0] == 0
    assert "quota" not in (run.data / "users").read_text()
    assert run("user", "quota", "nobody", "1")[0] == cli.EX_NOUSER
