"""
Making keys and self-signed certificates, and writing them as PEM files:
the daemon's default certificate and C{securepop cert selfsigned}.

Files are written atomically with their final mode (L{securepop.fileio.atomic_write}): a
key is never readable by others, and a server that reloads never reads
half a file.  Blocking (key generation, writes): at start or in a thread.
"""

import datetime
import ipaddress
import re
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securepop.fileio import atomic_write

SELFSIGNED_DAYS = 365  # Mozilla's profiles reject leaf lifetimes over 366 days
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ec-p256"


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
    atomic_write(path, private_key_pem(privateKey), 0o600)


def write_certificates(path, chain):
    """
    Write certificates (leaf first) as PEM, mode 0644.
    """
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    atomic_write(path, data, 0o644)


def general_names(names):
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
    return unique(out)


def name_strings(names):
    """C{names} in the form L{securepop.tls.checks.subject_alt_names} gives: C{DNS:x}, C{IP:a}."""
    return [f"DNS:{g.value}" if isinstance(g, x509.DNSName) else f"IP:{g.value}"
            for g in general_names(names)]


def unique(items):
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
    names = general_names(unique([hostname, *sans]))
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


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def usable_dns_name(name):
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
        name = usable_dns_name(name)
        if name:
            out.append(f"DNS:{name}")
    out += ["IP:127.0.0.1", "IP:::1"]
    return unique(out)
