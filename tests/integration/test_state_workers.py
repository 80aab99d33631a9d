"""
C{server.workers = 2} without C{[state]}: the workers share their
supervisor's store, so the per-address limit and the failure penalty hold
for the whole server, whichever worker the kernel hands a connection to;
a killed worker's slots come back at once; check-config names the store.
"""

import json
import os
import signal
import socket
import ssl
import time

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, Daemon, wait_for

PASSWORD = "Sh4red-state"
USERS = ["alice", "bob", "carol", "dave"]
TOO_MANY = b"-ERR [SYS/TEMP] Too many connections"
BASE_DELAY = 1.5


def config(workers):
    text = DEFAULT_CONFIG.replace("[server]\n", f'[server]\nworkers = "{workers}"\n')
    text = text.replace("failure_delay = 0.2\nfailure_delay_max = 1.0\n",
                        f"failure_delay = {BASE_DELAY}\nfailure_delay_max = 3.0\n")
    text = text.replace("max_connections_per_ip = 200", "max_connections_per_ip = 4")
    return text + '[log]\nformat = "json"\n'


def records(d, start=0):
    out = []
    for line in d.log()[start:].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("state-workers"), config(2), name="state-workers")
    for user in USERS:
        d.add_user(user, PASSWORD)
    d.start()
    try:
        assert wait_for(lambda: sum(r["event"] == "worker.ready" for r in records(d)) == 2,
                        timeout=30)
        yield d
    finally:
        d.stop()


class Client:
    """A line-at-a-time POP3 client over implicit TLS from a chosen address."""

    def __init__(self, d, source):
        ctx = ssl.create_default_context(cafile=d.ca_file)
        ctx.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", d.pop3s_port), timeout=15,
                                       source_address=(source, 0))
        self.sock = ctx.wrap_socket(raw)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reader.readline()

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reader.readline()

    def close(self):
        """Close for real: the socket stays open while its file object is."""
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass


def worker_of(d, event, user, start):
    found = [r.get("worker") for r in records(d, start)
             if r["event"] == event and r["fields"].get("user") == user]
    return found[-1] if found else None


def hold_on_both_workers(d, base, tries=25):
    """
    Four logged-in sessions from one address, on both workers.

    @return: the address and [(client, worker)].
    """
    for n in range(tries):
        source = f"127.0.{base}.{n + 1}"    # a fresh address: nothing left counted
        start = len(d.log())
        held = []
        for user in USERS:
            c = Client(d, source)
            assert c.greeting.startswith(b"+OK"), c.greeting
            c.cmd(f"USER {user}")
            assert c.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
            held.append(c)
        assert wait_for(lambda: all(worker_of(d, "auth.success", u, start) is not None
                                    for u in USERS))
        workers = [worker_of(d, "auth.success", u, start) for u in USERS]
        if set(workers) == {0, 1}:
            return source, list(zip(held, workers))
        for c in held:
            c.cmd("QUIT")
            c.close()
    pytest.fail("the kernel gave every session to one worker, again and again")


def test_per_address_limit_holds_across_workers(two):
    source, held = hold_on_both_workers(two, 61)
    try:
        start = len(two.log())
        own = {w: sum(1 for _, h in held if h == w) for w in (0, 1)}
        # whichever worker takes it, the 5th is refused: neither holds 4 itself.
        # The kernel picks the worker; try until both have answered (a loaded
        # machine may favour one for a while), every attempt must be refused.
        refused_by = set()
        for _ in range(60):
            c = Client(two, source)
            assert c.greeting.startswith(TOO_MANY), c.greeting
            c.close()
            assert wait_for(lambda: any(
                r["event"] == "access.limit" and r["fields"].get("ip") == source
                for r in records(two, start)), timeout=5)
            refused_by = {r.get("worker") for r in records(two, start)
                          if r["event"] == "access.limit" and r["fields"].get("ip") == source}
            if refused_by == {0, 1}:
                break
        # a worker that counted only its own sessions would have let it in
        assert refused_by and all(own[w] < 4 for w in refused_by), (refused_by, own)
        # another address is not counted with it
        other = Client(two, "127.0.62.1")
        assert other.greeting.startswith(b"+OK")
        other.close()
        # a slot freed on one worker is usable at once, on either
        session, _ = held.pop()
        session.cmd("QUIT")
        session.close()
        again = []

        def accepted():
            c = Client(two, source)
            (again if c.greeting.startswith(b"+OK") else []).append(c)
            if not again:
                c.close()
            return bool(again)

        assert wait_for(accepted, timeout=5)
        again[0].close()
    finally:
        for c, _ in held:
            c.close()


def test_penalty_grown_on_one_worker_delays_the_other(two):
    """
    Failures from one address on sessions spread over both workers: the first
    failure on the second worker waits out the penalty the first worker's
    failures grew (a worker counting alone would answer it at once).
    """
    for attempt in range(12):
        source = f"127.0.70.{attempt + 1}"
        start = len(two.log())
        sessions = [Client(two, source) for _ in range(4)]
        timings = []
        for n, c in enumerate(sessions):
            user = f"nobody{attempt}x{n}"
            assert c.cmd(f"USER {user}").startswith(b"+OK")
            began = time.monotonic()
            assert c.cmd("PASS wrong-password").startswith(b"-ERR")
            timings.append((user, time.monotonic() - began))
        for c in sessions:
            c.close()
        assert wait_for(lambda: all(worker_of(two, "auth.failure", u, start) is not None
                                    for u, _ in timings))
        workers = [worker_of(two, "auth.failure", u, start) for u, _ in timings]
        assert timings[0][1] < BASE_DELAY * 0.6          # no failure on record: no wait
        first_elsewhere = next((i for i, w in enumerate(workers) if w != workers[0]), None)
        if first_elsewhere is None:
            continue                                    # all on one worker: another address
        elapsed = timings[first_elsewhere][1]
        assert elapsed >= BASE_DELAY * 0.6, (workers, timings)
        return
    pytest.fail("the kernel gave every session to one worker, again and again")


def test_a_killed_workers_slots_come_back_at_once(two):
    source, held = hold_on_both_workers(two, 63)
    try:
        victim_index = held[0][1]
        start = len(two.log())
        pids = {r["fields"].get("pid") for r in records(two) if r["event"] == "worker.ready"
                and r["fields"].get("worker") == victim_index}
        victim = [p for p in children(two.proc.pid) if p in pids][0]
        lost = sum(1 for _, w in held if w == victim_index)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: any(r["event"] == "worker.died" for r in records(two, start)))
        # its sessions' slots are free now, long before any lease TTL
        fresh = []
        deadline = time.monotonic() + 5
        while len(fresh) < lost and time.monotonic() < deadline:
            c = Client(two, source)
            if c.greeting.startswith(b"+OK"):
                fresh.append(c)
            else:
                c.close()
                time.sleep(0.1)
        assert len(fresh) == lost
        c = Client(two, source)                          # and the limit still holds
        assert c.greeting.startswith(TOO_MANY), c.greeting
        c.close()
        for c in fresh:
            c.close()
    finally:
        for c, _ in held:
            c.close()
    assert wait_for(lambda: sum(r["event"] == "worker.ready" for r in records(two)) >= 3,
                    timeout=30)


@pytest.mark.parametrize("workers, expected", [
    (2, "state: supervisor (shared by the supervisor's workers)"),
    (1, "state: memory (this process only)"),
])
def test_check_config_names_the_store(tmp_path, workers, expected):
    d = Daemon(tmp_path, config(workers), name=f"check-{workers}")
    out = d.cli("check-config", check=False).stdout.decode()
    assert expected in out
