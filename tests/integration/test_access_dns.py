"""
The access resolver and policy against a real DNS server (dnsmasq with PTR
records, see fixtures_dns): forward-confirmed reverse DNS, host rules, DNS
outage, and one PTR query for 1,000 checks of one address.
"""

import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from securepop.access.dns import (
    CONFIRMED,
    NO_NAME,
    UNCONFIRMED,
    AccessResolver,
    makeTwistedResolver,
)
from securepop.access.policy import AccessPolicy
from tests.integration.fixtures_dns import (
    EVIL,
    NO_PTR,
    NOFWD,
    TRUSTED,
    DnsmasqServer,
    missingTools,
)


def requireTools():
    missing = missingTools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory):
    """One dnsmasq with the test records for the whole session."""
    requireTools()
    server = DnsmasqServer(tmp_path_factory.mktemp("dnsmasq")).start()
    yield server
    server.stop()


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def makePolicy(reactor, server, rules, mode="allow-listed", timeout=2.0, **kwargs):
    resolver = AccessResolver(
        makeTwistedResolver(reactor, [server.address]), reactor, timeout=timeout
    )
    return AccessPolicy(rules, mode, resolver, reactor, **kwargs), resolver


@pytest_twisted.inlineCallbacks
def test_trusted_name_is_confirmed_and_allowed(dnsmasq, reactor):
    policy, resolver = makePolicy(reactor, dnsmasq, ["domain:example.test"])
    result = yield resolver.reverseLookup(TRUSTED[1])
    assert result.status == CONFIRMED and result.name == TRUSTED[0]
    decision = yield policy.check(TRUSTED[1])
    assert decision.allowed and decision.rule == "domain:example.test"


@pytest_twisted.inlineCallbacks
def test_forged_ptr_is_declined(dnsmasq, reactor):
    policy, resolver = makePolicy(reactor, dnsmasq, ["domain:example.test"])
    result = yield resolver.reverseLookup(EVIL[1])
    assert result.status == UNCONFIRMED
    decision = yield policy.check(EVIL[1])
    assert not decision.allowed and EVIL[0] in decision.reason
    # in deny-listed mode the forged name does not count as the domain either
    deny, _ = makePolicy(reactor, dnsmasq, ["domain:example.test"], mode="deny-listed")
    assert (yield deny.check(EVIL[1])).allowed
    assert not (yield deny.check(TRUSTED[1])).allowed


@pytest_twisted.inlineCallbacks
def test_ptr_name_without_address_record_is_declined(dnsmasq, reactor):
    policy, resolver = makePolicy(reactor, dnsmasq, ["domain:example.test"])
    result = yield resolver.reverseLookup(NOFWD[1])
    assert result.status == UNCONFIRMED
    assert not (yield policy.check(NOFWD[1])).allowed


@pytest_twisted.inlineCallbacks
def test_address_without_ptr_is_declined(dnsmasq, reactor):
    policy, resolver = makePolicy(reactor, dnsmasq, ["domain:example.test"])
    assert (yield resolver.reverseLookup(NO_PTR)).status == NO_NAME
    assert not (yield policy.check(NO_PTR)).allowed


@pytest_twisted.inlineCallbacks
def test_host_rule_resolves_through_dns(dnsmasq, reactor):
    policy, _ = makePolicy(reactor, dnsmasq, [f"host:{TRUSTED[0]}", f"host:{EVIL[0]}"])
    yield policy.start()
    try:
        assert (yield policy.check(TRUSTED[1])).allowed
        assert (yield policy.check("127.0.0.66")).allowed  # evil's A record
        assert not (yield policy.check(EVIL[1])).allowed  # its PTR address is not its A
        assert any("now 127.0.0.5" in line for line in policy.describe())
    finally:
        policy.stop()


@pytest_twisted.inlineCallbacks
def test_thousand_checks_from_one_address_cause_one_ptr_query(dnsmasq, reactor):
    qname = "5.0.0.127.in-addr.arpa"
    before = yield threads.deferToThread(dnsmasq.waitForQueryCount, qname, "PTR", 0)
    policy, resolver = makePolicy(reactor, dnsmasq, ["domain:example.test"])
    decisions = yield defer.gatherResults([policy.check(TRUSTED[1]) for _ in range(500)])
    for _ in range(500):  # and later connections hit the cache
        decisions.append((yield policy.check(TRUSTED[1])))
    assert len(decisions) == 1000 and all(d.allowed for d in decisions)
    assert resolver.queriesSent == 1
    after = yield threads.deferToThread(dnsmasq.waitForQueryCount, qname, "PTR", before + 1)
    assert after - before == 1


@pytest_twisted.inlineCallbacks
def test_dns_stopped_gives_documented_outcome_within_timeout(tmp_path, reactor):
    requireTools()
    server = DnsmasqServer(tmp_path / "dns-outage").start()
    try:
        live, _ = makePolicy(reactor, server, ["domain:example.test"], timeout=1.0)
        assert (yield live.check(TRUSTED[1])).allowed  # works while it runs
    finally:
        server.stop()
    cases = [
        ("allow-listed", "no-match", False),  # default: fails closed
        ("deny-listed", "no-match", True),  # domain rule does not match
        ("deny-listed", "decline", False),
    ]
    for mode, outcome, allowed in cases:
        policy, _ = makePolicy(
            reactor, server, ["domain:example.test"], mode=mode, timeout=1.0,
            dns_failure=outcome,
        )
        started = time.monotonic()
        decision = yield policy.check(TRUSTED[1])
        elapsed = time.monotonic() - started
        assert decision.allowed is allowed, (mode, outcome, decision)
        assert "reverse DNS failed" in decision.reason
        assert elapsed < 1.0 + 0.5, elapsed
