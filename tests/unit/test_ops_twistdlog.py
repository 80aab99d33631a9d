"""securepop.ops.twistdlog: twistd's text line made cheaply, and the log's destination."""

import json
import signal
import sys

import pytest
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    Logger,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure

from securepop import events
from securepop.ops import twistdlog
from securepop.ops.jsonlog import JSONLineObserver


def securepop_event(text, level=LogLevel.info, when=1764383725.25, **extra):
    event = {"log_format": "{securepop_text}", "securepop_text": text, "log_level": level,
             "log_namespace": "securepop", "log_time": when, "log_source": None,
             "securepop_event": "auth.success"}
    event.update(extra)
    return event


def twisted_line(event):
    return formatEventAsClassicLogText(event, formatTime=formatTime)


@pytest.mark.parametrize("level", [LogLevel.debug, LogLevel.info, LogLevel.warn,
                                   LogLevel.error, LogLevel.critical])
def test_securepop_line_is_twistds_line(level):
    event = securepop_event("securepop auth.success ip=127.0.0.1 user=alice", level)
    assert twistdlog.ClassicText()(event) == twisted_line(event)


def test_events_from_emit_are_formatted_as_twisted_would():
    seen = []
    log = Logger(namespace="securepop", observer=seen.append)
    events.log, saved = log, events.log
    try:
        events.emit("auth.failure", "warn", ip="192.0.2.7", user="bob\nforged=1",
                    message="two\nlines")
    finally:
        events.log = saved
    (event,) = seen
    line = twistdlog.ClassicText()(event)
    assert line == twisted_line(event)
    assert line.count("\n") == 1 and "user=bob\\x0aforged=1" in line


def test_other_events_fall_back_to_twisted():
    fmt = twistdlog.ClassicText()
    plain = {"log_format": "Site starting on {port}", "port": 110, "log_level": LogLevel.info,
             "log_namespace": "twisted.web", "log_time": 1764383725.0}
    legacy = {"log_format": "{log_text}", "log_text": "legacy", "log_system": "-",
              "log_level": LogLevel.info, "log_time": 1764383725.0}
    try:
        1 / 0
    except ZeroDivisionError:
        failed = securepop_event("securepop x", LogLevel.error, log_failure=Failure())
    for event in (plain, legacy, failed, securepop_event("")):
        assert fmt(event) == twisted_line(event)
    assert "ZeroDivisionError" in fmt(failed)
    # A look-alike whose format is not the plain text: formatted by Twisted.
    tricky = securepop_event("x", log_format="{securepop_text} {other}", other="y")
    assert fmt(tricky) == twisted_line(tricky) and fmt(tricky).endswith("x y\n")


def test_multiline_text_continues_with_a_tab():
    event = securepop_event("first\nsecond")
    assert twistdlog.ClassicText()(event) == twisted_line(event)
    assert twistdlog.ClassicText()(event).endswith("first\n\tsecond\n")


def test_stamp_is_made_once_per_second_and_changes_with_it():
    fmt = twistdlog.ClassicText()
    calls = []
    real = twistdlog.formatTime
    twistdlog.formatTime = lambda when, timeFormat: calls.append(when) or real(when, timeFormat)
    try:
        a = fmt.stamp(1764383725.1)
        b = fmt.stamp(1764383725.9)
        c = fmt.stamp(1764383726.0)
    finally:
        twistdlog.formatTime = real
    assert a == b == formatTime(1764383725.5)
    assert c == formatTime(1764383726.0) != a
    assert len(calls) == 2
    assert fmt.stamp(None) == "-"


def test_no_time_is_a_dash_as_in_twisted():
    event = securepop_event("securepop x", when=None)
    assert twistdlog.ClassicText()(event) == twisted_line(event)


def test_destination_stdout_cases():
    assert twistdlog.destination({"logfile": None, "nodaemon": True}) is None
    assert twistdlog.destination({"logfile": "-", "nodaemon": False}) is None
    assert twistdlog.destination(None) is None


@pytest.fixture
def usr1():
    saved = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGUSR1, saved)


def test_destination_file_rotates_on_usr1_like_twistd(tmp_path, usr1):
    f = twistdlog.destination({"logfile": str(tmp_path / "t.log"), "nodaemon": False})
    handler = signal.getsignal(signal.SIGUSR1)
    assert callable(handler)
    f.write("one\n")
    f.flush()
    f.rotate()
    assert (tmp_path / "t.log.1").read_text() == "one\n"
    f.close()


def test_destination_keeps_an_existing_usr1_handler(tmp_path, usr1):
    mine = lambda *a: None  # noqa: E731
    signal.signal(signal.SIGUSR1, mine)
    f = twistdlog.destination({"logfile": str(tmp_path / "t.log"), "nodaemon": True})
    assert signal.getsignal(signal.SIGUSR1) is mine
    f.close()


def test_text_observer_writes_twistds_line_to_the_file(tmp_path, usr1):
    obs = twistdlog.observer_for_twistd("text", {"logfile": str(tmp_path / "t.log"),
                                                 "nodaemon": True})
    assert isinstance(obs, FileLogObserver)
    event = securepop_event("securepop auth.success ip=127.0.0.1 user=alice")
    obs(event)
    assert (tmp_path / "t.log").read_text() == twisted_line(event)


def test_text_observer_to_stdout(capsys):
    obs = twistdlog.observer_for_twistd("text", {"logfile": None, "nodaemon": True})
    obs(securepop_event("securepop hello"))
    assert capsys.readouterr().out.endswith("[securepop#info] securepop hello\n")


def test_syslog_keeps_twistds_observer_for_text_only(tmp_path):
    options = {"logfile": None, "nodaemon": True, "syslog": True}
    assert twistdlog.observer_for_twistd("text", options) is None
    assert isinstance(twistdlog.observer_for_twistd("json", options), JSONLineObserver)


def test_json_observer_to_file(tmp_path, usr1):
    f = twistdlog.destination({"logfile": str(tmp_path / "t.log"), "nodaemon": True})
    obs = JSONLineObserver(f)
    obs({"log_format": "x", "log_level": LogLevel.info, "log_time": 0})
    f.close()
    assert json.loads((tmp_path / "t.log").read_text())["message"] == "x"


def test_text_observer_captures_stdout_now(monkeypatch, capsys):
    obs = twistdlog.observer_for_twistd("text", None)
    monkeypatch.setattr(sys, "stdout", None)  # twistd replaces it later
    obs(securepop_event("securepop still here"))
    assert "securepop still here" in capsys.readouterr().out
