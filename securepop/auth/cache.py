"""
A small in-memory cache of authentication outcomes.

A users-file login costs an argon2id verification and a directory login a
search and a bind; a POP3 client that polls every few minutes repeats the
same login all day.  Positive outcomes are kept for a TTL (an hour by
default: a password, group or account-state change in a directory takes
effect within it), negative ones for a much shorter time (so a client
retrying a wrong password does not hammer the directory or raise an AD
lockout counter, and a password set a moment later is not hidden long).
An entry's lifetime is fixed when the source answers: reading it never
extends it.  Memory is bounded: the least recently used entry goes first.

Entries are keyed by an HMAC-SHA256 of the credentials under a random key
made for this process: the cache never holds a password, and its keys are
useless outside the process.
"""

import hmac
import secrets
from collections import OrderedDict
from hashlib import sha256


MISS = object()
"""L{AuthCache.get} result when nothing (fresh) is cached."""


class NegativeResult:
    """
    L{AuthCache.get} result for a cached refusal.
    """

    __slots__ = ()

    def __repr__(self):
        return "<NegativeResult>"


NEGATIVE = NegativeResult()


def _asBytes(part):
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode("utf-8", "surrogatepass")
    raise TypeError(f"cache key parts are str or bytes, not {type(part)!r}")


class AuthCache:
    """
    Bounded, TTL-limited cache of login outcomes keyed by credential hashes.

    @ivar ttl: seconds a positive result is trusted.
    @ivar negative_ttl: seconds a refusal is remembered (0 disables it).
    @ivar max_entries: the cache never holds more entries than this; the
        least recently used entry goes first.
    @ivar refresh_after: the share of C{ttl} after which a positive entry
        is due for renewal (L{due}): its checker verifies again in the
        background while the cached answer still serves the login.  Half:
        a client polling every 5 minutes at random (Poisson) misses a
        30-minute window once in e**6 (0.25%) entry lives, a 15-minute one
        once in e**3 (5%: bench/RESULTS.md saw those cold logins).
    """

    def __init__(self, clock, ttl=3600.0, negative_ttl=5.0, max_entries=50000,
                 key=None, refresh_after=0.5):
        """
        @param clock: L{twisted.internet.interfaces.IReactorTime}.
        @param key: HMAC key (bytes); a fresh random one when L{None}.
        """
        if ttl < 0 or negative_ttl < 0:
            raise ValueError("TTLs must not be negative")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self.max_entries = int(max_entries)
        self.refresh_after = float(refresh_after)
        self._key = key if key is not None else secrets.token_bytes(32)
        # key -> (expires_at, value)
        self._entries = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def keyFor(self, *parts):
        """
        Hash credential parts into a cache key.

        Parts are length-prefixed so that C{("ab", "c")} and C{("a", "bc")}
        never collide.

        @param parts: L{str} or L{bytes} (user name, password, mechanism...).
        @return: L{bytes}, the HMAC-SHA256 digest.
        """
        mac = hmac.new(self._key, digestmod=sha256)
        for part in parts:
            raw = _asBytes(part)
            mac.update(len(raw).to_bytes(8, "big"))
            mac.update(raw)
        return mac.digest()

    def get(self, key):
        """
        @return: the cached value, L{NEGATIVE}, or L{MISS}.
        """
        entry = self._entries.get(key)
        if entry is None:
            return MISS
        expiresAt, value = entry
        if self._clock.seconds() >= expiresAt:
            del self._entries[key]
            return MISS
        self._entries.move_to_end(key)
        return value

    def due(self, key):
        """
        @return: True when C{key} holds a live positive entry older than
            C{refresh_after * ttl}: time to verify again, off the login.
        """
        entry = self._entries.get(key)
        if entry is None or entry[1] is NEGATIVE:
            return False
        remaining = entry[0] - self._clock.seconds()
        return 0 < remaining <= self.ttl * (1.0 - self.refresh_after)

    def putPositive(self, key, value, lifetime=None):
        """
        Remember a successful outcome (e.g. a L{UserRecord}) for C{ttl}, or
        for the C{lifetime} an entry of the shared level has left.
        """
        if self.ttl > 0:
            self._store(key, value, min(self.ttl, lifetime or self.ttl))

    def putNegative(self, key, lifetime=None):
        """
        Remember a refusal for C{negative_ttl} (at most C{lifetime}).  Never
        call this for an outage (L{securepop.errors.SourceUnavailable}): an
        outage is not an answer.
        """
        if self.negative_ttl > 0:
            self._store(key, NEGATIVE, min(self.negative_ttl, lifetime or self.negative_ttl))

    def discard(self, key):
        """
        Forget one entry (e.g. after the directory gave a different answer).
        """
        self._entries.pop(key, None)

    def clear(self):
        """
        Forget everything (e.g. on SIGHUP reload).
        """
        self._entries.clear()

    def _store(self, key, value, lifetime):
        self._entries[key] = (self._clock.seconds() + lifetime, value)
        self._entries.move_to_end(key)
        self._evict()

    def _evict(self):
        now = self._clock.seconds()
        # Drop expired entries at the old end first, then the oldest live
        # ones until the bound holds.
        while self._entries:
            oldestKey, (expiresAt, _) = next(iter(self._entries.items()))
            if expiresAt <= now or len(self._entries) > self.max_entries:
                del self._entries[oldestKey]
            else:
                break
