"""
systemd's readiness protocol (sd_notify), without libsystemd.

C{Type=notify} (and C{notify-reload}) units wait for C{READY=1}; a reload
is announced with C{RELOADING=1} and C{MONOTONIC_USEC}, a stop with
C{STOPPING=1}.  The datagrams go to the socket named by C{NOTIFY_SOCKET}; a
name starting with C{@} is an abstract socket.  Without C{NOTIFY_SOCKET}
every call is a no-op, so the same code runs under systemd and elsewhere.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.application import service

from securepop import events


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd compares it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(name: str):
    """The C{sendto} address for C{NOTIFY_SOCKET}: C{@name} is abstract."""
    if name.startswith("@"):
        return "\0" + name[1:]
    return name


class SystemdNotifier:
    """
    Sends sd_notify datagrams.

    @param address: the C{NOTIFY_SOCKET} value; None disables notification.
    """

    def __init__(self, address: str | None):
        self.address = address or None
        self.sent = []          # what was sent, for diagnostics and tests

    @classmethod
    def fromEnvironment(cls, environ=None, unset=True):
        """
        Take C{NOTIFY_SOCKET} from the environment and, by default, remove it
        so child processes (workers) do not speak for the service.
        """
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET")
        if unset and address is not None:
            environ.pop("NOTIFY_SOCKET", None)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields) -> bool:
        """
        Send one datagram of C{KEY=value} lines; errors are logged, never
        raised (a lost notification must not stop the server).
        """
        if not self.enabled:
            return False
        text = "\n".join(f"{k}={v}" for k, v in fields.items())
        if "\0" in text:
            raise ValueError("NUL in a notification")
        self.sent.append(text)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(text.encode("utf-8"), socket_address(self.address))
        except OSError as e:
            events.emit("notify.failed", "warn", error=e.strerror or str(e))
            return False
        return True

    def ready(self, status="serving"):
        return self.send(READY=1, STATUS=status)

    def reloading(self):
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(),
                         STATUS="reloading configuration")

    def stopping(self):
        return self.send(STOPPING=1, STATUS="stopping: sessions in flight may finish")

    def status(self, text):
        return self.send(STATUS=text)


class NotifyService(service.Service):
    """
    READY=1 when started (add it last: its siblings listen first), STOPPING=1
    as soon as the stop begins (stopped first, in reverse order).
    """

    name = "systemd-notify"

    def __init__(self, notifier: SystemdNotifier):
        self.notifier = notifier

    def startService(self):
        super().startService()
        self.notifier.ready()

    def stopService(self):
        self.notifier.stopping()
        return super().stopService()
