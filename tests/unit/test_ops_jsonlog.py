"""Tests for securepop.ops.jsonlog: JSON lines and the way back."""

import io
import json

from twisted.logger import LogLevel, Logger

from securepop import events
from securepop.ops import jsonlog


def capture(emit):
    out = io.StringIO()
    obs = jsonlog.JSONLineObserver(out)
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(obs)
    try:
        emit()
    finally:
        globalLogPublisher.removeObserver(obs)
    return [json.loads(l) for l in out.getvalue().splitlines()]


def test_securepop_event_has_name_and_fields():
    records = capture(lambda: events.emit("auth.failure", ip="192.0.2.7", user="a b",
                                          mechanism="PLAIN", reason="bad-password"))
    (r,) = [r for r in records if r["event"] == "auth.failure"]
    assert r["fields"] == {"ip": "192.0.2.7", "user": "a b", "mechanism": "PLAIN",
                           "reason": "bad-password"}
    assert r["level"] == "info" and r["namespace"] == "securepop"
    assert r["message"].startswith("securepop auth.failure ip=192.0.2.7 user=a\\x20b")
    assert r["time"].endswith("Z")


def test_plain_twisted_event_and_failure():
    log = Logger(namespace="other")

    def emit():
        log.info("hello {who}", who="world")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("boom")

    records = capture(emit)
    assert records[0]["event"] is None and records[0]["message"] == "hello world"
    assert "fields" not in records[0]
    assert "ZeroDivisionError" in records[1]["traceback"]
    assert records[1]["level"] == "critical"


def test_each_line_is_one_json_object_even_with_newlines():
    records = capture(lambda: events.emit("x.y", note="a\nb"))
    assert records[-1]["fields"]["note"] == "a\nb"


def test_round_trip():
    event = {"log_level": LogLevel.warn, "log_namespace": "securepop", "log_time": 1700000000.25,
             "log_format": "{securepop_text}", "securepop_text": "securepop a.b k=v",
             "securepop_event": "a.b", "sp_k": "v"}
    line = jsonlog.format_json_line(event)
    back = jsonlog.event_from_json(line, {"securepop_worker": 3})
    assert back["securepop_event"] == "a.b" and back["sp_k"] == "v"
    assert back["log_level"] is LogLevel.warn
    assert abs(back["log_time"] - 1700000000.25) < 1e-3
    assert back["securepop_worker"] == 3
    assert json.loads(jsonlog.format_json_line(back))["worker"] == 3
    assert line.endswith("\n")


def test_garbage_lines_are_not_events():
    for line in ("", "not json", "[1,2]", '{"message": 5}', "{"):
        assert jsonlog.event_from_json(line) is None
    weird = jsonlog.event_from_json('{"message": "m", "level": "nonsense"}')
    assert weird["log_level"] is LogLevel.info
