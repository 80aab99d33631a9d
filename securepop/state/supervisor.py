"""
The workers of one host share their supervisor's state store.

With C{server.workers > 1} and no C{[state]} backend other than memory,
the supervisor hosts one L{securepop.interfaces.IStateStore} (a memory
store) and serves it to each worker over Twisted AMP, one command per
store method.  A worker's store is a L{SupervisorStateStore}
(C{kind = "supervisor"}): every call goes to the supervisor and fails with
L{StateUnavailable} when no answer comes within its timeout.

The channel is a C{socketpair} made by the supervisor for each worker and
inherited by that worker as a file descriptor, like the listening sockets.
No other process can reach it (there is no path in the file system to
connect to, no umask or stale-socket race, nothing to authenticate), and
its end is exact: when a worker dies its end closes, and the supervisor
gives back at once every slot, turn and maildrop lease that worker held
(no lease TTL to wait for on one host).
"""

from __future__ import annotations

import json
import os
import socket

from twisted.internet import defer, protocol
from twisted.protocols import amp
from twisted.python import failure
from zope.interface import implementer

from securepop import events
from securepop.access.limits import LimitExceeded
from securepop.errors import StateUnavailable
from securepop.interfaces import IStateStore
from securepop.state import LoginState
from securepop.state.memory import MemoryStateStore

DEFAULT_TIMEOUT = 0.5
DEFAULT_LEASE_TTL = 30.0


# -- the wire ------------------------------------------------------------------------


class Key(amp.Argument):
    """A key or name that is either C{str} or C{bytes}, kept as it was given."""

    def toString(self, obj):
        if isinstance(obj, bytes):
            return b"b" + obj
        return b"s" + str(obj).encode("utf-8")

    def fromString(self, data):
        if data[:1] == b"b":
            return data[1:]
        return data[1:].decode("utf-8")


class LimitRefused(Exception):
    """L{LimitExceeded} on the wire: the text is C{[limit, key]} as JSON."""


_ERRORS = {LimitRefused: b"LIMIT", StateUnavailable: b"UNAVAILABLE"}
_STATE = [(b"failures", amp.Integer()), (b"last_failure", amp.Float()),
          (b"user_failures", amp.Integer()), (b"user_oldest", amp.Float())]


class Acquire(amp.Command):
    arguments = [(b"lease", Key()),
                 (b"counts", amp.AmpList([(b"scope", Key()), (b"key", Key()),
                                          (b"limit", amp.Integer())]))]
    response = []
    errors = _ERRORS


class Release(amp.Command):
    arguments = [(b"lease", Key())]
    response = []
    errors = _ERRORS


class Count(amp.Command):
    arguments = [(b"scope", Key()), (b"key", Key())]
    response = [(b"count", amp.Integer())]
    errors = _ERRORS


class GetLoginState(amp.Command):
    commandName = b"LoginState"
    arguments = [(b"address_key", Key()), (b"username", Key(optional=True))]
    response = _STATE
    errors = _ERRORS


class RecordFailure(amp.Command):
    arguments = [(b"address_key", Key()), (b"username", Key(optional=True)),
                 (b"forget_after", amp.Float()), (b"window", amp.Float())]
    response = _STATE
    errors = _ERRORS


class RecordSuccess(amp.Command):
    arguments = [(b"address_key", Key()), (b"username", Key(optional=True))]
    response = []
    errors = _ERRORS


class ClaimTurn(amp.Command):
    arguments = [(b"address_key", Key()), (b"holder", Key()), (b"ttl", amp.Float())]
    response = [(b"granted", amp.Boolean())]
    errors = _ERRORS


class ReleaseTurn(amp.Command):
    arguments = [(b"address_key", Key()), (b"holder", Key())]
    response = []
    errors = _ERRORS


class CacheGet(amp.Command):
    arguments = [(b"key", Key())]
    response = [(b"value", amp.String(optional=True))]
    errors = _ERRORS


class CachePut(amp.Command):
    arguments = [(b"key", Key()), (b"value", amp.String()), (b"ttl", amp.Float())]
    response = []
    errors = _ERRORS


class CacheForget(amp.Command):
    arguments = [(b"key", Key())]
    response = []
    errors = _ERRORS


class AcquireMaildrop(amp.Command):
    arguments = [(b"username", Key()), (b"holder", Key())]
    response = [(b"granted", amp.Boolean())]
    errors = _ERRORS


class ReleaseMaildrop(amp.Command):
    arguments = [(b"username", Key()), (b"holder", Key())]
    response = []
    errors = _ERRORS


def _state_box(state):
    return {"failures": state.failures, "last_failure": float(state.last_failure),
            "user_failures": state.user_failures, "user_oldest": float(state.user_oldest)}


# -- the supervisor's side ------------------------------------------------------------------


class StateChannel(amp.AMP):
    """
    One worker's channel to the supervisor's store.  Remembers what the
    worker holds, and gives it all back when the channel closes.
    """

    def __init__(self, store, worker=None):
        super().__init__()
        self.store = store
        self.worker = worker
        self.leases = set()
        self.turns = set()
        self.maildrops = set()

    def _answer(self, call, *args):
        """The store's answer; a failure other than the two on the wire is StateUnavailable."""
        def translate(f):
            if f.check(LimitExceeded):
                key = f.value.key
                raise LimitRefused(json.dumps([f.value.limit, None if key is None else str(key)]))
            if not f.check(StateUnavailable):
                events.emit("state.error", "error", worker=self.worker,
                            error=f.getErrorMessage())
                raise StateUnavailable(f.getErrorMessage())
            return f

        return defer.maybeDeferred(call, *args).addErrback(translate)

    @Acquire.responder
    def acquire(self, lease, counts):
        counts = [(c["scope"], c["key"], c["limit"]) for c in counts]

        def taken(_):
            self.leases.add(lease)
            return {}

        return self._answer(self.store.acquire, lease, counts).addCallback(taken)

    @Release.responder
    def release(self, lease):
        self.leases.discard(lease)
        return self._answer(self.store.release, lease).addCallback(lambda _: {})

    @Count.responder
    def count(self, scope, key):
        return self._answer(self.store.count, scope, key).addCallback(
            lambda n: {"count": int(n)})

    @GetLoginState.responder
    def login_state(self, address_key, username=None):
        return self._answer(self.store.login_state, address_key, username).addCallback(
            _state_box)

    @RecordFailure.responder
    def record_failure(self, address_key, forget_after, window, username=None):
        return self._answer(self.store.record_failure, address_key, username,
                            forget_after, window).addCallback(_state_box)

    @RecordSuccess.responder
    def record_success(self, address_key, username=None):
        return self._answer(self.store.record_success, address_key,
                            username).addCallback(lambda _: {})

    @ClaimTurn.responder
    def claim_turn(self, address_key, holder, ttl):
        def claimed(granted):
            if granted:
                self.turns.add((address_key, holder))
            return {"granted": bool(granted)}

        return self._answer(self.store.claim_turn, address_key, holder, ttl).addCallback(
            claimed)

    @ReleaseTurn.responder
    def release_turn(self, address_key, holder):
        self.turns.discard((address_key, holder))
        return self._answer(self.store.release_turn, address_key, holder).addCallback(
            lambda _: {})

    @CacheGet.responder
    def cache_get(self, key):
        return self._answer(self.store.cache_get, key).addCallback(
            lambda value: {"value": value})

    @CachePut.responder
    def cache_put(self, key, value, ttl):
        return self._answer(self.store.cache_put, key, value, ttl).addCallback(
            lambda _: {})

    @CacheForget.responder
    def cache_forget(self, key):
        return self._answer(self.store.cache_forget, key).addCallback(lambda _: {})

    @AcquireMaildrop.responder
    def acquire_maildrop(self, username, holder):
        def claimed(granted):
            if granted:
                self.maildrops.add((username, holder))
            return {"granted": bool(granted)}

        return self._answer(self.store.acquire_maildrop, username, holder).addCallback(
            claimed)

    @ReleaseMaildrop.responder
    def release_maildrop(self, username, holder):
        self.maildrops.discard((username, holder))
        return self._answer(self.store.release_maildrop, username, holder).addCallback(
            lambda _: {})

    def connectionLost(self, reason):
        """The worker is gone: everything it held goes back now."""
        super().connectionLost(reason)
        held = len(self.leases) + len(self.turns) + len(self.maildrops)
        calls = ([(self.store.release, (lease,)) for lease in self.leases]
                 + [(self.store.release_turn, turn) for turn in self.turns]
                 + [(self.store.release_maildrop, drop) for drop in self.maildrops])
        self.leases, self.turns, self.maildrops = set(), set(), set()
        for call, args in calls:
            defer.maybeDeferred(call, *args).addErrback(
                lambda f: events.emit("state.error", "error", worker=self.worker,
                                      error=f.getErrorMessage()))
        if held:
            events.emit("state.worker_released", worker=self.worker, held=held)


class StateHub:
    """
    The supervisor's store and one channel per worker.

    @param store: the L{IStateStore} the workers share (a memory store).
    @param reactor: provides C{IReactorSocket} (C{adoptStreamConnection}).
    """

    def __init__(self, store, reactor):
        self.store = store
        self.reactor = reactor
        self.channels = {}

    def start(self):
        return defer.maybeDeferred(self.store.start)

    def stop(self):
        for channel in list(self.channels.values()):
            if channel.transport is not None:
                channel.transport.loseConnection()
        return defer.maybeDeferred(self.store.stop)

    def channel_for(self, worker):
        """
        A new channel for worker C{worker} (replacing its old one).

        @return: the worker's end, a C{socket.socket}: pass its fd to the
            worker, then close it here.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            channel = StateChannel(self.store, worker)
            factory = protocol.Factory.forProtocol(lambda: channel)
            self.reactor.adoptStreamConnection(mine.fileno(), socket.AF_UNIX, factory)
        except BaseException:
            theirs.close()
            raise
        finally:
            mine.close()   # the reactor holds its own duplicate
        self.channels[worker] = channel
        return theirs


# -- the worker's side ------------------------------------------------------------------------


class _WorkerChannel(amp.AMP):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.store._lost(self)


def _unavailable(f):
    if f.check(LimitRefused):
        limit, key = json.loads(f.value.args[0])
        raise LimitExceeded(limit, key)
    if f.check(StateUnavailable):
        return f
    raise StateUnavailable(f"the supervisor did not answer: {f.getErrorMessage()}")


@implementer(IStateStore)
class SupervisorStateStore:
    """
    A worker's view of its supervisor's store.

    @param reactor: provides C{IReactorTime} (the timeouts) and, without
        C{connect}, C{IReactorSocket}.
    @param fd: the inherited channel (a socketpair end).
    @param timeout: seconds one call may take before it fails with
        L{StateUnavailable}.
    @param lease_ttl: the supervisor's store's TTL (a dead worker's leases
        go back at once when its channel closes).
    @param connect: for tests, instead of C{fd}: a callable taking a
        protocol factory and returning a Deferred that fires once connected.
    """

    kind = "supervisor"

    def __init__(self, reactor, fd=None, timeout=DEFAULT_TIMEOUT,
                 lease_ttl=DEFAULT_LEASE_TTL, connect=None):
        self.reactor = reactor
        self.fd = fd
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self._connect = connect or self._adopt
        self._channel = None
        self._stopping = False

    def _adopt(self, factory):
        self.reactor.adoptStreamConnection(self.fd, socket.AF_UNIX, factory)
        os.close(self.fd)   # the reactor holds its own duplicate
        return defer.succeed(None)

    def start(self):
        channel = _WorkerChannel(self)
        d = self._connect(protocol.Factory.forProtocol(lambda: channel))

        def connected(_):
            self._channel = channel

        return defer.maybeDeferred(lambda: d).addCallback(connected)

    def stop(self):
        """Closing the channel gives back everything this worker holds."""
        self._stopping = True
        channel, self._channel = self._channel, None
        if channel is not None and channel.transport is not None:
            channel.transport.loseConnection()
        return defer.succeed(None)

    def _lost(self, channel):
        if channel is self._channel:
            self._channel = None
            if not self._stopping:
                events.emit("state.channel_closed", "error", store=self.kind)

    def _call(self, command, undo=None, **arguments):
        """
        One call with its timeout.  C{undo} gives back what the supervisor
        grants in an answer that comes after the call timed out.
        """
        if self._channel is None:
            return defer.fail(StateUnavailable("no channel to the supervisor"))
        channel = self._channel
        answer = defer.Deferred()

        def deliver(result):
            # AMP drops the channel when a call's own Deferred ends in a
            # failure: hand the outcome on and end that chain with None.
            late = answer.called
            if not late and isinstance(result, failure.Failure):
                answer.errback(result)
            elif not late:
                answer.callback(result)
            elif undo is not None and not isinstance(result, failure.Failure):
                channel.callRemote(undo[0], **undo[1]).addErrback(lambda _: None)

        def timed_out(f):
            f.trap(defer.TimeoutError)
            raise StateUnavailable(f"the supervisor did not answer in {self.timeout}s")

        channel.callRemote(command, **arguments).addBoth(deliver)
        answer.addTimeout(self.timeout, self.reactor)
        answer.addErrback(timed_out)
        return answer.addErrback(_unavailable)

    def acquire(self, lease, counts):
        counts = [{"scope": s, "key": k, "limit": int(limit)} for s, k, limit in counts]
        return self._call(Acquire, (Release, {"lease": lease}), lease=lease,
                          counts=counts).addCallback(lambda _: None)

    def release(self, lease):
        return self._call(Release, lease=lease).addCallback(lambda _: None)

    def count(self, scope, key):
        return self._call(Count, scope=scope, key=key).addCallback(lambda r: r["count"])

    def login_state(self, address_key, username):
        return self._call(GetLoginState, address_key=address_key,
                          username=username).addCallback(lambda r: LoginState(**r))

    def record_failure(self, address_key, username, forget_after, window):
        return self._call(RecordFailure, address_key=address_key, username=username,
                          forget_after=float(forget_after),
                          window=float(window)).addCallback(lambda r: LoginState(**r))

    def record_success(self, address_key, username):
        return self._call(RecordSuccess, address_key=address_key,
                          username=username).addCallback(lambda _: None)

    def claim_turn(self, address_key, holder, ttl):
        undo = (ReleaseTurn, {"address_key": address_key, "holder": holder})
        return self._call(ClaimTurn, undo, address_key=address_key, holder=holder,
                          ttl=float(ttl)).addCallback(lambda r: r["granted"])

    def release_turn(self, address_key, holder):
        return self._call(ReleaseTurn, address_key=address_key,
                          holder=holder).addCallback(lambda _: None)

    def cache_get(self, key):
        return self._call(CacheGet, key=key).addCallback(lambda r: r.get("value"))

    def cache_put(self, key, value, ttl):
        return self._call(CachePut, key=key, value=value,
                          ttl=float(ttl)).addCallback(lambda _: None)

    def cache_forget(self, key):
        return self._call(CacheForget, key=key).addCallback(lambda _: None)

    def acquire_maildrop(self, username, holder):
        undo = (ReleaseMaildrop, {"username": username, "holder": holder})
        return self._call(AcquireMaildrop, undo, username=username,
                          holder=holder).addCallback(lambda r: r["granted"])

    def release_maildrop(self, username, holder):
        return self._call(ReleaseMaildrop, username=username,
                          holder=holder).addCallback(lambda _: None)


# -- which store a worker uses ------------------------------------------------------------

_inherited = []


def inherit_channel(fd):
    """A worker process was given the channel C{fd} by its supervisor."""
    _inherited[:] = [fd]


def inherited_store(reactor, timeout=DEFAULT_TIMEOUT):
    """
    @return: a L{SupervisorStateStore} on the channel this worker
        inherited (once), or None when it has none (not a worker, or the
        supervisor shares no store because C{[state]} names another backend).
    """
    if not _inherited:
        return None
    return SupervisorStateStore(reactor, fd=_inherited.pop(), timeout=timeout)


def shares_store(settings, workers):
    """
    Whether the supervisor of C{workers} processes shares its store: more
    than one worker, and no C{[state]} backend other than memory.
    """
    return workers > 1 and settings.state.backend == "memory"


def hub_for(settings, reactor, workers):
    """The supervisor's L{StateHub} for C{settings}, or None when it shares none."""
    if not shares_store(settings, workers):
        return None
    return StateHub(MemoryStateStore(reactor, lease_ttl=settings.state.lease_ttl), reactor)
