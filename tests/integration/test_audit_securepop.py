"""
securepop audit against the securepop daemon itself (C{twistd -n securepop}
from the C{daemon} fixtures): the secure default has no FAIL,
cleartext allowed names the exposure, the legacy profile fails TLS 1.0/1.1,
and a declined source address is reported as declined.
"""

import json
import os

import pytest

from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG

from securepop.audit import FAIL, INFO, PASS, WARN, Audit, AuditOptions, parseURL
from securepop.audit.report import EXIT_DECLINED, EXIT_FAIL, EXIT_OK, exitStatus
from securepop.cli.audit import main as auditMain

CLIENT = "127.0.0.2"

CLEARTEXT_CONFIG = DEFAULT_CONFIG + "[tls]\nrequire_secure_channel = false\n"
LEGACY_CONFIG = DEFAULT_CONFIG + '[tls]\nprofile = "legacy"\n'
DECLINING_CONFIG = DEFAULT_CONFIG.replace(
    "[access]\n",
    '[access]\nmode = "deny-listed"\nrules = ["127.0.0.9"]\nreverse_dns = false\n')


def audit(url, daemon, **kw):
    kw.setdefault("sourceAddress", CLIENT)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("cafile", daemon.ca_file)
    kw.setdefault("servername", "localhost")
    return Audit(AuditOptions(target=parseURL(url), **kw)).run()


def statuses(result):
    return {f.check: f.status for f in result.findings}


def reasons(result):
    return {f.check: f.reason for f in result.findings}


def failed(result):
    return sorted(f.check for f in result.findings if f.status == FAIL)


@pytest.fixture(scope="module")
def passwordFile(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit-securepop") / "password"
    path.write_text(ALICE_PASSWORD + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_secure_default_has_no_fail(daemon):
    result = audit(f"pop3://127.0.0.1:{daemon.pop3_port}", daemon,
                   user="alice", password=ALICE_PASSWORD.encode())
    assert failed(result) == []
    s = statuses(result)
    for check in ("cleartext.user-pass", "cleartext.auth-plain", "cleartext.auth-login",
                  "stls.offered", "stls.works", "stls.capa-after", "stls.injection",
                  "tls.version.1.0", "tls.version.1.1", "tls.version.1.3",
                  "tls.cert.chain", "tls.cert.name", "auth.cleartext", "login"):
        assert s[check] == PASS, (check, reasons(result)[check])
    assert "discarded" in reasons(result)["stls.injection"]
    assert exitStatus(result) == EXIT_OK


def test_secure_default_implicit_tls_has_no_fail(daemon):
    result = audit(f"pop3s://127.0.0.1:{daemon.pop3s_port}", daemon)
    assert failed(result) == []
    assert statuses(result)["tls.implicit"] == PASS


def test_apop_timestamp_only_under_tls_is_not_warned(daemon):
    """
    The fixture daemon enables APOP: its timestamp is only in the implicit
    TLS greeting, so neither port reports APOP before TLS (Dovecot, which
    offers it in clear, gets the WARN: test_audit_dovecot).
    """
    result = audit(f"pop3://127.0.0.1:{daemon.pop3_port}", daemon)
    assert statuses(result)["cleartext.apop"] == PASS, reasons(result)["cleartext.apop"]
    assert "APOP" not in reasons(result)["auth.mechanisms"]
    result = audit(f"pop3s://127.0.0.1:{daemon.pop3s_port}", daemon)
    assert statuses(result)["cleartext.apop"] == PASS, reasons(result)["cleartext.apop"]
    assert "inside TLS" in reasons(result)["cleartext.apop"]
    assert "APOP" in reasons(result)["auth.mechanisms"].split("under TLS:")[1]


def test_wrong_password_fails_login(daemon):
    result = audit(f"pop3s://127.0.0.1:{daemon.pop3s_port}", daemon,
                   sourceAddress="127.0.0.3", user="alice", password=b"wrong-password")
    assert statuses(result)["login"] == FAIL
    assert "wrong-password" not in json.dumps(reasons(result))


def test_cleartext_allowed_names_the_exposure(daemon_factory):
    d = daemon_factory(CLEARTEXT_CONFIG, name="audit-cleartext")
    result = audit(f"pop3://127.0.0.1:{d.pop3_port}", d)
    r = reasons(result)
    assert failed(result) == ["auth.cleartext", "cleartext.auth-login",
                              "cleartext.auth-plain", "cleartext.user-pass"]
    assert "USER/PASS" in r["cleartext.user-pass"] and "in clear" in r["cleartext.user-pass"]
    assert "USER/PASS" in r["auth.cleartext"]
    assert exitStatus(result) == EXIT_FAIL


def test_legacy_profile_fails_old_tls(daemon_factory):
    d = daemon_factory(LEGACY_CONFIG, name="audit-legacy")
    result = audit(f"pop3://127.0.0.1:{d.pop3_port}", d)
    assert failed(result) == ["tls.version.1.0", "tls.version.1.1"]
    result = audit(f"pop3s://127.0.0.1:{d.pop3s_port}", d)
    assert failed(result) == ["tls.version.1.0", "tls.version.1.1"]


@pytest.mark.parametrize("scheme", ["pop3", "pop3s"])
def test_declined_source_address(daemon_factory, scheme):
    d = daemon_factory(DECLINING_CONFIG, name="audit-declining")
    port = d.pop3_port if scheme == "pop3" else d.pop3s_port
    result = audit(f"{scheme}://127.0.0.1:{port}", d, sourceAddress="127.0.0.9")
    assert result.declined
    assert statuses(result)["connection.source-address"] == INFO
    assert "declined" in reasons(result)["connection.source-address"]
    assert "127.0.0.9" in reasons(result)["connection.source-address"]
    assert exitStatus(result) == EXIT_DECLINED


def test_other_source_address_accepted(daemon_factory):
    d = daemon_factory(DECLINING_CONFIG, name="audit-declining")
    result = audit(f"pop3://127.0.0.1:{d.pop3_port}", d, sourceAddress="127.0.0.8")
    assert not result.declined
    assert "accepted" in reasons(result)["connection.source-address"]
    assert failed(result) == []


def test_cli_against_securepop(daemon, passwordFile, capsys):
    code = auditMain([f"pop3://127.0.0.1:{daemon.pop3_port}", "--source-address", CLIENT,
                      "--servername", "localhost", "--cafile", daemon.ca_file,
                      "--user", "alice", "--password-file", passwordFile, "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == EXIT_OK == report["exit_status"]
    assert ALICE_PASSWORD not in out
    assert {"check": "login", "status": PASS} == {
        k: v for f in report["findings"] if f["check"] == "login"
        for k, v in f.items() if k != "reason"}
