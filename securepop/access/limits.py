"""
Connection limits: in total, per client address, per user after login.

The limits are rules (L{LimitRule}); the counts live in the state store
(L{securepop.interfaces.IStateStore.acquire}), so they hold across workers
and nodes that share one.  A session takes its connection slot before the
greeting and adds its user slot after the login under the same lease
(L{securepop.state.slots.SlotLease}), and gives both back once, from
C{connectionLost}, which Twisted calls exactly once for every connection
that was made.

IPv6 clients are counted per prefix (C{ipv6PrefixLength}, default /64):
one host usually owns a whole /64, so counting single IPv6 addresses
would not limit it at all.  A limit of 0 means unlimited.
"""

from __future__ import annotations

from securepop.access.rules import normaliseAddress
from securepop.auth.penalty import address_key

TOTAL = "max_connections"
PER_IP = "max_connections_per_ip"
PER_USER = "max_connections_per_user"


class LimitExceeded(Exception):
    """
    A limit is reached; C{limit} names it (the TOML key), C{key} is the
    address or user it was counted for (for logs only).
    """

    def __init__(self, limit, key=None):
        self.limit, self.key = limit, key
        super().__init__(f"{limit} reached" + (f" for {key}" if key is not None else ""))


class LimitRule:
    """
    The three limits (the TOML keys) and the IPv6 prefix a client is
    counted by; the counts live in the state store
    (L{securepop.interfaces.IStateStore.acquire}).  0 means unlimited:
    counted, never refused.
    """

    def __init__(self, max_connections=0, max_per_ip=0, max_per_user=0, ipv6PrefixLength=64):
        for name, value in (
            ("max_connections", max_connections),
            ("max_per_ip", max_per_ip),
            ("max_per_user", max_per_user),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0 (0 = unlimited)")
        if not 0 < ipv6PrefixLength <= 128:
            raise ValueError("ipv6PrefixLength must be between 1 and 128")
        self.maxConnections = max_connections
        self.maxPerIP = max_per_ip
        self.maxPerUser = max_per_user
        self.ipv6PrefixLength = ipv6PrefixLength

    def addressKey(self, address):
        """The key an address is counted under: the IPv4 address, or its IPv6 /64."""
        normaliseAddress(address)       # ValueError for what is no address
        return address_key(address, self.ipv6PrefixLength)

    def connectionCounts(self, address):
        """The counters a new connection from C{address} takes a slot in."""
        return [("total", "*", self.maxConnections),
                ("ip", self.addressKey(address), self.maxPerIP)]

    def userCounts(self, username):
        """The counter a logged-in session of C{username} takes a slot in."""
        return [("user", username, self.maxPerUser)]

    def describe(self) -> list:
        def show(value):
            return str(value) if value else "unlimited"

        return [
            f"max_connections: {show(self.maxConnections)}",
            f"max_connections_per_ip: {show(self.maxPerIP)}"
            f" (IPv6 counted per /{self.ipv6PrefixLength})",
            f"max_connections_per_user: {show(self.maxPerUser)}",
        ]
