"""
Tests for L{securepop.audit.engine}: the checks' findings from given facts,
without a network (the checks against real servers are in tests/integration).
"""

import datetime

import pytest

from securepop.audit.engine import Audit, AuditOptions
from securepop.audit.judge import FAIL, INFO, PASS, WARN, Finding
from securepop.audit.pop3client import Response, parseURL
from securepop.audit.tlsprobe import HandshakeFacts

from tests.unit.audit_certificates import makeCertificate, makeKey, writePEM

UTC = datetime.timezone.utc


def options(url="pop3://127.0.0.1:1110", **kw):
    return AuditOptions(target=parseURL(url), **kw)


def test_options_never_show_the_password():
    o = options(user="alice", password=b"s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(o)
    assert o.checkedName == "127.0.0.1"
    assert options(servername="mail.example.com").checkedName == "mail.example.com"


STAMPED = Response("+OK", "ready <1896.697170952@dbc.mtview.ca.us>")
UNSTAMPED = Response("+OK", "securepop ready")


def test_apop_under_implicit_tls_is_listed_under_tls():
    audit = Audit(options("pop3s://127.0.0.1:1995"))
    audit.greeting = STAMPED
    audit.capabilitiesUnderTLS = {"USER": ()}
    f = authFindings(audit)
    assert f["auth.mechanisms"].reason == "under TLS: USER, APOP"


def test_apop_in_a_cleartext_greeting_is_listed_before_tls_only():
    audit = Audit(options())
    audit.greeting = STAMPED
    audit.capabilitiesBefore = {"STLS": ()}
    audit.capabilitiesUnderTLS = {"USER": ()}
    f = authFindings(audit)
    assert f["auth.mechanisms"].reason == "before TLS: APOP; under TLS: USER"


# -- certificate findings with a fixed "now" ---------------------------------------------


def certificateFindings(certificate, now, **kw):
    audit = Audit(options(**kw), now=lambda: now)
    audit.facts = HandshakeFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128, (certificate,))
    audit._certificate()
    return {f.check: f for f in audit.result.findings}, audit


def test_certificate_good(tmp_path):
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    certificate, _ = makeCertificate(notBefore=start, notAfter=start + datetime.timedelta(days=365))
    cafile = writePEM(tmp_path / "ca.pem", certificate)
    f, audit = certificateFindings(certificate, start + datetime.timedelta(days=30), cafile=cafile)
    assert {k: v.status for k, v in f.items()} == {
        "tls.cert.chain": PASS, "tls.cert.name": PASS, "tls.cert.expiry": PASS,
        "tls.cert.key": PASS, "tls.cert.signature": PASS}
    assert audit.certificateTrusted


@pytest.mark.parametrize("offsetDays, status, word", [
    (-5, FAIL, "not valid before"), (400, FAIL, "expired"), (360, WARN, "expires in"),
])
def test_certificate_expiry(offsetDays, status, word):
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    certificate, _ = makeCertificate(notBefore=start, notAfter=start + datetime.timedelta(days=365))
    f, _ = certificateFindings(certificate, start + datetime.timedelta(days=offsetDays))
    assert f["tls.cert.expiry"].status == status
    assert word in f["tls.cert.expiry"].reason


def test_certificate_wrong_name_and_untrusted():
    certificate, _ = makeCertificate(names=("other.example.com",), ips=())
    f, audit = certificateFindings(certificate, datetime.datetime.now(UTC),
                                   servername="mail.example.com")
    assert f["tls.cert.name"].status == FAIL
    assert f["tls.cert.chain"].status == FAIL
    assert not audit.certificateTrusted


def test_weak_key_fails():
    certificate, _ = makeCertificate(makeKey("rsa", 1024))
    f, _ = certificateFindings(certificate, datetime.datetime.now(UTC))
    assert f["tls.cert.key"].status == FAIL and "1024" in f["tls.cert.key"].reason


def test_no_certificate_fails():
    audit = Audit(options())
    audit.facts = HandshakeFacts("TLSv1.3", "x", 128, ())
    audit._certificate()
    assert audit.result.findings == [Finding("tls.cert.chain", FAIL, "server sent no certificate")]


# -- authentication summary and login refusal ----------------------------------------------


def authFindings(audit):
    audit._authentication()
    return {f.check: f for f in audit.result.findings}


def test_authentication_cleartext_usable():
    audit = Audit(options())
    audit.capabilitiesBefore = {"USER": (), "SASL": ("PLAIN", "CRAM-MD5")}
    audit.capabilitiesUnderTLS = {"USER": (), "SASL": ("PLAIN",)}
    audit.cleartextAccepted = ["USER/PASS", "AUTH PLAIN"]
    f = authFindings(audit)
    assert f["auth.cleartext"].status == FAIL
    assert "USER/PASS" in f["auth.cleartext"].reason
    assert "before TLS: USER, PLAIN, CRAM-MD5" in f["auth.mechanisms"].reason
    assert "CRAM-MD5" in f["auth.password-exposing"].reason.split("do not:")[1]


def test_authentication_nothing_in_clear():
    audit = Audit(options())
    audit.capabilitiesBefore = {"STLS": ()}
    audit.capabilitiesUnderTLS = {"SASL": ("SCRAM-SHA-256",)}
    f = authFindings(audit)
    assert f["auth.cleartext"].status == PASS
    assert "none" in f["auth.password-exposing"].reason


@pytest.mark.parametrize("before, under, status, words", [
    (("PLAIN", "XOAUTH2"), ("PLAIN", "XOAUTH2", "OAUTHBEARER"), WARN, "before TLS: XOAUTH2"),
    ((), ("OAUTHBEARER", "XOAUTH2"), PASS, "only under TLS: OAUTHBEARER, XOAUTH2"),
    ((), ("SCRAM-SHA-256",), INFO, "no bearer"),
])
def test_bearer_mechanisms_listed_and_flagged_before_tls(before, under, status, words):
    audit = Audit(options())
    audit.capabilitiesBefore = {"STLS": (), **({"SASL": before} if before else {})}
    audit.capabilitiesUnderTLS = {"SASL": under}
    f = authFindings(audit)
    assert f["auth.bearer"].status == status and words in f["auth.bearer"].reason
    for name in under:
        assert name in f["auth.mechanisms"].reason
    if before:
        assert "XOAUTH2" in f["auth.password-exposing"].reason.split("do not")[0]


def test_login_refused_without_tls():
    audit = Audit(options(user="alice", password=b"pw"))
    audit._login()
    assert audit.result.findings[0].status == INFO
    assert "never sent in clear" in audit.result.findings[0].reason


def test_login_refused_with_unverified_certificate():
    audit = Audit(options(user="alice", password=b"pw"))
    audit.tlsWorks = True
    audit._login()
    assert "not verified" in audit.result.findings[0].reason


def test_no_login_without_user():
    audit = Audit(options())
    audit.tlsWorks = audit.certificateTrusted = True
    audit._login()
    assert audit.result.findings == []


def test_package_exports():
    import securepop.audit as package
    for name in package.__all__:
        assert getattr(package, name) is not None
    assert package.Finding is Finding
