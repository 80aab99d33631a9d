"""
The servers the benchmark compares, each with its own files on loopback ports.

One L{Testbed} directory holds what every server shares: one ECDSA P-256
certificate, one set of argon2id hashes (the same strings are written into
securepop's users file and Dovecot's passwd-file, so scheme and cost are
identical), and one Maildir tree that each server gets a hard-linked copy of
(same bytes on disk; each server may rename its own links).

Servers are started pinned to CPU 0 (C{taskset}); the load generator runs on
CPU 1.  Nothing here touches the system's Dovecot or securepop instances.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from argon2 import PasswordHasher

VENV_BIN = Path(sys.executable).parent
TWISTD = str(VENV_BIN / "twistd")
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
HERE = Path(__file__).resolve().parent

#: OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): the same on both sides.
#: A dearer cost only lengthens the cold-cache runs, where it dominates anyway.
HASH_COST = dict(memory_cost=19456, time_cost=2, parallelism=1)
#: Idle-session users only log in once; their hash is cheap so that thousands
#: of cold logins fit in the time budget (it does not change idle memory).
IDLE_HASH_COST = dict(memory_cost=1024, time_cost=1, parallelism=1)
PASSWORD = "bench-Passw0rd"
SERVER_CPU = 0
CLIENT_CPU = 1
CLIENT_ADDRESS = "127.0.0.2"   # Dovecot trusts 127.0.0.1 -> 127.0.0.1 as "secure"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not accept within {timeout}s")


def wait_unix(path, proc, timeout=30.0):
    """Wait until the Unix socket C{path} accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{path} did not accept within {timeout}s")


def session_users(n):
    return [f"u{i:04d}" for i in range(n)]


def retr_users(n):
    return [f"r{i}" for i in range(n)]


def idle_users(n):
    return [f"i{i:05d}" for i in range(n)]


def poll_users(n):
    return [f"p{i:05d}" for i in range(n)]


def sha512_crypt(password):
    """A C{$6$} (SHA512-CRYPT, glibc's default 5000 rounds) hash with its own salt."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def message(size, seed=0):
    """An RFC 5322 message of C{size} bytes with CRLF lines and dotted lines."""
    head = (f"From: bench@example.com\r\nTo: user@example.com\r\n"
            f"Subject: bench {seed}\r\nMessage-ID: <{seed}.{size}@bench>\r\n\r\n").encode()
    line = b".a dotted line that needs stuffing, then filler text 0123456789\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    data = head + body
    return data[:size - 2] + b"\r\n"


class Testbed:
    """Certificate, hashes and Maildirs shared by every server."""

    def __init__(self, root, sessions=64, retr=4, idle=0, small=10 * 1024,
                 large=10 * 1024 * 1024, poll=0):
        self.root = Path(root)
        self.sessions, self.retr, self.idle, self.poll = sessions, retr, idle, poll
        self.small, self.large = small, large
        self.cert = self.root / "cert.pem"
        self.key = self.root / "key.pem"
        self.hashes = {}
        self.crypt_hashes = {}   # SHA512-CRYPT of the same password (Dovecot's other line)

    def build(self):
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if not self.cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(self.key),
                 "-out", str(self.cert), "-days", "30", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60)
            os.chmod(self.key, 0o600)
        # One hash per user (own salt), cached across runs.
        hashfile = self.root / "hashes"
        known = {}
        if hashfile.exists():
            for line in hashfile.read_text().splitlines():
                name, _, h = line.partition(":")
                known[name] = h
        dear, cheap = PasswordHasher(**HASH_COST), PasswordHasher(**IDLE_HASH_COST)
        wanted = [(u, dear) for u in session_users(self.sessions) + retr_users(self.retr)]
        wanted += [(u, cheap) for u in idle_users(self.idle)]
        for name, hasher in wanted:
            self.hashes[name] = known.get(name) or hasher.hash(PASSWORD)
        # Polling users: thousands of them, so one argon2id hash (the same
        # parameters, so the same cost per verification) shared by all.
        shared = None
        for name in poll_users(self.poll):
            shared = shared or known.get(name) or dear.hash(PASSWORD)
            self.hashes[name] = known.get(name) or shared
        hashfile.write_text("".join(f"{n}:{h}\n" for n, h in self.hashes.items()))
        cryptfile = self.root / "crypt-hashes"
        known = {}
        if cryptfile.exists():
            for line in cryptfile.read_text().splitlines():
                name, _, h = line.partition(":")
                known[name] = h
        for name in session_users(self.sessions) + retr_users(self.retr):
            self.crypt_hashes[name] = known.get(name) or sha512_crypt(PASSWORD)
        cryptfile.write_text("".join(f"{n}:{h}\n" for n, h in self.crypt_hashes.items()))
        # Maildirs: one message each; the files are shared by hard links.
        mail = self.root / "mail"
        small = message(self.small, 1)
        large = message(self.large, 2)
        for name in self.hashes:
            md = mail / name / "Maildir"
            if (md / "cur").exists():
                continue
            for sub in ("cur", "new", "tmp"):
                (md / sub).mkdir(parents=True, exist_ok=True)
            if name.startswith("p"):
                (md / "cur" / f"1700000000.{name}.bench:2,S").write_bytes(message(2048, 3))
            elif not name.startswith("i"):
                body = large if name.startswith("r") else small
                (md / "cur" / f"1700000000.{name}.bench:2,S").write_bytes(body)
        return self

    def copy_mail(self, dest, owner=None):
        """A hard-linked copy of the Maildirs (a fresh one per server start)."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        subprocess.run(["cp", "-al", str(self.root / "mail"), str(dest)], check=True)
        if owner is not None:
            subprocess.run(["chown", "-R", f"{owner[0]}:{owner[1]}", str(dest)], check=True)
        return dest


class Server:
    """A started server: its pid(s), ports and how to stop it."""

    name = "server"
    proc = None
    implicit_port = stls_port = None

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


SECUREPOP_CONFIG = """\
[server]
hostname = "localhost"
data_dir = "{data}"
idle_timeout_login = 60
idle_timeout = 900
workers = "{workers}"
[[listen]]
endpoint = "tcp:{stls}:interface=127.0.0.1:backlog=1024"
tls = "starttls"
[[listen]]
endpoint = "tcp:{implicit}:interface=127.0.0.1:backlog=1024"
tls = "implicit"
[tls]
certificate = "{cert}"
key = "{key}"
[auth]
source = "{source}"
mechanisms = ["PLAIN"]
cache_ttl = {cache_ttl}
failure_delay = 0.1
failure_delay_max = 0.5
{per_ip}[access]
reverse_dns = false
max_connections = 20000
max_connections_per_ip = 20000
max_connections_per_user = 4
{directory}{metrics}"""


class SecurePOP(Server):
    """C{twistd -n securepop} with the testbed's users, mail and certificate."""

    name = "securepop"

    def __init__(self, testbed, cache=True, workers=1, checkout=None, tag="securepop",
                 directory=None, metrics=False, lmtp_socket=None):
        self.testbed = testbed
        self.lmtp_socket = lmtp_socket  # a path: also an [[lmtp]] listener there
        # True: one hour; False: off (cold); a number: that TTL in seconds.
        self.cache = cache
        self.metrics = metrics          # serve [metrics] on metrics_port
        self.metrics_port = None
        self.directory = directory  # a bench.directory.BenchDirectory: users in slapd
        self.workers = workers
        self.checkout = Path(checkout) if checkout else HERE.parent
        self.dir = testbed.root / tag
        self.data = self.dir / "data"

    def start(self):
        self.dir.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True, mode=0o700)
        shutil.copy(self.testbed.cert, self.dir / "cert.pem")
        shutil.copy(self.testbed.key, self.dir / "key.pem")
        os.chmod(self.dir / "key.pem", 0o600)
        users = self.data / "users"
        users.write_text("".join(f"{n}:{h}\n" for n, h in sorted(self.testbed.hashes.items())))
        os.chmod(users, 0o600)
        self.testbed.copy_mail(self.data / "mail")
        self.stls_port, self.implicit_port = free_port(), free_port()
        conf = self.dir / "securepop.toml"
        if self.cache is True:
            ttl = 3600.0
        elif self.cache is False:
            ttl = 0
        else:
            ttl = float(self.cache)
        metrics = ""
        if self.metrics:
            self.metrics_port = free_port()
            metrics = (f'[metrics]\nendpoint = "tcp:{self.metrics_port}'
                       ':interface=127.0.0.1"\n')
        # The load generator is one address standing for many clients: a
        # checkout with the per-address verification bound gets it lifted
        # to the server-wide queue (256), else 50 concurrent cold logins
        # from 127.0.0.2 would mostly be refused [SYS/TEMP].
        per_ip = ""
        if "max_verifications_per_ip" in (self.checkout / "securepop" / "config.py").read_text():
            per_ip = "max_verifications_per_ip = 256\n"
        conf.write_text(SECUREPOP_CONFIG.format(metrics=metrics, per_ip=per_ip,
            data=self.data, workers=self.workers, stls=self.stls_port,
            implicit=self.implicit_port, cert=self.dir / "cert.pem",
            key=self.dir / "key.pem", cache_ttl=ttl,
            source="ldap" if self.directory else "file",
            directory=self.directory.securepop_auth() if self.directory else ""))
        if self.lmtp_socket:
            with open(conf, "a") as f:
                f.write(f'[[lmtp]]\nendpoint = "unix:{self.lmtp_socket}"\nmode = 0o600\n')
        self.log = open(self.dir / "twistd.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(self.checkout))
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), TWISTD, "-n", "--pidfile=", "securepop",
             "--config", str(conf)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir, env=env,
            start_new_session=True)
        wait_port(self.stls_port, self.proc)
        wait_port(self.implicit_port, self.proc)
        if self.lmtp_socket:
            wait_unix(self.lmtp_socket, self.proc)
        return self

    def pids(self):
        return session_pids(self.proc.pid)

    def scrape(self):
        """The daemon's Prometheus counters: {sample name with labels: value}."""
        import urllib.request
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    pass
        return values


class FloorServer(Server):
    """L{bench.floor_server}: greeting and QUIT only (Python + Twisted + TLS)."""

    name = "floor"

    def __init__(self, testbed):
        self.testbed = testbed

    def start(self):
        self.stls_port, self.implicit_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), sys.executable, str(HERE / "floor_server.py"),
             "--cert", str(self.testbed.cert), "--key", str(self.testbed.key),
             "--implicit", str(self.implicit_port), "--stls", str(self.stls_port)],
            start_new_session=True)
        wait_port(self.implicit_port, self.proc)
        wait_port(self.stls_port, self.proc)
        return self


#: Dovecot modes, as in the issue.  N = 1: the server has one core.
#: "best": issue 23's best configuration, pop3-login and pop3 both reused
#: (service_count = 0), process_min_avail = the cores the server may use
#: (C{BEST_CORES}), login client_limit covering every concurrent session.
BEST_CORES = 1
DOVECOT_MODES = {
    "default": "",
    "hp": ("service pop3-login {\n  service_count = 0\n  process_min_avail = 1\n"
           "  client_limit = 10000\n  vsz_limit = 1G\n}\n"),
    "hp+reuse": ("service pop3-login {\n  service_count = 0\n  process_min_avail = 1\n"
                 "  client_limit = 10000\n  vsz_limit = 1G\n}\n"
                 "service pop3 {\n  service_count = 0\n  process_min_avail = 1\n}\n"),
    "best": ("service pop3-login {{\n  service_count = 0\n  process_min_avail = {cores}\n"
             "  client_limit = 1000\n  vsz_limit = 1G\n}}\n"
             "service pop3 {{\n  service_count = 0\n  process_min_avail = {cores}\n"
             "  client_limit = 1\n}}\n"),
}


def dovecot_mode_text(mode, cores=None):
    """The service blocks of a mode (C{best} with its core count)."""
    text = DOVECOT_MODES[mode]
    return text.format(cores=cores or BEST_CORES) if mode == "best" else text


DOVECOT_CONFIG = """\
# written by bench/servers.py
protocols = {protocols}
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = bench-{mode}
log_path = {d}/dovecot.log
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
first_valid_uid = 1
first_valid_gid = 1
default_process_limit = 20000
default_client_limit = 40000
default_vsz_limit = 1G
mail_max_userip_connections = 100
ssl = required
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain
auth_cache_size = {cache_size}
auth_cache_ttl = 1 hour
auth_cache_negative_ttl = 0
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
{passdb}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {stls}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {implicit}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  client_limit = 40000
}}
{extra}"""

#: Dovecot's LMTP on a Unix socket (C{--lmtp}): recipients are bare user
#: names or C{user@localhost}; %Ln drops the domain so that the passwd-file
#: (and the static userdb's home) see the same names as POP3 logins.
DOVECOT_LMTP = """\
auth_username_format = %Ln
postmaster_address = postmaster@localhost
service lmtp {{
  unix_listener {path} {{
    mode = 0600
  }}
}}
"""


PASSWD_FILE_PASSDB = """passdb {{
  driver = passwd-file
  # %d (the empty domain) makes passwd-file use the auth cache: Dovecot
  # caches only passdbs whose path has a variable in it.
  args = username_format=%u {d}/passwd%d
}}"""

LDAP_PASSDB = """passdb {{
  driver = ldap
  args = {d}/dovecot-ldap.conf.ext
}}"""


class Dovecot(Server):
    """Debian's Dovecot in one of L{DOVECOT_MODES}, on its own config file."""

    name = "dovecot"

    def __init__(self, testbed, mode="hp", cache=True, directory=None, scheme=None,
                 cores=None, lmtp_socket=None):
        self.testbed = testbed
        self.lmtp_socket = lmtp_socket  # a path: also Dovecot's LMTP there
        self.mode = mode
        self.cache = cache
        self.directory = directory
        # None: argon2id cold, {SHA1} warm (see stored()); else "argon2id" or
        # "sha512-crypt" whatever the cache.
        self.scheme = scheme
        self.cores = cores
        suffix = f"-{scheme}" if scheme else ""
        self.name = f"dovecot-{mode}{suffix}"
        self.dir = testbed.root / f"dovecot-{mode.replace('+', '-')}{suffix}"

    def start(self):
        d = self.dir
        (d / "run").mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        os.chmod(d, 0o755)
        shutil.copy(self.testbed.cert, d / "cert.pem")
        shutil.copy(self.testbed.key, d / "key.pem")
        (d / "passwd").write_text("".join(
            f"{n}:{self.stored(h, n)}::::::\n"
            for n, h in sorted(self.testbed.hashes.items())))
        nobody = pwd.getpwnam("nobody")
        self.testbed.copy_mail(d / "mail", (nobody.pw_uid, nobody.pw_gid))
        self.stls_port, self.implicit_port = free_port(), free_port()
        conf = d / "dovecot.conf"
        if self.directory:
            self.directory.dovecot_ldap_conf(d / "dovecot-ldap.conf.ext")
            passdb = LDAP_PASSDB.format(d=d)
        else:
            passdb = PASSWD_FILE_PASSDB.format(d=d)
        extra = dovecot_mode_text(self.mode, self.cores)
        if self.lmtp_socket:
            extra += DOVECOT_LMTP.format(path=self.lmtp_socket)
        conf.write_text(DOVECOT_CONFIG.format(passdb=passdb,
            protocols="pop3 lmtp" if self.lmtp_socket else "pop3",
            d=d, mode=self.dir.name.removeprefix("dovecot-"), uid=nobody.pw_uid, gid=nobody.pw_gid,
            stls=self.stls_port, implicit=self.implicit_port,
            cache_size="64M" if self.cache else "0",
            extra=extra))
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), DOVECOT, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.stls_port, self.proc)
        wait_port(self.implicit_port, self.proc)
        if self.lmtp_socket:
            wait_unix(self.lmtp_socket, self.proc)
        time.sleep(0.5)   # process_min_avail processes
        return self

    def stored(self, argon2_hash, name=None):
        """
        The passwd-file field.  Cold: the shared argon2id hash.  Warm: what
        Dovecot's auth cache would verify against ({SHA1} of the password,
        its CACHED_PASSWORD_SCHEME), because Dovecot 2.3.19 did not serve
        these passwd-file logins from its cache (auth_debug shows a passdb
        lookup and an argon2 verify on every login, auth_cache_size = 64M).
        """
        if self.scheme == "sha512-crypt" and name in self.testbed.crypt_hashes:
            return "{SHA512-CRYPT}" + self.testbed.crypt_hashes[name]
        if self.scheme is not None or not self.cache:
            return "{ARGON2ID}" + argon2_hash
        import base64
        import hashlib
        return "{SHA1}" + base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()

    def pids(self):
        return session_pids(self.proc.pid)


# -- /proc accounting ----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def session_pids(sid):
    """Every live process of session C{sid} (the server and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 (session), after pid and comm
            pids.append(int(entry))
    return pids


def _stat_fields(pid):
    raw = Path(f"/proc/{pid}/stat").read_text()
    # "pid (comm) state ppid pgrp session ..." - comm may hold spaces
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(server):
    """
    utime+stime of every live server process, plus the reaped children's
    times the session leader has collected (Dovecot's per-session processes).
    """
    total = 0
    for pid in server.pids():
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])          # utime, stime
        if pid == server.proc.pid:
            total += int(f[13]) + int(f[14])      # cutime, cstime
    return total / _TICK


def pss_bytes(server):
    """Sum of PSS over the server's processes (/proc/PID/smaps_rollup)."""
    total = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total
