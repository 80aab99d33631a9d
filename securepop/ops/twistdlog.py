"""
Where and how the log goes under twistd, for both C{[log] format}s.

twistd asks the application for an L{ILogObserver} before it starts
logging; securepop always answers, so that:

  - C{format = "text"} writes exactly twistd's own line
    (C{2026-11-29T02:35:25+0000 [securepop#info] securepop auth.success
    ip=...}), which fail2ban filters and greps rely on, without Twisted's
    per-event formatting: a securepop event is already one line of text
    (L{securepop.events.emit}), so only a time stamp is added, made once per
    second.  Every other event goes through Twisted's own formatter.
    Twisted's per-event formatting is a measurable share of a session's
    CPU (three lines per session; the figure is in C{bench/RESULTS.md}).
  - C{format = "json"} writes one JSON object per line
    (L{securepop.ops.jsonlog}).

The destination is the one twistd would choose: stdout with C{-n} and no
C{--logfile}, else the log file (C{twistd.log} when daemonised), rotated
on C{SIGUSR1} as twistd does.  With C{--syslog} and the text format,
twistd's own syslog observer is kept.
"""

from __future__ import annotations

import signal
import sys

from twisted.logger import (
    FileLogObserver,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)

from securepop.ops.jsonlog import JSONLineObserver

_FAST_FORMAT = "{securepop_text}"


class ClassicText:
    """
    twistd's classic text line for one event (a L{FileLogObserver} format
    function), with a fast path for securepop's preformatted events.
    """

    def __init__(self, timeFormat: str = timeFormatRFC3339):
        self.timeFormat = timeFormat
        self._second = None
        self._stamp = "-"

    def stamp(self, when) -> str:
        """C{when} formatted as twistd does; one C{strftime} per second."""
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            # The whole second is formatted: the format has no fraction, and
            # every event of that second must get the same text.
            self._stamp = formatTime(float(second), timeFormat=self.timeFormat)
            self._second = second
        return self._stamp

    def __call__(self, event) -> str | None:
        text = event.get("securepop_text")
        level = event.get("log_level")
        if (text is None or event.get("log_format") != _FAST_FORMAT or level is None
                or "log_failure" in event or "log_system" in event
                or text.__class__ is not str or not text):
            return formatEventAsClassicLogText(event, formatTime=self.stamp)
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return (f"{self.stamp(event.get('log_time'))} "
                f"[{event.get('log_namespace', '-')}#{level.name}] {text}\n")


def destination(twistd_options, install_rotation=True):
    """
    Where twistd would write its log: None for stdout (C{-n} and no
    C{--logfile}, or C{--logfile=-}), else a L{LogFile} (C{twistd.log} when
    daemonised) that C{SIGUSR1} rotates, as twistd's own would.
    """
    logfile = None
    nodaemon = True
    if twistd_options is not None:
        try:
            logfile = twistd_options["logfile"]
            nodaemon = bool(twistd_options["nodaemon"])
        except (KeyError, TypeError):
            pass
    if not logfile and not nodaemon:
        logfile = "twistd.log"
    if not logfile or logfile == "-":
        return None
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(logfile)
    if install_rotation and not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def _syslog_requested(twistd_options) -> bool:
    try:
        return bool(twistd_options["syslog"])
    except (KeyError, TypeError):
        return False


def observer_for_twistd(log_format: str, twistd_options):
    """
    The observer twistd should use for C{[log] format}; None leaves twistd's
    own (the text format with C{--syslog}).
    """
    if log_format == "json":
        return JSONLineObserver(destination(twistd_options))
    if _syslog_requested(twistd_options):
        return None
    out = destination(twistd_options)
    # stdout as it is now: twistd later replaces sys.stdout by a file that
    # logs, and writing the log there would loop.
    return FileLogObserver(out if out is not None else sys.stdout, ClassicText())
