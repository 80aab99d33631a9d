"""
Two securepop nodes on one shared data directory and one redis-server act
as one server: the per-address limit holds across both, a slot freed on one
is usable on the other at once, the penalty grown on one delays the other,
a user logged in on one is IN-USE on the other, and the slots of a node
killed with SIGKILL come back within the lease TTL.
"""

from __future__ import annotations

import poplib
import socket
import time

import pytest

from tests.integration.clients import pop3
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG, Daemon, wait_for

LEASE_TTL = 3

#: Lua: how many slots all slot keys hold (a released slot is removed).
COUNT_SLOTS = ("local n = 0 for _, k in ipairs(redis.call('KEYS', '*slot:*')) do "
               "n = n + redis.call('ZCARD', k) end return n")


def config(shared, url):
    text = DEFAULT_CONFIG.replace('data_dir = "{data_dir}"', f'data_dir = "{shared}"')
    text = text.replace("max_connections_per_ip = 200", "max_connections_per_ip = 4")
    return text + (f'[state]\nbackend = "redis"\nurl = "{url}"\ntimeout = 0.5\n'
                   f'lease_ttl = {LEASE_TTL}\n')


@pytest.fixture
def nodes(redis, tmp_path):
    shared = tmp_path / "shared-data"
    a = Daemon(tmp_path, config(shared, redis.url), name="node-a")
    b = Daemon(tmp_path, config(shared, redis.url), name="node-b")
    a.data_dir = b.data_dir = shared         # users, certificate, Maildirs, server secret
    a.add_user("alice", ALICE_PASSWORD)
    a.add_user("bob", ALICE_PASSWORD)
    try:
        a.start()
        b.start()
        # Each start probes its ports (connect, close): wait until Redis has
        # given those probes' slots back, so every test starts at zero.
        assert wait_for(lambda: slots_held(redis) == 0, timeout=5), slots_held(redis)
        yield a, b
    finally:
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
    for node in (a, b):
        node.stop()
        log = node.log()
        assert "state.outage" not in log and "Traceback" not in log, log[-3000:]


def slots_held(redis):
    return int(redis.command("EVAL", COUNT_SLOTS, 0).strip().lstrip(b":"))


def greeted(node):
    """A raw connection that got its greeting line: @return: (socket, line)."""
    s = socket.create_connection(("127.0.0.1", node.pop3_port), timeout=10)
    line = s.makefile("rb").readline()
    return s, line


def held(node, count):
    out = []
    for _ in range(count):
        s, line = greeted(node)
        assert line.startswith(b"+OK"), line
        out.append(s)
    return out


def refused(node):
    s, line = greeted(node)
    s.close()
    return line.startswith(b"-ERR")


def test_per_address_limit_holds_across_nodes(nodes):
    a, b = nodes
    on_a, on_b = held(a, 2), held(b, 2)
    assert refused(a) and refused(b)        # the fifth, on either node
    on_a.pop().close()                       # a slot freed on A...
    time.sleep(0.3)
    on_b += held(b, 1)                       # ...is usable on B at once
    assert refused(b) and refused(a)
    for s in on_a + on_b:
        s.close()


def timed_failure(node):
    client = pop3(node)
    client.user("alice")
    started = time.monotonic()
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong password")
    elapsed = time.monotonic() - started
    client.quit()
    return elapsed


def test_penalty_grown_on_one_node_delays_the_other(nodes):
    a, b = nodes
    assert timed_failure(b) < 0.5            # clean: no wait before the first check
    for _ in range(3):
        timed_failure(a)
    assert timed_failure(b) >= 0.7           # 0.2 s doubling to 1.0 s, grown on A


def test_user_logged_in_on_one_node_is_in_use_on_the_other(nodes):
    a, b = nodes
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    try:
        second = pop3(b)
        second.user("alice")
        with pytest.raises(poplib.error_proto) as e:
            second.pass_(ALICE_PASSWORD)
        assert b"[IN-USE]" in e.value.args[0]
        second.quit()
        pop3(b, user="bob", password=ALICE_PASSWORD).quit()   # another user is fine
    finally:
        client.quit()
    pop3(b, user="alice", password=ALICE_PASSWORD).quit()


def test_slots_of_a_killed_node_come_back_within_the_lease_ttl(nodes):
    a, b = nodes
    on_a, on_b = held(a, 2), held(b, 2)
    a.kill9()
    for s in on_a:
        s.close()
    assert refused(b)                        # still counted: nobody gave them back
    started = time.monotonic()
    while refused(b):
        assert time.monotonic() - started < LEASE_TTL + 2
        time.sleep(0.25)
    print(f"\nslots of the killed node back after {time.monotonic() - started:.1f} s "
          f"(lease_ttl {LEASE_TTL} s)")
    for s in on_b:
        s.close()
