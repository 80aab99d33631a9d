"""
The real securepop daemon backed by a directory (OpenLDAP or a Samba AD DC).

Plain helpers, no pytest here.  A Samba AD DC lives in its own network
namespace (L{tests.integration.fixtures_samba}); a daemon that talks to it
must run there too, and so must its clients.  A network namespace is a
property of each thread, and a socket keeps the namespace it was made in:
L{namespaceSocket} makes the client socket on a short-lived thread that has
entered the namespace (C{setns}), so the tests drive the daemon inside the
namespace from this process, with no subprocess per command.  External
clients (curl, fetchmail) run through C{ip netns exec}.
"""

from __future__ import annotations

import base64
import ctypes
import os
import socket
import subprocess
import threading
import time

from tests.integration.clients import ADDRESS, IMPLICIT, PLAIN, RawPOP3, port_for
from tests.integration.daemon import TWISTD, Daemon

CLONE_NEWNET = 0x40000000


def namespaceSocket(namespace, address, timeout=5.0):
    """
    A TCP socket connected to C{address} inside network namespace
    C{namespace} (C{None}: this process's namespace).

    @raise OSError: when the connection is refused or times out.
    """
    if namespace is None:
        return socket.create_connection(address, timeout=timeout)
    result = {}

    def connect():
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            # This thread (and only this thread) is now in the namespace.
            result["socket"] = socket.create_connection(address, timeout=timeout)
        except BaseException as error:  # handed to the caller's thread
            result["error"] = error

    thread = threading.Thread(target=connect, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["socket"]


class DirectoryDaemon(Daemon):
    """
    A L{Daemon}, optionally inside a network namespace.

    @param namespace: the namespace name, or L{None} for loopback here.
    """

    def __init__(self, tmp_path, config, namespace=None, **kwargs):
        wrapper = ["ip", "netns", "exec", namespace] if namespace else ()
        super().__init__(tmp_path, config, wrapper=wrapper, **kwargs)
        self.namespace = namespace

    def start(self, wait_ports=None, timeout=30.0):
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.wrapper + [TWISTD,
                            "-n", "--pidfile=", "securepop", "--config",
                            str(self.config_path)],
            stdout=self.log_file, stderr=subprocess.STDOUT, cwd=self.dir, env=self.env)
        for port in wait_ports or (self.pop3_port, self.pop3s_port):
            self.waitForPort(port, timeout)
        return self

    def waitForPort(self, port, timeout=30.0):
        """Poll from inside the daemon's namespace until C{port} accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n"
                                   + self.log()[-3000:])
            try:
                namespaceSocket(self.namespace, (ADDRESS, port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"port {port} did not accept within {timeout} s")

    def startFails(self, timeout=30.0):
        """
        Start a daemon whose configuration must stop the start.

        @return: (exit code, log text).
        """
        with open(self.log_path, "ab") as log:
            completed = subprocess.run(
                self.wrapper + [TWISTD,
                                "-n", "--pidfile=", "securepop", "--config",
                                str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env=self.env,
                timeout=timeout)
        return completed.returncode, self.log()

    def run(self, argv, timeout=60, **kwargs):
        """Run an external client in the daemon's namespace."""
        return subprocess.run(self.wrapper + list(argv), capture_output=True,
                              timeout=timeout, **kwargs)

    def children(self, name):
        """
        PIDs of the daemon's descendants whose command is C{name} (e.g.
        C{ntlm_auth}).
        """
        parents = {}
        commands = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm") as comm:
                    commands[int(entry)] = comm.read().strip()
            except OSError:
                continue
            if fields[0] == "Z":
                continue
            parents[int(entry)] = int(fields[1])
        found = []
        for pid, command in commands.items():
            if command != name or pid not in parents:
                continue
            ancestor = parents.get(pid)
            while ancestor and ancestor != self.proc.pid:
                ancestor = parents.get(ancestor)
            if ancestor == self.proc.pid:
                found.append(pid)
        return sorted(found)


class POP3(RawPOP3):
    """
    L{RawPOP3} on a socket made in the daemon's namespace, with the login
    dialogues the directory tests use.
    """

    def __init__(self, daemon, tls=PLAIN, timeout=15):
        self.daemon = daemon
        self.timeout = timeout
        self.buf = b""
        self.received = bytearray()
        self.sock = namespaceSocket(getattr(daemon, "namespace", None),
                                    (ADDRESS, port_for(daemon, tls)), timeout)
        if tls == IMPLICIT:
            from tests.integration.clients import HOST, client_context

            self.sock = client_context(daemon).wrap_socket(self.sock, server_hostname=HOST)
        self.greeting = self.readline()
        if tls == "starttls":
            self.starttls()

    def capa(self):
        assert self.command(b"CAPA").startswith(b"+OK")
        return self.multiline()

    def userPass(self, user, password):
        """
        @return: the reply to PASS (or to USER when USER is refused).
        """
        if isinstance(user, str):
            user = user.encode("utf-8")
        if isinstance(password, str):
            password = password.encode("utf-8")
        reply = self.command(b"USER " + user)
        if not reply.startswith(b"+OK"):
            return reply
        return self.command(b"PASS " + password)

    def plain(self, user, password, authzid=""):
        token = b"\x00".join(item.encode("utf-8") if isinstance(item, str) else item
                             for item in (authzid, user, password))
        reply = self.command(b"AUTH PLAIN")
        if not reply.startswith(b"+"):
            return reply
        return self.command(base64.b64encode(token))

    def loginMechanism(self, user, password):
        reply = self.command(b"AUTH LOGIN")
        for part in (user, password):
            if not reply.startswith(b"+"):
                return reply
            if isinstance(part, str):
                part = part.encode("utf-8")
            reply = self.command(base64.b64encode(part))
        return reply

    def apop(self, user, secret):
        import hashlib
        import re

        stamp = re.search(rb"<[^>]*>", self.greeting).group(0)
        digest = hashlib.md5(stamp + secret).hexdigest()
        if isinstance(user, str):
            user = user.encode("utf-8")
        return self.command(b"APOP " + user + b" " + digest.encode())

    def ntlmNegotiate(self, user, password, hostname="localhost", lmCompat=None):
        """
        First half of an NTLM exchange with pyspnego (NTLMv2).

        @param lmCompat: pyspnego's C{LM_COMPAT_LEVEL}; 1 sends NTLMv1.
        @return: the CHALLENGE reply line, or the refusal.
        """
        import spnego

        if lmCompat is not None:
            os.environ["LM_COMPAT_LEVEL"] = str(lmCompat)
        try:
            self._ntlm = spnego.client(user, password, hostname=hostname,
                                       service="pop", protocol="ntlm")
        finally:
            os.environ.pop("LM_COMPAT_LEVEL", None)
        reply = self.command(b"AUTH NTLM")
        if reply == b"+" or reply == b"+ ":
            reply = self.command(base64.b64encode(self._ntlm.step()))
        return reply

    def ntlmAuthenticate(self, challengeReply):
        """Second half: answer the challenge, return the server's verdict."""
        challenge = base64.b64decode(challengeReply[2:])
        return self.command(base64.b64encode(self._ntlm.step(challenge)))

    def ntlm(self, user, password, hostname="localhost", lmCompat=None):
        reply = self.ntlmNegotiate(user, password, hostname, lmCompat)
        if not reply.startswith(b"+ "):
            return reply
        return self.ntlmAuthenticate(reply)

    def quit(self):
        try:
            return self.command(b"QUIT")
        finally:
            self.close()


def login(daemon, how, user, password, tls=IMPLICIT, timeout=15):
    """
    One fresh connection, one login, QUIT.

    @param how: C{"user"}, C{"plain"}, C{"login"}, C{"apop"} or C{"ntlm"}.
    @return: the server's verdict line.
    """
    client = POP3(daemon, tls, timeout=timeout)
    try:
        if how == "user":
            reply = client.userPass(user, password)
        elif how == "plain":
            reply = client.plain(user, password)
        elif how == "login":
            reply = client.loginMechanism(user, password)
        elif how == "apop":
            reply = client.apop(user, password)
        elif how == "ntlm":
            reply = client.ntlm(user, password)
        else:
            raise ValueError(how)
        try:
            client.command(b"QUIT")
        except (OSError, EOFError):
            pass
        return reply
    finally:
        client.close()


def curlLogin(daemon, user, password, loginOptions=None, tls="starttls", timeout=30):
    """
    curl lists the maildrop (C{pop3://} with STLS required, or C{pop3s://}),
    inside the daemon's namespace.

    @return: L{subprocess.CompletedProcess}; returncode 0 = logged in,
        67 = login refused.
    """
    from tests.integration.clients import HOST
    from tests.integration.daemon import require_tool

    exe = require_tool("curl")
    scheme = "pop3s" if tls == IMPLICIT else "pop3"
    port = port_for(daemon, tls)
    argv = [exe, "-sS", "-v", "--max-time", str(timeout), "--resolve",
            f"{HOST}:{port}:{ADDRESS}", "--user", f"{user}:{password}",
            "--cacert", daemon.ca_file]
    if tls != IMPLICIT:
        argv.append("--ssl-reqd")
    if loginOptions:
        argv += ["--login-options", loginOptions]
    argv.append(f"{scheme}://{HOST}:{port}/")
    return daemon.run(argv, timeout=timeout + 10)


def fetchmailLogin(daemon, user, password, workdir, auth="ntlm", timeout=60):
    """
    fetchmail polls the daemon once over STLS (C{sslproto tls1.2+}, the
    daemon's certificate checked), inside the daemon's namespace.

    @param auth: fetchmail's C{auth} keyword; C{ntlm} sends NTLMv1.
    @return: L{subprocess.CompletedProcess}; fetchmail exits 0 (mail came)
        or 1 (no mail) after a login, 3 when the login was refused.
    """
    import textwrap
    from pathlib import Path

    from tests.integration.clients import HOST
    from tests.integration.daemon import require_tool

    exe = require_tool("fetchmail")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rc = workdir / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no bouncemail
        poll {HOST} via {ADDRESS} service {daemon.pop3_port} proto pop3 auth {auth} timeout 30
          user '{user}' there with password '{password}' is 'root' here
          sslproto 'tls1.2+' sslcertck sslcertfile '{daemon.ca_file}' sslcommonname '{HOST}'
          keep fetchall mda '/bin/true'
        """))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(workdir), HOME=str(workdir))
    return daemon.run([exe, "-f", str(rc), "--nosyslog", "--invisible", "-v"],
                      timeout=timeout, env=env)
