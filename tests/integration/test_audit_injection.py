"""
The audit against tiny POP3 servers written here on purpose:

- one that answers commands pipelined after STLS inside TLS (the STARTTLS
  command-injection bug Twisted's own POP3 has), and its correct twin;
- one that declines some client addresses (with C{-ERR}, or by closing).

The servers speak just enough POP3 for the audit and use Python's ssl module
on loopback with a throwaway self-signed certificate.
"""

import os
import socket
import socketserver
import ssl
import threading

import pytest

try:
    from tests.integration.fixtures_dovecot import OPENSSL, makeSelfSignedCertificate
except ImportError:
    from fixtures_dovecot import OPENSSL, makeSelfSignedCertificate

from securepop.audit import FAIL, INFO, PASS, Audit, AuditOptions, parseURL
from securepop.audit.report import EXIT_DECLINED, EXIT_FAIL, exitStatus, verdict


class TinyPOP3Handler(socketserver.BaseRequestHandler):
    """
    Greeting, CAPA, STLS, USER/AUTH refused before TLS, QUIT.

    The server's options live on C{self.server}: C{answerPipelinedAfterSTLS}
    (the bug), C{declined} (addresses refused before greeting) and
    C{declineByClosing}.
    """

    def handle(self):
        srv = self.server
        sock = self.request
        sock.settimeout(5)
        peer = self.client_address[0]
        srv.peers.append(peer)
        if peer in srv.declined:
            if not srv.declineByClosing:
                sock.sendall(b"-ERR [SYS/PERM] access from your address is denied\r\n")
            return
        self.sock = sock
        self.buffer = b""
        self.secure = False
        self.send(b"+OK tiny POP3 ready")
        try:
            self.loop()
        except (OSError, ssl.SSLError, ValueError):
            pass

    def send(self, line):
        self.sock.sendall(line + b"\r\n")

    def readLine(self):
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 4096:
                raise ValueError("line too long")
            data = self.sock.recv(4096)
            if not data:
                raise ValueError("closed")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def loop(self):
        srv = self.server
        while True:
            words = self.readLine().split()
            verb = words[0].upper() if words else b""
            if verb == b"CAPA":
                self.send(b"+OK capabilities follow")
                if not self.secure:
                    self.send(b"STLS")
                else:
                    self.send(b"USER")
                self.send(b"SASL SCRAM-SHA-256")
                self.send(b".")
            elif verb == b"STLS" and not self.secure:
                self.send(b"+OK begin TLS")
                pipelined = self.buffer
                if not srv.answerPipelinedAfterSTLS:
                    pipelined = b""
                self.buffer = b""
                self.sock = srv.tlsContext.wrap_socket(self.sock, server_side=True)
                self.secure = True
                self.buffer = pipelined   # the bug: keep what came in clear
            elif verb in (b"USER", b"AUTH") and not self.secure:
                self.send(b"-ERR [AUTH] not allowed without TLS")
            elif verb == b"QUIT":
                self.send(b"+OK bye")
                return
            else:
                self.send(b"-ERR unknown command")


class TinyPOP3Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host, tlsContext, answerPipelinedAfterSTLS=False,
                 declined=(), declineByClosing=False):
        self.tlsContext = tlsContext
        self.answerPipelinedAfterSTLS = answerPipelinedAfterSTLS
        self.declined = set(declined)
        self.declineByClosing = declineByClosing
        self.peers = []
        super().__init__((host, 0), TinyPOP3Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"pop3://{self.server_address[0]}:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    if not os.access(OPENSSL, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("openssl must be installed in CI")
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tinypop3")
    return makeSelfSignedCertificate(str(directory), "localhost", "127.0.0.1")


@pytest.fixture(scope="session")
def tlsContext(certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture(scope="session")
def brokenServer(tlsContext):
    server = TinyPOP3Server("127.0.0.1", tlsContext, answerPipelinedAfterSTLS=True)
    yield server
    server.close()


@pytest.fixture(scope="session")
def correctServer(tlsContext):
    server = TinyPOP3Server("127.0.0.1", tlsContext, answerPipelinedAfterSTLS=False)
    yield server
    server.close()


@pytest.fixture(scope="session")
def decliningServer(tlsContext):
    server = TinyPOP3Server("127.0.0.1", tlsContext, declined={"127.0.0.9"})
    yield server
    server.close()


@pytest.fixture(scope="session")
def closingServer(tlsContext):
    server = TinyPOP3Server("127.0.0.1", tlsContext, declined={"127.0.0.9"},
                            declineByClosing=True)
    yield server
    server.close()


def audit(url, **kw):
    kw.setdefault("timeout", 5.0)
    kw.setdefault("injectionWait", 1.0)
    return Audit(AuditOptions(target=parseURL(url), **kw)).run()


def findings(result):
    return {f.check: f for f in result.findings}


# -- STLS command injection -------------------------------------------------------


def test_injection_fails_against_broken_server(brokenServer, certificate):
    """A server that answers the CAPA pipelined after STLS inside TLS fails."""
    result = audit(brokenServer.url, cafile=certificate[0])
    f = findings(result)
    assert f["stls.injection"].status == FAIL
    assert "inside TLS" in f["stls.injection"].reason
    assert "+OK capabilities" in f["stls.injection"].reason
    assert exitStatus(result) == EXIT_FAIL
    assert "stls.injection" in verdict(result)


def test_injection_passes_against_correct_server(correctServer, certificate):
    """Its correct twin, which discards the pipelined bytes, passes."""
    result = audit(correctServer.url, cafile=certificate[0])
    f = findings(result)
    assert f["stls.injection"].status == PASS
    assert [x.check for x in result.findings if x.status == FAIL] == []
    # The tiny server's other answers come through as expected too.
    assert f["stls.works"].status == PASS
    assert f["stls.capa-after"].status == PASS
    assert f["cleartext.user-pass"].status == PASS


# -- declined source address -------------------------------------------------------------


def test_declined_source_address_is_reported(decliningServer):
    result = audit(decliningServer.url, sourceAddress="127.0.0.9")
    f = findings(result)
    assert result.declined
    assert f["connection.source-address"].status == INFO
    assert "declined" in f["connection.source-address"].reason
    assert "127.0.0.9" in f["connection.source-address"].reason
    assert "access from your address is denied" in f["connection.greeting"].reason
    assert exitStatus(result) == EXIT_DECLINED
    assert verdict(result).startswith("DECLINED")
    assert decliningServer.peers[-1] == "127.0.0.9"
    # Nothing else was probed: one connection only.
    assert len(result.findings) == 2


def test_accepted_source_address_is_reported(decliningServer):
    """The negative: another address is let in and the audit goes on."""
    result = audit(decliningServer.url, sourceAddress="127.0.0.8")
    f = findings(result)
    assert not result.declined
    assert f["connection.greeting"].status == PASS
    assert "accepted" in f["connection.source-address"].reason
    assert "127.0.0.8" in set(decliningServer.peers)
    assert "stls.works" in f


def test_declined_by_closing_is_reported(closingServer):
    result = audit(closingServer.url, sourceAddress="127.0.0.9")
    f = findings(result)
    assert result.declined
    assert "closed" in f["connection.greeting"].reason
    assert exitStatus(result) == EXIT_DECLINED


def test_nothing_listening_is_a_fail():
    """No server at all is not 'declined': the audit could not run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = audit(f"pop3://127.0.0.1:{port}")
    f = findings(result)
    assert not result.declined
    assert f["connection.greeting"].status == FAIL
    assert exitStatus(result) == EXIT_FAIL


def test_unbindable_source_address_is_a_fail(correctServer):
    """A source address that is not ours cannot be used; say so."""
    result = audit(correctServer.url, sourceAddress="192.0.2.1")
    f = findings(result)
    assert f["connection.greeting"].status == FAIL
    assert not result.declined


# -- hostile servers: the audit stays bounded and reports, never crashes -----------------


class HostileHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(5)
        behaviour = self.server.behaviour
        try:
            if behaviour == "long-greeting":
                sock.sendall(b"+OK " + b"A" * 200000 + b"\r\n")
                return
            sock.sendall(b"+OK hostile\r\n")
            while True:
                line = sock.recv(4096)
                if not line:
                    return
                if line.startswith(b"CAPA"):
                    if behaviour == "endless-capa":
                        sock.sendall(b"+OK\r\n" + b"X-CAP\r\n" * 5000 + b".\r\n")
                    else:
                        sock.sendall(b"+OK\r\nSTLS\r\n.\r\n")
                elif line.startswith(b"STLS"):
                    sock.sendall(b"+OK go\r\n")
                    if behaviour == "garbage-tls":
                        sock.sendall(b"\x16\x03\x03\x00\x05hello" + b"\x00" * 64)
                        return
                else:
                    sock.sendall(b"-ERR \x1b[31mno\x07\r\n")
        except OSError:
            pass


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, behaviour):
        self.behaviour = behaviour
        super().__init__(("127.0.0.1", 0), HostileHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"pop3://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def hostile(request):
    server = HostileServer(request.param)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("hostile", ["long-greeting"], indirect=True)
def test_overlong_greeting(hostile):
    result = audit(hostile.url)
    f = findings(result)
    assert f["connection.greeting"].status == FAIL
    assert "longer than" in f["connection.greeting"].reason


@pytest.mark.parametrize("hostile", ["endless-capa"], indirect=True)
def test_endless_capa(hostile):
    result = audit(hostile.url)
    f = findings(result)
    assert f["stls.works"].status == FAIL
    assert "lines" in f["stls.works"].reason


@pytest.mark.parametrize("hostile", ["garbage-tls"], indirect=True)
def test_garbage_instead_of_tls(hostile):
    from securepop.audit.report import formatText
    result = audit(hostile.url)
    f = findings(result)
    assert f["stls.works"].status == FAIL
    assert "TLS" in f["stls.works"].reason
    text = formatText(result)
    assert "\x1b" not in text and "\x07" not in text
    assert len(result.findings) < 40
