"""
Abuse against the real daemon: each attack is bounded by a limit or a
timeout, logged, and never starves an unrelated client -- an observer
session (logged in, from 127.0.0.2) measures its NOOP round trip all along.
"""

from __future__ import annotations

import os
import socket
import ssl
import statistics
import threading
import time

import pytest

from tests.integration.clients import (
    HOST, IMPLICIT, RawPOP3, client_context, clone_users, store_message, vmrss_kib,
)

ABUSE_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 3
idle_timeout = 5
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1"
tls = "implicit"
[auth]
mechanisms = ["PLAIN", "LOGIN"]
failure_delay = 0.1
failure_delay_max = 0.5
max_attempts = 3
[access]
max_connections_per_ip = 100
max_connections_per_user = 4
"""
PASSWORD = "Abuse-Password-3"
MAX_RTT = 1.0      # seconds: generous for a loaded 2-core CI machine


class Observer:
    """A logged-in implicit-TLS session from 127.0.0.2, sending NOOP every 0.1 s."""

    count = 0

    def __init__(self, daemon):
        Observer.count += 1          # one user each: a lock never outlives its test
        user = b"observer%d" % Observer.count
        raw = socket.socket()
        raw.bind(("127.0.0.2", 0))
        raw.settimeout(10)
        raw.connect(("127.0.0.1", daemon.pop3s_port))
        self.sock = client_context(daemon).wrap_socket(raw, server_hostname=HOST)
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"+OK")
        assert self.command(b"USER " + user).startswith(b"+OK")
        assert self.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
        self.rtts, self.failures = [], []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def command(self, line):
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def _run(self):
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                reply = self.command(b"NOOP")
            except OSError as e:
                self.failures.append(repr(e))
                return
            if not reply.startswith(b"+OK"):
                self.failures.append(reply)
                return
            self.rtts.append(time.monotonic() - start)
            time.sleep(0.1)

    def close(self):
        """QUIT, so the next observer finds the mailbox unlocked."""
        if self._stop.is_set() and self.sock.fileno() < 0:
            return
        self._stop.set()
        self.thread.join(15)
        try:
            self.command(b"QUIT")
        except OSError:
            pass
        self.sock.close()

    def stop(self):
        self.close()
        assert not self.failures, self.failures
        assert self.rtts
        figures = dict(n=len(self.rtts), median_ms=round(statistics.median(self.rtts) * 1000, 1),
                       max_ms=round(max(self.rtts) * 1000, 1))
        print("NOOP round trip during the attack:", figures)
        assert max(self.rtts) < MAX_RTT, figures
        return figures


@pytest.fixture(scope="module")
def abuse_daemon(daemon_factory):
    d = daemon_factory(ABUSE_CONFIG, users=(("observer", PASSWORD),), name="abuse")
    clone_users(d, "observer", ["victim", "big", "piper", "authbig"]
                + [f"observer{i}" for i in range(1, 20)])
    time.sleep(1.5)
    return d


@pytest.fixture
def observer(abuse_daemon):
    o = Observer(abuse_daemon)
    yield o
    o.close()


def closed_within(sock, seconds):
    """True when the peer closes C{sock} within C{seconds} (reading whatever comes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except (socket.timeout, TimeoutError):
            return False
    return False


def test_slow_loris_is_cut_by_the_login_idle_timeout(abuse_daemon, observer):
    start_log = len(abuse_daemon.log())
    socks = [socket.create_connection(("127.0.0.1", abuse_daemon.pop3_port)) for _ in range(30)]
    for s in socks:
        s.recv(512)                                   # greeting
    t0 = time.monotonic()
    alive = list(socks)
    while alive and time.monotonic() - t0 < 12:
        for s in list(alive):
            try:
                s.send(b"N")                          # one byte, never a line
            except OSError:
                alive.remove(s)
        time.sleep(1)
        for s in list(alive):
            if closed_within(s, 0.01):
                alive.remove(s)
    elapsed = time.monotonic() - t0
    observer.stop()
    for s in socks:
        s.close()
    assert not alive, f"{len(alive)} slow clients still connected after {elapsed:.1f}s"
    assert elapsed < 3 + 5
    assert abuse_daemon.wait_log("session.timeout", start=start_log)


def test_idle_client_negative_case_a_fast_client_is_not_cut(abuse_daemon):
    with RawPOP3(abuse_daemon, tls=IMPLICIT) as c:
        for _ in range(4):
            time.sleep(1)
            assert c.command(b"CAPA").startswith(b"+OK")
            c.multiline()


def test_client_that_never_reads_a_large_retr(abuse_daemon, observer):
    store_message(abuse_daemon, "big", b"Subject: big\n\n" + b"x" * 99 + b"\n" * 1 + (
        (b"y" * 998 + b"\n") * 30_000))                # ~30 MB
    pid = abuse_daemon.proc.pid
    before = vmrss_kib(pid)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", abuse_daemon.pop3s_port))
    c = client_context(abuse_daemon).wrap_socket(raw, server_hostname=HOST)
    f = c.makefile("rb")
    f.readline()
    c.sendall(b"USER big\r\nPASS " + PASSWORD.encode() + b"\r\n")
    f.readline(), f.readline()
    c.sendall(b"RETR 1\r\n")
    peak = before
    for _ in range(12):                               # idle_timeout is 5 s
        time.sleep(1)
        peak = max(peak, vmrss_kib(pid))
    got = 0
    c.settimeout(10)
    try:
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    except (OSError, ssl.SSLError):
        pass
    c.close()
    figures = observer.stop()
    print(f"never-reading RETR: RSS {before} -> peak {peak} KiB, client got {got} bytes")
    assert got < 30_000_000                           # cut before the end
    assert peak - before < 32 * 1024                  # memory bounded by buffers, not the message
    assert figures["max_ms"] < MAX_RTT * 1000


def test_connection_flood_is_limited_per_ip(abuse_daemon, observer):
    greeted, refused = [], 0
    for _ in range(300):
        try:
            s = socket.create_connection(("127.0.0.1", abuse_daemon.pop3_port), timeout=10)
            line = s.recv(512)
        except OSError:
            refused += 1
            continue
        if line.startswith(b"+OK"):
            greeted.append(s)
        else:
            assert line.startswith(b"-ERR [SYS/TEMP]") or not line, line
            refused += 1
            s.close()
    observer.stop()
    # On a slow machine the first ones may meet the 3 s login idle timeout
    # before the flood ends: those freed their slot.
    timed_out = sum(closed_within(s, 0.05) for s in greeted)
    for s in greeted:
        s.close()
    print(f"flood: {len(greeted)} greeted ({timed_out} timed out meanwhile), {refused} refused")
    assert len(greeted) - timed_out <= 100
    assert refused >= 200 - timed_out
    time.sleep(0.5)
    with RawPOP3(abuse_daemon) as c:                  # capacity comes back
        assert c.greeting.startswith(b"+OK")
    assert "limit=max_connections_per_ip" in abuse_daemon.log()


def test_thousands_of_pipelined_commands(abuse_daemon, observer):
    with RawPOP3(abuse_daemon, tls=IMPLICIT, timeout=60) as c:
        assert c.login("piper", PASSWORD).startswith(b"+OK")
        c.send(b"NOOP\r\n" * 5000)
        replies = [c.readline() for _ in range(5000)]
        assert all(r == b"+OK" for r in replies)
        c.send(b"BOGUS\r\n" * 5000)                    # errors close it after a few
        assert c.closed(10)
        assert c.received.count(b"-ERR") <= 10
    observer.stop()
    assert "too-many-errors" in abuse_daemon.log()


def test_oversized_auth_continuation(abuse_daemon, observer):
    with RawPOP3(abuse_daemon, tls=IMPLICIT) as c:
        assert c.command(b"AUTH PLAIN").startswith(b"+")
        reply = c.command(b"A" * 9000)                  # > 8 KiB continuation
        assert reply.startswith(b"-ERR [AUTH]"), reply
        assert c.command(b"AUTH PLAIN").startswith(b"+")
        c.send(b"QUFB" * 300_000)                       # 1.2 MB, no line end
        assert c.readline(timeout=10).startswith(b"-ERR")
        assert c.closed(10) or c.command(b"NOOP").startswith(b"-ERR")
    observer.stop()


def _retry(call, sock, timeout=10):
    """Run a pyOpenSSL call on a socket with a timeout, waiting on WantRead."""
    import select

    from OpenSSL import SSL

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (SSL.WantReadError, SSL.WantWriteError):
            if time.monotonic() > deadline:
                raise TimeoutError("TLS peer silent")
            select.select([sock], [], [], 0.2)


def test_tls_renegotiation_is_refused(abuse_daemon, observer):
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)      # TLS 1.3 has no renegotiation at all
    sock = socket.create_connection(("127.0.0.1", abuse_daemon.pop3s_port), timeout=10)
    sock.setblocking(False)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    conn.set_tlsext_host_name(HOST.encode())
    _retry(conn.do_handshake, sock)
    assert _retry(lambda: conn.recv(1024), sock).startswith(b"+OK")
    outcome = "accepted"
    try:
        assert conn.renegotiate()
        _retry(conn.do_handshake, sock)
        conn.send(b"CAPA\r\n")
        data = _retry(lambda: conn.recv(4096), sock)
        if not data or conn.total_renegotiations() == 0:
            outcome = "ignored"
    except (SSL.Error, OSError, TimeoutError) as e:
        outcome = f"refused: {e!r}"[:120]
    finally:
        sock.close()
    observer.stop()
    print("renegotiation:", outcome)
    assert outcome != "accepted"
    with RawPOP3(abuse_daemon, tls=IMPLICIT) as c:     # others unaffected
        assert c.greeting.startswith(b"+OK")


def test_garbage_instead_of_client_hello(abuse_daemon, observer):
    start_log = len(abuse_daemon.log())
    for payload in (os.urandom(65536), b"USER alice\r\n" * 100, b"\x16\x03\x01\xff\xff" + b"\0" * 100):
        s = socket.create_connection(("127.0.0.1", abuse_daemon.pop3s_port), timeout=10)
        try:
            s.sendall(payload)
        except OSError:
            pass
        assert closed_within(s, 10)
        s.close()
    observer.stop()
    with RawPOP3(abuse_daemon, tls=IMPLICIT) as c:     # still serving TLS
        assert c.greeting.startswith(b"+OK")
    assert len(abuse_daemon.log()) > start_log          # logged, not silent
