"""
Certificates and keys as the daemon loads them, and the checks on them: the
host name a client will verify, the validity dates, the chain, the key's
match and file mode.

Loading errors are L{ConfigError}s naming the file, the configuration key
and the reason; check results are L{CertificateProblem}s.  Blocking file
reads: done at start and reload, or in a thread.
"""

import datetime
import ipaddress
import os
import re
import stat
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from securepop.errors import ConfigError

EXPIRY_WARNING_DAYS = 30
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


# -- checks ----------------------------------------------------------------


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
    return certificate.issuer == certificate.subject and signed_by(
        certificate, certificate
    )


def signed_by(certificate, issuer):
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
        if not signed_by(child, parent):
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
    if any(signed_by(last, root) for root in trust_roots):
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
