"""
ADCredentialSource and WinbindNTLMVerifier against a real Samba AD DC.

The DC runs in its own network namespace (fixtures_samba).  The LDAP checks
must run inside it, so they run as one subprocess there
(C{tests.integration.ad_checks}) whose JSON outcome the tests below assert
on.  C{ntlm_auth} reaches the DC's winbindd through a Unix socket, so the
NTLM tests run here, in this process, on the pytest-twisted reactor.
"""

import base64
import os
import signal

import pytest
import pytest_twisted
import spnego
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor, task

from securepop.auth.winbind import WinbindNTLMVerifier, WinbindSettings
from securepop.errors import SourceUnavailable
from tests.integration import fixtures_samba as S


@pytest.fixture(scope="session")
def samba():
    missing = S.missingTools()
    if os.geteuid() != 0:
        missing.append("root (for network namespaces)")
    if missing:
        message = f"Samba AD test bed missing: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return S.sharedDC()


@pytest.fixture(scope="session")
def adResults(samba):
    return samba.runPython("tests.integration.ad_checks", samba.smb_conf,
                           samba.ca_file)


@pytest.mark.parametrize("check", ["alice", "alice_upn", "alice_domain",
                                   "dave_nested", "starttls_alice",
                                   "lookup_alice"])
def test_allowed_logins(adResults, check):
    expected = "ok:dave" if check == "dave_nested" else "ok:alice"
    assert adResults[check] == expected


@pytest.mark.parametrize("check,reason", [
    ("alice_wrong", "data 52e"),
    ("bob_disabled", "data 533"),
    ("carol_no_group", "not in CN=POP3 Users"),
    ("alice_other_domain", "not valid"),
    ("nobody", "0 entries"),
    ("empty_password", "empty password"),
    ("lookup_bob", "disabled"),
    ("frank_expired", "refused:"),
    ("lookup_frank", "account expired"),
])
def test_refused_logins(adResults, check, reason):
    assert adResults[check].startswith("refused:")
    assert reason in adResults[check]


@pytest.mark.parametrize("check", ["hostile_star", "hostile_prefix",
                                   "hostile_paren", "hostile_nul",
                                   "hostile_long"])
def test_hostile_names_refused(adResults, check):
    assert adResults[check].startswith("refused:")


def test_wrong_ca_is_an_outage(adResults):
    assert adResults["wrong_ca"].startswith("unavailable:")
    assert "CERTIFICATE_VERIFY_FAILED" in adResults["wrong_ca"]


def test_explain(adResults):
    assert adResults["explain_alice"] == {
        "result": "ok", "dn": "CN=Alice Example,CN=Users,DC=example,DC=test",
        "groups": [S.GROUP_DN], "account": "enabled",
        "server": "ldaps://dc1.example.test"}
    assert adResults["explain_bob"] == {"result": "refused",
                                        "account": "disabled"}


def test_ntlm_then_directory(adResults):
    assert adResults["ntlm_alice"] == "ok:alice"
    assert adResults["ntlm_alice_wrong"] == (
        "refused:NTLM AUTHENTICATE: NT_STATUS_LOGON_FAILURE")
    assert adResults["ntlm_bob"] == (
        "refused:NTLM AUTHENTICATE: NT_STATUS_ACCOUNT_DISABLED")
    assert adResults["ntlm_carol"].startswith("refused:") and (
        "not in" in adResults["ntlm_carol"])


# -- NTLM through winbind, in this process ------------------------------

@pytest.fixture
def verifier(samba):
    made = []

    def make(**overrides):
        values = dict(configfile=samba.smb_conf, helpers=2, timeout=5)
        values.update(overrides)
        made.append(WinbindNTLMVerifier(reactor, WinbindSettings(**values),
                                        autostart=False))
        made[-1].start()
        return made[-1]

    yield make
    from twisted.internet.defer import gatherResults

    pytest_twisted.blockon(gatherResults([item.stop() for item in made]))


async def ntlm(verifier, user, password, lmCompat=None):
    """
    One NTLM exchange made by pyspnego (the client side).
    @return: the verified name, "refused" or "unavailable".
    """
    if lmCompat is not None:
        os.environ["LM_COMPAT_LEVEL"] = str(lmCompat)
    try:
        client = spnego.client(user, password, hostname=S.HOSTNAME,
                               service="pop", protocol="ntlm")
        exchange = verifier.newExchange()
        challenge = await exchange.negotiate(client.step())
        return await exchange.authenticate(client.step(challenge))
    except UnauthorizedLogin:
        return "refused"
    except SourceUnavailable:
        return "unavailable"
    finally:
        os.environ.pop("LM_COMPAT_LEVEL", None)


@pytest_twisted.ensureDeferred
async def test_ntlmv2(verifier):
    pool = verifier()
    assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-1") == "EXAMPLE\\alice"
    assert await ntlm(pool, "alice", "Secret-pass-1") == "EXAMPLE\\alice"
    assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-2") == "refused"
    assert await ntlm(pool, "EXAMPLE\\bob", "Secret-pass-2") == "refused"
    assert await ntlm(pool, "EXAMPLE\\nobody", "x") == "refused"


@pytest_twisted.ensureDeferred
async def test_ntlmv1_only_with_the_insecure_switch(verifier):
    # The test DC has 'ntlm auth = yes', so only securepop's switch decides.
    strict = verifier()
    assert await ntlm(strict, "EXAMPLE\\alice", "Secret-pass-1",
                      lmCompat=1) == "refused"
    insecure = verifier(insecure_allow_ntlmv1=True)
    assert await ntlm(insecure, "EXAMPLE\\alice", "Secret-pass-1",
                      lmCompat=1) == "EXAMPLE\\alice"
    assert await ntlm(insecure, "EXAMPLE\\alice", "wrong",
                      lmCompat=1) == "refused"


@pytest_twisted.ensureDeferred
async def test_killed_helper_is_restarted(verifier):
    pool = verifier(helpers=2)
    assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-1") == "EXAMPLE\\alice"
    before = pool.helperPIDs()
    assert len(before) == 2
    # kill one helper in the middle of an exchange: that login fails as an
    # outage, the helper is replaced, the next login works
    import spnego as client_module

    client = client_module.client("EXAMPLE\\alice", "Secret-pass-1",
                                  hostname=S.HOSTNAME, service="pop",
                                  protocol="ntlm")
    exchange = pool.newExchange()
    challenge = await exchange.negotiate(client.step())
    pinned = exchange._helper.transport.pid
    os.kill(pinned, signal.SIGKILL)
    for _ in range(100):
        await task.deferLater(reactor, 0.02, lambda: None)
        if pinned not in pool.helperPIDs() and len(pool.helperPIDs()) == 2:
            break
    assert pinned not in pool.helperPIDs()
    assert len(pool.helperPIDs()) == 2
    with pytest.raises(SourceUnavailable):       # an outage, not a wrong password
        await exchange.authenticate(client.step(challenge))
    for _ in range(3):
        assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-1") == "EXAMPLE\\alice"


@pytest_twisted.ensureDeferred
async def test_garbage_from_a_client_never_reaches_the_dc(verifier):
    pool = verifier(helpers=1)
    exchange = pool.newExchange()
    with pytest.raises(UnauthorizedLogin):
        await exchange.negotiate(b"NTLMSSP\x00" + b"\xff" * 40)
    exchange = pool.newExchange()
    with pytest.raises(UnauthorizedLogin):
        await exchange.negotiate(base64.b64encode(b"\n" * 10))
    assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-1") == "EXAMPLE\\alice"


@pytest_twisted.ensureDeferred
async def test_missing_helper_is_an_outage(verifier):
    pool = verifier(ntlm_auth="/nonexistent/ntlm_auth", helpers=1, timeout=1)
    assert await ntlm(pool, "EXAMPLE\\alice", "Secret-pass-1") == "unavailable"
