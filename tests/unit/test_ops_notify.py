"""Tests for securepop.ops.notify: sd_notify datagrams over NOTIFY_SOCKET."""

import os
import socket

import pytest
from twisted.application.service import MultiService, Service

from securepop.ops import notify


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield s, path
    s.close()


def fields(datagram):
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_reaches_socket(listener):
    s, path = listener
    n = notify.SystemdNotifier(path)
    assert n.ready()
    assert fields(s.recv(4096))["READY"] == "1"


def test_reloading_carries_monotonic_usec(listener):
    s, path = listener
    before = notify.monotonic_usec()
    notify.SystemdNotifier(path).reloading()
    got = fields(s.recv(4096))
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= notify.monotonic_usec()


def test_abstract_socket_name():
    assert notify.socket_address("@foo") == "\0foo"
    assert notify.socket_address("/run/x") == "/run/x"
    name = "securepop-test-%d" % os.getpid()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        notify.SystemdNotifier("@" + name).stopping()
        assert fields(s.recv(4096))["STOPPING"] == "1"
    finally:
        s.close()


def test_disabled_without_socket_is_noop():
    n = notify.SystemdNotifier(None)
    assert not n.enabled
    assert n.ready() is False
    assert n.sent == []


def test_missing_socket_is_logged_not_raised(tmp_path):
    n = notify.SystemdNotifier(str(tmp_path / "absent.sock"))
    assert n.ready() is False


def test_nul_refused():
    with pytest.raises(ValueError):
        notify.SystemdNotifier("/x").send(STATUS="a\0b")


def test_from_environment_removes_variable():
    env = {"NOTIFY_SOCKET": "@abc"}
    n = notify.SystemdNotifier.fromEnvironment(env)
    assert n.address == "@abc"
    assert "NOTIFY_SOCKET" not in env
    assert not notify.SystemdNotifier.fromEnvironment({}).enabled


def test_service_ready_after_siblings_and_stopping_first(listener):
    s, path = listener
    order = []

    class Sibling(Service):
        def startService(self):
            order.append("sibling-start")
            super().startService()

        def stopService(self):
            order.append("sibling-stop")
            return super().stopService()

    class Recording(notify.SystemdNotifier):
        def send(self, **kw):
            order.append("notify:" + ",".join(sorted(kw)))
            return super().send(**kw)

    root = MultiService()
    Sibling().setServiceParent(root)
    notify.NotifyService(Recording(path)).setServiceParent(root)
    root.startService()
    root.stopService()
    assert order == ["sibling-start", "notify:READY,STATUS", "notify:STATUS,STOPPING",
                     "sibling-stop"]
    assert fields(s.recv(4096))["READY"] == "1"
    assert fields(s.recv(4096))["STOPPING"] == "1"
