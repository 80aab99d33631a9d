"""
LDAPCredentialSource against two real slapd servers (TLS, Samba schema).

No mocks: real slapd on loopback, real ldap3 on the source's own thread
pool, the real reactor (pytest-twisted).
"""

import os
import time

import pytest
import pytest_twisted
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor, task

from securepop.auth.ldap import LDAPCredentialSource
from securepop.config import LDAPSettings
from securepop.errors import SourceUnavailable
from securepop.interfaces import CLEARTEXT_SECRET, NT_HASH
from tests.integration import fixtures_slapd as F


@pytest.fixture(scope="session")
def slapdPair(tmp_path_factory):
    missing = F.missingTools()
    if missing:
        message = f"slapd test bed missing: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    directory = F.makeDirectory(str(tmp_path_factory.mktemp("slapd")))
    servers = [F.SlapdServer(directory, "one"), F.SlapdServer(directory, "two")]
    try:
        for server in servers:
            server.start()
        yield directory, servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def slapd(slapdPair):
    """Both servers running and answering at the start of each test."""
    directory, servers = slapdPair
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.resume()
        server.start()
    return directory, servers


@pytest.fixture
def makeSource(slapd):
    directory, servers = slapd
    made = []

    def make(urls=None, **overrides):
        values = dict(
            urls=tuple(urls or (servers[0].ldaps_url, servers[1].ldaps_url)),
            base_dn=F.PEOPLE, bind_dn=F.SERVICE_DN, ca_file=directory.tls["ca"],
            required_group=F.GROUP_DN, mailbox_attribute="securepopMailbox",
            nt_hash_attribute="sambaNTPassword",
            apop_secret_attribute="securepopSecret",
            pop3_enabled_attribute="securepopPOP3Enabled", pop3_attribute_default=True,
            pop3_denied_group=F.DENIED_GROUP_DN,
            group_base_dn=f"ou=groups,{F.SUFFIX}",
            timeout=1, connect_timeout=1, request_timeout=8,
            retry_down_after=2)
        values.update(overrides)
        source = LDAPCredentialSource(LDAPSettings(**values), reactor,
                                      bind_password=F.SERVICE_PASSWORD)
        made.append(source)
        return source

    yield make
    for source in made:
        source.shutdown()


async def outcome(deferred):
    try:
        value = await deferred
    except UnauthorizedLogin:
        return "refused"
    except SourceUnavailable:
        return "unavailable"
    return value


@pytest_twisted.ensureDeferred
async def test_logins(makeSource):
    source = makeSource()
    expected = {
        ("alice", "Secret-pass-1"): "alice",
        ("alice", "Secret-pass-2"): "refused",
        ("alice", ""): "refused",
        ("bob", "Secret-pass-2"): "refused",          # not in the group
        ("carol", "Secret-pass-3"): "carol",
        ("dave", "Secret-pass-4"): "refused",         # POP3 switched off
        ("erin", "Secret-pass-5"): "refused",         # POP3-denied group
        ("odd*(name)\\x", "Secret-pass-6"): "odd*(name)\\x",
        ("nobody", "Secret-pass-1"): "refused",
    }
    seen = {}
    for (user, password), _ in expected.items():
        value = await outcome(source.verifyPassword(user, password.encode()))
        seen[(user, password)] = getattr(value, "username", value)
    assert seen == expected
    record = await source.verifyPassword("alice", b"Secret-pass-1")
    assert record.mailbox == F.ALICE_MAILBOX
    assert record.info["dn"] == f"uid=alice,{F.PEOPLE}"


@pytest.mark.parametrize("hostile", [
    "*", "ali*", "*)(uid=*", ")(", "alice)(|(uid=*))", "\\", "alice\\",
    "alice\x00", "\x00", "a" * 100000, "alice\n", "odd*",
])
@pytest_twisted.ensureDeferred
async def test_hostile_user_names_fail_safely(makeSource, hostile):
    source = makeSource(required_group="", pop3_enabled_attribute="",
                        pop3_denied_group="")
    for password in (b"Secret-pass-1", b"Secret-pass-6", b"*"):
        assert await outcome(source.verifyPassword(hostile, password)) == "refused"
    assert await outcome(source.lookupUser(hostile)) == "refused"
    assert await outcome(source.lookupSecret(hostile, NT_HASH)) == "refused"


@pytest_twisted.ensureDeferred
async def test_nt_hash_and_secret_from_the_directory(makeSource):
    source = makeSource()
    record, ntHash = await source.lookupSecret("carol", NT_HASH)
    assert record.username == "carol"
    assert ntHash.hex().upper() == F.ntHash(F.USERS["carol"])
    assert await outcome(source.lookupSecret("alice", NT_HASH)) == "refused"
    record, secret = await source.lookupSecret("alice", CLEARTEXT_SECRET)
    assert secret == F.ALICE_SECRET
    assert await outcome(source.lookupSecret("carol", CLEARTEXT_SECRET)) == "refused"
    assert await outcome(source.lookupSecret("bob", NT_HASH)) == "refused"


@pytest_twisted.ensureDeferred
async def test_tls_policy(slapd, makeSource):
    directory, servers = slapd
    startTLS = makeSource(urls=[servers[0].ldap_url], start_tls=True)
    assert (await startTLS.verifyPassword("alice", b"Secret-pass-1")).username == "alice"
    for url in (servers[0].ldaps_url, servers[0].ldap_url):
        wrongCA = makeSource(urls=[url], ca_file=directory.tls["other_ca"],
                             start_tls=True)
        assert await outcome(wrongCA.verifyPassword(
            "alice", b"Secret-pass-1")) == "unavailable"
    # the server refuses simple binds without TLS: an outage, never "wrong
    # password"
    cleartext = makeSource(urls=[servers[0].ldap_url], start_tls=False,
                           insecure_cleartext=True)
    assert await outcome(cleartext.verifyPassword(
        "alice", b"Secret-pass-1")) == "unavailable"


@pytest_twisted.ensureDeferred
async def test_failover_and_recovery(slapd, makeSource):
    _, (first, second) = slapd
    source = makeSource()
    record = await source.verifyPassword("alice", b"Secret-pass-1")
    assert record.info["server"] == first.ldaps_url
    first.stop()
    record = await source.verifyPassword("alice", b"Secret-pass-1")
    assert record.info["server"] == second.ldaps_url
    assert await outcome(source.verifyPassword("alice", b"wrong")) == "refused"
    second.stop()
    assert await outcome(source.verifyPassword("alice", b"Secret-pass-1")) == "unavailable"
    assert await outcome(source.lookupUser("alice")) == "unavailable"
    first.start()
    second.start()
    # no restart of the source: the next login works
    record = await source.verifyPassword("alice", b"Secret-pass-1")
    assert record.username == "alice"
    # and the first server takes over again once its retry delay is over
    await task.deferLater(reactor, 2.1, lambda: None)
    record = await source.lookupUser("alice")
    assert record.info["server"] == first.ldaps_url


async def measureLatency(deferred):
    """
    Await C{deferred} while a 20 ms LoopingCall measures how late the
    reactor runs it.  @return: (outcome, worst lateness in seconds).
    """
    worst = [0.0]
    last = [time.monotonic()]

    def tick():
        now = time.monotonic()
        worst[0] = max(worst[0], now - last[0] - 0.02)
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.start(0.02)
    try:
        value = await outcome(deferred)
    finally:
        ticker.stop()
    return value, worst[0]


@pytest_twisted.ensureDeferred
async def test_hung_directory_times_out_and_the_reactor_stays_responsive(slapd, makeSource):
    _, (first, second) = slapd
    source = makeSource()
    assert (await source.verifyPassword("alice", b"Secret-pass-1")).username == "alice"
    only = makeSource(urls=[first.ldaps_url])
    assert (await only.verifyPassword("alice", b"Secret-pass-1")).username == "alice"
    first.pause()
    try:
        started = time.monotonic()
        value, lateness = await measureLatency(
            source.verifyPassword("alice", b"Secret-pass-1"))
        failoverSeconds = time.monotonic() - started
        assert getattr(value, "username", value) == "alice"
        assert value.info["server"] == second.ldaps_url
        started = time.monotonic()
        value2, lateness2 = await measureLatency(
            only.verifyPassword("alice", b"Secret-pass-1"))
        outageSeconds = time.monotonic() - started
        assert value2 == "unavailable"
    finally:
        first.resume()
    print(f"\nSIGSTOP: failover login {failoverSeconds:.2f} s, outage answer "
          f"{outageSeconds:.2f} s, worst reactor lateness "
          f"{max(lateness, lateness2) * 1000:.1f} ms")
    assert failoverSeconds < 5 and outageSeconds < 5
    assert max(lateness, lateness2) < 0.25
    # resumed: works again without a restart (its only server is tried
    # even while marked down)
    assert (await only.verifyPassword("alice", b"Secret-pass-1")).username == "alice"


@pytest_twisted.ensureDeferred
async def test_explain(makeSource):
    source = makeSource()
    report = await source.explain("alice", b"Secret-pass-1")
    assert report["result"] == "ok"
    assert report["groups"] == [F.GROUP_DN]
    assert report["attributes"] == ["securepopMailbox", "securepopSecret"]
    report = await source.explain("alice", b"wrong")
    assert report["result"] == "refused"
