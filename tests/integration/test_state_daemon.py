"""
The daemon with C{[state] backend = "redis"} against a real redis-server:
its slots, penalty and cache live in Redis; check-config names the store;
a paused Redis (SIGSTOP) is answered per C{on_outage}, then Redis is used
again.
"""

from __future__ import annotations

import poplib
import time

import pytest

from tests.integration.clients import pop3
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG, Daemon

STATE = """[state]
backend = "redis"
url = "{url}"
timeout = 0.5
on_outage = "{on_outage}"
lease_ttl = 6
"""


@pytest.fixture
def make_daemon(redis, tmp_path):
    made = []

    def make(on_outage="local"):
        config = DEFAULT_CONFIG + STATE.format(url=redis.url, on_outage=on_outage)
        daemon = Daemon(tmp_path / f"d{len(made)}", config)
        daemon.add_user("alice", ALICE_PASSWORD)
        made.append(daemon.start())
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
        log = daemon.log()
        assert "Traceback" not in log and "Unhandled error" not in log, log[-3000:]


def keys(redis, kind):
    reply = redis.command("KEYS", f"securepop:{kind}:*")
    return [line for line in reply.split(b"\r\n") if line.startswith(b"securepop:")]


def test_slots_penalty_and_cache_live_in_redis(make_daemon, redis):
    daemon = make_daemon()
    assert b"state: redis (every worker and node sharing it) at redis://127.0.0.1:" \
        in daemon.cli("check-config").stdout
    client = pop3(daemon, user="alice", password=ALICE_PASSWORD)
    slots = keys(redis, "slot")
    assert len(slots) >= 2       # total and this address (and the user)
    ip_slot = next(k for k in slots if k.startswith(b"securepop:slot:ip:"))
    assert redis.command("ZCARD", ip_slot).startswith(b":1\r\n")
    assert keys(redis, "cache")  # the shared level of the auth cache
    client.quit()
    time.sleep(0.3)
    assert redis.command("ZCARD", ip_slot).startswith(b":0\r\n")
    bad = pop3(daemon)
    bad.user("alice")
    with pytest.raises(poplib.error_proto):
        bad.pass_("wrong password")
    bad.quit()
    fail = keys(redis, "fail")
    assert fail and redis.command("HGET", fail[0], "f").endswith(b"1\r\n")


def test_paused_redis_local_keeps_logins_going(make_daemon, redis):
    daemon = make_daemon("local")
    pop3(daemon, user="alice", password=ALICE_PASSWORD).quit()
    redis.pause()
    try:
        started = time.monotonic()
        pop3(daemon, user="alice", password=ALICE_PASSWORD).quit()
        assert time.monotonic() - started < 5
        assert daemon.wait_log("state.outage")
    finally:
        redis.resume()
    assert daemon.wait_log("state.recovered", timeout=15)
    assert daemon.log().count("state.outage") == 1
    client = pop3(daemon, user="alice", password=ALICE_PASSWORD)
    assert keys(redis, "slot")   # Redis used again
    client.quit()


def test_paused_redis_refuse_answers_sys_temp(make_daemon, redis):
    daemon = make_daemon("refuse")
    pop3(daemon, user="alice", password=ALICE_PASSWORD).quit()
    redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(poplib.error_proto) as e:
            pop3(daemon, user="alice", password=ALICE_PASSWORD)
        assert b"[SYS/TEMP]" in e.value.args[0]
        assert time.monotonic() - started < 5
    finally:
        redis.resume()
    assert daemon.wait_log("state.recovered", timeout=15)
    pop3(daemon, user="alice", password=ALICE_PASSWORD).quit()
