"""
C{securepop cert}: the wizard as commands, from request to check.
"""

import argparse
import io
import os
import stat

import pytest
from cryptography import x509

from securepop.cli import cert
from securepop.tls import certificates as certs
from securepop.testing import tls as testing

CA = testing.TestCA()
HOST = "mail.example.test"


def parse(*argv):
    parser = argparse.ArgumentParser(prog="securepop")
    parser.add_argument("--config")
    parser.add_argument("--data-dir", dest="data_dir")
    sub = parser.add_subparsers(dest="command")
    cert.add_parser(sub)
    return parser.parse_args(["cert", *argv])


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(settings, *argv, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    args = parse(*argv)
    status = cert.run(args, settings, stdin=stdin or io.StringIO(), stdout=out,
                      stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def settings(tmp_path):
    return cert.CertSettings(hostname=HOST, data_dir=str(tmp_path / "data"))


def test_parser_registers_subcommands():
    for sub in ("request", "install CERT", "selfsigned", "show", "check"):
        args = parse(*sub.split())
        assert callable(args.func) and args.cert_command == sub.split()[0]
    with pytest.raises(SystemExit):
        parse()
    with pytest.raises(SystemExit):
        parse("request", "--key-type", "rsa-1024")


def test_default_paths(settings):
    assert settings.certificate_path.endswith("data/tls/cert.pem")
    assert settings.key_path.endswith("data/tls/key.pem")
    configured = cert.CertSettings(HOST, "/d", "/etc/c.pem", "/etc/k.pem")
    assert (configured.certificate_path, configured.key_path) == ("/etc/c.pem",
                                                                  "/etc/k.pem")


def test_from_settings_shape():
    class NS:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    s = NS(server=NS(hostname=HOST, data_dir="/var/lib/securepop"),
           tls=NS(certificate="", key=""))
    assert cert.CertSettings.from_settings(s) == cert.CertSettings(
        HOST, "/var/lib/securepop")


def test_request_sign_install_check(settings, tmp_path):
    status, out, err = run(settings, "request", "--san", "pop.example.test",
                           "-O", "Example", "-C", "DE", "--key-type", "rsa-3072")
    assert status == 0, err
    assert stat.S_IMODE(os.stat(settings.pending_key_path).st_mode) == 0o600
    csr = x509.load_pem_x509_csr(open(settings.csr_path, "rb").read())
    assert csr.subject.rfc4514_string() == f"CN={HOST},O=Example,C=DE"
    assert csr.public_key().key_size == 3072

    # a second request would lose the pending key: refused without --force
    status, _, err = run(settings, "request")
    assert status == 2 and "--force" in err

    answer = tmp_path / "answer.pem"
    certs.write_certificates(str(answer), [CA.sign_csr(csr)])
    chain = tmp_path / "chain.pem"
    certs.write_certificates(str(chain), [CA.intermediate, CA.root])
    status, out, err = run(settings, "install", str(answer), "--chain", str(chain))
    assert status == 0, err
    assert err == ""
    installed = certs.load_chain(settings.certificate_path)
    assert installed[1:] == [CA.intermediate, CA.root]
    assert not os.path.exists(settings.pending_key_path)

    status, out, err = run(settings, "check")
    assert status == 0, out
    assert f"DNS:{HOST}, DNS:pop.example.test" in out
    assert "key:         RSA 3072" in out
    status, out, _ = run(settings, "check", "--host", "other.example.test")
    assert status == 1
    assert "PROBLEM: certificate does not cover the host name 'other.example.test'" in out


def test_install_wrong_key_refused(settings, tmp_path):
    assert run(settings, "request")[0] == 0
    stranger, _ = CA.issue([HOST])
    answer = tmp_path / "answer.pem"
    certs.write_certificates(str(answer), [stranger])
    status, _, err = run(settings, "install", str(answer))
    assert status == 2
    assert "not for the pending key" in err
    assert not os.path.exists(settings.certificate_path)


def test_install_wrong_name_refused(settings, tmp_path):
    assert run(settings, "request", "--cn", "www.example.test")[0] == 0
    csr = x509.load_pem_x509_csr(open(settings.csr_path, "rb").read())
    answer = tmp_path / "answer.pem"
    certs.write_certificates(str(answer), [CA.sign_csr(csr)])
    status, _, err = run(settings, "install", str(answer))
    assert status == 2
    assert f"does not cover the host name '{HOST}'" in err
    # the admin may name the host explicitly
    assert run(settings, "install", str(answer), "--host", "www.example.test")[0] == 0


def test_install_without_pending_request(settings, tmp_path):
    answer = tmp_path / "answer.pem"
    certs.write_certificates(str(answer), [CA.issue([HOST])[0]])
    status, _, err = run(settings, "install", str(answer))
    assert status == 2 and "cannot read" in err


def test_request_prompts_when_interactive(settings):
    answers = Terminal("\nACME\nMail\nFR\n\nParis\n")
    status, out, err = run(settings, "request", stdin=answers)
    assert status == 0, err
    assert "Organization (O)" in out
    csr = x509.load_pem_x509_csr(open(settings.csr_path, "rb").read())
    assert csr.subject.rfc4514_string() == f"CN={HOST},OU=Mail,O=ACME,L=Paris,C=FR"


def test_request_no_prompt_on_terminal(settings):
    status, out, _ = run(settings, "request", "--no-prompt", stdin=Terminal(""))
    assert status == 0 and "Organization" not in out


def test_request_prompt_refuses_bad_country(settings):
    status, _, err = run(settings, "request", stdin=Terminal("\n\n\nFrance\n\n\n"))
    assert status == 2 and "two-letter" in err
    assert not os.path.exists(settings.pending_key_path)


def test_request_eof_on_prompt(settings):
    status, _, err = run(settings, "request", stdin=Terminal(""))
    assert status == 2 and "end of input" in err


def test_selfsigned_then_check(settings):
    status, out, err = run(settings, "selfsigned", "--san", "127.0.0.1")
    assert status == 0, err
    assert stat.S_IMODE(os.stat(settings.key_path).st_mode) == 0o600
    status, out, _ = run(settings, "show")
    assert status == 0, out
    assert "no problems found" in out and "IP:127.0.0.1" in out
    status, _, err = run(settings, "selfsigned")
    assert status == 2 and "--force" in err
    assert run(settings, "selfsigned", "--force", "--host", "x.test")[0] == 0
    assert run(settings, "check")[0] == 1  # no longer covers HOST


def test_check_reports_expiry_and_key_mode(settings, tmp_path):
    leaf, key = CA.issue([HOST], days=5)
    certPath, keyPath = testing.write_identity(str(tmp_path), "soon",
                                               [leaf, CA.intermediate, CA.root], key,
                                               key_mode=0o644)
    status, out, _ = run(settings, "check", certPath, "--key", keyPath)
    assert status == 1
    assert "expires in" in out and "chmod 600" in out


def test_check_hostile_file(settings, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
    status, _, err = run(settings, "check", str(bad))
    assert status == 2 and "no PEM certificate" in err


def test_check_missing_default(settings):
    status, _, err = run(settings, "check")
    assert status == 2 and "cannot read" in err


def test_entry_uses_config_loader(monkeypatch, tmp_path):
    """
    args.func(args) loads the configuration itself (fallback without
    securepop.config: the machine's name and --data-dir).
    """
    args = parse("selfsigned", "--host", HOST)
    args.data_dir = str(tmp_path / "d")
    assert args.func(args) == 0
    assert os.path.exists(tmp_path / "d" / "tls" / "cert.pem")


def test_check_ca_file_completes_private_chain(settings, tmp_path):
    leaf, key = CA.issue([HOST])
    certPath, keyPath = testing.write_identity(str(tmp_path), "p",
                                               [leaf, CA.intermediate], key)
    status, out, _ = run(settings, "check", certPath)
    assert status == 1 and "incomplete chain" in out
    root = CA.write_root(str(tmp_path / "root.pem"))
    status, out, _ = run(settings, "check", certPath, "--ca-file", root)
    assert status == 0, out
