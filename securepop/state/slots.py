"""
The slots one session holds in the state store, under one lease id.

A session takes its connection slot (total, per address) before the
greeting and adds its user slot after the login, both under the same
lease, so one L{SlotLease.release} gives everything back (one round trip
at the end of the session).  Release is idempotent, and a slot granted
after the session already released (the store answered late) is given
back at once.
"""

from __future__ import annotations

from twisted.internet import defer

from securepop import events


class SlotLease:
    """
    @ivar id: the lease id the store knows the slots by.
    @ivar released: True once L{release} ran.
    """

    def __init__(self, store, lease_id):
        self._store = store
        self.id = lease_id
        self.released = False

    def add(self, counts):
        """
        Take one slot in each of C{counts} (C{(scope, key, limit)}), all or
        none.

        @return: Deferred firing with None, or failing with
            L{securepop.access.limits.LimitExceeded} or
            L{securepop.errors.StateUnavailable}.
        """
        if not counts:
            return defer.succeed(None)
        d = self._store.acquire(self.id, counts)

        def granted(result):
            if self.released:           # the session ended while the store answered
                self._give_back()
            return result

        return d.addCallback(granted)

    def release(self):
        if not self.released:
            self.released = True
            self._give_back()

    def _give_back(self):
        def failed(failure):
            # The backend's lease TTL frees the slots if this never arrives.
            events.emit("state.release_failed", "warn", lease=self.id,
                        error=failure.getErrorMessage())

        self._store.release(self.id).addErrback(failed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
