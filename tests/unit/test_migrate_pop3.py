"""
Tests for L{securepop.migrate.pop3}: messages octet for octet (dot lines,
bare line ends, long lines), STLS required before a password, a refused
login and a dropped connection reported as such.
"""

import socket
import threading

import pytest

from securepop.migrate.pop3 import LoginRefused, POP3Client, SourceError
from securepop.migrate.sources import POP3Source, SourceMessage


class Script(threading.Thread):
    """A server end that answers each client line with the next scripted reply."""

    def __init__(self, sock, greeting, replies):
        super().__init__(daemon=True)
        self.sock, self.greeting, self.replies = sock, greeting, list(replies)
        self.received = []

    def run(self):
        f = self.sock.makefile("rb")
        try:
            self.sock.sendall(self.greeting)
            for reply in self.replies:
                line = f.readline()
                if not line:
                    return
                self.received.append(line.rstrip(b"\r\n"))
                if reply is None:
                    return  # drop the connection
                self.sock.sendall(reply)
        finally:
            f.close()
            self.sock.close()


def pair(replies, greeting=b"+OK ready\r\n"):
    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(5)
    script = Script(server_sock, greeting, replies)
    script.start()
    client = POP3Client(client_sock, "old.example")
    client._expect_ok("greeting")
    return client, script


def test_retr_undoes_dot_stuffing_and_keeps_line_ends():
    body = (b"Subject: x\r\n\r\n..dot\r\n...two\r\nbare lf\nbare cr\r mid\r\n"
            + b"y" * 20000 + b"\r\n")
    client, _ = pair([b"+OK\r\n" + body + b".\r\n"])
    assert client.retr(1) == (b"Subject: x\r\n\r\n.dot\r\n..two\r\nbare lf\nbare cr\r mid\r\n"
                              + b"y" * 20000 + b"\r\n")


def test_uidl_and_list():
    client, script = pair([b"+OK\r\n1 AAA\r\n2 b~!\r\n.\r\n", b"+OK\r\n1 10\r\n2 20\r\n.\r\n"])
    assert client.uidl() == [(1, "AAA"), (2, "b~!")]
    assert client.sizes() == {1: 10, 2: 20}
    assert script.received == [b"UIDL", b"LIST"]


def test_bad_uidl_line():
    client, _ = pair([b"+OK\r\nnonsense\r\n.\r\n"])
    with pytest.raises(SourceError):
        client.uidl()


def test_login_refused():
    client, script = pair([b"+OK\r\n", b"-ERR [AUTH] Authentication failed.\r\n"])
    with pytest.raises(LoginRefused, match="refused the login of alice"):
        client.login("alice", "wrong")
    assert script.received == [b"USER alice", b"PASS wrong"]


def test_login_accepted():
    client, _ = pair([b"+OK\r\n", b"+OK Logged in.\r\n"])
    client.login("alice", "right")


def test_line_break_in_password_never_sent():
    client, script = pair([b"+OK\r\n"])
    with pytest.raises(LoginRefused):
        client.login("alice", "a\r\nDELE 1")
    assert script.received == []


def test_dropped_connection_mid_message():
    client, _ = pair([b"+OK\r\npartial line\r\n"])
    client._sock.settimeout(2)
    # The script closes after sending: the message never ends.
    with pytest.raises(SourceError, match="closed|lost"):
        client.retr(1)


def test_message_over_the_limit():
    client, _ = pair([b"+OK\r\n" + b"z" * 100 + b"\r\n.\r\n"])
    client.max_message = 50
    with pytest.raises(SourceError, match="over 50"):
        client.retr(1)


def _listen(replies):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        Script(conn, b"+OK ready\r\n", replies).run()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_stls_required_for_pop3():
    port = _listen([b"+OK\r\nUSER\r\nUIDL\r\n.\r\n", b"+OK\r\n"])
    with pytest.raises(SourceError, match="offers no STLS"):
        POP3Client.connect("pop3", "127.0.0.1", port, timeout=5)


def test_insecure_cleartext_allows_pop3_without_stls():
    port = _listen([b"+OK\r\nUSER\r\n.\r\n", b"+OK\r\n"])
    client = POP3Client.connect("pop3", "127.0.0.1", port, insecure_cleartext=True, timeout=5)
    assert not client.tls
    client.close()


def test_failed_stls_handshake_is_a_source_error():
    """The server says +OK to STLS and then speaks no TLS: no password follows."""
    port = _listen([b"+OK\r\nSTLS\r\n.\r\n", b"+OK Begin TLS\r\n"])
    with pytest.raises(SourceError):
        POP3Client.connect("pop3", "127.0.0.1", port, timeout=5)


def test_source_close_quits_only_without_marks():
    client, script = pair([b"+OK bye\r\n"])
    POP3Source(client).close()
    script.join(5)
    assert script.received == [b"QUIT"]
    client, script = pair([b"+OK\r\n", None])
    source = POP3Source(client)
    with pytest.raises(SourceError):
        source.delete([SourceMessage(1, "a"), SourceMessage(2, "b")])
    source.close()
    script.join(5)
    assert script.received == [b"DELE 1", b"DELE 2"]   # no QUIT: nothing removed
