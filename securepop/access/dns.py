"""
Asynchronous DNS for the access rules: forward-confirmed reverse lookups
(for C{domain:} rules) and host-name resolution (for C{host:} rules).

Reverse lookups happen per connection, so they are made cheap and safe
under load (the Exchange article's Troubleshooting warning):

  - a positive and a negative cache, each bounded in size (least recently
    used entries go first) and kept no longer than the DNS TTLs allow;
  - concurrent checks of the same address share one lookup (1,000
    connections from one address cause one PTR query);
  - at most C{maxConcurrentLookups} lookups run at once, at most
    C{maxQueuedLookups} wait; beyond that a check fails at once;
  - every check ends within C{timeout} seconds.

Outcome of a reverse lookup (L{ReverseResult.status}):

  - C{confirmed}: a PTR name whose forward lookup (A for IPv4, AAAA for
    IPv6) contains the client's address;
  - C{no-name}: no PTR record (NXDOMAIN or empty answer);
  - C{unconfirmed}: PTR names exist but none resolves back to the address
    (a forged PTR record, or a name without an address record);
  - C{failed}: the DNS did not answer usefully (timeout, SERVFAIL, refused,
    too many lookups waiting).  Failures are cached for C{failureTTL}
    seconds so a dead DNS server is not asked once per connection.

The policy (L{securepop.access.policy}) decides what a failure means.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error as dnserror

from securepop.access.rules import normaliseAddress

CONFIRMED = "confirmed"
NO_NAME = "no-name"
UNCONFIRMED = "unconfirmed"
FAILED = "failed"

_log = Logger()


@dataclass(frozen=True)
class ReverseResult:
    """
    @ivar status: one of C{confirmed}, C{no-name}, C{unconfirmed}, C{failed}.
    @ivar name: the forward-confirmed PTR name (lower case, no trailing
        dot) when confirmed, else L{None}.
    @ivar reason: a short text for logs.
    """

    status: str
    name: str | None
    reason: str


@dataclass(frozen=True)
class HostAddresses:
    """
    The addresses a host name resolved to, and how long they may be kept.
    """

    addresses: frozenset
    ttl: float


class HostLookupFailed(Exception):
    """The DNS did not answer for a host name (neither A nor AAAA)."""


class TTLCache:
    """
    A dictionary whose entries expire, bounded in size (LRU eviction).
    """

    def __init__(self, maxEntries: int):
        if maxEntries < 0:
            raise ValueError("maxEntries must not be negative")
        self.maxEntries = maxEntries
        self._entries: OrderedDict = OrderedDict()

    def __len__(self):
        return len(self._entries)

    def get(self, key, now: float):
        entry = self._entries.get(key)
        if entry is None:
            return None
        expiresAt, value = entry
        if now >= expiresAt:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key, value, ttl: float, now: float):
        """Keep C{value} for C{ttl} seconds; a TTL of zero keeps nothing."""
        if ttl <= 0 or self.maxEntries == 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)


class _Lookup:
    """One reverse lookup in progress, shared by every waiting check."""

    def __init__(self, address):
        self.address = address
        self.waiters: list = []
        self.timer = None
        self.finished = False


def _negativeTTL(authority, default):
    """RFC 2308: the negative TTL is min(SOA TTL, SOA minimum)."""
    for rr in authority or ():
        if rr.type == dns.SOA:
            return min(rr.ttl, rr.payload.minimum)
    return default


def _nameErrorTTL(error, default):
    """L{_negativeTTL} of the answer a L{dnserror.DNSNameError} carries."""
    message = error.args[0] if error.args else None
    return _negativeTTL(message.authority if isinstance(message, dns.Message) else (),
                        default)


def _addressesOf(name, answers, recordType):
    """
    Collect the addresses of C{name} from an answer section, following a
    CNAME chain inside it but ignoring records for unrelated names.

    @return: (set of ip addresses, min TTL of the records used or None)
    """
    names = {name.lower().rstrip(".")}
    for _ in range(8):
        added = False
        for rr in answers:
            if rr.type == dns.CNAME and str(rr.name).lower() in names:
                target = str(rr.payload.name).lower()
                if target not in names:
                    names.add(target)
                    added = True
        if not added:
            break
    addresses, ttls = set(), []
    for rr in answers:
        if rr.type == recordType and str(rr.name).lower() in names:
            try:
                addresses.add(ipaddress.ip_address(rr.payload.address))
            except ValueError:
                continue
            ttls.append(rr.ttl)
    return addresses, (min(ttls) if ttls else None)


class AccessResolver:
    """
    Reverse lookups with forward confirmation and host-name resolution,
    on top of any L{twisted.internet.interfaces.IResolver} (only
    C{lookupPointer}, C{lookupAddress} and C{lookupIPV6Address} are used).

    @ivar queriesSent: number of PTR queries handed to the resolver
        (a metric; also what tests count).
    """

    def __init__(
        self,
        resolver,
        clock,
        timeout=2.0,
        maxConcurrentLookups=32,
        maxQueuedLookups=1000,
        cacheSize=10000,
        negativeTTL=300.0,
        failureTTL=5.0,
        maxTTL=86400.0,
        maxNegativeTTL=3600.0,
        maxPTRNames=4,
    ):
        """
        @param resolver: an IResolver (e.g. from L{makeTwistedResolver}).
        @param clock: IReactorTime for the timeout and the cache clock.
        @param timeout: seconds within which every check ends.
        @param maxConcurrentLookups: cap on reverse lookups running at once.
        @param maxQueuedLookups: cap on lookups waiting for a slot; beyond
            it a check fails at once rather than piling up.
        @param cacheSize: entries in each of the positive and negative caches.
        @param negativeTTL: how long to remember "no PTR" when the answer
            carries no SOA record to take the TTL from.
        @param failureTTL: how long to remember a DNS failure.
        @param maxTTL: upper bound on any positive cache time.
        @param maxNegativeTTL: upper bound on any negative cache time.
        @param maxPTRNames: PTR names tried for forward confirmation; more
            are ignored (a hostile zone cannot make us ask forever).
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if maxConcurrentLookups < 1:
            raise ValueError("maxConcurrentLookups must be at least 1")
        self.resolver = resolver
        self.clock = clock
        self.timeout = float(timeout)
        self.maxConcurrentLookups = maxConcurrentLookups
        self.maxQueuedLookups = maxQueuedLookups
        self.negativeTTL = negativeTTL
        self.failureTTL = failureTTL
        self.maxTTL = maxTTL
        self.maxNegativeTTL = maxNegativeTTL
        self.maxPTRNames = maxPTRNames
        self.positiveCache = TTLCache(cacheSize)
        self.negativeCache = TTLCache(cacheSize)
        self.queriesSent = 0
        self._inflight: dict = {}
        self._queue: deque = deque()
        self._active = 0

    # -- reverse lookups ---------------------------------------------------

    def reverseLookup(self, address) -> defer.Deferred:
        """
        Find the forward-confirmed PTR name of C{address}.

        @param address: an IP address (str or ipaddress object).
        @return: Deferred firing with a L{ReverseResult}; never fails.
        @raise ValueError: C{address} is not an IP address.
        """
        ip = normaliseAddress(address)
        now = self.clock.seconds()
        cached = self.positiveCache.get(ip, now) or self.negativeCache.get(ip, now)
        if cached is not None:
            return defer.succeed(cached)
        entry = self._inflight.get(ip)
        started = False
        if entry is None:
            if len(self._queue) >= self.maxQueuedLookups:
                return defer.succeed(
                    ReverseResult(FAILED, None, "too many reverse lookups waiting")
                )
            entry = _Lookup(ip)
            self._inflight[ip] = entry
            entry.timer = self.clock.callLater(self.timeout, self._expire, entry)
            self._queue.append(entry)
            started = True

        def cancel(d):
            if d in entry.waiters:
                entry.waiters.remove(d)

        waiter = defer.Deferred(cancel)
        entry.waiters.append(waiter)
        if started:
            self._pump()
        return waiter

    @property
    def activeLookups(self) -> int:
        return self._active

    @property
    def queuedLookups(self) -> int:
        return len(self._queue)

    def _pump(self):
        while self._active < self.maxConcurrentLookups and self._queue:
            entry = self._queue.popleft()
            self._active += 1
            d = defer.ensureDeferred(self._confirm(entry.address))
            d.addErrback(self._unexpected)
            d.addBoth(self._lookupDone, entry)

    def _unexpected(self, failure):
        _log.failure("reverse DNS lookup raised", failure)
        return ReverseResult(FAILED, None, "internal error"), self.failureTTL

    def _lookupDone(self, outcome, entry):
        self._active -= 1
        if not entry.finished:
            result, ttl = outcome
            self._finish(entry, result, ttl)
        self._pump()

    def _expire(self, entry):
        entry.timer = None
        if entry.finished:
            return
        try:
            self._queue.remove(entry)
        except ValueError:
            pass
        self._finish(
            entry,
            ReverseResult(FAILED, None, f"no DNS answer within {self.timeout:g} s"),
            self.failureTTL,
        )

    def _finish(self, entry, result, ttl):
        entry.finished = True
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None
        if self._inflight.get(entry.address) is entry:
            del self._inflight[entry.address]
        now = self.clock.seconds()
        if result.status == CONFIRMED:
            self.positiveCache.put(entry.address, result, min(ttl, self.maxTTL), now)
        else:
            self.negativeCache.put(
                entry.address, result, min(ttl, self.maxNegativeTTL), now
            )
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter.callback(result)

    def _remaining(self, deadline):
        return (max(deadline - self.clock.seconds(), 0.1),)

    async def _confirm(self, ip):
        """
        @return: (L{ReverseResult}, seconds it may be cached)
        """
        deadline = self.clock.seconds() + self.timeout
        qname = ip.reverse_pointer
        self.queriesSent += 1
        try:
            answers, authority, _ = await self.resolver.lookupPointer(
                qname, self._remaining(deadline)
            )
        except dnserror.DNSNameError as e:
            ttl = _nameErrorTTL(e, self.negativeTTL)
            return ReverseResult(NO_NAME, None, f"no PTR record for {ip}"), ttl
        except Exception as e:
            return (
                ReverseResult(FAILED, None, f"PTR lookup failed: {type(e).__name__}"),
                self.failureTTL,
            )
        ptrs = [
            rr
            for rr in answers
            if rr.type == dns.PTR and str(rr.name).lower().rstrip(".") == qname
        ]
        if not ptrs:
            ttl = _negativeTTL(authority, self.negativeTTL)
            return ReverseResult(NO_NAME, None, f"no PTR record for {ip}"), ttl
        ptrTTL = min(rr.ttl for rr in ptrs)
        names = []
        for rr in ptrs:
            name = str(rr.payload.name).lower().rstrip(".")
            if name and name not in names:
                names.append(name)
        names = names[: self.maxPTRNames]
        lookup = (
            self.resolver.lookupAddress
            if ip.version == 4
            else self.resolver.lookupIPV6Address
        )
        recordType = dns.A if ip.version == 4 else dns.AAAA
        failed = False
        unconfirmedTTL = ptrTTL
        for name in names:
            try:
                fanswers, fauthority, _ = await lookup(name, self._remaining(deadline))
            except dnserror.DNSNameError as e:
                unconfirmedTTL = min(unconfirmedTTL, _nameErrorTTL(e, self.negativeTTL))
                continue
            except Exception:
                failed = True
                continue
            addresses, ttl = _addressesOf(name, fanswers, recordType)
            if ip in addresses:
                return (
                    ReverseResult(CONFIRMED, name, f"{ip} is {name} (forward-confirmed)"),
                    min(ptrTTL, ttl),
                )
            if ttl is None:
                ttl = _negativeTTL(fauthority, self.negativeTTL)
            unconfirmedTTL = min(unconfirmedTTL, ttl)
        if failed:
            return (
                ReverseResult(FAILED, None, "forward lookup of the PTR name failed"),
                self.failureTTL,
            )
        return (
            ReverseResult(
                UNCONFIRMED,
                None,
                f"PTR name {', '.join(names)} does not resolve back to {ip}",
            ),
            unconfirmedTTL,
        )

    # -- host names ----------------------------------------------------------

    async def _resolveHost(self, name):
        timeout = (self.timeout,)
        results = await defer.DeferredList(
            [
                self.resolver.lookupAddress(name, timeout),
                self.resolver.lookupIPV6Address(name, timeout),
            ],
            consumeErrors=True,
        )
        addresses, ttls, failures = set(), [], 0
        for (ok, value), recordType in zip(results, (dns.A, dns.AAAA)):
            if not ok:
                if value.check(dnserror.DNSNameError):
                    ttls.append(_nameErrorTTL(value.value, self.negativeTTL))
                else:
                    failures += 1
                continue
            answers, authority, _ = value
            found, ttl = _addressesOf(name, answers, recordType)
            addresses |= found
            ttls.append(ttl if ttl is not None else _negativeTTL(authority, self.negativeTTL))
        if failures == 2:
            raise HostLookupFailed(f"no DNS answer for {name}")
        return HostAddresses(frozenset(addresses), min(ttls) if ttls else self.negativeTTL)

    def resolveHost(self, name) -> defer.Deferred:
        """
        Resolve C{name} to all its IPv4 and IPv6 addresses.

        @return: Deferred firing with L{HostAddresses}, or failing with
            L{HostLookupFailed} when neither query was answered.
        """
        return defer.ensureDeferred(self._resolveHost(name))


class HostAddressWatcher:
    """
    Keeps the addresses of the C{host:} rule names current: resolved at
    start, and again when their TTL expires (bounded below by
    C{minRefresh} so a TTL of zero does not make us query in a loop).

    When a re-resolution fails, the previous addresses are kept and the
    lookup is retried after C{retryInterval} seconds: a DNS outage neither
    locks allowed hosts out nor lets denied hosts in.  A name never
    resolved matches no address.
    """

    def __init__(
        self, resolver, clock, names, minRefresh=30.0, maxRefresh=86400.0,
        retryInterval=30.0,
    ):
        """
        @param resolver: an L{AccessResolver}.
        @param clock: IReactorTime for the refresh timers.
        @param names: host names (already normalised).
        """
        self.resolver = resolver
        self.clock = clock
        self.names = tuple(dict.fromkeys(names))
        self.minRefresh = minRefresh
        self.maxRefresh = maxRefresh
        self.retryInterval = retryInterval
        self._addresses = {name: frozenset() for name in self.names}
        self._timers: dict = {}
        self._running = False

    def addresses(self, name) -> frozenset:
        """The addresses C{name} currently stands for (empty when unknown)."""
        return self._addresses.get(name, frozenset())

    def start(self) -> defer.Deferred:
        """
        Resolve every name once and schedule the refreshes.

        @return: Deferred firing (never failing) when each name has been
            tried once.
        """
        self._running = True
        return defer.DeferredList(
            [self._refresh(name) for name in self.names], consumeErrors=True
        )

    def stop(self):
        """Cancel the refresh timers."""
        self._running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _schedule(self, name, delay):
        if not self._running:
            return
        old = self._timers.get(name)
        if old is not None and old.active():
            old.cancel()
        self._timers[name] = self.clock.callLater(delay, self._refresh, name)

    def _refresh(self, name):
        d = self.resolver.resolveHost(name)

        def resolved(result):
            self._addresses[name] = result.addresses
            delay = min(max(result.ttl, self.minRefresh), self.maxRefresh)
            self._schedule(name, delay)

        def failed(failure):
            _log.warn(
                "access.host_lookup_failed name={name} reason={reason}",
                name=name, reason=failure.getErrorMessage(),
            )
            self._schedule(name, self.retryInterval)

        d.addCallbacks(resolved, failed)
        return d


def parseServer(text, defaultPort=53):
    """
    Parse a DNS server as written in configuration: C{"192.0.2.53"},
    C{"192.0.2.53:5353"}, C{"2001:db8::53"} or C{"[2001:db8::53]:5353"}.

    @return: C{(host, port)}
    @raise ValueError: not an address with an optional port.
    """
    text = str(text).strip()
    host, port = text, defaultPort
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad DNS server {text!r}")
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    ipaddress.ip_address(host)
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in DNS server {text!r}")
    return host, int(port)


def makeTwistedResolver(reactor, servers=(), resolvConf="/etc/resolv.conf"):
    """
    A twisted.names client resolver asking C{servers}, or the servers of
    the system's C{resolv.conf} when the list is empty.  No hosts file and
    no cache: L{AccessResolver} caches with TTLs itself.

    @param servers: strings accepted by L{parseServer}.
    """
    from twisted.names import client

    parsed = [parseServer(server) for server in servers]
    if parsed:
        return client.Resolver(servers=parsed, reactor=reactor)
    return client.Resolver(resolv=resolvConf, reactor=reactor)
