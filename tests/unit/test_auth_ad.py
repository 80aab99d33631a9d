"""
Tests for securepop.auth.ad.ADCredentialSource (MOCK_SYNC directory inline;
the integration tests run a real Samba AD DC).
"""

from dataclasses import replace

import ldap3
import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.ad import AD_ATTRIBUTES, ADCredentialSource
from securepop.interfaces import (
    CLEARTEXT_SECRET,
    NT_HASH,
    NTLM_DELEGATE,
    PLAINTEXT,
    ICredentialSource,
)

BASE = "DC=example,DC=test"
USERS = f"CN=Users,{BASE}"
GROUP = f"CN=POP3 Users,{USERS}"
NEVER = "9223372036854775807"
# 2030-01-01 and 2001-01-01 as FILETIME (100 ns ticks since 1601)
FILETIME_2030 = str((1893456000 + 11644473600) * 10_000_000)
FILETIME_2001 = str((978307200 + 11644473600) * 10_000_000)


def person(name, **attributes):
    values = {"objectClass": ["top", "person", "user"],
              "objectCategory": "person", "sAMAccountName": name,
              "userPrincipalName": f"{name.lower()}@example.test",
              "userPassword": f"pw-{name.lower()}",
              "userAccountControl": "512", "accountExpires": NEVER}
    values.update(attributes)
    return (f"CN={name} Example,{USERS}", values)


ENTRIES = [
    ("CN=svc,CN=Users,DC=example,DC=test",
     {"objectClass": "user", "userPassword": "svcpw"}),
    person("Alice"),
    person("Bob", userAccountControl="514"),
    person("Carol", lockoutTime="133000000000000000"),
    person("Dave", accountExpires=FILETIME_2001),
    person("Erin", accountExpires=FILETIME_2030),
    person("Frank", accountExpires="0", lockoutTime="0"),
    person("Gina", **{"msDS-User-Account-Control-Computed": "16"}),
]


def factory(server, user, password):
    connection = ldap3.Connection(server, user=user, password=password,
                                  client_strategy=ldap3.MOCK_SYNC,
                                  raise_exceptions=False)
    for dn, attributes in ENTRIES:
        connection.strategy.add_entry(dn, attributes)
    return connection


def make_source(now=1700000000, ntlm_delegate=True, **overrides):
    values = dict(urls=("ldaps://dc1.example.test",), base_dn=BASE,
                  bind_dn="CN=svc,CN=Users,DC=example,DC=test",
                  nested_groups=False)
    values.update(overrides)
    reactor = MemoryReactorClock()
    reactor.advance(now)
    return ADCredentialSource(replace(config.AD_DEFAULTS, **values), reactor,
                              domain="EXAMPLE", realm="example.test",
                              ntlm_delegate=ntlm_delegate, connection_factory=factory,
                              run_in_thread=maybeDeferred, bind_password="svcpw")


def result(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome
    return outcome[0]


def refused(deferred):
    value = result(deferred)
    assert hasattr(value, "check") and value.check(UnauthorizedLogin), value
    return value


def test_interface_and_name():
    source = make_source()
    assert verifyObject(ICredentialSource, source)
    assert source.name == "ad"


def test_capabilities_never_include_nt_hash():
    assert make_source().capabilities() == {PLAINTEXT, NTLM_DELEGATE}
    assert make_source(ntlm_delegate=False).capabilities() == {PLAINTEXT}
    assert NT_HASH not in make_source().capabilities()
    assert CLEARTEXT_SECRET not in make_source().capabilities()


def test_secret_attributes_refused_by_the_configuration():
    base = ('[auth]\nsource = "ad"\nmechanisms = ["PLAIN"]\n[auth.ad]\n'
            'urls = ["ldaps://h"]\nbase_dn = "DC=example,DC=test"\n')
    for key in ("nt_hash_attribute", "apop_secret_attribute"):
        with pytest.raises(config.ConfigError) as e:
            config.parse(base + f'{key} = "unicodePwd"\n', "/etc/securepop.toml")
        assert e.value.key == f"auth.ad.{key}"
        assert "never reveals" in e.value.reason
    config.parse(base, "/etc/securepop.toml")


def test_secret_attributes_never_served():
    # even when set on settings built in code, AD serves no stored secret
    source = make_source(nt_hash_attribute="x", apop_secret_attribute="y")
    assert source.capabilities() == {PLAINTEXT, NTLM_DELEGATE}
    assert result(source.lookupSecret("alice", NT_HASH)).check(ValueError)
    assert result(source.lookupSecret("alice", CLEARTEXT_SECRET)).check(ValueError)


def test_ad_defaults():
    settings = config.AuthSettings().ad
    assert settings is config.AD_DEFAULTS
    assert settings.username_attribute == "sAMAccountName"
    assert settings.user_filter == "(sAMAccountName={user})"
    assert settings.nested_groups is True
    assert config.LDAPSettings().nested_groups is False
    wanted = make_source(mailbox_attribute="homeDirectory").attributes_wanted()
    assert wanted == ["sAMAccountName", "homeDirectory", *AD_ATTRIBUTES]
    assert "userAccountControl" in wanted and "accountExpires" in wanted


def test_canonical_name_is_lowercased():
    record = result(make_source().verifyPassword("ALICE", b"pw-alice"))
    assert record.username == "alice"


def test_three_spellings_of_a_user_name():
    source = make_source()
    plain = source.user_filter("alice")
    assert plain == ("(&(objectCategory=person)(objectClass=user)"
                     "(sAMAccountName=alice))")
    assert source.user_filter("EXAMPLE\\alice") == plain
    assert source.user_filter("example\\alice") == plain
    assert "(userPrincipalName=alice@example.test)" in source.user_filter(
        "alice@example.test")
    assert "(sAMAccountName=alice)" in source.user_filter("alice@example.test")
    other = source.user_filter("alice@other.test")
    assert "(userPrincipalName=alice@other.test)" in other
    assert "sAMAccountName" not in other


@pytest.mark.parametrize("name", ["OTHER\\alice", "EXAMPLE\\", "\\alice",
                                  "EXAMPLE\\a\\b", "@example.test", "alice@"])
def test_impossible_spellings_match_nothing(name):
    assert make_source().user_filter(name) is None


@pytest.mark.parametrize("name", ["EXAMPLE\\*", "*@example.test", ")(x=*",
                                  "EXAMPLE\\al)(x"])
def test_each_spelling_is_escaped(name):
    userFilter = make_source().user_filter(name)
    inner = userFilter[len("(&(objectCategory=person)(objectClass=user)"):-1]
    assert "*" not in inner
    assert inner.count("(") == inner.count(")")
    assert ")(x" not in inner


def test_login_by_each_spelling():
    source = make_source()
    for name in ("Alice", "alice", "EXAMPLE\\alice", "alice@example.test"):
        assert result(source.verifyPassword(name, b"pw-alice")).username == "alice"
    refused(source.verifyPassword("alice", b"pw-bob"))
    refused(source.verifyPassword("OTHER\\alice", b"pw-alice"))


@pytest.mark.parametrize("name,state", [
    ("bob", "disabled"), ("carol", "locked"), ("dave", "expired"),
    ("gina", "locked"),
])
def test_account_state_refused(name, state):
    source = make_source()
    failure = refused(source.verifyPassword(name, f"pw-{name}".encode()))
    assert state in str(failure.value)
    refused(source.lookupUser(name))


@pytest.mark.parametrize("name", ["erin", "frank"])
def test_account_state_allowed(name):
    source = make_source()
    assert result(source.lookupUser(name)).username == name


def test_expiry_follows_the_clock():
    assert result(make_source(now=1893455999).lookupUser("erin")).username == "erin"
    refused(make_source(now=1893456000).lookupUser("erin"))


def test_nested_group_uses_the_in_chain_matching_rule():
    source = make_source(nested_groups=True, required_group=GROUP)
    searches = []

    class Session:
        def search(self, base, search_filter, attributes, scope=None,
                   size_limit=0):
            searches.append((base, search_filter, scope))
            return [{"dn": base, "raw": {}}]

    entry = {"dn": f"CN=Alice Example,{USERS}", "raw": {}}
    assert source._is_member(Session(), entry, GROUP)
    base, searchFilter, scope = searches[0]
    assert base == entry["dn"]
    assert scope == ldap3.BASE
    assert searchFilter == ("(memberOf:1.2.840.113556.1.4.1941:="
                            "CN=POP3 Users,CN=Users,DC=example,DC=test)")


def test_lookup_secret_refused():
    source = make_source()
    value = result(source.lookupSecret("alice", NT_HASH))
    assert value.check(ValueError)


def test_from_settings_builds_the_winbind_verifier(tmp_path):
    from securepop import config

    (tmp_path / "pw").write_bytes(b"svcpw\n")
    helper = tmp_path / "ntlm_auth"   # an executable stands in for Samba's
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    path = tmp_path / "securepop.toml"
    path.write_text(
        '[auth]\nsource = "ad"\nmechanisms = ["PLAIN", "NTLM"]\n'
        'insecure_allow_ntlmv1 = true\n'
        '[auth.ad]\nurls = ["ldaps://dc1.example.test"]\n'
        'base_dn = "DC=example,DC=test"\nbind_dn = "svc@example.test"\n'
        'bind_password_file = "pw"\ndomain = "EXAMPLE"\nhelpers = 3\n'
        f'ntlm_auth = "{helper}"\nntlm_auth_config = "/etc/samba/smb.conf"\n')
    settings = config.load(str(path), str(tmp_path))
    source = ADCredentialSource.fromSettings(settings.auth.ad,
                                             MemoryReactorClock(), settings)
    assert source.domain == "EXAMPLE"
    assert source.settings.nested_groups is True
    assert source.settings.username_attribute == "sAMAccountName"
    verifier = source.ntlmVerifier
    assert verifier.settings.helpers == 3
    assert verifier.settings.insecure_allow_ntlmv1 is True
    assert "--configfile=/etc/samba/smb.conf" in verifier.command()
    assert source.ntlmDelegateFactory == verifier.newExchange
    assert source.capabilities() == {PLAINTEXT, NTLM_DELEGATE}


def test_from_settings_without_helpers_has_no_ntlm(tmp_path):
    from securepop import config

    path = tmp_path / "securepop.toml"
    path.write_text(
        '[auth]\nsource = "ad"\nmechanisms = ["PLAIN"]\n'
        '[auth.ad]\nurls = ["ldaps://dc1.example.test"]\n'
        'base_dn = "DC=example,DC=test"\nhelpers = 0\n')
    settings = config.load(str(path), str(tmp_path))
    source = ADCredentialSource.fromSettings(settings.auth.ad,
                                             MemoryReactorClock(), settings)
    assert source.ntlmDelegateFactory is None
    assert source.capabilities() == {PLAINTEXT}
