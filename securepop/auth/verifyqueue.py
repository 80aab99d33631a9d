"""
Password hashing on its own bounded pool, fair across clients.

An argon2 verification costs tens of milliseconds of CPU and megabytes of
memory.  On the pool that opens mailboxes and runs QUIT deletions, one
address could queue hundreds of checks and stall every login and every QUIT.
Here hashing has its own threads (sized to the cores), the line is
bounded in all and per client, clients take turns (round robin over their
addresses: the client served least recently goes next, so a flood from
one address delays another address by at most one verification per
flooding address), a verification whose client has
gone is dropped before it runs (L{ALIVE} says so, or the Deferred is
cancelled), while one that has started runs to its end and its result
counts (a client cannot abandon a guess to dodge the penalty), and when the line is
full the answer is C{[SYS/TEMP]} at once instead of a timeout.

Background renewals of auth-cache entries (L{PURPOSE} "renewal") never
take a login's thread: they run one at a time on a thread of their own at
a lower CPU priority (L{RENEWAL_NICE}), so a polling client's login is not
kept waiting behind another user's renewal; when too many wait, a renewal
is dropped (its entry serves until its TTL, then the next login is cold).

The client a verification is for comes from L{CLIENT}, a context variable
the session sets around its call into the portal, so the credential
source's C{run_blocking(f, *args)} signature needs no client argument.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections import deque

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from securepop.errors import VerificationBusy

CLIENT = contextvars.ContextVar("securepop_verification_client", default="-")
#: A callable telling whether the client still waits for the answer.
ALIVE = contextvars.ContextVar("securepop_verification_alive", default=None)
#: "login" (a client waits for it) or "renewal" (an auth-cache entry renewed
#: in the background): only a login's wait is a login's latency.
PURPOSE = contextvars.ContextVar("securepop_verification_purpose", default="login")

DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_PER_CLIENT = 16
#: The renewal thread runs under SCHED_IDLE (only when nothing else of the
#: host wants the CPU: a renewal never delays a login, and on a busy core it
#: waits, its entry serving meanwhile); where that is refused, at this nice
#: value (CFS weight 110 against a login's 1024).
RENEWAL_NICE = 10

_lowered = threading.local()


def _lower_priority():
    """Lower this thread's CPU priority once (Linux: nice is per thread)."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, RENEWAL_NICE))
    except (AttributeError, OSError):
        return      # no per-thread priority here: renewals still never take a login's thread
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass        # the nice value above stands


def _renewal(f, *args):
    _lower_priority()
    return f(*args)


def default_threads():
    """
    One hashing thread per core this process may run on (its CPU affinity,
    as C{workers = "auto"} counts them): more only adds memory, and on a
    pinned server two argon2 runs sharing one core evict each other's
    19 MiB from the CPU caches.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Job:
    __slots__ = ("f", "args", "key", "alive", "deferred", "queued_at", "state")

    def __init__(self, f, args, key, alive, queued_at):
        self.f, self.args, self.key, self.queued_at = f, args, key, queued_at
        self.alive = alive
        self.deferred = None
        self.state = "queued"     # queued | running | done | cancelled


class VerificationQueue:
    """
    A callable C{run_blocking(f, *args) -> Deferred} for credential sources.

    @param reactor: IReactorTime + IReactorThreads.
    @param threads: hashing threads (default: one per core).
    @param max_queued: verifications waiting, server-wide.
    @param max_per_client: verifications waiting or running for one client.
    @ivar metrics: an optional L{securepop.ops.metrics.Metrics} (depth and
        wait time are reported to it).
    """

    def __init__(self, reactor, threads=None, max_queued=DEFAULT_MAX_QUEUED,
                 max_per_client=DEFAULT_MAX_PER_CLIENT, name="securepop-hash"):
        self.reactor = reactor
        self.threads = threads or default_threads()
        self.max_queued = max_queued
        self.max_per_client = max_per_client
        self.pool = ThreadPool(minthreads=0, maxthreads=self.threads, name=name)
        self.renewal_pool = ThreadPool(minthreads=0, maxthreads=1, name=name + "-renewal")
        self.metrics = None
        self._renewals = 0              # renewals waiting or running
        self._lines = {}                # client -> deque of queued jobs
        self._perClient = {}            # client -> jobs queued or running
        self._queued = 0
        self._running = 0
        self._served = {}               # client -> turn it was last served in
        self._turns = 0

    @property
    def depth(self):
        """Verifications waiting for a thread now."""
        return self._queued

    @property
    def running(self):
        return self._running

    @property
    def renewals(self):
        """Background renewals waiting or running now."""
        return self._renewals

    def start(self):
        self.pool.start()
        self.renewal_pool.start()

    def stop(self):
        self.pool.stop()
        self.renewal_pool.stop()

    def __call__(self, f, *args):
        if PURPOSE.get() == "renewal":
            return self._renew(f, args)
        key = CLIENT.get()
        if self._queued >= self.max_queued:
            return defer.fail(VerificationBusy("verification queue full"))
        if self._perClient.get(key, 0) >= self.max_per_client:
            return defer.fail(VerificationBusy("too many verifications for this client"))
        job = _Job(f, args, key, ALIVE.get(), self.reactor.seconds())
        job.deferred = defer.Deferred(lambda d: self._cancel(job))
        self._lines.setdefault(key, deque()).append(job)
        self._perClient[key] = self._perClient.get(key, 0) + 1
        self._queued += 1
        self._report()
        self._dispatch()
        return job.deferred

    def _renew(self, f, args):
        """A renewal: on its own low-priority thread, never in a login's line."""
        if self._renewals >= self.max_queued:
            return defer.fail(VerificationBusy("too many renewals waiting"))
        self._renewals += 1
        if self.metrics is not None:
            self.metrics.verification_renewals.inc()

        def done(result):
            self._renewals -= 1
            return result

        d = threads.deferToThreadPool(self.reactor, self.renewal_pool, _renewal, f, *args)
        return d.addBoth(done)

    def _next_client(self):
        """The waiting client served least recently (never served first)."""
        return min(self._lines, key=lambda k: self._served.get(k, 0))

    def _dispatch(self):
        while self._running < self.threads and self._lines:
            key = self._next_client()
            line = self._lines[key]
            job = line.popleft()
            if not line:
                del self._lines[key]
            self._turns += 1
            self._served[key] = self._turns
            self._queued -= 1
            if job.alive is not None and not job.alive():
                # The client hung up while waiting: nobody wants this answer.
                self._leave(job.key)
                job.state = "cancelled"
                job.deferred.cancel()
                continue
            self._running += 1
            job.state = "running"
            if self.metrics is not None:
                self.metrics.verification_wait.observe(
                    max(0.0, self.reactor.seconds() - job.queued_at))
            d = threads.deferToThreadPool(self.reactor, self.pool, job.f, *job.args)
            d.addBoth(self._finished, job)
        self._report()

    def _finished(self, result, job):
        self._running -= 1
        self._leave(job.key)
        cancelled = job.state == "cancelled"
        job.state = "done"
        self._dispatch()
        if not cancelled:
            if isinstance(result, Failure):
                job.deferred.errback(result)
            else:
                job.deferred.callback(result)
        return None

    def _cancel(self, job):
        """The client went away: a queued job never runs; a running one is ignored."""
        if job.state == "queued":
            line = self._lines.get(job.key)
            if line is not None:
                line.remove(job)
                if not line:
                    del self._lines[job.key]
            self._queued -= 1
            self._leave(job.key)
            self._report()
        job.state = "cancelled"

    def _leave(self, key):
        n = self._perClient.get(key, 0) - 1
        if n > 0:
            self._perClient[key] = n
        else:
            self._perClient.pop(key, None)
            self._served.pop(key, None)

    def _report(self):
        if self.metrics is not None:
            self.metrics.verification_queue.set(self._queued)
