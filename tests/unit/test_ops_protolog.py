"""Tests for securepop.ops.protolog: the protocol log never shows a credential."""

import base64
import os
import stat

import pytest

from securepop.ops import protolog


class Session:
    peer = "192.0.2.7"
    username = None
    secure = True


@pytest.fixture
def log(tmp_path):
    p = protolog.ProtocolLog(tmp_path / "logs" / "protocol.log", now=lambda: 0.5)
    yield p
    p.close()


def text(log):
    with open(log.path) as f:
        return f.read()


@pytest.mark.parametrize("line, secret", [
    (b"PASS Correct-Horse-7", b"Correct-Horse-7"),
    (b"pass with spaces inside", b"spaces"),
    (b"APOP alice c4c9334bac560ecc979e58001b3e22fb", b"c4c9334bac"),
    (b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret"), base64.b64encode(b"\0alice\0secret")),
    (b"dGhpcyBpcyBhIHNhc2wgcmVzcG9uc2U=", b"dGhpcyBp"),
    (b"TlRMTVNTUAADAAAAGAAYAEgAAAA=", b"TlRMTVNTUAAD"),
    (b"*", b"*"),
])
def test_client_secrets_redacted(log, line, secret):
    s = Session()
    log.write(s, "C", line)
    assert secret not in text(log).encode()


def test_safe_commands_kept(log):
    s = Session()
    for line in (b"USER alice", b"RETR 1", b"AUTH PLAIN", b"<sasl response redacted>"):
        log.write(s, "C", line)
    out = text(log)
    assert "C USER alice" in out and "C RETR 1" in out and "C AUTH PLAIN" in out
    assert "<sasl response redacted>" in out


def test_apop_keeps_user_only(log):
    log.write(Session(), "C", b"APOP bob 0123456789abcdef0123456789abcdef")
    assert "C APOP bob <redacted>" in text(log)


def test_server_challenges_redacted(log):
    log.write(Session(), "S", b"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+")
    log.write(Session(), "S", b"+OK Logged in")
    out = text(log)
    assert "PDE4OTYu" not in out
    assert "S +OK Logged in" in out


def test_line_format(log):
    s = Session()
    s.username = "alice"
    log.write(s, "C", b"STAT")
    (line,) = text(log).splitlines()
    assert line.startswith("1970-01-01T00:00:00.500Z s=")
    assert " peer=192.0.2.7 user=alice tls C STAT" in line


def test_session_ids_differ_and_are_stable(log):
    a, b = Session(), Session()
    log.write(a, "C", b"NOOP")
    log.write(b, "C", b"NOOP")
    log.write(a, "C", b"NOOP")
    ids = [l.split()[1] for l in text(log).splitlines()]
    assert ids[0] == ids[2] != ids[1]


def test_hostile_line_cannot_forge_entries(log):
    s = Session()
    s.username = "evil\nuser"
    log.write(s, "C", b"USER x\r\n2020-01-01 s=1 C PASS hunter2\x1b[31m" + b"A" * 5000)
    lines = text(log).splitlines()
    assert len(lines) == 1
    assert "\x1b" not in lines[0] and len(lines[0]) < 800


def test_file_mode_and_reopen(log, tmp_path):
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600
    log.write(Session(), "C", b"NOOP")
    os.rename(log.path, log.path + ".1")
    log.write(Session(), "C", b"STAT")      # still the old (moved) file
    assert log.reopen()
    log.write(Session(), "C", b"QUIT")
    assert "STAT" in open(log.path + ".1").read()
    assert "QUIT" in text(log) and "STAT" not in text(log)


def test_reopen_failure_keeps_old_file(log, tmp_path):
    (tmp_path / "plainfile").write_text("")
    log.path = str(tmp_path / "plainfile" / "protocol.log")
    assert log.reopen() is False
    log.write(Session(), "C", b"NOOP")      # no exception, old fd still used
    assert "NOOP" in open(tmp_path / "logs" / "protocol.log").read()


def test_multiline_reply_is_one_entry(log):
    s = Session()
    lines = [b"+OK"] + [b"%d 120" % i for i in range(1, 1001)] + [b"."]
    log.write_reply(s, lines)
    (line,) = text(log).splitlines()
    octets = sum(len(l) + 2 for l in lines[1:])
    assert line.endswith(" tls S +OK [+1001 lines, %d octets]" % octets)


def test_multiline_reply_entry_size_does_not_grow_with_the_reply(log):
    s = Session()
    log.write_reply(s, [b"+OK"] + [b"1 120"] * 10 + [b"."])
    small = os.path.getsize(log.path)
    log.write_reply(s, [b"+OK"] + [b"1 120"] * 100_000 + [b"."])
    assert os.path.getsize(log.path) - small <= small + 8      # a few more digits only


def test_multiline_reply_first_line_is_redacted_and_bounded(log):
    s = Session()
    log.write_reply(s, [b"+ c2VjcmV0LWNoYWxsZW5nZQ==", b"."])
    log.write_reply(s, [b"+OK " + b"A" * 5000 + b"\n2020-01-01 S forged", b"."])
    log.write_reply(s, [])                                   # nothing to log
    lines = text(log).splitlines()
    assert len(lines) == 2
    assert "c2VjcmV0" not in lines[0] and "[+1 lines, 3 octets]" in lines[0]
    assert len(lines[1]) < 800 and lines[1].endswith("[+1 lines, 3 octets]")


def test_closed_log_writes_no_reply(log):
    log.close()
    log.write_reply(Session(), [b"+OK", b"."])               # no exception
    assert text(log) == ""
