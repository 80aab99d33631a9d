"""
Tests for securepop.auth.ldap.LDAPCredentialSource.

The directory is ldap3's in-memory MOCK_SYNC strategy (unit tests only; the
integration tests use real slapd), and directory work runs inline instead
of on the thread pool, so a fake clock drives every timeout.
"""

import ldap3
import pytest
from ldap3.core.exceptions import LDAPSocketOpenError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop.auth.cache import AuthCache
from securepop.auth.ldap import LDAPCredentialSource, LDAPSettings, parseURL
from securepop.auth.records import UserRecord
from securepop.errors import SourceUnavailable
from securepop.interfaces import (
    CLEARTEXT_SECRET,
    NT_HASH,
    NTLM_DELEGATE,
    PLAINTEXT,
    ICredentialSource,
)

SERVICE = "cn=svc,dc=t"
PEOPLE = "ou=p,dc=t"
GROUP = "cn=pop3,dc=t"
DENIED = "cn=nopop3,dc=t"
NT = "0701327011" + "73C003589BA38563C67B5F"

ENTRIES = [
    (SERVICE, {"objectClass": "person", "cn": "svc", "userPassword": "svcpw"}),
    (f"uid=alice,{PEOPLE}", {"objectClass": "person", "uid": "alice",
                             "userPassword": "pw-alice", "mailbox": "/m/alice",
                             "ntHash": NT, "secret": "apop-alice",
                             "pop3": "TRUE"}),
    (f"uid=bob,{PEOPLE}", {"objectClass": "person", "uid": "bob",
                           "userPassword": "pw-bob"}),
    (f"uid=dave,{PEOPLE}", {"objectClass": "person", "uid": "dave",
                            "userPassword": "pw-dave", "pop3": "FALSE",
                            "ntHash": "not-hex"}),
    (f"uid=erin,{PEOPLE}", {"objectClass": "person", "uid": "erin",
                            "userPassword": "pw-erin"}),
    (f"uid=odd*(x),{PEOPLE}", {"objectClass": "person", "uid": "odd*(x)",
                               "userPassword": "pw-odd"}),
    (GROUP, {"objectClass": "groupOfNames", "member": [
        f"uid=alice,{PEOPLE}", f"uid=dave,{PEOPLE}", f"uid=erin,{PEOPLE}",
        f"uid=odd*(x),{PEOPLE}"]}),
    (DENIED, {"objectClass": "groupOfNames", "member": [f"uid=erin,{PEOPLE}"]}),
]


class MockDirectory:
    """
    A connection factory making MOCK_SYNC connections; counts connections
    and records filters; servers in C{down} refuse to connect.
    """

    def __init__(self):
        self.down = set()
        self.opened = []
        self.filters = []

    def __call__(self, server, user, password):
        if server.port in self.down:
            raise LDAPSocketOpenError("connection refused")
        self.opened.append(server.port)
        connection = ldap3.Connection(
            server, user=user, password=password,
            client_strategy=ldap3.MOCK_SYNC, raise_exceptions=False)
        for dn, attributes in ENTRIES:
            connection.strategy.add_entry(dn, attributes)
        directory = self
        search = connection.search

        def recordingSearch(base, searchFilter, *args, **kwargs):
            directory.filters.append(searchFilter)
            return search(base, searchFilter, *args, **kwargs)

        connection.search = recordingSearch
        return connection


def inline(function):
    return maybeDeferred(function)


def makeSource(directory=None, runInThread=inline, cache=None, **overrides):
    values = dict(urls=("ldaps://127.0.0.1:1636", "ldaps://127.0.0.1:2636"),
                  base_dn=PEOPLE, bind_dn=SERVICE, required_group=GROUP,
                  mailbox_attribute="mailbox", request_timeout=10,
                  retry_down_after=30)
    values.update(overrides)
    reactor = MemoryReactorClock()
    directory = directory or MockDirectory()
    source = LDAPCredentialSource(
        LDAPSettings(**values), reactor, cache=cache,
        connectionFactory=directory, runInThread=runInThread,
        bindPassword="svcpw")
    return reactor, directory, source


def result(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    return outcome[0]


def failureOf(deferred, *types):
    value = result(deferred)
    assert hasattr(value, "check"), f"expected a failure, got {value!r}"
    assert value.check(*types), value
    return value


def test_providesTheInterface():
    _, _, source = makeSource()
    assert verifyObject(ICredentialSource, source)
    assert source.name == "ldap"


def test_capabilitiesFollowTheConfiguredAttributes():
    assert makeSource()[2].capabilities() == {PLAINTEXT}
    _, _, source = makeSource(nt_hash_attribute="ntHash",
                              secret_attribute="secret")
    assert source.capabilities() == {PLAINTEXT, NT_HASH, CLEARTEXT_SECRET}
    assert NTLM_DELEGATE not in source.capabilities()


def test_urlPolicy():
    assert parseURL("ldaps://h", False, True) == ("h", 636, True, False)
    assert parseURL("ldap://h:3890", False, True) == ("h", 3890, False, True)
    assert parseURL("ldap://h", True, False) == ("h", 389, False, False)
    with pytest.raises(ValueError, match="insecure_cleartext"):
        parseURL("ldap://h", False, False)
    for bad in ("http://h", "ldaps://", "ldaps://h/dc=x", "ldaps://u@h"):
        with pytest.raises(ValueError):
            parseURL(bad, False, True)


def test_cleartextConfigurationRefusedAtConstruction():
    with pytest.raises(ValueError):
        makeSource(urls=("ldap://127.0.0.1:389",), start_tls=False)
    makeSource(urls=("ldap://127.0.0.1:389",), start_tls=False,
               insecure_cleartext=True)


def test_passwordFileAndMissingPassword(tmp_path):
    secret = tmp_path / "pw"
    secret.write_bytes(b"svcpw\n")
    source = LDAPCredentialSource(
        LDAPSettings(urls=("ldaps://h",), base_dn=PEOPLE, bind_dn=SERVICE,
                     bind_password_file=str(secret)),
        MemoryReactorClock(), runInThread=inline)
    assert source._bindPassword == "svcpw"
    with pytest.raises(ValueError):
        LDAPCredentialSource(
            LDAPSettings(urls=("ldaps://h",), base_dn=PEOPLE, bind_dn=SERVICE),
            MemoryReactorClock(), runInThread=inline)


def test_loginSucceeds():
    _, _, source = makeSource()
    record = result(source.verifyPassword("alice", b"pw-alice"))
    assert record == UserRecord("alice", mailbox="/m/alice")
    assert record.info["dn"] == f"uid=alice,{PEOPLE}"
    assert record.info["server"] == "ldaps://127.0.0.1:1636"


def test_wrongPasswordRefused():
    _, _, source = makeSource()
    failureOf(source.verifyPassword("alice", b"pw-bob"), UnauthorizedLogin)


def test_emptyPasswordIsNeverAnAnonymousBind():
    _, _, source = makeSource()
    failureOf(source.verifyPassword("alice", b""), UnauthorizedLogin)


def test_passwordMustBeBytes():
    _, _, source = makeSource()
    failureOf(source.verifyPassword("alice", "pw-alice"), TypeError)


def test_unknownUserRefused():
    _, _, source = makeSource()
    failureOf(source.verifyPassword("mallory", b"x"), UnauthorizedLogin)


def test_requiredGroup():
    _, _, source = makeSource()
    failureOf(source.verifyPassword("bob", b"pw-bob"), UnauthorizedLogin)
    _, _, open_ = makeSource(required_group="")
    assert result(open_.verifyPassword("bob", b"pw-bob")).username == "bob"


def test_pop3SwitchAttribute():
    _, _, source = makeSource(pop3_attribute="pop3", required_group="")
    failureOf(source.verifyPassword("dave", b"pw-dave"), UnauthorizedLogin)
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"
    # absent: the configured default decides
    failureOf(source.verifyPassword("bob", b"pw-bob"), UnauthorizedLogin)
    _, _, lenient = makeSource(pop3_attribute="pop3", required_group="",
                               pop3_attribute_default=True)
    assert result(lenient.verifyPassword("bob", b"pw-bob")).username == "bob"


def test_pop3DeniedGroup():
    _, _, source = makeSource(pop3_denied_group=DENIED)
    failureOf(source.verifyPassword("erin", b"pw-erin"), UnauthorizedLogin)
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"


@pytest.mark.parametrize("hostile", [
    "*", "ali*", "*)(uid=*", ")(", "alice)(|(uid=*", "\\", "alice\\",
    "(uid=alice)", "alice*",
])
def test_hostileNamesCannotChangeTheFilter(hostile):
    _, directory, source = makeSource(required_group="")
    failureOf(source.verifyPassword(hostile, b"pw-alice"), UnauthorizedLogin)
    userFilter = directory.filters[0]
    assert userFilter.count("(") == 1 and userFilter.count(")") == 1
    assert "*" not in userFilter


@pytest.mark.parametrize("hostile", ["alice\x00", "\x00", "a" * 257,
                                     "alice\r\n", "", "al\x7fice"])
def test_hostileNamesRefusedBeforeAnySearch(hostile):
    _, directory, source = makeSource()
    failureOf(source.verifyPassword(hostile, b"pw-alice"), UnauthorizedLogin)
    assert directory.filters == []


def test_filterCharactersInARealNameStillWork():
    _, directory, source = makeSource()
    assert result(source.verifyPassword("odd*(x)", b"pw-odd")).username == "odd*(x)"
    assert directory.filters[0] == "(uid=odd\\2a\\28x\\29)"


def test_lookupSecretNTHash():
    _, _, source = makeSource(nt_hash_attribute="ntHash", required_group="")
    record, secret = result(source.lookupSecret("alice", NT_HASH))
    assert record.username == "alice"
    assert secret == bytes.fromhex(NT)
    failureOf(source.lookupSecret("dave", NT_HASH), UnauthorizedLogin)
    failureOf(source.lookupSecret("bob", NT_HASH), UnauthorizedLogin)


def test_lookupSecretCleartext():
    _, _, source = makeSource(secret_attribute="secret")
    record, secret = result(source.lookupSecret("alice", CLEARTEXT_SECRET))
    assert secret == b"apop-alice"
    failureOf(source.lookupSecret("bob", CLEARTEXT_SECRET), UnauthorizedLogin)


def test_lookupSecretOfUnconfiguredKind():
    _, _, source = makeSource()
    failureOf(source.lookupSecret("alice", NT_HASH), ValueError)
    failureOf(source.lookupSecret("alice", CLEARTEXT_SECRET), ValueError)


def test_lookupUserChecksGroupWithoutPassword():
    _, _, source = makeSource()
    assert result(source.lookupUser("alice")).username == "alice"
    failureOf(source.lookupUser("bob"), UnauthorizedLogin)


def test_failoverToTheSecondServerAndBackAfterTheRetryDelay():
    reactor, directory, source = makeSource()
    directory.down.add(1636)
    record = result(source.verifyPassword("alice", b"pw-alice"))
    assert record.info["server"] == "ldaps://127.0.0.1:2636"
    # the first server is skipped while it is marked down ...
    directory.down.clear()
    opened = len(directory.opened)
    result(source.verifyPassword("alice", b"pw-alice"))
    assert 1636 not in directory.opened[opened:]
    # ... and tried again after retry_down_after
    reactor.advance(30)
    record = result(source.lookupUser("alice"))
    assert record.info["server"] == "ldaps://127.0.0.1:1636"


def test_allServersDownIsAnOutageNotARefusal():
    reactor, directory, source = makeSource()
    directory.down.update({1636, 2636})
    failureOf(source.verifyPassword("alice", b"pw-alice"), SourceUnavailable)
    # they come back: the next login works at once (all were down, so all
    # are tried), without restarting anything
    directory.down.clear()
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"


def test_serviceBindFailureIsAnOutage():
    directory = MockDirectory()
    reactor = MemoryReactorClock()
    source = LDAPCredentialSource(
        LDAPSettings(urls=("ldaps://h:1",), base_dn=PEOPLE, bind_dn=SERVICE),
        reactor, connectionFactory=directory, runInThread=inline,
        bindPassword="wrong")
    failureOf(source.verifyPassword("alice", b"pw-alice"), SourceUnavailable)


def test_connectionsAreReused():
    _, directory, source = makeSource()
    for _ in range(5):
        result(source.verifyPassword("alice", b"pw-alice"))
    # one search connection and one bind connection, reused
    assert len(directory.opened) == 2


def test_requestTimeoutIsAnOutage():
    reactor, _, source = makeSource(runInThread=lambda f: Deferred(),
                                    request_timeout=7)
    deferred = source.verifyPassword("alice", b"pw-alice")
    assert not deferred.called
    reactor.advance(6.9)
    assert not deferred.called
    reactor.advance(0.2)
    failureOf(deferred, SourceUnavailable)


def test_boundedQueue():
    hanging = []

    def hang(function):
        hanging.append(Deferred())
        return hanging[-1]

    _, _, source = makeSource(runInThread=hang, max_pending=2)
    first = source.verifyPassword("alice", b"pw-alice")
    second = source.lookupUser("alice")
    failureOf(source.lookupUser("alice"), SourceUnavailable)
    assert len(hanging) == 2
    hanging[0].callback(UserRecord("alice"))
    assert result(first) == UserRecord("alice")
    assert not second.called
    source.lookupUser("alice")  # room again
    assert len(hanging) == 3


def test_cachePositiveAndNegative():
    reactor = MemoryReactorClock()
    cache = AuthCache(reactor, ttl=60, negative_ttl=10)
    _, directory, source = makeSource(cache=cache)
    result(source.verifyPassword("alice", b"pw-alice"))
    searches = len(directory.filters)
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"
    assert len(directory.filters) == searches
    failureOf(source.verifyPassword("alice", b"bad"), UnauthorizedLogin)
    searches = len(directory.filters)
    failureOf(source.verifyPassword("alice", b"bad"), UnauthorizedLogin)
    assert len(directory.filters) == searches
    reactor.advance(11)
    failureOf(source.verifyPassword("alice", b"bad"), UnauthorizedLogin)
    assert len(directory.filters) > searches


def test_outagesAreNotCached():
    reactor = MemoryReactorClock()
    cache = AuthCache(reactor)
    _, directory, source = makeSource(cache=cache)
    directory.down.update({1636, 2636})
    failureOf(source.verifyPassword("alice", b"pw-alice"), SourceUnavailable)
    directory.down.clear()
    assert result(source.verifyPassword("alice", b"pw-alice")).username == "alice"


def test_explainReportsEachStep():
    _, _, source = makeSource(group_base_dn="dc=t")
    report = result(source.explain("alice", b"pw-alice"))
    assert report["result"] == "ok"
    assert report["dn"] == f"uid=alice,{PEOPLE}"
    assert GROUP in report["groups"]
    assert report["server"] == "ldaps://127.0.0.1:1636"
    assert "pw-alice" not in repr(report)
    refused = result(source.explain("bob", b"pw-bob"))
    assert refused["result"] == "refused"
    assert "not in" in refused["reason"]


def test_dedicatedThreadPoolStartsAndStopsWithTheReactor():
    reactor = MemoryReactorClock()
    source = LDAPCredentialSource(
        LDAPSettings(urls=("ldaps://h",), base_dn=PEOPLE, pool_size=3),
        reactor)
    pool = source._threadpool
    assert pool.max == 3
    assert pool.name == "securepop-ldap"
    assert not pool.started
    assert [hook[0] for hook in reactor.whenRunningHooks] == [pool.start]
    assert reactor.triggers["during"]["shutdown"] == [(source.shutdown, (), {})]
    pool.start()
    source.shutdown()
    assert not pool.started


def test_fromSettingsMapsTheConfigSection(tmp_path):
    from securepop import config

    (tmp_path / "pw").write_bytes(b"svcpw\n")
    path = tmp_path / "securepop.toml"
    path.write_text(
        '[auth]\nsource = "ldap"\nmechanisms = ["PLAIN", "CRAM-MD5"]\n'
        '[auth.ldap]\nurls = ["ldaps://ldap1.example.test", '
        '"ldap://ldap2.example.test"]\nstart_tls = true\n'
        'base_dn = "ou=p,dc=t"\nbind_dn = "cn=svc,dc=t"\n'
        'bind_password_file = "pw"\npop3_enabled_attribute = "pop3"\n'
        'apop_secret_attribute = "secret"\ntimeout = 2.5\npool_size = 2\n')
    settings = config.load(str(path), str(tmp_path))
    source = LDAPCredentialSource.fromSettings(settings.auth.ldap,
                                               MemoryReactorClock(), settings)
    assert source.settings.urls == ("ldaps://ldap1.example.test",
                                    "ldap://ldap2.example.test")
    assert source.settings.pop3_attribute == "pop3"
    assert source.settings.secret_attribute == "secret"
    assert source.settings.bind_password_file == str(tmp_path / "pw")
    assert source._bindPassword == "svcpw"
    assert source._threadpool.max == 2
    assert source.capabilities() == {PLAINTEXT, CLEARTEXT_SECRET}
