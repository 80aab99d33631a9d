"""
Brute-force defence: a failure delay per client address, and an optional
lockout per user.

The delay grows only for the address that fails (2 s doubling to 15 s by
default) and never slows anyone else; IPv6 clients are grouped by prefix
(/64), because one host owns a whole /64 and could otherwise rotate
addresses.  Both tables are capped so a flood of addresses cannot exhaust
memory: when full, expired entries go first, then the least recently
failed.
"""

import functools
import ipaddress
from collections import OrderedDict, deque

DEFAULT_MAX_ENTRIES = 100_000
_MAX_DOUBLINGS = 32


@functools.lru_cache(maxsize=4096)
def address_key(address, ipv6_prefix=64):
    """
    The key failures of C{address} are counted under: the IPv4 address
    itself (also for IPv4-mapped IPv6), or the IPv6 network of
    C{ipv6_prefix} bits.  A string that is no address is its own key.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)


class PenaltyRule:
    """
    The failure penalty's arithmetic, without its table: the counts live
    in an L{securepop.interfaces.IStateStore}, the rule turns them into a
    wait.

    @param base: delay after the first failure (seconds).
    @param maximum: the delay never exceeds this.
    @param ipv6_prefix: IPv6 addresses in one network of this size share
        a penalty.
    @param forget_after: seconds without a failure after which an address
        starts clean.
    """

    def __init__(self, base=2.0, maximum=15.0, ipv6_prefix=64, forget_after=900.0):
        if base < 0 or maximum < base:
            raise ValueError("failure delay needs 0 <= base <= maximum")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be within 0..128")
        self.base = base
        self.maximum = maximum
        self.ipv6_prefix = ipv6_prefix
        self.forget_after = forget_after

    def key(self, address):
        """The store key of C{address} (its /64 for IPv6)."""
        return address_key(address, self.ipv6_prefix)

    def delay(self, failures):
        """0 with no failure, else C{base * 2 ** (failures - 1)} up to C{maximum}."""
        if failures <= 0:
            return 0.0
        return min(self.base * (2 ** min(failures - 1, _MAX_DOUBLINGS)), self.maximum)

    def ready_at(self, state):
        """
        @param state: a L{securepop.state.LoginState}.
        @return: the wall time from which the address may have its next
            credentials checked (0.0 when it has no failure on record).
        """
        if state.failures <= 0:
            return 0.0
        return state.last_failure + self.delay(state.failures)


class LockoutRule:
    """
    The per-user lockout's rule: locked while C{threshold} failures fall
    within the last C{window} seconds (the store keeps the times).
    """

    def __init__(self, threshold=10, window=900.0):
        if threshold < 1 or window <= 0:
            raise ValueError("lockout needs threshold >= 1, window > 0")
        self.threshold = threshold
        self.window = window

    def locked(self, state):
        """@param state: a L{securepop.state.LoginState} read with the user."""
        return state.user_failures >= self.threshold


class FailurePenalty:
    """
    How long to wait before answering a failed login from an address.

    @param clock: L{IReactorTime}.
    @param base: delay after the first failure (seconds).
    @param maximum: the delay never exceeds this.
    @param ipv6_prefix: IPv6 addresses in one network of this size share
        a penalty.
    @param forget_after: seconds without a failure after which an address
        starts clean.
    @param max_entries: cap on remembered addresses.
    """

    def __init__(self, clock, base=2.0, maximum=15.0, ipv6_prefix=64,
                 forget_after=900.0, max_entries=DEFAULT_MAX_ENTRIES):
        if base < 0 or maximum < base:
            raise ValueError("failure delay needs 0 <= base <= maximum")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be within 0..128")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._clock = clock
        self.base = base
        self.maximum = maximum
        self.ipv6_prefix = ipv6_prefix
        self.forget_after = forget_after
        self.max_entries = max_entries
        # key -> [failures, time of last failure], oldest failure first
        self._failures = OrderedDict()

    def __len__(self):
        return len(self._failures)

    def _key(self, address):
        return address_key(address, self.ipv6_prefix)

    def _live(self, key):
        entry = self._failures.get(key)
        if entry is None:
            return None
        if self._clock.seconds() - entry[1] > self.forget_after:
            del self._failures[key]
            return None
        return entry

    def failures(self, address):
        """@return: failures counted for C{address} now."""
        entry = self._live(self._key(address))
        return entry[0] if entry else 0

    def delay_for(self, address):
        """
        @return: seconds to wait before answering a failure of C{address}:
            0 with no recorded failure, else C{base * 2 ** (failures - 1)}
            up to C{maximum}.
        """
        count = self.failures(address)
        if count == 0:
            return 0.0
        doublings = min(count - 1, _MAX_DOUBLINGS)
        return min(self.base * (2 ** doublings), self.maximum)

    def ready_at(self, address):
        """
        @return: the clock time from which C{address} may have its next
            credentials checked: its last failure plus its delay (0.0 when
            it has no failure on record).
        """
        entry = self._live(self._key(address))
        if entry is None:
            return 0.0
        return entry[1] + self.delay_for(address)

    def record_failure(self, address):
        """Count one failed login of C{address}; @return: the new delay."""
        key = self._key(address)
        entry = self._live(key)
        now = self._clock.seconds()
        if entry is None:
            self._make_room()
            entry = self._failures[key] = [0, now]
        entry[0] = min(entry[0] + 1, 1 << 20)
        entry[1] = now
        self._failures.move_to_end(key)
        return self.delay_for(address)

    def record_success(self, address):
        """A successful login clears the address's penalty."""
        self._failures.pop(self._key(address), None)

    def _make_room(self):
        if len(self._failures) < self.max_entries:
            return
        # The table is ordered by last failure, so expired entries are at
        # the front: dropping them, then the oldest live one, is O(1) each.
        now = self._clock.seconds()
        while self._failures:
            _key, (_count, last) = next(iter(self._failures.items()))
            if now - last <= self.forget_after:
                break
            self._failures.popitem(last=False)
        while len(self._failures) >= self.max_entries:
            self._failures.popitem(last=False)


class UserLockout:
    """
    Optional per-user lockout: after C{threshold} failures within
    C{window} seconds the user is refused (even with the right password,
    with the same generic answer) until the oldest of those failures is
    C{window} seconds old.

    Note that anyone who knows a user name can lock that user out; that is
    why it is off by default and the per-address delay is the main defence.
    """

    def __init__(self, clock, threshold=10, window=900.0,
                 max_entries=DEFAULT_MAX_ENTRIES):
        if threshold < 1 or window <= 0 or max_entries < 1:
            raise ValueError("lockout needs threshold >= 1, window > 0")
        self._clock = clock
        self.threshold = threshold
        self.window = window
        self.max_entries = max_entries
        self._failures = OrderedDict()   # username -> deque of times

    def __len__(self):
        return len(self._failures)

    def _recent(self, username):
        times = self._failures.get(username)
        if times is None:
            return None
        now = self._clock.seconds()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[username]
            return None
        return times

    def is_locked(self, username):
        """@return: True while C{username} is locked out."""
        times = self._recent(username)
        return times is not None and len(times) >= self.threshold

    locked = is_locked

    def locked_until(self, username):
        """@return: the clock time the lockout ends, or None."""
        if not self.is_locked(username):
            return None
        return self._failures[username][0] + self.window

    def record_failure(self, username):
        times = self._recent(username)
        if times is None:
            if len(self._failures) >= self.max_entries:
                self._failures.popitem(last=False)
            times = self._failures[username] = deque(maxlen=self.threshold)
        times.append(self._clock.seconds())
        self._failures.move_to_end(username)

    def record_success(self, username):
        self._failures.pop(username, None)
