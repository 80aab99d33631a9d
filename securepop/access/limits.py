"""
Connection limits: in total, per client address, per user after login.

Each successful acquire returns a L{Lease}; releasing it is idempotent, so
the protocol can release from every disconnect path (connectionLost,
timeout, QUIT, a failed login, an exception) without counting twice.  The
recommended pattern: keep the leases on the protocol and release them all
in C{connectionLost}, which Twisted calls exactly once for every
connection that was made.

IPv6 clients are counted per prefix (C{ipv6PrefixLength}, default /64):
one host usually owns a whole /64, so counting single IPv6 addresses
would not limit it at all.  A limit of 0 means unlimited.
"""

from __future__ import annotations

import ipaddress

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


class Lease:
    """One counted slot; L{release} gives it back exactly once."""

    def __init__(self, onRelease):
        self._onRelease = onRelease

    @property
    def released(self) -> bool:
        return self._onRelease is None

    def release(self):
        onRelease, self._onRelease = self._onRelease, None
        if onRelease is not None:
            onRelease()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


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
        return ConnectionLimits.describe(self)


class ConnectionLimits:
    """
    Counters for the three limits.  Not thread-safe: use on the reactor
    thread.
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
        self.connections = 0
        self._perAddress: dict = {}
        self._perUser: dict = {}

    def addressKey(self, address):
        """The key an address is counted under (its /64 for IPv6)."""
        ip = normaliseAddress(address)
        if ip.version == 6 and self.ipv6PrefixLength < 128:
            return ipaddress.IPv6Network(f"{ip}/{self.ipv6PrefixLength}", strict=False)
        return ip

    def connectionsFrom(self, address) -> int:
        return self._perAddress.get(self.addressKey(address), 0)

    def sessionsOf(self, username) -> int:
        return self._perUser.get(username, 0)

    @property
    def addressesCounted(self) -> int:
        return len(self._perAddress)

    def acquireConnection(self, address) -> Lease:
        """
        Count a new connection from C{address} (the real client address).

        @raise LimitExceeded: the total or the per-address limit is reached;
            nothing was counted.
        @raise ValueError: C{address} is not an IP address.
        """
        key = self.addressKey(address)
        if self.maxConnections and self.connections >= self.maxConnections:
            raise LimitExceeded(TOTAL)
        current = self._perAddress.get(key, 0)
        if self.maxPerIP and current >= self.maxPerIP:
            raise LimitExceeded(PER_IP, str(key))
        self.connections += 1
        self._perAddress[key] = current + 1

        def release():
            self.connections -= 1
            left = self._perAddress[key] - 1
            if left:
                self._perAddress[key] = left
            else:
                del self._perAddress[key]

        return Lease(release)

    def acquireUser(self, username) -> Lease:
        """
        Count a logged-in session of C{username} (answer C{-ERR [IN-USE]}
        when it fails).

        @raise LimitExceeded: the per-user limit is reached.
        """
        current = self._perUser.get(username, 0)
        if self.maxPerUser and current >= self.maxPerUser:
            raise LimitExceeded(PER_USER, username)
        self._perUser[username] = current + 1

        def release():
            left = self._perUser[username] - 1
            if left:
                self._perUser[username] = left
            else:
                del self._perUser[username]

        return Lease(release)

    def describe(self) -> list:
        def show(value):
            return str(value) if value else "unlimited"

        return [
            f"max_connections: {show(self.maxConnections)}",
            f"max_connections_per_ip: {show(self.maxPerIP)}"
            f" (IPv6 counted per /{self.ipv6PrefixLength})",
            f"max_connections_per_user: {show(self.maxPerUser)}",
        ]
