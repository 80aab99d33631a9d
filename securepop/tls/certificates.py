"""
The daemon's certificates: where they live, the self-signed one the embedded
default makes (or brings up to date) at start, and the report of
C{securepop cert show|check} and C{securepop check-config}.

Loading and checking are in L{securepop.tls.checks}, making keys and
certificates in L{securepop.tls.selfsigned}, requesting and installing a
CA's certificate in L{securepop.tls.issue}.
"""

import datetime
import fcntl
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from securepop.errors import ConfigError
from securepop.tls.checks import (
    CertificateProblem,
    certificate_problems,
    check_key_file_mode,
    is_self_issued,
    key_matches,
    load_chain,
    load_private_key,
    load_trust_roots,
    parse_private_key,
    read_file,
    subject_alt_names,
)
from securepop.tls.selfsigned import (
    DEFAULT_KEY_TYPE,
    SELFSIGNED_DAYS,
    build_name,
    generate_private_key,
    local_names,
    make_selfsigned,
    name_strings,
    usable_dns_name,
    write_certificates,
    write_private_key,
)


def default_paths(data_dir):
    """
    @return: C{(certificate, key)} used when C{tls.certificate} and
        C{tls.key} are empty.
    """
    base = os.path.join(data_dir, "tls")
    return os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")


def describe_key(publicKey):
    """
    @return: e.g. C{"RSA 3072"} or C{"EC secp384r1"}.
    """
    if isinstance(publicKey, rsa.RSAPublicKey):
        return f"RSA {publicKey.key_size}"
    if isinstance(publicKey, ec.EllipticCurvePublicKey):
        return f"EC {publicKey.curve.name}"
    if isinstance(publicKey, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(publicKey, ed448.Ed448PublicKey):
        return "Ed448"
    return type(publicKey).__name__


@dataclass
class CertificateReport:
    """
    What C{securepop cert show|check} prints.
    """

    path: str
    subject: str
    sans: list
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    key: str
    signature: str
    chain_subjects: list
    problems: list = field(default_factory=list)

    def lines(self):
        out = [
            f"file:        {self.path}",
            f"subject:     {self.subject}",
            f"names:       {', '.join(self.sans) or '(no subjectAltName)'}",
            f"issuer:      {self.issuer}",
            f"valid from:  {self.not_before:%Y-%m-%d %H:%M:%S} UTC",
            f"valid until: {self.not_after:%Y-%m-%d %H:%M:%S} UTC",
            f"key:         {self.key}",
            f"signature:   {self.signature}",
        ]
        for i, subject in enumerate(self.chain_subjects, 1):
            out.append(f"chain[{i}]:    {subject}")
        if self.problems:
            out += [f"PROBLEM: {p.message}" for p in self.problems]
        else:
            out.append("no problems found")
        return out


def inspect(path, hostname=None, key_path=None, now=None, trust_roots=None):
    """
    Load a certificate file and report on it.

    @raise ConfigError: the file (or the key file) cannot be read.
    """
    chain = load_chain(path)
    if trust_roots is None:
        trust_roots = load_trust_roots()
    privateKey = None
    if key_path:
        privateKey = parse_private_key(read_file(key_path, "tls.key"), key_path)
    leaf = chain[0]
    problems = certificate_problems(chain, hostname, now, trust_roots, privateKey)
    if key_path:
        try:
            check_key_file_mode(key_path)
        except ConfigError as e:
            problems.append(CertificateProblem("key-mode", e.reason))
    sigAlg = getattr(leaf.signature_algorithm_oid, "_name", None) or str(
        leaf.signature_algorithm_oid.dotted_string
    )
    return CertificateReport(
        path=str(path),
        subject=leaf.subject.rfc4514_string(),
        sans=subject_alt_names(leaf),
        issuer=leaf.issuer.rfc4514_string(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        key=describe_key(leaf.public_key()),
        signature=sigAlg,
        chain_subjects=[c.subject.rfc4514_string() for c in chain[1:]],
        problems=problems,
    )


# The subject the embedded default's certificate carries: it marks the
# certificate as securepop's own, which it may re-make; a certificate an
# administrator made or installed never carries it and is never touched.
DEFAULT_CERT_ORGANIZATION = "securepop"
DEFAULT_CERT_UNIT = "embedded default self-signed certificate"


def _is_default_certificate(certificate, hostname):
    """
    Did securepop's embedded default make this certificate?

    Those made now carry L{DEFAULT_CERT_UNIT} in their subject.  Those made
    before carry no mark, but a fixed shape: self-issued, the subject only
    C{CN=hostname}, one DNS name equal to it, ECDSA P-256, valid 365 days
    and 5 minutes.
    """
    if not is_self_issued(certificate):
        return False
    units = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if any(a.value == DEFAULT_CERT_UNIT for a in units):
        return True
    if not hostname:
        return False
    name = usable_dns_name(hostname)
    attributes = list(certificate.subject)
    publicKey = certificate.public_key()
    return (
        len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value == hostname
        and subject_alt_names(certificate) == [f"DNS:{name}"]
        and isinstance(publicKey, ec.EllipticCurvePublicKey)
        and publicKey.curve.name == "secp256r1"
        and certificate.not_valid_after_utc - certificate.not_valid_before_utc
        == datetime.timedelta(days=SELFSIGNED_DAYS, minutes=5)
    )


def _missing_names(certificate, names):
    have = set(subject_alt_names(certificate))
    return [n for n in names if n not in have]


@dataclass(frozen=True)
class DefaultCertificate:
    """
    What L{ensure_default_certificate} found or did.

    @ivar action: C{made} (no certificate was there), C{remade} (securepop's
        own lacked a name of this machine; the key was kept), C{kept}
        (it covers every name, or it is not securepop's own).
    @ivar names: the certificate's subjectAltNames (C{DNS:...}, C{IP:...}).
    @ivar missing: names of this machine it does not cover (when kept
        because it is not securepop's own, or could not be re-made).
    @ivar problem: why a re-make failed, or C{""}.
    """

    certificate: str
    key: str
    action: str
    names: tuple
    missing: tuple = ()
    problem: str = ""


def ensure_default_certificate(data_dir, hostname, key_type=DEFAULT_KEY_TYPE, names=None):
    """
    Make, or bring up to date, the self-signed certificate of the embedded
    default.

    Creates C{data_dir/tls/key.pem} (mode 0600, ECDSA P-256) and
    C{data_dir/tls/cert.pem} (365 days) when either is missing.  The
    certificate names this machine every way a local client may
    (L{local_names}).  A certificate securepop made itself that lacks one of
    those names (made by an older version, or before the host was renamed)
    is re-made for the same key; any other certificate in that place (from
    C{cert selfsigned}, C{cert install} or an administrator) is left alone.
    Blocking: call it before the reactor runs or in a thread.

    @param names: the names to cover; L{local_names}C{(hostname)} when
        L{None}.
    @rtype: L{DefaultCertificate}
    """
    names = name_strings(local_names(hostname) if names is None else names)
    certPath, keyPath = default_paths(data_dir)
    current = _current_default(certPath, keyPath, hostname, names)
    if current is not None:
        return current
    os.makedirs(os.path.dirname(certPath), mode=0o700, exist_ok=True)
    # Several processes may start at once (workers): one creates, the others
    # wait and find both files.  Unserialised, two creators could leave one's
    # key next to the other's certificate, which no start could use again.
    lockFd = os.open(os.path.join(os.path.dirname(certPath), ".selfsigned.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lockFd, fcntl.LOCK_EX)
        current = _current_default(certPath, keyPath, hostname, names)
        if current is not None:
            return current
        cn = hostname or next(n[4:] for n in names if n.startswith("DNS:"))
        if os.path.exists(certPath) and os.path.exists(keyPath):
            # securepop's own certificate, lacking a name: same key, new names.
            try:
                privateKey = load_private_key(keyPath)
                if not key_matches(load_chain(certPath)[0], privateKey):
                    raise ConfigError(keyPath, "tls.key",
                                      "the key does not match the certificate")
                write_certificates(certPath, [_make_default(privateKey, cn, names)])
            except (ConfigError, OSError, ValueError) as e:
                leaf = load_chain(certPath)[0]
                return DefaultCertificate(
                    certPath, keyPath, "kept", tuple(subject_alt_names(leaf)),
                    tuple(_missing_names(leaf, names)), f"cannot re-make it: {e}")
            action = "remade"
        else:
            privateKey = generate_private_key(key_type)
            write_private_key(keyPath, privateKey)
            write_certificates(certPath, [_make_default(privateKey, cn, names)])
            action = "made"
    finally:
        os.close(lockFd)  # drops the flock
    return DefaultCertificate(certPath, keyPath, action,
                              tuple(subject_alt_names(load_chain(certPath)[0])))


def _make_default(privateKey, hostname, names):
    """The default's certificate: its subject carries securepop's mark."""
    subject = build_name(hostname, O=DEFAULT_CERT_ORGANIZATION, OU=DEFAULT_CERT_UNIT)
    return make_selfsigned(privateKey, hostname, names, subject=subject)


def _current_default(certPath, keyPath, hostname, names):
    """
    The L{DefaultCertificate} to use as it is, or L{None} when it must be
    made or re-made.
    """
    if not (os.path.exists(certPath) and os.path.exists(keyPath)):
        return None
    try:
        leaf = load_chain(certPath)[0]
    except ConfigError:
        # Not securepop's to replace: loading it at start names the problem.
        return DefaultCertificate(certPath, keyPath, "kept", ())
    missing = _missing_names(leaf, names)
    if missing and _is_default_certificate(leaf, hostname):
        return None
    return DefaultCertificate(certPath, keyPath, "kept", tuple(subject_alt_names(leaf)),
                              tuple(missing))


def ensure_selfsigned(data_dir, hostname, key_type=DEFAULT_KEY_TYPE, names=None):
    """
    L{ensure_default_certificate}, returning only the paths.

    @return: C{(certificate_path, key_path)}.
    """
    result = ensure_default_certificate(data_dir, hostname, key_type, names)
    return result.certificate, result.key
