"""Secret derivations for the users file, and MD4."""

import base64

import pytest

from securepop.sasl._md4 import md4
from securepop.sasl.secrets import (
    cleartext_secret, decode_scram_secret, encode_scram_secret, nt_hash,
    saslprep, scram_secret,
)


@pytest.mark.parametrize("message, digest", [
    # RFC 1320 appendix A.5.
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
     "043f8582f241db351ce627e153e7f0e4"),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
])
def test_md4_rfc1320_suite(message, digest):
    assert md4(message).hex() == digest


def test_md4_differs_on_one_bit():
    assert md4(b"abd") != md4(b"abc")


def test_nt_hash_spec_value_and_bytes_input():
    """[MS-NLMP] 4.2.2.1.2: NTOWFv1("Password")."""
    assert nt_hash("Password").hex() == "a4f49c406510bdcab6824ee7c30fd852"
    assert nt_hash(b"Password") == nt_hash("Password")
    assert nt_hash("password") != nt_hash("Password")


def test_cleartext_secret():
    assert cleartext_secret("tanstaaf") == b"tanstaaf"
    assert cleartext_secret("\u00e9") == b"\xc3\xa9"


def test_scram_secret_rfc7677_keys():
    """The RFC 7677 exchange's keys verify its proof and signature."""
    secret = scram_secret("pencil", base64.b64decode(
        "W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    # Checked end to end in test_sasl_scram; here: shape and determinism.
    assert len(secret.stored_key) == len(secret.server_key) == 32
    assert secret == scram_secret("pencil", secret.salt, 4096)
    assert secret != scram_secret("pencil", secret.salt, 4097)


def test_scram_secret_random_salt():
    first, second = scram_secret("pw"), scram_secret("pw")
    assert first.salt != second.salt and len(first.salt) == 16
    assert first.iterations == 4096


@pytest.mark.parametrize("kwargs", [{"iterations": 0},
                                    {"iterations": 10**9}, {"salt": b""}])
def test_scram_secret_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        scram_secret("pw", **kwargs)


def test_saslprep():
    """RFC 4013 section 3 examples."""
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"
    for bad in ("\u0007", "\u0627\u0031"):
        with pytest.raises(ValueError):
            saslprep(bad)


def test_scram_secret_uses_saslprep():
    assert scram_secret("I\u00adX", b"salt") == scram_secret("IX", b"salt")


def test_scram_secret_encoding_round_trip():
    secret = scram_secret("pw", b"0123456789abcdef", 8192)
    text = encode_scram_secret(secret)
    assert text.startswith("SCRAM-SHA-256$8192:")
    assert decode_scram_secret(text) == secret


KEYS = base64.b64encode(b"\x00" * 32).decode() + ":" + base64.b64encode(
    b"\x01" * 32).decode()


def test_scram_secret_decoding_accepts_well_formed():
    assert decode_scram_secret("SCRAM-SHA-256$4096:c2FsdA==$" + KEYS).salt \
        == b"salt"


@pytest.mark.parametrize("text", [
    "", "SCRAM-SHA-1$4096:c2FsdA==$AA==:AA==",
    "SCRAM-SHA-256$4096:c2FsdA==",
    "SCRAM-SHA-256$x:c2FsdA==$" + KEYS,
    "SCRAM-SHA-256$-1:c2FsdA==$" + KEYS,
    "SCRAM-SHA-256$0:c2FsdA==$" + KEYS,
    "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
    "SCRAM-SHA-256$4096:!!$" + KEYS,
    "SCRAM-SHA-256$4096:$" + KEYS,
    "SCRAM-SHA-256$99999999999:c2FsdA==$" + KEYS,
])
def test_scram_secret_decoding_refuses_garbage(text):
    with pytest.raises(ValueError):
        decode_scram_secret(text)
