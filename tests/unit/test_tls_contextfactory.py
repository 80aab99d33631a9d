"""
ServerTLS: loading, SNI, reload, refusals, warnings; TLS facts and channel
binding; and the whole thing under Twisted's TLS in memory (iosim).
"""

import hashlib
import os
import time

import pytest
from OpenSSL import SSL
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.verify import verifyObject

from securepop.errors import ConfigError
from securepop.testing import tls as testing
from securepop.tls import ServerTLS, TLSPolicy, channel_binding, tls_facts

CA = testing.TestCA()


@pytest.fixture
def files(tmp_path):
    """
    Write identities into tmp_path: C{files(name, hostnames, **kw)}.
    """

    def write(name, hostnames=("mail.example.test",), key=None, key_mode=0o600, **kw):
        if key is None:
            cert, privateKey = CA.issue(list(hostnames), **kw)
        else:
            cert, _ = CA.issue(list(hostnames), publicKey=key.public_key(), **kw)
            privateKey = key
        return testing.write_identity(
            str(tmp_path), name, [cert, *CA.chain], privateKey, key_mode
        )

    return write


def nowClock():
    """
    A fake clock set to the real time: certificates are dated from now.
    """
    clock = Clock()
    clock.advance(time.time())
    return clock


def make(files, clock=None, **kw):
    cert, key = files("default")
    kw.setdefault("hostname", "mail.example.test")
    kw.setdefault("trust_roots", [CA.root])
    return ServerTLS(TLSPolicy(), cert, key, clock=clock or nowClock(), **kw)


def leafNames(chain):
    from securepop.tls.checks import subject_alt_names

    return subject_alt_names(chain[0])


def named(events, name):
    return [e for e in events if e.get("securepop_event") == name]


def connect(serverTLS, servername=None, **client):
    return testing.handshake(
        serverTLS.serverConnectionForTLS(None),
        testing.client_context(**client),
        servername=servername,
    )


# -- interfaces ---------------------------------------------------------------


def test_provides_twisted_interfaces(files):
    serverTLS = make(files)
    assert verifyObject(IOpenSSLServerConnectionCreator, serverTLS)
    assert verifyObject(IOpenSSLContextFactory, serverTLS)
    assert isinstance(serverTLS.getContext(), SSL.Context)


def test_serves_leaf_and_chain(files):
    result = connect(make(files))
    assert result.ok, result.error
    chain = result.peer_chain()
    assert chain[0].subject.rfc4514_string() == "CN=mail.example.test"
    assert chain[1] == CA.intermediate


def test_client_verifying_with_ca_accepts(files):
    result = connect(make(files), servername="mail.example.test", ca=CA.root)
    assert result.ok, result.error
    other = testing.TestCA("someone else")
    assert not connect(make(files), ca=other.root).ok


def test_rsa_key_loaded(files):
    cert, key = files("rsa", key=testing.rsa_key())
    serverTLS = ServerTLS(TLSPolicy(), cert, key, clock=Clock())
    result = connect(serverTLS, max_version=SSL.TLS1_2_VERSION)
    assert result.ok, result.error
    assert result.server.get_cipher_name().startswith("ECDHE-RSA-")


def test_combined_file_with_key(files, tmp_path):
    cert, key = files("default")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(open(key, "rb").read() + open(cert, "rb").read())
    os.chmod(combined, 0o600)
    serverTLS = ServerTLS(TLSPolicy(), str(combined), str(combined), clock=Clock())
    assert connect(serverTLS).ok


# -- refusals -------------------------------------------------------------------


def test_key_mismatch_refused(files):
    cert, _ = files("a")
    _, otherKey = files("b")
    with pytest.raises(ConfigError) as e:
        ServerTLS(TLSPolicy(), cert, otherKey, clock=Clock())
    assert e.value.path == otherKey and e.value.key == "tls.key"
    assert "does not match" in e.value.reason


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_refused(files, mode):
    cert, key = files("a", key_mode=mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        ServerTLS(TLSPolicy(), cert, key, clock=Clock())


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_private_mode_accepted(files, mode):
    cert, key = files("a", key_mode=mode)
    ServerTLS(TLSPolicy(), cert, key, clock=Clock())


def test_missing_file_refused(files, tmp_path):
    cert, key = files("a")
    with pytest.raises(ConfigError, match="cannot read") as e:
        ServerTLS(TLSPolicy(), str(tmp_path / "nope.pem"), key, clock=Clock())
    assert e.value.key == "tls.certificate"
    with pytest.raises(ConfigError, match="cannot read"):
        ServerTLS(TLSPolicy(), cert, str(tmp_path / "nope.key"), clock=Clock())


def test_unreadable_file_refused(files, tmp_path):
    """
    A directory where a file should be cannot be read, even by root.
    """
    cert, key = files("a")
    with pytest.raises(ConfigError, match="cannot read") as e:
        ServerTLS(TLSPolicy(), str(tmp_path), key, clock=Clock())
    assert e.value.path == str(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     b"\x00" * 1000],
)
def test_hostile_certificate_file_refused(files, tmp_path, content):
    _, key = files("a")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        ServerTLS(TLSPolicy(), str(bad), key, clock=Clock())
    assert e.value.key == "tls.certificate"


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage",
     b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"],
)
def test_hostile_key_file_refused(files, tmp_path, content):
    cert, _ = files("a")
    bad = tmp_path / "bad.key"
    bad.write_bytes(content)
    os.chmod(bad, 0o600)
    with pytest.raises(ConfigError) as e:
        ServerTLS(TLSPolicy(), cert, str(bad), clock=Clock())
    assert e.value.key == "tls.key"


def test_legacy_profile_logs_insecure(files):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        cert, key = files("a")
        ServerTLS(TLSPolicy("legacy"), cert, key, clock=Clock())
        legacyEvents = named(events, "tls.insecure_profile")
        events.clear()
        ServerTLS(TLSPolicy(), cert, key, clock=Clock())
        defaultEvents = named(events, "tls.insecure_profile")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(legacyEvents) == 1
    assert "insecure" in legacyEvents[0]["securepop_text"]
    assert defaultEvents == []


# -- SNI ------------------------------------------------------------------------


def test_sni_selects_certificate(files):
    other = files("other", ["pop.other.test"])
    wild = files("wild", ["*.wild.test"])
    serverTLS = make(
        files, sni=[("pop.other.test", *other), ("*.wild.test", *wild)]
    )
    cases = {
        None: "DNS:mail.example.test",
        "pop.other.test": "DNS:pop.other.test",
        "POP.Other.Test": "DNS:pop.other.test",
        "a.wild.test": "DNS:*.wild.test",
        "a.b.wild.test": "DNS:mail.example.test",  # wildcard covers one label
        "unknown.test": "DNS:mail.example.test",
    }
    for servername, expected in cases.items():
        result = connect(serverTLS, servername=servername)
        assert result.ok, (servername, result.error)
        assert leafNames(result.peer_chain()) == [expected], servername
        assert testing.chain_for(serverTLS, servername)[0] == result.peer_chain()[0]


def test_sni_entry_with_bad_key_refused(files):
    cert, _ = files("other", ["pop.other.test"])
    _, wrongKey = files("wrong", ["pop.other.test"])
    with pytest.raises(ConfigError, match="does not match"):
        make(files, sni=[("pop.other.test", cert, wrongKey)])


# -- reload -----------------------------------------------------------------------


def _replace(files, name, hostnames):
    """
    Write a new identity and move it over C{name}'s files.
    """
    newCert, newKey = files(name + "-new", hostnames)
    return newCert, newKey


def test_reload_new_connections_get_new_certificate(files, tmp_path):
    serverTLS = make(files)
    before = connect(serverTLS)
    assert leafNames(before.peer_chain()) == ["DNS:mail.example.test"]

    newCert, newKey = files("new", ["new.example.test"])
    os.replace(newKey, tmp_path / "default.key")
    os.replace(newCert, tmp_path / "default.pem")
    # not yet: nobody asked for a reload and the clock did not move
    serverTLS.reload()
    after = connect(serverTLS)
    assert leafNames(after.peer_chain()) == ["DNS:new.example.test"]

    # the session opened before the reload goes on with its certificate
    before.client.send(b"ping")
    before.server.bio_write(before.client.bio_read(65536))
    assert before.server.recv(100) == b"ping"
    assert leafNames([before.server.get_certificate(as_cryptography=True)]) == [
        "DNS:mail.example.test"
    ]


def test_failed_reload_keeps_old_certificate(files, tmp_path):
    serverTLS = make(files)
    _, strangerKey = files("stranger")
    os.replace(strangerKey, tmp_path / "default.key")
    with pytest.raises(ConfigError, match="does not match"):
        serverTLS.reload()
    assert connect(serverTLS).ok
    assert leafNames(serverTLS.certificate_chain) == ["DNS:mail.example.test"]


def test_file_change_noticed_at_most_once_per_second(files, tmp_path):
    clock = Clock()
    clock.advance(1000)
    serverTLS = make(files, clock=clock)
    assert serverTLS.reload_if_changed() is False  # first check: unchanged

    newCert, newKey = files("new", ["new.example.test"])
    os.replace(newKey, tmp_path / "default.key")
    os.replace(newCert, tmp_path / "default.pem")

    clock.advance(0.5)
    assert leafNames(connect(serverTLS).peer_chain()) == ["DNS:mail.example.test"]
    clock.advance(0.5)
    result = connect(serverTLS)  # serverConnectionForTLS checks
    assert leafNames(result.peer_chain()) == ["DNS:new.example.test"]
    clock.advance(5)
    assert serverTLS.reload_if_changed() is False


def test_half_replaced_files_retried_until_complete(files, tmp_path):
    clock = Clock()
    serverTLS = make(files, clock=clock)
    serverTLS.reload_if_changed()
    newCert, newKey = files("new", ["new.example.test"])
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        os.replace(newCert, tmp_path / "default.pem")  # key not yet there
        for _ in range(3):
            clock.advance(1)
            assert serverTLS.reload_if_changed() is False
        failures = named(events, "tls.reload_failed")
        assert len(failures) == 1  # logged once, not every second
        assert "does not match" in failures[0]["securepop_text"]
        assert leafNames(connect(serverTLS).peer_chain()) == ["DNS:mail.example.test"]
        os.replace(newKey, tmp_path / "default.key")
        clock.advance(1)
        assert serverTLS.reload_if_changed() is True
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert leafNames(connect(serverTLS).peer_chain()) == ["DNS:new.example.test"]


# -- warnings ------------------------------------------------------------------------


def codes(serverTLS):
    return sorted(p.code for p in serverTLS.warnings())


def test_no_warnings_for_good_setup(files):
    assert codes(make(files)) == []


def test_warns_when_hostname_not_covered(files):
    serverTLS = make(files, hostname="pop.elsewhere.test")
    problems = serverTLS.warnings()
    assert [p.code for p in problems] == ["hostname"]
    assert "pop.elsewhere.test" in str(problems[0])


def test_hostname_ip_address(files):
    cert, key = files("ip", ["127.0.0.1"])
    serverTLS = ServerTLS(TLSPolicy(), cert, key, hostname="127.0.0.1",
                          clock=nowClock(), trust_roots=[CA.root])
    assert codes(serverTLS) == []
    serverTLS.hostname = "127.0.0.2"
    assert codes(serverTLS) == ["hostname"]


def test_warns_expired_and_expiring(files):
    clock = nowClock()
    cert, key = files("soon", ["mail.example.test"], days=10)
    serverTLS = ServerTLS(TLSPolicy(), cert, key, hostname="mail.example.test",
                          clock=clock, trust_roots=[CA.root])
    assert codes(serverTLS) == ["expires-soon"]
    clock.advance(11 * 86400)
    assert codes(serverTLS) == ["expired"]
    cert, key = files("long", ["mail.example.test"], days=60)
    serverTLS = ServerTLS(TLSPolicy(), cert, key, hostname="mail.example.test",
                          clock=clock, trust_roots=[CA.root])
    assert codes(serverTLS) == []


def test_warns_incomplete_chain(files, tmp_path):
    cert, privateKey = CA.issue(["mail.example.test"])
    certPath, keyPath = testing.write_identity(str(tmp_path), "leafonly", [cert],
                                               privateKey)
    serverTLS = ServerTLS(TLSPolicy(), certPath, keyPath, hostname="mail.example.test",
                          clock=nowClock(), trust_roots=[CA.root])
    assert codes(serverTLS) == ["incomplete-chain"]


def test_warns_for_sni_certificate(files):
    other = files("other", ["pop.other.test"])
    serverTLS = make(files, sni=[("pop.wrong.test", *other)])
    problems = serverTLS.warnings()
    assert [p.code for p in problems] == ["hostname"]
    assert "SNI pop.wrong.test" in str(problems[0])


# -- facts and channel binding -----------------------------------------------------------


def test_tls_facts(files):
    result = connect(make(files), servername="mail.example.test")
    facts = tls_facts(result.server)
    assert facts["protocol"] == "TLSv1.3"
    assert facts["cipher"].startswith("TLS_")
    assert facts["bits"] >= 128
    assert facts["sni"] == "mail.example.test"
    assert facts["group"]


def test_tls_facts_tls12_without_sni(files):
    result = connect(make(files), max_version=SSL.TLS1_2_VERSION)
    facts = tls_facts(result.server)
    assert facts["protocol"] == "TLSv1.2"
    assert facts["sni"] is None
    assert facts["cipher"].startswith("ECDHE-ECDSA-")


def test_tls_facts_none_without_tls():
    from twisted.internet.testing import StringTransport

    assert tls_facts(StringTransport()) is None
    assert tls_facts(object()) is None
    assert channel_binding(StringTransport()) is None


def test_tls_facts_none_before_handshake(files):
    assert tls_facts(make(files).serverConnectionForTLS(None)) is None


def test_channel_binding_tls_server_end_point(files):
    serverTLS = make(files)
    result = connect(serverTLS)
    leaf = serverTLS.certificate_chain[0]
    expected = hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()
    assert channel_binding(result.server) == expected
    # the client computes the same from what it received
    peer = result.client.get_peer_certificate(as_cryptography=True)
    assert hashlib.sha256(peer.public_bytes(Encoding.DER)).digest() == expected
    assert channel_binding(result.server, "tls-unique") is None


def test_channel_binding_tls_exporter(files):
    result = connect(make(files))
    server = channel_binding(result.server, "tls-exporter")
    client = result.client.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
    assert server == client and len(server) == 32
    tls12 = connect(make(files), max_version=SSL.TLS1_2_VERSION)
    assert channel_binding(tls12.server, "tls-exporter") is None


# -- under Twisted: TLSMemoryBIOFactory in memory (iosim) ----------------------------------


class Recorder(Protocol):
    def __init__(self):
        self.data = b""
        self.facts = None

    def dataReceived(self, data):
        self.data += data
        self.facts = tls_facts(self.transport)


class Echo(Recorder):
    def dataReceived(self, data):
        super().dataReceived(data)
        self.transport.write(data.upper())


def twistedPair(serverTLS, clientHostname):
    """
    A TLS server (our ServerTLS) and a verifying Twisted TLS client joined
    in memory.  Twisted aggregates small TLS writes on a clock: a fake one
    here, advanced with every pump.
    """
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    clock = Clock()
    echo, client = Echo(), Recorder()
    serverProto = TLSMemoryBIOFactory(
        serverTLS, False, Factory.forProtocol(lambda: echo), clock=clock
    ).buildProtocol(None)
    clientOptions = optionsForClientTLS(
        clientHostname, trustRoot=Certificate(crypto.X509.from_cryptography(CA.root))
    )
    clientProto = TLSMemoryBIOFactory(
        clientOptions, True, Factory.forProtocol(lambda: client), clock=clock
    ).buildProtocol(None)
    pump = iosim.connect(serverProto, iosim.makeFakeServer(serverProto),
                         clientProto, iosim.makeFakeClient(clientProto),
                         clock=clock)
    return echo, client, pump


def test_implicit_tls_with_twisted(files):
    echo, client, pump = twistedPair(make(files), "mail.example.test")
    client.transport.write(b"hello")
    pump.flush()
    assert echo.data == b"hello"
    assert client.data == b"HELLO"
    assert echo.facts["protocol"] == "TLSv1.3"
    assert echo.facts["sni"] == "mail.example.test"
    assert channel_binding(echo.transport) is not None


def test_twisted_client_refuses_wrong_name(files):
    echo, client, pump = twistedPair(make(files), "other.example.test")
    client.transport.write(b"hello")
    pump.flush()
    assert echo.data == b""
    assert client.data == b""


@pytest.mark.parametrize(
    "servername",
    [b"\xff\xfe.bad", b"a" * 255, b"UPPER.CASE.", b"-.-", b"with space.test"],
)
def test_hostile_sni_names_get_default(files, servername):
    from OpenSSL.SSL import Connection

    other = files("other", ["pop.other.test"])
    serverTLS = make(files, sni=[("pop.other.test", *other)])
    client = Connection(testing.client_context(), None)
    client.set_connect_state()
    client.set_tlsext_host_name(servername)
    result = testing.handshake(serverTLS.serverConnectionForTLS(None), None,
                               client=client)
    assert result.ok, result.error
    assert leafNames(result.peer_chain()) == ["DNS:mail.example.test"]


def test_public_names_exported():
    import securepop.tls as tls

    for name in tls.__all__:
        assert getattr(tls, name) is not None
    assert {"TLSPolicy", "ServerTLS", "tls_facts", "channel_binding",
            "ensure_selfsigned"} <= set(tls.__all__)


def test_reload_emits_event(files):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        make(files).reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(named(events, "tls.reloaded")) == 1
