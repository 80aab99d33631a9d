"""
HAProxy in front of a test server, sending the PROXY protocol.

Plain helpers, no pytest here (the test modules register the fixtures):
L{HAProxyServer} runs one haproxy in the foreground (C{-db}) with any
number of TCP frontends, each forwarding to a backend with
C{send-proxy} (v1), C{send-proxy-v2} or no header, from a chosen source
address.  L{PeerReportingFactory} is a tiny server protocol that greets
with the peer address it saw in C{connectionMade} and records what it
received, and L{talk} is a blocking client bound to a chosen 127.0.0.x
source address (run it in a thread from reactor tests).
"""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from twisted.internet import protocol

from tests.integration.processes import terminate

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PROXY_MODES = {"v1": "send-proxy", "v2": "send-proxy-v2", "none": ""}


def missingTools():
    """@return: what these helpers need and this machine lacks."""
    return [] if os.access(HAPROXY, os.X_OK) else ["haproxy (apt package haproxy)"]


def freePort(host="127.0.0.1"):
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class Frontend:
    """
    One haproxy frontend: listens on C{port}, forwards to
    C{backendHost:backendPort} from C{source} with the given C{proxy}
    header mode (C{"v1"}, C{"v2"} or C{"none"}).
    """

    name: str
    backendPort: int
    proxy: str = "v2"
    source: str = "127.0.0.1"
    backendHost: str = "127.0.0.1"
    port: int = field(default_factory=freePort)


class HAProxyServer:
    """One haproxy process with the given frontends."""

    def __init__(self, directory, frontends):
        self.directory = str(directory)
        self.frontends = {f.name: f for f in frontends}
        self.configPath = os.path.join(self.directory, "haproxy.cfg")
        self.process = None

    def port(self, name):
        return self.frontends[name].port

    def writeConfig(self):
        os.makedirs(self.directory, exist_ok=True)
        lines = [
            "global",
            "    maxconn 4096",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
        ]
        for f in self.frontends.values():
            option = PROXY_MODES[f.proxy]
            lines += [
                f"frontend fe_{f.name}",
                f"    bind 127.0.0.1:{f.port}",
                f"    default_backend be_{f.name}",
                f"backend be_{f.name}",
                f"    server s1 {f.backendHost}:{f.backendPort} {option} source {f.source}",
            ]
        with open(self.configPath, "w") as out:
            out.write("\n".join(lines) + "\n")

    def start(self, timeout=10.0):
        self.writeConfig()
        check = subprocess.run(
            [HAPROXY, "-c", "-f", self.configPath], capture_output=True, text=True
        )
        if check.returncode:
            raise RuntimeError(f"haproxy config rejected: {check.stdout}{check.stderr}")
        self.stderrPath = os.path.join(self.directory, "stderr")
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", self.configPath],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderrPath, "wb"),
        )
        deadline = time.monotonic() + timeout
        pending = {f.port for f in self.frontends.values()}
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("haproxy exited: " + open(self.stderrPath).read())
            for port in list(pending):
                with socket.socket() as probe:
                    probe.settimeout(0.2)
                    # probe with connect on the listening socket only; no data
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        pending.discard(port)
            time.sleep(0.05)
        if pending:
            self.stop()
            raise RuntimeError(f"haproxy not listening on {pending}")
        return self

    def stop(self):
        terminate(self.process)
        self.process = None


class PeerReporter(protocol.Protocol):
    """
    Greets with the peer it sees in connectionMade (what a POP3 greeting
    and the access policy would see), and answers each line with its
    length, recording the raw bytes received.
    """

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.record = {"peer": peer.host, "port": peer.port, "data": b""}
        self.factory.records.append(self.record)
        self.transport.write(f"+OK peer={peer.host}\r\n".encode())
        self._buffer = b""

    def dataReceived(self, data):
        self.record["data"] += data
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.transport.write(b"+OK got %d\r\n" % len(line))


class PeerReportingFactory(protocol.Factory):
    protocol = PeerReporter

    def __init__(self):
        self.records = []


def talk(port, source="127.0.0.1", send=b"HELLO\r\n", host="127.0.0.1", timeout=5.0,
         sendFirst=b""):
    """
    Blocking client: connect from C{source}, send C{sendFirst} (before any
    greeting), read the greeting line, send C{send}, read one reply line,
    close.

    @return: (greeting, reply) as bytes without line ends; each is
        C{b""} when the server closed (or reset) first.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, port))
        if sendFirst:
            sock.sendall(sendFirst)
        reader = sock.makefile("rb")
        try:
            greeting = reader.readline().rstrip(b"\r\n")
        except ConnectionResetError:  # closed with RST (abortConnection)
            return b"", b""
        reply = b""
        if greeting and send:
            sock.sendall(send)
            reply = reader.readline().rstrip(b"\r\n")
        return greeting, reply
