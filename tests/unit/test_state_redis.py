"""RedisStateStore without a server: keys, bounded calls, NOSCRIPT, replies, password file."""

import pytest
import txredisapi
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from securepop import config
from securepop.access.limits import LimitExceeded
from securepop.errors import ConfigError, StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState
from securepop.state import redis as redis_module
from securepop.state.redis import RedisStateStore, from_settings, hex_key, read_password_file
from securepop.state.scripts import LOADED


class Connection:
    """Answers commands from a script of replies; None: never answers."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = []
        self.connected = 1
        self.transport = StringTransport()
        self.aborted = False
        self.transport.abortConnection = lambda: setattr(self, "aborted", True)

    def execute_command(self, *command):
        self.sent.append(command)
        reply = self.replies.pop(0)
        if reply is None:
            return defer.Deferred()
        if isinstance(reply, Exception):
            return defer.fail(reply)
        return defer.succeed(reply)


class Factory:
    def __init__(self, conn):
        self.pool = [conn] if conn else []


def store(replies=(), **options):
    clock = task.Clock()
    s = RedisStateStore(clock, **options)
    conn = Connection(replies)
    s._link._factory = Factory(conn)
    return s, conn, clock


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_interface_and_defaults():
    s = RedisStateStore(task.Clock())
    assert verifyObject(IStateStore, s)
    assert s.kind == "redis" and s.lease_ttl == 30.0 and s.timeout == 0.5
    with pytest.raises(ValueError):
        RedisStateStore(task.Clock(), "http://x")
    with pytest.raises(ValueError):
        RedisStateStore(task.Clock(), timeout=0)


def test_keys_are_hex_so_no_name_reaches_another_key():
    assert hex_key("a:b") == "613a62" and hex_key(b"\xff") == "ff"
    s, conn, _ = store([["0", "0", 0, ""]])
    result(s.login_state("192.0.2.7", "evil\r\n*1\r\n$8\r\nFLUSHALL"))
    command = conn.sent[0]
    assert command[:3] == ("EVALSHA", LOADED["login_state"][0], 2)
    assert all(k.startswith(("securepop:fail:", "securepop:user:")) for k in command[3:5])
    assert all(set(k.split(":")[-1]) <= set("0123456789abcdef") for k in command[3:5])


def test_not_started_fails_at_once():
    s = RedisStateStore(task.Clock())
    assert result(s.login_state("a", None)).check(StateUnavailable)


def test_no_connection_waits_for_one_within_the_timeout():
    s, conn, clock = store([b"v", b"w"], timeout=0.5)
    s._link._factory.pool = []                    # connecting (a start, a reconnection)
    late = s.cache_get(b"k")
    clock.advance(0.6)
    assert result(late).check(StateUnavailable) and s._link._waiters == []
    d = s.cache_get(b"k")
    clock.advance(0.3)
    assert not d.called
    s._link._factory.pool = [conn]                # the connection is up: the call goes
    s._link._connection_ready()
    assert result(d) == b"v"
    assert clock.getDelayedCalls() == [] and conn.sent == [("GET", "securepop:cache:6b")]
    # the time spent waiting counts: what is left of the timeout bounds the answer
    s._link._factory.pool = []
    conn.replies = [None]
    d = s.cache_get(b"k")
    clock.advance(0.4)
    s._link._factory.pool = [conn]
    s._link._connection_ready()
    clock.advance(0.11)
    assert result(d).check(StateUnavailable) and conn.aborted


def test_no_answer_within_the_timeout_fails_and_drops_the_connection():
    s, conn, clock = store([None], timeout=0.5)
    d = s.cache_get(b"k")
    clock.advance(0.49)
    assert not d.called and not conn.aborted
    clock.advance(0.02)
    assert result(d).check(StateUnavailable) and conn.aborted


def test_answer_in_time_cancels_the_timer():
    s, conn, clock = store([b"v"])
    assert result(s.cache_get(b"k")) == b"v"
    assert clock.getDelayedCalls() == [] and not conn.aborted


def test_server_errors_become_state_unavailable():
    s, conn, _ = store([txredisapi.ResponseError("OOM command not allowed")])
    assert result(s.cache_put(b"k", b"v", 5)).check(StateUnavailable)


def test_noscript_falls_back_to_eval():
    s, conn, _ = store([txredisapi.ResponseError("NOSCRIPT No matching script"), 1])
    assert result(s.claim_turn("192.0.2.7", "h", 5)) is True
    assert conn.sent[0][0] == "EVALSHA" and conn.sent[1][0] == "EVAL"
    assert conn.sent[1][1] == LOADED["claim"][1] and conn.sent[1][2:] == conn.sent[0][2:]
    assert s.round_trips == 2


def test_acquire_reports_the_first_full_counter():
    s, conn, _ = store([2, 0])
    failure = result(s.acquire("l1", [("total", "*", 10), ("ip", "192.0.2.7", 2)]))
    assert failure.check(LimitExceeded)
    assert (failure.value.limit, failure.value.key) == ("max_connections_per_ip", "192.0.2.7")
    assert s._leases == {}
    assert result(s.acquire("l1", [("user", "alice", 4)])) is None
    assert list(s._leases) == ["l1"]
    assert result(s.acquire("l2", [("planet", "x", 1)])).check(ValueError)


def test_heartbeat_redates_held_slots_and_maildrops_in_one_call():
    s, conn, clock = store([0, 1, 0, 0, 0], lease_ttl=3)
    result(s.acquire("l1", [("total", "*", 0), ("ip", "192.0.2.7", 0)]))
    assert result(s.acquire_maildrop("alice", "h1")) is True
    clock.advance(100)
    result(s.beat())
    beat = conn.sent[-1]
    assert beat[1] == LOADED["heartbeat"][0] and beat[2] == 3
    assert float(beat[6]) == pytest.approx(103.0) and beat[8] == 2
    assert beat[9:] == ("l1", "l1", "h1")
    # released: the next beat has nothing to send
    result(s.release("l1"))
    result(s.release_maildrop("alice", "h1"))
    sent = len(conn.sent)
    result(s.beat())
    assert len(conn.sent) == sent


def test_login_state_replies():
    s, _, _ = store([["3", "100.5", 2, "90.25:abcd"]])
    assert result(s.login_state("a", "u")) == LoginState(3, 100.5, 2, 90.25)


def test_password_file(tmp_path):
    path = tmp_path / "pw"
    path.write_text("s3cret\nignored\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        read_password_file(str(path))
    assert "state.password_file" in str(e.value) and "chmod 600" in str(e.value)
    path.chmod(0o600)
    assert read_password_file(str(path)) == "s3cret"
    with pytest.raises(ConfigError):
        read_password_file(str(tmp_path / "missing"))
    settings = config.parse(f'[state]\nbackend = "redis"\npassword_file = "{path}"\n'
                            'url = "redis://127.0.0.1:1/2"\nkey_prefix = "sp1:"\n')
    made = from_settings(settings, task.Clock())
    assert made._link._password == "s3cret" and made._link._db == 2 and made._prefix == "sp1:"


def test_heartbeat_of_many_leases_is_split_and_pipelined(monkeypatch):
    monkeypatch.setattr(redis_module, "BEAT_BATCH", 4)
    s, conn, _ = store([0, 0, 0, 1, None, None])
    for lease in ("l1", "l2", "l3"):
        result(s.acquire(lease, [("total", "*", 0), ("ip", "192.0.2.7", 0)]))
    assert result(s.acquire_maildrop("alice", "h1")) is True
    d = s.beat()
    beats = conn.sent[-2:]          # both sent before any answer came
    assert not d.called
    assert [b[2] for b in beats] == [4, 3]
    assert beats[0][9:] == (4, "l1", "l1", "l2", "l2")
    assert beats[1][8:] == (2, "l3", "l3", "h1")
    assert beats[1][3:6] == ("securepop:slot:total:2a", "securepop:slot:ip:3139322e302e322e37",
                             "securepop:drop:616c696365")


def test_a_timed_out_slot_request_is_fenced_until_it_would_expire():
    s, conn, clock = store([None, StateUnavailable("down"), 0, -1], lease_ttl=3, timeout=0.5)
    d = s.acquire("l1", [("ip", "192.0.2.7", 4)])
    clock.advance(0.5)
    assert result(d).check(StateUnavailable)
    acquire_fence = conn.sent[0][3 + 1]
    assert acquire_fence.startswith("securepop:fence:6c31:")
    clock.advance(0)                  # the fence goes out: it fails, and is tried again
    assert conn.sent[1][1] == LOADED["fence"][0] and conn.sent[1][3:6] == (
        "securepop:slot:ip:3139322e302e322e37", acquire_fence, "l1")
    clock.advance(1)
    assert conn.sent[2][1] == LOADED["fence"][0] and conn.sent[2][4] == acquire_fence
    clock.advance(5)
    assert len(conn.sent) == 3        # it held: no more
    # each attempt has its own fence; a fenced attempt answers as unavailable
    d = s.acquire("l1", [("ip", "192.0.2.7", 4)])
    assert conn.sent[3][4] != acquire_fence
    assert result(d).check(StateUnavailable)
