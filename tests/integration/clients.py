"""
Real POP3 clients for the integration tests, with the right options.

Every wrapper takes a L{tests.integration.daemon.Daemon} (for its ports and
its self-signed certificate, the test CA) and a TLS mode: C{"starttls"}
(STLS on the plain port, TLS required) or C{"implicit"} (TLS from the first
byte).  Host name checks are on: clients connect to C{localhost}, the name
in the certificate, pinned to 127.0.0.1.

  - L{pop3}: Python's poplib, logged in or not.
  - L{RawPOP3}: a socket client for hostile input and exact byte checks.
  - L{curl}: C{pop3://} with C{--ssl-reqd} or C{pop3s://}, C{--cacert},
    optional C{--login-options} (mechanism selection).
  - L{fetchmail}: STLS (C{sslproto tls1.2+}) or implicit (C{ssl}), with
    C{sslcertfile}; every message lands in a file of its own.
  - L{getmail}: getmail6's SimplePOP3SSLRetriever (implicit TLS) or
    SimplePOP3Retriever + STLS is not offered by getmail6.
"""

from __future__ import annotations

import hashlib
import os
import poplib
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.integration.daemon import VENV_BIN, require_tool

# poplib refuses lines over 2048 octets; RFC 1939 sets no limit on message
# lines, and the tests retrieve 100 KB lines.
poplib._MAXLINE = 1 << 20

HOST = "localhost"
ADDRESS = "127.0.0.1"
STARTTLS, IMPLICIT, PLAIN = "starttls", "implicit", "plain"

# Words that must never reach a client (exception text, tracebacks).
LEAK_MARKERS = (b"Traceback", b"Error:", b"Exception", b"File \"")


# -- message forms ---------------------------------------------------------------

def crlf_normalise(data: bytes) -> bytes:
    """
    What a client must receive for a stored message: every LF not preceded
    by CR becomes CRLF, and a final line without an end gets one.
    """
    if b"\r" in data:
        data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    else:
        data = data.replace(b"\n", b"\r\n")     # fast path for big LF-only messages
    if data and not data.endswith(b"\n"):
        data += b"\r\n"
    return data


def lf_normalise(data: bytes) -> bytes:
    """The same message as a Unix tool stores it (CRLF -> LF)."""
    return crlf_normalise(data).replace(b"\r\n", b"\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unstuff(wire: bytes) -> bytes:
    """A multi-line POP3 body (without the terminator) with dot-stuffing removed."""
    if wire.startswith(b"."):
        wire = wire[1:]
    return wire.replace(b"\r\n.", b"\r\n")


def assert_no_leak(data: bytes):
    """Nothing that looks like Python exception text went to the client."""
    for marker in LEAK_MARKERS:
        assert marker not in data, f"{marker!r} on the wire: {data[-300:]!r}"


def vmrss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def reset_mailbox(daemon, user):
    """Remove every stored message of C{user} (no session may hold it)."""
    md = daemon.maildir(user)
    for sub in ("new", "cur", "tmp"):
        d = md / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file():
                    p.unlink()


def store_message(daemon, user, data: bytes, name=None):
    """
    Put C{data} into C{user}'s Maildir new/ directly (fast for huge
    messages; the CLI's C{deliver} is tested elsewhere).  Returns the name.
    """
    md = daemon.maildir(user)
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    name = name or "%d.M%dP%d.test" % (time.time(), time.monotonic_ns() % 10**9, os.getpid())
    tmp = md / "tmp" / name
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, md / "new" / name)
    return name


# -- TLS -------------------------------------------------------------------------------

def client_context(daemon, minimum=ssl.TLSVersion.TLSv1_2):
    """A verifying client context trusting the daemon's certificate."""
    ctx = ssl.create_default_context(cafile=daemon.ca_file)
    ctx.minimum_version = minimum
    return ctx


def port_for(daemon, tls):
    return daemon.pop3s_port if tls == IMPLICIT else daemon.pop3_port


# -- poplib ------------------------------------------------------------------------------

def pop3(daemon, tls=STARTTLS, user=None, password=None, timeout=30):
    """
    A poplib client on the daemon: STLS done (C{tls="starttls"}), implicit
    TLS (C{"implicit"}) or cleartext (C{"plain"}), logged in with USER/PASS
    when C{user} is given.
    """
    ctx = client_context(daemon)
    if tls == IMPLICIT:
        client = poplib.POP3_SSL(HOST, daemon.pop3s_port, context=ctx, timeout=timeout)
    else:
        client = poplib.POP3(HOST, daemon.pop3_port, timeout=timeout)
        if tls == STARTTLS:
            client.stls(ctx)
    if user is not None:
        client.user(user)
        client.pass_(password)
    return client


def poplib_retr(client, number):
    """The message as poplib hands it back, with CRLF line ends restored."""
    _, lines, _ = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines)


# -- raw socket client -------------------------------------------------------------------

class RawPOP3:
    """
    A byte-level POP3 client: sends exactly what a test says, reads lines and
    bodies without interpretation.

    @param tls: C{"implicit"} wraps the socket at once; C{"plain"} and
        C{"starttls"} start in cleartext on the STLS port (call L{starttls}).
    """

    def __init__(self, daemon, tls=PLAIN, timeout=15, read_greeting=True):
        self.daemon = daemon
        self.timeout = timeout
        self.buf = b""
        self.received = bytearray()     # everything read, for leak checks
        port = port_for(daemon, tls)
        self.sock = socket.create_connection((ADDRESS, port), timeout=timeout)
        if tls == IMPLICIT:
            self.sock = client_context(daemon).wrap_socket(self.sock, server_hostname=HOST)
        self.greeting = self.readline() if read_greeting else None

    # -- io
    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, timeout=None):
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        self.received += chunk
        self.buf += chunk

    def readline(self, timeout=None) -> bytes:
        """One line without CRLF; EOFError when the server closed."""
        while b"\r\n" not in self.buf:
            self._fill(timeout)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, line) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.readline()

    def multiline(self) -> list:
        """The lines of a multi-line body up to ".", dot-stuffing removed."""
        lines = []
        while True:
            line = self.readline()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b".") else line)

    def body(self) -> bytes:
        """
        A multi-line body exactly as received, terminator removed and
        dot-stuffing undone; fast for big messages.
        """
        data = bytearray(self.buf)
        self.buf = b""
        start = 0
        while True:
            if data.startswith(b".\r\n"):
                self.buf = bytes(data[3:])
                return b""
            end = data.find(b"\r\n.\r\n", max(start - 4, 0))
            if end >= 0:
                self.buf = bytes(data[end + 5:])
                return unstuff(bytes(data[:end + 2]))
            start = len(data)
            self.sock.settimeout(self.timeout)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("server closed in the middle of a body")
            data += chunk

    def retr(self, number) -> bytes:
        status = self.command(b"RETR %d" % number)
        assert status.startswith(b"+OK"), status
        return self.body()

    def silent(self, timeout=1.0) -> bytes:
        """What the server sends within C{timeout} seconds (b"" when nothing)."""
        try:
            self._fill(timeout)
        except (socket.timeout, ssl.SSLError, TimeoutError):
            return b""
        except EOFError:
            return b""
        data, self.buf = self.buf, b""
        return data

    def closed(self, timeout=5.0) -> bool:
        """True when the server ends the connection within C{timeout}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._fill(max(deadline - time.monotonic(), 0.01))
            except EOFError:
                return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except ssl.SSLError as e:
                if "timed out" in str(e).lower():
                    return False
                return True
            except (socket.timeout, TimeoutError):
                return False
        return False

    # -- POP3
    def starttls(self, check=True):
        reply = self.command(b"STLS")
        if check:
            assert reply.startswith(b"+OK"), reply
        self.sock = client_context(self.daemon).wrap_socket(self.sock, server_hostname=HOST)
        return reply

    def login(self, user, password):
        reply = self.command(b"USER " + user.encode())
        assert reply.startswith(b"+OK"), reply
        return self.command(b"PASS " + password.encode())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def still_serving(daemon, user, password):
    """A fresh client can log in and STAT: the server serves others."""
    client = pop3(daemon, IMPLICIT, user, password, timeout=15)
    try:
        assert client.stat() is not None
    finally:
        client.quit()


# -- curl ----------------------------------------------------------------------------------

def curl(daemon, user, password, path="", tls=STARTTLS, login_options=None, extra=(),
         timeout=120, cacert=True, output=None):
    """
    Run curl against the daemon.  C{path} "" lists, "N" retrieves message N.

    @param tls: "starttls" (C{pop3://} with C{--ssl-reqd}), "implicit"
        (C{pop3s://}) or "plain" (C{pop3://} without TLS: credentials refused).
    @param login_options: e.g. C{"AUTH=PLAIN"}, C{"AUTH=+APOP"}.
    @param cacert: False to omit C{--cacert} (verification must then fail).
    @return: L{subprocess.CompletedProcess} (stdout bytes unless C{output}).
    """
    exe = require_tool("curl")
    scheme = "pop3s" if tls == IMPLICIT else "pop3"
    port = port_for(daemon, tls)
    args = [exe, "-sS", "--max-time", str(timeout), "--resolve", f"{HOST}:{port}:{ADDRESS}",
            "--user", f"{user}:{password}"]
    if tls == STARTTLS:
        args.append("--ssl-reqd")
    if cacert:
        args += ["--cacert", daemon.ca_file]
    if login_options:
        args += ["--login-options", login_options]
    if output is not None:
        args += ["-o", str(output)]
    args += list(extra) + [f"{scheme}://{HOST}:{port}/{path}"]
    return subprocess.run(args, capture_output=True, timeout=timeout + 10)


# -- fetchmail -------------------------------------------------------------------------------

def fetchmail(daemon, user, password, workdir, tls=STARTTLS, auth="password",
              sslproto="tls1.2+", certfile=True, keep=True, timeout=120):
    """
    Fetch every message of C{user} with fetchmail into C{workdir}/mail/
    (one file per message, through an MDA, CRs kept, no Received header).

    @return: (CompletedProcess, [message bytes in delivery order]).
        fetchmail exits 0 when mail came, 1 when there was none, 3 on an
        authentication failure, 2 on a socket or TLS error.
    """
    exe = require_tool("fetchmail")
    workdir = Path(workdir)
    out = workdir / "mail"
    out.mkdir(parents=True, exist_ok=True)
    mda = workdir / "mda.sh"
    mda.write_text('#!/bin/sh\ncat > "%s/$(date +%%s%%N).$$"\n' % out)
    mda.chmod(0o700)
    port = port_for(daemon, tls)
    tls_opts = "sslproto ''"          # plain: no opportunistic STLS
    if tls == STARTTLS:
        tls_opts = f"sslproto '{sslproto}'"
    elif tls == IMPLICIT:
        tls_opts = f"ssl sslproto '{sslproto}'"
    if tls != PLAIN:
        tls_opts += " sslcertck"
        if certfile:
            tls_opts += f" sslcertfile '{daemon.ca_file}'"
    rc = workdir / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no bouncemail
        poll {HOST} via {ADDRESS} service {port} proto pop3 auth {auth} timeout 60
          user '{user}' there with password '{password}' is 'root' here
          {tls_opts} sslcommonname '{HOST}'
          {'keep' if keep else 'nokeep'} fetchall no rewrite no stripcr no forcecr
          mda '{mda}'
        """))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir))
    proc = subprocess.run([exe, "-f", str(rc), "--nosyslog", "--invisible", "-v"],
                          capture_output=True, timeout=timeout, env=env)
    messages = [p.read_bytes() for p in sorted(out.iterdir())]
    return proc, messages


# -- getmail6 ------------------------------------------------------------------------------------

def getmail(daemon, user, password, workdir, tls=IMPLICIT, ca_certs=True, timeout=120):
    """
    Fetch every message of C{user} with getmail6 into a Maildir under
    C{workdir} (no Delivered-To / Received headers added, nothing deleted).

    @param ca_certs: True for the daemon's certificate, a path for another
        CA file, False for none (getmail6 then does not verify).
    @param tls: "implicit" (SimplePOP3SSLRetriever) or "plain"
        (SimplePOP3Retriever, no TLS: credentials refused by the server).
    @return: (CompletedProcess, [message bytes]).
    """
    exe = str(VENV_BIN / "getmail")
    if not os.path.exists(exe):
        exe = require_tool("getmail")
    workdir = Path(workdir)
    maildir = workdir / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    kind = "SimplePOP3SSLRetriever" if tls == IMPLICIT else "SimplePOP3Retriever"
    port = port_for(daemon, tls)
    ssl_lines = ""
    if tls == IMPLICIT and ca_certs:
        ca = daemon.ca_file if ca_certs is True else os.fspath(ca_certs)
        ssl_lines = f"ca_certs = {ca}\nssl_cert_hostname = {HOST}\n"
    rc = workdir / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        f"type = {kind}\nserver = {ADDRESS}\nport = {port}\n"
        f"username = {user}\npassword = {password}\ntimeout = 60\n" + ssl_lines +
        "[destination]\n"
        "type = MDA_external\npath = /bin/sh\nallow_root_commands = true\n"
        f"arguments = (\"-c\", \"cat > {maildir}/new/$(date +%s%N).$$$$\")\n"
        "[options]\n"
        "delete = false\nread_all = true\ndelivered_to = false\nreceived = false\n"
        "verbose = 0\n"
    )
    proc = subprocess.run([exe, f"--rcfile={rc}", f"--getmaildir={workdir}"],
                          capture_output=True, timeout=timeout)
    messages = [p.read_bytes() for p in sorted((maildir / "new").iterdir())]
    return proc, messages


def strip_getmail_headers(message: bytes) -> bytes:
    """getmail6's MDA_external delivery adds one Return-Path line first."""
    prefix = b"Return-Path: <unknown>\n"
    return message[len(prefix):] if message.startswith(prefix) else message


# -- the core test daemon ---------------------------------------------------------------------

CORE_PASSWORD = "Correct-Horse-7"
# One user per concern, so test modules never touch each other's maildrops.
CORE_USERS = ("alice", "clients", "messages", "bigmsg", "rss", "safety", "inuse",
              "hostile", "pipeline")


def clone_users(daemon, template, names):
    """
    Give C{names} the password of C{template} by copying its users-file line
    (the secrets do not depend on the name).  C{securepop user add} costs
    about two seconds per user (argon2id + SCRAM derivation); this costs
    nothing.  The file is rewritten atomically (0600) and the daemon reloads
    it on change.
    """
    path = daemon.data_dir / "users"
    lines = path.read_text().splitlines()
    entries = {line.split(":", 1)[0]: line for line in lines if line.strip()}
    rest = entries[template].split(":", 1)[1]
    changed = False
    for name in names:
        if name not in entries:
            entries[name] = f"{name}:{rest}"
            changed = True
    if changed:
        tmp = path.with_name("users.tmp")
        tmp.write_text("".join(line + "\n" for line in entries.values()))
        tmp.chmod(0o600)
        os.replace(tmp, path)


def core_daemon(daemon_factory):
    """The one daemon (default test configuration) the core tests share."""
    d = daemon_factory(users=(("alice", CORE_PASSWORD),), name="core")
    clone_users(d, "alice", CORE_USERS)
    return d
