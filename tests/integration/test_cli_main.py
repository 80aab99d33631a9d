"""
The real `securepop` command against the real daemon's data.

Issue 18, item 4: `securepop user add --data-dir D NAME` failed with
"unrecognized arguments"; options must work before or after the command and
its action.  Item 8: `securepop user add` without `--config` stored only the
embedded default's secrets (argon2 + SCRAM) and said nothing, so CRAM-MD5,
APOP and NTLM then failed for that user; it must say what it stored and what
will not work, and that must be true.
"""

import subprocess

import pytest

from tests.integration.clients import IMPLICIT, crlf_normalise, curl, pop3
from tests.integration.daemon import DEFAULT_CONFIG, SECUREPOP, Daemon

PASSWORD = "Correct-Horse-7"
MESSAGE = b"Subject: option order\n\nbody\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("cli"), DEFAULT_CONFIG)
    daemon.start()
    yield daemon
    daemon.stop()


def securepop(daemon, *args, input=None):
    """The command with exactly these arguments (no --config added)."""
    return subprocess.run([SECUREPOP, *args], input=input, capture_output=True,
                          cwd=daemon.dir, timeout=60)


# -- item 4: options before or after the command and its action ------------------------

@pytest.mark.parametrize("name,form", [
    ("before", "--config {c} --data-dir {d} user add {n}"),
    ("aftercmd", "user --config {c} --data-dir {d} add {n}"),
    ("afteraction", "user add --config {c} --data-dir {d} {n}"),
    ("atend", "user add {n} --config {c} --data-dir {d}"),
    ("mixed", "-c {c} user add {n} -d {d}"),
])
def test_user_add_with_options_anywhere_then_login(server, name, form):
    argv = form.format(c=server.config_path, d=server.data_dir, n=name).split()
    added = securepop(server, *argv, input=f"{PASSWORD}\n".encode())
    assert added.returncode == 0, added.stderr.decode()
    assert f"added user {name}".encode() in added.stdout
    client = pop3(server, IMPLICIT, name, PASSWORD)
    client.quit()
    for action, stdin in (("passwd", f"{PASSWORD}\n".encode()), ("del", None)):
        argv = form.replace("add", action).format(
            c=server.config_path, d=server.data_dir, n=name).split()
        result = securepop(server, *argv, input=stdin)
        assert result.returncode == 0, result.stderr.decode()
    assert name not in server.cli("user", "list").stdout.decode().split()


@pytest.mark.parametrize("form", [
    "deliver --data-dir {d} {n} {f}",
    "deliver {n} --data-dir {d} {f}",
    "deliver {n} {f} --data-dir {d}",
])
def test_deliver_with_options_anywhere_then_fetch(server, form, tmp_path):
    if "letters" not in server.cli("user", "list").stdout.decode().split():
        server.add_user("letters", PASSWORD)
    message = tmp_path / "m.eml"
    message.write_bytes(MESSAGE)
    before = len(server.messages("letters"))
    result = securepop(server, *form.format(d=server.data_dir, n="letters", f=message).split())
    assert result.returncode == 0, result.stderr.decode()
    assert len(server.messages("letters")) == before + 1
    fetched = curl(server, "letters", PASSWORD, path=str(before + 1), tls=IMPLICIT)
    assert fetched.returncode == 0, fetched.stderr.decode()
    assert fetched.stdout == crlf_normalise(MESSAGE)


def test_list_and_check_config_take_options_after_the_command(server):
    listed = securepop(server, "user", "list", "--data-dir", str(server.data_dir))
    assert listed.returncode == 0, listed.stderr.decode()
    checked = securepop(server, "check-config", "--config", str(server.config_path))
    assert checked.returncode in (0, 1), checked.stderr.decode()
    assert f"configuration: {server.config_path}".encode() in checked.stdout
    assert b"\nstate: memory (this process only)\n" in checked.stdout   # the store in force


def test_a_misplaced_word_is_still_a_usage_error(server):
    result = securepop(server, "user", "add", "--data-dir", str(server.data_dir), "a", "b")
    assert result.returncode == 2 and b"unrecognized arguments: b" in result.stderr
    assert b"Traceback" not in result.stderr


# -- item 8: what user add stored, and whether it is true -------------------------------

def test_user_add_without_config_says_what_will_not_work_and_it_does_not(server):
    added = securepop(server, "--data-dir", str(server.data_dir), "user", "add", "nocfg",
                      input=f"{PASSWORD}\n".encode())
    out = added.stdout.decode()
    assert added.returncode == 0, added.stderr.decode()
    assert "stored: argon2id hash (USER/PASS, PLAIN, LOGIN); SCRAM-SHA-256 keys" in out
    assert ("will not work for nocfg: NTLM, CRAM-MD5, APOP (no secret stored: without "
            "--config the embedded default enables only PLAIN, LOGIN, SCRAM-SHA-256)") in out
    assert "securepop --config FILE user passwd nocfg" in out
    # ... and it is so: the daemon (which enables them) refuses those mechanisms
    assert curl(server, "nocfg", PASSWORD, tls=IMPLICIT,
                login_options="AUTH=PLAIN").returncode == 0
    for mechanism in ("CRAM-MD5", "NTLM", "+APOP"):
        result = curl(server, "nocfg", PASSWORD, tls=IMPLICIT,
                      login_options=f"AUTH={mechanism}")
        assert result.returncode == 67, (mechanism, result.stderr.decode())
    # the command it names fixes it
    fixed = securepop(server, "--config", str(server.config_path), "user", "passwd", "nocfg",
                      input=f"{PASSWORD}\n".encode())
    assert b"every mechanism has its secret for nocfg" in fixed.stdout
    for mechanism in ("CRAM-MD5", "NTLM", "+APOP"):
        result = curl(server, "nocfg", PASSWORD, tls=IMPLICIT,
                      login_options=f"AUTH={mechanism}")
        assert result.returncode == 0, (mechanism, result.stderr.decode())


def test_user_add_with_config_stores_every_secret_it_names(server):
    added = server.cli("user", "add", "withcfg", input=f"{PASSWORD}\n".encode())
    out = added.stdout.decode()
    assert "NT hash (NTLM)" in out
    assert "password-equivalent secret (CRAM-MD5, APOP)" in out
    assert "every mechanism has its secret for withcfg" in out
    assert "will not work" not in out
    for mechanism in ("CRAM-MD5", "NTLM", "+APOP", "PLAIN"):
        result = curl(server, "withcfg", PASSWORD, tls=IMPLICIT,
                      login_options=f"AUTH={mechanism}")
        assert result.returncode == 0, (mechanism, result.stderr.decode())
