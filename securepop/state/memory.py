"""
The C{memory} state store: everything in this process (the embedded
default, and one worker alone).

Same semantics as every backend (L{securepop.interfaces.IStateStore}), so
the callers need not know which one serves them: every method answers with
an already-fired Deferred.  One process has no heartbeat to lose, so slots
and turns live until they are released (turns also until their C{ttl});
the lease-id bookkeeping is kept so that C{acquire} is all-or-none and
C{release} idempotent, as elsewhere.

The failure and lockout tables and the cache are bounded (C{max_entries}
each) so a flood of addresses or user names cannot exhaust memory: expired
entries go first, then the least recently touched.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from twisted.internet import defer
from zope.interface import implementer

from securepop.access.limits import PER_IP, PER_USER, TOTAL, LimitExceeded
from securepop.interfaces import IStateStore
from securepop.state import CLEAN, LoginState

DEFAULT_MAX_ENTRIES = 100_000
SCOPES = {"total": TOTAL, "ip": PER_IP, "user": PER_USER}
MAX_USER_FAILURES = 1024     # failures remembered per user: far above any threshold
_MAX_COUNT = 1 << 20


@implementer(IStateStore)
class MemoryStateStore:
    """
    @param clock: L{IReactorTime} whose C{seconds()} is the wall time
        (the reactor; a L{twisted.internet.task.Clock} in tests).
    @param lease_ttl: kept for the interface; nothing expires here.
    @param max_entries: cap on each table (addresses, users, cache keys).
    """

    kind = "memory"

    def __init__(self, clock, lease_ttl=30.0, max_entries=DEFAULT_MAX_ENTRIES):
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._clock = clock
        self.lease_ttl = float(lease_ttl)
        self.max_entries = int(max_entries)
        self._counters = {}             # (scope, key) -> live slots
        self._leases = {}               # lease -> [(scope, key), ...]
        self._failures = OrderedDict()  # address key -> [count, last, forget_after]
        self._users = OrderedDict()     # username -> (window, deque of times)
        self._turns = {}                # address key -> (holder, expires at)
        self._cache = OrderedDict()     # key -> (expires at, value)
        self._maildrops = {}            # username -> holder

    def _now(self):
        return self._clock.seconds()

    # -- life ------------------------------------------------------------------

    def start(self):
        return defer.succeed(None)

    def stop(self):
        self._counters.clear()
        self._leases.clear()
        self._turns.clear()
        self._maildrops.clear()
        return defer.succeed(None)

    # -- connection slots --------------------------------------------------------

    def acquire(self, lease, counts):
        """
        All or none.  Calling it again with the same C{lease} adds slots to
        it (a session's user slot after its connection slot): one
        L{release} gives back everything.
        """
        try:
            wanted = [(_scope(scope), str(key), _limit(limit)) for scope, key, limit in counts]
        except ValueError as e:
            return defer.fail(e)
        for scope, key, limit in wanted:
            if limit and self._counters.get((scope, key), 0) >= limit:
                return defer.fail(LimitExceeded(SCOPES[scope],
                                                None if scope == "total" else key))
        held = self._leases.setdefault(lease, [])
        for scope, key, _limit_ in wanted:
            self._counters[(scope, key)] = self._counters.get((scope, key), 0) + 1
            held.append((scope, key))
        return defer.succeed(None)

    def release(self, lease):
        for counter in self._leases.pop(lease, ()):
            left = self._counters.get(counter, 0) - 1
            if left > 0:
                self._counters[counter] = left
            else:
                self._counters.pop(counter, None)
        return defer.succeed(None)

    def count(self, scope, key):
        try:
            counter = (_scope(scope), str(key))
        except ValueError as e:
            return defer.fail(e)
        return defer.succeed(self._counters.get(counter, 0))

    # -- failure penalty and lockout --------------------------------------------------

    def login_state(self, address_key, username):
        return defer.succeed(self._state(address_key, username))

    def _state(self, address_key, username):
        entry = self._address(address_key)
        times = self._user(username) if username else None
        if entry is None and not times:
            return CLEAN
        return LoginState(
            failures=entry[0] if entry else 0,
            last_failure=entry[1] if entry else 0.0,
            user_failures=len(times) if times else 0,
            user_oldest=times[0] if times else 0.0)

    def _address(self, key):
        entry = self._failures.get(key)
        if entry is not None and self._now() - entry[1] > entry[2]:
            del self._failures[key]
            return None
        return entry

    def _user(self, username):
        held = self._users.get(username)
        if held is None:
            return None
        window, times = held
        now = self._now()
        while times and now - times[0] >= window:
            times.popleft()
        if not times:
            del self._users[username]
            return None
        return times

    def record_failure(self, address_key, username, forget_after, window):
        now = self._now()
        entry = self._address(address_key)
        if entry is None:
            self._make_room(self._failures, lambda e: now - e[1] > e[2])
            entry = self._failures[address_key] = [0, now, forget_after]
        entry[0] = min(entry[0] + 1, _MAX_COUNT)
        entry[1], entry[2] = now, float(forget_after)
        self._failures.move_to_end(address_key)
        if username:
            times = self._user(username)
            if times is None:
                self._make_room(self._users, lambda e: not e[1] or now - e[1][-1] >= e[0])
                times = deque(maxlen=MAX_USER_FAILURES)
            self._users[username] = (float(window), times)
            times.append(now)
            self._users.move_to_end(username)
        return defer.succeed(self._state(address_key, username))

    def record_success(self, address_key, username):
        self._failures.pop(address_key, None)
        if username:
            self._users.pop(username, None)
        return defer.succeed(None)

    def claim_turn(self, address_key, holder, ttl):
        now = self._now()
        current = self._turns.get(address_key)
        if current is not None and current[0] != holder and current[1] > now:
            return defer.succeed(False)
        if current is None and len(self._turns) >= self.max_entries:
            for key in [k for k, (_h, until) in self._turns.items() if until <= now]:
                del self._turns[key]
            if len(self._turns) >= self.max_entries:
                return defer.succeed(False)
        self._turns[address_key] = (holder, now + ttl)
        return defer.succeed(True)

    def release_turn(self, address_key, holder):
        current = self._turns.get(address_key)
        if current is not None and current[0] == holder:
            del self._turns[address_key]
        return defer.succeed(None)

    # -- auth cache ------------------------------------------------------------------------

    def cache_get(self, key):
        entry = self._cache.get(key)
        if entry is None:
            return defer.succeed(None)
        if self._now() >= entry[0]:
            del self._cache[key]
            return defer.succeed(None)
        self._cache.move_to_end(key)
        return defer.succeed(entry[1])

    def cache_put(self, key, value, ttl):
        if not isinstance(value, bytes):
            return defer.fail(TypeError("cache values are bytes"))
        if ttl > 0:
            now = self._now()
            self._cache.pop(key, None)
            self._make_room(self._cache, lambda e: e[0] <= now)
            self._cache[key] = (now + ttl, value)
        return defer.succeed(None)

    def cache_forget(self, key):
        self._cache.pop(key, None)
        return defer.succeed(None)

    # -- maildrop leases ---------------------------------------------------------------------

    def acquire_maildrop(self, username, holder):
        current = self._maildrops.get(username)
        if current is not None and current != holder:
            return defer.succeed(False)
        self._maildrops[username] = holder
        return defer.succeed(True)

    def release_maildrop(self, username, holder):
        if self._maildrops.get(username) == holder:
            del self._maildrops[username]
        return defer.succeed(None)

    # -- bounds -----------------------------------------------------------------------------

    def _make_room(self, table, expired):
        """Room for one more in C{table}: expired entries at the old end, then the oldest."""
        if len(table) < self.max_entries:
            return
        while table:
            key, entry = next(iter(table.items()))
            if not expired(entry):
                break
            del table[key]
        while len(table) >= self.max_entries:
            table.popitem(last=False)


def _scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"unknown counter scope {scope!r}")
    return scope


def _limit(limit):
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError("a limit is a whole number >= 0 (0 = unlimited)")
    return limit
