"""Tests for securepop.access.rules: parsing every rule form, hostile input."""

import ipaddress

import pytest

from securepop.access import rules
from securepop.access.rules import (
    Decision,
    DomainRule,
    HostRule,
    NetworkRule,
    RuleError,
    normaliseAddress,
    parseRule,
    parseRules,
)


def test_single_ipv4_matches_only_itself():
    rule = parseRule("192.0.2.7")
    assert isinstance(rule, NetworkRule)
    assert rule.matches(ipaddress.ip_address("192.0.2.7"))
    assert not rule.matches(ipaddress.ip_address("192.0.2.8"))


def test_single_ipv6_matches_only_itself():
    rule = parseRule("2001:db8::7")
    assert rule.matches(ipaddress.ip_address("2001:db8::7"))
    assert not rule.matches(ipaddress.ip_address("2001:db8::8"))
    assert not rule.matches(ipaddress.ip_address("192.0.2.7"))


def test_cidr_ipv4_and_ipv6():
    v4 = parseRule("10.1.0.0/16")
    assert v4.matches(ipaddress.ip_address("10.1.255.3"))
    assert not v4.matches(ipaddress.ip_address("10.2.0.1"))
    v6 = parseRule("2001:db8::/32")
    assert v6.matches(ipaddress.ip_address("2001:db8:ffff::1"))
    assert not v6.matches(ipaddress.ip_address("2001:db9::1"))


def test_address_mask_as_exchange_writes_it():
    rule = parseRule("131.107.2.0 255.255.255.0")
    assert rule.network == ipaddress.ip_network("131.107.2.0/24")
    assert rule.matches(ipaddress.ip_address("131.107.2.200"))
    assert not rule.matches(ipaddress.ip_address("131.107.3.1"))


def test_address_mask_slash_30_covers_four_addresses():
    rule = parseRule("127.0.0.4 255.255.255.252")
    inside = [a for a in range(256) if rule.matches(ipaddress.ip_address(f"127.0.0.{a}"))]
    assert inside == [4, 5, 6, 7]


def test_address_mask_extra_spaces_accepted():
    assert parseRule("  10.0.0.0   255.0.0.0 ").network == ipaddress.ip_network("10.0.0.0/8")


@pytest.mark.parametrize(
    "mask", ["255.0.255.0", "255.255.255.253", "0.255.255.255", "255.255.254.255"]
)
def test_non_contiguous_mask_is_an_error(mask):
    with pytest.raises(RuleError, match="not contiguous"):
        parseRule(f"10.0.0.0 {mask}")


def test_address_with_bits_outside_mask_is_an_error_with_suggestion():
    with pytest.raises(RuleError, match="did you mean '131.107.2.0 255.255.255.0'"):
        parseRule("131.107.2.5 255.255.255.0")


def test_cidr_with_host_bits_is_an_error_with_suggestion():
    with pytest.raises(RuleError, match="10.1.0.0/16"):
        parseRule("10.1.2.3/16")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "10.0.0.0 255.255.255.0 extra",
        "10.0.0 255.255.255.0",
        "010.0.0.1 255.255.255.255",
        "10.0.0.0 255.255.255.0/8",
        "2001:db8:: ffff::",
        "256.1.1.1",
        "10.0.0.0/33",
        "pc7.contoso.com",
        "host:",
        "domain:",
        "host:bad_name.example",
        "domain:-leading.example",
        "host:" + "a" * 64 + ".example",
        "host:" + ".".join(["abcdefghi"] * 30),
        "domain:1.2.3.4",
        "host:a..b",
        "::ffff:10.0.0.1",
        "x" * 400,
        "10.0.0.1\x00",
        "1.2.3.4 255.255.255.255\n",
    ],
)
def test_hostile_or_malformed_rules_are_errors(text):
    if text == "1.2.3.4 255.255.255.255\n":
        # trailing white space is harmless and accepted
        assert parseRule(text).network.num_addresses == 1
        return
    with pytest.raises(RuleError):
        parseRule(text)


def test_non_string_rule_is_an_error():
    with pytest.raises(RuleError):
        parseRule(42)


def test_host_rule_normalised():
    rule = parseRule("HOST:PC7.Contoso.COM.")
    assert isinstance(rule, HostRule)
    assert rule.name == "pc7.contoso.com"


def test_domain_rule_matches_name_and_subdomains_only():
    rule = parseRule("domain:contoso.com")
    assert isinstance(rule, DomainRule)
    assert rule.matchesName("contoso.com")
    assert rule.matchesName("PC7.Contoso.com.")
    assert not rule.matchesName("evilcontoso.com")
    assert not rule.matchesName("contoso.com.evil.example")
    assert not rule.matchesName("com")


def test_idn_names_are_encoded():
    assert parseRule("domain:bücher.example").name == "xn--bcher-kva.example"


def test_parse_rules_keeps_order_and_reports_index():
    parsed = parseRules(["10.0.0.0/8", "host:a.example", "domain:b.example"])
    assert [type(r) for r in parsed] == [NetworkRule, HostRule, DomainRule]
    with pytest.raises(RuleError) as info:
        parseRules(["10.0.0.0/8", "bogus rule here"])
    assert info.value.index == 1
    assert "rule 1" in str(info.value)


def test_parse_rules_refuses_a_plain_string():
    with pytest.raises(RuleError):
        parseRules("10.0.0.0/8")


def test_normalise_address_maps_ipv4_mapped_and_zone():
    assert normaliseAddress("::ffff:127.0.0.5") == ipaddress.ip_address("127.0.0.5")
    assert normaliseAddress("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    with pytest.raises(ValueError):
        normaliseAddress("not-an-address")


def test_check_mode():
    assert rules.checkMode("allow-listed") == "allow-listed"
    assert rules.checkMode("deny-listed") == "deny-listed"
    with pytest.raises(ValueError):
        rules.checkMode("allow")


def test_decision_is_frozen():
    decision = Decision(True, None, "x")
    with pytest.raises(Exception):
        decision.allowed = False


def test_describe_texts():
    assert parseRule("192.0.2.7").describe() == "address 192.0.2.7"
    assert parseRule("131.107.2.0 255.255.255.0").describe() == "network 131.107.2.0/24"
    assert "forward-confirmed" in parseRule("domain:x.example").describe()
