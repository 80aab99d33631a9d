"""
Tests for L{securepop.audit.judge}: what each observed fact means, without
a network.
"""

import datetime

import pytest

from securepop.audit import judge
from securepop.audit.judge import (
    FAIL,
    INFO,
    PASS,
    WARN,
    Finding,
    classifyCleartextAnswer,
    describe_exposure,
    exposingMechanisms,
    judge_capa_after_stls,
    judge_cleartext_probe,
    judge_expiry,
    judge_suite_answer,
    judge_version,
    judgeKey,
    judgeSignature,
    mechanismsOf,
)
from securepop.audit.pop3client import Response
from securepop.audit.tlsprobe import HandshakeFacts, HelloAnswer

UTC = datetime.timezone.utc
FACTS = HandshakeFacts("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128, ())


def test_cleartext_probe_accepted_fails_and_hides_the_user():
    status, reason = judge_cleartext_probe("USER/PASS", "USER audit-probe-x", "USER",
                                           Response("+OK", "send PASS"), False)
    assert status == FAIL
    assert "<made-up user>" in reason and "audit-probe-x" not in reason


def test_cleartext_probe_continuation_is_acceptance():
    status, reason = judge_cleartext_probe("AUTH PLAIN", "AUTH PLAIN", "PLAIN",
                                           Response("+", ""), False)
    assert status == FAIL and "AUTH PLAIN" in reason


def test_cleartext_probe_refused():
    refused = Response("-ERR", "[PRIVACY] TLS first")
    assert judge_cleartext_probe("AUTH LOGIN", "AUTH LOGIN", "LOGIN", refused,
                                 False)[0] == PASS
    # refused, but CAPA advertised it before TLS: a warning
    assert judge_cleartext_probe("AUTH LOGIN", "AUTH LOGIN", "LOGIN", refused,
                                 True)[0] == WARN


def test_capa_after_stls():
    assert judge_capa_after_stls(Response("+OK", ""), {"USER": ()})[0] == PASS
    assert judge_capa_after_stls(Response("+OK", ""), {"STLS": ()})[0] == FAIL
    assert judge_capa_after_stls(Response("-ERR", "no"), {})[0] == WARN


def test_versions():
    assert judge_version("1.0", FACTS, "")[0] == FAIL
    assert judge_version("1.1", None, "alert")[0] == PASS
    assert judge_version("1.2", FACTS, "")[0] == PASS
    assert judge_version("1.2", None, "alert")[0] == INFO
    assert judge_version("1.3", None, "alert")[0] == WARN
    assert judge_version("1.3", FACTS, "")[0] == PASS


def test_weak_suites():
    suites = (0x000A,)
    assert judge_suite_answer("3DES", suites, HelloAnswer("hello", suite=0x000A))[0] == FAIL
    assert judge_suite_answer("3DES", suites, HelloAnswer("hello", suite=0xC02F))[0] == WARN
    assert judge_suite_answer("3DES", suites, HelloAnswer("alert"))[0] == PASS
    assert judge_suite_answer("3DES", suites, HelloAnswer("closed"))[0] == PASS
    assert judge_suite_answer("3DES", suites, HelloAnswer("garbage", detail="x"))[0] == WARN


def test_expiry():
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime.datetime(2026, 12, 31, tzinfo=UTC)
    assert judge_expiry(start, end, datetime.datetime(2026, 6, 1, tzinfo=UTC))[0] == PASS
    assert judge_expiry(start, end, datetime.datetime(2026, 12, 25, tzinfo=UTC))[0] == WARN
    assert judge_expiry(start, end, datetime.datetime(2027, 1, 2, tzinfo=UTC))[0] == FAIL
    assert judge_expiry(start, end, datetime.datetime(2025, 12, 1, tzinfo=UTC))[0] == FAIL


def test_describe_exposure():
    text = describe_exposure(["USER", "CRAM-MD5", "X-NEW", "USER"])
    assert text == "send the password itself: USER; do not: CRAM-MD5; unknown: X-NEW"
    assert describe_exposure(["SCRAM-SHA-256"]).startswith("send the password itself: none")


STAMPED = Response("+OK", "ready <1896.697170952@dbc.mtview.ca.us>")
UNSTAMPED = Response("+OK", "securepop ready")


def test_finding_status_is_checked():
    assert Finding("x", PASS, "ok").status == PASS
    with pytest.raises(ValueError):
        Finding("x", "OK", "no such status")


def test_mechanisms_of():
    greeting = Response("+OK", "ready <1896.697170952@dbc.mtview.ca.us>")
    caps = {"USER": (), "SASL": ("PLAIN", "CRAM-MD5")}
    assert mechanismsOf(caps, greeting) == ["USER", "PLAIN", "CRAM-MD5", "APOP"]
    assert mechanismsOf({}, Response("+OK", "ready")) == []
    assert mechanismsOf({"SASL": ()}) == []


def test_apop_timestamp_needs_the_shape():
    assert judge.APOP_TIMESTAMP.search("<1.2@host>")
    assert not judge.APOP_TIMESTAMP.search("ready <no-at-sign>")
    assert not judge.APOP_TIMESTAMP.search("ready")


@pytest.mark.parametrize("greeting, implicitTLS, status", [
    (STAMPED, False, WARN),        # a timestamp in clear: APOP before TLS
    (UNSTAMPED, False, PASS),
    (STAMPED, True, PASS),         # the greeting itself is inside TLS
    (UNSTAMPED, True, PASS),
])
def test_judge_apop_greeting(greeting, implicitTLS, status):
    got, reason = judge.judgeApopGreeting(greeting, implicitTLS)
    assert got == status, reason
    assert ("before TLS" in reason) == (status == WARN)


def test_exposing_mechanisms():
    exposing, safe, unknown = exposingMechanisms(
        ["USER", "PLAIN", "LOGIN", "SCRAM-SHA-256", "NTLM", "X-WEIRD", "XOAUTH2"])
    assert exposing == ["USER", "PLAIN", "LOGIN", "XOAUTH2"]
    assert safe == ["SCRAM-SHA-256", "NTLM"]
    assert unknown == ["X-WEIRD"]


@pytest.mark.parametrize("response, accepted", [
    (Response("+OK", ""), True),
    (Response("+", ""), True),
    (Response("+", "VXNlcm5hbWU6"), True),
    (Response("-ERR", "[AUTH] Plaintext authentication disallowed"), False),
    (Response("-ERR", "not allowed without TLS"), False),
    (Response("?", "garbage"), False),
])
def test_classify_cleartext_answer(response, accepted):
    assert classifyCleartextAnswer(response) is accepted


@pytest.mark.parametrize("kind, bits, status", [
    ("RSA", 4096, PASS), ("RSA", 2048, PASS), ("RSA", 1024, FAIL),
    ("EC secp256r1", 256, PASS), ("EC secp192r1", 192, FAIL),
    ("Ed25519", 256, PASS), ("DSA", 2048, FAIL), ("Mystery", 0, WARN),
])
def test_judge_key(kind, bits, status):
    assert judgeKey(kind, bits)[0] == status


@pytest.mark.parametrize("name, status", [
    ("sha256", PASS), ("sha384", PASS), (None, PASS), ("sha1", FAIL), ("md5", FAIL),
])
def test_judge_signature(name, status):
    assert judgeSignature(name)[0] == status


def test_kerberos_offered_or_ntlm_alone():
    from securepop.audit.judge import judge_kerberos

    assert judge_kerberos([], ["GSSAPI", "NTLM"]) == (PASS, "Kerberos (GSSAPI) offered under TLS")
    assert judge_kerberos(["GSSAPI"], ["GSSAPI"])[1].endswith("before and under TLS")
    status, reason = judge_kerberos(["NTLM"], ["PLAIN", "NTLM"])
    assert status == INFO and "without Kerberos" in reason
    assert judge_kerberos(["USER"], ["PLAIN"])[0] == INFO
