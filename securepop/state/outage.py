"""
What happens when the shared store does not answer (C{[state] on_outage}).

L{OutageGuard} stands in front of a shared store (Redis) and forwards every
call.  When a call fails with L{StateUnavailable} (no answer within the
store's timeout, no connection) the guard logs C{state.outage} once and,
until the store answers again, does not ask it any more (so no login waits
for it twice):

  - C{"local"}: calls are answered by a per-process store (limits, penalty
    and cache as one process sees them);
  - C{"refuse"}: calls fail with L{StateUnavailable} at once (the callers
    answer C{-ERR [SYS/TEMP]}); giving things back never fails.

A probe asks the store every C{probe_interval} seconds; when it answers,
C{state.recovered} is logged and calls go to it again.  Slots, turns and
maildrop leases taken locally during the outage are given back locally.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from securepop import events
from securepop.errors import StateUnavailable
from securepop.interfaces import IStateStore

ON_OUTAGE = ("local", "refuse")


def _ignore(failure):
    failure.trap(StateUnavailable)


@implementer(IStateStore)
class OutageGuard:
    """
    @param store: the shared L{IStateStore}.
    @param local_store: the per-process L{IStateStore} used during an
        outage with C{on_outage = "local"}.
    @param on_outage: C{"local"} or C{"refuse"}.
    @param clock: L{IReactorTime} for the probe.
    """

    def __init__(self, store, local_store, on_outage="local", clock=None, probe_interval=1.0):
        if on_outage not in ON_OUTAGE:
            raise ValueError(f"on_outage must be one of {', '.join(ON_OUTAGE)}")
        self._store = store
        self._local = local_store
        self.on_outage = on_outage
        self._clock = clock
        self.kind = store.kind
        self.lease_ttl = store.lease_ttl
        self.outage = False
        self._since = 0.0
        self._probe = LoopingCall(self._check)
        self._probe.clock = clock
        self._probe_interval = probe_interval
        self._local_leases = set()
        self._local_turns = set()       # (address key, holder)
        self._local_maildrops = set()   # (username, holder)

    # -- outage and recovery -----------------------------------------------------------

    def _down(self, reason):
        if self.outage:
            return
        self.outage = True
        self._since = self._clock.seconds()
        events.emit("state.outage", "error", backend=self.kind, on_outage=self.on_outage,
                    error=reason)
        if not self._probe.running:
            self._probe.start(self._probe_interval, now=False)

    def _check(self):
        """The probe: one read; when it answers, the store is used again."""
        d = self._store.count("total", "*")

        def answered(_):
            if self.outage:
                self.outage = False
                events.emit("state.recovered", backend=self.kind,
                            after=f"{self._clock.seconds() - self._since:.1f}s")
            if self._probe.running:
                self._probe.stop()
        return d.addCallbacks(answered, _ignore)

    def _call(self, shared, local, *args):
        """
        Call C{shared} (a method of the store), or answer as the outage
        policy says: C{local} (the same method of the local store) or a
        refusal.
        """
        if self.outage:
            return self._fallback(local, args)
        d = shared(*args)

        def failed(failure):
            failure.trap(StateUnavailable)
            self._down(failure.getErrorMessage())
            return self._fallback(local, args)
        return d.addErrback(failed)

    def _fallback(self, local, args):
        if self.on_outage == "refuse":
            return defer.fail(StateUnavailable(f"{self.kind} state store unavailable"))
        return local(*args)

    def _give_back(self, shared, *args):
        """Give something back to the store: never fails, never waits in an outage."""
        d = shared(*args).addErrback(_ignore)
        return defer.succeed(None) if self.outage else d

    # -- life --------------------------------------------------------------------------

    def start(self):
        """Start both stores; an unreachable shared store is an outage, not an error."""
        def failed(failure):
            failure.trap(StateUnavailable)
            self._down(failure.getErrorMessage())
        return defer.gatherResults([
            defer.maybeDeferred(self._local.start),
            self._store.start().addErrback(failed)], consumeErrors=True).addCallback(
                lambda _: None)

    def stop(self):
        if self._probe.running:
            self._probe.stop()
        return defer.gatherResults([
            self._store.stop().addErrback(lambda _: None),
            defer.maybeDeferred(self._local.stop)], consumeErrors=True).addCallback(
                lambda _: None)

    # -- connection slots --------------------------------------------------------------

    def acquire(self, lease, counts):
        outage = self.outage
        d = self._call(self._store.acquire, self._local.acquire, lease, counts)

        def taken(result):
            if self.outage or outage:
                self._local_leases.add(lease)
            return result
        return d.addCallback(taken)

    def release(self, lease):
        if lease in self._local_leases:
            self._local_leases.discard(lease)
            self._local.release(lease)
        return self._give_back(self._store.release, lease)

    def count(self, scope, key):
        return self._call(self._store.count, self._local.count, scope, key)

    # -- failure penalty and lockout ---------------------------------------------------

    def login_state(self, address_key, username):
        return self._call(self._store.login_state, self._local.login_state,
                          address_key, username)

    def record_failure(self, address_key, username, forget_after, window):
        return self._call(self._store.record_failure, self._local.record_failure,
                          address_key, username, forget_after, window)

    def record_success(self, address_key, username):
        return self._call(self._store.record_success, self._local.record_success,
                          address_key, username)

    def claim_turn(self, address_key, holder, ttl):
        return self._claimed(self._call(self._store.claim_turn, self._local.claim_turn,
                                        address_key, holder, ttl),
                             self._local_turns, (address_key, holder))

    def _claimed(self, d, local, entry):
        outage = self.outage

        def claimed(won):
            if won and (self.outage or outage):
                local.add(entry)
            return won
        return d.addCallback(claimed)

    def release_turn(self, address_key, holder):
        if (address_key, holder) in self._local_turns:
            self._local_turns.discard((address_key, holder))
            self._local.release_turn(address_key, holder)
        return self._give_back(self._store.release_turn, address_key, holder)

    # -- auth cache --------------------------------------------------------------------

    def cache_get(self, key):
        return self._call(self._store.cache_get, self._local.cache_get, key)

    def cache_put(self, key, value, ttl):
        return self._call(self._store.cache_put, self._local.cache_put, key, value, ttl) \
            .addErrback(_ignore)

    def cache_forget(self, key):
        if self.outage and self.on_outage == "local":
            self._local.cache_forget(key)
        return self._give_back(self._store.cache_forget, key)

    # -- maildrop leases ---------------------------------------------------------------

    def acquire_maildrop(self, username, holder):
        return self._claimed(self._call(self._store.acquire_maildrop,
                                        self._local.acquire_maildrop, username, holder),
                             self._local_maildrops, (username, holder))

    def release_maildrop(self, username, holder):
        if (username, holder) in self._local_maildrops:
            self._local_maildrops.discard((username, holder))
            self._local.release_maildrop(username, holder)
        return self._give_back(self._store.release_maildrop, username, holder)
