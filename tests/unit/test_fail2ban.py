"""
The fail2ban filter and jail in etc/fail2ban, run through fail2ban's own
tools (Debian package C{fail2ban}).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parents[2] / "etc" / "fail2ban"
FILTER = ETC / "filter.d" / "securepop.conf"
JAIL = ETC / "jail.d" / "securepop.conf"
PREFIX = "2026-11-28T21:00:0{}+0000 [securepop#info] "


def require(tool):
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing (apt-get install fail2ban)")
        pytest.skip(f"{tool} is not installed")
    return path


def banned_addresses(tmp_path, lines):
    log = tmp_path / "securepop.log"
    log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = subprocess.run(
        [require("fail2ban-regex"), "--out", "ip", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def failure(second, ip, user="alice", mechanism="PLAIN",
            reason="bad-password"):
    return (PREFIX.format(second) + f"securepop auth.failure ip={ip} "
            f"user={user} mechanism={mechanism} reason={reason}")


def test_failures_match_with_their_address(tmp_path):
    lines = [
        failure(0, "192.0.2.7"),
        failure(1, "2001:db8::7", user="EXAMPLE\\bob", mechanism="NTLM",
                reason="ntlmv1-refused"),
        failure(2, "198.51.100.9", user="", mechanism="SCRAM-SHA-256"),
        failure(3, "203.0.113.5", mechanism="APOP", reason="unknown-user"),
    ]
    assert banned_addresses(tmp_path, lines) == [
        "192.0.2.7", "2001:db8::7", "198.51.100.9", "203.0.113.5"]


def test_user_name_cannot_choose_the_banned_address(tmp_path):
    """The address comes before anything the client chose."""
    hostile = failure(0, "192.0.2.7", user="x ip=203.0.113.66 user=y")
    assert banned_addresses(tmp_path, [hostile]) == ["192.0.2.7"]


OTHER_LINES = [
    PREFIX.format(0) + "securepop auth.success ip=192.0.2.8 user=alice "
    "mechanism=PLAIN",
    PREFIX.format(0) + "securepop access.declined ip=192.0.2.8",
    # a continuation line of a multi-line event (twistd indents it)
    "\t" + failure(0, "192.0.2.9"),
    # no timestamp
    failure(0, "192.0.2.9")[len(PREFIX.format(0)):],
    # another program's line
    PREFIX.format(0).replace("securepop#", "dovecot#") +
    "securepop auth.failure ip=192.0.2.9 user=a mechanism=PLAIN reason=x",
    failure(0, "not-an-address"),
    failure(0, "192.0.2.9") + " trailing=junk extra",
]


def test_other_lines_do_not_match(tmp_path):
    """One run over all of them (fail2ban-regex takes a second to start)."""
    assert banned_addresses(tmp_path, OTHER_LINES) == []


def test_other_lines_with_one_failure_among_them(tmp_path):
    """The negative run above can fail: one real failure is found."""
    lines = OTHER_LINES + [failure(5, "192.0.2.77")]
    assert banned_addresses(tmp_path, lines) == ["192.0.2.77"]


def test_jail_configuration_is_valid(tmp_path):
    client = require("fail2ban-client")
    if not Path("/etc/fail2ban/fail2ban.conf").exists():
        pytest.fail("fail2ban is installed without /etc/fail2ban")
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for old in (conf / "jail.d").iterdir():
        old.unlink()
    shutil.copy(FILTER, conf / "filter.d" / "securepop.conf")
    log = tmp_path / "securepop.log"
    log.write_text(failure(0, "192.0.2.7") + "\n")
    jail = JAIL.read_text().replace(
        "/var/log/securepop/securepop.log", str(log))
    assert str(log) in jail
    (conf / "jail.d" / "securepop.conf").write_text(jail)
    out = subprocess.run([client, "-c", str(conf), "-t"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    dump = subprocess.run([client, "-c", str(conf), "-d"],
                          capture_output=True, text=True, timeout=60)
    assert "['add', 'securepop'," in dump.stdout
    assert "['set', 'securepop', 'maxretry', 10]" in dump.stdout


def test_broken_jail_is_detected(tmp_path):
    """The check above can fail: a jail naming a missing filter does."""
    client = require("fail2ban-client")
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for old in (conf / "jail.d").iterdir():
        old.unlink()
    (conf / "jail.d" / "securepop.conf").write_text(
        JAIL.read_text().replace("filter   = securepop",
                                 "filter   = securepop-missing"))
    out = subprocess.run([client, "-c", str(conf), "-t"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_lines_written_by_securepop_itself(tmp_path):
    """Real lines: securepop's event logger through twistd's text format."""
    import io

    from twisted.logger import globalLogPublisher, textFileLogObserver

    from securepop.events import emit

    out = io.StringIO()
    observer = textFileLogObserver(out)
    globalLogPublisher.addObserver(observer)
    try:
        emit("auth.failure", ip="192.0.2.31", user="alice",
             mechanism="PLAIN", reason="bad-password")
        emit("auth.failure", ip="2001:db8::31",
             user="evil\n2026-11-28T21:00:00+0000 [securepop#info] securepop "
                  "auth.failure ip=203.0.113.66 user=x",
             mechanism="NTLM", reason="bad-password")
        emit("auth.success", ip="192.0.2.32", user="alice", mechanism="PLAIN")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert banned_addresses(tmp_path, lines) == ["192.0.2.31", "2001:db8::31"]
