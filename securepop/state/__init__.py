"""
Shared state: what must be one across workers and nodes
(L{securepop.interfaces.IStateStore}).

Backends: C{memory} (one process, the embedded default), C{redis}
(workers and nodes sharing one Redis), C{supervisor} (workers of one host
sharing their supervisor's memory store when no C{[state]} is set).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class LoginState:
    """
    What a credentials check needs to know first, in one read.

    @ivar failures: failed checks counted for the address.
    @ivar last_failure: wall time of the address's last failure (0.0: none).
    @ivar user_failures: the user's failures within the lockout window.
    @ivar user_oldest: wall time of the oldest of those (0.0: none).
    """

    failures: int = 0
    last_failure: float = 0.0
    user_failures: int = 0
    user_oldest: float = 0.0


CLEAN = LoginState()
