"""
Tests for L{securepop.audit.tlsprobe}: the raw ClientHello, the ServerHello
parser, and the certificate checks (certificates made in memory).
"""

import datetime
import socket
import struct
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from securepop.audit import tlsprobe
from securepop.audit.tlsprobe import (
    WEAK_SUITE_CATEGORIES,
    HelloAnswer,
    buildClientHello,
    describeKey,
    offerSuites,
    parseServerAnswer,
    signatureHash,
    verifyChain,
    verifyName,
)

from tests.unit.audit_certificates import (
    makeCertificate, makeKey, serverContext, writePEM)


def parseClientHello(data):
    """Pull the suites and the SNI name back out of a ClientHello."""
    assert data[0] == 22 and data[1] == 3
    length = struct.unpack("!H", data[3:5])[0]
    body = data[5:5 + length]
    assert body[0] == 1
    at = 4 + 2 + 32
    at += 1 + body[at]
    suitesLength = struct.unpack("!H", body[at:at + 2])[0]
    suites = struct.unpack(f"!{suitesLength // 2}H", body[at + 2:at + 2 + suitesLength])
    at += 2 + suitesLength
    at += 1 + body[at]
    extensionsLength = struct.unpack("!H", body[at:at + 2])[0]
    at += 2
    end = at + extensionsLength
    assert end == len(body)
    extensions = {}
    while at < end:
        kind, size = struct.unpack("!HH", body[at:at + 4])
        extensions[kind] = body[at + 4:at + 4 + size]
        at += 4 + size
    return suites, extensions


def serverHello(suite, sessionId=b"\x01" * 32, version=0x0303, split=None):
    body = struct.pack("!H", version) + b"\x02" * 32 + bytes([len(sessionId)]) + sessionId
    body += struct.pack("!HB", suite, 0)
    handshake = b"\x02" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x03" + struct.pack("!H", len(handshake)) + handshake


# -- ClientHello --------------------------------------------------------------------


def test_client_hello_offers_exactly_the_suites():
    suites, extensions = parseClientHello(buildClientHello((0x0005, 0x000A), "mail.example.com"))
    assert suites == (0x0005, 0x000A, 0x00FF)
    assert b"mail.example.com" in extensions[0]
    assert 10 in extensions and 13 in extensions and 11 in extensions


def test_client_hello_has_no_sni_for_an_ip_address():
    _, extensions = parseClientHello(buildClientHello((0x0005,), "127.0.0.1"))
    assert 0 not in extensions


@pytest.mark.parametrize("category", sorted(WEAK_SUITE_CATEGORIES))
def test_every_category_builds_a_valid_hello(category):
    label, suites = WEAK_SUITE_CATEGORIES[category]
    parsed, _ = parseClientHello(buildClientHello(suites, "h"))
    assert parsed[:-1] == suites and label


def test_categories_hold_no_strong_suite():
    """A modern suite in a 'weak' list would make every server FAIL."""
    strong = {0x002F, 0x0035, 0x009C, 0x009D, 0xC02B, 0xC02F, 0xC030, 0x1301, 0x1302}
    for _, suites in WEAK_SUITE_CATEGORIES.values():
        assert not strong & set(suites)


# -- ServerHello ------------------------------------------------------------------------


def test_parse_server_hello():
    assert parseServerAnswer(serverHello(0x0005)) == HelloAnswer("hello", 0x0005, 0x0303)
    assert parseServerAnswer(serverHello(0xC011, sessionId=b"")).suite == 0xC011


def test_parse_server_hello_needs_more_bytes():
    data = serverHello(0x000A)
    for cut in (0, 3, 5, 20, 40):
        assert parseServerAnswer(data[:cut]) is None
    assert parseServerAnswer(data[:80]).suite == 0x000A


def test_parse_server_hello_across_records():
    """A ServerHello split over two handshake records still parses."""
    record = serverHello(0x0004)
    payload = record[5:]
    first, second = payload[:20], payload[20:]
    data = (b"\x16\x03\x03" + struct.pack("!H", len(first)) + first
            + b"\x16\x03\x03" + struct.pack("!H", len(second)) + second)
    assert parseServerAnswer(data).suite == 0x0004


def test_parse_alert():
    answer = parseServerAnswer(b"\x15\x03\x03\x00\x02\x02\x28")
    assert answer.kind == "alert" and "40" in answer.detail


@pytest.mark.parametrize("data", [
    b"-ERR not TLS\r\n", b"\x17\x03\x03\x00\x01x", b"\x16\x03\x03\x00\x04\x0b\x00\x00\x00",
    b"\x16\x09\x03\x00\x01x", b"\x16\x03\x03\xff\xff",
])
def test_parse_garbage(data):
    assert parseServerAnswer(data).kind == "garbage"


def _helloServer(sock, reply):
    sock.recv(65536)
    if reply:
        sock.sendall(reply)
    sock.close()


@pytest.mark.parametrize("reply, kind", [
    (serverHello(0x0005), "hello"),
    (b"\x15\x03\x03\x00\x02\x02\x28", "alert"),
    (b"", "closed"),
])
def test_offer_suites_reads_the_answer(reply, kind):
    client, server = socket.socketpair()
    thread = threading.Thread(target=_helloServer, args=(server, reply))
    thread.start()
    try:
        assert offerSuites(client, (0x0005,), "h", timeout=5).kind == kind
    finally:
        thread.join(5)
        client.close()


def test_offer_suites_against_real_openssl():
    """
    A pyOpenSSL server that allows AES128-SHA picks it from a raw hello and
    refuses a hello that offers only RC4.
    """
    certificate, key = makeCertificate()
    for suites, expected in (((0x002F,), "hello"), ((0x0005,), "alert")):
        context = serverContext(certificate, key)
        context.set_cipher_list(b"AES128-SHA:@SECLEVEL=0")
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        client, server = socket.socketpair()

        def serve():
            conn = SSL.Connection(context, server)
            conn.set_accept_state()
            try:
                conn.do_handshake()
            except SSL.Error:
                pass
            server.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            answer = offerSuites(client, suites, None, timeout=5)
            assert answer.kind == expected
            if expected == "hello":
                assert answer.suite == 0x002F
        finally:
            client.close()
            thread.join(5)


# -- certificates ---------------------------------------------------------------------------


def test_chain_trusted_with_ca_file(tmp_path):
    certificate, _ = makeCertificate()
    cafile = writePEM(tmp_path / "ca.pem", certificate)
    ok, reason = verifyChain((certificate,), cafile)
    assert ok and "verified" in reason


def test_chain_untrusted_with_other_ca_file(tmp_path):
    certificate, _ = makeCertificate()
    other, _ = makeCertificate()
    ok, reason = verifyChain((certificate,), writePEM(tmp_path / "o.pem", other))
    assert not ok and "not trusted" in reason


def test_chain_with_intermediate(tmp_path):
    rootKey = makeKey()
    root, _ = makeCertificate(rootKey, names=("Test Root",), ips=(), ca=True)
    leaf, _ = makeCertificate(issuer=root, issuerKey=rootKey)
    cafile = writePEM(tmp_path / "root.pem", root)
    assert verifyChain((leaf, root), cafile)[0]
    assert verifyChain((leaf,), cafile)[0]


def test_chain_missing_ca_file(tmp_path):
    certificate, _ = makeCertificate()
    ok, reason = verifyChain((certificate,), str(tmp_path / "missing.pem"))
    assert not ok and "cannot load" in reason


def test_chain_empty():
    assert verifyChain(())[0] is False


def test_self_signed_not_trusted_by_system():
    certificate, _ = makeCertificate()
    assert verifyChain((certificate,))[0] is False


def test_names():
    certificate, _ = makeCertificate(names=("mail.example.com",), ips=("127.0.0.1",))
    assert verifyName(certificate, "mail.example.com")[0]
    assert verifyName(certificate, "127.0.0.1")[0]
    ok, reason = verifyName(certificate, "evil.example.net")
    assert not ok and "mail.example.com" in reason
    assert not verifyName(certificate, "127.0.0.2")[0]


def test_wildcard_and_no_san():
    certificate, _ = makeCertificate(names=("*.example.com",), ips=())
    assert verifyName(certificate, "pop.example.com")[0]
    assert not verifyName(certificate, "a.b.example.com")[0]


@pytest.mark.parametrize("kind, bits, expected", [
    ("rsa", 2048, ("RSA", 2048)),
    ("rsa", 1024, ("RSA", 1024)),
    ("ec", 256, ("EC secp256r1", 256)),
    ("ed25519", 0, ("Ed25519", 256)),
])
def test_describe_key(kind, bits, expected):
    certificate, _ = makeCertificate(makeKey(kind, bits))
    assert describeKey(certificate) == expected


def test_signature_hash():
    certificate, _ = makeCertificate()
    assert signatureHash(certificate) == "sha256"
    other, _ = makeCertificate(hashAlgorithm=hashes.SHA384())
    assert signatureHash(other) == "sha384"
    edwards, _ = makeCertificate(makeKey("ed25519"))
    assert signatureHash(edwards) is None


def test_validity_window():
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    certificate, _ = makeCertificate(notBefore=start, notAfter=start + datetime.timedelta(days=10))
    assert tlsprobe.validityWindow(certificate) == (start, start + datetime.timedelta(days=10))


def test_context_offers_old_versions():
    """The probe context can still speak TLS 1.0 (SECLEVEL=0)."""
    context = tlsprobe.makeContext(SSL.TLS1_VERSION)
    conn = SSL.Connection(context, None)
    assert conn.get_cipher_list()
