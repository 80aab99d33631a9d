"""Log events: one stable line each; client data cannot forge lines or fields."""

from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from securepop import events


def capture(fn):
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        fn()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    return [e for e in seen if e.get("securepop_event")]


def test_fixed_format_and_fields():
    [e] = capture(lambda: events.emit("auth.failure", ip="192.0.2.7", user="alice",
                                      mechanism="PLAIN", reason="bad-password"))
    assert formatEvent(e) == ("securepop auth.failure ip=192.0.2.7 user=alice "
                              "mechanism=PLAIN reason=bad-password")
    assert e["securepop_event"] == "auth.failure"
    assert e["sp_user"] == "alice"
    assert e["log_level"] == LogLevel.info


def test_hostile_values_cannot_forge_lines_or_fields():
    hostile = "x\nsecurepop auth.success ip=1.2.3.4 user=root reason=ok"
    [e] = capture(lambda: events.emit("auth.failure", "warn", ip="192.0.2.7", user=hostile))
    text = formatEvent(e)
    assert "\n" not in text
    keys = [token.split("=", 1)[0] for token in text.split(" ")[2:]]
    assert keys == ["ip", "user"]            # one token per field, whatever the value
    assert " ip=1.2.3.4" not in text
    assert e["log_level"] == LogLevel.warn


def test_clean():
    assert events.clean(None) == "-"
    assert events.clean("") == "-"
    assert events.clean("a b") == "a\\x20b"
    assert events.clean("é") == "\\xe9"
    assert len(events.clean("x" * 1000)) == 131


def test_message_is_appended_without_control_characters():
    [e] = capture(lambda: events.emit("users.none", "warn", message="add one\nplease"))
    assert formatEvent(e) == "securepop users.none -- add one please"
