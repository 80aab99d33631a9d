"""
systemd: the unit files pass C{systemd-analyze verify}; readiness reaches a
fake NOTIFY_SOCKET: READY=1, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.daemon import Daemon, require_tool

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "etc" / "systemd"


def verify(directory):
    tool = require_tool("systemd-analyze")
    return subprocess.run(
        [tool, "verify", "--man=no", str(directory / "securepop.service"),
         str(directory / "securepop.socket")],
        capture_output=True, text=True, timeout=60)


def units_copy(tmp_path):
    """
    The shipped units with ExecStart pointing at the twistd this test runs
    (the shipped path, /usr/local/bin/twistd, need not exist here: verify
    checks that the binary is executable).  Everything else is unchanged.
    """
    for name in ("securepop.service", "securepop.socket"):
        shutil.copy(UNITS / name, tmp_path / name)
    service = tmp_path / "securepop.service"
    text = service.read_text()
    assert re.search(r"^ExecStart=/usr/local/bin/twistd --nodaemon --pidfile= securepop ",
                     text, re.M)
    twistd = str(Path(sys.executable).parent / "twistd")
    service.write_text(text.replace("ExecStart=/usr/local/bin/twistd", f"ExecStart={twistd}"))
    return tmp_path


def test_units_verify_cleanly(tmp_path):
    result = verify(units_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    d = units_copy(tmp_path)
    service = d / "securepop.service"
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy")
                       .replace("SystemCallFilter=@system-service", "SystemCallFilter=@nonsense"))
    result = verify(d)
    assert "notifyy" in result.stderr or result.returncode != 0


def test_unit_hardening_present():
    text = (UNITS / "securepop.service").read_text()
    for setting in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "ProtectHome=yes", "PrivateTmp=yes", "ReadWritePaths=",
                    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "RestrictAddressFamilies=",
                    "SystemCallFilter=@system-service", "User=securepop",
                    "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in text, setting
    sock = (UNITS / "securepop.socket").read_text()
    assert "ListenStream=[::]:110" in sock and "ListenStream=[::]:995" in sock


def test_logrotate_config_parses(tmp_path):
    tool = shutil.which("logrotate")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("logrotate is not installed")
        pytest.skip("logrotate is not installed")
    conf = (ROOT / "etc" / "logrotate.d" / "securepop").read_text()
    conf = conf.replace("/var/log/securepop", str(tmp_path)).replace(
        "create 0600 securepop securepop", "create 0600 root root")
    (tmp_path / "lr.conf").write_text(conf)
    (tmp_path / "protocol.log").write_text("x\n")
    r = subprocess.run([tool, "-d", "-s", str(tmp_path / "state"), str(tmp_path / "lr.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr.lower()


def recv_fields(sock):
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n") if "=" in line)


@pytest.mark.parametrize("abstract", [False, True])
def test_readiness_protocol(tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"securepop-notify-test-{os.getpid()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(30)
    d = Daemon(tmp_path, env={"NOTIFY_SOCKET": address}, name="notify")
    d.add_user("alice", "pw-notify-1")
    try:
        d.start()
        ready = recv_fields(sock)
        assert ready.get("READY") == "1"
        d.sighup()
        reloading = recv_fields(sock)
        assert reloading.get("RELOADING") == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert recv_fields(sock).get("READY") == "1"
        d.proc.terminate()
        assert recv_fields(sock).get("STOPPING") == "1"
        assert d.stop() in (0, -15)    # twistd re-raises SIGTERM after a clean stop
    finally:
        d.stop()
        sock.close()


def test_no_notify_socket_no_error(tmp_path):
    d = Daemon(tmp_path, name="nonotify")
    d.env.pop("NOTIFY_SOCKET", None)
    d.add_user("alice", "pw-notify-1")
    try:
        d.start()
    finally:
        d.stop()
    assert "notify.failed" not in d.log()
