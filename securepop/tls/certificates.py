"""
Certificates and keys: load and check them, and the tools behind
C{securepop cert} (request, install, self-signed, check).

Everything here uses the C{cryptography} library and plain files; nothing
runs on the reactor thread except the cheap loads done at start and reload.
"""

import datetime
import fcntl
import ipaddress
import os
import re
import socket
import stat
import tempfile
import warnings
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from securepop.errors import ConfigError

EXPIRY_WARNING_DAYS = 30
SELFSIGNED_DAYS = 365  # Mozilla's profiles reject leaf lifetimes over 366 days
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ec-p256"
SYSTEM_TRUST_FILE = "/etc/ssl/certs/ca-certificates.crt"

_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?"
    rb"-----END \1-----",
    re.DOTALL,
)


@dataclass(frozen=True)
class CertificateProblem:
    """
    One thing wrong with a certificate set-up.

    @ivar code: stable short name for scripts and tests: C{hostname},
        C{expired}, C{not-yet-valid}, C{expires-soon}, C{incomplete-chain},
        C{key-mismatch}.
    @ivar message: the sentence for the administrator.
    """

    code: str
    message: str

    def __str__(self):
        return self.message


# -- loading ---------------------------------------------------------------


def read_file(path, key):
    """
    @param key: the configuration key naming C{path}, for the error.
    @raise ConfigError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(path, key, f"cannot read the file: {e.strerror or e}")


def check_key_file_mode(path, key="tls.key", what="the private key"):
    """
    Refuse a private key (or another secret file) that group or others may
    read or write.

    @param what: the file's name in the message, e.g. C{"the bind password
        file"}.
    @raise ConfigError: with the C{chmod} that fixes it.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ConfigError(path, key, f"cannot read the file: {e.strerror or e}")
    if mode & 0o066:
        raise ConfigError(
            path,
            key,
            f"{what} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
        )


def load_chain(path, key="tls.certificate"):
    """
    @return: list of L{x509.Certificate}, the leaf first, as in the file.
    @raise ConfigError: unreadable, or no certificate in it.
    """
    data = read_file(path, key)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise ConfigError(path, key, "no PEM certificate found in the file")
    return chain


def parse_private_key(data, path, key="tls.key"):
    """
    Find the first PEM private key in C{data} (the file may also hold the
    certificates).

    @raise ConfigError: none, encrypted, or of a type TLS cannot use.
    """
    match = _PEM_KEY.search(data)
    if match is None:
        raise ConfigError(path, key, "no PEM private key found in the file")
    if match.group(1).startswith(b"ENCRYPTED"):
        raise ConfigError(
            path, key, "the private key is encrypted; store it without a passphrase"
        )
    try:
        privateKey = serialization.load_pem_private_key(match.group(0), None)
    except (ValueError, TypeError) as e:
        raise ConfigError(path, key, f"the private key cannot be parsed: {e}")
    if not isinstance(privateKey, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(path, key, "only RSA and ECDSA keys are supported")
    return privateKey


def load_private_key(path, key="tls.key", check_mode=True):
    """
    Load a PEM private key, refusing it when others may read the file.
    """
    if check_mode:
        check_key_file_mode(path, key)
    return parse_private_key(read_file(path, key), path, key)


def public_key_bytes(publicKey):
    return publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(certificate, privateKey):
    """
    @return: True when C{privateKey} belongs to C{certificate}.
    """
    return public_key_bytes(certificate.public_key()) == public_key_bytes(
        privateKey.public_key()
    )


def check_key_matches(certificate, privateKey, certPath, keyPath):
    """
    @raise ConfigError: the key is not the certificate's.
    """
    if not key_matches(certificate, privateKey):
        raise ConfigError(
            keyPath,
            "tls.key",
            f"the private key does not match the certificate in {certPath} "
            f"(subject {certificate.subject.rfc4514_string()})",
        )


# -- inspection ------------------------------------------------------------


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


def subject_alt_names(certificate):
    """
    @return: list of strings, C{"DNS:name"} and C{"IP:address"}.
    """
    try:
        ext = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return []
    names = [f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)]
    names += [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    return names


def covers_hostname(certificate, hostname):
    """
    Check with service_identity, as a client would (SAN only; the CN is
    ignored, as by every current client).
    """
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        verify = verify_certificate_hostname
    else:
        verify = verify_certificate_ip_address
    try:
        verify(certificate, hostname)
    except (VerificationError, CertificateError):
        return False
    return True


def is_self_issued(certificate):
    return certificate.issuer == certificate.subject and _signed_by(
        certificate, certificate
    )


def _signed_by(certificate, issuer):
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_trust_roots(path=SYSTEM_TRUST_FILE):
    """
    @return: the certificates in a CA bundle, or an empty list when the
        bundle cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        with warnings.catch_warnings():
            # some distributed roots have non-positive serial numbers
            warnings.simplefilter("ignore")
            return x509.load_pem_x509_certificates(data)
    except (OSError, ValueError):
        return []


def chain_problems(chain, trust_roots=()):
    """
    Is the chain complete?  Each certificate must be issued by the next; the
    last must be self-signed or issued by one of C{trust_roots}.

    @return: list of L{CertificateProblem}.
    """
    problems = []
    for child, parent in zip(chain, chain[1:]):
        if not _signed_by(child, parent):
            problems.append(
                CertificateProblem(
                    "incomplete-chain",
                    f"chain out of order or broken: "
                    f"{child.subject.rfc4514_string()} is not issued by the "
                    f"next certificate {parent.subject.rfc4514_string()}",
                )
            )
            return problems
    last = chain[-1]
    if is_self_issued(last):
        return problems
    if any(_signed_by(last, root) for root in trust_roots):
        return problems
    problems.append(
        CertificateProblem(
            "incomplete-chain",
            f"incomplete chain: the issuer {last.issuer.rfc4514_string()} of "
            f"{last.subject.rfc4514_string()} is neither in the file nor a "
            f"trusted root; append the intermediate certificates (--chain), "
            f"or name a private root CA (--ca-file)",
        )
    )
    return problems


def validity_problems(certificate, now, warn_days=EXPIRY_WARNING_DAYS):
    """
    @param now: aware L{datetime.datetime} (from the injected clock).
    """
    notBefore = certificate.not_valid_before_utc
    notAfter = certificate.not_valid_after_utc
    subject = certificate.subject.rfc4514_string()
    if now > notAfter:
        return [
            CertificateProblem(
                "expired", f"certificate {subject} expired on {notAfter:%Y-%m-%d}"
            )
        ]
    if now < notBefore:
        return [
            CertificateProblem(
                "not-yet-valid",
                f"certificate {subject} is not valid before {notBefore:%Y-%m-%d %H:%M}",
            )
        ]
    left = notAfter - now
    if left < datetime.timedelta(days=warn_days):
        return [
            CertificateProblem(
                "expires-soon",
                f"certificate {subject} expires in {left.days} days "
                f"({notAfter:%Y-%m-%d})",
            )
        ]
    return []


def certificate_problems(
    chain, hostname=None, now=None, trust_roots=(), privateKey=None
):
    """
    Every problem with a certificate chain (leaf first).

    @param hostname: the name clients connect to (C{server.hostname}); no
        check when L{None} or empty.
    @param now: aware datetime; the current time when L{None}.
    @param trust_roots: certificates accepted as chain ends.
    @param privateKey: also check that it matches the leaf.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    leaf = chain[0]
    problems = []
    if privateKey is not None and not key_matches(leaf, privateKey):
        problems.append(
            CertificateProblem(
                "key-mismatch", "the private key does not match the certificate"
            )
        )
    if hostname and not covers_hostname(leaf, hostname):
        names = ", ".join(subject_alt_names(leaf)) or "no subjectAltName"
        problems.append(
            CertificateProblem(
                "hostname",
                f"certificate does not cover the host name {hostname!r} "
                f"(it has {names}); clients will warn that the certificate "
                f"does not match",
            )
        )
    for cert in chain:
        problems.extend(validity_problems(cert, now))
    problems.extend(chain_problems(chain, trust_roots))
    return problems


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


# -- writing ---------------------------------------------------------------


def generate_private_key(key_type=DEFAULT_KEY_TYPE):
    """
    @param key_type: one of L{KEY_TYPES}.
    """
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}")


def _write_atomically(path, data, mode):
    """
    Write to a temporary file created with C{mode} in the same directory,
    then rename: the key is never readable by others, not even for a moment,
    and a running server never sees half a file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def private_key_pem(privateKey):
    return privateKey.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path, privateKey):
    """
    Write a PEM (PKCS#8, unencrypted) key with mode 0600.
    """
    _write_atomically(path, private_key_pem(privateKey), 0o600)


def write_certificates(path, chain):
    """
    Write certificates (leaf first) as PEM, mode 0644.
    """
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    _write_atomically(path, data, 0o644)


def _general_names(names):
    out = []
    for name in names:
        if name.startswith("IP:"):
            out.append(x509.IPAddress(ipaddress.ip_address(name[3:])))
            continue
        if name.startswith("DNS:"):
            name = name[4:]
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name.lower().rstrip(".")))
    return _unique(out)


def _name_strings(names):
    """C{names} in the form L{subject_alt_names} gives: C{DNS:x}, C{IP:a}."""
    return [f"DNS:{g.value}" if isinstance(g, x509.DNSName) else f"IP:{g.value}"
            for g in _general_names(names)]


def _unique(items):
    seen, out = set(), []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


_NAME_OIDS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}


def build_name(common_name, **attributes):
    """
    @param attributes: C{C}, C{ST}, C{L}, C{O}, C{OU} (empty ones skipped).
    """
    parts = []
    for short in ("C", "ST", "L", "O", "OU"):
        value = attributes.get(short)
        if value:
            if short == "C" and (len(value) != 2 or not value.isalpha()):
                raise ValueError("the country (C) must be a two-letter code")
            parts.append(x509.NameAttribute(_NAME_OIDS[short], value))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


def build_csr(privateKey, common_name, sans=(), **attributes):
    """
    A certificate signing request for an external or enterprise CA.

    The common name is always among the subjectAltNames: clients check only
    those.
    """
    names = _general_names(_unique([common_name, *sans]))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(build_name(common_name, **attributes))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    return builder.sign(privateKey, hashes.SHA256())


def make_selfsigned(privateKey, hostname, sans=(), days=SELFSIGNED_DAYS, now=None,
                    subject=None):
    """
    A self-signed server certificate for C{hostname} (and C{sans}).

    @param subject: the subject (and issuer) L{x509.Name}; C{CN=hostname}
        when L{None}.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    name = subject if subject is not None else build_name(hostname)
    names = _general_names(_unique([hostname, *sans]))
    publicKey = privateKey.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False
        )
    )
    if isinstance(privateKey, ec.EllipticCurvePrivateKey):
        usage = dict(digital_signature=True, key_encipherment=False)
    else:
        usage = dict(digital_signature=True, key_encipherment=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
            **usage,
        ),
        critical=True,
    )
    return builder.sign(privateKey, hashes.SHA256())


def default_paths(data_dir):
    """
    @return: C{(certificate, key)} used when C{tls.certificate} and
        C{tls.key} are empty.
    """
    base = os.path.join(data_dir, "tls")
    return os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")


def pending_paths(data_dir):
    """
    @return: C{(key, csr)} written by C{cert request} and read by
        C{cert install}.
    """
    base = os.path.join(data_dir, "tls")
    return os.path.join(base, "pending-key.pem"), os.path.join(base, "request.csr")


# The subject the embedded default's certificate carries: it marks the
# certificate as securepop's own, which it may re-make; a certificate an
# administrator made or installed never carries it and is never touched.
DEFAULT_CERT_ORGANIZATION = "securepop"
DEFAULT_CERT_UNIT = "embedded default self-signed certificate"

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _usable_dns_name(name):
    """A name a certificate may carry as a DNS subjectAltName (ASCII, LDH labels)."""
    name = name.lower().rstrip(".")
    if not name or len(name) > 253:
        return None
    if not all(_DNS_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def local_names(hostname=None, gethostname=socket.gethostname, getfqdn=socket.getfqdn):
    """
    Every name a client on this machine may use to reach it.

    C{server.hostname}, C{gethostname()}, C{getfqdn()}, C{localhost},
    C{127.0.0.1} and C{::1}: on a host whose /etc/hosts maps 127.0.0.1 to
    C{localhost} first, C{getfqdn()} is C{localhost} while C{hostname -f}
    and clients use the short name, so no single one of them is enough.
    Names a certificate cannot carry (empty, non-ASCII, bad labels) are left
    out.

    @return: list of C{"DNS:name"} and C{"IP:address"}, without duplicates,
        C{hostname} first.
    """
    out = []
    for source in (lambda: hostname, gethostname, getfqdn, lambda: "localhost"):
        try:
            name = source()
        except OSError:
            continue
        if not name:
            continue
        try:
            out.append(f"IP:{ipaddress.ip_address(name)}")
            continue
        except ValueError:
            pass
        name = _usable_dns_name(name)
        if name:
            out.append(f"DNS:{name}")
    out += ["IP:127.0.0.1", "IP:::1"]
    return _unique(out)


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
    name = _usable_dns_name(hostname)
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
    names = _name_strings(local_names(hostname) if names is None else names)
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


def assemble_chain(cert_file, chain_file=None):
    """
    Read the CA's answer (leaf, maybe with intermediates) and an optional
    chain file; put the certificate matching nobody's issuer first, drop
    duplicates, and order the rest issuer after subject.

    @return: list of certificates, leaf first.
    """
    certs = load_chain(cert_file, "CERTFILE")
    if chain_file:
        certs += load_chain(chain_file, "--chain")
    unique = []
    for c in certs:
        if c not in unique:
            unique.append(c)
    leaf, rest = unique[0], unique[1:]
    ordered = [leaf]
    while rest:
        parent = next((c for c in rest if _signed_by(ordered[-1], c)), None)
        if parent is None or is_self_issued(ordered[-1]):
            break
        ordered.append(parent)
        rest.remove(parent)
    # certificates that are not part of the path are dropped: a server sends
    # only what a client needs.
    return ordered


def install(
    cert_file,
    chain_file,
    pending_key_path,
    hostname,
    cert_dest,
    key_dest,
    trust_roots=None,
    now=None,
):
    """
    Install a CA-signed certificate for the pending key.

    Checks that the certificate is for the pending key and covers
    C{hostname}; writes the assembled chain to C{cert_dest} and the key to
    C{key_dest} (0600, key first, so a server that reloads on file changes
    never pairs a new certificate with an old key for long).

    @return: list of remaining (non-fatal) L{CertificateProblem}s, e.g. an
        incomplete chain or near expiry.
    @raise ConfigError: wrong key, wrong name, expired, unreadable.
    """
    chain = assemble_chain(cert_file, chain_file)
    privateKey = load_private_key(pending_key_path, "pending key")
    leaf = chain[0]
    if not key_matches(leaf, privateKey):
        raise ConfigError(
            cert_file,
            "CERTFILE",
            f"the certificate ({leaf.subject.rfc4514_string()}) is not for the "
            f"pending key {pending_key_path}; was it issued for another request?",
        )
    if hostname and not covers_hostname(leaf, hostname):
        names = ", ".join(subject_alt_names(leaf)) or "no subjectAltName"
        raise ConfigError(
            cert_file,
            "CERTFILE",
            f"the certificate does not cover the host name {hostname!r} "
            f"(it has {names})",
        )
    if trust_roots is None:
        trust_roots = load_trust_roots()
    problems = certificate_problems(chain, None, now, trust_roots)
    fatal = [p for p in problems if p.code in ("expired", "not-yet-valid")]
    if fatal:
        raise ConfigError(cert_file, "CERTFILE", fatal[0].message)
    write_private_key(key_dest, privateKey)
    write_certificates(cert_dest, chain)
    if os.path.abspath(pending_key_path) != os.path.abspath(key_dest):
        os.unlink(pending_key_path)
    return problems
