"""
securepop audit against real Dovecot servers (Debian's package, own config
files, loopback ports): the findings must match what each configuration
allows.

Dovecot listens on 127.0.0.1 and the audit connects from 127.0.0.2, because
Dovecot treats a client on the server's own address as secure.
"""

import dataclasses
import json
import os

import pytest

try:
    from tests.integration.fixtures_dovecot import (
        INSECURE, LEGACY_TLS, SECURE, DovecotServer, dovecotAvailable)
except ImportError:
    from fixtures_dovecot import (
        INSECURE, LEGACY_TLS, SECURE, DovecotServer, dovecotAvailable)

from securepop.audit import FAIL, INFO, PASS, WARN, Audit, AuditOptions, parseURL
from securepop.audit.report import EXIT_FAIL, EXIT_OK, exitStatus
from securepop.cli.audit import main as auditMain

CLIENT = "127.0.0.2"
PASSWORD = "wonderland-7"
APOP = dataclasses.replace(SECURE, mechanisms=("plain", "login", "apop"))


def _requireDovecot():
    if not dovecotAvailable():
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot-core, dovecot-pop3d and openssl must be installed in CI")
        pytest.skip("dovecot not installed")


def _server(mode):
    _requireDovecot()
    server = DovecotServer(mode=mode, users={"alice": PASSWORD})
    server.start()
    return server


@pytest.fixture(scope="session")
def secureDovecot():
    server = _server(SECURE)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def insecureDovecot():
    server = _server(INSECURE)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def apopDovecot():
    """The secure configuration plus APOP: Dovecot puts the timestamp in every greeting."""
    server = _server(APOP)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def legacyDovecot():
    server = _server(LEGACY_TLS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def passwordFile(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "password"
    path.write_text(PASSWORD + "\n")
    os.chmod(path, 0o600)
    return str(path)


def audit(url, **kw):
    kw.setdefault("sourceAddress", CLIENT)
    kw.setdefault("timeout", 5.0)
    return Audit(AuditOptions(target=parseURL(url), **kw)).run()


def statuses(result):
    return {f.check: f.status for f in result.findings}


def reasons(result):
    return {f.check: f.reason for f in result.findings}


def failed(result):
    return [f for f in result.findings if f.status == FAIL]


# -- secure configuration --------------------------------------------------------


def test_secure_stls_has_no_fail(secureDovecot):
    """
    ssl=required + disable_plaintext_auth=yes: nothing fails, every cleartext
    login is refused, STLS works and is gone after TLS, old TLS refused.
    """
    d = secureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", cafile=d.certificate,
                   user="alice", password=PASSWORD.encode())
    assert failed(result) == []
    s = statuses(result)
    for check in ("cleartext.user-pass", "cleartext.auth-plain", "cleartext.auth-login",
                  "stls.offered", "stls.works", "stls.capa-after", "stls.injection",
                  "tls.version.1.0", "tls.version.1.1", "tls.version.1.2",
                  "tls.version.1.3", "tls.cert.chain", "tls.cert.name",
                  "tls.cert.key", "auth.cleartext", "login"):
        assert s[check] == PASS, (check, reasons(result)[check])
    for key in ("null", "anonymous", "export", "rc4", "3des", "low"):
        assert s[f"tls.cipher.{key}"] == PASS
    assert "refused" in reasons(result)["tls.version.1.0"]
    assert exitStatus(result) == EXIT_OK


def test_secure_implicit_tls_has_no_fail(secureDovecot):
    d = secureDovecot
    result = audit(f"pop3s://127.0.0.1:{d.popsPort}", cafile=d.certificate,
                   servername="localhost")
    assert failed(result) == []
    s = statuses(result)
    assert s["tls.implicit"] == PASS
    assert s["tls.cert.name"] == PASS
    assert s["auth.cleartext"] == PASS
    assert "stls.injection" not in s


def test_apop_timestamp_in_clear_is_warned(apopDovecot, secureDovecot):
    """
    Dovecot with APOP offers the timestamp in the STLS port's cleartext
    greeting: APOP before TLS is a WARN; without APOP it is a PASS.
    """
    d = apopDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", cafile=d.certificate)
    assert statuses(result)["cleartext.apop"] == WARN, reasons(result)["cleartext.apop"]
    assert "before TLS" in reasons(result)["cleartext.apop"]
    assert "before TLS: APOP" in reasons(result)["auth.mechanisms"]
    result = audit(f"pop3s://127.0.0.1:{d.popsPort}", cafile=d.certificate,
                   servername="localhost")
    assert statuses(result)["cleartext.apop"] == PASS    # that greeting is inside TLS
    result = audit(f"pop3://127.0.0.1:{secureDovecot.popPort}",
                   cafile=secureDovecot.certificate)
    assert statuses(result)["cleartext.apop"] == PASS


def test_secure_wrong_password_fails_login(secureDovecot):
    """The negative of the login check: a wrong password is a FAIL."""
    d = secureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", cafile=d.certificate,
                   user="alice", password=b"not-the-password",
                   sourceAddress="127.0.0.3")   # Dovecot's auth penalty stays there
    assert statuses(result)["login"] == FAIL
    assert "not-the-password" not in json.dumps([f.reason for f in result.findings])


def test_untrusted_certificate_fails_and_blocks_login(secureDovecot):
    """
    Without --cafile the self-signed chain is not trusted: FAIL, and the
    credentials are not sent at all.
    """
    d = secureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", user="alice",
                   password=PASSWORD.encode())
    s = statuses(result)
    assert s["tls.cert.chain"] == FAIL
    assert s["login"] == INFO
    assert "not attempted" in reasons(result)["login"]


def test_wrong_servername_fails_name_check(secureDovecot):
    d = secureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", cafile=d.certificate,
                   servername="mail.example.org")
    s = statuses(result)
    assert s["tls.cert.name"] == FAIL
    assert "mail.example.org" in reasons(result)["tls.cert.name"]
    assert s["tls.cert.chain"] == PASS


def test_same_address_vantage_is_reported(secureDovecot):
    """
    From 127.0.0.1 to 127.0.0.1 Dovecot relaxes its rules: the audit reports
    what this client can do (USER accepted) and says why.
    """
    d = secureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", sourceAddress=None,
                   cafile=d.certificate)
    s = statuses(result)
    assert s["connection.vantage"] == INFO
    assert s["cleartext.user-pass"] == FAIL


# -- insecure configuration ------------------------------------------------------


def test_insecure_names_every_exposure(insecureDovecot):
    """
    ssl=no + disable_plaintext_auth=no + PLAIN/LOGIN: FAIL lines that name
    USER/PASS, AUTH PLAIN, AUTH LOGIN and the missing STLS.
    """
    d = insecureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}")
    s = statuses(result)
    r = reasons(result)
    assert s["cleartext.user-pass"] == FAIL and "USER/PASS" in r["cleartext.user-pass"]
    assert s["cleartext.auth-plain"] == FAIL and "PLAIN" in r["cleartext.auth-plain"]
    assert s["cleartext.auth-login"] == FAIL and "LOGIN" in r["cleartext.auth-login"]
    assert "in clear" in r["cleartext.user-pass"]
    assert s["auth.cleartext"] == FAIL
    assert s["stls.offered"] == FAIL
    assert s["stls.works"] == FAIL
    assert exitStatus(result) == EXIT_FAIL


def test_insecure_login_is_never_attempted_in_clear(insecureDovecot, passwordFile):
    """
    With credentials and no TLS, the login is refused by the audit itself;
    Dovecot's log shows no login attempt for alice.
    """
    d = insecureDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", user="alice",
                   password=PASSWORD.encode())
    assert statuses(result)["login"] == INFO
    assert "never sent in clear" in reasons(result)["login"]
    assert "user=<alice>" not in d.log()


# -- legacy TLS configuration -------------------------------------------------------


def test_legacy_tls_fails_old_versions_and_null(legacyDovecot):
    """
    ssl_min_protocol=TLSv1 with eNULL allowed: TLS 1.0/1.1 and the NULL
    suites FAIL; the cleartext checks (plaintext auth disabled) do not.
    """
    d = legacyDovecot
    result = audit(f"pop3://127.0.0.1:{d.popPort}", cafile=d.certificate)
    s = statuses(result)
    assert s["tls.version.1.0"] == FAIL
    assert s["tls.version.1.1"] == FAIL
    assert s["tls.cipher.null"] == FAIL
    assert s["tls.cipher.rc4"] == PASS
    assert s["cleartext.user-pass"] == PASS
    assert {f.check for f in failed(result)} == {
        "tls.version.1.0", "tls.version.1.1", "tls.cipher.null"}


# -- command line --------------------------------------------------------------------


def test_cli_json_and_exit_status(secureDovecot, insecureDovecot, passwordFile, capsys):
    d = secureDovecot
    code = auditMain([f"pop3://127.0.0.1:{d.popPort}", "--source-address", CLIENT,
                      "--cafile", d.certificate, "--user", "alice",
                      "--password-file", passwordFile, "--json", "--timeout", "5"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == EXIT_OK == report["exit_status"]
    assert report["verdict"].startswith("PASS")
    assert PASSWORD not in out
    assert any(f["check"] == "login" and f["status"] == PASS for f in report["findings"])

    code = auditMain([f"pop3://127.0.0.1:{insecureDovecot.popPort}",
                      "--source-address", CLIENT, "--timeout", "5"])
    text = capsys.readouterr().out
    assert code == EXIT_FAIL
    last = text.strip().splitlines()[-1]
    assert last.startswith("Verdict: FAIL") and "cleartext.user-pass" in last
    assert any(line.startswith("FAIL  cleartext.user-pass") for line in text.splitlines())
