"""
Structured log events with stable names.

Every event carries C{securepop_event} (e.g. C{auth.failure}) and its fields
as keys, so JSON output is machine-readable, and its text form is one fixed
line that fail2ban and grep can rely on::

    securepop auth.failure ip=192.0.2.7 user=alice mechanism=PLAIN reason=bad-password

Nothing secret is ever passed here: values are sanitised so a user name
cannot forge a second log line or a field.
"""

from __future__ import annotations

import re

from twisted.logger import Logger, LogLevel

log = Logger(namespace="securepop")

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean(value) -> str:
    """One token: no spaces, control characters or non-ASCII (escaped)."""
    text = "" if value is None else str(value)
    if len(text) > 128:
        text = text[:128] + "..."
    if text.isascii() and text.isprintable() and " " not in text:
        return text or "-"  # the usual value: nothing to escape, no regex pass
    return _UNSAFE.sub(lambda m: "\\x%02x" % (ord(m.group()) & 0xFF), text) or "-"


def emit(name: str, level: str = "info", message: str = "", **fields) -> None:
    """
    Log event C{name} with C{fields}, as one stable text line; C{message} is
    an optional human sentence (server-written, never client data) after
    C{" -- "}.
    """
    parts = " ".join(f"{k}={clean(v)}" for k, v in fields.items())
    text = f"securepop {name} {parts}".rstrip()
    if message:
        text += " -- " + _CONTROL.sub(" ", message)
    log.emit(
        LogLevel.levelWithName(level), "{securepop_text}", securepop_event=name, securepop_text=text,
        **{f"sp_{k}": v for k, v in fields.items()},
    )
