"""
Connection limits: the rules of L{securepop.access.limits.LimitRule}
counted in a memory state store through L{SlotLease}s, as a session takes
them.
"""

import itertools

import pytest
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.internet import error

from securepop.access.limits import (
    PER_IP,
    PER_USER,
    TOTAL,
    LimitExceeded,
    LimitRule,
)
from securepop.state.memory import MemoryStateStore
from securepop.state.slots import SlotLease


def now(d):
    out = []
    d.addBoth(out.append)
    if isinstance(out[0], failure.Failure):
        out[0].raiseException()
    return out[0]


class ConnectionLimits:
    """The rule and a store, with the questions these tests ask of the counts."""

    def __init__(self, *args, **kwargs):
        self.rule = LimitRule(*args, **kwargs)
        self.store = MemoryStateStore(Clock())
        self._ids = itertools.count()

    def acquireConnection(self, address):
        lease = SlotLease(self.store, f"lease-{next(self._ids)}")
        now(lease.add(self.rule.connectionCounts(address)))
        return lease

    def acquireUser(self, username, lease=None):
        lease = lease or SlotLease(self.store, f"lease-{next(self._ids)}")
        now(lease.add(self.rule.userCounts(username)))
        return lease

    @property
    def connections(self):
        return now(self.store.count("total", "*"))

    def connectionsFrom(self, address):
        return now(self.store.count("ip", self.rule.addressKey(address)))

    def sessionsOf(self, username):
        return now(self.store.count("user", username))

    @property
    def addressesCounted(self):
        return sum(1 for scope, _ in self.store._counters if scope == "ip")

    def describe(self):
        return self.rule.describe()


def test_per_ip_limit_holds_and_other_addresses_are_served():
    limits = ConnectionLimits(max_connections=5000, max_per_ip=20)
    leases, refused = [], 0
    for _ in range(500):
        try:
            leases.append(limits.acquireConnection("127.0.0.9"))
        except LimitExceeded as e:
            assert e.limit == PER_IP
            refused += 1
    assert len(leases) == 20 and refused == 480
    assert limits.connectionsFrom("127.0.0.9") == 20
    other = limits.acquireConnection("127.0.0.10")
    assert limits.connections == 21
    other.release()
    leases.pop().release()
    assert limits.acquireConnection("127.0.0.9")  # a slot came free


def test_total_limit():
    limits = ConnectionLimits(max_connections=3)
    leases = [limits.acquireConnection(f"127.0.0.{i}") for i in range(3)]
    with pytest.raises(LimitExceeded) as info:
        limits.acquireConnection("127.0.0.50")
    assert info.value.limit == TOTAL
    leases[0].release()
    limits.acquireConnection("127.0.0.50")


def test_refused_acquire_counts_nothing():
    limits = ConnectionLimits(max_connections=10, max_per_ip=1)
    limits.acquireConnection("127.0.0.1")
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            limits.acquireConnection("127.0.0.1")
    assert limits.connections == 1
    assert limits.connectionsFrom("127.0.0.1") == 1


def test_release_is_idempotent_and_never_negative():
    limits = ConnectionLimits(max_per_ip=2)
    lease = limits.acquireConnection("127.0.0.1")
    keep = limits.acquireConnection("127.0.0.1")
    lease.release()
    lease.release()
    lease.release()
    assert lease.released and not keep.released
    assert limits.connections == 1
    assert limits.connectionsFrom("127.0.0.1") == 1
    keep.release()
    assert limits.connections == 0
    assert limits.addressesCounted == 0  # no entry left behind


def test_lease_as_context_manager_releases_on_exception():
    limits = ConnectionLimits()
    with pytest.raises(RuntimeError):
        with limits.acquireConnection("127.0.0.1"):
            assert limits.connections == 1
            raise RuntimeError("handler failed")
    assert limits.connections == 0


def test_zero_means_unlimited():
    limits = ConnectionLimits(0, 0, 0)
    for _ in range(1000):
        limits.acquireConnection("127.0.0.1")
        limits.acquireUser("alice")
    assert limits.connections == 1000 and limits.sessionsOf("alice") == 1000


def test_ipv4_mapped_counts_as_ipv4():
    limits = ConnectionLimits(max_per_ip=1)
    limits.acquireConnection("127.0.0.1")
    with pytest.raises(LimitExceeded):
        limits.acquireConnection("::ffff:127.0.0.1")


def test_ipv6_counted_per_prefix():
    limits = ConnectionLimits(max_per_ip=2)
    limits.acquireConnection("2001:db8:1:2::1")
    limits.acquireConnection("2001:db8:1:2::ffff")
    with pytest.raises(LimitExceeded):
        limits.acquireConnection("2001:db8:1:2:abcd::1")  # same /64
    limits.acquireConnection("2001:db8:1:3::1")  # another /64
    exact = ConnectionLimits(max_per_ip=1, ipv6PrefixLength=128)
    exact.acquireConnection("::1")
    exact.acquireConnection("::2")


def test_per_user_limit():
    limits = ConnectionLimits(max_per_user=2)
    a = limits.acquireUser("alice")
    limits.acquireUser("alice")
    with pytest.raises(LimitExceeded) as info:
        limits.acquireUser("alice")
    assert info.value.limit == PER_USER
    limits.acquireUser("bob")
    a.release()
    a.release()
    assert limits.sessionsOf("alice") == 1
    limits.acquireUser("alice")


def test_bad_address_and_bad_configuration():
    limits = ConnectionLimits(max_per_ip=1)
    with pytest.raises(ValueError):
        limits.acquireConnection("not-an-ip")
    assert limits.connections == 0
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError):
            LimitRule(max_connections=bad)
    with pytest.raises(ValueError):
        LimitRule(ipv6PrefixLength=0)


def test_describe():
    text = "\n".join(ConnectionLimits(5000, 20, 0).describe())
    assert "max_connections: 5000" in text
    assert "max_connections_per_ip: 20" in text
    assert "max_connections_per_user: unlimited" in text


class CountedProtocol(protocol.Protocol):
    """Holds leases the way the POP3 protocol should: released in connectionLost."""

    def __init__(self, limits):
        self.limits = limits
        self.leases = []

    def connectionMade(self):
        try:
            self.leases.append(self.limits.acquireConnection(self.transport.getPeer().host))
        except LimitExceeded:
            self.transport.loseConnection()

    def login(self, user):
        self.limits.acquireUser(user, self.leases[0])   # the same lease

    def quit(self):
        for lease in self.leases:
            lease.release()
        self.transport.loseConnection()

    def connectionLost(self, reason):
        for lease in self.leases:
            lease.release()


@pytest.mark.parametrize("ending", ["quit", "reset", "timeout", "refused-twice"])
def test_counts_return_to_zero_on_every_disconnect_path(ending):
    limits = ConnectionLimits(max_connections=10, max_per_ip=2, max_per_user=1)
    protocols = []
    for _ in range(3):
        p = CountedProtocol(limits)
        p.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.3", 1)))
        protocols.append(p)
    assert limits.connections == 2  # the third was refused
    assert protocols[2].transport.disconnecting
    protocols[0].login("alice")
    if ending == "quit":
        protocols[0].quit()
        protocols[0].connectionLost(failure.Failure(error.ConnectionDone()))
    elif ending == "reset":
        protocols[0].connectionLost(failure.Failure(error.ConnectionLost()))
    elif ending == "timeout":
        protocols[0].transport.loseConnection()
        protocols[0].connectionLost(failure.Failure(error.TimeoutError()))
    else:
        protocols[0].connectionLost(failure.Failure(error.ConnectionDone()))
        protocols[0].connectionLost(failure.Failure(error.ConnectionDone()))
    for p in protocols[1:]:
        p.connectionLost(failure.Failure(error.ConnectionDone()))
    assert limits.connections == 0
    assert limits.sessionsOf("alice") == 0
    assert limits.addressesCounted == 0
