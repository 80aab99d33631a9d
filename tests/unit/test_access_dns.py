"""
Tests for securepop.access.dns against an in-memory resolver double that
implements the IResolver methods the module calls, and a task.Clock.
"""

import ipaddress

import pytest
from twisted.internet import defer, task
from twisted.names import dns, error as dnserror

from securepop.access import dns as accessdns
from securepop.access.dns import (
    CONFIRMED,
    FAILED,
    NO_NAME,
    UNCONFIRMED,
    AccessResolver,
    HostAddressWatcher,
    HostLookupFailed,
    TTLCache,
    parseServer,
)


class FakeResolver:
    """
    Answers from dictionaries; C{hold=True} keeps every answer pending in
    C{self.pending} until the test releases it.
    """

    def __init__(self):
        self.ptr = {}  # reverse name -> [(target, ttl)]
        self.a = {}  # name -> [(address, ttl)]
        self.aaaa = {}
        self.cnames = {}  # name -> (target, ttl)
        self.fail = set()  # names whose lookups fail (SERVFAIL)
        self.soaMinimum = None  # add an SOA to NXDOMAIN answers
        self.hold = False
        self.pending = []
        self.calls = []

    def _message(self, answers=()):
        message = dns.Message(rCode=dns.ENAME)
        if self.soaMinimum is not None:
            message.authority = [
                dns.RRHeader(
                    "example.test", dns.SOA, ttl=3600,
                    payload=dns.Record_SOA(minimum=self.soaMinimum, ttl=3600),
                )
            ]
        return message

    def _answer(self, kind, name, table, recordType, makeRecord):
        self.calls.append((kind, name))
        if name in self.fail:
            result = defer.fail(dnserror.DNSServerError(dns.Message(rCode=dns.ESERVER)))
        else:
            answers = []
            if name in self.cnames:
                target, ttl = self.cnames[name]
                answers.append(
                    dns.RRHeader(name, dns.CNAME, ttl=ttl, payload=dns.Record_CNAME(target))
                )
                lookupName = target
            else:
                lookupName = name
            for value, ttl in table.get(lookupName, ()):
                answers.append(
                    dns.RRHeader(lookupName, recordType, ttl=ttl, payload=makeRecord(value, ttl))
                )
            known = (
                name in self.ptr or name in self.a or name in self.aaaa
                or name in self.cnames
            )
            if not known:
                result = defer.fail(dnserror.DNSNameError(self._message()))
            else:
                result = defer.succeed((answers, [], []))
        if self.hold:
            held = defer.Deferred()
            self.pending.append((held, result))
            return held
        return result

    def releaseAll(self):
        pending, self.pending = self.pending, []
        for held, result in pending:
            result.addBoth(held.callback)

    def lookupPointer(self, name, timeout=None):
        return self._answer("PTR", name, self.ptr, dns.PTR, lambda v, t: dns.Record_PTR(v, t))

    def lookupAddress(self, name, timeout=None):
        return self._answer("A", name, self.a, dns.A, lambda v, t: dns.Record_A(v, t))

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer("AAAA", name, self.aaaa, dns.AAAA, lambda v, t: dns.Record_AAAA(v, t))


def rev(address):
    return ipaddress.ip_address(address).reverse_pointer


@pytest.fixture
def fake():
    r = FakeResolver()
    r.ptr[rev("127.0.0.5")] = [("trusted.example.test", 300)]
    r.a["trusted.example.test"] = [("127.0.0.5", 600)]
    r.ptr[rev("127.0.0.6")] = [("evil.example.test", 300)]
    r.a["evil.example.test"] = [("127.0.0.66", 300)]
    r.ptr[rev("127.0.0.7")] = [("nofwd.example.test", 300)]
    r.ptr[rev("2001:db8::5")] = [("v6.example.test", 300)]
    r.aaaa["v6.example.test"] = [("2001:db8::5", 300)]
    return r


@pytest.fixture
def clock():
    return task.Clock()


def result(d):
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def test_forward_confirmed_name(fake, clock):
    resolver = AccessResolver(fake, clock)
    r = result(resolver.reverseLookup("127.0.0.5"))
    assert r.status == CONFIRMED and r.name == "trusted.example.test"
    assert ("A", "trusted.example.test") in fake.calls


def test_ipv6_forward_confirmation_uses_aaaa(fake, clock):
    r = result(AccessResolver(fake, clock).reverseLookup("2001:db8::5"))
    assert r.status == CONFIRMED and r.name == "v6.example.test"
    assert ("AAAA", "v6.example.test") in fake.calls


def test_ipv4_mapped_address_is_looked_up_as_ipv4(fake, clock):
    r = result(AccessResolver(fake, clock).reverseLookup("::ffff:127.0.0.5"))
    assert r.status == CONFIRMED
    assert fake.calls[0] == ("PTR", rev("127.0.0.5"))


def test_forged_ptr_is_unconfirmed(fake, clock):
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.6"))
    assert r.status == UNCONFIRMED and r.name is None
    assert "evil.example.test" in r.reason


def test_ptr_without_address_record_is_unconfirmed(fake, clock):
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.7"))
    assert r.status == UNCONFIRMED and r.name is None


def test_no_ptr_is_no_name(fake, clock):
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.99"))
    assert r.status == NO_NAME and r.name is None


def test_empty_ptr_answer_is_no_name(fake, clock):
    fake.ptr[rev("127.0.0.98")] = []
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.98"))
    assert r.status == NO_NAME


def test_servfail_is_failed(fake, clock):
    fake.fail.add(rev("127.0.0.5"))
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.5"))
    assert r.status == FAILED


def test_forward_failure_is_failed_not_unconfirmed(fake, clock):
    fake.fail.add("trusted.example.test")
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.5"))
    assert r.status == FAILED


def test_cname_chain_is_followed_for_confirmation(fake, clock):
    fake.ptr[rev("127.0.0.8")] = [("alias.example.test", 300)]
    fake.cnames["alias.example.test"] = ("real.example.test", 300)
    fake.a["real.example.test"] = [("127.0.0.8", 300)]
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.8"))
    assert r.status == CONFIRMED and r.name == "alias.example.test"


def test_unrelated_address_records_in_answer_are_ignored(clock):
    class Stuffing(FakeResolver):
        def lookupAddress(self, name, timeout=None):
            self.calls.append(("A", name))
            rr = dns.RRHeader("other.example", dns.A, ttl=60, payload=dns.Record_A("127.0.0.9"))
            return defer.succeed(([rr], [], []))

    fake = Stuffing()
    fake.ptr[rev("127.0.0.9")] = [("claim.example.test", 60)]
    r = result(AccessResolver(fake, clock).reverseLookup("127.0.0.9"))
    assert r.status == UNCONFIRMED


def test_second_ptr_name_can_confirm_and_names_are_capped(fake, clock):
    fake.ptr[rev("127.0.0.10")] = [(f"n{i}.example.test", 60) for i in range(10)]
    fake.a["n1.example.test"] = [("127.0.0.10", 60)]
    r = result(AccessResolver(fake, clock, maxPTRNames=2).reverseLookup("127.0.0.10"))
    assert r.status == CONFIRMED and r.name == "n1.example.test"
    fake.calls.clear()
    fake.a["n1.example.test"] = []
    fake.a["n5.example.test"] = [("127.0.0.11", 60)]
    fake.ptr[rev("127.0.0.11")] = [(f"n{i}.example.test", 60) for i in range(10)]
    r = result(AccessResolver(fake, clock, maxPTRNames=2).reverseLookup("127.0.0.11"))
    assert r.status == UNCONFIRMED
    assert len([c for c in fake.calls if c[0] == "A"]) == 2


def test_bad_address_raises(fake, clock):
    with pytest.raises(ValueError):
        AccessResolver(fake, clock).reverseLookup("nonsense")


def test_positive_cache_honours_min_ttl_of_ptr_and_a(fake, clock):
    resolver = AccessResolver(fake, clock)
    result(resolver.reverseLookup("127.0.0.5"))
    assert resolver.queriesSent == 1
    clock.advance(299)
    assert result(resolver.reverseLookup("127.0.0.5")).status == CONFIRMED
    assert resolver.queriesSent == 1
    clock.advance(1)  # PTR TTL 300 < A TTL 600: expired now
    result(resolver.reverseLookup("127.0.0.5"))
    assert resolver.queriesSent == 2


def test_zero_ttl_is_not_cached(fake, clock):
    fake.ptr[rev("127.0.0.5")] = [("trusted.example.test", 0)]
    resolver = AccessResolver(fake, clock)
    result(resolver.reverseLookup("127.0.0.5"))
    result(resolver.reverseLookup("127.0.0.5"))
    assert resolver.queriesSent == 2


def test_max_ttl_caps_cache_time(fake, clock):
    fake.ptr[rev("127.0.0.5")] = [("trusted.example.test", 10**6)]
    fake.a["trusted.example.test"] = [("127.0.0.5", 10**6)]
    resolver = AccessResolver(fake, clock, maxTTL=60)
    result(resolver.reverseLookup("127.0.0.5"))
    clock.advance(61)
    result(resolver.reverseLookup("127.0.0.5"))
    assert resolver.queriesSent == 2


def test_negative_cache_uses_soa_minimum(fake, clock):
    fake.soaMinimum = 30
    resolver = AccessResolver(fake, clock, negativeTTL=500)
    assert result(resolver.reverseLookup("127.0.0.99")).status == NO_NAME
    clock.advance(29)
    assert result(resolver.reverseLookup("127.0.0.99")).status == NO_NAME
    assert resolver.queriesSent == 1
    clock.advance(1)
    result(resolver.reverseLookup("127.0.0.99"))
    assert resolver.queriesSent == 2


def test_negative_cache_default_ttl_without_soa(fake, clock):
    resolver = AccessResolver(fake, clock, negativeTTL=100)
    result(resolver.reverseLookup("127.0.0.99"))
    clock.advance(99)
    result(resolver.reverseLookup("127.0.0.99"))
    assert resolver.queriesSent == 1
    clock.advance(1)
    result(resolver.reverseLookup("127.0.0.99"))
    assert resolver.queriesSent == 2


def test_unconfirmed_result_is_cached_negatively(fake, clock):
    resolver = AccessResolver(fake, clock)
    result(resolver.reverseLookup("127.0.0.6"))
    result(resolver.reverseLookup("127.0.0.6"))
    assert resolver.queriesSent == 1
    assert len(resolver.negativeCache) == 1 and len(resolver.positiveCache) == 0


def test_failure_is_cached_only_for_failure_ttl(fake, clock):
    fake.fail.add(rev("127.0.0.5"))
    resolver = AccessResolver(fake, clock, failureTTL=5)
    result(resolver.reverseLookup("127.0.0.5"))
    fake.fail.clear()
    assert result(resolver.reverseLookup("127.0.0.5")).status == FAILED
    clock.advance(5)
    assert result(resolver.reverseLookup("127.0.0.5")).status == CONFIRMED


def test_caches_are_bounded(fake, clock):
    for i in range(20, 40):
        fake.ptr[rev(f"127.0.1.{i}")] = [(f"h{i}.example.test", 300)]
        fake.a[f"h{i}.example.test"] = [(f"127.0.1.{i}", 300)]
    resolver = AccessResolver(fake, clock, cacheSize=5)
    for i in range(20, 40):
        result(resolver.reverseLookup(f"127.0.1.{i}"))
        result(resolver.reverseLookup(f"127.0.2.{i}"))  # NXDOMAIN
    assert len(resolver.positiveCache) == 5
    assert len(resolver.negativeCache) == 5
    sent = resolver.queriesSent
    result(resolver.reverseLookup("127.0.1.39"))  # most recent: cached
    assert resolver.queriesSent == sent
    result(resolver.reverseLookup("127.0.1.20"))  # evicted: asked again
    assert resolver.queriesSent == sent + 1


def test_concurrent_checks_of_one_address_share_one_query(fake, clock):
    fake.hold = True
    resolver = AccessResolver(fake, clock)
    ds = [resolver.reverseLookup("127.0.0.5") for _ in range(1000)]
    assert resolver.queriesSent == 1
    assert len(fake.pending) == 1
    fake.releaseAll()  # PTR answered; now the A query is pending
    fake.releaseAll()
    assert {result(d).status for d in ds} == {CONFIRMED}
    assert [c for c in fake.calls if c[0] == "PTR"] == [("PTR", rev("127.0.0.5"))]


def test_cancelling_one_waiter_does_not_affect_others(fake, clock):
    fake.hold = True
    resolver = AccessResolver(fake, clock)
    first = resolver.reverseLookup("127.0.0.5")
    second = resolver.reverseLookup("127.0.0.5")
    first.cancel()
    first.addErrback(lambda f: f.trap(defer.CancelledError))
    fake.releaseAll()
    fake.releaseAll()
    assert result(second).status == CONFIRMED


def test_concurrency_cap_and_queue(fake, clock):
    fake.hold = True
    resolver = AccessResolver(fake, clock, maxConcurrentLookups=2, maxQueuedLookups=3)
    ds = [resolver.reverseLookup(f"127.0.3.{i}") for i in range(5)]
    assert resolver.activeLookups == 2 and resolver.queuedLookups == 3
    assert resolver.queriesSent == 2
    overflow = resolver.reverseLookup("127.0.3.200")
    r = result(overflow)
    assert r.status == FAILED and "waiting" in r.reason
    while fake.pending:
        fake.releaseAll()
    assert [result(d).status for d in ds] == [NO_NAME] * 5
    assert resolver.activeLookups == 0 and resolver.queuedLookups == 0
    assert resolver.queriesSent == 5


def test_timeout_fires_failed_within_timeout(fake, clock):
    fake.hold = True
    resolver = AccessResolver(fake, clock, timeout=2.0, failureTTL=5)
    d = resolver.reverseLookup("127.0.0.5")
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.1)
    r = result(d)
    assert r.status == FAILED and "2 s" in r.reason
    # the late answer neither fires anything twice nor replaces the failure
    fake.releaseAll()
    fake.releaseAll()
    assert result(resolver.reverseLookup("127.0.0.5")).status == FAILED
    assert resolver.activeLookups == 0
    clock.advance(5)
    fake.hold = False
    assert result(resolver.reverseLookup("127.0.0.5")).status == CONFIRMED


def test_queued_lookups_time_out_too(fake, clock):
    fake.hold = True
    resolver = AccessResolver(fake, clock, timeout=1.0, maxConcurrentLookups=1)
    running = resolver.reverseLookup("127.0.0.5")
    queued = resolver.reverseLookup("127.0.0.6")
    clock.advance(1.0)
    assert result(running).status == FAILED
    assert result(queued).status == FAILED
    assert resolver.queuedLookups == 0
    assert resolver.queriesSent == 1


def test_invalid_construction(fake, clock):
    with pytest.raises(ValueError):
        AccessResolver(fake, clock, timeout=0)
    with pytest.raises(ValueError):
        AccessResolver(fake, clock, maxConcurrentLookups=0)


def test_ttl_cache_basics():
    cache = TTLCache(2)
    cache.put("a", 1, 10, now=0)
    cache.put("b", 2, 10, now=0)
    assert cache.get("a", now=5) == 1  # a is now most recent
    cache.put("c", 3, 10, now=5)
    assert cache.get("b", now=5) is None
    assert cache.get("a", now=9.9) == 1
    assert cache.get("a", now=10) is None
    cache.put("d", 4, 0, now=0)
    assert cache.get("d", now=0) is None
    with pytest.raises(ValueError):
        TTLCache(-1)


def test_resolve_host_collects_a_and_aaaa(fake, clock):
    fake.a["dual.example.test"] = [("192.0.2.1", 120), ("192.0.2.2", 60)]
    fake.aaaa["dual.example.test"] = [("2001:db8::1", 90)]
    got = result(AccessResolver(fake, clock).resolveHost("dual.example.test"))
    assert got.addresses == {
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("192.0.2.2"),
        ipaddress.ip_address("2001:db8::1"),
    }
    assert got.ttl == 60


def test_resolve_host_unknown_name_is_empty(fake, clock):
    got = result(AccessResolver(fake, clock, negativeTTL=77).resolveHost("none.example.test"))
    assert got.addresses == frozenset() and got.ttl == 77


def test_resolve_host_failure(fake, clock):
    fake.fail.add("down.example.test")
    got = result(AccessResolver(fake, clock).resolveHost("down.example.test"))
    assert got.check(HostLookupFailed)


def test_host_watcher_re_resolves_when_ttl_expires(fake, clock):
    fake.a["pc7.example.test"] = [("192.0.2.7", 120)]
    watcher = HostAddressWatcher(AccessResolver(fake, clock), clock, ["pc7.example.test"])
    assert watcher.addresses("pc7.example.test") == frozenset()
    result(watcher.start())
    assert watcher.addresses("pc7.example.test") == {ipaddress.ip_address("192.0.2.7")}
    fake.a["pc7.example.test"] = [("192.0.2.8", 120)]
    clock.advance(119)
    assert watcher.addresses("pc7.example.test") == {ipaddress.ip_address("192.0.2.7")}
    clock.advance(1)
    assert watcher.addresses("pc7.example.test") == {ipaddress.ip_address("192.0.2.8")}
    watcher.stop()
    assert clock.getDelayedCalls() == []


def test_host_watcher_keeps_addresses_on_failure_and_retries(fake, clock):
    fake.a["pc7.example.test"] = [("192.0.2.7", 60)]
    watcher = HostAddressWatcher(
        AccessResolver(fake, clock), clock, ["pc7.example.test"], minRefresh=30,
        retryInterval=10,
    )
    result(watcher.start())
    fake.fail.add("pc7.example.test")
    clock.advance(60)
    assert watcher.addresses("pc7.example.test") == {ipaddress.ip_address("192.0.2.7")}
    fake.fail.clear()
    fake.a["pc7.example.test"] = [("192.0.2.9", 60)]
    clock.advance(10)
    assert watcher.addresses("pc7.example.test") == {ipaddress.ip_address("192.0.2.9")}
    watcher.stop()


def test_host_watcher_zero_ttl_bounded_by_min_refresh(fake, clock):
    fake.a["pc7.example.test"] = [("192.0.2.7", 0)]
    watcher = HostAddressWatcher(
        AccessResolver(fake, clock), clock, ["pc7.example.test"], minRefresh=30
    )
    result(watcher.start())
    calls = len(fake.calls)
    clock.advance(29)
    assert len(fake.calls) == calls
    clock.advance(1)
    assert len(fake.calls) == calls + 2  # A and AAAA once more
    watcher.stop()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
    ],
)
def test_parse_server(text, expected):
    assert parseServer(text) == expected


@pytest.mark.parametrize(
    "text", ["dns.example", "127.0.0.1:0", "127.0.0.1:99999", "[::1", "[::1]x", "1.2.3.4:x"]
)
def test_parse_server_rejects(text):
    with pytest.raises(ValueError):
        parseServer(text)


def test_make_twisted_resolver_uses_given_servers(clock):
    from twisted.internet.testing import MemoryReactorClock

    resolver = accessdns.makeTwistedResolver(MemoryReactorClock(), ["127.0.0.1:5353"])
    assert resolver.servers == [("127.0.0.1", 5353)]
