"""
GSSAPI (Kerberos, RFC 4752) and channel binding end to end: the Samba AD
DC's KDC issues the tickets (in its network namespace), the real daemon
(there too, C{source = "ad"}) accepts them with a keytab exported from the
DC, and real clients log in: python-gssapi (L{securepop.testing.gssapi})
and curl (C{--login-options AUTH=GSSAPI}); pyspnego for NTLM with
MsvAvChannelBindings.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil

import gssapi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from securepop.testing.gssapi import GSSAPIClient
from tests.integration.clients import IMPLICIT, STARTTLS, store_message
from tests.integration.daemon import require_tool
from tests.integration.directory_daemon import POP3, DirectoryDaemon, curlLogin
from tests.integration.fixtures_kerberos import KerberosBed
from tests.integration.test_directory_daemon import AD_ALICE, AD_CAROL, adConfig, missing

OK = b"+OK"
AUTH_FAILED = b"-ERR [AUTH]"
MESSAGE = b"Subject: kerberos\r\n\r\nticket accepted\r\n"


@pytest.fixture(scope="session")
def samba():
    from tests.integration import fixtures_samba as S

    tools = S.missingTools() + [t for t in ("kinit", "kvno") if shutil.which(t) is None]
    if os.geteuid() != 0:
        tools.append("root (for network namespaces)")
    missing("Samba AD test bed", tools)
    return S.sharedDC()


@pytest.fixture(scope="module")
def kdc(samba, tmp_path_factory):
    return KerberosBed(samba, tmp_path_factory.mktemp("kerberos")).setUp()


def gssapiConfig(dc, bed, path, channelBinding="allow"):
    text = adConfig(dc, path, mechanisms=("GSSAPI", "NTLM", "PLAIN"))
    text = text.replace("[auth]\n", f'[auth]\nchannel_binding = "{channelBinding}"\n', 1)
    return text + f'[auth.gssapi]\nkeytab = "{bed.keytab}"\n'


def gssapiDaemon(dc, bed, path, **options):
    daemon = DirectoryDaemon(path, gssapiConfig(dc, bed, path, **options),
                             namespace=dc.describe()["namespace"], env=bed.env)
    daemon.start()
    store_message(daemon, "alice", MESSAGE)
    return daemon


@pytest.fixture(scope="module")
def gss(samba, kdc, tmp_path_factory):
    daemon = gssapiDaemon(samba, kdc, tmp_path_factory.mktemp("gss-daemon"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def bound(samba, kdc, tmp_path_factory):
    """A daemon with C{auth.channel_binding = "require"}."""
    daemon = gssapiDaemon(samba, kdc, tmp_path_factory.mktemp("cb-daemon"),
                          channelBinding="require")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def tickets(kdc):
    """The ticket caches of alice (in the group) and carol (in no group)."""
    from tests.integration import fixtures_samba as S

    return {user: kdc.kinit(user, S.USERS[user]) for user in ("alice", "carol")}


def credentials(ticketEnv):
    return gssapi.Credentials(usage="initiate",
                              store={"ccache": ticketEnv["KRB5CCNAME"]})


@pytest.fixture
def krb5env(kdc, monkeypatch):
    """This process's GSS-API library uses the test realm's krb5.conf."""
    for key, value in kdc.env.items():
        monkeypatch.setenv(key, value)


def endPointHash(daemon):
    """RFC 5929 tls-server-end-point of the daemon's certificate."""
    with open(daemon.ca_file, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    name = certificate.signature_hash_algorithm.name
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, certificate.public_bytes(Encoding.DER)).digest()


def gssapiLogin(daemon, client, tls=IMPLICIT, tamper=None):
    """
    One AUTH GSSAPI dialogue.  The first token goes as the initial response
    when the command fits in 255 octets (RFC 5034), else after C{+}: an AD
    ticket with its PAC is a few KB.

    @param tamper: changes the first token before it is sent.
    @return: (verdict line, the open L{POP3} connection).
    """
    pop = POP3(daemon, tls)
    token = client.initial()
    if tamper is not None:
        token = tamper(token)
    if len(b"AUTH GSSAPI " + base64.b64encode(token)) <= 253:
        reply = pop.command(b"AUTH GSSAPI " + base64.b64encode(token))
    else:
        assert pop.command(b"AUTH GSSAPI") in (b"+ ", b"+")
        reply = pop.command(base64.b64encode(token))
    while reply.startswith(b"+ ") or reply == b"+":
        reply = pop.command(base64.b64encode(client.respond(base64.b64decode(reply[2:]))))
    return reply, pop


def test_gssapi_python_client_logs_in_and_retrieves(gss, tickets, krb5env):
    for tls in (IMPLICIT, STARTTLS):
        client = GSSAPIClient("localhost", credentials=credentials(tickets["alice"]))
        reply, pop = gssapiLogin(gss, client, tls)
        try:
            assert reply.startswith(OK), reply
            assert client.context.complete
            assert client.layer_offer == b"\x01\x00\x00\x00"   # no layer, size 0
            assert pop.retr(1) == MESSAGE
            assert pop.command(b"QUIT").startswith(OK)
        finally:
            pop.close()


def test_gssapi_capa_offers_it(gss):
    pop = POP3(gss, IMPLICIT)
    try:
        sasl = next(line for line in pop.capa() if line.startswith(b"SASL "))
    finally:
        pop.close()
    assert sasl.split()[1:] == [b"GSSAPI", b"NTLM", b"PLAIN"]


def test_gssapi_curl_logs_in(gss, tickets):
    exe = require_tool("curl")
    env = dict(os.environ, **tickets["alice"])
    from tests.integration.clients import ADDRESS, HOST

    argv = [exe, "-sS", "-v", "--max-time", "30", "--resolve", f"{HOST}:{gss.pop3s_port}:{ADDRESS}",
            "--cacert", gss.ca_file, "--user", "alice@EXAMPLE.TEST:", "--login-options", "AUTH=GSSAPI",
            f"pop3s://{HOST}:{gss.pop3s_port}/1"]
    result = gss.run(argv, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace") + gss.log()[-3000:]
    assert result.stdout.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    # no ticket: curl cannot make a token, and the login fails
    empty = dict(env, KRB5CCNAME="FILE:" + os.path.join(os.path.dirname(gss.ca_file), "none"))
    result = gss.run(argv, env=empty)
    assert result.returncode != 0
    assert curlLogin(gss, "alice", AD_ALICE, "AUTH=PLAIN").returncode == 0


def test_gssapi_user_outside_the_required_group_is_refused(gss, tickets, krb5env):
    client = GSSAPIClient("localhost", credentials=credentials(tickets["carol"]))
    reply, pop = gssapiLogin(gss, client)
    pop.close()
    assert reply.startswith(AUTH_FAILED), reply
    assert gss.wait_log("mechanism=GSSAPI"), gss.log()[-2000:]


@pytest.mark.parametrize("tamper", [
    lambda token: os.urandom(len(token)),                       # garbage
    lambda token: token[:-20] + bytes(b ^ 0xFF for b in token[-20:]),  # forged
    lambda token: token[:40],                                   # truncated
    lambda token: b"\x60" + b"\xff" * 8,                        # hostile DER length
], ids=["garbage", "forged", "truncated", "hostile-length"])
def test_gssapi_bad_tokens_get_one_err_and_the_server_goes_on(gss, tickets, krb5env, tamper):
    logged = len(gss.log())
    client = GSSAPIClient("localhost", credentials=credentials(tickets["alice"]))
    reply, pop = gssapiLogin(gss, client, tamper=tamper)
    try:
        assert reply.startswith(b"-ERR"), reply
        assert pop.command(b"NOOP").startswith(b"-ERR")    # still answering, not logged in
    finally:
        pop.close()
    log = gss.log()[logged:]
    assert "Traceback" not in log and "auth.failure" in log
    good = GSSAPIClient("localhost", credentials=credentials(tickets["alice"]))
    reply, pop = gssapiLogin(gss, good)
    pop.close()
    assert reply.startswith(OK), reply


def test_gssapi_replayed_token_is_refused(gss, tickets, krb5env):
    client = GSSAPIClient("localhost", credentials=credentials(tickets["alice"]))
    token = client.initial()
    first = POP3(gss, IMPLICIT)
    second = POP3(gss, IMPLICIT)
    try:
        for pop in (first, second):
            assert pop.command(b"AUTH GSSAPI") in (b"+ ", b"+")
        assert first.command(base64.b64encode(token)).startswith(b"+ ")
        # an eavesdropper sends the same authenticator again
        assert second.command(base64.b64encode(token)).startswith(AUTH_FAILED)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("authzid,verdict", [
    ("alice", OK), ("alice@EXAMPLE.TEST", OK), ("dave", AUTH_FAILED),
    ("dave@EXAMPLE.TEST", AUTH_FAILED), ("alice@OTHER.REALM", AUTH_FAILED),
])
def test_gssapi_authorization_id_only_the_users_own(gss, tickets, krb5env, authzid, verdict):
    client = GSSAPIClient("localhost", authzid=authzid,
                          credentials=credentials(tickets["alice"]))
    reply, pop = gssapiLogin(gss, client)
    pop.close()
    assert reply.startswith(verdict), reply


def test_gssapi_channel_binding_required(bound, tickets, krb5env):
    right = GSSAPIClient("localhost", binding=endPointHash(bound),
                         credentials=credentials(tickets["alice"]))
    reply, pop = gssapiLogin(bound, right)
    pop.close()
    assert reply.startswith(OK), reply
    for binding in (None, b"\x00" * 32):      # none, and another channel's
        client = GSSAPIClient("localhost", binding=binding,
                              credentials=credentials(tickets["alice"]))
        reply, pop = gssapiLogin(bound, client)
        pop.close()
        assert reply.startswith(b"-ERR"), (binding, reply)


def ntlmLogin(daemon, binding):
    import spnego
    from spnego.channel_bindings import GssChannelBindings

    bindings = None
    if binding is not None:
        bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + binding)
    ntlm = spnego.client("EXAMPLE\\alice", AD_ALICE, hostname="localhost", service="pop",
                         protocol="ntlm", channel_bindings=bindings)
    pop = POP3(daemon, IMPLICIT)
    try:
        reply = pop.command(b"AUTH NTLM " + base64.b64encode(ntlm.step()))
        assert reply.startswith(b"+ "), reply
        return pop.command(base64.b64encode(ntlm.step(base64.b64decode(reply[2:]))))
    finally:
        pop.close()


def test_ntlm_channel_binding_required(bound, gss):
    assert ntlmLogin(bound, endPointHash(bound)).startswith(OK)
    logged = len(bound.log())
    assert ntlmLogin(bound, None).startswith(AUTH_FAILED)
    assert bound.wait_log("reason=channel-binding-missing", start=logged)
    assert ntlmLogin(bound, b"\x11" * 32).startswith(AUTH_FAILED)
    assert bound.wait_log("reason=channel-binding-mismatch", start=logged)
    # "allow": a client without binding is served, a wrong binding is not
    assert ntlmLogin(gss, None).startswith(OK)
    assert ntlmLogin(gss, endPointHash(gss)).startswith(OK)
    assert ntlmLogin(gss, b"\x11" * 32).startswith(AUTH_FAILED)


def test_unsafe_keytab_stops_the_start(samba, kdc, tmp_path):
    loose = tmp_path / "loose.keytab"
    loose.write_bytes(open(kdc.keytab, "rb").read())
    loose.chmod(0o644)
    daemon = DirectoryDaemon(tmp_path, gssapiConfig(samba, kdc, tmp_path).replace(
        kdc.keytab, str(loose)), namespace=samba.describe()["namespace"], env=kdc.env)
    code, log = daemon.startFails()
    assert code != 0
    assert "auth.gssapi.keytab" in log and "0644" in log


def test_test_auth_gssapi_uses_the_ticket_cache(gss, tickets):
    from tests.integration.daemon import SECUREPOP

    def testAuth(user, ticketEnv):
        return gss.run([SECUREPOP, "--config", str(gss.config_path), "test-auth", user,
                        "--mechanism", "gssapi"], env=dict(os.environ, **ticketEnv))

    ok = testAuth("alice", tickets["alice"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"alice@EXAMPLE.TEST" in ok.stdout and b"result:         ok" in ok.stdout
    outsider = testAuth("carol", tickets["carol"])          # not in the required group
    assert outsider.returncode == 1, outsider.stdout + outsider.stderr
    another = testAuth("dave", tickets["alice"])            # alice's ticket, dave's name
    assert another.returncode == 1 and b"authzid-mismatch" in another.stdout
    none = testAuth("alice", dict(tickets["alice"], KRB5CCNAME="FILE:/nonexistent/cc"))
    assert none.returncode == 1 and b"kinit" in none.stdout


def test_audit_lists_kerberos(gss):
    import json

    from tests.integration.daemon import SECUREPOP

    result = gss.run([SECUREPOP, "audit", f"pop3s://localhost:{gss.pop3s_port}",
                      "--cafile", gss.ca_file, "--json"])
    report = json.loads(result.stdout)
    findings = {f["check"]: f for f in report["findings"]}
    assert "GSSAPI" in findings["auth.mechanisms"]["reason"]
    assert findings["auth.kerberos"]["status"] == "PASS"
    assert "do not: GSSAPI" in findings["auth.password-exposing"]["reason"]


def fetchmailGSSAPI(daemon, env, workdir):
    """One fetchmail poll with C{auth gssapi} over STLS; @return: CompletedProcess."""
    from tests.integration.clients import HOST

    exe = require_tool("fetchmail")
    workdir.mkdir(parents=True, exist_ok=True)
    rc = workdir / "fetchmailrc"
    # No "via ADDRESS": fetchmail asks for pop/<the name it connects to>.
    rc.write_text(
        "set no bouncemail\n"
        f"poll {HOST} service {daemon.pop3_port} proto pop3 auth gssapi timeout 30\n"
        "  user 'alice' is 'root' here\n"
        f"  sslproto 'tls1.2+' sslcertck sslcertfile '{daemon.ca_file}'\n"
        "  keep fetchall mda '/bin/true'\n")
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir), **env)
    return daemon.run([exe, "-f", str(rc), "--nosyslog", "--invisible", "-v"], env=env)


def test_gssapi_fetchmail(gss, tickets, tmp_path):
    """fetchmail's C{auth gssapi} (Debian's fetchmail is built +GSS)."""
    logged = len(gss.log())
    result = fetchmailGSSAPI(gss, tickets["alice"], tmp_path / "alice")
    out = result.stdout.decode(errors="replace")
    assert result.returncode in (0, 1), out[-3000:] + gss.log()[logged:][-3000:]
    assert "AUTH GSSAPI" in out and "1 message" in out
    assert gss.wait_log("mechanism=GSSAPI", start=logged)
    assert "auth.success" in gss.log()[logged:]
    none = dict(tickets["alice"], KRB5CCNAME="FILE:" + str(tmp_path / "no-cache"))
    refused = fetchmailGSSAPI(gss, none, tmp_path / "none")
    assert refused.returncode == 3, refused.stdout.decode(errors="replace")[-2000:]


def test_gssapi_mpop(gss, tickets, tmp_path):
    """mpop's C{auth gssapi} (GNU SASL)."""
    from tests.integration.clients import ADDRESS, HOST

    exe = require_tool("mpop")
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    rc = tmp_path / "mpoprc"
    rc.write_text(f"account default\nhost {HOST}\nport {gss.pop3s_port}\ntls on\n"
                  f"tls_starttls off\ntls_trust_file {gss.ca_file}\nuser alice\n"
                  f"auth gssapi\nkeep on\ndelivery maildir {maildir}\n")
    rc.chmod(0o600)
    proc = gss.run([exe, "-C", str(rc), "-d"],
                   env=dict(os.environ, HOME=str(tmp_path), **tickets["alice"]))
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:] + proc.stderr.decode(errors="replace")
    assert "--> AUTH GSSAPI" in out
    [stored] = [p.read_bytes() for p in (maildir / "new").iterdir()]
    assert stored.endswith(b"\nSubject: kerberos\n\nticket accepted\n")


def test_curl_binds_neither_ntlm_nor_gssapi(bound, gss, tickets):
    """What docs/clients.rst says of curl: no channel binding, so "require" refuses it."""
    from tests.integration.clients import ADDRESS, HOST

    def curlGSSAPI(daemon):
        exe = require_tool("curl")
        return daemon.run([exe, "-sS", "--max-time", "30", "--resolve",
                           f"{HOST}:{daemon.pop3s_port}:{ADDRESS}", "--cacert", daemon.ca_file,
                           "--user", "alice@EXAMPLE.TEST:", "--login-options", "AUTH=GSSAPI",
                           f"pop3s://{HOST}:{daemon.pop3s_port}/"],
                          env=dict(os.environ, **tickets["alice"]))

    assert curlLogin(bound, "EXAMPLE\\alice", AD_ALICE, "AUTH=NTLM").returncode == 67
    assert curlGSSAPI(bound).returncode == 67
    assert curlLogin(gss, "EXAMPLE\\alice", AD_ALICE, "AUTH=NTLM").returncode == 0
    assert curlGSSAPI(gss).returncode == 0


def test_gssapi_account_disabled_after_its_ticket_was_issued(samba, kdc, gss, krb5env):
    """A ticket outlives the account: the directory still says no."""
    from tests.integration import fixtures_samba as S

    env = kdc.kinit("dave", S.USERS["dave"])
    client = GSSAPIClient("localhost", credentials=credentials(env))
    reply, pop = gssapiLogin(gss, client)
    pop.close()
    assert reply.startswith(OK), reply          # nested group member, enabled
    conf = f"--configfile={samba.smb_conf}"
    kdc._samba(["user", "disable", "dave", conf])
    try:
        client = GSSAPIClient("localhost", credentials=credentials(env))
        reply, pop = gssapiLogin(gss, client)
        pop.close()
        assert reply.startswith(AUTH_FAILED), reply
    finally:
        kdc._samba(["user", "enable", "dave", conf])
