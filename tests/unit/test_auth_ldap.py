"""
Tests for securepop.auth.ldap.LDAPCredentialSource: search, bind, group
checks and attribute mapping (MOCK_SYNC directory inline; the servers,
failover and threads are tested in test_auth_ldappool.py).
"""

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.ldap import LDAPCredentialSource
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.interfaces import (
    CLEARTEXT_SECRET,
    NT_HASH,
    NTLM_DELEGATE,
    PLAINTEXT,
    ICredentialSource,
)
from tests.unit.ldap_directory import (
    GROUP,
    DENIED,
    NT,
    PEOPLE,
    failure_of,
    make_source,
    result,
)


def test_provides_the_interface():
    _, _, source = make_source()
    assert verifyObject(ICredentialSource, source)
    assert source.name == "ldap"


def test_capabilities_follow_the_configured_attributes():
    assert make_source()[2].capabilities() == {PLAINTEXT}
    _, _, source = make_source(nt_hash_attribute="ntHash",
                               apop_secret_attribute="secret")
    assert source.capabilities() == {PLAINTEXT, NT_HASH, CLEARTEXT_SECRET}
    assert NTLM_DELEGATE not in source.capabilities()


def test_login_succeeds():
    _, _, source = make_source()
    record = result(source.verifyPassword("alice", b"pw-alice"))
    assert record == UserRecord("alice", mailbox="/m/alice")
    assert record.info["dn"] == f"uid=alice,{PEOPLE}"
    assert record.info["server"] == "ldaps://127.0.0.1:1636"


def test_record_names_the_server_that_answered():
    _, directory, source = make_source()
    directory.down.add(1636)
    record = result(source.verifyPassword("alice", b"pw-alice"))
    assert record.info["server"] == "ldaps://127.0.0.1:2636"


def test_wrong_password_refused():
    _, _, source = make_source()
    failure_of(source.verifyPassword("alice", b"pw-bob"), UnauthorizedLogin)


def test_empty_password_is_never_an_anonymous_bind():
    _, _, source = make_source()
    failure_of(source.verifyPassword("alice", b""), UnauthorizedLogin)


def test_password_must_be_bytes():
    _, _, source = make_source()
    failure_of(source.verifyPassword("alice", "pw-alice"), TypeError)


def test_unknown_user_refused():
    _, _, source = make_source()
    failure_of(source.verifyPassword("mallory", b"x"), UnauthorizedLogin)


def test_required_group():
    _, _, source = make_source()
    failure_of(source.verifyPassword("bob", b"pw-bob"), UnauthorizedLogin)
    _, _, open_ = make_source(required_group="")
    assert result(open_.verifyPassword("bob", b"pw-bob")).username == "bob"


def test_pop3_switch_attribute():
    _, _, source = make_source(pop3_enabled_attribute="pop3", required_group="")
    failure_of(source.verifyPassword("dave", b"pw-dave"), UnauthorizedLogin)
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"
    # absent: the configured default decides
    failure_of(source.verifyPassword("bob", b"pw-bob"), UnauthorizedLogin)
    _, _, lenient = make_source(pop3_enabled_attribute="pop3", required_group="",
                                pop3_attribute_default=True)
    assert result(lenient.verifyPassword("bob", b"pw-bob")).username == "bob"


def test_pop3_denied_group():
    _, _, source = make_source(pop3_denied_group=DENIED)
    failure_of(source.verifyPassword("erin", b"pw-erin"), UnauthorizedLogin)
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"


@pytest.mark.parametrize("hostile", [
    "*", "ali*", "*)(uid=*", ")(", "alice)(|(uid=*", "\\", "alice\\",
    "(uid=alice)", "alice*",
])
def test_hostile_names_cannot_change_the_filter(hostile):
    _, directory, source = make_source(required_group="")
    failure_of(source.verifyPassword(hostile, b"pw-alice"), UnauthorizedLogin)
    user_filter = directory.filters[0]
    assert user_filter.count("(") == 1 and user_filter.count(")") == 1
    assert "*" not in user_filter


@pytest.mark.parametrize("hostile", ["alice\x00", "\x00", "a" * 257,
                                     "alice\r\n", "", "al\x7fice"])
def test_hostile_names_refused_before_any_search(hostile):
    _, directory, source = make_source()
    failure_of(source.verifyPassword(hostile, b"pw-alice"), UnauthorizedLogin)
    assert directory.filters == []


def test_filter_characters_in_a_real_name_still_work():
    _, directory, source = make_source()
    assert result(source.verifyPassword("odd*(x)", b"pw-odd")).username == "odd*(x)"
    assert directory.filters[0] == "(uid=odd\\2a\\28x\\29)"


def test_the_search_asks_for_the_configured_attributes():
    _, _, source = make_source(nt_hash_attribute="ntHash", pop3_enabled_attribute="pop3")
    assert source.attributes_wanted() == ["uid", "mailbox", "ntHash", "pop3"]
    assert make_source(mailbox_attribute="")[2].attributes_wanted() == ["uid"]


def test_lookup_secret_nt_hash():
    _, _, source = make_source(nt_hash_attribute="ntHash", required_group="")
    record, secret = result(source.lookupSecret("alice", NT_HASH))
    assert record.username == "alice"
    assert secret == bytes.fromhex(NT)
    failure_of(source.lookupSecret("dave", NT_HASH), UnauthorizedLogin)
    failure_of(source.lookupSecret("bob", NT_HASH), UnauthorizedLogin)


def test_lookup_secret_cleartext():
    _, _, source = make_source(apop_secret_attribute="secret")
    record, secret = result(source.lookupSecret("alice", CLEARTEXT_SECRET))
    assert secret == b"apop-alice"
    failure_of(source.lookupSecret("bob", CLEARTEXT_SECRET), UnauthorizedLogin)


def test_lookup_secret_of_unconfigured_kind():
    _, _, source = make_source()
    failure_of(source.lookupSecret("alice", NT_HASH), ValueError)
    failure_of(source.lookupSecret("alice", CLEARTEXT_SECRET), ValueError)


def test_lookup_user_checks_group_without_password():
    _, _, source = make_source()
    assert result(source.lookupUser("alice")).username == "alice"
    failure_of(source.lookupUser("bob"), UnauthorizedLogin)


def test_explain_reports_each_step():
    _, _, source = make_source(group_base_dn="dc=t")
    report = result(source.explain("alice", b"pw-alice"))
    assert report["result"] == "ok"
    assert report["dn"] == f"uid=alice,{PEOPLE}"
    assert GROUP in report["groups"]
    assert report["server"] == "ldaps://127.0.0.1:1636"
    assert "pw-alice" not in repr(report)
    refused = result(source.explain("bob", b"pw-bob"))
    assert refused["result"] == "refused"
    assert "not in" in refused["reason"]


def test_explain_reports_an_outage():
    _, directory, source = make_source()
    directory.down.update({1636, 2636})
    report = result(source.explain("alice", b"pw-alice"))
    assert report["result"] == "unavailable"
    failure_of(source.verifyPassword("alice", b"pw-alice"), SourceUnavailable)


def test_source_takes_the_configuration_section_as_it_is():
    # the configuration's class is the source's: no second definition
    _, _, source = make_source()
    assert isinstance(source.settings, config.LDAPSettings)
    assert source.pool.settings is source.settings


def test_from_settings_takes_the_config_section(tmp_path):
    (tmp_path / "pw").write_bytes(b"svcpw\n")
    (tmp_path / "ca.pem").write_text("")
    path = tmp_path / "securepop.toml"
    path.write_text(
        '[auth]\nsource = "ldap"\nmechanisms = ["PLAIN", "CRAM-MD5"]\n'
        '[auth.ldap]\nurls = ["ldaps://ldap1.example.test", '
        '"ldap://ldap2.example.test"]\nstart_tls = true\n'
        'base_dn = "ou=p,dc=t"\nbind_dn = "cn=svc,dc=t"\n'
        'bind_password_file = "pw"\nca_file = "ca.pem"\n'
        'pop3_enabled_attribute = "pop3"\n'
        'apop_secret_attribute = "secret"\ntimeout = 2.5\npool_size = 2\n')
    settings = config.load(str(path), str(tmp_path))
    source = LDAPCredentialSource.fromSettings(settings.auth.ldap,
                                               MemoryReactorClock(), settings)
    assert source.settings.urls == ("ldaps://ldap1.example.test",
                                    "ldap://ldap2.example.test")
    assert source.settings.pop3_enabled_attribute == "pop3"
    assert source.settings.apop_secret_attribute == "secret"
    assert source.settings.bind_password_file == str(tmp_path / "pw")
    assert source.settings.ca_file == str(tmp_path / "ca.pem")
    assert source.pool._bind_password == "svcpw"
    assert source.pool.threadpool.max == 2
    assert [server.start_tls for server in source.pool.servers] == [False, True]
    assert source.capabilities() == {PLAINTEXT, CLEARTEXT_SECRET}


def test_shutdown_stops_the_pool():
    reactor = MemoryReactorClock()
    source = LDAPCredentialSource(
        config.LDAPSettings(urls=("ldaps://h",), base_dn=PEOPLE), reactor)
    threads = source.pool.threadpool
    threads.start()
    source.shutdown()
    assert not threads.started


def test_quota_attribute_reaches_the_record():
    _, _, source = make_source(quota_attribute="mailQuota", required_group="")
    assert "mailQuota" in source.attributes_wanted()
    assert result(source.lookupUser("alice")).info["quota"] == "5000,10"
    assert "quota" not in result(source.lookupUser("erin")).info    # no value: the default
    _, _, plain = make_source(required_group="")
    assert "quota" not in result(plain.lookupUser("alice")).info
    assert "mailQuota" not in plain.attributes_wanted()
