"""Password schemes: argon2id parameters, the derived secrets, their one SCRAM codec, MD4."""

import base64

import pytest

from securepop import schemes
from securepop._md4 import md4
from securepop.auth.records import ScramSecret
from securepop.schemes import (
    HashParameters, cleartext_secret, decode_scram_secret, encode_scram_secret, nt_hash,
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
    assert text.startswith("8192,") and ":" not in text
    assert decode_scram_secret(text) == secret


KEYS = base64.b64encode(b"\x00" * 32).decode() + "," + base64.b64encode(
    b"\x01" * 32).decode()


def test_scram_secret_decoding_accepts_well_formed():
    assert decode_scram_secret("4096,c2FsdA==," + KEYS) == \
        ScramSecret(b"salt", 4096, b"\x00" * 32, b"\x01" * 32)


@pytest.mark.parametrize("text", [
    "", "4096,c2FsdA==",
    "4096,c2FsdA==,AA==",
    "4096,c2FsdA==," + KEYS + ",AA==",
    "x,c2FsdA==," + KEYS,
    "-1,c2FsdA==," + KEYS,
    "0,c2FsdA==," + KEYS,
    "4096,c2FsdA==,AAAA,AAAA",
    "4096,!!," + KEYS,
    "4096,," + KEYS,
    "99999999999,c2FsdA==," + KEYS,
])
def test_scram_secret_decoding_refuses_garbage(text):
    with pytest.raises(ValueError):
        decode_scram_secret(text)


# -- argon2id ------------------------------------------------------------------------

CHEAP = HashParameters(memory_kib=64, time_cost=1, parallelism=1)


def test_defaults_are_owasp_minimum_not_argon2_cffi_defaults():
    assert schemes.DEFAULT_PARAMETERS == HashParameters(19456, 2, 1)
    hasher = schemes.DEFAULT_PARAMETERS.hasher()
    assert (hasher.memory_cost, hasher.time_cost, hasher.parallelism) == (19456, 2, 1)
    assert "$m=19456,t=2,p=1$" in hasher.hash("x")
    assert not schemes.DEFAULT_PARAMETERS.below_owasp_minimum()
    assert HashParameters(47104, 1, 1).below_owasp_minimum() is False
    assert HashParameters(19456, 1, 1).below_owasp_minimum() is True
    assert HashParameters(7168, 4, 1).below_owasp_minimum() is True


def test_from_settings_reads_auth_file():
    from securepop import config

    s = config.parse("[auth.file]\nargon2_memory_kib = 12288\nargon2_time_cost = 3\n"
                     "argon2_parallelism = 2\n", "f")
    assert HashParameters.from_settings(s.auth.file) == HashParameters(12288, 3, 2)


def test_hasher_for_shares_one_hasher_per_parameters():
    assert schemes.hasher_for(None) is schemes.hasher_for(None)
    assert schemes.hasher_for(CHEAP) is schemes.hasher_for(HashParameters(64, 1, 1))
    assert schemes.hasher_for(CHEAP) is not schemes.hasher_for(None)
    assert "$m=64,t=1,p=1$" in schemes.hasher_for(CHEAP).hash("x")


def test_describe_hash_names_parameters_and_survives_garbage():
    assert schemes.describe_hash(schemes.hasher_for(CHEAP).hash("x")) == "m=64,t=1,p=1"
    assert schemes.describe_hash("$not-argon2$") == "?"


def test_measure_verification_reports_the_fastest_round():
    ticks = iter([0.0, 0.5, 1.0, 1.2, 2.0, 2.9])
    cpu = iter([0.0, 0.4, 1.0, 1.3, 2.0, 2.8])
    cost = schemes.measure_verification(CHEAP, rounds=3, clock=lambda: next(ticks),
                                        cpu_clock=lambda: next(cpu))
    assert cost.wall == pytest.approx(0.2) and cost.cpu == pytest.approx(0.3)
    real = schemes.measure_verification(CHEAP, rounds=1)
    assert 0 < real.wall < 5 and 0 <= real.cpu < 5


# -- verify_hash: libsodium for one-lane argon2id, argon2-cffi for the rest ----------

class _NoCffi:
    """A hasher that fails the test if argon2-cffi is asked."""

    def verify(self, hashed, password):
        raise AssertionError("argon2-cffi verified a hash libsodium should have")


def _cheap(parallelism=1):
    return schemes.HashParameters(memory_kib=1024, time_cost=1, parallelism=parallelism)


def test_one_lane_argon2id_is_verified_by_libsodium():
    hashed = schemes.hasher_for(_cheap()).hash("Grüße, Alice")
    assert schemes.verify_hash(hashed, "Grüße, Alice", _NoCffi())
    assert schemes.verify_hash(hashed, "Grüße, Alice".encode(), _NoCffi())
    assert not schemes.verify_hash(hashed, "Grüße, alice", _NoCffi())
    assert not schemes.verify_hash(hashed, "", _NoCffi())


def test_the_default_parameters_go_to_libsodium():
    hashed = schemes.hasher_for(None).hash("pw")
    assert schemes._sodium_can_verify(hashed)
    assert schemes.verify_hash(hashed, "pw", _NoCffi())
    assert not schemes.verify_hash(hashed, "pW", _NoCffi())


def test_several_lanes_and_argon2i_stay_with_argon2_cffi():
    import argon2

    four = schemes.hasher_for(_cheap(4)).hash("pw")
    argon2i = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                    type=argon2.Type.I).hash("pw")
    for hashed in (four, argon2i):
        assert not schemes._sodium_can_verify(hashed)
        with pytest.raises(AssertionError):
            schemes.verify_hash(hashed, "pw", _NoCffi())
        assert schemes.verify_hash(hashed, "pw")
        assert not schemes.verify_hash(hashed, "wrong")


def test_an_unreadable_hash_is_a_failed_verification_on_both_paths():
    good = schemes.hasher_for(_cheap()).hash("pw")
    for hashed in (good[:-5], good.replace("$v=19$", "$v=19$$"), "$argon2id$v=19$m=1,t=1,p=1$x$y",
                   "$argon2id$v=19$m=1024,t=1,p=1$" + "A" * 200, "$argon2id$", "", "plain"):
        assert not schemes.verify_hash(hashed, "pw"), hashed


def test_both_libraries_agree_on_the_same_hash():
    hashed = schemes.hasher_for(_cheap()).hash("s3cret")
    cffi = schemes.hasher_for(_cheap())
    assert cffi.verify(hashed, "s3cret") and schemes.verify_hash(hashed, "s3cret", _NoCffi())
