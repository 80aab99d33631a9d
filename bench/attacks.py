"""
The hardening review's attacks, measured: guesses per minute from one
address, and a correct login's time while another address floods.

    python bench/attacks.py [--seconds 120] [--code DIR] [--json FILE]

Runs the real daemon (twistd securepop from this virtualenv; C{--code DIR}
puts another checkout first on PYTHONPATH, to measure an older commit) with
the embedded defaults but for the ports and the data directory, adds one
user, and attacks it over implicit TLS from loopback addresses:

- *oracle guessing*: 8 connections from 127.0.0.2, each sending USER and a
  new wrong PASS and hanging up when no answer comes within 0.5 s; the server's
  own C{auth.failure} lines count the checks, per minute;
- *flood*: 16 connections from 127.0.0.3 sending new wrong passwords and hanging
  up at once, while 127.0.0.4 logs in with the right password 5 times (auth
  cache off, so every login is checked); the login times (to "+OK Logged
  in") are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PASSWORD = "Attack-Target-9"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    def __init__(self, workdir, code=None, extra=""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.port = free_port()
        self.config = self.dir / "securepop.toml"
        self.config.write_text(
            f'[server]\nhostname = "localhost"\ndata_dir = "{self.data}"\n'
            f'[[listen]]\nendpoint = "tcp:{self.port}:interface=127.0.0.1"\ntls = "implicit"\n'
            + extra)
        self.env = dict(os.environ)
        if code:
            self.env["PYTHONPATH"] = str(code)
        self.log = self.dir / "twistd.log"

    def cli(self, *args, input=None):
        return subprocess.run([str(VENV_BIN / "securepop"), "--config", str(self.config),
                               *args], input=input, capture_output=True, check=True,
                              env=self.env)

    def start(self):
        self.cli("user", "add", "alice", input=(PASSWORD + "\n").encode())
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "twistd"), "-n", "--pidfile=", "securepop",
                                      "--config", str(self.config)], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("daemon did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:       # still hashing a flood's backlog
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def connect(self, source, timeout=60):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout,
                                        source_address=(source, 0))
        ctx = ssl.create_default_context(cafile=str(self.data / "tls" / "cert.pem"))
        s = ctx.wrap_socket(sock, server_hostname="localhost")
        s.settimeout(timeout)
        f = s.makefile("rb")
        f.readline()
        return s, f

    def failures(self, ip):
        """Times (monotonic-free: log order) of auth.failure lines of C{ip}."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if " auth.failure " in line and f"ip={ip} " in line]


def oracle(target, seconds):
    source = "127.0.0.2"
    stop = time.monotonic() + seconds
    stamps = []
    lock = threading.Lock()

    def attacker():
        while time.monotonic() < stop:
            try:
                s, f = target.connect(source, timeout=5)
                s.sendall(b"USER alice\r\n")
                f.readline()
                s.sendall(b"PASS " + os.urandom(6).hex().encode() + b"\r\n")
                s.settimeout(0.5)
                try:
                    f.readline()
                except (socket.timeout, TimeoutError, ssl.SSLError, OSError):
                    pass
                s.close()
            except OSError:
                time.sleep(0.05)

    before = len(target.failures(source))
    started = time.monotonic()
    # Sample the failure count every second to get per-minute figures.
    threads = [threading.Thread(target=attacker) for _ in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        with lock:
            stamps.append((time.monotonic() - started, len(target.failures(source)) - before))
    time.sleep(2)
    total = len(target.failures(source)) - before
    per_minute = []
    for minute in range(int(seconds // 60)):
        lo = max((n for t, n in stamps if t <= minute * 60), default=0)
        hi = max((n for t, n in stamps if t <= (minute + 1) * 60), default=0)
        per_minute.append(hi - lo)
    return {"seconds": seconds, "checks": total, "checks_per_minute": per_minute}


def flood(target, seconds=10.0, logins=5):
    stop = threading.Event()

    def flooder():
        while not stop.is_set():
            try:
                s, f = target.connect("127.0.0.3", timeout=5)
                guess = os.urandom(6).hex().encode()    # new each time: no cached refusal
                s.sendall(b"USER alice\r\nPASS " + guess + b"\r\n")
                s.close()
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=flooder) for _ in range(16)]
    for t in threads:
        t.start()
    times, replies = [], []
    try:
        time.sleep(seconds)
        for _ in range(logins):
            started = time.monotonic()
            try:
                s, f = target.connect("127.0.0.4", timeout=60)
                s.sendall(b"USER alice\r\n")
                f.readline()
                s.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
                reply = f.readline().strip()
                s.sendall(b"QUIT\r\n")
                s.close()
            except OSError as e:
                reply = repr(e).encode()
            times.append(round(time.monotonic() - started, 3))
            replies.append(reply.decode(errors="replace")[:60])
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {"victim_login_seconds": times, "victim_replies": replies}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--code", help="a checkout to run instead of this one")
    p.add_argument("--json")
    p.add_argument("--only", choices=("oracle", "flood"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"code": a.code or "this checkout", "loadavg": os.getloadavg()[0]}
        target = None
        try:
            if a.only != "flood":
                target = Target(Path(tmp) / "oracle", a.code).start()
                result["oracle"] = oracle(target, a.seconds)
                target.stop()
                target = None
            if a.only != "oracle":
                # Every victim login cold (cache off): what is measured is the
                # hashing line, not the cache.
                target = Target(Path(tmp) / "flood", a.code,
                                extra="[auth]\ncache_ttl = 0\n").start()
                result["flood"] = flood(target)
        finally:
            if target is not None:
                target.stop()
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
