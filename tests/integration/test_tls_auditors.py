"""
The acceptance proof for TLS: independent auditors against the running
daemon, on the STLS port and the implicit-TLS port.

  - sslyze C{--mozilla_config intermediate} passes with the default profile,
    C{--mozilla_config modern} with the C{modern} profile; the C{legacy}
    profile fails the intermediate check (so the check can fail);
  - testssl.sh reports no vulnerability on either port with the default
    profile, and does report the old-protocol weaknesses under C{legacy};
  - a client that offers only TLS 1.0/1.1 is refused under the default
    profile and accepted under C{legacy} (openssl s_client).
"""

import json
import subprocess

import pytest

from tests.integration.fixtures_tls import (  # noqa: F401 (fixtures)
    openssl_ca,
    run_sslyze,
    testssl_path,
    tls_daemon,
)

PORTS = {"implicit": "pop3s_port", "starttls": "pop3_port"}


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_sslyze_intermediate_default_profile(tls_daemon, openssl_ca, mode):
    daemon = tls_daemon("intermediate")
    status, output = run_sslyze("intermediate", getattr(daemon, PORTS[mode]),
                                openssl_ca.root, starttls=mode == "starttls")
    assert status == 0, output
    assert "OK - Compliant." in output, output


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_sslyze_modern_with_modern_profile(tls_daemon, openssl_ca, mode):
    daemon = tls_daemon("modern")
    status, output = run_sslyze("modern", getattr(daemon, PORTS[mode]),
                                openssl_ca.root, starttls=mode == "starttls")
    assert status == 0, output
    assert "OK - Compliant." in output, output


def test_sslyze_modern_fails_on_intermediate_profile(tls_daemon, openssl_ca):
    """
    The check can fail: TLS 1.2 is on under the default profile.
    """
    daemon = tls_daemon("intermediate")
    status, output = run_sslyze("modern", daemon.pop3s_port, openssl_ca.root)
    assert status != 0
    assert "tls_versions" in output


def test_sslyze_intermediate_fails_on_legacy_profile(tls_daemon, openssl_ca):
    daemon = tls_daemon("legacy")
    status, output = run_sslyze("intermediate", daemon.pop3s_port, openssl_ca.root)
    assert status != 0
    assert "TLSv1" in output


def run_testssl(port, starttls, tmp_path):
    """
    testssl.sh's vulnerability checks (-U).

    @return: the findings whose severity is LOW or worse.
    """
    out = tmp_path / f"testssl-{port}.json"
    command = [testssl_path(), "--quiet", "--color", "0", "--warnings", "off",
               "--ip", "one", "-U", "--jsonfile", str(out)]
    if starttls:
        command += ["-t", "pop3"]
    command.append(f"127.0.0.1:{port}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.exists(), result.stdout + result.stderr
    findings = json.loads(out.read_text())
    if isinstance(findings, dict):  # --jsonfile-pretty shape
        findings = findings.get("scanResult", findings)
    assert any(f.get("id") == "heartbleed" for f in findings), result.stdout
    bad = [f for f in findings
           if f.get("severity") in ("LOW", "MEDIUM", "HIGH", "CRITICAL")]
    return bad, result.stdout


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_testssl_no_vulnerability(tls_daemon, mode, tmp_path):
    daemon = tls_daemon("intermediate")
    bad, output = run_testssl(getattr(daemon, PORTS[mode]), mode == "starttls",
                              tmp_path)
    assert bad == [], output


def test_testssl_finds_legacy_weaknesses(tls_daemon, tmp_path):
    """
    The check can fail: TLS 1.0 with CBC suites is BEAST-prone.
    """
    daemon = tls_daemon("legacy")
    bad, output = run_testssl(daemon.pop3s_port, False, tmp_path)
    assert {f["id"] for f in bad} & {"BEAST", "BEAST_CBC_TLS1", "LUCKY13"}, output


def s_client(port, *options):
    """
    One handshake with openssl s_client (implicit TLS).

    @return: C{(handshake_ok, output)}.
    """
    result = subprocess.run(
        # -ign_eof: keep reading after stdin ends, so a greeting that comes
        # late on a loaded machine is still seen (QUIT then closes it).
        ["openssl", "s_client", "-ign_eof", "-connect", f"127.0.0.1:{port}", "-servername",
         "localhost", *options],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30,
    )
    output = result.stdout + result.stderr
    ok = "+OK" in result.stdout and "Cipher is (NONE)" not in output
    return ok, output


OLD_VERSIONS = [["-tls1"], ["-tls1_1"]]
SECLEVEL0 = ["-cipher", "DEFAULT:@SECLEVEL=0"]


@pytest.mark.parametrize("version", OLD_VERSIONS)
def test_old_protocol_client_refused_by_default(tls_daemon, version):
    daemon = tls_daemon("intermediate")
    ok, output = s_client(daemon.pop3s_port, *version, *SECLEVEL0)
    assert not ok, output


@pytest.mark.parametrize("version", OLD_VERSIONS)
def test_old_protocol_client_accepted_by_legacy(tls_daemon, version):
    daemon = tls_daemon("legacy")
    ok, output = s_client(daemon.pop3s_port, *version, *SECLEVEL0)
    assert ok, output


@pytest.mark.parametrize(
    "ciphers",
    ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-NULL-SHA", "AECDH-AES128-SHA",
     "ECDHE-ECDSA-AES128-SHA256"],
)
def test_weak_or_cbc_suite_only_client_refused_by_default(tls_daemon, ciphers):
    daemon = tls_daemon("intermediate")
    ok, output = s_client(daemon.pop3s_port, "-tls1_2", "-cipher",
                          ciphers + ":@SECLEVEL=0")
    assert not ok, output


def test_modern_client_accepted_by_default(tls_daemon, openssl_ca):
    daemon = tls_daemon("intermediate")
    ok, output = s_client(daemon.pop3s_port, "-CAfile", openssl_ca.root,
                          "-verify_return_error", "-verify_hostname", "localhost")
    assert ok, output
    assert "TLSv1.3" in output
