"""
The penalty gate: the delay comes before the check, one check at a time;
the failures and the turn live in the state store.
"""

import pytest
from twisted.internet import defer, task

from securepop.auth.gate import PenaltyGate, Ticket
from securepop.auth.penalty import PenaltyRule
from securepop.errors import SourceUnavailable, StateUnavailable, VerificationBusy
from securepop.state.memory import MemoryStateStore


class Penalty:
    """The failures of the store, as the old per-process table spoke of them."""

    def __init__(self, store, rule):
        self.store, self.rule = store, rule

    def record_failure(self, address):
        self.store.record_failure(self.rule.key(address), None, 900.0, 900.0)

    def record_success(self, address):
        self.store.record_success(self.rule.key(address), None)


def make(max_per_address=4, store_class=MemoryStateStore):
    clock = task.Clock()
    store = store_class(clock)
    rule = PenaltyRule(base=2.0, maximum=15.0)
    gate = PenaltyGate(clock, store, rule, max_per_address=max_per_address)
    return clock, Penalty(store, rule), gate


def fired(d):
    out = []
    d.addBoth(out.append)
    return out


def test_no_failures_no_wait_and_parallel_is_fine():
    clock, penalty, gate = make()
    tickets = [fired(gate.enter("192.0.2.1")) for _ in range(3)]
    assert all(isinstance(t[0], Ticket) for t in tickets)    # a NAT logs in in parallel
    for t in tickets:
        t[0].release()
    assert len(gate) == 0


def test_penalised_address_waits_before_its_check():
    clock, penalty, gate = make()
    penalty.record_failure("192.0.2.1")
    out = fired(gate.enter("192.0.2.1"))
    clock.advance(1.9)
    assert out == []
    clock.advance(0.2)
    assert isinstance(out[0], Ticket)


def test_other_addresses_are_not_slowed():
    clock, penalty, gate = make()
    penalty.record_failure("192.0.2.1")
    assert isinstance(fired(gate.enter("198.51.100.7"))[0], Ticket)


def test_one_check_in_flight_when_penalised():
    clock, penalty, gate = make()
    penalty.record_failure("192.0.2.1")
    first, second = fired(gate.enter("192.0.2.1")), fired(gate.enter("192.0.2.1"))
    clock.advance(2.0)
    assert isinstance(first[0], Ticket) and second == []
    clock.advance(60)
    assert second == []                      # still in flight: the second waits
    penalty.record_failure("192.0.2.1")      # the first failed: delay 4 s from now
    first[0].release()
    clock.advance(3.9)
    assert second == []
    clock.advance(0.2)
    assert isinstance(second[0], Ticket)


def test_success_lets_the_line_through():
    clock, penalty, gate = make()
    penalty.record_failure("192.0.2.1")
    first, second = fired(gate.enter("192.0.2.1")), fired(gate.enter("192.0.2.1"))
    clock.advance(2.0)
    penalty.record_success("192.0.2.1")
    first[0].release()
    assert isinstance(second[0], Ticket)


def test_line_is_bounded_per_address():
    clock, penalty, gate = make(max_per_address=2)
    penalty.record_failure("192.0.2.1")
    gate.enter("192.0.2.1"), gate.enter("192.0.2.1")
    third = fired(gate.enter("192.0.2.1"))
    assert isinstance(third[0].value, VerificationBusy)
    assert isinstance(third[0].value, SourceUnavailable)     # [SYS/TEMP]
    third[0].trap(VerificationBusy)


def test_cancelled_wait_gives_its_place_up():
    clock, penalty, gate = make(max_per_address=2)
    penalty.record_failure("192.0.2.1")
    a = gate.enter("192.0.2.1")
    b = fired(gate.enter("192.0.2.1"))
    a.addErrback(lambda f: f.trap(defer.CancelledError))
    a.cancel()
    assert gate.waiting("192.0.2.1") == 1
    clock.advance(2.0)
    assert isinstance(b[0], Ticket)
    b[0].release()
    assert len(gate) == 0


def test_guesses_per_minute_once_penalised():
    """The issue's goal: no more than ~10 checks a minute from one address."""
    clock, penalty, gate = make(max_per_address=8)
    checks = []

    def attempt():
        d = gate.enter("192.0.2.1")

        def check(ticket):
            checks.append(clock.seconds())
            penalty.record_failure("192.0.2.1")
            ticket.release()
        d.addCallback(check)
        d.addErrback(lambda f: f.trap(VerificationBusy))

    for second in range(600):                # 8 attempts every second for 10 minutes
        for _ in range(8):
            attempt()
        clock.advance(1)
    per_minute = [sum(1 for t in checks if m * 60 <= t < (m + 1) * 60) for m in range(10)]
    assert per_minute[0] <= 10
    assert max(per_minute[1:]) <= 5          # at the 15 s maximum: 4 a minute


def test_ticket_release_is_idempotent():
    clock, penalty, gate = make()
    t = fired(gate.enter("192.0.2.1"))[0]
    t.release()
    t.release()
    assert len(gate) == 0


def test_bad_cap_refused():
    clock = task.Clock()
    with pytest.raises(ValueError):
        PenaltyGate(clock, MemoryStateStore(clock), PenaltyRule(), max_per_address=0)


def test_the_ticket_carries_the_state_read_for_the_user():
    clock, penalty, gate = make()
    gate.store.record_failure("192.0.2.1", "alice", 900.0, 60.0)
    clock.advance(2)
    ticket = fired(gate.enter("192.0.2.1", "alice"))[0]
    assert ticket.username == "alice"
    assert (ticket.state.failures, ticket.state.user_failures) == (1, 1)
    ticket.release()
    other = fired(gate.enter("198.51.100.1"))[0]
    assert other.username is None and other.state.failures == 0


class OtherProcess(MemoryStateStore):
    """The store as another worker holding the address's turn sees it."""

    def hold(self, key, ttl=60.0):
        return self.claim_turn(key, "elsewhere:1", ttl)


def test_the_turn_holds_across_processes():
    """A turn another process holds: no check here until it is given back."""
    clock, penalty, gate = make(store_class=OtherProcess)
    store = gate.store
    clock.advance(100)
    penalty.record_failure("192.0.2.1")
    store.hold("192.0.2.1")
    out = fired(gate.enter("192.0.2.1"))
    clock.advance(10)
    assert out == []                                 # the other process checks now
    store.release_turn("192.0.2.1", "elsewhere:1")
    clock.advance(0.5)
    assert isinstance(out[0], Ticket)
    assert fired(store.hold("192.0.2.1"))[0] is False    # now this process holds it
    out[0].release()
    assert fired(store.hold("192.0.2.1"))[0] is True     # given back with the ticket


def test_a_failure_elsewhere_while_waiting_lengthens_the_wait():
    clock, penalty, gate = make()
    clock.advance(100)
    penalty.record_failure("192.0.2.1")
    out = fired(gate.enter("192.0.2.1"))
    clock.advance(1)
    penalty.record_failure("192.0.2.1")              # another node: now 4 s from t=101
    clock.advance(1.5)
    assert out == []
    clock.advance(3)
    assert isinstance(out[0], Ticket) and out[0].state.failures == 2


class FailingStore(MemoryStateStore):
    def login_state(self, key, username):
        return defer.fail(StateUnavailable("no answer"))


def test_a_store_outage_fails_the_entry_and_holds_nothing():
    clock, penalty, gate = make(store_class=FailingStore)
    out = fired(gate.enter("192.0.2.1"))
    assert isinstance(out[0].value, StateUnavailable)
    out[0].trap(StateUnavailable)
    assert len(gate) == 0


class FailsUnderTheTurn(MemoryStateStore):
    """Answers the claim, then no more reads: the turn must not stay held."""

    def __init__(self, clock):
        super().__init__(clock)
        self.reads = 0

    def login_state(self, key, username):
        self.reads += 1
        if self.reads > 1:
            return defer.fail(StateUnavailable("no answer"))
        return super().login_state(key, username)


def test_a_read_failing_under_the_turn_gives_the_turn_back():
    clock, penalty, gate = make(store_class=FailsUnderTheTurn)
    penalty.record_failure("192.0.2.1")
    out = fired(gate.enter("192.0.2.1"))
    clock.advance(2)
    assert isinstance(out[0].value, StateUnavailable)
    out[0].trap(StateUnavailable)
    assert gate.store._turns == {} and len(gate) == 0
