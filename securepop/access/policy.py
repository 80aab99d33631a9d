"""
The access policy: rules + mode + DNS, deciding before the greeting.

Order of work for one client address:

  1. Address rules (addresses, networks, "address mask" pairs, host rules
     with their current addresses) are tried at once, in configured order.
  2. Only when none matched and some C{domain:} rule exists, and reverse
     DNS is on, the address is looked up (forward-confirmed, cached; see
     L{securepop.access.dns}) and the domain rules are tried.
  3. A match allows the client in C{allow-listed} mode and declines it in
     C{deny-listed} mode; no match does the opposite.

With C{reverse_dns=False} (the article's advice under heavy load) no
lookup is ever made and domain rules never match.

When the reverse lookup fails (timeout, SERVFAIL, overload), C{dns_failure}
decides:

  - C{"no-match"} (default): the domain rules do not match.  In
    C{allow-listed} mode the client is declined (fails closed); in
    C{deny-listed} mode it is allowed unless an address rule matched.
  - C{"decline"}: the client is declined in either mode.

A PTR name that does not resolve back to the client (forged PTR, no
address record) is not a failure: the domain rules simply do not match.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from securepop.access.dns import (
    CONFIRMED,
    FAILED,
    HostAddressWatcher,
    ReverseResult,
)
from securepop.access.rules import (
    ALLOW_LISTED,
    Decision,
    DomainRule,
    HostRule,
    NetworkRule,
    checkMode,
    normaliseAddress,
    parseRule,
)
from securepop.interfaces import IAccessPolicy

DNS_FAILURE_NO_MATCH = "no-match"
DNS_FAILURE_DECLINE = "decline"
DNS_FAILURE_OUTCOMES = (DNS_FAILURE_NO_MATCH, DNS_FAILURE_DECLINE)

_log = Logger()


@implementer(IAccessPolicy)
class AccessPolicy:
    """
    Decides whether a client address may connect (see module docstring).
    """

    def __init__(
        self, rules, mode, resolver, clock, reverse_dns=True, dns_failure="no-match",
        hostWatcher=None,
    ):
        """
        @param rules: rule strings or parsed rules (L{securepop.access.rules}).
        @param mode: C{"allow-listed"} or C{"deny-listed"}.
        @param resolver: an L{securepop.access.dns.AccessResolver}; may be L{None}
            when no rule needs DNS (no host rules, and no domain rules or
            C{reverse_dns} off).
        @param clock: IReactorTime (host-name refresh timers).
        @param reverse_dns: when false, no reverse lookup is ever made.
        @param dns_failure: C{"no-match"} or C{"decline"}.
        @param hostWatcher: an L{HostAddressWatcher} to use
            instead of building one (tests).
        @raise ValueError: bad mode, bad dns_failure, a bad rule, or a
            rule that needs a resolver when none is given.
        """
        self.mode = checkMode(mode)
        if dns_failure not in DNS_FAILURE_OUTCOMES:
            raise ValueError(
                f"dns_failure must be one of {', '.join(DNS_FAILURE_OUTCOMES)}, "
                f"not {dns_failure!r}"
            )
        self.dnsFailure = dns_failure
        self.reverseDNS = bool(reverse_dns)
        self.rules = tuple(parseRule(r) if isinstance(r, str) else r for r in rules)
        self.resolver = resolver
        self.clock = clock
        self.addressRules = tuple(
            r for r in self.rules if isinstance(r, (NetworkRule, HostRule))
        )
        self.domainRules = tuple(r for r in self.rules if isinstance(r, DomainRule))
        hostNames = [r.name for r in self.rules if isinstance(r, HostRule)]
        if resolver is None and (hostNames or (self.domainRules and self.reverseDNS)):
            raise ValueError("host: and domain: rules need a DNS resolver")
        if hostWatcher is None and hostNames:
            hostWatcher = HostAddressWatcher(resolver, clock, hostNames)
        self.hostWatcher = hostWatcher

    def start(self) -> defer.Deferred:
        """
        Resolve the host rules' names (call at service start and after a
        reload has built a new policy).

        @return: Deferred firing when each name has been tried once.
        """
        if self.hostWatcher is None:
            return defer.succeed(None)
        return self.hostWatcher.start()

    def stop(self):
        """Stop refreshing host names."""
        if self.hostWatcher is not None:
            self.hostWatcher.stop()

    def _matchesAddress(self, rule, ip) -> bool:
        if isinstance(rule, NetworkRule):
            return rule.matches(ip)
        return ip in self.hostWatcher.addresses(rule.name)

    def _matched(self, rule, why) -> Decision:
        allowed = self.mode == ALLOW_LISTED
        verb = "allowed" if allowed else "declined"
        return Decision(allowed, rule.text, f"{verb}: {why} matches rule {rule.text!r}")

    def _noMatch(self, why="no rule matches") -> Decision:
        allowed = self.mode != ALLOW_LISTED
        verb = "allowed" if allowed else "declined"
        return Decision(allowed, None, f"{verb}: {why} ({self.mode})")

    def check(self, address) -> defer.Deferred:
        """
        @param address: the client's IP address (str).
        @return: Deferred firing with a L{Decision}; never fails.
        """
        try:
            ip = normaliseAddress(address)
        except (ValueError, TypeError):
            return defer.succeed(
                Decision(False, None, f"declined: {address!r} is not an IP address")
            )
        for rule in self.addressRules:
            if self._matchesAddress(rule, ip):
                return defer.succeed(self._matched(rule, str(ip)))
        if not self.domainRules:
            return defer.succeed(self._noMatch())
        if not self.reverseDNS:
            return defer.succeed(
                self._noMatch("no address rule matches and reverse DNS is off")
            )
        d = self.resolver.reverseLookup(ip)
        d.addCallback(self._decideByName, ip)
        d.addErrback(self._lookupError, ip)
        return d

    def _decideByName(self, result, ip) -> Decision:
        if result.status == CONFIRMED:
            for rule in self.domainRules:
                if rule.matchesName(result.name):
                    return self._matched(rule, f"{ip} ({result.name})")
            return self._noMatch(f"{ip} is {result.name}: no rule matches")
        if result.status == FAILED:
            if self.dnsFailure == DNS_FAILURE_DECLINE:
                return Decision(
                    False, None, f"declined: reverse DNS failed ({result.reason})"
                )
            return self._noMatch(
                f"reverse DNS failed ({result.reason}), domain rules do not match"
            )
        return self._noMatch(f"{result.reason}, domain rules do not match")

    def _lookupError(self, failure, ip):
        _log.failure("access check for {ip} failed", failure, ip=str(ip))
        result = ReverseResult(FAILED, None, "internal error")
        return self._decideByName(result, ip)

    def describe(self) -> list:
        """
        The effective policy, one line each, for C{securepop check-config}.
        """
        if self.mode == ALLOW_LISTED:
            lines = ["mode: allow-listed (only clients matching a rule may connect)"]
        else:
            lines = ["mode: deny-listed (all clients except those matching a rule)"]
        if not self.rules:
            if self.mode == ALLOW_LISTED:
                lines.append("WARNING: no rules: every client is declined")
            else:
                lines.append("no rules: every client is allowed")
        ordered = list(self.addressRules) + list(self.domainRules)
        for number, rule in enumerate(ordered, 1):
            line = f"rule {number}: {rule.text!r} -> {rule.describe()}"
            if isinstance(rule, HostRule):
                current = sorted(self.hostWatcher.addresses(rule.name), key=str)
                line += f"; now {', '.join(map(str, current)) or 'no addresses'}"
            lines.append(line)
        lines.append("order: address rules first, then domain rules; first match is logged")
        if self.domainRules:
            if not self.reverseDNS:
                lines.append(
                    "reverse DNS: off -> domain rules never match"
                    + (" (WARNING: allow-listed clients matched only by domain are declined)"
                       if self.mode == ALLOW_LISTED else "")
                )
            else:
                r = self.resolver
                lines.append(
                    f"reverse DNS: on, forward-confirmed, timeout {r.timeout:g} s, "
                    f"at most {r.maxConcurrentLookups} concurrent lookups"
                )
                if self.dnsFailure == DNS_FAILURE_DECLINE:
                    lines.append("on DNS failure: the client is declined")
                elif self.mode == ALLOW_LISTED:
                    lines.append(
                        "on DNS failure: domain rules do not match -> declined (fails closed)"
                    )
                else:
                    lines.append(
                        "on DNS failure: domain rules do not match -> allowed "
                        "(set dns_failure = \"decline\" to fail closed)"
                    )
        else:
            lines.append("reverse DNS: not needed (no domain rules)")
        return lines
