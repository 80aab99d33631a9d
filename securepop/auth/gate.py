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
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer

from securepop.errors import VerificationBusy

DEFAULT_MAX_PER_ADDRESS = 16    # the line of one penalised address


class Ticket:
    """
    The right to check one set of credentials; L{release} when the outcome
    has been recorded in the penalty (idempotent).
    """

    def __init__(self, gate, key, address):
        self._gate = gate
        self._key = key
        self.address = address
        self.released = False

    def release(self):
        if not self.released:
            self.released = True
            self._gate._released(self._key)


class _Slot:
    __slots__ = ("running", "waiters", "timer")

    def __init__(self):
        self.running = 0
        self.waiters = deque()
        self.timer = None


class PenaltyGate:
    """
    @param clock: L{IReactorTime}.
    @param penalty: the L{securepop.auth.penalty.FailurePenalty} whose
        failures and delays decide who waits.
    @param max_per_address: the line of a penalised address (waiting plus
        the one in flight); more get L{VerificationBusy}.  An address
        without failures is not held here (a NAT's users log in in
        parallel); the hashing pool bounds what it may queue.
    """

    def __init__(self, clock, penalty, max_per_address=DEFAULT_MAX_PER_ADDRESS):
        if max_per_address < 1:
            raise ValueError("max_per_address must be at least 1")
        self._clock = clock
        self.penalty = penalty
        self.max_per_address = max_per_address
        self._slots = {}

    def __len__(self):
        return len(self._slots)

    def waiting(self, address):
        """@return: attempts of C{address} waiting for their turn now."""
        slot = self._slots.get(self.penalty._key(address))
        return len(slot.waiters) if slot else 0

    def enter(self, address):
        """
        @return: a Deferred firing with a L{Ticket} when C{address} may have
            its credentials checked (at once for an address without
            failures), or failing with L{VerificationBusy}.  Cancelling it
            (the client went away) gives the place in line up.
        """
        key = self.penalty._key(address)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        if not slot.waiters and self._mayRun(address, slot):
            slot.running += 1
            return defer.succeed(Ticket(self, key, address))
        if slot.running + len(slot.waiters) >= self.max_per_address:
            self._forget(key, slot)
            return defer.fail(VerificationBusy("too many logins waiting for this address"))

        def cancel(d):
            try:
                slot.waiters.remove((d, address))
            except ValueError:
                pass
            self._forget(key, slot)

        d = defer.Deferred(cancel)
        slot.waiters.append((d, address))
        self._pump(key, slot)
        return d

    def _mayRun(self, address, slot):
        if self.penalty.failures(address) == 0:
            return True     # no penalty: parallel logins (a NAT) are fine
        return slot.running == 0 and self._clock.seconds() >= self.penalty.ready_at(address)

    def _pump(self, key, slot):
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None
        while slot.waiters:
            d, address = slot.waiters[0]
            if self._mayRun(address, slot):
                slot.waiters.popleft()
                slot.running += 1
                d.callback(Ticket(self, key, address))
                continue
            if slot.running == 0 and slot.timer is None:
                wait = max(0.0, self.penalty.ready_at(address) - self._clock.seconds())
                slot.timer = self._clock.callLater(wait, self._wake, key)
            break
        self._forget(key, slot)

    def _wake(self, key):
        slot = self._slots.get(key)
        if slot is not None:
            slot.timer = None
            self._pump(key, slot)

    def _released(self, key):
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.running -= 1
        self._pump(key, slot)

    def _forget(self, key, slot):
        if not slot.running and not slot.waiters and slot.timer is None:
            self._slots.pop(key, None)
