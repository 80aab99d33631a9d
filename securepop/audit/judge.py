"""
The audit's judgement: the statuses, the findings, and what each observed
fact means (PASS, WARN, FAIL or INFO, and the reason), as pure functions
the checks of L{securepop.audit.engine} call with what they saw.
"""

import re
from dataclasses import dataclass, field

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"
STATUSES = (PASS, WARN, FAIL, INFO)

# What each mechanism puts on the wire: True = the password itself (or an
# equivalent bearer secret), protected only by TLS.
PASSWORD_EXPOSING = {
    "USER": True, "PLAIN": True, "LOGIN": True, "XOAUTH2": True,
    "OAUTHBEARER": True,
    "APOP": False, "CRAM-MD5": False, "DIGEST-MD5": False, "NTLM": False,
    "GSSAPI": False, "GSS-SPNEGO": False, "EXTERNAL": False, "ANONYMOUS": False,
    "SCRAM-SHA-1": False, "SCRAM-SHA-1-PLUS": False, "SCRAM-SHA-256": False,
    "SCRAM-SHA-256-PLUS": False, "SCRAM-SHA-512": False,
}

APOP_TIMESTAMP = re.compile(r"<[^<>\s]{1,200}@[^<>\s]{1,200}>")
EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class Finding:
    """
    One line of the report.

    @ivar check: a stable dotted name (e.g. C{"cleartext.user-pass"}).
    @ivar status: one of PASS, WARN, FAIL, INFO.
    @ivar reason: why, in one sentence (never a credential).
    """

    check: str
    status: str
    reason: str

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


@dataclass
class AuditResult:
    """
    @ivar declined: True when the server declined our connection before
        greeting (the rest could not be audited).
    """

    target: object
    findings: list = field(default_factory=list)
    declined: bool = False
    sourceAddress: str = None

    def add(self, check, status, reason):
        self.findings.append(Finding(check, status, reason))

    def status(self, check):
        for finding in self.findings:
            if finding.check == check:
                return finding.status
        return None


def mechanismsOf(capabilities, greeting=None):
    """
    @return: the login methods the capabilities announce, as names in
        L{PASSWORD_EXPOSING} style (C{"USER"} for USER/PASS, C{"APOP"} when the
        greeting carries a timestamp).
    """
    names = []
    if "USER" in capabilities:
        names.append("USER")
    names.extend(m for m in capabilities.get("SASL", ()) if m not in names)
    if greeting is not None and APOP_TIMESTAMP.search(greeting.text):
        names.append("APOP")
    return names


def exposingMechanisms(names):
    """
    @return: (exposing, not exposing, unknown) lists.
    """
    exposing = [n for n in names if PASSWORD_EXPOSING.get(n) is True]
    safe = [n for n in names if PASSWORD_EXPOSING.get(n) is False]
    unknown = [n for n in names if n not in PASSWORD_EXPOSING]
    return exposing, safe, unknown


def judge_kerberos(before, under):
    """
    @param before: login methods announced before TLS.
    @param under: login methods announced under TLS.
    @return: (status, reason) of C{auth.kerberos}: whether the Integrated
        Windows Authentication offered is Kerberos (GSSAPI), or NTLM alone,
        which Windows is phasing out.
    """
    names = list(dict.fromkeys(before + under))
    if "GSSAPI" in names:
        where = "before and under TLS" if "GSSAPI" in before and "GSSAPI" in under else \
            "before TLS" if "GSSAPI" in before else "under TLS"
        return PASS, f"Kerberos (GSSAPI) offered {where}"
    if "NTLM" in names:
        return INFO, ("NTLM offered without Kerberos (GSSAPI): Windows is phasing NTLM "
                      "out; offer GSSAPI with a keytab")
    return INFO, "no Integrated Windows Authentication (GSSAPI, NTLM) offered"


def classifyCleartextAnswer(response):
    """
    Judge the answer to a USER or AUTH probe sent before TLS.

    @return: True when the server accepted it (C{+OK} to USER, a C{+}
        continuation to AUTH), False when it refused.
    """
    return response.ok or response.continuation


def describeCapabilities(capabilities):
    parts = []
    for name, args in capabilities.items():
        parts.append(" ".join((name,) + tuple(args)))
    return ", ".join(parts) if parts else "nothing"


def shorten(text, limit=120):
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def judgeApopGreeting(greeting, implicitTLS):
    """
    @param greeting: the greeting L{Response}.
    @param implicitTLS: whether the greeting came inside TLS (pop3s).
    @return: (status, reason) of C{cleartext.apop}: a WARN only when an APOP
        timestamp is offered in a cleartext greeting, which invites clients
        to send the digest before STLS.
    """
    offered = APOP_TIMESTAMP.search(greeting.text) is not None
    if implicitTLS:
        if offered:
            return PASS, "APOP timestamp offered only inside TLS (implicit TLS)"
        return PASS, "implicit TLS: the greeting carries no APOP timestamp"
    if offered:
        return WARN, ("cleartext greeting carries an APOP timestamp: clients may send the "
                      "APOP digest before TLS, open to offline guessing, and the server "
                      "must store the secret in clear")
    return PASS, "cleartext greeting carries no APOP timestamp"


def judgeKey(kind, bits):
    """
    @return: (status, reason) for a certificate key.
    """
    if kind == "RSA":
        if bits < 2048:
            return FAIL, f"RSA key of {bits} bits (at least 2048 needed)"
        return PASS, f"RSA key of {bits} bits"
    if kind.startswith("EC "):
        if bits < 256:
            return FAIL, f"{kind} key of {bits} bits (at least 256 needed)"
        return PASS, f"{kind} key of {bits} bits"
    if kind in ("Ed25519", "Ed448"):
        return PASS, f"{kind} key"
    if kind == "DSA":
        return FAIL, f"DSA key of {bits} bits (DSA is obsolete)"
    return WARN, f"unrecognised key type {kind}"


def judgeSignature(hashName):
    """
    @param hashName: the certificate signature's hash (None for EdDSA).
    @return: (status, reason).
    """
    if hashName in ("md2", "md4", "md5", "sha1"):
        return FAIL, f"certificate signed with {hashName.upper()} (collisions are practical)"
    return PASS, f"certificate signed with {(hashName or 'EdDSA').upper()}"


def judge_cleartext_probe(label, line, mechanism, answer, advertised):
    """
    Judge the answer to USER, AUTH PLAIN or AUTH LOGIN sent before TLS.

    @param line: the command sent (its second word is shown, not a user name).
    @param advertised: whether CAPA announced the method before TLS.
    @return: (status, reason); FAIL means the method was accepted.
    """
    said = shorten(answer.status + " " + answer.text)
    if classifyCleartextAnswer(answer):
        sent = line.split()[1] if mechanism != "USER" else "<made-up user>"
        return FAIL, (f"{label} accepted before TLS (answered {answer.status} to "
                      f"{line.split()[0]} {sent}): passwords cross the network in clear")
    if advertised:
        return WARN, f"{label} refused before TLS ({said}) but CAPA advertises it before TLS"
    return PASS, f"{label} refused before TLS: {said}"


def judge_capa_after_stls(response, capabilities):
    """
    @return: (status, reason) of C{stls.capa-after}: CAPA under TLS must no
        longer offer STLS (RFC 2595).
    """
    if not response.ok:
        return WARN, f"CAPA refused under TLS: {shorten(response.text)}"
    if "STLS" in capabilities:
        return FAIL, "CAPA under TLS still offers STLS"
    return PASS, "CAPA under TLS no longer offers STLS"


def judge_version(name, facts, refusal):
    """
    @param facts: the handshake's facts when TLS C{name} was accepted, else
        L{None}; @param refusal: why it was not.
    @return: (status, reason) of C{tls.version.<name>}: TLS 1.0 and 1.1
        must be refused (RFC 8996), 1.3 should be accepted.
    """
    if name in ("1.0", "1.1"):
        if facts:
            return FAIL, f"TLS {name} accepted ({facts.cipher}): deprecated by RFC 8996"
        return PASS, f"TLS {name} refused"
    if facts:
        return PASS, f"TLS {name} accepted ({facts.cipher})"
    if name == "1.3":
        return WARN, f"TLS 1.3 not accepted: {shorten(refusal, 80)}"
    return INFO, f"TLS 1.2 not accepted: {shorten(refusal, 80)}"


def judge_suite_answer(label, suites, answer):
    """
    @param answer: the server's answer to a ClientHello offering only C{suites}.
    @return: (status, reason): FAIL when it chose one of them.
    """
    if answer.kind == "hello" and answer.suite in suites:
        return FAIL, f"{label} suite accepted: server chose 0x{answer.suite:04X}"
    if answer.kind == "hello":
        return WARN, f"server chose 0x{answer.suite:04X}, which was not offered"
    if answer.kind in ("alert", "closed"):
        return PASS, f"{label} suites refused"
    return WARN, f"{label} probe inconclusive: {answer.kind} {answer.detail}"


def judge_expiry(not_before, not_after, now):
    """
    @return: (status, reason) of C{tls.cert.expiry}: WARN within
        L{EXPIRY_WARNING_DAYS} of the end.
    """
    if now < not_before:
        return FAIL, f"certificate not valid before {not_before:%Y-%m-%d %H:%M} UTC"
    if now > not_after:
        return FAIL, f"certificate expired on {not_after:%Y-%m-%d %H:%M} UTC"
    if (not_after - now).days < EXPIRY_WARNING_DAYS:
        return WARN, (f"certificate expires in {(not_after - now).days} days "
                      f"({not_after:%Y-%m-%d})")
    return PASS, f"certificate valid until {not_after:%Y-%m-%d}"


def describe_exposure(names):
    """
    @return: which of the login methods C{names} send the password itself.
    """
    exposing, safe, unknown = exposingMechanisms(list(dict.fromkeys(names)))
    text = f"send the password itself: {', '.join(exposing) or 'none'}"
    if safe:
        text += f"; do not: {', '.join(safe)}"
    if unknown:
        text += f"; unknown: {', '.join(unknown)}"
    return text


#: SASL mechanisms that carry an OAuth 2.0 bearer token (RFC 7628, XOAUTH2).
BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def judge_bearer(before, under):
    """
    @param before: login methods announced before TLS.
    @param under: login methods announced under TLS.
    @return: (status, reason) of C{auth.bearer}: a WARN when a bearer token
        mechanism is offered before TLS (a token is a password, valid until
        it expires, for every service that accepts it).
    """
    early = [m for m in BEARER_MECHANISMS if m in before]
    late = [m for m in BEARER_MECHANISMS if m in under]
    if early:
        return WARN, (f"bearer token mechanisms offered before TLS: {', '.join(early)} "
                      "(a token is a password: offer them only under TLS)")
    if late:
        return PASS, f"bearer token mechanisms offered only under TLS: {', '.join(late)}"
    return INFO, "no bearer token mechanism (OAUTHBEARER, XOAUTH2) offered"
