"""
Certificates on the running daemon: the wizard end to end (request -> a CA
made by openssl signs -> install -> clients verify), refusals, and reload
without restart (on file change and on SIGHUP) while sessions go on.
"""

import os
import poplib
import re
import ssl
import subprocess
import time

import pytest
from cryptography import x509

from tests.integration.daemon import DEFAULT_CONFIG
from tests.integration.fixtures_tls import (  # noqa: F401 (fixtures)
    PASSWORD,
    openssl_ca,
    tls_config,
)


def presented_chain(port, servername="localhost"):
    """
    The certificates the server sends (openssl s_client -showcerts).
    """
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
         servername, "-showcerts"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30,
    ).stdout
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                      out, re.S)
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


def leaf_cn(port):
    chain = presented_chain(port)
    assert chain, "no certificate presented"
    return chain[0].subject.rfc4514_string()


def wait_for_leaf(port, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = leaf_cn(port)
        if seen == expected:
            return seen
        time.sleep(0.3)
    return seen


def verified_login(port, ca_file, hostname="localhost"):
    context = ssl.create_default_context(cafile=ca_file)
    client = poplib.POP3_SSL(hostname, port, context=context, timeout=10)
    client.user("alice")
    client.pass_(PASSWORD)
    return client


# -- the wizard ---------------------------------------------------------------


@pytest.fixture(scope="module")
def wizard_daemon(daemon_factory):
    """
    The embedded default: self-signed certificate made at first start.
    """
    return daemon_factory(DEFAULT_CONFIG, users=(("alice", PASSWORD),),
                          name="tls-wizard")


def test_request_sign_install_then_clients_verify(wizard_daemon, openssl_ca, tmp_path):
    d = wizard_daemon
    # before: the self-signed default does not verify against our CA
    with pytest.raises(ssl.SSLCertVerificationError):
        verified_login(d.pop3s_port, openssl_ca.root)

    out = d.cli("cert", "request", "--no-prompt", "--san", "127.0.0.1",
                "-O", "Example Test", "-C", "DE")
    assert b"request.csr" in out.stdout
    tls_dir = d.data_dir / "tls"
    assert oct(os.stat(tls_dir / "pending-key.pem").st_mode & 0o777) == "0o600"

    signed = openssl_ca.sign(tls_dir / "request.csr", "wizard.pem")
    d.cli("cert", "install", signed, "--chain", openssl_ca.intermediate)

    assert wait_for_leaf(d.pop3s_port, "CN=localhost,O=Example Test,C=DE") == \
        "CN=localhost,O=Example Test,C=DE"
    chain = presented_chain(d.pop3s_port)
    assert len(chain) == 2  # leaf + intermediate
    assert chain[1].subject.rfc4514_string() == "CN=securepop openssl test intermediate"

    client = verified_login(d.pop3s_port, openssl_ca.root)
    assert client.stat()[0] >= 0
    client.quit()
    # and over STLS
    client = poplib.POP3("localhost", d.pop3_port, timeout=10)
    client.stls(ssl.create_default_context(cafile=openssl_ca.root))
    client.user("alice")
    client.pass_(PASSWORD)
    client.quit()

    check = d.cli("cert", "check", "--ca-file", openssl_ca.root, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # without the private root the chain cannot be completed: reported
    check = d.cli("cert", "check", check=False)
    assert check.returncode == 1
    assert b"incomplete chain" in check.stdout


def test_install_refuses_certificate_for_other_name(wizard_daemon, openssl_ca):
    d = wizard_daemon
    d.cli("cert", "request", "--no-prompt", "--force", "--cn", "www.example.test")
    signed = openssl_ca.sign(d.data_dir / "tls" / "request.csr", "wrongname.pem")
    result = d.cli("cert", "install", signed, check=False)
    assert result.returncode == 2
    assert b"does not cover the host name 'localhost'" in result.stderr


def test_install_refuses_certificate_for_other_key(wizard_daemon, openssl_ca):
    d = wizard_daemon
    d.cli("cert", "request", "--no-prompt", "--force")
    other_cert, _ = openssl_ca.issue("other-key")
    result = d.cli("cert", "install", other_cert, check=False)
    assert result.returncode == 2
    assert b"is not for the pending key" in result.stderr


# -- reload ----------------------------------------------------------------------


def _reload_daemon(daemon_factory, openssl_ca, tmp_path_factory, name):
    directory = tmp_path_factory.mktemp(name)
    cert, key = openssl_ca.issue(f"{name}-v1")
    live_cert, live_key = directory / "cert.pem", directory / "key.pem"
    os.replace(cert, live_cert)
    os.replace(key, live_key)
    daemon = daemon_factory(tls_config(live_cert, live_key),
                            users=(("alice", PASSWORD),), name=name)
    daemon.deliver("alice", b"Subject: hi\r\n\r\nhello\r\n")
    return daemon, live_cert, live_key


def _replace_files(openssl_ca, name, live_cert, live_key):
    cert, key = openssl_ca.issue(name)
    os.replace(key, live_key)
    os.replace(cert, live_cert)


@pytest.mark.parametrize("trigger", ["file-change", "sighup"])
def test_reload_new_certificate_open_session_goes_on(
    daemon_factory, openssl_ca, tmp_path_factory, trigger
):
    name = f"reload-{trigger}"
    d, live_cert, live_key = _reload_daemon(daemon_factory, openssl_ca,
                                            tmp_path_factory, name)
    assert leaf_cn(d.pop3s_port) == f"CN={name}-v1"
    open_session = verified_login(d.pop3s_port, openssl_ca.root)
    assert open_session.stat()[0] == 1

    _replace_files(openssl_ca, f"{name}-v2", live_cert, live_key)
    if trigger == "sighup":
        d.sighup()
    assert wait_for_leaf(d.pop3s_port, f"CN={name}-v2") == f"CN={name}-v2"

    # the session opened before goes on undisturbed
    assert open_session.stat()[0] == 1
    assert b"hello" in b"\n".join(open_session.retr(1)[1])
    assert open_session.quit().startswith(b"+OK")
    # and new sessions verify with the new certificate
    verified_login(d.pop3s_port, openssl_ca.root).quit()


def test_broken_replacement_keeps_serving_old_certificate(
    daemon_factory, openssl_ca, tmp_path_factory
):
    name = "reload-broken"
    d, live_cert, live_key = _reload_daemon(daemon_factory, openssl_ca,
                                            tmp_path_factory, name)
    stranger_cert, _ = openssl_ca.issue("stranger")
    os.replace(stranger_cert, live_cert)  # a certificate for another key
    time.sleep(1.5)  # past the once-per-second file check
    assert leaf_cn(d.pop3s_port) == f"CN={name}-v1"
    verified_login(d.pop3s_port, openssl_ca.root).quit()
    assert d.wait_log("does not match", timeout=10), d.log()[-2000:]
