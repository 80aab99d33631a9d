"""
Brute-force defence: a failure delay per client address, and an optional
lockout per user.

The delay grows only for the address that fails (2 s doubling to 15 s by
default) and never slows anyone else; IPv6 clients are grouped by prefix
(/64), because one host owns a whole /64 and could otherwise rotate
addresses.  This module is the arithmetic; the failures themselves live in
the state store (L{securepop.interfaces.IStateStore}: bounded tables, one
read per login), so they count across workers and nodes that share it.
"""

import functools
import ipaddress

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
