"""
Connection rules as the administrator writes them, and the decision they yield.

One list of rules and a mode, as in Exchange 2000's "Connection" dialog:

  - C{allow-listed} ("Only the list below"): a client is allowed when at
    least one rule matches it, declined otherwise.
  - C{deny-listed} ("All except the list below"): a client is declined when
    at least one rule matches it, allowed otherwise.

Rule forms (one string each)::

  192.0.2.7                      one IPv4 address
  2001:db8::7                    one IPv6 address
  10.1.0.0/16, 2001:db8::/32     CIDR network (host bits must be zero)
  131.107.2.0 255.255.255.0      IPv4 address + subnet mask, as Exchange writes
                                 it (the mask must be contiguous)
  host:pc7.contoso.com           every address the name resolves to (A and
                                 AAAA), re-resolved when the DNS TTL expires
  domain:contoso.com             clients whose forward-confirmed PTR name is
                                 contoso.com or ends in .contoso.com

Precedence: there are no exceptions inside a list, so the outcome depends
only on whether I{some} rule matches.  Address rules (addresses, networks,
host rules) are tried first, in the configured order, because they need no
network traffic; domain rules are tried only when no address rule matched,
and they are the only rules that cause a reverse DNS lookup.  The decision
names the first matching rule in that order.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Union

ALLOW_LISTED = "allow-listed"
DENY_LISTED = "deny-listed"
MODES = (ALLOW_LISTED, DENY_LISTED)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DOTTED_QUAD = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_MAX_RULE_LENGTH = 300


class RuleError(ValueError):
    """
    A rule that cannot be understood; the text says why and what to write.

    @ivar index: position of the rule in the configured list, or L{None}.
    """

    def __init__(self, text, reason, index=None):
        self.text, self.reason, self.index = text, reason, index
        where = f"rule {index}: " if index is not None else ""
        super().__init__(f"{where}{text!r}: {reason}")


@dataclass(frozen=True)
class Decision:
    """
    The outcome of an access check.

    @ivar allowed: whether the client may proceed to the greeting.
    @ivar rule: the text of the rule that decided, or L{None} when the
        decision came from the mode alone (no rule matched).
    @ivar reason: a short text for logs, never for the client.
    """

    allowed: bool
    rule: str | None
    reason: str


@dataclass(frozen=True)
class NetworkRule:
    """An address, a CIDR network or an "address mask" pair."""

    network: IPNetwork
    text: str

    needsDNS = False

    def matches(self, address: IPAddress) -> bool:
        return address in self.network

    def describe(self) -> str:
        if self.network.num_addresses == 1:
            return f"address {self.network.network_address}"
        return f"network {self.network}"


@dataclass(frozen=True)
class HostRule:
    """A host name standing for all the addresses it resolves to."""

    name: str
    text: str

    needsDNS = False

    def describe(self) -> str:
        return f"host {self.name} (addresses from DNS, re-resolved at TTL expiry)"


@dataclass(frozen=True)
class DomainRule:
    """A DNS domain matched against the client's forward-confirmed PTR name."""

    name: str
    text: str

    needsDNS = True

    def matchesName(self, ptrName: str) -> bool:
        """
        @param ptrName: a forward-confirmed PTR name (any case, optional
            trailing dot).
        """
        ptrName = ptrName.lower().rstrip(".")
        return ptrName == self.name or ptrName.endswith("." + self.name)

    def describe(self) -> str:
        return f"domain {self.name} (reverse DNS, forward-confirmed)"


Rule = Union[NetworkRule, HostRule, DomainRule]


def normaliseAddress(address) -> IPAddress:
    """
    Parse a client address; IPv4-mapped IPv6 addresses (from dual-stack
    listeners) become IPv4 so IPv4 rules apply to them, and an IPv6 zone
    index is dropped.

    @raise ValueError: not an IP address.
    """
    if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        parsed = address
    else:
        return _normaliseText(str(address))
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        return parsed.ipv4_mapped
    return parsed


@functools.lru_cache(maxsize=4096)
def _normaliseText(text):
    # Every connection parses its peer's address; clients come back.
    if "%" in text:
        text = text.split("%", 1)[0]
    return normaliseAddress(ipaddress.ip_address(text))


def normaliseHostName(name: str, text: str) -> str:
    """
    Check a DNS name's syntax and return it in lower case, IDNA-encoded,
    without a trailing dot.

    @raise RuleError: not a valid host name.
    """
    name = name.strip().rstrip(".").lower()
    if not name:
        raise RuleError(text, "empty name")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise RuleError(text, "not a valid DNS name") from None
    if len(ascii_name) > 253:
        raise RuleError(text, "DNS name longer than 253 characters")
    labels = ascii_name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise RuleError(
                text, f"DNS label {label!r} is not letters, digits and inner hyphens"
            )
    if labels[-1].isdigit():
        raise RuleError(text, "an IP address is not a name: write it without a prefix")
    return ascii_name


def _parseDottedQuad(part: str, text: str, what: str) -> ipaddress.IPv4Address:
    if not _DOTTED_QUAD.match(part):
        raise RuleError(text, f"{what} {part!r} is not a dotted-quad IPv4 address")
    try:
        return ipaddress.IPv4Address(part)
    except ValueError as e:
        raise RuleError(text, f"{what} {part!r}: {e}") from None


def _prefixFromMask(mask: ipaddress.IPv4Address, text: str) -> int:
    value = int(mask)
    inverted = (~value) & 0xFFFFFFFF
    # A contiguous mask is ones then zeros: its complement plus one is a
    # power of two.
    if inverted & (inverted + 1):
        raise RuleError(
            text, f"subnet mask {mask} is not contiguous (ones must come first)"
        )
    return 32 - inverted.bit_length()


def parseRule(text: str) -> Rule:
    """
    Parse one rule string (see the module docstring for the forms).

    @raise RuleError: the rule cannot be understood.
    """
    if not isinstance(text, str):
        raise RuleError(repr(text), "a rule must be a string")
    if len(text) > _MAX_RULE_LENGTH:
        raise RuleError(text[:40] + "...", "rule too long")
    stripped = text.strip()
    if not stripped:
        raise RuleError(text, "empty rule")
    lowered = stripped.lower()
    if lowered.startswith("host:"):
        return HostRule(normaliseHostName(stripped[5:], text), stripped)
    if lowered.startswith("domain:"):
        return DomainRule(normaliseHostName(stripped[7:], text), stripped)
    parts = stripped.split()
    if len(parts) == 2:
        address = _parseDottedQuad(parts[0], text, "address")
        mask = _parseDottedQuad(parts[1], text, "subnet mask")
        prefix = _prefixFromMask(mask, text)
        try:
            network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=True)
        except ValueError:
            base = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
            raise RuleError(
                text,
                f"address has bits set outside mask {mask}; "
                f"did you mean '{base.network_address} {mask}'?",
            ) from None
        return NetworkRule(network, stripped)
    if len(parts) != 1:
        raise RuleError(text, "expected an address, a network, host:NAME or domain:NAME")
    try:
        if "/" in stripped:
            network = ipaddress.ip_network(stripped, strict=True)
        else:
            network = ipaddress.ip_network(ipaddress.ip_address(stripped))
    except ValueError as e:
        if "/" in stripped and "host bits set" in str(e):
            base = ipaddress.ip_network(stripped, strict=False)
            raise RuleError(text, f"host bits set; did you mean '{base}'?") from None
        raise RuleError(
            text,
            "not an IP address or network (names need host: or domain:)",
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        raise RuleError(text, "IPv4-mapped IPv6 address: write the IPv4 form")
    return NetworkRule(network, stripped)


def parseRules(texts) -> tuple:
    """
    Parse a configured list of rules, keeping their order.

    @raise RuleError: naming the index of the first bad rule.
    """
    if isinstance(texts, str):
        raise RuleError(texts, "rules must be a list of strings")
    rules = []
    for index, text in enumerate(texts):
        try:
            rules.append(parseRule(text))
        except RuleError as e:
            raise RuleError(e.text, e.reason, index) from None
    return tuple(rules)


def checkMode(mode: str) -> str:
    """
    @raise ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
