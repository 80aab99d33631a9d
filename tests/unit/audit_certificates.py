"""
Throwaway certificates made in memory for the audit's unit tests.
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


def makeKey(kind="rsa", bits=2048):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1() if bits == 256 else ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def makeCertificate(key=None, names=("localhost",), ips=("127.0.0.1",),
                    notBefore=None, notAfter=None, issuer=None, issuerKey=None,
                    ca=False, hashAlgorithm=None):
    """
    @return: (certificate, key); self-signed unless C{issuer}/C{issuerKey}.
    """
    key = key or makeKey()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    notBefore = notBefore or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    notAfter = notAfter or notBefore + datetime.timedelta(days=90)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    signer = issuerKey or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else (hashAlgorithm or hashes.SHA256())
    return builder.sign(signer, algorithm), key


def writePEM(path, certificate):
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(path)


def serverContext(certificate, key):
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(certificate)
    context.use_privatekey(key)
    return context
