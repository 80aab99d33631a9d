"""
ServerContext: a reload hands the new collaborators over while the state
store stays; connection slots, the penalty, the lockout and a store outage
as a session sees them.
"""

from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from securepop.access.limits import LimitRule
from securepop.auth.gate import PenaltyGate
from securepop.auth.penalty import LockoutRule, PenaltyRule
from securepop.errors import StateUnavailable
from securepop.protocol.context import ServerContext
from securepop.state.memory import MemoryStateStore
from tests.unit.protocol_harness import (  # noqa: F401 (fixtures)
    PASSWORD, Harness, identity, login,
)


def context(clock, name, lockout=True, base=2.0, gate=16, state=None, **limits):
    state = state if state is not None else MemoryStateStore(clock)
    penalty = PenaltyRule(base=base, maximum=15.0)
    return ServerContext(
        SimpleNamespace(name=name), clock, portal=f"portal-{name}", source=f"source-{name}",
        mechanisms={"PLAIN": name}, tls=f"tls-{name}", policy=f"policy-{name}",
        limits=LimitRule(**limits), penalty=penalty,
        gate=PenaltyGate(clock, state, penalty, max_per_address=gate),
        lockout=LockoutRule(3, 60.0) if lockout else None,
        metrics=f"metrics-{name}", protocol_log=f"log-{name}",
        ntlm_delegate=lambda: f"delegate-{name}", verifications=f"queue-{name}", state=state)


def result(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_replace_from_takes_the_new_collaborators():
    clock = Clock()
    old, fresh = context(clock, "old"), context(clock, "new")
    old.replace_from(fresh)
    assert (old.settings, old.portal, old.source, old.mechanisms, old.tls, old.policy) == (
        fresh.settings, "portal-new", "source-new", {"PLAIN": "new"}, "tls-new", "policy-new")
    assert old.ntlm_delegate() == "delegate-new"
    # What belongs to the process, not to the configuration, is not replaced.
    assert (old.metrics, old._protocol_log, old.verifications) == (
        "metrics-old", "log-old", "queue-old")


def test_replace_from_keeps_the_store_and_the_gate_with_the_new_rules():
    clock = Clock()
    old = context(clock, "old", max_connections=10, max_per_ip=1, max_per_user=1)
    store, gate = old.state, old.gate
    lease = result(old.acquire_connection("192.0.2.1"))
    result(old.penalty_failure("192.0.2.9", "alice"))
    old.sessions.add("session")
    fresh = context(clock, "new", base=4.0, gate=8, state=store, max_connections=20,
                    max_per_ip=2, max_per_user=2)
    fresh.lockout = LockoutRule(5, 120.0)
    old.replace_from(fresh)
    assert old.state is store and old.gate is gate and old.sessions == {"session"}
    assert gate.penalty is fresh.penalty and gate.max_per_address == 8
    assert old.lockout.threshold == 5 and old.limits.maxPerIP == 2
    assert result(store.count("ip", "192.0.2.1")) == 1      # the open connection counts
    second = result(old.acquire_connection("192.0.2.1"))    # the new limit: 2 per address
    third = result(old.acquire_connection("192.0.2.1"))
    assert third.check(Exception) and third.value.limit == "max_connections_per_ip"
    state = result(store.login_state(old.penalty.key("192.0.2.9"), "alice"))
    assert state.failures == 1 and state.user_failures == 1  # the history stays
    lease.release()
    second.release()


def test_replace_from_switches_the_lockout_on_and_off():
    clock = Clock()
    old = context(clock, "old", lockout=False)
    on = context(clock, "on")
    old.replace_from(on)
    assert old.lockout is on.lockout
    old.replace_from(context(clock, "off", lockout=False))
    assert old.lockout is None


def test_connection_and_user_slots_share_one_lease():
    clock = Clock()
    ctx = context(clock, "x", max_connections=2, max_per_ip=2, max_per_user=1)
    one, two = (result(ctx.acquire_connection("2001:db8::1")),
                result(ctx.acquire_connection("2001:db8::2")))     # one /64
    refused = result(ctx.acquire_connection("192.0.2.1"))
    assert refused.value.limit == "max_connections"
    assert result(ctx.acquire_user(one, "alice")) is None
    assert result(ctx.acquire_user(two, "alice")).value.limit == "max_connections_per_user"
    assert result(ctx.state.count("ip", "2001:db8::/64")) == 2
    one.release()
    one.release()                                   # idempotent
    assert result(ctx.state.count("user", "alice")) == 0
    assert result(ctx.state.count("total", "*")) == 1
    two.release()
    assert result(ctx.state.count("ip", "2001:db8::/64")) == 0


def test_a_slot_granted_after_the_session_ended_is_given_back():
    clock = Clock()
    store = MemoryStateStore(clock)
    pending = defer.Deferred()
    real_acquire = store.acquire
    ctx = context(clock, "x", state=store, max_per_user=1)
    lease = result(ctx.acquire_connection("192.0.2.1"))
    store.acquire = lambda lease_id, counts: pending
    d = ctx.acquire_user(lease, "alice")
    lease.release()                                 # the client hung up meanwhile
    real_acquire(lease.id, [("user", "alice", 1)])  # the store granted it late
    pending.callback(None)
    assert result(d) is None
    assert result(store.count("user", "alice")) == 0


def test_success_with_no_failure_on_record_writes_nothing():
    clock = Clock()
    ctx = context(clock, "x")
    writes = []
    ctx.state.record_success = lambda *a: writes.append(a) or defer.succeed(None)
    ticket = result(ctx.enter_gate("192.0.2.1", "alice"))
    result(ctx.penalty_success("192.0.2.1", ticket))
    ticket.release()
    assert writes == []
    result(ctx.penalty_failure("192.0.2.1", "alice"))
    clock.advance(2)
    ticket = result(ctx.enter_gate("192.0.2.1", "alice"))
    assert ticket.state.failures == 1
    result(ctx.penalty_success("192.0.2.1", ticket))
    assert writes == [("192.0.2.1", None)]          # the lockout count stays


def test_lockout_read_at_the_gate_or_at_the_login():
    clock = Clock()
    ctx = context(clock, "x")
    for _ in range(3):
        result(ctx.penalty_failure(f"192.0.2.{_}", "alice"))
    ticket = SimpleNamespace(username="alice", state=result(
        ctx.state.login_state("198.51.100.1", "alice")))
    with pytest.raises(Exception, match="locked-out"):
        ctx.check_policy("alice", ticket)
    ctx.check_policy("bob", ticket)                 # another user's count is not read
    ctx.check_policy("alice", None)                 # unknown here: the login reads it
    refused = result(ctx.login(SimpleNamespace(username="alice"), "198.51.100.1"))
    assert refused.getErrorMessage() == "locked-out"
    clock.advance(61)                               # the window has passed
    ctx.check_policy("alice", SimpleNamespace(username="alice", state=result(
        ctx.state.login_state("198.51.100.1", "alice"))))


class DownStore(MemoryStateStore):
    """A store that no longer answers: every call fails with StateUnavailable."""

    def __init__(self, clock):
        super().__init__(clock)
        self.down = False

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("acquire", "login_state", "record_failure", "record_success",
                    "claim_turn", "cache_get") and super().__getattribute__("down"):
            return lambda *a: defer.fail(StateUnavailable("no answer in 0.5 s"))
        return attr


def down_harness(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    store = DownStore(h.clock)
    h.ctx.state = h.state = h.ctx.gate.store = store
    h.ctx.limits = LimitRule(10, 5, 2)
    return h, store


def test_store_outage_at_admission_is_one_sys_temp_line(tmp_path, identity):
    h, store = down_harness(tmp_path, identity)
    store.down = True
    logged = []
    h.ctx.state_unavailable = lambda failure, **fields: logged.append(fields)
    h.connect()
    out = h.transport.value()
    assert out == b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
    assert h.transport.disconnecting and logged == [{"ip": h.session.peer}]


def test_store_outage_at_login_answers_sys_temp_and_keeps_the_session(tmp_path, identity):
    h, store = down_harness(tmp_path, identity)
    h.connect()
    h.lines()
    store.down = True
    assert h.send(b"USER alice\r\n") == [b"+OK Send PASS"]
    assert h.send(b"PASS " + PASSWORD + b"\r\n") == [
        b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later"]
    assert h.source.verified == []                  # no check without the penalty's word
    store.down = False
    login(h)


def test_state_unavailable_is_logged_once_a_minute(monkeypatch):
    from twisted.python.failure import Failure

    from securepop import events

    clock = Clock()
    ctx = context(clock, "x")
    emitted = []
    monkeypatch.setattr(events, "emit", lambda name, *a, **kw: emitted.append((name, kw)))
    failure = Failure(StateUnavailable("no answer"))
    for _ in range(5):
        ctx.state_unavailable(failure, ip="192.0.2.1")
    assert len(emitted) == 1
    clock.advance(61)
    ctx.state_unavailable(failure, ip="192.0.2.1")
    assert [name for name, _ in emitted] == ["state.unavailable"] * 2
    assert emitted[0][1] == {"store": "memory", "error": "no answer", "ip": "192.0.2.1"}


def test_use_protocol_log_replaces_the_writer():
    written = []
    log = SimpleNamespace(write=lambda *a: written.append(a))
    ctx = context(Clock(), "x")
    ctx.use_protocol_log(log)
    ctx.protocol_log("session", "C", b"NOOP")
    assert written == [("session", "C", b"NOOP")]
    ctx.use_protocol_log(None)
    ctx.protocol_log("session", "C", b"NOOP")
    assert len(written) == 1


class CountingStore(MemoryStateStore):
    """Counts the calls a session makes: each is one round trip on a networked store."""

    def __init__(self, clock):
        super().__init__(clock)
        self.calls = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("acquire", "release", "count", "login_state", "record_failure",
                    "record_success", "claim_turn", "release_turn", "cache_get",
                    "cache_put", "cache_forget"):
            super().__getattribute__("calls").append(name)
        return attr


def test_round_trips_of_a_session(tmp_path, identity):
    """Connect, log in with no failure on record, quit: what reaches the store."""
    h = Harness(tmp_path, identity, listener_tls="implicit")
    store = CountingStore(h.clock)
    h.ctx.state = h.state = h.ctx.gate.store = store
    h.ctx.limits = LimitRule(10, 5, 2)
    h.connect()
    assert store.calls == ["acquire"]                    # the connection's slots
    h.lines()
    login(h)
    assert store.calls[1:] == ["login_state", "acquire"]  # one read, the user's slot
    h.send(b"QUIT\r\n")
    h.session.connectionLost(None)
    assert store.calls[3:] == ["release"]                # both slots, one call
    assert result(store.count("total", "*")) == 0


def test_round_trips_of_a_failed_then_good_login(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    store = CountingStore(h.clock)
    h.ctx.state = h.state = h.ctx.gate.store = store
    h.connect()
    h.lines()
    h.send(b"USER alice\r\n")
    assert h.send(b"PASS wrong\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert store.calls == ["login_state", "record_failure"]
    del store.calls[:]
    h.send(b"USER alice\r\n")
    h.send(b"PASS " + PASSWORD + b"\r\n")
    assert h.lines() == []                               # the penalty first
    h.clock.advance(2)
    assert h.lines()[0].startswith(b"+OK Logged in")
    # the entry read; when its penalty has passed, the turn and a read under it;
    # the success clears the address and gives the turn back
    assert store.calls == ["login_state", "claim_turn", "login_state", "record_success",
                           "release_turn"]


def test_a_locked_out_user_is_refused_before_the_check_with_one_read(tmp_path, identity):
    h = Harness(tmp_path, identity, listener_tls="implicit", penalty=False)
    h.ctx.lockout = LockoutRule(2, 600.0)
    store = CountingStore(h.clock)
    h.ctx.state = h.state = store
    for _ in range(2):
        h.connect()
        h.lines()
        h.send(b"USER alice\r\n")
        assert h.send(b"PASS wrong\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert result(store.login_state("192.0.2.9", "alice")).user_failures == 2
    h.connect()
    h.lines()
    verified = len(h.source.verified)
    del store.calls[:]
    h.send(b"USER alice\r\n")
    assert h.send(b"PASS " + PASSWORD + b"\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert len(h.source.verified) == verified          # the password was never checked
    assert store.calls[0] == "login_state"             # no gate here: the login read it
    h.connect()
    h.lines()
    h.send(b"USER bob\r\n")
    assert h.send(b"PASS x\r\n") == [b"-ERR [AUTH] Authentication failed"]
    assert len(h.source.verified) == verified + 1      # another user is checked


class Kerberos:
    """A Kerberos acceptor double: hands out one exchange per peer."""

    def newExchange(self, peer):
        return ("exchange", peer)


class Source:
    def capabilities(self):
        return frozenset({"plaintext"})


def test_gssapi_acceptor_and_kinds_follow_the_keytab():
    from securepop.interfaces import KERBEROS

    clock = Clock()
    with_keytab = ServerContext(SimpleNamespace(), clock, None, Source(), {}, gssapi=Kerberos())
    without = ServerContext(SimpleNamespace(), clock, None, Source(), {})
    assert with_keytab.kinds() == {"plaintext", KERBEROS}
    assert without.kinds() == {"plaintext"}
    assert with_keytab.gssapi_acceptor("192.0.2.7") == ("exchange", "192.0.2.7")
    assert without.gssapi_acceptor("192.0.2.7") is None
    without.replace_from(with_keytab)           # a reload that adds a keytab
    assert without.gssapi_acceptor("192.0.2.8") == ("exchange", "192.0.2.8")
