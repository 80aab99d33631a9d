"""
Real POP3 clients against the real daemon, each in the TLS modes it
supports, each with the case that must fail next to the one that works:
Python poplib (STLS, POP3_SSL), curl (pop3:// --ssl-reqd, pop3s://),
fetchmail (STLS with sslproto tls1.2+, implicit), getmail6 (implicit TLS).
"""

import poplib
import ssl

import pytest

from tests.integration import clients as C

USER, PASSWORD = "clients", C.CORE_PASSWORD
MESSAGE = b"From: a@example.test\nSubject: clients\n\n.dot line\nbody \xc3\xa9\n"
WIRE = C.crlf_normalise(MESSAGE)


@pytest.fixture(scope="module")
def core(daemon_factory):
    d = C.core_daemon(daemon_factory)
    C.reset_mailbox(d, USER)
    d.deliver(USER, MESSAGE)
    return d


# -- poplib --------------------------------------------------------------------------

def test_poplib_stls_retrieves_exact_message(core):
    client = C.pop3(core, C.STARTTLS, USER, PASSWORD)
    try:
        assert client.stat() == (1, len(WIRE))
        assert C.sha256(C.poplib_retr(client, 1)) == C.sha256(WIRE)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        client.quit()


def test_poplib_credentials_before_stls_refused(core):
    client = C.pop3(core, C.PLAIN)
    try:
        with pytest.raises(poplib.error_proto) as e:
            client.user(USER)
        assert e.value.args[0].startswith(b"-ERR [AUTH]")
    finally:
        client.quit()


def test_poplib_stls_wrong_password_generic_failure(core):
    client = C.pop3(core, C.STARTTLS)
    try:
        client.user(USER)
        with pytest.raises(poplib.error_proto) as e:
            client.pass_("wrong-" + PASSWORD)
        assert e.value.args[0] == b"-ERR [AUTH] Authentication failed"
    finally:
        client.close()


def test_poplib_unknown_user_same_failure_text(core):
    client = C.pop3(core, C.IMPLICIT)
    try:
        client.user("nosuchuser")
        with pytest.raises(poplib.error_proto) as e:
            client.pass_(PASSWORD)
        assert e.value.args[0] == b"-ERR [AUTH] Authentication failed"
    finally:
        client.close()


def test_poplib_pop3_ssl_retrieves_exact_message(core):
    client = C.pop3(core, C.IMPLICIT, USER, PASSWORD)
    try:
        assert C.sha256(C.poplib_retr(client, 1)) == C.sha256(WIRE)
        assert "STLS" not in client.capa()
    finally:
        client.quit()


def test_poplib_pop3_ssl_untrusted_certificate_refused(core):
    ctx = ssl.create_default_context()          # the system roots only
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(C.HOST, core.pop3s_port, context=ctx, timeout=10)


def test_poplib_stls_wrong_hostname_refused(core):
    client = poplib.POP3(C.ADDRESS, core.pop3_port, timeout=10)
    client.host = "wrong.example"       # the name poplib checks; the certificate lacks it
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.stls(C.client_context(core))
    finally:
        client.sock.close()


# -- curl -------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
@pytest.mark.parametrize("login_options", [None, "AUTH=PLAIN", "AUTH=LOGIN"])
def test_curl_retrieves_exact_message(core, tls, login_options):
    r = C.curl(core, USER, PASSWORD, "1", tls=tls, login_options=login_options)
    assert r.returncode == 0, r.stderr
    assert C.sha256(r.stdout) == C.sha256(WIRE)


@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_curl_lists_messages(core, tls):
    r = C.curl(core, USER, PASSWORD, "", tls=tls)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"1 %d\r\n" % len(WIRE)


@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_curl_wrong_password_denied(core, tls):
    r = C.curl(core, USER, "wrong", "1", tls=tls, login_options="AUTH=PLAIN")
    assert r.returncode == 67, (r.returncode, r.stderr)     # CURLE_LOGIN_DENIED
    assert r.stdout == b""


@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_curl_without_cacert_refuses_certificate(core, tls):
    r = C.curl(core, USER, PASSWORD, "1", tls=tls, cacert=False)
    assert r.returncode == 60, (r.returncode, r.stderr)     # CURLE_PEER_FAILED_VERIFICATION
    assert r.stdout == b""


def test_curl_cleartext_gets_no_message(core):
    # Without --ssl-reqd curl stays in cleartext: no mechanism, no USER offered,
    # credentials refused with [AUTH]; nothing is retrieved.
    r = C.curl(core, USER, PASSWORD, "1", tls=C.PLAIN, extra=["-v"])
    assert r.returncode != 0
    assert r.stdout == b""
    assert b"+OK Logged in" not in r.stderr


# -- fetchmail ------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_fetchmail_retrieves_exact_message(core, tmp_path, tls):
    proc, messages = C.fetchmail(core, USER, PASSWORD, tmp_path, tls=tls)
    assert proc.returncode == 0, proc.stderr
    assert [C.sha256(m) for m in messages] == [C.sha256(WIRE)]
    if tls == C.STARTTLS:
        assert b"STLS" in proc.stdout + proc.stderr


def test_fetchmail_wrong_password_is_auth_failure(core, tmp_path):
    proc, messages = C.fetchmail(core, USER, "wrong", tmp_path)
    assert proc.returncode == 3, proc.stderr                 # PS_AUTHFAIL
    assert messages == []


def test_fetchmail_without_certfile_refuses_certificate(core, tmp_path):
    proc, messages = C.fetchmail(core, USER, PASSWORD, tmp_path, certfile=False)
    assert proc.returncode == 2, proc.stderr                 # PS_SOCKET (TLS failed)
    assert messages == []


def test_fetchmail_cleartext_cannot_log_in(core, tmp_path):
    proc, messages = C.fetchmail(core, USER, PASSWORD, tmp_path, tls=C.PLAIN)
    assert proc.returncode != 0
    assert messages == []
    assert b"[AUTH]" in proc.stdout + proc.stderr


# -- getmail6 ---------------------------------------------------------------------------------

def test_getmail_implicit_tls_retrieves_message(core, tmp_path):
    proc, messages = C.getmail(core, USER, PASSWORD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [C.strip_getmail_headers(m) for m in messages] == [C.lf_normalise(MESSAGE)]


def test_getmail_wrong_password_fails(core, tmp_path):
    proc, messages = C.getmail(core, USER, "wrong", tmp_path)
    assert proc.returncode != 0
    assert messages == []
    assert b"Authentication failed" in proc.stdout + proc.stderr


def test_getmail_untrusted_certificate_fails(core, tmp_path):
    other = tmp_path / "system-roots.pem"      # real CAs, none of which signed ours
    other.write_bytes(open("/etc/ssl/certs/ca-certificates.crt", "rb").read())
    proc, messages = C.getmail(core, USER, PASSWORD, tmp_path, ca_certs=other)
    assert proc.returncode != 0
    assert messages == []
    assert b"certificate verify failed" in (proc.stdout + proc.stderr).lower()


def test_getmail_cleartext_refused(core, tmp_path):
    proc, messages = C.getmail(core, USER, PASSWORD, tmp_path, tls=C.PLAIN)
    assert proc.returncode != 0
    assert messages == []
    assert b"[AUTH]" in proc.stdout + proc.stderr
