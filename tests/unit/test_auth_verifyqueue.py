"""The hashing queue: bounded, fair across clients, drops what nobody waits for."""

import threading

import pytest
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError

from securepop.auth.verifyqueue import CLIENT, VerificationQueue
from securepop.errors import VerificationBusy


class Gate:
    """Blocks the hashing threads until released, to see the line form."""

    def __init__(self):
        self.event = threading.Event()
        self.ran = []
        self.lock = threading.Lock()

    def work(self, name):
        with self.lock:
            self.ran.append(name)
        self.event.wait(10)
        return name


@pytest.fixture
def queue():
    q = VerificationQueue(reactor, threads=1, max_queued=6, max_per_client=3)
    q.start()
    yield q
    q.stop()


def submit(q, client, f, *args):
    token = CLIENT.set(client)
    try:
        return q(f, *args)
    finally:
        CLIENT.reset(token)


def wait_until(predicate):
    for _ in range(200):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached")


@pytest.mark.usefixtures("queue")
@defer.inlineCallbacks
def test_runs_off_the_reactor_thread(queue):
    result = yield submit(queue, "a", lambda: threading.current_thread().name)
    assert result != threading.current_thread().name


@defer.inlineCallbacks
def test_clients_take_turns(queue):
    gate = Gate()
    ds = [submit(queue, "flood", gate.work, f"flood{i}") for i in range(3)]
    ds.append(submit(queue, "victim", gate.work, "victim"))
    wait_until(lambda: gate.ran == ["flood0"])
    gate.event.set()
    yield defer.DeferredList(ds)
    # The victim went second, not behind the whole flood.
    assert gate.ran == ["flood0", "victim", "flood1", "flood2"]


def test_per_client_cap_and_total_cap(queue):
    gate = Gate()
    ds = [submit(queue, "a", gate.work, i) for i in range(3)]
    over = submit(queue, "a", gate.work, 9)
    failures = []
    over.addErrback(failures.append)
    assert failures and failures[0].check(VerificationBusy)
    ds += [submit(queue, c, gate.work, c) for c in ("b", "c", "d", "e")]
    full = submit(queue, "f", gate.work, "f")
    full.addErrback(failures.append)
    assert failures[1].check(VerificationBusy)
    gate.event.set()
    return defer.DeferredList(ds)


@defer.inlineCallbacks
def test_cancelled_job_never_runs(queue):
    gate = Gate()
    first = submit(queue, "a", gate.work, "first")
    gone = submit(queue, "b", gate.work, "gone")
    gone.addErrback(lambda f: f.trap(CancelledError))
    wait_until(lambda: gate.ran == ["first"])
    gone.cancel()
    assert queue.depth == 0
    gate.event.set()
    yield first
    assert gate.ran == ["first"]


@defer.inlineCallbacks
def test_errors_reach_the_caller(queue):
    def boom():
        raise ValueError("bad hash")
    with pytest.raises(ValueError):
        yield submit(queue, "a", boom)


class Metered:
    """The two metrics the queue reports to, as counters a test can read."""

    def __init__(self):
        self.waits, self.renewals, self.depth = [], 0, None

        class Wait:
            @staticmethod
            def observe(value):
                self.waits.append(value)

        class Renewals:
            @staticmethod
            def inc():
                self.renewals += 1

        class Depth:
            @staticmethod
            def set(value):
                self.depth = value

        self.verification_wait = Wait()
        self.verification_renewals = Renewals()
        self.verification_queue = Depth()


@defer.inlineCallbacks
def test_only_a_logins_wait_is_a_login_latency(queue):
    from securepop.auth.verifyqueue import PURPOSE

    metrics = queue.metrics = Metered()
    yield submit(queue, "a", lambda: 1)
    token = PURPOSE.set("renewal")
    try:
        d = submit(queue, "a", lambda: 2)
    finally:
        PURPOSE.reset(token)
    yield d
    assert len(metrics.waits) == 1 and metrics.renewals == 1


def renew(q, f, *args):
    from securepop.auth.verifyqueue import PURPOSE

    token = PURPOSE.set("renewal")
    try:
        return q(f, *args)
    finally:
        PURPOSE.reset(token)


@defer.inlineCallbacks
def test_a_renewal_never_takes_a_logins_thread(queue):
    """With the one hashing thread busy renewing, a login still runs at once."""
    gate = Gate()
    renewing = renew(queue, gate.work, "renewal")
    wait_until(lambda: gate.ran == ["renewal"])
    login = yield submit(queue, "a", lambda: "login")
    assert login == "login" and not renewing.called
    assert queue.renewals == 1 and queue.depth == 0
    gate.event.set()
    assert (yield renewing) == "renewal"
    assert queue.renewals == 0


@defer.inlineCallbacks
def test_a_login_never_waits_for_queued_renewals(queue):
    gate = Gate()
    first = renew(queue, gate.work, "r1")
    wait_until(lambda: gate.ran == ["r1"])
    later = [renew(queue, lambda n=n: n, n) for n in range(3)]
    assert (yield submit(queue, "a", lambda: "login")) == "login"
    assert not any(d.called for d in later)
    gate.event.set()
    yield first
    assert (yield defer.gatherResults(later)) == [0, 1, 2]


@defer.inlineCallbacks
def test_renewals_run_at_a_lower_cpu_priority_than_logins(queue):
    import os

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    from securepop.auth.verifyqueue import RENEWAL_NICE

    login_nice = yield submit(queue, "a", nice)
    renewal_nice = yield renew(queue, nice)
    # A process already niced past RENEWAL_NICE (a niced test run) keeps its own.
    assert renewal_nice == max(RENEWAL_NICE, login_nice)


@defer.inlineCallbacks
def test_renewals_run_only_when_the_cpu_is_idle(queue):
    import os

    def policy():
        return os.sched_getscheduler(threading.get_native_id())

    assert (yield submit(queue, "a", policy)) != os.SCHED_IDLE
    assert (yield renew(queue, policy)) == os.SCHED_IDLE


@defer.inlineCallbacks
def test_renewals_are_bounded_and_never_count_against_a_client(queue):
    gate = Gate()
    held = [renew(queue, gate.work, n) for n in range(queue.max_queued)]
    refused = renew(queue, lambda: None)
    with pytest.raises(VerificationBusy):
        yield refused
    # A client's own cap (3) is untouched by the renewals in flight.
    logins = yield defer.gatherResults([submit(queue, "a", lambda n=n: n) for n in range(3)])
    assert logins == [0, 1, 2]
    gate.event.set()
    yield defer.gatherResults(held)


def test_default_threads_follow_the_cpu_affinity(monkeypatch):
    """A server pinned to one core of many gets one hashing thread, not one per core."""
    import os

    from securepop.auth import verifyqueue

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert verifyqueue.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert verifyqueue.default_threads() == 3

    def unsupported(pid):
        raise OSError("no affinity here")

    monkeypatch.setattr(os, "sched_getaffinity", unsupported)
    assert verifyqueue.default_threads() == 8
