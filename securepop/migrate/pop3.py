"""
A small blocking POP3 client for the migration: connect (implicit TLS, or
STLS before any credential), log in, list UIDLs and sizes, fetch messages
octet for octet, delete, quit.

Not L{poplib}: poplib drops the line ends it reads (a message could not be
stored byte for byte) and refuses lines over 2048 octets (mail has longer
ones).  Here a message is every octet between the C{+OK} line and the
terminating C{".\\r\\n"}, with only the dot-stuffing undone.
"""

import socket
import ssl

from securepop.errors import SecurePOPError

DEFAULT_TIMEOUT = 60.0
MAX_LINE = 8192                       # a status or listing line
DEFAULT_MAX_MESSAGE = 1024 * 1024 * 1024


class SourceError(SecurePOPError):
    """The source server failed, refused or went away (the text says which)."""


class Refused(SourceError):
    """The source server answered C{-ERR}."""


class LoginRefused(SourceError):
    """The source server refused the credentials."""


def tls_context(cafile=None):
    """
    A client context that verifies the chain (against C{cafile} when given,
    else the system's CAs) and the host name.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class POP3Client:
    """
    One connection.  Use L{connect}; every method raises L{SourceError}
    (L{LoginRefused} for credentials) with a message naming the step.
    """

    def __init__(self, sock, host, max_message=DEFAULT_MAX_MESSAGE):
        self.host = host
        self.max_message = max_message
        self.tls = isinstance(sock, ssl.SSLSocket)
        self._sock = sock
        self._file = sock.makefile("rb")

    @classmethod
    def connect(cls, scheme, host, port, context=None, insecure_cleartext=False,
                timeout=DEFAULT_TIMEOUT, max_message=DEFAULT_MAX_MESSAGE):
        """
        @param scheme: C{"pop3s"} (implicit TLS) or C{"pop3"} (STLS, which
            is required unless C{insecure_cleartext}).
        @param context: an L{ssl.SSLContext} (L{tls_context} by default).
        """
        context = context or tls_context()
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise SourceError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        try:
            if scheme == "pop3s":
                sock = cls._wrap(context, sock, host)
            client = cls(sock, host, max_message)
            client._expect_ok("greeting")
            if scheme == "pop3":
                capabilities = client.capabilities()
                if "STLS" in capabilities:
                    client.stls(context)
                elif not insecure_cleartext:
                    raise SourceError(f"{host}:{port} offers no STLS: refusing to send the "
                                      f"password in cleartext (use pop3s:// or "
                                      f"--insecure-cleartext)")
        except BaseException:
            sock.close()
            raise
        return client

    @staticmethod
    def _wrap(context, sock, host):
        try:
            return context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            raise SourceError(f"certificate of {host} not accepted: "
                              f"{e.verify_message or e}") from None
        except (ssl.SSLError, OSError) as e:
            raise SourceError(f"TLS with {host} failed: {e}") from None

    # -- lines

    def _send(self, line):
        try:
            self._sock.sendall(line + b"\r\n")
        except OSError as e:
            raise SourceError(f"connection to {self.host} lost: {e.strerror or e}") from None

    def _line(self, limit=MAX_LINE):
        try:
            line = self._file.readline(limit + 1)
        except (OSError, ssl.SSLError) as e:
            raise SourceError(f"connection to {self.host} lost: {e}") from None
        if not line:
            raise SourceError(f"connection to {self.host} closed by the server")
        if not line.endswith(b"\n"):
            raise SourceError(f"{self.host} sent a line over {limit} octets")
        return line

    def _expect_ok(self, step):
        line = self._line()
        if not line.startswith(b"+OK"):
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")[:200]
            raise Refused(f"{self.host} refused {step}: {text}")
        return line[3:].strip()

    def command(self, line, step=None):
        """Send one command; @return: the text after C{+OK}."""
        self._send(line)
        return self._expect_ok(step or line.split(b" ", 1)[0].decode("ascii"))

    def _multiline(self, limit=MAX_LINE, total=None):
        """The body of a multi-line answer, dot-stuffing undone, line ends kept."""
        chunks, size = [], 0
        while True:
            line = self._line(limit)
            if line in (b".\r\n", b".\n"):
                return b"".join(chunks)
            if line.startswith(b"."):
                line = line[1:]
            size += len(line)
            if total is not None and size > total:
                raise SourceError(f"{self.host} sent a message over {total} octets")
            chunks.append(line)

    # -- commands

    def capabilities(self):
        """@return: the CAPA tags (first words, upper case); empty without CAPA."""
        self._send(b"CAPA")
        if not self._line().startswith(b"+OK"):
            return set()
        return {line.split()[0].decode("ascii", "replace").upper()
                for line in self._multiline().splitlines() if line.split()}

    def stls(self, context):
        self.command(b"STLS")
        self._file.close()
        self._sock = self._wrap(context, self._sock, self.host)
        self._file = self._sock.makefile("rb")
        self.tls = True

    def login(self, user, password):
        """
        USER/PASS.  @raise LoginRefused: the server said no.
        """
        if any(c in user for c in "\r\n\0") or any(c in password for c in "\r\n\0"):
            raise LoginRefused("user name or password contains a line break or NUL")
        try:
            self.command(b"USER " + user.encode("utf-8"), "USER")
            self.command(b"PASS " + password.encode("utf-8"), "the password")
        except Refused as e:
            raise LoginRefused(f"{self.host} refused the login of {user} "
                               f"({str(e).split(': ', 1)[-1]})") from None

    def uidl(self):
        """@return: [(number, uidl str)] in the server's order."""
        self._send(b"UIDL")
        self._expect_ok("UIDL")
        listing = []
        for line in self._multiline().splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise SourceError(f"{self.host} sent a bad UIDL line: {line[:100]!r}")
            listing.append((int(parts[0]), parts[1].decode("latin-1")))
        return listing

    def sizes(self):
        """@return: {number: size} from LIST."""
        self._send(b"LIST")
        self._expect_ok("LIST")
        sizes = {}
        for line in self._multiline().splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise SourceError(f"{self.host} sent a bad LIST line: {line[:100]!r}")
            sizes[int(parts[0])] = int(parts[1])
        return sizes

    def retr(self, number):
        """@return: message C{number}'s octets as the server sent them, unstuffed."""
        self._send(b"RETR %d" % number)
        self._expect_ok(f"RETR {number}")
        return self._multiline(limit=self.max_message, total=self.max_message)

    def dele(self, number):
        self.command(b"DELE %d" % number)

    def quit(self):
        """QUIT (the server removes what DELE marked); @raise SourceError: not done."""
        self.command(b"QUIT")
        self.close()

    def close(self):
        for closable in (self._file, self._sock):
            try:
                closable.close()
            except OSError:
                pass
