"""
A small, bounded, blocking POP3 probe client for the audit.

The audit is a command-line tool that talks to any POP3 server, so it uses
plain blocking sockets with a deadline on every read, and pyOpenSSL over
memory BIOs for TLS (the client must still be able to offer old protocol
versions, and the TLS layer must never read ahead of the STLS answer).
Every read is bounded in length and time; the number of connections one
audit may open is bounded by L{ProbeBudget}.
"""

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from OpenSSL import SSL

DEFAULT_PORTS = {"pop3": 110, "pop3s": 995}
MAX_LINE = 8192          # longer lines are a protocol violation (RFC 2449: 512)
MAX_LINES = 256          # bound on a multi-line answer (CAPA)


class ProbeError(Exception):
    """A probe could not complete: connection, protocol or TLS failure."""


class ProbeTimeout(ProbeError):
    """The server did not answer within the time allowed."""


class ConnectionClosed(ProbeError):
    """The server closed the connection."""


class BudgetExhausted(ProbeError):
    """The audit used up the connections or time it may spend."""


@dataclass(frozen=True)
class Target:
    """
    Where the audit points.

    @ivar implicitTLS: True for C{pop3s://} (TLS from the first byte).
    """

    scheme: str
    host: str
    port: int

    @property
    def implicitTLS(self):
        return self.scheme == "pop3s"


def parseURL(url):
    """
    Parse C{pop3://HOST[:PORT]} or C{pop3s://HOST[:PORT]} (IPv6 in brackets).

    @raise ValueError: for any other form (no path, user or query allowed:
        credentials are never taken from a URL).
    """
    if not isinstance(url, str) or len(url) > 1024:
        raise ValueError("URL must be a short string")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("URL must not contain spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {parts.scheme!r}: use pop3:// or pop3s://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in the URL: use --user/--password-file")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("URL must be pop3[s]://HOST[:PORT] with nothing after it")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    host = parts.hostname
    if not host:
        raise ValueError("URL has no host")
    if any(c in host for c in " \t\r\n/\\@"):
        raise ValueError("bad host name")
    return Target(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class Response:
    """
    One server answer.

    @ivar status: C{"+OK"}, C{"-ERR"}, C{"+"} (SASL continuation) or
        C{"?"} (anything else).
    @ivar text: the rest of the status line (str, undecodable bytes replaced).
    @ivar lines: the body of a multi-line answer, dot-unstuffed (tuple of str).
    """

    status: str
    text: str
    lines: tuple = ()

    @property
    def ok(self):
        return self.status == "+OK"

    @property
    def continuation(self):
        return self.status == "+"

    @property
    def code(self):
        """The RFC 2449 response code in brackets (e.g. C{"AUTH"}), or None."""
        if self.text.startswith("["):
            end = self.text.find("]")
            if 1 < end <= 64:
                return self.text[1:end].upper()
        return None


def parseStatusLine(line):
    """
    Split a status line (bytes, without CRLF) into a L{Response}.
    """
    text = line.decode("utf-8", "replace")
    for status in ("+OK", "-ERR"):
        if text == status or text.startswith(status + " "):
            return Response(status, text[len(status):].strip())
    if text == "+" or text.startswith("+ "):
        return Response("+", text[1:].strip())
    return Response("?", text.strip())


def parseCapabilities(lines):
    """
    Turn CAPA lines into a dict: capability name (upper case) -> tuple of
    arguments (SASL mechanisms upper-cased).
    """
    capabilities = {}
    for line in lines[:MAX_LINES]:
        words = line.split()
        if not words:
            continue
        name = words[0].upper()
        args = tuple(w.upper() for w in words[1:]) if name == "SASL" else tuple(words[1:])
        capabilities[name] = args
    return capabilities


@dataclass
class ProbeBudget:
    """
    The bound on one audit: at most C{maxConnections} connections and
    C{maxSeconds} of wall-clock time.
    """

    maxConnections: int = 32
    maxSeconds: float = 180.0
    used: int = 0
    started: float = field(default_factory=time.monotonic)

    def spend(self):
        if self.used >= self.maxConnections:
            raise BudgetExhausted(f"connection budget ({self.maxConnections}) used up")
        if time.monotonic() - self.started > self.maxSeconds:
            raise BudgetExhausted(f"time budget ({self.maxSeconds:.0f} s) used up")
        self.used += 1


def openSocket(target, sourceAddress=None, timeout=10.0):
    """
    Open a TCP connection, bound to C{sourceAddress} when given.

    @raise ProbeError: when the source address cannot be bound or the
        connection fails.
    """
    source = (sourceAddress, 0) if sourceAddress else None
    try:
        sock = socket.create_connection((target.host, target.port), timeout, source)
    except socket.timeout:
        raise ProbeTimeout(f"connect to {target.host}:{target.port} timed out") from None
    except OSError as e:
        raise ProbeError(f"connect to {target.host}:{target.port}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def isIPAddress(host):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


class TLSChannel:
    """
    pyOpenSSL over memory BIOs on a blocking socket with deadlines.

    Memory BIOs make every socket read explicit: nothing is read before the
    handshake starts, and each read has a timeout.
    """

    def __init__(self, sock, context, servername=None, timeout=10.0):
        self.sock = sock
        self.timeout = timeout
        self.conn = SSL.Connection(context, None)
        self.conn.set_connect_state()
        if servername and not isIPAddress(servername):
            self.conn.set_tlsext_host_name(servername.encode("idna"))

    def _flush(self):
        while True:
            try:
                out = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if not out:
                return
            self.sock.sendall(out)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeTimeout("TLS read timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise ProbeTimeout("TLS read timed out") from None
        except OSError as e:
            raise ConnectionClosed(f"connection lost: {e.strerror or e}") from None
        if not data:
            self.conn.bio_shutdown()
            return False
        self.conn.bio_write(data)
        return True

    def handshake(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.conn.do_handshake()
                self._flush()
                return
            except SSL.WantReadError:
                self._flush()
                if not self._fill(deadline):
                    raise ConnectionClosed("server closed the connection during the TLS handshake")
            except SSL.Error as e:
                try:
                    self._flush()   # send our alert, if any
                except OSError:
                    pass
                raise ProbeError(f"TLS handshake failed: {describeSSLError(e)}") from None
            except OSError as e:
                raise ProbeError(f"TLS handshake failed: {e.strerror or e}") from None

    def sendall(self, data):
        try:
            self.conn.sendall(data)
            self._flush()
        except (SSL.Error, OSError) as e:
            raise ConnectionClosed(f"send failed: {e}") from None

    def recv(self, n, timeout):
        """
        @return: up to C{n} bytes of application data, C{b""} at the end.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.conn.recv(n)
            except SSL.WantReadError:
                self._flush()
                if not self._fill(deadline):
                    continue
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError:
                return b""
            except SSL.Error as e:
                raise ProbeError(f"TLS error: {describeSSLError(e)}") from None


def describeSSLError(error):
    """A short readable text from a pyOpenSSL error."""
    try:
        reasons = [r[2] for r in error.args[0] if r and r[2]]
    except (IndexError, TypeError):
        reasons = []
    return ", ".join(reasons) or str(error) or error.__class__.__name__


class POP3Probe:
    """
    One probing POP3 connection.

    @ivar greeting: the L{Response} the server greeted with.
    @ivar tls: the L{TLSChannel} once TLS is active, else None.
    """

    def __init__(self, target, sourceAddress=None, timeout=10.0, budget=None):
        self.target = target
        self.sourceAddress = sourceAddress
        self.timeout = timeout
        self.budget = budget
        self.sock = None
        self.tls = None
        self.buffer = b""
        self.greeting = None

    # -- connection ---------------------------------------------------------

    def connect(self, context=None, servername=None):
        """
        Connect (and for pop3s, complete the TLS handshake with C{context}),
        then read the greeting.

        @return: the greeting L{Response}.
        @raise ConnectionClosed: when the server closes before greeting.
        """
        if self.budget is not None:
            self.budget.spend()
        self.sock = openSocket(self.target, self.sourceAddress, self.timeout)
        if self.target.implicitTLS:
            self.startTLS(context, servername)
        self.greeting = self.readResponse()
        return self.greeting

    def startTLS(self, context, servername=None):
        """
        Begin TLS on the socket (after STLS's +OK, or at once for pop3s).

        Bytes the server sent in clear after the line we read are dropped
        from the buffer and returned: a correct server sends none.

        @return: bytes that were already buffered (normally C{b""}).
        """
        leftover, self.buffer = self.buffer, b""
        channel = TLSChannel(self.sock, context, servername or self.target.host, self.timeout)
        channel.handshake()
        self.tls = channel
        return leftover

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw I/O -------------------------------------------------------------

    def sendRaw(self, data):
        """Send bytes as one write (one segment on loopback)."""
        if self.tls is not None:
            self.tls.sendall(data)
            return
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionClosed(f"send failed: {e.strerror or e}") from None

    def _recv(self, timeout):
        if self.tls is not None:
            return self.tls.recv(65536, timeout)
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise ProbeTimeout("read timed out") from None
        except ConnectionResetError:
            return b""
        except OSError as e:
            raise ConnectionClosed(f"read failed: {e.strerror or e}") from None

    def readLine(self, timeout=None):
        """
        @return: one line without its CRLF (bytes).
        @raise ProbeError: for an over-long line, a timeout or a close.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ProbeError(f"line longer than {MAX_LINE} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeTimeout("read timed out")
            data = self._recv(remaining)
            if not data:
                raise ConnectionClosed("server closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise ProbeError(f"line longer than {MAX_LINE} bytes")
        return line.rstrip(b"\r")

    def pollData(self, wait):
        """
        Collect whatever the server sends within C{wait} seconds without
        being asked (the injection check).

        @return: bytes received (C{b""} when nothing came or the server
            closed the connection).
        """
        data, self.buffer = self.buffer, b""
        deadline = time.monotonic() + wait
        while len(data) <= MAX_LINE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = self._recv(remaining)
            except ProbeTimeout:
                break
            if not chunk:
                break
            data += chunk
        return data

    # -- POP3 ------------------------------------------------------------------

    def readResponse(self, multiline=False):
        status = parseStatusLine(self.readLine())
        if not (multiline and status.ok):
            return status
        lines = []
        while True:
            line = self.readLine()
            if line == b".":
                break
            if line.startswith(b".."):
                line = line[1:]
            if len(lines) >= MAX_LINES:
                raise ProbeError(f"multi-line answer longer than {MAX_LINES} lines")
            lines.append(line.decode("utf-8", "replace"))
        return Response(status.status, status.text, tuple(lines))

    def command(self, line, multiline=False):
        """
        Send one command line (str, no CRLF) and read its answer.
        """
        if "\r" in line or "\n" in line:
            raise ValueError("command must be a single line")
        self.sendRaw(line.encode("utf-8") + b"\r\n")
        return self.readResponse(multiline)

    def capa(self):
        """
        @return: (L{Response}, capabilities dict); the dict is empty when
            CAPA is refused.
        """
        response = self.command("CAPA", multiline=True)
        return response, (parseCapabilities(response.lines) if response.ok else {})

    def quit(self):
        """Say QUIT and close, ignoring any failure."""
        try:
            if self.sock is not None:
                self.sendRaw(b"QUIT\r\n")
                self.readLine(timeout=min(self.timeout, 2.0))
        except (ProbeError, OSError):
            pass
        self.close()
