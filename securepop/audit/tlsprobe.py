"""
TLS facts about a server: which protocol versions and which weak cipher
suites it accepts, and what its certificate is.

Protocol versions are probed with pyOpenSSL at C{@SECLEVEL=0} so that the
client can still offer TLS 1.0 and 1.1.  Weak suites (RC4, 3DES, export,
NULL, anonymous, single DES) are probed with a hand-built TLS 1.2
ClientHello that offers exactly one category: whether the server answers
with a ServerHello naming one of them is the whole question, and the answer
must not depend on which suites the local OpenSSL was built with (OpenSSL 3
and later have no RC4, 3DES or export suites to offer).
"""

import datetime
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from securepop.audit.pop3client import isIPAddress

ALL_CIPHERS = b"ALL:COMPLEMENTOFALL:@SECLEVEL=0"

# (report name, OpenSSL constant); SSL 3 is not probed: OpenSSL no longer
# builds it, and a server that still speaks it fails on TLS 1.0 as well.
PROTOCOL_VERSIONS = (
    ("1.0", SSL.TLS1_VERSION),
    ("1.1", SSL.TLS1_1_VERSION),
    ("1.2", SSL.TLS1_2_VERSION),
    ("1.3", SSL.TLS1_3_VERSION),
)

# IANA cipher suite numbers, one category per probe.
WEAK_SUITE_CATEGORIES = {
    "null": ("NULL encryption", (
        0x0001, 0x0002, 0x003B, 0xC001, 0xC006, 0xC00B, 0xC010, 0xC015,
        0x002C, 0x002D, 0x002E, 0x00B0, 0x00B1, 0x00B4, 0x00B5, 0x00B8, 0x00B9,
    )),
    "anonymous": ("anonymous key exchange", (
        0x0017, 0x0018, 0x0019, 0x001A, 0x001B, 0x0034, 0x003A, 0x0046,
        0x006C, 0x006D, 0x0089, 0x009B, 0x00A6, 0x00A7, 0x00BF, 0x00C5,
        0xC015, 0xC016, 0xC017, 0xC018, 0xC019,
    )),
    "export": ("export-grade", (
        0x0003, 0x0006, 0x0008, 0x000B, 0x000E, 0x0011, 0x0014, 0x0017,
        0x0019, 0x0062, 0x0063, 0x0064, 0x0065,
    )),
    "rc4": ("RC4", (
        0x0004, 0x0005, 0x0018, 0x0066, 0xC002, 0xC007, 0xC00C, 0xC011,
        0xC016, 0x008A, 0x008E, 0x0092,
    )),
    "3des": ("3DES (112-bit)", (
        0x000A, 0x000D, 0x0010, 0x0013, 0x0016, 0x001B, 0xC003, 0xC008,
        0xC00D, 0xC012, 0xC017, 0x008B, 0x008F, 0x0093,
    )),
    "low": ("under 128 bits (DES, RC2, 40/56-bit)", (
        0x0009, 0x000C, 0x000F, 0x0012, 0x0015, 0x001A, 0x0006, 0x0008,
        0x000B, 0x000E, 0x0011, 0x0014, 0x0019, 0x0062, 0x0063, 0x0064, 0x0065,
    )),
}


def makeContext(version=None, ciphers=ALL_CIPHERS, cafile=None):
    """
    A client context that offers everything this OpenSSL can still do.

    No verification happens in the handshake: the audit looks at the chain
    afterwards and reports on it, rather than refusing to look.

    @param version: one OpenSSL version constant to pin min and max to, or
        None for TLS 1.0 up to the newest.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_cipher_list(ciphers)
    if version is None:
        context.set_min_proto_version(SSL.TLS1_VERSION)
    else:
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
    context.set_verify(SSL.VERIFY_NONE, None)
    return context


@dataclass(frozen=True)
class HandshakeFacts:
    """
    What one successful handshake showed.

    @ivar chain: the peer's certificates, leaf first
        (L{cryptography.x509.Certificate}).
    """

    version: str
    cipher: str
    bits: int
    chain: tuple


def handshakeFacts(channel):
    """
    @param channel: a L{securepop.audit.pop3client.TLSChannel} after its
        handshake.
    """
    conn = channel.conn
    chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    return HandshakeFacts(
        conn.get_protocol_version_name(),
        conn.get_cipher_name() or "",
        conn.get_cipher_bits() or 0,
        tuple(chain),
    )


# -- raw ClientHello for the weak suites ------------------------------------


def _extension(kind, body):
    return struct.pack("!HH", kind, len(body)) + body


def buildClientHello(suites, servername=None, random=None):
    """
    A TLS 1.2 ClientHello offering exactly C{suites} (IANA numbers).

    It carries what servers need before they will pick a suite: SNI,
    supported groups, point formats, signature algorithms and the
    renegotiation SCSV.
    """
    random = random if random is not None else os.urandom(32)
    suiteBytes = b"".join(struct.pack("!H", s) for s in suites) + b"\x00\xff"
    extensions = b""
    if servername and not isIPAddress(servername):
        name = servername.encode("idna")
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        extensions += _extension(0, struct.pack("!H", len(entry)) + entry)
    groups = struct.pack("!5H", 0x001D, 0x0017, 0x0018, 0x0019, 0x0100)
    extensions += _extension(10, struct.pack("!H", len(groups)) + groups)
    extensions += _extension(11, b"\x01\x00")
    algorithms = struct.pack(
        "!14H", 0x0401, 0x0501, 0x0601, 0x0403, 0x0503, 0x0603, 0x0804,
        0x0805, 0x0806, 0x0201, 0x0203, 0x0202, 0x0402, 0x0101)
    extensions += _extension(13, struct.pack("!H", len(algorithms)) + algorithms)
    body = (
        b"\x03\x03" + random + b"\x00"
        + struct.pack("!H", len(suiteBytes)) + suiteBytes
        + b"\x01\x00"
        + struct.pack("!H", len(extensions)) + extensions
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


@dataclass(frozen=True)
class HelloAnswer:
    """
    How a server answered a raw ClientHello.

    @ivar kind: C{"hello"} (it chose C{suite}), C{"alert"}, C{"closed"},
        C{"timeout"} or C{"garbage"}.
    """

    kind: str
    suite: int = None
    version: int = None
    detail: str = ""


def parseServerAnswer(data):
    """
    Read the first TLS records of a server's answer.

    @return: a L{HelloAnswer}, or None when more bytes are needed.
    """
    handshake = b""
    offset = 0
    while len(data) - offset >= 5:
        kind, major, _minor, length = struct.unpack("!BBBH", data[offset:offset + 5])
        if major != 3 or length > 18432 or kind not in (20, 21, 22, 23):
            return HelloAnswer("garbage", detail=f"not TLS: {data[offset:offset + 16]!r}")
        payload = data[offset + 5:offset + 5 + length]
        complete = len(payload) == length
        if kind == 21:
            if len(payload) < 2:
                return None
            return HelloAnswer("alert", detail=f"alert {payload[1]}")
        if kind != 22:
            return HelloAnswer("garbage", detail=f"record type {kind} before ServerHello")
        handshake += payload
        if handshake and handshake[0] != 2:
            return HelloAnswer("garbage", detail=f"handshake type {handshake[0]} first")
        if len(handshake) >= 39:
            at = 39 + handshake[38]
            if len(handshake) >= at + 2:
                version = struct.unpack("!H", handshake[4:6])[0]
                suite = struct.unpack("!H", handshake[at:at + 2])[0]
                return HelloAnswer("hello", suite, version)
        if not complete:
            return None
        offset += 5 + length
    return None


def offerSuites(sock, suites, servername=None, timeout=10.0):
    """
    Send a raw ClientHello on a connected socket (at the point where TLS
    starts) and read the answer.

    @return: L{HelloAnswer}.
    """
    try:
        sock.sendall(buildClientHello(suites, servername))
    except OSError as e:
        return HelloAnswer("closed", detail=str(e))
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < 65536:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return HelloAnswer("timeout")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(16384)
        except socket.timeout:
            return HelloAnswer("timeout")
        except OSError as e:
            return HelloAnswer("closed", detail=e.strerror or str(e))
        if not chunk:
            return HelloAnswer("closed")
        data += chunk
        answer = parseServerAnswer(data)
        if answer is not None:
            return answer
    return HelloAnswer("garbage", detail="no ServerHello in 64 KiB")


# -- certificates --------------------------------------------------------------


def verifyChain(chain, cafile=None, now=None):
    """
    Check that the chain leads to a trusted root: C{cafile}'s certificates,
    or the system's trust store when no file is given.

    @param chain: leaf first, as L{cryptography.x509.Certificate}.
    @return: (ok, reason)
    """
    if not chain:
        return False, "server sent no certificate"
    store = crypto.X509Store()
    try:
        if cafile:
            store.load_locations(cafile)
        else:
            paths = ssl.get_default_verify_paths()
            if not (paths.cafile or paths.capath):
                return False, "no --cafile and no system trust store found"
            store.load_locations(paths.cafile, paths.capath)
    except (crypto.Error, SSL.Error, OSError) as e:
        return False, f"cannot load CA certificates from {cafile or 'the system'}: {e}"
    if now is not None:
        store.set_time(now)
    leaf = crypto.X509.from_cryptography(chain[0])
    intermediates = [crypto.X509.from_cryptography(c) for c in chain[1:]]
    try:
        crypto.X509StoreContext(store, leaf, intermediates).verify_certificate()
    except crypto.X509StoreContextError as e:
        return False, f"chain not trusted: {e}"
    source = f"CA file {cafile}" if cafile else "the system trust store"
    return True, f"chain of {len(chain)} verified against {source}"


def verifyName(certificate, name):
    """
    Check the certificate's subjectAltName against the host name or IP the
    client uses (RFC 6125, via service_identity).

    @return: (ok, reason)
    """
    try:
        if isIPAddress(name):
            verify_certificate_ip_address(certificate, name)
        else:
            verify_certificate_hostname(certificate, name)
    except VerificationError:
        return False, f"certificate is not valid for {name} (names: {certificateNames(certificate)})"
    except Exception as e:   # noqa: BLE001  malformed certificates
        return False, f"certificate names cannot be checked: {e.__class__.__name__}"
    return True, f"certificate is valid for {name}"


def certificateNames(certificate):
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    names += [str(n) for n in san.value.get_values_for_type(x509.IPAddress)]
    return ", ".join(names[:8]) or "none"


def validityWindow(certificate):
    """@return: (notBefore, notAfter) as aware UTC datetimes."""
    return certificate.not_valid_before_utc, certificate.not_valid_after_utc


def describeKey(certificate):
    """
    @return: (key type name, size in bits) of the certificate's public key.
    """
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return key.__class__.__name__, 0


def signatureHash(certificate):
    """@return: the signature's hash name (e.g. C{"sha256"}), or None."""
    try:
        algorithm = certificate.signature_hash_algorithm
    except Exception:   # noqa: BLE001  unsupported algorithm
        return None
    return algorithm.name if algorithm is not None else None


def utcNow():
    return datetime.datetime.now(datetime.timezone.utc)
