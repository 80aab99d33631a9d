"""
C{[mail] lock = "redis"}: two securepop nodes on one shared data directory
and one redis-server exclude each other by the maildrop lease.  A user
logged in on A is IN-USE on B (the heartbeat keeps the lease past its TTL)
until A's QUIT gives the lease back; the lease of a node killed with
SIGKILL holds for the lease TTL (the flock of the dead process is free at
once: the lease is what still excludes) and then expires; a QUIT's
deletions on A are what B serves, none lost or duplicated.
"""

from __future__ import annotations

import poplib
import socket
import time

import pytest

from tests.integration.clients import pop3
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import Daemon
from tests.integration.test_state_nodes import config as state_config

LEASE_TTL = 3
DROP_KEY = "securepop:drop:" + b"alice".hex()


def config(shared, url):
    text = state_config(shared, url)
    assert '[mail]' not in text
    return text + '[mail]\nlock = "redis"\n'


@pytest.fixture
def nodes(redis, tmp_path):
    shared = tmp_path / "shared-data"
    a = Daemon(tmp_path, config(shared, redis.url), name="node-a")
    b = Daemon(tmp_path, config(shared, redis.url), name="node-b")
    a.data_dir = b.data_dir = shared
    a.add_user("alice", ALICE_PASSWORD)
    a.start()
    b.start()
    yield a, b, redis
    for node in (a, b):
        node.stop()
        log = node.log()
        assert "state.outage" not in log and "Traceback" not in log, log[-3000:]


def in_use(node):
    """@return: True when alice's login on C{node} is refused with [IN-USE]."""
    client = pop3(node)
    client.user("alice")
    try:
        client.pass_(ALICE_PASSWORD)
    except poplib.error_proto as e:
        client.quit()
        assert b"[IN-USE]" in e.args[0], e.args[0]
        return True
    client.quit()
    return False


def drop(client):
    """Hang up without QUIT (the server may have closed it already)."""
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    client.file.close()
    client.sock.close()


def lease_holder(redis):
    reply = redis.command("GET", DROP_KEY)
    return None if reply.startswith(b"$-1") else reply.split(b"\r\n")[1]


def test_logged_in_on_a_is_in_use_on_b_and_free_at_once_after_quit(nodes):
    a, b, redis = nodes
    assert lease_holder(redis) is None
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    try:
        holder = lease_holder(redis)
        assert holder is not None                     # the lease lives in Redis
        assert in_use(b)
        assert in_use(a)                              # a second session on A too
        time.sleep(LEASE_TTL + 1)                     # the heartbeat keeps it
        assert lease_holder(redis) == holder
        assert in_use(b)
        client.noop()
    finally:
        client.quit()
    assert lease_holder(redis) is None               # given back at QUIT
    assert not in_use(b)                              # at once, no TTL to wait


def test_a_node_killed_holding_the_lease_frees_it_within_the_ttl(nodes):
    a, b, redis = nodes
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    a.kill9()
    drop(client)
    killed = time.monotonic()
    # The negative: the dead process's flock is free, yet the lease holds.
    assert in_use(b)
    while in_use(b):
        assert time.monotonic() - killed < LEASE_TTL + 2
        time.sleep(0.25)
    waited = time.monotonic() - killed
    print(f"\nmaildrop lease of the killed node gone after {waited:.1f} s "
          f"(lease_ttl {LEASE_TTL} s)")
    assert waited <= LEASE_TTL + 2


def test_deletions_on_a_are_what_b_serves(nodes):
    a, b, _ = nodes
    for i in range(5):
        a.deliver("alice", b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    uidls = [line.split()[1] for line in client.uidl()[1]]
    assert len(uidls) == 5
    client.dele(1)
    client.dele(3)
    # B cannot open the maildrop while A's session (and its deletions) lasts.
    assert in_use(b)
    client.quit()
    other = pop3(b, user="alice", password=ALICE_PASSWORD)
    served = [line.split()[1] for line in other.uidl()[1]]
    other.quit()
    assert served == [uidls[1], uidls[3], uidls[4]]  # none lost, none duplicated
    assert len(a.messages("alice")) == 3


def test_a_dropped_connection_and_a_stopped_node_give_the_lease_back_at_once(nodes):
    a, b, redis = nodes
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    drop(client)                                      # gone without QUIT
    started = time.monotonic()
    while lease_holder(redis) is not None:
        assert time.monotonic() - started < 1.0       # well before the TTL
        time.sleep(0.05)
    assert not in_use(b)
    client = pop3(a, user="alice", password=ALICE_PASSWORD)
    assert in_use(b)
    a.stop()                                          # SIGTERM with the session open
    drop(client)
    assert lease_holder(redis) is None
    assert not in_use(b)
