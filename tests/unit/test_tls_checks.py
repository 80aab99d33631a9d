"""
Tests for L{securepop.tls.checks}: loading keys, and the problems of a
certificate chain (names, validity, chain, key).
"""

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from securepop.errors import ConfigError
from securepop.tls import checks, selfsigned
from securepop.testing import tls as testing

CA = testing.TestCA()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- loading keys -------------------------------------------------------------


def test_load_private_key_refuses_open_mode(tmp_path):
    path = str(tmp_path / "key.pem")
    selfsigned.write_private_key(path, selfsigned.generate_private_key())
    checks.load_private_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="group or others"):
        checks.load_private_key(path)


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
