"""
Tests for L{securepop.tls.certificates}: the default certificate and the
report of C{cert show}.
"""

import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from securepop.tls import certificates as certs
from securepop.tls import checks, selfsigned
from securepop.testing import tls as testing
from securepop.tls import ensure_selfsigned

CA = testing.TestCA()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the default certificate ----------------------------------------------------


LOCAL = ["DNS:mail.example.test", "DNS:popbox", "DNS:localhost", "IP:127.0.0.1", "IP:::1"]


def test_ensure_selfsigned_creates_once(tmp_path):
    certPath, keyPath = ensure_selfsigned(str(tmp_path), "mail.example.test", names=LOCAL)
    assert certPath == str(tmp_path / "tls" / "cert.pem")
    assert keyPath == str(tmp_path / "tls" / "key.pem")
    assert mode(keyPath) == 0o600
    key = checks.load_private_key(keyPath)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    chain = checks.load_chain(certPath)
    assert checks.subject_alt_names(chain[0]) == LOCAL
    assert checks.key_matches(chain[0], key)
    before = open(certPath, "rb").read(), open(keyPath, "rb").read()
    assert ensure_selfsigned(str(tmp_path), "mail.example.test", names=LOCAL) == (
        certPath, keyPath)
    assert (open(certPath, "rb").read(), open(keyPath, "rb").read()) == before


def _debian_host(hostname="popbox"):
    """The resolver of a host whose /etc/hosts reads '127.0.0.1 localhost popbox'."""
    return dict(gethostname=lambda: hostname, getfqdn=lambda: "localhost")


def test_default_certificate_covers_every_local_name(tmp_path):
    names = selfsigned.local_names("localhost", **_debian_host())
    made = certs.ensure_default_certificate(str(tmp_path), "localhost", names=names)
    assert made.action == "made" and made.missing == ()
    leaf = checks.load_chain(made.certificate)[0]
    for name in ("popbox", "localhost", "127.0.0.1", "::1"):
        assert checks.covers_hostname(leaf, name), name
    assert not checks.covers_hostname(leaf, "other.example.test")
    assert made.names == tuple(checks.subject_alt_names(leaf))
    assert "OU=" + certs.DEFAULT_CERT_UNIT in leaf.subject.rfc4514_string()


def _old_default(tmp_path, hostname):
    """The certificate the embedded default made before: CN and one DNS name."""
    certPath, keyPath = certs.default_paths(str(tmp_path))
    key = selfsigned.generate_private_key()
    selfsigned.write_private_key(keyPath, key)
    selfsigned.write_certificates(certPath, [selfsigned.make_selfsigned(key, hostname)])
    return certPath, keyPath


def test_old_default_certificate_lacking_names_is_remade_for_the_same_key(tmp_path):
    certPath, keyPath = _old_default(tmp_path, "localhost")
    keyBytes = open(keyPath, "rb").read()
    names = selfsigned.local_names("localhost", **_debian_host())
    made = certs.ensure_default_certificate(str(tmp_path), "localhost", names=names)
    assert made.action == "remade"
    assert open(keyPath, "rb").read() == keyBytes
    leaf = checks.load_chain(certPath)[0]
    assert checks.covers_hostname(leaf, "popbox")
    assert checks.key_matches(leaf, checks.load_private_key(keyPath))
    # and the next start keeps it
    again = certs.ensure_default_certificate(str(tmp_path), "localhost", names=names)
    assert again.action == "kept" and again.missing == ()


def test_own_certificate_remade_when_the_host_is_renamed(tmp_path):
    certs.ensure_default_certificate(str(tmp_path), "localhost",
                                     names=selfsigned.local_names("localhost", **_debian_host()))
    renamed = selfsigned.local_names("localhost", **_debian_host("newname"))
    made = certs.ensure_default_certificate(str(tmp_path), "localhost", names=renamed)
    assert made.action == "remade" and "DNS:newname" in made.names


@pytest.mark.parametrize("how", ["cert-selfsigned-with-san", "other-name", "ca-issued",
                                 "rsa"])
def test_certificate_not_made_by_securepop_is_never_replaced(tmp_path, how):
    certPath, keyPath = certs.default_paths(str(tmp_path))
    if how == "ca-issued":
        leaf, key = CA.issue(["localhost"])
    else:
        key = selfsigned.generate_private_key("rsa-2048" if how == "rsa" else "ec-p256")
        leaf = selfsigned.make_selfsigned(
            key, "pop.example.test" if how == "other-name" else "localhost",
            ["pop.example.test"] if how == "cert-selfsigned-with-san" else ())
    selfsigned.write_private_key(keyPath, key)
    selfsigned.write_certificates(certPath, [leaf])
    before = open(certPath, "rb").read(), open(keyPath, "rb").read()
    made = certs.ensure_default_certificate(
        str(tmp_path), "localhost", names=selfsigned.local_names("localhost", **_debian_host()))
    assert made.action == "kept"
    assert "DNS:popbox" in made.missing and "IP:127.0.0.1" in made.missing
    assert (open(certPath, "rb").read(), open(keyPath, "rb").read()) == before


def test_own_certificate_with_a_foreign_key_is_left_and_reported(tmp_path):
    certPath, keyPath = _old_default(tmp_path, "localhost")
    selfsigned.write_private_key(keyPath, selfsigned.generate_private_key())
    before = open(certPath, "rb").read()
    made = certs.ensure_default_certificate(
        str(tmp_path), "localhost", names=selfsigned.local_names("localhost", **_debian_host()))
    assert made.action == "kept" and "does not match" in made.problem
    assert open(certPath, "rb").read() == before


def test_ensure_selfsigned_from_many_processes_at_once_gives_one_pair(tmp_path):
    # Workers start together; each calls ensure_selfsigned on the same data dir.
    import subprocess
    import sys

    code = ("import sys; from securepop.tls import ensure_selfsigned; "
            "ensure_selfsigned(sys.argv[1], 'localhost')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root)
             for _ in range(6)]
    assert all(p.wait(60) == 0 for p in procs)
    certPath, keyPath = ensure_selfsigned(str(tmp_path), "localhost")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(certPath, "rb").read())
    key = serialization.load_pem_private_key(open(keyPath, "rb").read(), None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_ensure_selfsigned_replaces_half_pair(tmp_path):
    certPath, keyPath = ensure_selfsigned(str(tmp_path), "mail.example.test")
    os.unlink(keyPath)
    ensure_selfsigned(str(tmp_path), "mail.example.test")
    assert checks.key_matches(checks.load_chain(certPath)[0],
                             checks.load_private_key(keyPath))


# -- the report -----------------------------------------------------------------


def _codes(problems):
    return sorted(p.code for p in problems)


def test_inspect_report(tmp_path):
    leaf, key = CA.issue(["mail.example.test"])
    certPath, keyPath = testing.write_identity(str(tmp_path), "x",
                                               [leaf, CA.intermediate], key)
    report = certs.inspect(certPath, "mail.example.test", keyPath,
                           trust_roots=[CA.root])
    text = "\n".join(report.lines())
    assert "subject:     CN=mail.example.test" in text
    assert "names:       DNS:mail.example.test" in text
    assert "key:         EC secp256r1" in text
    assert "chain[1]:    CN=securepop test CA intermediate" in text
    assert "no problems found" in text
    os.chmod(keyPath, 0o644)
    report = certs.inspect(certPath, "pop.test", keyPath, trust_roots=[CA.root])
    assert _codes(report.problems) == ["hostname", "key-mode"]
