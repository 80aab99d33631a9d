"""
Certificate tools: keys, CSRs, self-signed certificates, install, checks.
"""

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from securepop.errors import ConfigError
from securepop.tls import certificates as certs
from securepop.tls import checks, issue, selfsigned
from securepop.testing import tls as testing
from securepop.tls import ensure_selfsigned

CA = testing.TestCA()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    "keyType,kind,size",
    [("ec-p256", ec.EllipticCurvePrivateKey, 256),
     ("ec-p384", ec.EllipticCurvePrivateKey, 384),
     ("rsa-2048", rsa.RSAPrivateKey, 2048),
     ("rsa-3072", rsa.RSAPrivateKey, 3072)],
)
def test_generate_private_key(keyType, kind, size):
    key = selfsigned.generate_private_key(keyType)
    assert isinstance(key, kind) and key.key_size == size


@pytest.mark.parametrize("keyType", ["rsa-1024", "dsa", "ec-p521", "", "ed25519"])
def test_weak_or_unknown_key_types_refused(keyType):
    with pytest.raises(ValueError):
        selfsigned.generate_private_key(keyType)


def test_rsa_4096_listed():
    assert "rsa-4096" in selfsigned.KEY_TYPES


def test_write_private_key_is_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "sub" / "key.pem"
        selfsigned.write_private_key(str(path), selfsigned.generate_private_key())
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temp left


def test_load_private_key_refuses_open_mode(tmp_path):
    path = str(tmp_path / "key.pem")
    selfsigned.write_private_key(path, selfsigned.generate_private_key())
    checks.load_private_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="group or others"):
        checks.load_private_key(path)


# -- CSR and self-signed ---------------------------------------------------------


def test_build_csr_subject_and_sans():
    key = selfsigned.generate_private_key("ec-p384")
    csr = issue.build_csr(key, "mail.example.test", ["pop.example.test", "192.0.2.1"],
                          O="Example", OU="IT", C="DE", ST="Berlin", L="Berlin")
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == (
        "CN=mail.example.test,OU=IT,O=Example,L=Berlin,ST=Berlin,C=DE"
    )
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mail.example.test",
                                                      "pop.example.test"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.1"]


@pytest.mark.parametrize("country", ["Germany", "D", "1A"])
def test_build_csr_refuses_bad_country(country):
    with pytest.raises(ValueError, match="two-letter"):
        issue.build_csr(selfsigned.generate_private_key(), "x.test", C=country)


def test_make_selfsigned_covers_host_and_is_short_lived():
    key = selfsigned.generate_private_key()
    cert = selfsigned.make_selfsigned(key, "mail.example.test", ["127.0.0.1"])
    assert checks.covers_hostname(cert, "mail.example.test")
    assert checks.covers_hostname(cert, "127.0.0.1")
    assert not checks.covers_hostname(cert, "other.example.test")
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days <= 366  # Mozilla's maximum_certificate_lifespan
    assert checks.is_self_issued(cert)


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


# -- the names of this machine ---------------------------------------------------


def _debian_host(hostname="popbox"):
    """The resolver of a host whose /etc/hosts reads '127.0.0.1 localhost popbox'."""
    return dict(gethostname=lambda: hostname, getfqdn=lambda: "localhost")


def test_local_names_on_a_host_whose_fqdn_is_localhost():
    # getfqdn() alone would give a certificate for "localhost" only, and
    # `curl pop3://$(hostname -f)` (popbox) would fail with exit 60.
    names = selfsigned.local_names("localhost", **_debian_host())
    assert names == ["DNS:localhost", "DNS:popbox", "IP:127.0.0.1", "IP:::1"]


def test_local_names_server_hostname_first_and_no_duplicates():
    names = selfsigned.local_names("Mail.Example.Test.", gethostname=lambda: "mail",
                              getfqdn=lambda: "mail.example.test")
    assert names == ["DNS:mail.example.test", "DNS:mail", "DNS:localhost",
                     "IP:127.0.0.1", "IP:::1"]


def test_local_names_leave_out_what_a_certificate_cannot_carry():
    def broken():
        raise OSError("resolver down")

    names = selfsigned.local_names("", gethostname=lambda: "my_host\u00e9", getfqdn=broken)
    assert names == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert selfsigned.local_names("192.0.2.7", gethostname=lambda: "-bad-",
                             getfqdn=lambda: "a..b")[0] == "IP:192.0.2.7"


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


# -- problems --------------------------------------------------------------------------


def _codes(problems):
    return sorted(p.code for p in problems)


def test_problems_none_for_good_chain():
    leaf, key = CA.issue(["mail.example.test"])
    assert checks.certificate_problems([leaf, CA.intermediate], "mail.example.test",
                                      trust_roots=[CA.root], privateKey=key) == []


def test_problems_each_kind():
    leaf, key = CA.issue(["mail.example.test"])
    other = selfsigned.generate_private_key()
    assert _codes(checks.certificate_problems(
        [leaf, CA.intermediate], "pop.test", trust_roots=[CA.root],
        privateKey=other)) == ["hostname", "key-mismatch"]
    assert _codes(checks.certificate_problems([leaf], None, trust_roots=[CA.root])) == [
        "incomplete-chain"]
    assert _codes(checks.certificate_problems([leaf, CA.intermediate], None)) == [
        "incomplete-chain"]  # no trusted root given
    assert _codes(checks.certificate_problems(
        [leaf, CA.intermediate, CA.root], None)) == []  # root included
    unrelated = testing.TestCA("other").intermediate
    assert _codes(checks.certificate_problems(
        [leaf, unrelated], None, trust_roots=[CA.root])) == ["incomplete-chain"]


def test_validity_problems():
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf, _ = CA.issue(["a.test"], days=20)
    assert _codes(checks.validity_problems(leaf, now)) == ["expires-soon"]
    assert _codes(checks.validity_problems(leaf, now + datetime.timedelta(days=21))) == [
        "expired"]
    assert _codes(checks.validity_problems(leaf, now - datetime.timedelta(days=2))) == [
        "not-yet-valid"]
    assert checks.validity_problems(leaf, now - datetime.timedelta(hours=-1),
                                   warn_days=10) == []


def test_hostname_check_ignores_common_name():
    """
    A certificate with the name only in its CN is refused, as by clients.
    """
    key = selfsigned.generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    from cryptography.hazmat.primitives import hashes

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert not checks.covers_hostname(cert, "mail.example.test")


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


# -- install ------------------------------------------------------------------------------


@pytest.fixture
def pending(tmp_path):
    keyPath = str(tmp_path / "pending-key.pem")
    key = selfsigned.generate_private_key("rsa-2048")
    selfsigned.write_private_key(keyPath, key)
    csr = issue.build_csr(key, "mail.example.test")
    return keyPath, csr


def test_install_assembles_chain_and_moves_key(tmp_path, pending):
    keyPath, csr = pending
    signed = CA.sign_csr(csr)
    answer = tmp_path / "answer.pem"
    selfsigned.write_certificates(str(answer), [signed])
    chainFile = tmp_path / "chain.pem"
    selfsigned.write_certificates(str(chainFile), [CA.root, CA.intermediate])  # any order
    dest, destKey = str(tmp_path / "out" / "cert.pem"), str(tmp_path / "out" / "key.pem")
    problems = issue.install(str(answer), str(chainFile), keyPath, "mail.example.test",
                             dest, destKey, trust_roots=[CA.root])
    assert problems == []
    assert checks.load_chain(dest) == [signed, CA.intermediate, CA.root]
    assert mode(destKey) == 0o600
    assert checks.key_matches(signed, checks.load_private_key(destKey))
    assert not os.path.exists(keyPath)


def test_install_refuses_other_key(tmp_path, pending):
    keyPath, _ = pending
    stranger, _ = CA.issue(["mail.example.test"])
    answer = tmp_path / "answer.pem"
    selfsigned.write_certificates(str(answer), [stranger])
    dest = str(tmp_path / "cert.pem")
    with pytest.raises(ConfigError, match="not for the pending key"):
        issue.install(str(answer), None, keyPath, "mail.example.test", dest,
                      str(tmp_path / "key.pem"))
    assert not os.path.exists(dest) and os.path.exists(keyPath)


def test_install_refuses_wrong_name(tmp_path, pending):
    keyPath, _ = pending
    key = checks.load_private_key(keyPath)
    wrong, _ = CA.issue(["www.example.test"], publicKey=key.public_key())
    answer = tmp_path / "answer.pem"
    selfsigned.write_certificates(str(answer), [wrong])
    with pytest.raises(ConfigError, match="does not cover the host name"):
        issue.install(str(answer), None, keyPath, "mail.example.test",
                      str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_install_refuses_expired(tmp_path, pending):
    keyPath, _ = pending
    key = checks.load_private_key(keyPath)
    now = datetime.datetime.now(datetime.timezone.utc)
    old, _ = CA.issue(["mail.example.test"], publicKey=key.public_key(),
                      not_before=now - datetime.timedelta(days=100),
                      not_after=now - datetime.timedelta(days=1))
    answer = tmp_path / "answer.pem"
    selfsigned.write_certificates(str(answer), [old])
    with pytest.raises(ConfigError, match="expired"):
        issue.install(str(answer), None, keyPath, "mail.example.test",
                      str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_install_reports_incomplete_chain(tmp_path, pending):
    keyPath, csr = pending
    answer = tmp_path / "answer.pem"
    selfsigned.write_certificates(str(answer), [CA.sign_csr(csr)])
    problems = issue.install(str(answer), None, keyPath, "mail.example.test",
                             str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"),
                             trust_roots=[CA.root])
    assert _codes(problems) == ["incomplete-chain"]


@pytest.mark.parametrize("content", [b"", b"junk", b"\xff" * 64])
def test_install_refuses_hostile_answer(tmp_path, pending, content):
    keyPath, _ = pending
    answer = tmp_path / "answer.pem"
    answer.write_bytes(content)
    with pytest.raises(ConfigError, match="no PEM certificate"):
        issue.install(str(answer), None, keyPath, "mail.example.test",
                      str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
