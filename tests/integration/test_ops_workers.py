"""
C{workers = 2}: both workers serve, a killed worker is replaced, and a short
bounded load measures login throughput with 1 and 2 workers (reported, not
asserted: timings on a shared 2-core machine are no test).
"""

import json
import os
import signal
import threading
import time

import pytest

from tests.integration.daemon import DEFAULT_CONFIG, Daemon
from tests.integration.daemon import wait_for as daemon_wait_for
from tests.integration.ops_client import POP3

PASSWORD = "W0rkers-pw"


def config(workers):
    return DEFAULT_CONFIG.replace("[server]\n", f'[server]\nworkers = "{workers}"\n') + \
        '[log]\nformat = "json"\n'


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def records(d):
    out = []
    for line in d.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for(predicate, timeout=30):
    return daemon_wait_for(predicate, timeout, interval=0.1)


USERS = ["alice", "bob", "carol", "dave"]


def add_users(d):
    for user in USERS:
        d.add_user(user, PASSWORD)


def login_once(port, user="alice"):
    c = POP3(port)
    c.login(user, PASSWORD)
    assert c.quit().startswith(b"+OK")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("workers"), config(2), name="workers")
    add_users(d)
    d.start()
    try:
        assert wait_for(lambda: len([r for r in records(d) if r["event"] == "worker.ready"]) == 2)
        yield d
    finally:  # also when the workers never got ready: no daemon outlives the suite
        d.stop()


def test_two_workers_serve(two):
    assert len(children(two.proc.pid)) == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        threads = [threading.Thread(target=login_once, args=(two.pop3s_port, user))
                   for user in USERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = {r.get("worker") for r in records(two) if r["event"] == "auth.success"}
        if served >= {0, 1}:
            break
    assert served >= {0, 1}, served


def test_user_lock_holds_across_workers(two):
    first = POP3(two.pop3s_port)
    first.login("carol", PASSWORD)
    try:
        for _ in range(4):                  # whichever worker takes it
            c = POP3(two.pop3s_port)
            c.cmd("USER carol")
            assert c.cmd("PASS " + PASSWORD).startswith(b"-ERR [IN-USE]")
            c.close()
    finally:
        first.quit()


def test_killed_worker_is_replaced(two):
    before = children(two.proc.pid)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: any(r["event"] == "worker.died" and
                                r["fields"].get("pid") == victim for r in records(two)))
    assert wait_for(lambda: len(children(two.proc.pid)) == 2 and
                    victim not in children(two.proc.pid))
    assert wait_for(lambda: len([r for r in records(two) if r["event"] == "worker.ready"]) >= 3)
    for _ in range(4):
        login_once(two.pop3s_port)            # service continues


def test_sighup_reaches_every_worker(two):
    mark = len(two.log())
    two.sighup()
    assert wait_for(lambda: two.log()[mark:].count('"event":"config.reloaded"') == 2)


def throughput(d, logins=24, concurrency=4, limit=60.0):
    done = []
    lock = threading.Lock()
    stop_at = time.monotonic() + limit

    def worker(user):
        while time.monotonic() < stop_at:
            with lock:
                if len(done) >= logins:
                    return
                done.append(None)
            login_once(d.pop3s_port, user)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(user,)) for user in USERS[:concurrency]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done) / (time.monotonic() - started)


def test_login_throughput_one_vs_two_workers(tmp_path, two):
    one = Daemon(tmp_path, config(1), name="one-worker")
    add_users(one)
    one.start()
    try:
        login_once(one.pop3s_port)
        rate1 = throughput(one)
    finally:
        one.stop()
    rate2 = throughput(two)
    print(f"\nlogin throughput: 1 worker {rate1:.1f}/s, 2 workers {rate2:.1f}/s")
    assert rate1 > 0 and rate2 > 0
