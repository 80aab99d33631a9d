"""
Run the real securepop daemon (C{twistd -n securepop}) as a subprocess.

Integration tests talk to it with real clients over loopback.  A L{Daemon}
writes its own configuration into a temporary data directory, picks free
ports, waits until every listener accepts, and keeps the log for assertions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TWISTD = str(VENV_BIN / "twistd")
SECUREPOP = str(VENV_BIN / "securepop")


def require_tool(name):
    """The path of an external tool; in CI a missing tool fails the test."""
    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"required tool {name!r} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def free_port(host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host, port, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept within {timeout}s")


#: The two loopback listeners every test daemon has (STLS and implicit TLS).
LISTENERS = """\
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1"
tls = "implicit"
"""

DEFAULT_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 30
""" + LISTENERS + """[auth]
mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "NTLM", "CRAM-MD5"]
apop = true
failure_delay = 0.2
failure_delay_max = 1.0
max_attempts = 3
[access]
max_connections_per_ip = 200
"""


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Poll C{predicate} until it is true (True) or C{timeout} passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class Daemon:
    """
    One securepop process.

    @param config: TOML text; C{{data_dir}}, C{{pop3_port}}, C{{pop3s_port}},
        C{{port3}} and C{{port4}} are filled in.
    """

    def __init__(self, tmp_path, config=DEFAULT_CONFIG, name="securepop", env=None,
                 wrapper=(), twistd_args=()):
        self.dir = Path(tmp_path) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.ports = {k: free_port() for k in ("pop3_port", "pop3s_port", "port3", "port4")}
        self.pop3_port = self.ports["pop3_port"]
        self.pop3s_port = self.ports["pop3s_port"]
        self.config_path = self.dir / "securepop.toml"
        self.config_text = textwrap.dedent(config).format(data_dir=self.data_dir, **self.ports)
        self.config_path.write_text(self.config_text)
        self.log_path = self.dir / "twistd.log"
        self.env = dict(os.environ, **(env or {}))
        self.wrapper = list(wrapper)
        self.twistd_args = list(twistd_args)   # e.g. --logfile=...
        self.proc = None

    # -- lifecycle ------------------------------------------------------------

    def start(self, wait_ports=None):
        for attempt in range(3):
            start_of_log = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                self.wrapper + [TWISTD, "-n", "--pidfile=", *self.twistd_args, "securepop",
                                "--config", str(self.config_path)],
                stdout=self.log_file, stderr=subprocess.STDOUT, cwd=self.dir, env=self.env,
            )
            try:
                for port in wait_ports or (self.pop3_port, self.pop3s_port):
                    wait_for_port("127.0.0.1", port, proc=self.proc)
                return self
            except RuntimeError as e:
                self.log_file.close()
                self.proc = None
                printed = self.log()[start_of_log:]
                if not (wait_ports is None and self._new_ports_if_taken(printed)) \
                        or attempt == 2:
                    raise RuntimeError(f"{e}; it printed:\n{printed[-3000:]}") from None

    def _new_ports_if_taken(self, printed):
        """
        A port picked by L{free_port} was taken before the daemon bound it
        (another process's outgoing connection, say): pick new ones, if the
        configuration file is still the one written here.  True if done.
        """
        if "Address already in use" not in printed or \
                self.config_path.read_text() != self.config_text:
            return False
        old = dict(self.ports)
        self.ports = {k: free_port() for k in old}
        self.pop3_port, self.pop3s_port = self.ports["pop3_port"], self.ports["pop3s_port"]
        for key, port in old.items():
            self.config_text = self.config_text.replace(str(port), str(self.ports[key]))
        self.config_path.write_text(self.config_text)
        return True

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def restart(self):
        self.stop()
        return self.start()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text, timeout=10.0, start=0):
        return wait_for(lambda: text in self.log()[start:], timeout)

    # -- data -------------------------------------------------------------------

    def cli(self, *args, input=None, check=True):
        return subprocess.run(
            [SECUREPOP, "--config", str(self.config_path), *args],
            input=input, capture_output=True, check=check, cwd=self.dir, env=self.env,
        )

    def add_user(self, name, password):
        self.cli("user", "add", name, input=(password + "\n").encode())

    def deliver(self, name, data: bytes):
        out = self.cli("deliver", name, input=data).stdout.decode()
        return out.split()[-1]

    def maildir(self, name):
        return self.data_dir / "mail" / name / "Maildir"

    def messages(self, name):
        """Names of the stored messages (new/ and cur/)."""
        md = self.maildir(name)
        return sorted(p.name for sub in ("new", "cur") if (md / sub).exists()
                      for p in (md / sub).iterdir() if p.is_file())

    @property
    def ca_file(self):
        """The self-signed certificate of the embedded default (the test CA)."""
        return str(self.data_dir / "tls" / "cert.pem")
