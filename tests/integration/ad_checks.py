"""
Checks of ADCredentialSource against a real Samba AD DC, run inside the
DC's network namespace by L{tests.integration.fixtures_samba.SambaDC.runPython}:

    ip netns exec NS python -m tests.integration.ad_checks SMB_CONF CA_FILE

Prints one JSON object: check name -> outcome (C{"ok:<user>"},
C{"refused:<reason>"}, C{"unavailable:<reason>"} or a value); the pytest
module asserts on it.
"""

import json
import os
import sys
from dataclasses import replace

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task

from securepop.auth.ad import ADCredentialSource
from securepop.auth.winbind import WinbindNTLMVerifier, WinbindSettings
from securepop.config import AD_DEFAULTS
from securepop.errors import SourceUnavailable
from tests.integration import fixtures_samba as S


async def outcome(deferred):
    try:
        result = await deferred
    except UnauthorizedLogin as error:
        return f"refused:{error}"
    except SourceUnavailable as error:
        return f"unavailable:{error}"
    if isinstance(result, tuple):
        result = result[0]
    return f"ok:{getattr(result, 'username', result)}"


async def ntlmLogin(verifier, source, user, password, lmCompat=None):
    import spnego

    if lmCompat is not None:
        os.environ["LM_COMPAT_LEVEL"] = str(lmCompat)
    try:
        client = spnego.client(user, password, hostname=S.HOSTNAME,
                               service="pop", protocol="ntlm")
        exchange = verifier.newExchange()
        challenge = await exchange.negotiate(client.step())
        verified = await exchange.authenticate(client.step(challenge))
    except (UnauthorizedLogin, SourceUnavailable) as error:
        return f"{'refused' if isinstance(error, UnauthorizedLogin) else 'unavailable'}:{error}"
    finally:
        os.environ.pop("LM_COMPAT_LEVEL", None)
    return await outcome(source.lookupUser(verified))


def makeSource(reactor, caFile, **overrides):
    values = dict(
        urls=(f"ldaps://{S.HOSTNAME}",), base_dn=S.BASE_DN,
        bind_dn=f"{S.SERVICE_USER}@{S.REALM.lower()}", ca_file=caFile,
        required_group=S.GROUP_DN, timeout=3, connect_timeout=2,
        request_timeout=10)
    values.update(overrides)
    return ADCredentialSource(replace(AD_DEFAULTS, **values), reactor, domain=S.DOMAIN,
                              realm=S.REALM.lower(),
                              bind_password=S.SERVICE_PASSWORD)


async def main(reactor, smbConf, caFile):
    results = {}
    source = makeSource(reactor, caFile)
    for label, user, password in [
        ("alice", "alice", "Secret-pass-1"),
        ("alice_upn", "alice@example.test", "Secret-pass-1"),
        ("alice_domain", "EXAMPLE\\alice", "Secret-pass-1"),
        ("alice_other_domain", "OTHER\\alice", "Secret-pass-1"),
        ("alice_wrong", "alice", "wrong-password"),
        ("bob_disabled", "bob", "Secret-pass-2"),
        ("carol_no_group", "carol", "Secret-pass-3"),
        ("dave_nested", "dave", "Secret-pass-4"),
        ("nobody", "nobody", "x"),
        ("hostile_star", "*", "Secret-pass-1"),
        ("hostile_prefix", "ali*", "Secret-pass-1"),
        ("hostile_paren", "alice)(sAMAccountName=*", "Secret-pass-1"),
        ("hostile_nul", "alice\x00", "Secret-pass-1"),
        ("hostile_long", "a" * 5000, "Secret-pass-1"),
        ("empty_password", "alice", ""),
    ]:
        results[label] = await outcome(
            source.verifyPassword(user, password.encode()))
    results["lookup_alice"] = await outcome(source.lookupUser("EXAMPLE\\alice"))
    results["lookup_bob"] = await outcome(source.lookupUser("EXAMPLE\\bob"))
    results["frank_expired"] = await outcome(
        source.verifyPassword("frank", b"Secret-pass-6"))
    results["lookup_frank"] = await outcome(source.lookupUser("frank"))
    report = await source.explain("alice", b"Secret-pass-1")
    results["explain_alice"] = {key: report.get(key) for key in
                                ("result", "dn", "groups", "account", "server")}
    report = await source.explain("bob")
    results["explain_bob"] = {key: report.get(key) for key in
                              ("result", "account")}

    # StartTLS on 389 works too; a wrong CA is an outage, not a refusal.
    startTLS = makeSource(reactor, caFile, urls=(f"ldap://{S.HOSTNAME}",),
                          start_tls=True)
    results["starttls_alice"] = await outcome(
        startTLS.verifyPassword("alice", b"Secret-pass-1"))
    otherCA = os.path.join(os.path.dirname(caFile), "other-ca.pem")
    wrongCA = makeSource(reactor, otherCA)
    results["wrong_ca"] = await outcome(
        wrongCA.verifyPassword("alice", b"Secret-pass-1"))

    # NTLM through winbind, then the directory says whether they may log in.
    verifier = WinbindNTLMVerifier(reactor, WinbindSettings(
        configfile=smbConf, helpers=2))
    results["ntlm_alice"] = await ntlmLogin(
        verifier, source, "EXAMPLE\\alice", "Secret-pass-1")
    results["ntlm_alice_wrong"] = await ntlmLogin(
        verifier, source, "EXAMPLE\\alice", "wrong")
    results["ntlm_bob"] = await ntlmLogin(
        verifier, source, "EXAMPLE\\bob", "Secret-pass-2")
    results["ntlm_carol"] = await ntlmLogin(
        verifier, source, "EXAMPLE\\carol", "Secret-pass-3")
    await verifier.stop()
    for item in (source, startTLS, wrongCA):
        item.shutdown()
    return results


def run(reactor, smbConf, caFile):
    async def wrapped():
        results = await main(reactor, smbConf, caFile)
        print(json.dumps(results))

    return defer.ensureDeferred(wrapped())


if __name__ == "__main__":
    task.react(run, sys.argv[1:3])
