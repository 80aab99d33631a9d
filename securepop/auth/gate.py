"""
The penalty gate: an address with failures behind it waits its delay
*before* its next credentials are checked, one check at a time.

Delaying only the failure reply is a timing oracle: a right password is
answered at once, so an attacker reads "no answer yet" as "wrong", hangs up
and guesses again on a new connection.  As with Dovecot's auth penalty, the
wait here comes first, whatever the outcome, so every answer from a
penalised address costs the same time, and a penalised address has at most
one verification in flight: parallel connections gain nothing.  Attempts
beyond a small line per address get C{[SYS/TEMP]} at once.

The failures are read from the state store (L{IStateStore.login_state}:
one read per entry, which also brings the user's lockout count when the
user is known), so they hold across workers and nodes; so does the one
check in flight, a turn claimed in the store (L{IStateStore.claim_turn}).
The line of waiting logins is this process's own.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections import deque

from twisted.internet import defer

from securepop.errors import VerificationBusy

DEFAULT_MAX_PER_ADDRESS = 16    # the line of one penalised address
TURN_TTL = 120.0                # a turn outlives a check that never ends by this much
RETRY = 0.5                     # seconds between claims while another process holds the turn


def holder_ids(prefix=None):
    """Unique ids for slot and turn holders: C{<prefix>:<n>} (prefix unique per process)."""
    prefix = prefix or f"{os.getpid()}-{secrets.token_hex(6)}"
    counter = itertools.count(1)
    return lambda: f"{prefix}:{next(counter)}"


class Ticket:
    """
    The right to check one set of credentials; L{release} when the outcome
    has been recorded (idempotent).

    @ivar state: the L{securepop.state.LoginState} read on the way in.
    @ivar username: the user that state was read for (None: the address only).
    """

    def __init__(self, gate, key, address, state, username=None, turn=None):
        self._gate = gate
        self._key = key
        self._turn = turn
        self.address = address
        self.state = state
        self.username = username
        self.released = False

    def release(self):
        if not self.released:
            self.released = True
            self._gate._released(self._key, self._turn)


class _Waiter:
    __slots__ = ("d", "address", "username", "state")

    def __init__(self, address, username):
        self.address, self.username = address, username
        self.d = self.state = None


class _Slot:
    __slots__ = ("running", "waiters", "timer", "busy")

    def __init__(self):
        self.running = 0
        self.waiters = deque()
        self.timer = None
        self.busy = False       # a read or claim for the head of the line in flight


class PenaltyGate:
    """
    @param clock: L{IReactorTime} (wall time: the store's times are).
    @param store: the L{securepop.interfaces.IStateStore} the failures live in.
    @param penalty: the L{securepop.auth.penalty.PenaltyRule} that turns
        failures into a wait (replaceable on reload).
    @param max_per_address: the line of a penalised address (waiting plus
        the one in flight); more get L{VerificationBusy}.  An address
        without failures is not held here (a NAT's users log in in
        parallel); the hashing pool bounds what it may queue.
    """

    def __init__(self, clock, store, penalty, max_per_address=DEFAULT_MAX_PER_ADDRESS,
                 new_holder=None):
        if max_per_address < 1:
            raise ValueError("max_per_address must be at least 1")
        self._clock = clock
        self.store = store
        self.penalty = penalty
        self.max_per_address = max_per_address
        self._new_holder = new_holder or holder_ids()
        self._slots = {}

    def __len__(self):
        return len(self._slots)

    def waiting(self, address):
        """@return: attempts of C{address} waiting for their turn now."""
        slot = self._slots.get(self.penalty.key(address))
        return len(slot.waiters) if slot else 0

    def enter(self, address, username=None):
        """
        @param username: the user the credentials are for, when known
            before the check (its lockout count comes with the read).
        @return: a Deferred firing with a L{Ticket} when C{address} may have
            its credentials checked (at once for an address without
            failures), or failing with L{VerificationBusy} (or the store's
            L{securepop.errors.StateUnavailable}).  Cancelling it (the
            client went away) gives the place in line up.
        """
        key = self.penalty.key(address)
        slot = self._slot(key)
        waiter = _Waiter(address, username)
        waiter.d = defer.Deferred(lambda d: self._cancel(key, waiter))
        slot.running += 1               # holds the slot while the read is out
        read = self.store.login_state(key, username)
        read.addCallbacks(self._arrived, self._entry_failed,
                          callbackArgs=(key, waiter), errbackArgs=(key, waiter))
        return waiter.d

    def _slot(self, key):
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        return slot

    def _arrived(self, state, key, waiter):
        slot = self._slots[key]
        slot.running -= 1
        if waiter.d.called:             # cancelled meanwhile
            self._pump(key, slot)
            return
        waiter.state = state
        if state.failures == 0 and not slot.waiters:
            slot.running += 1           # no penalty: parallel logins (a NAT) are fine
            waiter.d.callback(Ticket(self, key, waiter.address, state, waiter.username))
            return
        if slot.running + len(slot.waiters) >= self.max_per_address:
            self._forget(key, slot)
            waiter.d.errback(VerificationBusy("too many logins waiting for this address"))
            return
        slot.waiters.append(waiter)
        self._pump(key, slot)

    def _entry_failed(self, failure, key, waiter):
        slot = self._slots[key]
        slot.running -= 1
        self._pump(key, slot)
        if not waiter.d.called:
            waiter.d.errback(failure)

    def _cancel(self, key, waiter):
        slot = self._slots.get(key)
        if slot is None:
            return
        try:
            slot.waiters.remove(waiter)
        except ValueError:
            return
        self._pump(key, slot)

    def _pump(self, key, slot):
        """Let the head of the line go when it may; else wait for a release or a timer."""
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None
        if slot.busy or not slot.waiters:
            self._forget(key, slot)
            return
        head = slot.waiters[0]
        if head.state.failures == 0:
            # Clean when it arrived, but in line behind others: read again.
            slot.busy = True
            d = self.store.login_state(key, head.username)
            d.addCallback(self._head_read, key, slot, head)
            d.addErrback(self._head_failed, key, slot, head)
            return
        if slot.running:
            return                      # one in flight: the release pumps again
        wait = self.penalty.ready_at(head.state) - self._clock.seconds()
        if wait > 0:
            self._later(key, slot, wait)
            return
        self._claim(key, slot, head)

    def _head_read(self, state, key, slot, head):
        head.state = state
        if not self._still_first(key, slot, head):
            return None
        if state.failures == 0:
            return self._go(key, slot, head, None)
        slot.busy = False
        self._pump(key, slot)
        return None

    def _claim(self, key, slot, head):
        """The penalty of what was last read has passed: claim the turn, then read under it."""
        slot.busy = True
        holder = self._new_holder()
        d = self.store.claim_turn(key, holder, self.penalty.maximum + TURN_TTL)
        d.addCallback(self._claimed, key, slot, head, holder)
        d.addErrback(self._head_failed, key, slot, head)

    def _claimed(self, ok, key, slot, head, holder):
        if not ok:                       # another process checks this address now
            return self._later(key, slot, RETRY)
        # Read again under the turn: a failure recorded elsewhere meanwhile counts.
        d = self.store.login_state(key, head.username)

        def give_back(failure):
            self.store.release_turn(key, holder).addErrback(lambda f: None)
            return failure

        return d.addCallbacks(self._read_under_turn, give_back,
                              callbackArgs=(key, slot, head, holder))

    def _read_under_turn(self, state, key, slot, head, holder):
        head.state = state
        if not self._still_first(key, slot, head):
            self.store.release_turn(key, holder)
            return None
        if state.failures == 0:
            self.store.release_turn(key, holder)
            return self._go(key, slot, head, None)
        wait = self.penalty.ready_at(state) - self._clock.seconds()
        if wait > 0:
            self.store.release_turn(key, holder)
            return self._later(key, slot, wait)
        return self._go(key, slot, head, holder)

    def _still_first(self, key, slot, head):
        if slot.waiters and slot.waiters[0] is head:
            return True
        slot.busy = False
        self._pump(key, slot)
        return False

    def _go(self, key, slot, head, turn):
        slot.waiters.popleft()
        slot.running += 1
        slot.busy = False
        head.d.callback(Ticket(self, key, head.address, head.state, head.username, turn))
        if self._slots.get(key) is slot:
            self._pump(key, slot)
        return None

    def _later(self, key, slot, wait):
        slot.busy = False
        if slot.timer is None:
            slot.timer = self._clock.callLater(max(0.0, wait), self._wake, key)
        return None

    def _head_failed(self, failure, key, slot, head):
        """The store failed: the head of the line gets the failure, the next tries."""
        slot.busy = False
        try:
            slot.waiters.remove(head)
        except ValueError:
            pass
        if not head.d.called:
            head.d.errback(failure)
        if self._slots.get(key) is slot:
            self._pump(key, slot)

    def _wake(self, key):
        slot = self._slots.get(key)
        if slot is not None:
            slot.timer = None
            self._pump(key, slot)

    def _released(self, key, turn):
        if turn is not None:
            self.store.release_turn(key, turn).addErrback(lambda f: None)
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.running -= 1
        self._pump(key, slot)

    def _forget(self, key, slot):
        if not slot.running and not slot.waiters and slot.timer is None and not slot.busy:
            self._slots.pop(key, None)
