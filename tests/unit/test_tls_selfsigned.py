"""
Tests for L{securepop.tls.selfsigned}: keys, self-signed certificates, PEM
files, the names of this machine.
"""

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from securepop.tls import checks, selfsigned

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


def test_make_selfsigned_covers_host_and_is_short_lived():
    key = selfsigned.generate_private_key()
    cert = selfsigned.make_selfsigned(key, "mail.example.test", ["127.0.0.1"])
    assert checks.covers_hostname(cert, "mail.example.test")
    assert checks.covers_hostname(cert, "127.0.0.1")
    assert not checks.covers_hostname(cert, "other.example.test")
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days <= 366  # Mozilla's maximum_certificate_lifespan
    assert checks.is_self_issued(cert)


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
