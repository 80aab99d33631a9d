"""
The state store the settings ask for: a small dispatch on the backend.
"""

from __future__ import annotations

from securepop.state import supervisor
from securepop.state.memory import MemoryStateStore
from securepop.state.outage import OutageGuard
from securepop.state.redis import from_settings as redis_from_settings

SPANS = {
    "memory": "this process only",
    "supervisor": "shared by the supervisor's workers",
    "redis": "every worker and node sharing it",
}


def build_state(settings, reactor):
    """
    @return: the L{securepop.interfaces.IStateStore} for C{settings}
        (not started): the C{memory} store unless a backend is configured.
        C{redis}: the Redis store behind an L{OutageGuard} that answers
        from a memory store of this process (or refuses) while Redis does
        not; the password file is read here, at start.  A worker given a
        channel by its supervisor (no backend other than memory): the
        supervisor's store, behind the same guard.
    """
    if settings.state.backend == "redis":
        return OutageGuard(redis_from_settings(settings, reactor), MemoryStateStore(reactor),
                           settings.state.on_outage, reactor)
    shared = supervisor.inherited_store(reactor, settings.state.timeout)
    if shared is not None:
        return OutageGuard(shared, MemoryStateStore(reactor), settings.state.on_outage, reactor)
    return MemoryStateStore(reactor)


def backend_of(settings, workers=1):
    """The C{kind} of the store for C{settings} run by C{workers} processes."""
    if settings.state.backend == "redis":
        return "redis"
    return "supervisor" if supervisor.shares_store(settings, workers) else "memory"


def describe(settings, workers=1):
    """One line for C{check-config}: which store is in force, and what it spans."""
    kind = backend_of(settings, workers)
    line = f"state: {kind} ({SPANS.get(kind, 'shared')})"
    if kind == "redis":
        state = settings.state
        where = (f"sentinels {', '.join(state.sentinels)} ({state.sentinel_master})"
                 if state.sentinels else state.url)
        line += f" at {where}, on_outage = {state.on_outage}"
    return line
