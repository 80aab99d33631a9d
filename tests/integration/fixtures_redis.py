"""
A real redis-server for the integration tests, started once per session on
a free loopback port with its files under a temporary directory.

L{RedisServer} runs one redis-server (optionally with C{requirepass} and
TLS only, with a test CA made here) and can pause it (SIGSTOP), resume it
(SIGCONT) and empty it; C{redis_server} and C{redis_tls_server} are the
session fixtures (conftest.py registers them; C{redis_sentinel} a Sentinel
watching the first), C{redis} the per-test view
of the first: running and empty at the start of each test.  In CI a
missing redis-server is a failure, elsewhere a skip.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.integration.processes import terminate

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSWORD = "Redis-Test-Secret-31"


def require_redis():
    if not os.access(REDIS_SERVER, os.X_OK):
        message = "redis-server is not installed (apt package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_tls_files(directory):
    """A test CA and a certificate for 127.0.0.1 / localhost it signs: paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def build(subject, issuer, public, signer, ca, extra=()):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("securepop test redis CA", "securepop test redis CA", ca_key.public_key(),
               ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = build("127.0.0.1", "securepop test redis CA", key.public_key(), ca_key, False, [san])
    paths = {}
    for label, data in (
            ("ca", ca.public_bytes(serialization.Encoding.PEM)),
            ("cert", cert.public_bytes(serialization.Encoding.PEM)),
            ("key", key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))):
        paths[label] = os.path.join(directory, f"{label}.pem")
        with open(paths[label], "wb") as out:
            out.write(data)
        os.chmod(paths[label], 0o600)
    return paths


class RedisServer:
    """One redis-server on 127.0.0.1; C{tls}: TLS only (C{ca_file} signs it)."""

    def __init__(self, directory, password=None, tls=False):
        self.directory = str(directory)
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.process = None
        self.ca_file = None

    @property
    def url(self):
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout=10.0):
        os.makedirs(self.directory, exist_ok=True)
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", os.path.join(self.directory, "redis.log")]
        if self.tls:
            files = make_tls_files(self.directory)
            self.ca_file = files["ca"]
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", files["cert"],
                     "--tls-key-file", files["key"], "--tls-ca-cert-file", files["ca"],
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: " + self.log())
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server not listening on {self.port}")

    def log(self):
        try:
            with open(os.path.join(self.directory, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def command(self, *args):
        """One command over a blocking socket (plain servers only): the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = b""
            if self.password:
                args = ("AUTH", self.password) + args
            for part in [args] if not self.password else [args[:2], args[2:]]:
                out += b"*%d\r\n" % len(part)
                for arg in part:
                    arg = arg if isinstance(arg, bytes) else str(arg).encode()
                    out += b"$%d\r\n%s\r\n" % (len(arg), arg)
            s.sendall(out)
            time.sleep(0.05)
            return s.recv(65536)

    def stop(self):
        if self.process is not None:
            self.resume()
            terminate(self.process)


class SentinelServer:
    """One Redis Sentinel on 127.0.0.1 watching C{master} as C{name}."""

    def __init__(self, directory, master, name="mymaster"):
        self.directory = str(directory)
        self.master = master
        self.name = name
        self.port = free_port()
        self.process = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        os.makedirs(self.directory, exist_ok=True)
        conf = os.path.join(self.directory, "sentinel.conf")
        with open(conf, "w") as out:    # Sentinel rewrites it: its own file
            out.write(f"bind 127.0.0.1\nport {self.port}\ndir {self.directory}\n"
                      f"logfile {os.path.join(self.directory, 'sentinel.log')}\n"
                      f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
                      f"sentinel down-after-milliseconds {self.name} 30000\n")
        self.process = subprocess.Popen([REDIS_SERVER, conf, "--sentinel"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis sentinel exited")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        terminate(self.process)
        raise RuntimeError(f"redis sentinel not listening on {self.port}")

    def stop(self):
        terminate(self.process)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A plain redis-server (no password) for the whole session."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory):
    """A redis-server speaking TLS only, with C{requirepass} (L{PASSWORD})."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), password=PASSWORD, tls=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_sentinel(redis_server, tmp_path_factory):
    """A Sentinel watching L{redis_server} as C{mymaster}."""
    sentinel = SentinelServer(tmp_path_factory.mktemp("sentinel"), redis_server).start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def redis(redis_server):
    """The plain server, running and empty."""
    redis_server.resume()
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server
