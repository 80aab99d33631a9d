"""OutageGuard: forwards, falls back per on_outage, logs once, probes and recovers."""

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from securepop.access.limits import LimitExceeded
from securepop.errors import StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState
from securepop.state.outage import OutageGuard
from tests.unit.state_doubles import LocalStore


class Remote(LocalStore):
    """A shared store that can go down: every call then fails as Redis would."""

    kind = "redis"

    def __init__(self):
        super().__init__()
        self.down = False

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in IStateStore.names() and callable(attr) and name != "stop" \
                and super().__getattribute__("down"):
            return lambda *a: defer.fail(StateUnavailable("redis: no answer within 0.5 s"))
        return attr


@pytest.fixture
def logged():
    seen = []

    def observe(event):
        if "securepop_event" in event:
            seen.append(event["securepop_event"])
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def make(on_outage="local"):
    clock = task.Clock()
    remote, local = Remote(), LocalStore()
    guard = OutageGuard(remote, local, on_outage, clock)
    guard.start()
    return guard, remote, local, clock


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_interface():
    guard, remote, _local, _clock = make()
    assert verifyObject(IStateStore, guard)
    assert guard.kind == "redis" and guard.lease_ttl == remote.lease_ttl
    with pytest.raises(ValueError):
        OutageGuard(remote, LocalStore(), "ignore", task.Clock())


def test_forwards_while_the_store_answers(logged):
    guard, remote, local, _clock = make()
    result(guard.record_failure("192.0.2.7", "alice", 60, 60))
    assert result(guard.login_state("192.0.2.7", "alice")) == LoginState(failures=1)
    assert result(guard.claim_turn("192.0.2.7", "h", 5)) is True
    assert local.calls == [] and not guard.outage and logged == []


def test_local_outage_answers_locally_logs_once_and_recovers(logged):
    guard, remote, local, clock = make()
    result(guard.acquire("before", []))
    remote.down = True
    assert result(guard.login_state("192.0.2.7", "alice")) == LoginState()
    assert guard.outage and logged == ["state.outage"]
    asked = len(remote.calls)
    result(guard.acquire("during", []))
    assert result(guard.claim_turn("192.0.2.7", "h", 5)) is True
    assert result(guard.acquire_maildrop("alice", "h")) is True
    result(guard.cache_put(b"k", b"v", 60))
    assert result(guard.cache_get(b"k")) == b"v"
    assert len(remote.calls) == asked        # the store is not asked again during the outage
    assert local.leases == {"during"} and logged == ["state.outage"]
    clock.advance(1)                          # the probe: still down
    assert guard.outage and logged == ["state.outage"]
    remote.down = False
    clock.advance(1)
    assert not guard.outage and logged == ["state.outage", "state.recovered"]
    # what was taken locally is given back locally; the rest to the store
    result(guard.release("during"))
    result(guard.release_turn("192.0.2.7", "h"))
    result(guard.release_maildrop("alice", "h"))
    assert local.leases == set() and local.turns == {} and local.maildrops == {}
    result(guard.release("before"))
    assert ("release", "before") in remote.calls and remote.leases == set()
    assert result(guard.cache_get(b"k")) is None          # the store again
    clock.advance(5)
    assert logged == ["state.outage", "state.recovered"]  # the probe stopped


def test_refuse_fails_at_once_and_gives_back_quietly(logged):
    guard, remote, local, clock = make("refuse")
    remote.down = True
    assert result(guard.login_state("192.0.2.7", None)).check(StateUnavailable)
    assert result(guard.acquire("x", [])).check(StateUnavailable)
    assert result(guard.release("x")) is None
    assert result(guard.release_turn("a", "h")) is None
    assert result(guard.cache_put(b"k", b"v", 5)) is None
    assert result(guard.cache_forget(b"k")) is None
    assert local.calls == [] and logged == ["state.outage"]
    remote.down = False
    clock.advance(1)
    assert result(guard.login_state("192.0.2.7", None)) == LoginState()
    assert logged == ["state.outage", "state.recovered"]


def test_other_errors_are_no_outage(logged):
    guard, remote, local, _clock = make()

    def full(lease, counts):
        return defer.fail(LimitExceeded("max_connections"))
    remote.acquire = full
    assert result(guard.acquire("x", [])).check(LimitExceeded)
    assert not guard.outage and local.calls == [] and logged == []


def test_unreachable_at_start_is_an_outage(logged):
    clock = task.Clock()
    remote, local = Remote(), LocalStore()
    remote.down = True
    guard = OutageGuard(remote, local, "local", clock)
    assert result(guard.start()) is None
    assert guard.outage and logged == ["state.outage"]
    assert result(guard.login_state("192.0.2.7", None)) == LoginState()
    result(guard.stop())
    clock.advance(5)
    assert logged == ["state.outage"]         # stopped: no more probing
