"""
twisted.logger events as JSON lines (C{[log] format = "json"}).

One object per line::

    {"time": "2025-01-31T12:00:00.123456Z", "level": "info",
     "namespace": "securepop", "event": "auth.failure",
     "message": "securepop auth.failure ip=192.0.2.7 ...",
     "fields": {"ip": "192.0.2.7", "user": "alice", ...}}

C{event} and C{fields} come from L{securepop.events.emit} (C{securepop_event},
C{sp_*}); other Twisted events have C{event: null} and their formatted
C{message}.  Failures add C{traceback}.  L{event_from_json} turns a line
back into an event, which is how worker processes hand their log to the
supervisor.
"""

from __future__ import annotations

import datetime
import json
import sys

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer
from twisted.logger import ILogObserver


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def event_as_dict(event) -> dict:
    when = event.get("log_time")
    stamp = (datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
             .strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when is not None else None)
    level = event.get("log_level")
    record = {
        "time": stamp,
        "level": level.name if isinstance(level, type(LogLevel.info)) else None,
        "namespace": event.get("log_namespace"),
        "event": event.get("securepop_event"),
        "message": formatEvent(event),
    }
    fields = {key[3:]: _jsonable(value) for key, value in event.items()
              if key.startswith("sp_")}
    if fields or record["event"]:
        record["fields"] = fields
    if "securepop_worker" in event:
        record["worker"] = _jsonable(event["securepop_worker"])
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return record


def format_json_line(event) -> str:
    return json.dumps(event_as_dict(event), ensure_ascii=True, separators=(",", ":"),
                      default=str) + "\n"


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as one JSON line to C{out} (a text file) and flushes.

    @param out: a text file, or a callable returning one (so C{sys.stdout}
        can be looked up at write time).
    """

    def __init__(self, out=None):
        # The stream now: twistd later replaces sys.stdout by a file that
        # logs, and writing the log there would loop.
        self._out = out if out is not None else sys.stdout

    @property
    def out(self):
        if callable(self._out) and not hasattr(self._out, "write"):
            return self._out()
        return self._out

    def __call__(self, event):
        out = self.out
        try:
            out.write(format_json_line(event))
            out.flush()
        except (OSError, ValueError, RecursionError):
            pass


def event_from_json(line, extra=None):
    """
    A twisted.logger event from one JSON line written by L{JSONLineObserver};
    None when the line is not such an object.
    """
    try:
        record = json.loads(line)
    except (ValueError, TypeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return None
    level = LogLevel.levelWithName(record.get("level") or "info") \
        if record.get("level") in ("debug", "info", "warn", "error", "critical") \
        else LogLevel.info
    event = {
        "log_level": level,
        "log_namespace": str(record.get("namespace") or "securepop"),
        "log_format": "{securepop_text}",
        "securepop_text": record["message"],
        "log_source": None,
    }
    try:
        when = record.get("time")
        if when:
            event["log_time"] = datetime.datetime.strptime(
                when, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        pass
    if record.get("event"):
        event["securepop_event"] = str(record["event"])
    fields = record.get("fields")
    if isinstance(fields, dict):
        for key, value in fields.items():
            event["sp_" + str(key)] = value
    if record.get("traceback"):
        event["securepop_text"] += "\n" + str(record["traceback"])
    if extra:
        event.update(extra)
    return event


def publish(event, publisher=globalLogPublisher):
    publisher(event)
