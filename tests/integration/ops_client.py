"""
Small real POP3 clients for the operations tests (raw sockets, stdlib
ssl), so a test can hold a RETR half-read or use any mechanism.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import time


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class POP3:
    """One connection over implicit TLS (or cleartext when C{tls=False})."""

    def __init__(self, port, host="127.0.0.1", tls=True, timeout=20, rcvbuf=None,
                 source=None):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            raw.bind((source, 0))
        raw.settimeout(timeout)
        raw.connect((host, port))
        self.sock = tls_context().wrap_socket(raw) if tls else raw
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        data = self.file.readline(65536)
        if not data:
            raise ConnectionError("connection closed")
        return data.rstrip(b"\r\n")

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line + b"\r\n")

    def cmd(self, line) -> bytes:
        self.send(line)
        return self.line()

    def multiline(self) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b"..") else line)

    def login(self, user, password):
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        reply = self.cmd(b"PASS " + password.encode())
        assert reply.startswith(b"+OK"), reply
        return reply

    def apop(self, user, password):
        stamp = self.greeting[self.greeting.index(b"<"):self.greeting.index(b">") + 1]
        digest = hashlib.md5(stamp + password.encode()).hexdigest()
        reply = self.cmd(f"APOP {user} {digest}")
        assert reply.startswith(b"+OK"), reply
        return digest

    def plain(self, user, password):
        response = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        reply = self.cmd(b"AUTH PLAIN " + response)
        assert reply.startswith(b"+OK"), reply
        return response

    def ntlm(self, user, password):
        import spnego

        client = spnego.client(user, password, hostname="localhost", service="pop",
                               protocol="ntlm")
        reply = self.cmd("AUTH NTLM")
        assert reply.startswith(b"+"), reply
        negotiate = base64.b64encode(client.step())
        reply = self.cmd(negotiate)
        assert reply.startswith(b"+ "), reply
        authenticate = base64.b64encode(client.step(base64.b64decode(reply[2:])))
        reply = self.cmd(authenticate)
        assert reply.startswith(b"+OK"), reply
        return [negotiate, authenticate]

    def quit(self):
        reply = self.cmd("QUIT")
        self.close()
        return reply

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def try_greeting(port, source=None, tls=True):
    """The first line the server sends (or the error), for access tests."""
    try:
        c = POP3(port, tls=tls, source=source, timeout=10)
    except (OSError, ConnectionError) as e:
        return repr(e).encode()
    g = c.greeting
    c.close()
    return g


def read_exactly_until_dot(conn, deadline=60):
    """Read a whole multi-line answer; return its octets (without stuffing)."""
    end = time.monotonic() + deadline
    total = 0
    while time.monotonic() < end:
        line = conn.line()
        if line == b".":
            return total
        total += len(line) + 2
    raise TimeoutError("RETR did not finish")
