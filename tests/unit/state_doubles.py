"""
A small per-process L{IStateStore} double for the outage guard's tests:
answers at once, records what it was asked, keeps the leases it holds.
"""

from twisted.internet import defer
from zope.interface import implementer

from securepop.interfaces import IStateStore
from securepop.state import LoginState


@implementer(IStateStore)
class LocalStore:
    kind = "memory"
    lease_ttl = 30.0

    def __init__(self):
        self.calls = []
        self.leases = set()
        self.turns = {}
        self.maildrops = {}
        self.cache = {}
        self.failures = {}

    def _note(self, name, *args):
        self.calls.append((name,) + args)

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def acquire(self, lease, counts):
        self._note("acquire", lease)
        self.leases.add(lease)
        return defer.succeed(None)

    def release(self, lease):
        self._note("release", lease)
        self.leases.discard(lease)
        return defer.succeed(None)

    def count(self, scope, key):
        self._note("count", scope, key)
        return defer.succeed(len(self.leases))

    def login_state(self, address_key, username):
        self._note("login_state", address_key)
        return defer.succeed(LoginState(failures=self.failures.get(address_key, 0)))

    def record_failure(self, address_key, username, forget_after, window):
        self._note("record_failure", address_key)
        self.failures[address_key] = self.failures.get(address_key, 0) + 1
        return self.login_state(address_key, username)

    def record_success(self, address_key, username):
        self._note("record_success", address_key)
        self.failures.pop(address_key, None)
        return defer.succeed(None)

    def claim_turn(self, address_key, holder, ttl):
        self._note("claim_turn", address_key, holder)
        return defer.succeed(self.turns.setdefault(address_key, holder) == holder)

    def release_turn(self, address_key, holder):
        self._note("release_turn", address_key, holder)
        if self.turns.get(address_key) == holder:
            del self.turns[address_key]
        return defer.succeed(None)

    def cache_get(self, key):
        self._note("cache_get", key)
        return defer.succeed(self.cache.get(key))

    def cache_put(self, key, value, ttl):
        self._note("cache_put", key)
        self.cache[key] = value
        return defer.succeed(None)

    def cache_forget(self, key):
        self._note("cache_forget", key)
        self.cache.pop(key, None)
        return defer.succeed(None)

    def acquire_maildrop(self, username, holder):
        self._note("acquire_maildrop", username, holder)
        return defer.succeed(self.maildrops.setdefault(username, holder) == holder)

    def release_maildrop(self, username, holder):
        self._note("release_maildrop", username, holder)
        if self.maildrops.get(username) == holder:
            del self.maildrops[username]
        return defer.succeed(None)
