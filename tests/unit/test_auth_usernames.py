"""The one user-name rule (securepop.auth.usernames)."""

from dataclasses import replace

import pytest

from securepop.auth.usernames import (
    UnacceptableUsername, for_settings, index_names, normalise_username, own_domains,
    server_names,
)
from securepop.config import AuthSettings, LDAPSettings, ServerSettings, Settings

HOST = "pop.example.com"
AUTH = AuthSettings(netbios_domain="EXAMPLE")


def norm(raw, auth=AUTH, hostname=HOST):
    return normalise_username(raw, auth, hostname)


# -- case, white space, validity ---------------------------------------------------

@pytest.mark.parametrize("raw", ["Eve", "EVE", " eve ", b"Eve", "\teVe\r\n"])
def test_case_is_folded_and_space_removed(raw):
    assert norm(raw) == "eve"


def test_case_is_kept_when_configured():
    assert norm(" Eve ", replace(AUTH, username_case="preserve")) == "Eve"


@pytest.mark.parametrize("raw", ["", "   ", "a\x00b", "a\x7fb", "x" * 256, b"\xff\xfe",
                                 "\ud800", 7])
def test_unusable_names_are_refused(raw):
    with pytest.raises(ValueError):
        norm(raw)


def test_255_octets_are_enough():
    assert norm("é" * 127 + "a") == "é" * 127 + "a"        # 255 octets


# -- qualified names, strip_domain off (the default) ----------------------------------

@pytest.mark.parametrize("raw", [
    "EXAMPLE\\alice", "example\\Alice",           # NetBIOS domain, any case
    "alice@example.com", "Alice@EXAMPLE.COM",     # DNS domain (host name minus its label)
    "pop.example.com\\alice", "alice@pop.example.com", "ALICE@Pop.Example.Com.",
    "POP\\alice",                                 # NetBIOS computer name
    "example.com\\alice", "alice@example",
])
def test_the_servers_own_domains_mean_the_local_user(raw):
    assert norm(raw) == "alice"


@pytest.mark.parametrize("raw", [
    "OTHER\\alice", "alice@other.org", "alice@example.com.evil", "evil.example.com\\alice",
    "SECUREPOP\\alice",              # the default NetBIOS domain, not this one's
    "com\\alice", "alice@com",
])
def test_another_domain_is_refused(raw):
    with pytest.raises(UnacceptableUsername) as e:
        norm(raw)
    assert e.value.reason == "foreign-domain"
    assert "alice" not in str(e.value)        # the message never echoes the name


@pytest.mark.parametrize("raw", [
    "\\alice", "EXAMPLE\\", "@example.com", "alice@", "EXAMPLE\\alice@example.com",
    "EXAMPLE\\pop\\alice", "alice@example.com@example.com",
])
def test_malformed_qualified_names_are_refused(raw):
    with pytest.raises(UnacceptableUsername) as e:
        norm(raw)
    assert e.value.reason == "malformed"


def test_defaults_own_domains():
    """Embedded default: NetBIOS domain SECUREPOP, DNS domain from the host name."""
    auth = AuthSettings()
    assert auth.netbios_domain == "SECUREPOP" and not auth.strip_domain
    assert norm("SECUREPOP\\alice", auth) == "alice"
    assert norm("alice@example.com", auth) == "alice"
    with pytest.raises(UnacceptableUsername):
        norm("EXAMPLE\\alice", auth)
    assert own_domains(auth, HOST) == {"securepop", "pop", "pop.example.com", "example.com"}


def test_dns_domain_setting_replaces_the_derived_one():
    auth = replace(AUTH, dns_domain="corp.example")
    assert norm("alice@corp.example", auth) == "alice"
    assert norm("alice@pop.example.com", auth) == "alice"       # the host name stays
    with pytest.raises(UnacceptableUsername):
        norm("alice@example.com", auth)


def test_single_label_host():
    assert server_names(AuthSettings(netbios_domain=""), "localhost") == (
        "LOCALHOST", "LOCALHOST", "localhost", "localhost")
    assert norm("localhost\\alice", AuthSettings(), "localhost") == "alice"
    assert norm("alice@LOCALHOST", AuthSettings(), "localhost") == "alice"


def test_server_names_match_what_ntlm_announces():
    assert server_names(AUTH, "mail.example.test.") == (
        "MAIL", "EXAMPLE", "mail.example.test", "example.test")
    assert server_names(AuthSettings(netbios_domain="a-very-long-domain-name"), HOST)[1] \
        == "A-VERY-LONG-DOM"


def test_active_directory_domain_is_own_and_upn_goes_to_the_directory():
    auth = replace(AUTH, source="ad", netbios_domain="SECUREPOP",
                   ad=replace(AUTH.ad, domain="CORP"))
    assert norm("CORP\\Alice", auth) == "alice"
    assert norm("SECUREPOP\\alice", auth) == "alice"
    # a UPN suffix only the directory knows: handed over whole (lower-cased)
    assert norm("Alice.Smith@Other-Suffix.example", auth) == "alice.smith@other-suffix.example"
    with pytest.raises(UnacceptableUsername):
        norm("OTHER\\alice", auth)
    # the AD domain is not own when the source is not AD
    with pytest.raises(UnacceptableUsername):
        norm("CORP\\alice", replace(auth, source="file"))


def test_ldap_user_filter_decides_about_addresses():
    auth = replace(AUTH, source="ldap", ldap=LDAPSettings(user_filter="(mail={user})"))
    assert norm("Alice@Other.org", auth) == "alice@other.org"
    with pytest.raises(UnacceptableUsername):
        norm("OTHER\\alice", auth)


# -- strip_domain on -------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["OTHER\\Alice", "alice@other.org", "EXAMPLE\\alice",
                                 "alice@example.com", "alice"])
def test_strip_domain_drops_any_domain(raw):
    assert norm(raw, replace(AUTH, strip_domain=True)) == "alice"


# -- stored names ----------------------------------------------------------------------

def test_index_names():
    index, unreachable, ambiguous = index_names(
        ["Eve", "bob", "Carol", "carol", "dave@other.org", "CAROL", "Frank@example.com"],
        lambda name: norm(name))
    assert index == {"eve": "Eve", "bob": "bob", "carol": "carol", "frank": "Frank@example.com"}
    assert [name for name, _ in unreachable] == ["dave@other.org"]
    assert "domain" in unreachable[0][1]
    assert ambiguous == {"carol": ["CAROL", "Carol", "carol"]}


def test_index_names_prefers_the_first_sorted_when_none_is_exact():
    index, _, ambiguous = index_names(["eVe", "Eve"], lambda name: norm(name))
    assert index == {"eve": "Eve"} and ambiguous == {"eve": ["Eve", "eVe"]}


def test_for_settings_uses_server_hostname():
    settings = Settings(server=ServerSettings(hostname="mx.example.net"), auth=AUTH)
    assert for_settings(settings)("Bob@Example.Net") == "bob"
    with pytest.raises(ValueError):
        for_settings(settings)("bob@example.com")
