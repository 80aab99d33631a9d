"""
Throwaway Dovecot POP3 servers on loopback, for tests and the benchmark.

Plain helpers (no pytest in here) so that any test module or the benchmark can
start one: L{DovecotServer} writes its own configuration file, a passwd-file
user, a Maildir and a self-signed certificate into a temporary directory and
runs C{dovecot -F -c FILE}.  The system instance is never touched: base_dir,
state_dir and logs all live in that directory.

Dovecot treats a connection whose client address equals the server address
(127.0.0.1 to 127.0.0.1) as secure, and then allows plaintext logins
without TLS whatever C{disable_plaintext_auth} says.  Clients that should be
seen as remote must connect from another loopback address (bind to
127.0.0.2 before connecting; the server listens on 127.0.0.1).
"""

import os
import grp
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def dovecotAvailable():
    """
    @return: True when the dovecot binary (dovecot-core + dovecot-pop3d) and
        openssl are installed.
    """
    return (
        os.access(DOVECOT, os.X_OK)
        and os.access(OPENSSL, os.X_OK)
        and os.path.exists("/usr/lib/dovecot/pop3")
    )


def freePort(host="127.0.0.1"):
    """
    @return: a TCP port that was free on C{host} a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def makeSelfSignedCertificate(directory, hostname="localhost",
                              ipAddress="127.0.0.1", keyType="rsa:2048",
                              days=30):
    """
    Write C{cert.pem} and C{key.pem} (self-signed, SAN = host name and IP).

    @param keyType: an C{openssl req -newkey} argument, e.g. C{rsa:1024} to
        make a deliberately weak key.
    @return: (certificate path, key path)
    """
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", keyType, "-nodes",
         "-keyout", key, "-out", cert, "-days", str(days),
         "-subj", f"/CN={hostname}",
         "-addext", f"subjectAltName=DNS:{hostname},IP:{ipAddress}"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=60,
    )
    os.chmod(key, 0o644)  # dovecot reads it as root before dropping; tests only
    return cert, key


@dataclass(frozen=True)
class DovecotMode:
    """
    How a test Dovecot is configured.

    @ivar ssl: Dovecot's C{ssl} setting: C{"required"}, C{"yes"} or C{"no"}.
    @ivar disablePlaintextAuth: C{disable_plaintext_auth}.
    @ivar mechanisms: C{auth_mechanisms}.
    @ivar minProtocol: C{ssl_min_protocol} (e.g. C{"TLSv1"} for a legacy one).
    @ivar cipherList: C{ssl_cipher_list}, or None for Dovecot's default.
    @ivar implicitTLS: also listen for pop3s (implicit TLS).
    """

    ssl: str = "required"
    disablePlaintextAuth: bool = True
    mechanisms: tuple = ("plain", "login")
    minProtocol: str = "TLSv1.2"
    cipherList: str = None
    implicitTLS: bool = True
    extra: str = ""


SECURE = DovecotMode()
INSECURE = DovecotMode(ssl="no", disablePlaintextAuth=False)
LEGACY_TLS = DovecotMode(
    ssl="yes", disablePlaintextAuth=True, minProtocol="TLSv1",
    cipherList="ALL:eNULL:@SECLEVEL=0",
)


@dataclass
class DovecotServer:
    """
    One running Dovecot POP3 instance on loopback ports.

    Use L{start} / L{stop} (or as a context manager).

    @ivar host: loopback address it listens on.
    @ivar popPort: the cleartext/STLS port (0 = pick a free one).
    @ivar popsPort: the implicit TLS port (when the mode has it).
    @ivar users: mapping user name -> password (passwd-file, PLAIN scheme).
    """

    mode: DovecotMode = SECURE
    host: str = "127.0.0.1"
    popPort: int = 0
    popsPort: int = 0
    users: dict = field(default_factory=lambda: {"alice": "wonderland-7"})
    directory: str = None
    hostname: str = "localhost"
    process: subprocess.Popen = None

    def _paths(self):
        d = self.directory
        return {
            "base": os.path.join(d, "run"),
            "state": os.path.join(d, "state"),
            "home": os.path.join(d, "home"),
            "conf": os.path.join(d, "dovecot.conf"),
            "passwd": os.path.join(d, "passwd"),
            "log": os.path.join(d, "dovecot.log"),
        }

    def _accounts(self):
        """
        Which system accounts run Dovecot's processes and own the mail: the
        packaged dovecot/dovenull users when we are root, else ourselves.
        """
        if os.geteuid() == 0:
            mail = pwd.getpwnam("nobody")
            return "dovenull", "dovecot", "dovecot", mail.pw_uid, mail.pw_gid
        me = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        return me, me, group, os.geteuid(), os.getegid()

    def writeConfiguration(self):
        """
        Create the directory tree, certificate, users and dovecot.conf.

        @return: the path of dovecot.conf.
        """
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="securepop-dovecot-")
            self._ownDirectory = True
        os.chmod(self.directory, 0o755)
        p = self._paths()
        loginUser, internalUser, internalGroup, mailUid, mailGid = self._accounts()
        for name in ("base", "state", "home"):
            os.makedirs(p[name], exist_ok=True)
        os.chmod(p["base"], 0o755)
        self.certificate, self.key = makeSelfSignedCertificate(
            self.directory, self.hostname, self.host)
        with open(p["passwd"], "w") as f:
            for user, password in self.users.items():
                f.write(f"{user}:{{PLAIN}}{password}::::::\n")
        for user in self.users:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(p["home"], user, "Maildir", sub),
                            exist_ok=True)
        for root, dirs, files in os.walk(p["home"]):
            os.chown(root, mailUid, mailGid)
        if not self.popPort:
            self.popPort = freePort(self.host)
        if self.mode.implicitTLS and self.mode.ssl != "no" and not self.popsPort:
            self.popsPort = freePort(self.host)
        m = self.mode
        sslLines = ""
        if m.ssl != "no":
            sslLines = (
                f"ssl_cert = <{self.certificate}\n"
                f"ssl_key = <{self.key}\n"
                f"ssl_min_protocol = {m.minProtocol}\n"
            )
            if m.cipherList:
                sslLines += f"ssl_cipher_list = {m.cipherList}\n"
        popsListener = ""
        if self.popsPort:
            popsListener = (
                f"  inet_listener pop3s {{\n    address = {self.host}\n"
                f"    port = {self.popsPort}\n    ssl = yes\n  }}\n"
            )
        # Without root, Dovecot cannot chroot its login and anvil processes.
        chroot = "" if os.geteuid() == 0 else "  chroot =\n"
        anvil = "" if os.geteuid() == 0 else "service anvil {\n  chroot =\n}\n"
        conf = f"""\
# written by tests/integration/fixtures_dovecot.py
protocols = pop3
listen = {self.host}
base_dir = {p['base']}
state_dir = {p['state']}
instance_name = securepop-test-{os.path.basename(self.directory)}
log_path = {p['log']}
default_login_user = {loginUser}
default_internal_user = {internalUser}
default_internal_group = {internalGroup}
first_valid_uid = {min(mailUid, 1)}
first_valid_gid = {min(mailGid, 1)}
ssl = {m.ssl}
{sslLines}disable_plaintext_auth = {'yes' if m.disablePlaintextAuth else 'no'}
auth_mechanisms = {' '.join(m.mechanisms)}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {p['passwd']}
}}
userdb {{
  driver = static
  args = uid={mailUid} gid={mailGid} home={p['home']}/%u
}}
service pop3-login {{
{chroot}  inet_listener pop3 {{
    address = {self.host}
    port = {self.popPort}
  }}
{popsListener}}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{anvil}{m.extra}
"""
        with open(p["conf"], "w") as f:
            f.write(conf)
        return p["conf"]

    def start(self, timeout=20.0):
        """
        Write the configuration and start Dovecot in the foreground; return
        once both ports accept connections.

        @raise RuntimeError: with Dovecot's log when it does not come up.
        """
        conf = self.writeConfiguration()
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", conf],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        ports = [port for port in (self.popPort, self.popsPort) if port]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if all(self._accepts(port) for port in ports):
                return self
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"dovecot did not start:\n{log}")

    def _accepts(self, port):
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as s:
                s.settimeout(2.0)
                return s.recv(4) != b"" if port == self.popPort else True
        except OSError:
            return False

    def log(self):
        """
        @return: Dovecot's log file and console output so far (str).
        """
        text = ""
        try:
            with open(self._paths()["log"], errors="replace") as f:
                text = f.read()
        except OSError:
            pass
        return text

    def stop(self, timeout=10.0):
        """
        Stop the master process (SIGTERM, then SIGKILL) and remove the
        directory when L{writeConfiguration} made it.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()
        self.process = None
        if getattr(self, "_ownDirectory", False) and os.path.isdir(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)

    def deliver(self, user, message, name=None):
        """
        Put one message (bytes) into C{user}'s Maildir/new.
        """
        home = self._paths()["home"]
        name = name or f"{time.time_ns()}.test.localhost"
        path = os.path.join(home, user, "Maildir", "new", name)
        with open(path, "wb") as f:
            f.write(message)
        st = os.stat(os.path.join(home, user, "Maildir"))
        os.chown(path, st.st_uid, st.st_gid)
        return path

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
