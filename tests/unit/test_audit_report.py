"""
Tests for L{securepop.audit.report}: verdict, exit status, text and JSON.
"""

import json

from securepop.audit.judge import FAIL, INFO, PASS, WARN, AuditResult
from securepop.audit.pop3client import parseURL
from securepop.audit.report import (
    EXIT_DECLINED,
    EXIT_FAIL,
    EXIT_OK,
    counts,
    exitStatus,
    formatJSON,
    formatText,
    toDict,
    verdict,
)


def result(*findings, declined=False, url="pop3://127.0.0.1:1110", source=None):
    r = AuditResult(parseURL(url), declined=declined, sourceAddress=source)
    for check, status, reason in findings:
        r.add(check, status, reason)
    return r


def test_all_pass():
    r = result(("a.b", PASS, "fine"), ("c", INFO, "note"))
    assert verdict(r) == "PASS: no check failed"
    assert exitStatus(r) == EXIT_OK


def test_warnings():
    r = result(("a", PASS, "fine"), ("w", WARN, "hmm"))
    assert verdict(r).startswith("PASS with 1 warning") and "w" in verdict(r)
    assert exitStatus(r) == EXIT_OK


def test_any_fail_fails():
    r = result(("a", PASS, "x"), ("cleartext.user-pass", FAIL, "in clear"), ("w", WARN, "y"))
    assert verdict(r) == "FAIL: 1 check(s) failed: cleartext.user-pass"
    assert exitStatus(r) == EXIT_FAIL


def test_declined():
    r = result(("connection.greeting", INFO, "declined"), declined=True, source="127.0.0.9")
    assert verdict(r).startswith("DECLINED") and "127.0.0.9" in verdict(r)
    assert exitStatus(r) == EXIT_DECLINED


def test_fail_beats_declined():
    r = result(("x", FAIL, "bad"), declined=True)
    assert exitStatus(r) == EXIT_FAIL


def test_counts():
    r = result(("a", PASS, ""), ("b", PASS, ""), ("c", FAIL, ""), ("d", INFO, ""))
    assert counts(r.findings) == {PASS: 2, WARN: 0, FAIL: 1, INFO: 1}


def test_text_one_line_per_check_and_verdict_last():
    r = result(("connection.greeting", PASS, "+OK hi"), ("tls.version.1.0", FAIL, "accepted"))
    lines = formatText(r).splitlines()
    assert lines[0] == "securepop audit of pop3://127.0.0.1:1110"
    assert lines[1].split() [:2] == ["PASS", "connection.greeting"]
    assert lines[2].startswith("FAIL  tls.version.1.0")
    assert lines[-1].startswith("Verdict: FAIL")
    assert len(lines) == 5


def test_text_neutralises_hostile_server_text():
    r = result(("connection.greeting", PASS, "+OK \x1b[2J\x07evil\u202e"))
    text = formatText(r)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def test_ipv6_target_text():
    r = result(url="pop3s://[::1]:995")
    assert "pop3s://[::1]:995" in formatText(r)


def test_json():
    r = result(("a", PASS, "fine"), ("b", FAIL, "bad"), source="127.0.0.2")
    data = json.loads(formatJSON(r))
    assert data["exit_status"] == EXIT_FAIL
    assert data["findings"] == [
        {"check": "a", "status": PASS, "reason": "fine"},
        {"check": "b", "status": FAIL, "reason": "bad"},
    ]
    assert data["source_address"] == "127.0.0.2"
    assert data["declined"] is False
    assert data["verdict"] == verdict(r)
    assert toDict(r)["counts"][FAIL] == 1
