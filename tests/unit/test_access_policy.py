"""Tests for securepop.access.policy.AccessPolicy (in memory, fake clock)."""

import ipaddress

import pytest
from twisted.internet import defer, task
from twisted.names import dns, error as dnserror
from zope.interface.verify import verifyObject

from securepop.access.dns import (
    CONFIRMED,
    FAILED,
    NO_NAME,
    UNCONFIRMED,
    AccessResolver,
    HostAddresses,
    ReverseResult,
)
from securepop.access.policy import AccessPolicy
from securepop.access.rules import Decision
from securepop.interfaces import IAccessPolicy


class StubDNS:
    """The two AccessResolver methods the policy calls, answered from dicts."""

    timeout = 2.0
    maxConcurrentLookups = 32

    def __init__(self, reverse=None, hosts=None):
        self.reverse = reverse or {}
        self.hosts = hosts or {}
        self.reverseCalls = []

    def reverseLookup(self, address):
        self.reverseCalls.append(str(address))
        return defer.succeed(
            self.reverse.get(str(address), ReverseResult(NO_NAME, None, "no PTR record"))
        )

    def resolveHost(self, name):
        return defer.succeed(self.hosts.get(name, HostAddresses(frozenset(), 60)))


def fired(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def check(policy, address):
    decision = fired(policy.check(address))
    assert isinstance(decision, Decision)
    return decision


@pytest.fixture
def stub():
    return StubDNS(
        reverse={
            "127.0.0.5": ReverseResult(CONFIRMED, "trusted.example.test", "ok"),
            "127.0.0.6": ReverseResult(UNCONFIRMED, None, "PTR name evil.example.test does not resolve back"),
            "127.0.0.8": ReverseResult(FAILED, None, "no DNS answer within 2 s"),
            "127.0.0.9": ReverseResult(CONFIRMED, "other.example.org", "ok"),
        },
        hosts={"pc7.example.test": HostAddresses(frozenset({ipaddress.ip_address("127.0.0.20")}), 60)},
    )


def test_provides_interface(stub):
    policy = AccessPolicy([], "deny-listed", stub, task.Clock())
    assert verifyObject(IAccessPolicy, policy)


@pytest.mark.parametrize(
    "rule, inside, outside",
    [
        ("127.0.0.2", "127.0.0.2", "127.0.0.3"),
        ("127.0.0.0/30", "127.0.0.3", "127.0.0.4"),
        ("127.0.0.4 255.255.255.252", "127.0.0.7", "127.0.0.8"),
        ("::1", "::1", "127.0.0.1"),
        ("2001:db8::/32", "2001:db8::9", "2001:db9::9"),
    ],
)
def test_address_rules_in_both_modes(stub, rule, inside, outside):
    allow = AccessPolicy([rule], "allow-listed", stub, task.Clock())
    deny = AccessPolicy([rule], "deny-listed", stub, task.Clock())
    assert check(allow, inside) == Decision(True, rule, check(allow, inside).reason)
    assert check(allow, outside).allowed is False
    assert check(allow, outside).rule is None
    assert check(deny, inside).allowed is False
    assert check(deny, inside).rule == rule
    assert check(deny, outside).allowed is True
    assert stub.reverseCalls == []


def test_ipv4_mapped_client_matches_ipv4_rule(stub):
    policy = AccessPolicy(["127.0.0.2"], "allow-listed", stub, task.Clock())
    assert check(policy, "::ffff:127.0.0.2").allowed


def test_domain_rule_confirmed_match(stub):
    policy = AccessPolicy(["domain:example.test"], "allow-listed", stub, task.Clock())
    decision = check(policy, "127.0.0.5")
    assert decision.allowed and decision.rule == "domain:example.test"
    assert "trusted.example.test" in decision.reason


def test_domain_rule_forged_ptr_and_other_domain_do_not_match(stub):
    policy = AccessPolicy(["domain:example.test"], "allow-listed", stub, task.Clock())
    forged = check(policy, "127.0.0.6")
    assert not forged.allowed and forged.rule is None
    assert "does not resolve back" in forged.reason
    assert not check(policy, "127.0.0.9").allowed
    assert not check(policy, "127.0.0.77").allowed  # no PTR


def test_domain_rule_in_deny_mode(stub):
    policy = AccessPolicy(["domain:example.test"], "deny-listed", stub, task.Clock())
    assert not check(policy, "127.0.0.5").allowed
    assert check(policy, "127.0.0.6").allowed  # forged PTR: not in the domain
    assert check(policy, "127.0.0.9").allowed


def test_address_rules_decide_without_dns(stub):
    policy = AccessPolicy(
        ["domain:example.test", "127.0.0.0/29"], "allow-listed", stub, task.Clock()
    )
    decision = check(policy, "127.0.0.6")
    assert decision.allowed and decision.rule == "127.0.0.0/29"
    assert stub.reverseCalls == []
    check(policy, "127.0.0.9")
    assert stub.reverseCalls == ["127.0.0.9"]


def test_no_lookup_without_domain_rules(stub):
    policy = AccessPolicy(["127.0.0.1"], "allow-listed", stub, task.Clock())
    check(policy, "127.0.0.5")
    assert stub.reverseCalls == []


def test_reverse_dns_off_never_looks_up(stub):
    policy = AccessPolicy(
        ["domain:example.test"], "allow-listed", stub, task.Clock(), reverse_dns=False
    )
    decision = check(policy, "127.0.0.5")
    assert not decision.allowed and "reverse DNS is off" in decision.reason
    assert stub.reverseCalls == []
    deny = AccessPolicy(["domain:example.test"], "deny-listed", None, task.Clock(), reverse_dns=False)
    assert check(deny, "127.0.0.5").allowed


def test_dns_failure_default_allow_listed_fails_closed(stub):
    policy = AccessPolicy(["domain:example.test"], "allow-listed", stub, task.Clock())
    decision = check(policy, "127.0.0.8")
    assert not decision.allowed and "reverse DNS failed" in decision.reason


def test_dns_failure_default_deny_listed_allows(stub):
    policy = AccessPolicy(["domain:example.test"], "deny-listed", stub, task.Clock())
    assert check(policy, "127.0.0.8").allowed


def test_dns_failure_decline_declines_in_both_modes(stub):
    for mode in ("allow-listed", "deny-listed"):
        policy = AccessPolicy(
            ["domain:example.test"], mode, stub, task.Clock(), dns_failure="decline"
        )
        decision = check(policy, "127.0.0.8")
        assert not decision.allowed and "reverse DNS failed" in decision.reason
    # and a working lookup is unaffected
    assert check(policy, "127.0.0.6").allowed


def test_unexpected_resolver_error_is_a_dns_failure(stub):
    class Broken(StubDNS):
        def reverseLookup(self, address):
            return defer.fail(RuntimeError("boom"))

    policy = AccessPolicy(["domain:example.test"], "allow-listed", Broken(), task.Clock())
    decision = check(policy, "127.0.0.5")
    assert not decision.allowed


def test_host_rule_uses_resolved_addresses(stub):
    policy = AccessPolicy(["host:pc7.example.test"], "allow-listed", stub, task.Clock())
    assert not check(policy, "127.0.0.20").allowed  # not resolved before start
    fired(policy.start())
    decision = check(policy, "127.0.0.20")
    assert decision.allowed and decision.rule == "host:pc7.example.test"
    assert not check(policy, "127.0.0.21").allowed
    policy.stop()


def test_non_ip_address_is_declined(stub):
    for mode in ("allow-listed", "deny-listed"):
        policy = AccessPolicy([], mode, stub, task.Clock())
        assert not check(policy, "/run/socket").allowed
        assert not check(policy, None).allowed


def test_empty_rules(stub):
    assert not check(AccessPolicy([], "allow-listed", stub, task.Clock()), "127.0.0.1").allowed
    assert check(AccessPolicy([], "deny-listed", stub, task.Clock()), "127.0.0.1").allowed


def test_first_matching_rule_is_reported(stub):
    policy = AccessPolicy(["127.0.0.0/8", "127.0.0.1"], "deny-listed", stub, task.Clock())
    assert check(policy, "127.0.0.1").rule == "127.0.0.0/8"


def test_bad_configuration_is_refused(stub):
    with pytest.raises(ValueError):
        AccessPolicy([], "allow", stub, task.Clock())
    with pytest.raises(ValueError):
        AccessPolicy([], "allow-listed", stub, task.Clock(), dns_failure="open")
    with pytest.raises(ValueError):
        AccessPolicy(["not a rule at all"], "allow-listed", stub, task.Clock())
    with pytest.raises(ValueError):
        AccessPolicy(["domain:example.test"], "allow-listed", None, task.Clock())
    with pytest.raises(ValueError):
        AccessPolicy(["host:a.example.test"], "allow-listed", None, task.Clock())


def test_describe_lists_rules_and_dns_outcome(stub):
    policy = AccessPolicy(
        ["domain:example.test", "131.107.2.0 255.255.255.0", "host:pc7.example.test"],
        "allow-listed", stub, task.Clock(),
    )
    fired(policy.start())
    text = "\n".join(policy.describe())
    assert "mode: allow-listed" in text
    assert "rule 1: '131.107.2.0 255.255.255.0' -> network 131.107.2.0/24" in text
    assert "now 127.0.0.20" in text
    assert "rule 3: 'domain:example.test'" in text
    assert "fails closed" in text
    deny = AccessPolicy(["domain:example.test"], "deny-listed", stub, task.Clock())
    assert "dns_failure" in "\n".join(deny.describe())
    off = AccessPolicy(["domain:example.test"], "allow-listed", None, task.Clock(), reverse_dns=False)
    assert "reverse DNS: off" in "\n".join(off.describe())
    empty = AccessPolicy([], "allow-listed", None, task.Clock())
    assert "WARNING" in "\n".join(empty.describe())


class CountingResolver:
    """Minimal IResolver double: one confirmed name, queries held until released."""

    def __init__(self):
        self.ptrQueries = 0
        self.held = []

    def lookupPointer(self, name, timeout=None):
        self.ptrQueries += 1
        d = defer.Deferred()
        rr = dns.RRHeader(name, dns.PTR, ttl=300, payload=dns.Record_PTR("trusted.example.test"))
        self.held.append((d, ([rr], [], [])))
        return d

    def lookupAddress(self, name, timeout=None):
        rr = dns.RRHeader(name, dns.A, ttl=300, payload=dns.Record_A("127.0.0.5"))
        return defer.succeed(([rr], [], []))

    def lookupIPV6Address(self, name, timeout=None):
        return defer.fail(dnserror.DNSNameError(dns.Message()))


def test_thousand_concurrent_checks_one_ptr_query_real_resolver():
    clock = task.Clock()
    fake = CountingResolver()
    policy = AccessPolicy(
        ["domain:example.test"], "allow-listed", AccessResolver(fake, clock), clock
    )
    ds = [policy.check("127.0.0.5") for _ in range(1000)]
    for d, value in fake.held:
        d.callback(value)
    assert all(fired(d).allowed for d in ds)
    assert all(fired(policy.check("127.0.0.5")).allowed for _ in range(10))
    assert fake.ptrQueries == 1


def test_dns_timeout_outcome_with_real_resolver():
    clock = task.Clock()
    fake = CountingResolver()
    policy = AccessPolicy(
        ["domain:example.test"], "allow-listed", AccessResolver(fake, clock, timeout=2), clock
    )
    d = policy.check("127.0.0.5")
    assert not d.called
    clock.advance(2)
    decision = fired(d)
    assert not decision.allowed and "reverse DNS failed" in decision.reason
