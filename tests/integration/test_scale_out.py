"""
The two-node reference deployment (etc/scale-out/, docs/scale-out.rst) on
loopback: the reference haproxy.cfg (its frontends, backends and health
checks; addresses mapped to loopback ports) in front of two real daemons on
one data directory, with PROXY v2 on the STLS and the implicit-TLS
listeners.  A login through the proxy works on both nodes and both
listeners; the nodes' rules and logs see the client's address, not the
proxy's; the proxy's checks see both nodes up, and a stopped node is taken
out while the other serves on.  The nodes' C{[state]} is the
C{state_section} fixture, one redis-server as in the reference: the
per-address limit holds across both nodes.  The shipped files themselves
are valid (haproxy -c, the node files load).
"""

from __future__ import annotations

import csv
import io
import socket
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from securepop import config
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import LISTENERS, Daemon, wait_for
from tests.integration.fixtures_haproxy import HAPROXY, Frontend, HAProxyServer
from tests.integration.test_access_daemon import SourcePOP3, SourcePOP3SSL, connect, readAll
from tests.integration.test_access_daemon_proxy import requireTools

REFERENCE = Path(__file__).resolve().parents[2] / "etc" / "scale-out"
PROXY = "127.0.0.1"       # haproxy's source towards the nodes: their trusted_proxies
CLIENT = "127.0.0.3"      # a client the rules let in
DECLINED = "127.0.0.2"    # a client the rules decline
DECLINE_LINE = b"-ERR [SYS/PERM] Connection declined by access policy"

NODE_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{shared}"
idle_timeout_login = 30
shutdown_grace = 2.0
""" + LISTENERS + """[auth]
mechanisms = ["PLAIN"]
failure_delay = 0.2
failure_delay_max = 1.0
[access]
mode = "deny-listed"
rules = ["{declined}"]
trusted_proxies = ["{proxy}/32"]
max_connections_per_ip = 4
[mail]
lock = "flock"
"""


@pytest.fixture(scope="module")
def state_section(redis_server):
    """The nodes' C{[state]} (TOML text): one redis-server, as in the reference."""
    return ("[state]\n"
            'backend = "redis"\n'
            f'url = "{redis_server.url}"\n'
            'key_prefix = "scale-out:"\n')


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, state_section):
    """Node A and node B on one data directory (the shared storage)."""
    requireTools()
    root = tmp_path_factory.mktemp("scale-out")
    shared = root / "shared"
    config = NODE_CONFIG.replace("{shared}", str(shared)).replace(
        "{declined}", DECLINED).replace("{proxy}", PROXY) + state_section
    made = []
    try:
        for name in ("node-a", "node-b"):
            node = Daemon(root, config, name=name)
            node.data_dir = shared
            made.append(node)
            if name == "node-a":
                node.add_user("alice", ALICE_PASSWORD)
            node.start()     # A first: it makes the shared certificate and secret
        yield made
    finally:
        for node in made:
            node.stop()


def reference_haproxy(ports, a, b, stats_socket):
    """The reference haproxy.cfg with its addresses mapped to this test's."""
    text = (REFERENCE / "haproxy.cfg").read_text()
    body = text[text.index("\ndefaults\n"):]
    mapping = {
        "bind :110": f"bind 127.0.0.1:{ports['pop3']}",
        "bind :995": f"bind 127.0.0.1:{ports['pop3s']}",
        "10.0.0.11:110": f"127.0.0.1:{a.pop3_port}",
        "10.0.0.11:995": f"127.0.0.1:{a.pop3s_port}",
        "10.0.0.12:110": f"127.0.0.1:{b.pop3_port}",
        "10.0.0.12:995": f"127.0.0.1:{b.pop3s_port}",
        "source 10.0.0.10": f"source {PROXY}",
        "    log global\n": "",          # no syslog here
        "    option tcplog\n": "",
    }
    for old, new in mapping.items():
        assert old in body, f"the reference haproxy.cfg has no {old!r} any more"
        body = body.replace(old, new)
    return (f"global\n    maxconn 4096\n    stats socket {stats_socket} mode 600 level admin\n"
            + body)


class ReferenceProxy(HAProxyServer):
    """haproxy running the reference configuration."""

    def __init__(self, directory, a, b):
        super().__init__(directory, [Frontend("pop3", a.pop3_port),
                                     Frontend("pop3s", a.pop3s_port)])
        self.nodes = (a, b)
        self.statsPath = str(Path(directory) / "stats.sock")

    def writeConfig(self):
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        ports = {name: f.port for name, f in self.frontends.items()}
        Path(self.configPath).write_text(reference_haproxy(ports, *self.nodes, self.statsPath))

    def servers(self):
        """{(backend, server): (status, check status)} from haproxy's own stats."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.statsPath)
            sock.sendall(b"show stat\n")
            data = readAll(sock).decode()
        rows = csv.DictReader(io.StringIO(data.lstrip("# ")))
        return {(r["pxname"], r["svname"]): (r["status"], r["check_status"])
                for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


@pytest.fixture(scope="module")
def proxy(nodes, tmp_path_factory):
    server = ReferenceProxy(tmp_path_factory.mktemp("scale-out-haproxy"), *nodes).start()
    try:
        yield server
    finally:
        server.stop()


def context(node):
    ctx = ssl.create_default_context(cafile=node.ca_file)
    ctx.check_hostname = False      # 127.0.0.1; the chain is checked
    return ctx


def login(proxy, listener, source=CLIENT):
    """One USER/PASS login through the proxy; @return: the reply to PASS."""
    port = proxy.port(listener)
    ctx = context(proxy.nodes[0])
    if listener == "pop3":
        client = SourcePOP3("127.0.0.1", port, source)
        client.stls(ctx)
    else:
        client = SourcePOP3SSL("127.0.0.1", port, source, ctx)
    try:
        client.user("alice")
        return client.pass_(ALICE_PASSWORD)
    finally:
        client.quit()


def all_up(proxy):
    servers = proxy.servers()
    return len(servers) == 4 and all(status == "UP" and check.startswith("L")
                                     and check.endswith("OK")
                                     for status, check in servers.values())


def test_the_checks_see_both_nodes_on_both_ports(proxy):
    assert wait_for(lambda: all_up(proxy), timeout=20), proxy.servers()
    checks = {key: check for key, (_, check) in proxy.servers().items()}
    assert checks[("nodes_pop3", "node-a")] == "L7OK"     # "+OK" greeting expected
    assert checks[("nodes_pop3s", "node-b")] == "L6OK"    # TLS handshake


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_logins_through_the_proxy_reach_both_nodes(proxy, nodes, listener):
    a, b = nodes
    marks = [len(a.log()), len(b.log())]
    served = set()
    for _ in range(12):                       # leastconn alternates between idle nodes
        assert login(proxy, listener).startswith(b"+OK")
        served = {i for i, node in enumerate(nodes)
                  if f"auth.success ip={CLIENT} " in node.log()[marks[i]:]}
        if served == {0, 1}:
            break
    assert served == {0, 1}
    for i, node in enumerate(nodes):          # the client's address, never the proxy's
        assert f"auth.success ip={PROXY} " not in node.log()[marks[i]:]


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_rules_see_the_client_behind_the_proxy(proxy, nodes, listener):
    marks = [len(node.log()) for node in nodes]
    for _ in range(4):                         # both nodes get declined clients
        with connect(proxy.port(listener), DECLINED) as raw:
            if listener == "pop3":
                assert readAll(raw).startswith(DECLINE_LINE)
            else:
                with context(nodes[0]).wrap_socket(raw) as tls:
                    try:
                        line = tls.makefile("rb").readline()
                    except (ssl.SSLError, ConnectionResetError):
                        line = b""
                    assert not line.startswith(b"+OK")
    assert wait_for(lambda: any(f"access.declined ip={DECLINED} " in node.log()[mark:]
                                for node, mark in zip(nodes, marks)))
    # the proxy's own address (the health checks, every connection's socket peer)
    # is never what the rules judge
    for node, mark in zip(nodes, marks):
        assert f"access.declined ip={PROXY} " not in node.log()[mark:]
    assert login(proxy, listener).startswith(b"+OK")   # the allowed client, next to it


def test_the_per_address_limit_holds_across_the_nodes(proxy, nodes):
    """4 sessions from one client, spread 2 + 2 by leastconn: the 5th is refused on either."""
    source = "127.0.0.4"
    marks = [len(node.log()) for node in nodes]
    held = []
    try:
        for _ in range(4):
            sock = connect(proxy.port("pop3"), source)
            assert sock.makefile("rb").readline().startswith(b"+OK ")
            held.append(sock)
        refused = 0
        for _ in range(4):               # leastconn sends them to both nodes in turn
            with connect(proxy.port("pop3"), source) as sock:
                if readAll(sock).startswith(b"-ERR [SYS/TEMP] Too many connections"):
                    refused += 1
        assert refused == 4
        assert all(f"access.limit ip={source} " in node.log()[mark:]
                   for node, mark in zip(nodes, marks))
    finally:
        for sock in held:
            sock.close()


def test_a_stopped_node_is_taken_out_and_the_other_serves(proxy, nodes):
    a, b = nodes
    b.stop()
    try:
        assert wait_for(lambda: all(proxy.servers()[(backend, "node-b")][0] == "DOWN"
                                    for backend in ("nodes_pop3", "nodes_pop3s")),
                        timeout=20), proxy.servers()
        assert proxy.servers()[("nodes_pop3", "node-a")][0] == "UP"
        mark = len(a.log())
        for listener in ("pop3", "pop3s", "pop3", "pop3s"):
            assert login(proxy, listener).startswith(b"+OK")
        assert a.log()[mark:].count(f"auth.success ip={CLIENT} ") == 4
    finally:
        b.start()
    assert wait_for(lambda: all_up(proxy), timeout=20), proxy.servers()


def test_the_reference_files_are_valid():
    """haproxy accepts the reference file as shipped; both node files load and differ
    only in the node's own address."""
    check = subprocess.run([HAPROXY, "-c", "-f", str(REFERENCE / "haproxy.cfg")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    a, b = (config.load(str(REFERENCE / f"node-{n}.toml"), None) for n in "ab")
    assert a.state.backend == "redis" and a.access.trusted_proxies == ("10.0.0.10/32",)
    assert [l.endpoint for l in a.listen] == ["tcp:110:interface=10.0.0.11",
                                              "tcp:995:interface=10.0.0.11"]
    assert replace(a, path=None, listen=(), metrics=None) == \
        replace(b, path=None, listen=(), metrics=None)
