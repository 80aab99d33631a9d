"""
Tests for securepop.auth.ad.ADCredentialSource (MOCK_SYNC directory inline;
the integration tests run a real Samba AD DC).
"""

import ldap3
import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop.auth.ad import ADCredentialSource, adSettings
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


def makeSource(now=1700000000, ntlmDelegate=True, **overrides):
    values = dict(urls=("ldaps://dc1.example.test",), base_dn=BASE,
                  bind_dn="CN=svc,CN=Users,DC=example,DC=test",
                  nested_groups=False)
    values.update(overrides)
    reactor = MemoryReactorClock()
    reactor.advance(now)
    return ADCredentialSource(adSettings(**values), reactor, domain="EXAMPLE",
                              realm="example.test", ntlmDelegate=ntlmDelegate,
                              connectionFactory=factory,
                              runInThread=maybeDeferred, bindPassword="svcpw")


def result(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome
    return outcome[0]


def refused(deferred):
    value = result(deferred)
    assert hasattr(value, "check") and value.check(UnauthorizedLogin), value
    return value


def test_interfaceAndName():
    source = makeSource()
    assert verifyObject(ICredentialSource, source)
    assert source.name == "ad"


def test_capabilitiesNeverIncludeNTHash():
    assert makeSource().capabilities() == {PLAINTEXT, NTLM_DELEGATE}
    assert makeSource(ntlmDelegate=False).capabilities() == {PLAINTEXT}
    assert NT_HASH not in makeSource().capabilities()
    assert CLEARTEXT_SECRET not in makeSource().capabilities()


def test_secretAttributesRefused():
    with pytest.raises(ValueError):
        adSettings(urls=("ldaps://h",), base_dn=BASE,
                   nt_hash_attribute="unicodePwd")
    with pytest.raises(ValueError):
        adSettings(urls=("ldaps://h",), base_dn=BASE, secret_attribute="x")


def test_adDefaults():
    settings = adSettings(urls=("ldaps://h",), base_dn=BASE)
    assert settings.username_attribute == "sAMAccountName"
    assert settings.nested_groups is True
    assert "userAccountControl" in settings.extra_attributes
    assert "accountExpires" in settings.extra_attributes


def test_threeSpellingsOfAUserName():
    source = makeSource()
    plain = source.userFilter("alice")
    assert plain == ("(&(objectCategory=person)(objectClass=user)"
                     "(sAMAccountName=alice))")
    assert source.userFilter("EXAMPLE\\alice") == plain
    assert source.userFilter("example\\alice") == plain
    assert "(userPrincipalName=alice@example.test)" in source.userFilter(
        "alice@example.test")
    assert "(sAMAccountName=alice)" in source.userFilter("alice@example.test")
    other = source.userFilter("alice@other.test")
    assert "(userPrincipalName=alice@other.test)" in other
    assert "sAMAccountName" not in other


@pytest.mark.parametrize("name", ["OTHER\\alice", "EXAMPLE\\", "\\alice",
                                  "EXAMPLE\\a\\b", "@example.test", "alice@"])
def test_impossibleSpellingsMatchNothing(name):
    assert makeSource().userFilter(name) is None


@pytest.mark.parametrize("name", ["EXAMPLE\\*", "*@example.test", ")(x=*",
                                  "EXAMPLE\\al)(x"])
def test_eachSpellingIsEscaped(name):
    userFilter = makeSource().userFilter(name)
    inner = userFilter[len("(&(objectCategory=person)(objectClass=user)"):-1]
    assert "*" not in inner
    assert inner.count("(") == inner.count(")")
    assert ")(x" not in inner


def test_loginByEachSpelling():
    source = makeSource()
    for name in ("Alice", "alice", "EXAMPLE\\alice", "alice@example.test"):
        assert result(source.verifyPassword(name, b"pw-alice")).username == "alice"
    refused(source.verifyPassword("alice", b"pw-bob"))
    refused(source.verifyPassword("OTHER\\alice", b"pw-alice"))


@pytest.mark.parametrize("name,state", [
    ("bob", "disabled"), ("carol", "locked"), ("dave", "expired"),
    ("gina", "locked"),
])
def test_accountStateRefused(name, state):
    source = makeSource()
    failure = refused(source.verifyPassword(name, f"pw-{name}".encode()))
    assert state in str(failure.value)
    refused(source.lookupUser(name))


@pytest.mark.parametrize("name", ["erin", "frank"])
def test_accountStateAllowed(name):
    source = makeSource()
    assert result(source.lookupUser(name)).username == name


def test_expiryFollowsTheClock():
    assert result(makeSource(now=1893455999).lookupUser("erin")).username == "erin"
    refused(makeSource(now=1893456000).lookupUser("erin"))


def test_nestedGroupUsesTheInChainMatchingRule():
    source = makeSource(nested_groups=True, required_group=GROUP)
    searches = []

    class Session:
        def search(self, base, searchFilter, attributes, scope=None,
                   sizeLimit=0):
            searches.append((base, searchFilter, scope))
            return [{"dn": base, "raw": {}}]

    entry = {"dn": f"CN=Alice Example,{USERS}", "raw": {}}
    assert source._isMember(Session(), entry, GROUP)
    base, searchFilter, scope = searches[0]
    assert base == entry["dn"]
    assert scope == ldap3.BASE
    assert searchFilter == ("(memberOf:1.2.840.113556.1.4.1941:="
                            "CN=POP3 Users,CN=Users,DC=example,DC=test)")


def test_lookupSecretRefused():
    source = makeSource()
    value = result(source.lookupSecret("alice", NT_HASH))
    assert value.check(ValueError)


def test_fromSettingsBuildsTheWinbindVerifier(tmp_path):
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


def test_fromSettingsWithoutHelpersHasNoNTLM(tmp_path):
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
