"""
Tests for L{securepop.tls.issue}: certificate signing requests and
installing a CA's answer.
"""

import datetime
import os
import stat

import pytest
from cryptography import x509

from securepop.errors import ConfigError
from securepop.tls import checks, issue, selfsigned
from securepop.testing import tls as testing

CA = testing.TestCA()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- CSR ------------------------------------------------------------------------


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


def _codes(problems):
    return sorted(p.code for p in problems)


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
