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
import sys
import time

import pytest
from cryptography import x509

from securepop.tls import certificates
from tests.integration.daemon import DEFAULT_CONFIG, LISTENERS, Daemon, require_tool
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


# -- the embedded default on a host whose getfqdn() is "localhost" --------------------
#
# On a host whose /etc/hosts maps 127.0.0.1 to "localhost" first and to the
# host's own name on a later line (as this test machine's does),
# socket.getfqdn() answers "localhost" while `hostname -f` says HOST, and the
# README's `curl ... pop3://$(hostname -f):1110/1` met a certificate for
# "localhost" only.  The daemon runs in its own UTS and mount namespace, with
# that host name and that /etc/hosts bind-mounted, so its resolver answers as
# on such a host whatever this machine's own /etc/hosts says.

HOST = "popbox"
DEBIAN_HOSTS = f"127.0.0.1\tlocalhost\n127.0.0.1\t{HOST}\n::1\tlocalhost ip6-localhost\n"
EMBEDDED_DEFAULT = """
[server]
data_dir = "{data_dir}"
""" + LISTENERS + """[[listen]]
endpoint = "tcp6:{port3}:interface=\\\\:\\\\:1"
tls = "starttls"
"""
MESSAGE = b"Subject: first fetch\r\n\r\nhello from the first hour\r\n"


def debian_host(tmp_path):
    """
    The command prefix that runs a program as on a host named L{HOST} whose
    /etc/hosts maps 127.0.0.1 to localhost first, then to L{HOST}.
    """
    if os.geteuid() != 0:
        pytest.skip("a UTS and mount namespace needs root (CI runs as root)")
    unshare = require_tool("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text(DEBIAN_HOSTS)
    return [unshare, "--uts", "--mount", "--propagation", "private", "sh", "-c",
            f'hostname {HOST} && mount --bind {hosts} /etc/hosts && exec "$@"', "sh"]


def curl_fetch(d, host, port, extra=()):
    """curl with STLS required and the data directory's certificate as the only CA."""
    address = "::1" if port == d.ports["port3"] else "127.0.0.1"
    url_host = f"[{host}]" if ":" in host else host
    return subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "60", "--ssl-reqd",
         "--cacert", d.ca_file, "--resolve", f"{HOST}:{port}:{address}",
         "--resolve", f"mail.example.test:{port}:{address}",
         "--user", f"alice:{PASSWORD}", *extra, f"pop3://{url_host}:{port}/1"],
        capture_output=True, timeout=90)


def start_as_debian_host(tmp_path, prepare=None):
    wrapper = debian_host(tmp_path)
    probe = subprocess.run(
        wrapper + ["sh", "-c", f"hostname -f; {sys.executable} -c "
                   "'import socket; print(socket.gethostname(), socket.getfqdn())'"],
        capture_output=True, text=True, check=True)
    # the premise: this resolver is the one that broke the README's fetch
    assert probe.stdout.split() == [HOST, HOST, "localhost"], probe
    d = Daemon(tmp_path, EMBEDDED_DEFAULT, name="debian-host", wrapper=wrapper)
    d.add_user("alice", PASSWORD)
    d.deliver("alice", MESSAGE)
    if prepare is not None:
        prepare(d)
    d.start()
    return d


def old_default_certificate(d):
    """The certificate the embedded default made before: CN=localhost, one name."""
    certPath, keyPath = certificates.default_paths(str(d.data_dir))
    os.makedirs(os.path.dirname(certPath), mode=0o700, exist_ok=True)
    key = certificates.generate_private_key()
    certificates.write_private_key(keyPath, key)
    certificates.write_certificates(certPath,
                                    [certificates.make_selfsigned(key, "localhost")])


def test_first_fetch_by_host_name_when_getfqdn_is_localhost(tmp_path):
    d = start_as_debian_host(tmp_path)
    try:
        for host, port in [(HOST, d.pop3_port), ("localhost", d.pop3_port),
                           ("127.0.0.1", d.pop3_port), ("::1", d.ports["port3"])]:
            result = curl_fetch(d, host, port)
            assert result.returncode == 0, (host, result.stderr)
            assert result.stdout == MESSAGE, host
        # a name the certificate does not carry is refused by the client
        wrong = curl_fetch(d, "mail.example.test", d.pop3_port)
        assert wrong.returncode == 60, wrong.stderr
        assert d.wait_log("tls.default_certificate")
        line = next(x for x in d.log().splitlines() if "tls.default_certificate" in x)
        assert "action=made" in line
        assert f"covers DNS:localhost, DNS:{HOST}, IP:127.0.0.1, IP:::1" in line
    finally:
        d.stop()


def test_old_default_certificate_is_remade_for_every_name(tmp_path):
    made = {}

    def prepare(d):
        old_default_certificate(d)
        made["key"] = (d.data_dir / "tls" / "key.pem").read_bytes()

    d = start_as_debian_host(tmp_path, prepare=prepare)
    try:
        result = curl_fetch(d, HOST, d.pop3_port)
        assert result.returncode == 0, result.stderr
        assert result.stdout == MESSAGE
        assert d.wait_log("action=remade"), d.log()
        # the same key, a certificate with every name
        assert (d.data_dir / "tls" / "key.pem").read_bytes() == made["key"]
    finally:
        d.stop()


def test_administrators_certificate_is_never_remade(tmp_path):
    def cert_selfsigned(d):
        # `securepop cert selfsigned`: the administrator chose these names
        d.cli("cert", "selfsigned", "--host", "localhost", "--san", "mail.example.test")

    d = start_as_debian_host(tmp_path, prepare=cert_selfsigned)
    try:
        before = open(d.ca_file, "rb").read()
        assert curl_fetch(d, "mail.example.test", d.pop3_port).stdout == MESSAGE
        refused = curl_fetch(d, HOST, d.pop3_port)
        assert refused.returncode == 60, refused.stderr
        assert open(d.ca_file, "rb").read() == before
        assert d.wait_log("action=kept -- covers DNS:localhost, DNS:mail.example.test"), \
            d.log()
        # the administrator chose the names: no warning about the machine's others
        assert "does not cover" not in d.log()
    finally:
        d.stop()
