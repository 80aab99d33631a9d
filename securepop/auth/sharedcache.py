"""
The shared level of the auth cache: login outcomes in the state store, so
a client polling through several workers or nodes is verified once per TTL,
not once per process.

The key is an HMAC of the credentials under a key derived from the server
secret (C{server.secret} in the data directory, the same file on every
node): never the password, and useless to anyone without the secret.  The
value is a versioned record, MACed under a second derived key together
with the key it is stored under and the time it expires, so someone who
can only write to the store cannot make a login succeed: a forged, moved,
extended or truncated value is a miss (and logged).

Layout of a value (bytes)::

    b"spc1" + mac(32) + payload
    mac     = HMAC-SHA256(value_key, key_ascii + b"\\0" + payload)
    payload = JSON {"v": "+" | "-", "exp": <wall time>, "user": ..., "mailbox": ..., "info": {...}}
"""

from __future__ import annotations

import hmac
import json
from hashlib import sha256

from securepop import events
from securepop.auth.cache import MISS, NEGATIVE, _asBytes
from securepop.auth.records import UserRecord
from securepop.errors import StateUnavailable

KEY_PURPOSE = b"auth-cache key"
VALUE_PURPOSE = b"auth-cache value"
MAGIC = b"spc1"


class SharedAuthCache:
    """
    @param store: the L{securepop.interfaces.IStateStore}.
    @param secret: the L{securepop.serversecret.ServerSecret} every node shares.
    @param clock: L{IReactorTime} (wall time: C{exp} is compared across nodes).
    @param ttl: seconds a positive outcome is trusted; C{negative_ttl} a refusal.
    """

    def __init__(self, store, secret, clock, ttl=3600.0, negative_ttl=5.0):
        self.store = store
        self._clock = clock
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self._logged = None
        self._key_key = secret.derive(KEY_PURPOSE)
        self._value_key = secret.derive(VALUE_PURPOSE)

    def keyFor(self, *parts):
        """@return: the store key (64 hex digits) of these credential parts."""
        mac = hmac.new(self._key_key, digestmod=sha256)
        for part in parts:
            raw = _asBytes(part)
            mac.update(len(raw).to_bytes(8, "big"))
            mac.update(raw)
        return mac.hexdigest()

    def get(self, key):
        """
        @return: Deferred firing with C{(outcome, seconds left)}: a
            L{UserRecord}, L{NEGATIVE} or L{MISS} (then C{None}).  It never
            fails: an outage is a miss (the source answers instead).
        """
        d = self.store.cache_get(key)
        d.addCallback(self._decode, key)
        d.addErrback(self._unavailable, "get")
        return d

    def putPositive(self, key, record):
        if self.ttl > 0:
            payload = _payload("+", self._clock.seconds() + self.ttl, record)
            if payload is not None:
                self._put(key, payload, self.ttl)

    def putNegative(self, key):
        if self.negative_ttl > 0:
            self._put(key, _payload("-", self._clock.seconds() + self.negative_ttl),
                      self.negative_ttl)

    def discard(self, key):
        self.store.cache_forget(key).addErrback(self._unavailable, "forget")

    def _put(self, key, payload, ttl):
        value = MAGIC + self._mac(key, payload) + payload
        self.store.cache_put(key, value, ttl).addErrback(self._unavailable, "put")

    def _mac(self, key, payload):
        return hmac.new(self._value_key, key.encode("ascii") + b"\0" + payload,
                        sha256).digest()

    def _decode(self, value, key):
        if value is None:
            return MISS, None
        try:
            if not value.startswith(MAGIC) or len(value) < len(MAGIC) + 32:
                raise ValueError("not a cache record")
            mac, payload = value[len(MAGIC):len(MAGIC) + 32], value[len(MAGIC) + 32:]
            if not hmac.compare_digest(mac, self._mac(key, payload)):
                raise ValueError("bad MAC")
            data = json.loads(payload)
            left = float(data["exp"]) - self._clock.seconds()
            if left <= 0:
                return MISS, None
            if data["v"] == "-":
                return NEGATIVE, left
            return UserRecord(data["user"], data.get("mailbox"), dict(data.get("info") or {})), left
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            events.emit("state.cache_rejected", "warn", store=self.store.kind, reason=str(e))
            return MISS, None

    def _unavailable(self, failure, operation):
        failure.trap(StateUnavailable)
        now = self._clock.seconds()
        if self._logged is None or now - self._logged >= 60.0:     # once a minute at most
            self._logged = now
            events.emit("state.cache_unavailable", "warn", store=self.store.kind,
                        operation=operation, error=failure.getErrorMessage())
        return (MISS, None) if operation == "get" else None


def _payload(kind, expires, record=None):
    data = {"v": kind, "exp": round(expires, 3)}
    if record is not None:
        data.update(user=record.username, mailbox=record.mailbox, info=record.info)
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")
    except (TypeError, ValueError):
        return None     # a record that does not serialise stays in this process only
