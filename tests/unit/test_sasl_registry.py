"""Mechanism registry: pairings with the source, and what is offered now."""

import pytest
from zope.interface.verify import verifyObject

import securepop.sasl
from securepop.interfaces import (
    CLEARTEXT_SECRET, KERBEROS, NT_HASH, NTLM_DELEGATE, PLAINTEXT, SCRAM_SHA_256,
    ISASLMechanism,
)
from securepop.sasl.registry import (
    MECHANISMS, check_pairings, mechanism_for, mechanisms_for,
)

ALL = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "NTLM",
       "CRAM-MD5"]
FILE_SOURCE = {PLAINTEXT, NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET}
AD_SOURCE = {PLAINTEXT, NTLM_DELEGATE}
LDAP_SOURCE = {PLAINTEXT}


def names(mechanisms):
    return [m.name for m in mechanisms]


def test_every_registered_mechanism_provides_the_interface():
    for name, candidates in MECHANISMS.items():
        for mechanism in candidates:
            assert verifyObject(ISASLMechanism, mechanism)
            assert mechanism.name == name


def test_public_exports():
    for name in securepop.sasl.__all__:
        assert hasattr(securepop.sasl, name), name


def test_all_offered_under_tls_from_the_file_source():
    assert names(mechanisms_for(ALL, FILE_SOURCE, secure=True,
                                allow_cleartext=False)) == ALL


def test_without_tls_password_mechanisms_and_plus_are_hidden():
    offered = names(mechanisms_for(ALL, FILE_SOURCE, secure=False,
                                   allow_cleartext=False))
    assert offered == ["SCRAM-SHA-256", "NTLM", "CRAM-MD5"]


def test_explicit_cleartext_permission_offers_plain_without_tls():
    offered = names(mechanisms_for(ALL, FILE_SOURCE, secure=False,
                                   allow_cleartext=True))
    assert "PLAIN" in offered and "LOGIN" in offered
    assert "SCRAM-SHA-256-PLUS" not in offered


def test_only_what_the_source_serves():
    offered = mechanisms_for(ALL, LDAP_SOURCE, secure=True,
                             allow_cleartext=False)
    assert names(offered) == ["PLAIN", "LOGIN"]


def test_ntlm_variant_follows_the_source():
    assert mechanism_for("NTLM", AD_SOURCE).requires == NTLM_DELEGATE
    assert mechanism_for("NTLM", FILE_SOURCE).requires == NT_HASH
    assert mechanism_for("ntlm", LDAP_SOURCE) is None


def test_order_kept_duplicates_and_non_sasl_dropped():
    offered = mechanisms_for(["CRAM-MD5", "USER", "APOP", "plain", "PLAIN"],
                             FILE_SOURCE, secure=True, allow_cleartext=False)
    assert names(offered) == ["CRAM-MD5", "PLAIN"]


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="OTP"):
        mechanisms_for(["OTP"], FILE_SOURCE, True, False)
    with pytest.raises(ValueError, match="DIGEST-MD5"):
        check_pairings(["DIGEST-MD5"], FILE_SOURCE)


def test_possible_pairings_pass():
    check_pairings(ALL + ["USER", "APOP"], FILE_SOURCE)
    check_pairings(["PLAIN", "LOGIN", "NTLM", "USER"], AD_SOURCE)


@pytest.mark.parametrize("name, source, lacking", [
    ("APOP", AD_SOURCE, CLEARTEXT_SECRET),
    ("CRAM-MD5", AD_SOURCE, CLEARTEXT_SECRET),
    ("SCRAM-SHA-256", LDAP_SOURCE, SCRAM_SHA_256),
    ("NTLM", LDAP_SOURCE, NT_HASH),
    ("USER", {NT_HASH}, PLAINTEXT),
    ("GSSAPI", AD_SOURCE, KERBEROS),        # no keytab configured
])
def test_impossible_pairings_name_the_mechanism_and_the_lack(name, source,
                                                             lacking):
    with pytest.raises(ValueError) as info:
        check_pairings(["PLAIN", name] if name != "USER" else [name], source)
    message = str(info.value)
    assert name in message and lacking in message


def test_gssapi_needs_a_keytab_and_is_offered_with_one():
    """GSSAPI needs KERBEROS (a keytab), not a password: offered with any source then."""
    assert mechanism_for("GSSAPI", AD_SOURCE) is None
    check_pairings(["GSSAPI", "NTLM"], AD_SOURCE | {KERBEROS})
    offered = mechanisms_for(["GSSAPI", "PLAIN"], LDAP_SOURCE | {KERBEROS}, secure=False,
                             allow_cleartext=False)
    assert names(offered) == ["GSSAPI"]     # no password crosses the wire
