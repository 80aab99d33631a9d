"""
A throwaway dnsmasq with fixed PTR and A records, for integration tests.

Plain helpers, no pytest here (the test modules register the fixtures):
L{DnsmasqServer} runs one dnsmasq in the foreground on a free loopback
port, never forwarding anywhere, logging every query so tests can count
them.  Records (zone example.test, reverse zone 127.in-addr.arpa)::

  trusted.example.test  A 127.0.0.5, PTR 127.0.0.5 -> trusted  (confirmed)
  evil.example.test     PTR 127.0.0.6 -> evil, but A 127.0.0.66  (forged PTR)
  nofwd.example.test    PTR 127.0.0.7 -> nofwd, no A record    (unconfirmed)
  127.0.0.8             no PTR at all                          (NXDOMAIN)

Local records are served with C{local-ttl} seconds of TTL (dnsmasq's
default is 0, which no real zone uses).
"""

import os
import re
import shutil
import socket
import subprocess
import time

from twisted.names import dns

from tests.integration.processes import terminate

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

TRUSTED = ("trusted.example.test", "127.0.0.5")
EVIL = ("evil.example.test", "127.0.0.6")
EVIL_A = "127.0.0.66"
NOFWD = ("nofwd.example.test", "127.0.0.7")
NO_PTR = "127.0.0.8"


def missingTools():
    """@return: what these helpers need and this machine lacks."""
    return [] if os.access(DNSMASQ, os.X_OK) else ["dnsmasq (apt package dnsmasq)"]


def freeUDPAndTCPPort(host="127.0.0.1"):
    """A port free for both UDP and TCP on C{host} (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def query(port, name, qtype, host="127.0.0.1", timeout=1.0):
    """
    One blocking DNS query (for readiness checks outside the reactor).

    @return: the answer L{dns.Message}.
    """
    message = dns.Message(id=4242, recDes=1)
    message.queries = [dns.Query(name, qtype, dns.IN)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message.toStr(), (host, port))
        data, _ = sock.recvfrom(4096)
    answer = dns.Message()
    answer.fromStr(data)
    return answer


class DnsmasqServer:
    """
    One dnsmasq on 127.0.0.1:C{port}, with the records of the module
    docstring; C{start}, C{stop}, and L{queryCount} over its query log.
    """

    def __init__(self, directory, port=None, localTTL=600):
        self.directory = str(directory)
        self.port = port or freeUDPAndTCPPort()
        self.localTTL = localTTL
        self.logPath = os.path.join(self.directory, "dnsmasq.log")
        self.configPath = os.path.join(self.directory, "dnsmasq.conf")
        self.process = None

    @property
    def address(self):
        """C{"127.0.0.1:PORT"}, as the access configuration writes a server."""
        return f"127.0.0.1:{self.port}"

    def writeConfig(self):
        os.makedirs(self.directory, exist_ok=True)
        os.chmod(self.directory, 0o777)  # dnsmasq drops root before logging
        with open(self.configPath, "w") as f:
            f.write(
                f"""\
port={self.port}
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
no-poll
local=/example.test/
local=/127.in-addr.arpa/
local-ttl={self.localTTL}
neg-ttl={self.localTTL}
host-record={TRUSTED[0]},{TRUSTED[1]}
ptr-record=6.0.0.127.in-addr.arpa,{EVIL[0]}
address=/{EVIL[0]}/{EVIL_A}
ptr-record=7.0.0.127.in-addr.arpa,{NOFWD[0]}
log-queries
log-facility={self.logPath}
"""
            )

    def start(self, timeout=10.0):
        self.writeConfig()
        self.process = subprocess.Popen(
            [DNSMASQ, "-k", "-C", self.configPath, "--pid-file="],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.directory, "stderr"), "wb"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.stderr()}")
            try:
                answer = query(self.port, "5.0.0.127.in-addr.arpa", dns.PTR, timeout=0.2)
            except OSError:
                time.sleep(0.05)
                continue
            if answer.answers:
                return self
        self.stop()
        raise RuntimeError(f"dnsmasq not ready within {timeout} s: {self.stderr()}")

    def stderr(self):
        try:
            with open(os.path.join(self.directory, "stderr"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        terminate(self.process)
        self.process = None

    def queryCount(self, name, qtype="PTR"):
        """
        How many C{qtype} queries for C{name} dnsmasq has logged so far.
        """
        try:
            with open(self.logPath, errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return 0
        pattern = re.compile(
            rf"query\[{re.escape(qtype)}\] {re.escape(name)} from ", re.IGNORECASE
        )
        return len(pattern.findall(text))

    def waitForQueryCount(self, name, qtype="PTR", atLeast=1, settle=0.5, timeout=5.0):
        """
        Poll the log until at least C{atLeast} queries are logged and the
        count has not changed for C{settle} seconds (dnsmasq writes its log
        asynchronously).  Blocking: call from a thread in reactor tests.
        """
        deadline = time.monotonic() + timeout
        last, stableSince = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.queryCount(name, qtype)
            if count != last:
                last, stableSince = count, time.monotonic()
            elif count >= atLeast and time.monotonic() - stableSince >= settle:
                break
            time.sleep(0.05)
        return last
