"""
Directory-backed logins end to end, through the real daemon.

OpenLDAP: two real slapd servers over TLS (fixtures_slapd), the daemon on
loopback with C{[auth] source = "ldap"}.  Active Directory: the shared
Samba AD DC in its own network namespace (fixtures_samba), the daemon and
its clients inside that namespace with C{source = "ad"}; NTLM is verified
by the DC through the daemon's C{ntlm_auth} helpers.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.integration import fixtures_slapd as F
from tests.integration.clients import IMPLICIT, STARTTLS
from tests.integration.daemon import require_tool
from tests.integration.directory_daemon import (
    POP3,
    DirectoryDaemon,
    curlLogin,
    fetchmailLogin,
    login,
)

OK = b"+OK"
AUTH_FAILED = b"-ERR [AUTH]"
SYS_TEMP = b"-ERR [SYS/TEMP]"

ALICE, BOB, CAROL = (F.USERS[name] for name in ("alice", "bob", "carol"))

LISTEN = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 60
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1"
tls = "implicit"
[access]
max_connections_per_ip = 200
"""

# cache_ttl = 0: every login asks the directory (an outage must show).
LDAP_AUTH = """
[auth]
source = "ldap"
mechanisms = {mechanisms}
apop = {apop}
failure_delay = 0.05
failure_delay_max = 0.2
max_attempts = 3
cache_ttl = 0.0
[auth.ldap]
urls = {urls}
ca_file = "{ca}"
bind_dn = "{bind_dn}"
bind_password_file = "{password_file}"
base_dn = "{base_dn}"
required_group = "{group}"
nt_hash_attribute = "{nt_hash}"
apop_secret_attribute = "{secret}"
timeout = 1.0
connect_timeout = 1.0
request_timeout = 4.0
retry_down_after = 1.0
"""


def toml(values):
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def brace(text):
    """Keep our braces out of Daemon's str.format."""
    return text.replace("{", "{{").replace("}", "}}")


def missing(what, tools):
    if tools:
        message = f"{what} missing: {', '.join(tools)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


# -- OpenLDAP -----------------------------------------------------------------

@pytest.fixture(scope="module")
def slapdPair(tmp_path_factory):
    missing("slapd test bed", F.missingTools())
    directory = F.makeDirectory(str(tmp_path_factory.mktemp("slapd-daemon")))
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
    """Both servers running and answering when each test starts."""
    directory, servers = slapdPair
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.resume()
        server.start()
    return directory, servers


def ldapConfig(directory, servers, tmp_path, mechanisms=("PLAIN", "LOGIN", "NTLM", "CRAM-MD5"),
               apop=True, ntHash="sambaNTPassword", secret="securepopSecret", urls=None,
               extra=""):
    """The daemon's configuration; C{extra} lines go in C{[auth.ldap]}."""
    passwordFile = tmp_path / "ldap-password"
    passwordFile.write_text(F.SERVICE_PASSWORD + "\n")
    passwordFile.chmod(0o600)
    return LISTEN + brace(LDAP_AUTH.format(
        mechanisms=toml(mechanisms), apop=str(apop).lower(),
        urls=toml(urls or [server.ldaps_url for server in servers]), ca=directory.tls["ca"],
        bind_dn=F.SERVICE_DN, password_file=passwordFile, base_dn=F.PEOPLE,
        group=F.GROUP_DN, nt_hash=ntHash, secret=secret) + extra)


@pytest.fixture(scope="module")
def ldapDaemon(slapdPair, tmp_path_factory):
    directory, servers = slapdPair
    path = tmp_path_factory.mktemp("ldap-daemon")
    daemon = DirectoryDaemon(path, ldapConfig(directory, servers, path))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("how,user,password", [
    ("user", "alice", ALICE),
    ("plain", "alice", ALICE),
    ("login", "alice", ALICE),
    ("ntlm", "carol", CAROL),
    ("apop", "alice", F.ALICE_SECRET),
])
def test_ldap_logins(slapd, ldapDaemon, how, user, password):
    assert login(ldapDaemon, how, user, password).startswith(OK)
    wrong = b"wrong-secret" if isinstance(password, bytes) else password + "x"
    assert login(ldapDaemon, how, user, wrong).startswith(AUTH_FAILED)


def test_ldap_logins_over_stls(slapd, ldapDaemon):
    assert login(ldapDaemon, "user", "alice", ALICE, tls=STARTTLS).startswith(OK)
    assert login(ldapDaemon, "plain", "carol", CAROL, tls=STARTTLS).startswith(OK)


# APOP over implicit TLS: the APOP timestamp is only in greetings sent
# under TLS, so curl's APOP needs pop3s://.
@pytest.mark.parametrize("options,user,password,tls", [
    ("AUTH=NTLM", "carol", CAROL, STARTTLS),
    ("AUTH=PLAIN", "alice", ALICE, STARTTLS),
    ("AUTH=CRAM-MD5", "alice", F.ALICE_SECRET.decode(), IMPLICIT),
    ("AUTH=+APOP", "alice", F.ALICE_SECRET.decode(), IMPLICIT),
])
def test_ldap_curl(slapd, ldapDaemon, options, user, password, tls):
    good = curlLogin(ldapDaemon, user, password, options, tls=tls)
    assert good.returncode == 0, good.stderr.decode(errors="replace")[-2000:]
    bad = curlLogin(ldapDaemon, user, password + "x", options, tls=tls)
    assert bad.returncode == 67, bad.stderr.decode(errors="replace")[-2000:]


def test_ldap_ntlm_needs_the_hash(slapd, ldapDaemon):
    # alice has no sambaNTPassword: NTLM cannot prove her, whatever she sends
    assert login(ldapDaemon, "ntlm", "alice", ALICE).startswith(AUTH_FAILED)
    # carol has no APOP secret
    assert login(ldapDaemon, "apop", "carol", CAROL.encode()).startswith(AUTH_FAILED)


def test_ldap_required_group(slapd, ldapDaemon):
    # bob's password is right, but he is not in cn=pop3users
    for how in ("user", "plain"):
        assert login(ldapDaemon, how, "bob", BOB).startswith(AUTH_FAILED)
    assert login(ldapDaemon, "user", "carol", CAROL).startswith(OK)


HOSTILE_NAMES = [
    "*", "ali*", "*)(uid=*", ")(", "alice)(|(uid=*))", "\\", "alice\\",
    "alice\\2a", "odd*", "a" * 200,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_ldap_hostile_names(slapd, ldapDaemon, name):
    for how, secret in (("user", ALICE), ("plain", ALICE), ("apop", F.ALICE_SECRET),
                        ("ntlm", CAROL)):
        reply = login(ldapDaemon, how, name, secret)
        assert reply.startswith(AUTH_FAILED), (how, reply)
    assert login(ldapDaemon, "user", "alice", ALICE).startswith(OK)


def test_ldap_hostile_nul_and_long_names(slapd, ldapDaemon):
    client = POP3(ldapDaemon, IMPLICIT)
    try:
        # NUL in a command line never reaches the directory
        assert client.command(b"USER alice\x00*").startswith(b"-ERR")
        # AUTH LOGIN carries the name in base64: NUL can arrive there
        assert client.loginMechanism("alice\x00", ALICE).startswith(AUTH_FAILED)
    finally:
        client.close()
    client = POP3(ldapDaemon, IMPLICIT)
    try:
        # a name far over any limit, in an AUTH continuation (up to 8 KiB)
        assert client.plain("a" * 5000, ALICE).startswith(AUTH_FAILED)
        assert client.plain("\x00alice", ALICE).startswith(b"-ERR")
        assert client.plain("alice", ALICE).startswith(OK)
    finally:
        client.close()
    assert login(ldapDaemon, "user", "alice", ALICE).startswith(OK)


def test_ldap_capa_offers_what_the_source_serves(slapd, ldapDaemon, tmp_path_factory):
    client = POP3(ldapDaemon, IMPLICIT)
    try:
        capa = client.capa()
    finally:
        client.close()
    sasl = next(line for line in capa if line.startswith(b"SASL "))
    assert sasl.split()[1:] == [b"PLAIN", b"LOGIN", b"NTLM", b"CRAM-MD5"]
    assert b"USER" in capa
    # without the NT hash and the secret attribute, and without asking for
    # them: no NTLM, no CRAM-MD5 and no APOP timestamp
    directory, servers = slapd
    path = tmp_path_factory.mktemp("ldap-plain-only")
    plainOnly = DirectoryDaemon(path, ldapConfig(
        directory, servers, path, mechanisms=("PLAIN", "LOGIN"), apop=False,
        ntHash="", secret=""))
    plainOnly.start()
    try:
        client = POP3(plainOnly, IMPLICIT)
        try:
            assert b"<" not in client.greeting
            capa = client.capa()
            assert client.command(b"AUTH NTLM").startswith(AUTH_FAILED)
        finally:
            client.close()
        sasl = next(line for line in capa if line.startswith(b"SASL "))
        assert sasl.split()[1:] == [b"PLAIN", b"LOGIN"]
        assert login(plainOnly, "plain", "alice", ALICE).startswith(OK)
    finally:
        plainOnly.stop()


@pytest.mark.parametrize("mechanisms,apop,ntHash,secret,named", [
    (("PLAIN", "NTLM"), False, "", "securepopSecret", "NTLM"),
    (("PLAIN", "CRAM-MD5"), False, "sambaNTPassword", "", "CRAM-MD5"),
    (("PLAIN",), True, "sambaNTPassword", "", "APOP"),
])
def test_ldap_impossible_pairing_stops_the_start(slapd, tmp_path, mechanisms, apop, ntHash,
                                            secret, named):
    directory, servers = slapd
    daemon = DirectoryDaemon(tmp_path, ldapConfig(
        directory, servers, tmp_path, mechanisms=mechanisms, apop=apop,
        ntHash=ntHash, secret=secret))
    code, log = daemon.startFails()
    assert code != 0
    assert "auth.mechanisms" in log and named in log, log[-2000:]


def test_ldap_start_tls_from_the_configuration(slapd, tmp_path):
    """
    C{start_tls = true} reaches the source: an ldap:// URL is upgraded
    before any bind.  Without it (cleartext, insecure_cleartext) slapd
    refuses the simple bind: an outage, never "wrong password".
    """
    directory, servers = slapd
    for name, extra, expected in (("starttls", "start_tls = true\n", OK),
                                  ("cleartext", "insecure_cleartext = true\n", SYS_TEMP)):
        path = tmp_path / name
        path.mkdir()
        daemon = DirectoryDaemon(path, ldapConfig(
            directory, servers, path, mechanisms=("PLAIN",), apop=False, ntHash="",
            secret="", urls=[servers[0].ldap_url], extra=extra))
        daemon.start()
        try:
            assert login(daemon, "plain", "alice", ALICE).startswith(expected), name
            if expected == OK:
                assert login(daemon, "plain", "alice", "wrong").startswith(AUTH_FAILED)
        finally:
            daemon.stop()


# -- outages --------------------------------------------------------------------

def test_ldap_failover_and_recovery(slapd, ldapDaemon):
    directory, (first, second) = slapd
    assert login(ldapDaemon, "user", "alice", ALICE).startswith(OK)
    first.stop()
    try:
        for how, user, secret in (("user", "alice", ALICE), ("plain", "carol", CAROL),
                                  ("ntlm", "carol", CAROL),
                                  ("apop", "alice", F.ALICE_SECRET)):
            assert login(ldapDaemon, how, user, secret).startswith(OK), how
        # the surviving server still refuses a wrong password as such
        assert login(ldapDaemon, "user", "alice", "wrong").startswith(AUTH_FAILED)
        second.stop()
        for how, user, secret in (("user", "alice", ALICE), ("plain", "carol", CAROL),
                                  ("ntlm", "carol", CAROL),
                                  ("apop", "alice", F.ALICE_SECRET),
                                  ("user", "alice", "wrong")):
            reply = login(ldapDaemon, how, user, secret)
            assert reply.startswith(SYS_TEMP), (how, reply)
    finally:
        first.start()
        second.start()
    # back without restarting securepop (a server marked down is retried)
    deadline = time.monotonic() + 10
    while True:
        reply = login(ldapDaemon, "user", "alice", ALICE)
        if reply.startswith(OK) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply.startswith(OK), reply
    assert login(ldapDaemon, "ntlm", "carol", CAROL).startswith(OK)
    assert login(ldapDaemon, "user", "alice", "wrong").startswith(AUTH_FAILED)


def test_ldap_hang_keeps_other_sessions_served(slapd, ldapDaemon):
    directory, servers = slapd
    loggedIn = POP3(ldapDaemon, IMPLICIT)
    hung = POP3(ldapDaemon, IMPLICIT)
    latencies = []
    try:
        assert loggedIn.userPass("alice", ALICE).startswith(OK)
        for server in servers:
            server.pause()
        assert hung.command(b"USER carol").startswith(OK)
        started = time.monotonic()
        hung.send(b"PASS " + CAROL.encode() + b"\r\n")
        verdict = {}

        def wait():
            try:
                verdict["line"] = hung.readline(timeout=20)
            except Exception as error:  # reported by the assertion below
                verdict["line"] = repr(error).encode()
            verdict["seconds"] = time.monotonic() - started

        waiter = threading.Thread(target=wait)
        waiter.start()
        # NOOPs on the logged-in session for as long as the login hangs
        while waiter.is_alive() and time.monotonic() - started < 20:
            sent = time.monotonic()
            assert loggedIn.command(b"NOOP") == OK
            latencies.append(time.monotonic() - sent)
            time.sleep(0.05)
        waiter.join(25)
        assert not waiter.is_alive()
    finally:
        for server in servers:
            server.resume()
        loggedIn.close()
        hung.close()
    print(f"\nslapd SIGSTOPped: {len(latencies)} NOOPs during the hung login, latency max "
          f"{max(latencies) * 1000:.1f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms; "
          f"hung login answered after {verdict['seconds']:.2f} s: {verdict['line']!r}")
    assert len(latencies) >= 5
    assert max(latencies) < 0.5
    assert verdict["line"].startswith(SYS_TEMP), verdict
    assert verdict["seconds"] < 10
    deadline = time.monotonic() + 10
    while not login(ldapDaemon, "user", "alice", ALICE).startswith(OK):
        assert time.monotonic() < deadline, "no recovery after SIGCONT"
        time.sleep(0.2)


# -- Active Directory (Samba AD DC in its own network namespace) -------------------

AD_AUTH = """
[auth]
source = "ad"
mechanisms = {mechanisms}
apop = {apop}
failure_delay = 0.05
failure_delay_max = 0.2
max_attempts = 3
cache_ttl = 0.0
dns_domain = "example.test"
insecure_allow_ntlmv1 = {v1}
[auth.ad]
urls = ["ldaps://{host}"]
ca_file = "{ca}"
bind_dn = "{bind_dn}"
bind_password_file = "{password_file}"
base_dn = "{base_dn}"
required_group = "{group}"
domain = "{domain}"
ntlm_auth = "{ntlm_auth}"
ntlm_auth_config = "{smb_conf}"
helpers = 2
ntlm_timeout = 5.0
ntlm_exchange_timeout = {exchange_timeout}
timeout = 3.0
connect_timeout = 2.0
request_timeout = 10.0
"""


@pytest.fixture(scope="session")
def samba():
    from tests.integration import fixtures_samba as S

    tools = S.missingTools()
    if os.geteuid() != 0:
        tools.append("root (for network namespaces)")
    missing("Samba AD test bed", tools)
    return S.sharedDC()


def adConfig(dc, tmp_path, mechanisms=("PLAIN", "LOGIN", "NTLM"), apop=False,
             insecureNTLMv1=False, exchangeTimeout=3.0):
    from tests.integration import fixtures_samba as S

    facts = dc.describe()
    passwordFile = tmp_path / "ad-password"
    passwordFile.write_text(S.SERVICE_PASSWORD + "\n")
    passwordFile.chmod(0o600)
    return LISTEN + brace(AD_AUTH.format(
        mechanisms=toml(mechanisms), apop=str(apop).lower(),
        v1=str(insecureNTLMv1).lower(), exchange_timeout=exchangeTimeout, host=S.HOSTNAME, ca=facts["ca_file"],
        bind_dn=f"{S.SERVICE_USER}@{S.REALM.lower()}", password_file=passwordFile,
        base_dn=S.BASE_DN, group=S.GROUP_DN, domain=S.DOMAIN,
        ntlm_auth=require_tool("ntlm_auth"), smb_conf=facts["smb_conf"]))


def adDaemon(dc, path, **options):
    daemon = DirectoryDaemon(path, adConfig(dc, path, **options),
                             namespace=dc.describe()["namespace"])
    daemon.start()
    return daemon


@pytest.fixture(scope="module")
def ad(samba, tmp_path_factory):
    daemon = adDaemon(samba, tmp_path_factory.mktemp("ad-daemon"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def adInsecureV1(samba, tmp_path_factory):
    daemon = adDaemon(samba, tmp_path_factory.mktemp("ad-daemon-v1"), insecureNTLMv1=True)
    yield daemon
    daemon.stop()


AD_ALICE, AD_BOB, AD_CAROL, AD_DAVE, AD_FRANK = (
    "Secret-pass-1", "Secret-pass-2", "Secret-pass-3", "Secret-pass-4", "Secret-pass-6")


def test_ad_capa_offers_ntlm_from_the_dc(ad):
    client = POP3(ad, IMPLICIT)
    try:
        assert b"<" not in client.greeting      # no APOP timestamp
        capa = client.capa()
    finally:
        client.close()
    sasl = next(line for line in capa if line.startswith(b"SASL "))
    assert sasl.split()[1:] == [b"PLAIN", b"LOGIN", b"NTLM"]


@pytest.mark.parametrize("user", ["EXAMPLE\\alice", "alice"])
def test_ad_curl_ntlm(ad, user):
    good = curlLogin(ad, user, AD_ALICE, "AUTH=NTLM")
    assert good.returncode == 0, good.stderr.decode(errors="replace")[-2000:]
    bad = curlLogin(ad, user, AD_ALICE + "x", "AUTH=NTLM")
    assert bad.returncode == 67, bad.stderr.decode(errors="replace")[-2000:]


@pytest.mark.parametrize("how,user,password,tls", [
    ("ntlm", "EXAMPLE\\alice", AD_ALICE, IMPLICIT),
    ("ntlm", "alice", AD_ALICE, STARTTLS),
    ("ntlm", "EXAMPLE\\dave", AD_DAVE, IMPLICIT),        # nested group
    ("user", "alice", AD_ALICE, STARTTLS),
    ("user", "EXAMPLE\\alice", AD_ALICE, IMPLICIT),
    ("plain", "alice", AD_ALICE, IMPLICIT),
    ("plain", "alice@example.test", AD_ALICE, STARTTLS),
    ("login", "dave", AD_DAVE, IMPLICIT),
])
def test_ad_logins(ad, how, user, password, tls):
    assert login(ad, how, user, password, tls).startswith(OK)
    assert login(ad, how, user, password + "x", tls).startswith(AUTH_FAILED)


@pytest.mark.parametrize("how", ["user", "plain", "ntlm"])
@pytest.mark.parametrize("user,password", [
    ("bob", AD_BOB),          # disabled
    ("carol", AD_CAROL),      # not in 'POP3 Users'
    ("frank", AD_FRANK),      # expired
])
def test_ad_refused_accounts(ad, how, user, password):
    name = "EXAMPLE\\" + user if how == "ntlm" else user
    reply = login(ad, how, name, password)
    assert reply.startswith(AUTH_FAILED), reply
    assert login(ad, "user", "alice", AD_ALICE).startswith(OK)


def test_ad_curl_refuses_disabled_and_outsiders(ad):
    for user, password in (("EXAMPLE\\bob", AD_BOB), ("EXAMPLE\\carol", AD_CAROL)):
        result = curlLogin(ad, user, password, "AUTH=NTLM")
        assert result.returncode == 67, result.stderr.decode(errors="replace")[-2000:]


def test_ad_fetchmail_ntlmv1_needs_the_insecure_switch(ad, adInsecureV1, tmp_path):
    logged = len(ad.log())
    strict = fetchmailLogin(ad, "alice", AD_ALICE, tmp_path / "strict")
    assert strict.returncode == 3, strict.stdout.decode(errors="replace")[-2000:]
    assert "AUTH NTLM" in strict.stdout.decode(errors="replace")
    # refused by securepop (the test DC itself accepts NTLMv1)
    assert ad.wait_log("reason=ntlmv1-refused", start=logged), ad.log()[logged:]
    insecure = fetchmailLogin(adInsecureV1, "alice", AD_ALICE, tmp_path / "insecure")
    assert insecure.returncode in (0, 1), insecure.stdout.decode(errors="replace")[-2000:]
    wrong = fetchmailLogin(adInsecureV1, "alice", "wrong", tmp_path / "wrong")
    assert wrong.returncode == 3, wrong.stdout.decode(errors="replace")[-2000:]
    # the switch does not let a disabled account in
    disabled = fetchmailLogin(adInsecureV1, "bob", AD_BOB, tmp_path / "disabled")
    assert disabled.returncode == 3, disabled.stdout.decode(errors="replace")[-2000:]


def waitFor(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


def timedNTLMLogin(daemon, user, password, timeout=2.0):
    """
    @return: (verdict line, seconds); the verdict is C{b"timeout"} when the
        server did not answer within C{timeout}.
    """
    started = time.monotonic()
    try:
        reply = login(daemon, "ntlm", user, password, timeout=timeout)
    except (OSError, EOFError):
        reply = b"timeout"
    return reply, time.monotonic() - started


@pytest.fixture
def adOwnHelpers(samba, tmp_path):
    """
    A daemon of its own (two helpers, the default 30 s exchange timeout):
    a helper that is never given back stays pinned for the whole test.
    """
    daemon = adDaemon(samba, tmp_path, exchangeTimeout=30.0)
    yield daemon
    daemon.stop()


def test_ad_refused_ntlmv1_releases_its_helper(adOwnHelpers):
    ad = adOwnHelpers
    for _ in range(2):          # as many as there are helpers
        client = POP3(ad, IMPLICIT)
        try:
            reply = client.ntlm("EXAMPLE\\alice", AD_ALICE, lmCompat=1)
        finally:
            client.close()
        assert reply.startswith(AUTH_FAILED), reply
    reply, seconds = timedNTLMLogin(ad, "EXAMPLE\\alice", AD_ALICE)
    print(f"\nNTLM login after two refused NTLMv1 logins: {seconds:.2f} s {reply!r}")
    assert reply.startswith(OK)
    assert seconds < 1.5


def test_ad_cancelled_ntlm_releases_its_helper(adOwnHelpers):
    ad = adOwnHelpers
    cancelled = POP3(ad, IMPLICIT)
    dropped = POP3(ad, IMPLICIT)
    try:
        assert cancelled.ntlmNegotiate("EXAMPLE\\alice", AD_ALICE).startswith(b"+ ")
        assert cancelled.command(b"*").startswith(AUTH_FAILED)
        assert dropped.ntlmNegotiate("EXAMPLE\\alice", AD_ALICE).startswith(b"+ ")
    finally:
        dropped.close()
    try:
        time.sleep(0.2)
        reply, seconds = timedNTLMLogin(ad, "EXAMPLE\\dave", AD_DAVE)
    finally:
        cancelled.close()
    print(f"\nNTLM login after a cancelled and a dropped exchange: {seconds:.2f} s "
          f"{reply!r}")
    assert reply.startswith(OK)
    assert seconds < 1.5


def killHelperMidExchange(daemon):
    """
    Pin both helpers with two NTLM exchanges in flight, SIGKILL one helper,
    finish both exchanges.

    @return: (the two verdict lines, helper PIDs before, after).
    """
    helpers = waitFor(lambda: len(daemon.children("ntlm_auth")) == 2
                      and daemon.children("ntlm_auth"))
    assert helpers and len(helpers) == 2, daemon.children("ntlm_auth")
    first, second = POP3(daemon, IMPLICIT), POP3(daemon, IMPLICIT)
    try:
        challenges = [first.ntlmNegotiate("EXAMPLE\\alice", AD_ALICE),
                      second.ntlmNegotiate("EXAMPLE\\dave", AD_DAVE)]
        assert all(reply.startswith(b"+ ") for reply in challenges), challenges
        os.kill(helpers[0], signal.SIGKILL)
        after = waitFor(lambda: (len(daemon.children("ntlm_auth")) == 2
                                 and helpers[0] not in daemon.children("ntlm_auth")
                                 and daemon.children("ntlm_auth")))
        verdicts = [first.ntlmAuthenticate(challenges[0]),
                    second.ntlmAuthenticate(challenges[1])]
    finally:
        first.close()
        second.close()
    print(f"\nntlm_auth helper killed in the middle of two exchanges: {verdicts!r}")
    return verdicts, helpers, after


def test_ad_killed_helper_is_restarted(ad):
    verdicts, before, after = killHelperMidExchange(ad)
    # a new helper replaced the killed one; the other one kept running
    assert after and len(after) == 2 and before[0] not in after and before[1] in after
    # the exchange whose helper died fails, the other one is untouched
    assert sorted(verdict[:4] for verdict in verdicts) == [b"+OK ", b"-ERR"], verdicts
    for _ in range(3):
        assert login(ad, "ntlm", "EXAMPLE\\alice", AD_ALICE).startswith(OK)
    assert login(ad, "ntlm", "EXAMPLE\\alice", "wrong").startswith(AUTH_FAILED)
    assert curlLogin(ad, "EXAMPLE\\alice", AD_ALICE, "AUTH=NTLM").returncode == 0


def test_ad_killed_helper_is_an_outage_not_a_wrong_password(ad):
    verdicts, _, _ = killHelperMidExchange(ad)
    failed = [verdict for verdict in verdicts if not verdict.startswith(OK)]
    assert len(failed) == 1
    assert failed[0].startswith(SYS_TEMP), failed


@pytest.mark.parametrize("mechanisms,apop,named", [
    (("PLAIN", "NTLM", "CRAM-MD5"), False, "CRAM-MD5"),
    (("PLAIN", "NTLM"), True, "APOP"),
])
def test_ad_impossible_pairing_stops_the_start(samba, tmp_path, mechanisms, apop, named):
    daemon = DirectoryDaemon(tmp_path, adConfig(samba, tmp_path, mechanisms=mechanisms,
                                                apop=apop))
    code, log = daemon.startFails()
    assert code != 0
    assert "auth.mechanisms" in log and named in log, log[-2000:]


def test_deliver_enforces_the_directory_quota(slapd, tmp_path):
    """
    `securepop deliver` reads a directory's quota_attribute as LMTP does:
    carol's `description: 100,1` allows one message; alice, without the
    attribute, has the [mail] default (none); a directory that does not
    answer delivers nothing (exit 75, try again).
    """
    directory, servers = slapd
    config = ldapConfig(directory, servers, tmp_path,
                        extra='quota_attribute = "description"\n')
    daemon = DirectoryDaemon(tmp_path, config)
    first = daemon.cli("deliver", "carol", input=b"Subject: one\n\nx\n", check=False)
    assert first.returncode == 0, first.stderr
    second = daemon.cli("deliver", "carol", input=b"Subject: two\n\ny\n", check=False)
    assert second.returncode == 73 and b"full" in second.stderr, second.stderr
    assert len(daemon.messages("carol")) == 1
    for _ in range(2):                                      # no attribute: no limit
        assert daemon.cli("deliver", "alice", input=b"Subject: a\n\nz\n",
                          check=False).returncode == 0
    for server in servers:
        server.pause()
    try:
        down = daemon.cli("deliver", "alice", input=b"Subject: b\n\nw\n", check=False)
    finally:
        for server in servers:
            server.resume()
    assert down.returncode == 75, (down.returncode, down.stderr)
    assert len(daemon.messages("alice")) == 2
