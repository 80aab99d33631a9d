"""
Connection control end to end against the real daemon.

Real clients bound to chosen 127.0.0.x source addresses (and ::1) talk to
a C{twistd securepop} subprocess: address / CIDR / "address mask" / IPv6 /
host: rules in both modes, domain rules with forward-confirmed reverse DNS
against dnsmasq (PTR records), a stopped DNS server, the reverse-DNS
switch, one PTR query for 1,000 connections, the per-address limit under a
burst, and the per-user limit.  PROXY protocol through HAProxy is in
L{tests.integration.test_access_daemon_proxy}.
"""

from __future__ import annotations

import os
import poplib
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.integration.fixtures_dns import EVIL, NO_PTR, NOFWD, TRUSTED, DnsmasqServer, \
    missingTools

DECLINE = "Go away, not on the list (test)"
DECLINE_LINE = f"-ERR [SYS/PERM] {DECLINE}".encode()
TOO_MANY = b"-ERR [SYS/TEMP] Too many connections"

# Extra dnsmasq records, one per purpose, so no two tests share a cache entry.
BULK = ("bulk.example.test", "127.0.0.20")        # 1,000 connections -> one PTR query
OUTAGE = ("outage.example.test", "127.0.0.21")    # first seen while DNS is down
NO_REVERSE = ("norev.example.test", "127.0.0.22")  # reverse_dns = false: never asked


def requireTools():
    missing = missingTools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


class ExtendedDnsmasq(DnsmasqServer):
    """The fixture's records plus the confirmed names above."""

    def writeConfig(self):
        super().writeConfig()
        with open(self.configPath, "a") as f:
            for name, address in (BULK, OUTAGE, NO_REVERSE):
                f.write(f"host-record={name},{address}\n")


def ptrName(address):
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


# -- clients -----------------------------------------------------------------------

def connect(port, source, host="127.0.0.1", timeout=10.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def readAll(sock):
    """Everything until the server closes (b"" pieces after a reset are lost)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def firstLine(port, source, host="127.0.0.1", timeout=10.0):
    """Connect from C{source}, read one line, close."""
    with connect(port, source, host, timeout) as sock:
        return sock.makefile("rb").readline().rstrip(b"\r\n")


def wholeAnswer(port, source, host="127.0.0.1", timeout=10.0):
    """Connect from C{source}, send nothing, read until the server closes."""
    with connect(port, source, host, timeout) as sock:
        return readAll(sock)


def assertDeclined(daemon, port, source, host="127.0.0.1", rule=None):
    """The first and only line is the decline, the server closes, the log says so."""
    start = len(daemon.log())
    assert wholeAnswer(port, source, host) == DECLINE_LINE + b"\r\n"
    expected = f"access.declined ip={source}"
    assert daemon.wait_log(expected, start=start), daemon.log()[start:]
    if rule is not None:
        line = next(l for l in daemon.log()[start:].splitlines() if expected in l)
        assert f"rule={rule}" in line, line


def assertGreeted(daemon, port, source, host="127.0.0.1"):
    start = len(daemon.log())
    line = firstLine(port, source, host)
    assert line.startswith(b"+OK "), line
    assert f"access.declined ip={source} " not in daemon.log()[start:]


class SourcePOP3(poplib.POP3):
    """poplib bound to a chosen source address."""

    def __init__(self, host, port, source, timeout=10.0):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class SourcePOP3SSL(poplib.POP3_SSL):
    def __init__(self, host, port, source, context, timeout=10.0):
        self.source = source
        super().__init__(host, port, timeout=timeout, context=context)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def tlsContext(daemon):
    context = ssl.create_default_context(cafile=daemon.ca_file)
    context.check_hostname = False  # we connect to 127.0.0.1; the chain is checked
    return context


# -- configurations -------------------------------------------------------------------

BASE = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 30
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1"
tls = "implicit"
"""
IPV6_LISTENER = """
[[listen]]
endpoint = 'tcp6:{port3}:interface=\\:\\:1'
tls = "starttls"
[[listen]]
endpoint = 'tcp6:{port4}:interface=\\:\\:ffff\\:127.0.0.1'
tls = "starttls"
"""
AUTH = """
[auth]
failure_delay = 0.2
failure_delay_max = 1.0
"""


def accessConfig(*lines, ipv6=False):
    text = BASE + (IPV6_LISTENER if ipv6 else "") + AUTH + "[access]\n"
    text += f'decline_message = "{DECLINE}"\n'
    return text + "\n".join(lines) + "\n"


# Every rule type in one list; the same list in both modes.
RULES = [
    "127.0.0.2",                      # one address
    "127.0.0.16/29",                  # CIDR: .16 - .23
    "127.0.0.8 255.255.255.252",      # address mask: .8 - .11
    "::1",                            # IPv6
    f"host:{TRUSTED[0]}",             # 127.0.0.5 via dnsmasq
]
# (source, matched rule or None)
CASES = [
    ("127.0.0.2", "127.0.0.2"),
    ("127.0.0.3", None),
    ("127.0.0.17", "127.0.0.16/29"),
    ("127.0.0.23", "127.0.0.16/29"),
    ("127.0.0.24", None),
    ("127.0.0.8", "127.0.0.8\\x20255.255.255.252"),
    ("127.0.0.9", "127.0.0.8\\x20255.255.255.252"),
    ("127.0.0.10", "127.0.0.8\\x20255.255.255.252"),
    ("127.0.0.11", "127.0.0.8\\x20255.255.255.252"),
    ("127.0.0.12", None),
    ("127.0.0.7", None),
    ("127.0.0.5", f"host:{TRUSTED[0]}"),
    ("127.0.0.66", None),             # evil's A record is not in any rule
]


@pytest.fixture(scope="session")
def access_dnsmasq(tmp_path_factory):
    requireTools()
    server = ExtendedDnsmasq(tmp_path_factory.mktemp("access-dnsmasq")).start()
    yield server
    server.stop()


def rulesText(rules):
    return "rules = [" + ", ".join(f'"{r}"' for r in rules) + "]"


@pytest.fixture(scope="session", params=["allow-listed", "deny-listed"])
def rules_daemon(request, daemon_factory, access_dnsmasq):
    config = accessConfig(
        f'mode = "{request.param}"', rulesText(RULES),
        f'dns_servers = ["{access_dnsmasq.address}"]', "dns_timeout = 2.0",
        "max_connections_per_ip = 50", ipv6=True)
    return request.param, daemon_factory(config, users=(), name="rules")


@pytest.mark.parametrize("source, rule", CASES)
def test_address_and_host_rules(rules_daemon, source, rule):
    mode, d = rules_daemon
    matched = rule is not None
    if matched == (mode == "allow-listed"):
        assertGreeted(d, d.pop3_port, source)
    else:
        # allow-listed: no rule matched, the decision names none
        assertDeclined(d, d.pop3_port, source, rule=rule or "-")


def test_ipv6_rule(rules_daemon):
    mode, d = rules_daemon
    if mode == "allow-listed":
        assertGreeted(d, d.ports["port3"], "::1", host="::1")
    else:
        assertDeclined(d, d.ports["port3"], "::1", host="::1", rule="::1")
    # the same listener set, an IPv4 client that no rule names: the opposite
    if mode == "allow-listed":
        assertDeclined(d, d.pop3_port, "127.0.0.4")
    else:
        assertGreeted(d, d.pop3_port, "127.0.0.4")


@pytest.mark.parametrize("source, rule", [("127.0.0.2", "127.0.0.2"), ("127.0.0.3", None),
                                          ("127.0.0.9", "127.0.0.8\\x20255.255.255.252")])
def test_ipv4_mapped_peer_matches_ipv4_rules(rules_daemon, source, rule):
    """
    An IPv6 socket bound to ::ffff:127.0.0.1 sees IPv4 clients as
    ::ffff:127.0.0.x; IPv4 rules must still apply to them.
    """
    mode, d = rules_daemon
    port = d.ports["port4"]
    start = len(d.log())
    if (rule is not None) == (mode == "allow-listed"):
        line = firstLine(port, source)
        assert line.startswith(b"+OK "), line
    else:
        assert wholeAnswer(port, source) == DECLINE_LINE + b"\r\n"
        assert d.wait_log("access.declined ip=", start=start)
        assert source in d.log()[start:]


def test_decline_comes_before_the_greeting_on_implicit_tls_too(rules_daemon):
    """On the implicit-TLS port the decision still comes first, inside TLS."""
    mode, d = rules_daemon
    source = "127.0.0.3" if mode == "allow-listed" else "127.0.0.2"
    context = tlsContext(d)
    with connect(d.pop3s_port, source) as raw:
        with context.wrap_socket(raw) as tls:
            data = b""
            while True:
                try:
                    piece = tls.recv(4096)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not piece:
                    break
                data += piece
    assert data == DECLINE_LINE + b"\r\n"
    other = "127.0.0.2" if mode == "allow-listed" else "127.0.0.3"
    with connect(d.pop3s_port, other) as raw:
        with context.wrap_socket(raw) as tls:
            assert tls.makefile("rb").readline().startswith(b"+OK ")


def test_declined_client_gets_no_answer_to_early_commands(rules_daemon):
    """A client that talks first still gets only the decline line."""
    mode, d = rules_daemon
    source = "127.0.0.12" if mode == "allow-listed" else "127.0.0.11"
    with connect(d.pop3_port, source) as sock:
        sock.sendall(b"CAPA\r\n")
        data = readAll(sock)
    # the line may be lost to a reset (unread input), never followed by more
    assert data in (DECLINE_LINE + b"\r\n", b""), data
    assert b"+OK" not in data


# -- domain rules and reverse DNS -------------------------------------------------------

@pytest.fixture(scope="session")
def domain_daemon(daemon_factory, access_dnsmasq):
    config = accessConfig(
        'mode = "allow-listed"', rulesText(["domain:example.test", "127.0.0.30"]),
        f'dns_servers = ["{access_dnsmasq.address}"]', "dns_timeout = 2.0",
        "max_connections_per_ip = 100")
    return daemon_factory(config, users=(), name="domain")


def test_domain_rule_trusted_ptr_allowed(domain_daemon):
    assertGreeted(domain_daemon, domain_daemon.pop3_port, TRUSTED[1])
    assertGreeted(domain_daemon, domain_daemon.pop3_port, "127.0.0.30")  # IP rule beside it


@pytest.mark.parametrize("source", [EVIL[1], NOFWD[1], NO_PTR],
                         ids=["forged-ptr", "ptr-without-a", "no-ptr"])
def test_domain_rule_unconfirmed_declined(domain_daemon, source):
    assertDeclined(domain_daemon, domain_daemon.pop3_port, source, rule="-")


def test_deny_listed_domain_rule(daemon_factory, access_dnsmasq):
    config = accessConfig(
        'mode = "deny-listed"', rulesText(["domain:example.test"]),
        f'dns_servers = ["{access_dnsmasq.address}"]', "dns_timeout = 2.0")
    d = daemon_factory(config, users=(), name="domain-deny")
    assertDeclined(d, d.pop3_port, TRUSTED[1], rule="domain:example.test")
    assertGreeted(d, d.pop3_port, EVIL[1])  # a forged PTR is not the domain either
    assertGreeted(d, d.pop3_port, NO_PTR)


def _greetMany(port, source, count):
    greeted = 0
    for _ in range(count):
        with connect(port, source) as sock:
            if sock.makefile("rb").readline().startswith(b"+OK "):
                greeted += 1
    return greeted


def test_thousand_connections_one_ptr_query(domain_daemon, access_dnsmasq):
    qname = ptrName(BULK[1])
    before = access_dnsmasq.queryCount(qname)
    assert before == 0  # nobody else asks for this address
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: _greetMany(domain_daemon.pop3_port, BULK[1], 250),
                               range(4)))
    assert sum(counts) == 1000
    after = access_dnsmasq.waitForQueryCount(qname, "PTR", atLeast=1)
    assert after - before == 1
    # the forward confirmation was asked once too
    assert access_dnsmasq.queryCount(BULK[0], "A") == 1


def test_dns_stopped_declines_within_timeout(daemon_factory, tmp_path_factory):
    """Default dns_failure = "no-match": allow-listed mode fails closed."""
    requireTools()
    server = ExtendedDnsmasq(tmp_path_factory.mktemp("outage-dnsmasq")).start()
    try:
        config = accessConfig(
            'mode = "allow-listed"', rulesText(["domain:example.test"]),
            f'dns_servers = ["{server.address}"]', "dns_timeout = 1.0")
        d = daemon_factory(config, users=(), name="outage")
        assertGreeted(d, d.pop3_port, TRUSTED[1])  # works while DNS runs
    finally:
        server.stop()
    start = len(d.log())
    began = time.monotonic()
    answer = wholeAnswer(d.pop3_port, OUTAGE[1])
    elapsed = time.monotonic() - began
    assert answer == DECLINE_LINE + b"\r\n"
    assert elapsed < 1.0 + 1.0, elapsed
    assert d.wait_log(f"access.declined ip={OUTAGE[1]}", start=start)
    line = next(l for l in d.log()[start:].splitlines() if "access.declined" in l)
    assert "reverse\\x20DNS\\x20failed" in line or "reverse DNS failed" in line, line
    # the positive answer cached before the outage still holds
    assertGreeted(d, d.pop3_port, TRUSTED[1])


def test_reverse_dns_off_domain_rules_never_match(daemon_factory, access_dnsmasq):
    config = accessConfig(
        'mode = "allow-listed"', rulesText(["domain:example.test", "127.0.0.31"]),
        f'dns_servers = ["{access_dnsmasq.address}"]', "reverse_dns = false")
    d = daemon_factory(config, users=(), name="norev")
    assertDeclined(d, d.pop3_port, NO_REVERSE[1], rule="-")
    assertDeclined(d, d.pop3_port, TRUSTED[1], rule="-")
    assertGreeted(d, d.pop3_port, "127.0.0.31")  # address rules still work
    time.sleep(0.3)  # dnsmasq logs asynchronously
    assert access_dnsmasq.queryCount(ptrName(NO_REVERSE[1])) == 0


# -- limits ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def limits_daemon(daemon_factory):
    config = accessConfig("max_connections_per_ip = 20", "max_connections_per_user = 1")
    return daemon_factory(config, name="limits")


def test_burst_holds_per_address_limit(limits_daemon):
    d = limits_daemon
    source = "127.0.0.40"
    held, lock = [], threading.Lock()
    answers = []

    def one(_):
        sock = connect(d.pop3_port, source)
        line = sock.makefile("rb").readline().rstrip(b"\r\n")
        if line.startswith(b"+OK "):
            with lock:
                held.append(sock)  # keep the slot
        else:
            sock.close()
        return line

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(500)))
        greeted = [a for a in answers if a.startswith(b"+OK ")]
        refused = [a for a in answers if a.startswith(TOO_MANY)]
        assert len(greeted) == 20, (len(greeted), set(answers) - set(greeted))
        assert len(refused) == 480
        # another address is served meanwhile
        assertGreeted(d, d.pop3_port, "127.0.0.41")
        assert firstLine(d.pop3_port, source).startswith(TOO_MANY)
    finally:
        for sock in held:
            sock.close()
    # the count returns to zero: 20 fresh connections are greeted again
    deadline = time.monotonic() + 5
    again = []
    try:
        while time.monotonic() < deadline:
            sock = connect(d.pop3_port, source)
            line = sock.makefile("rb").readline()
            if line.startswith(b"+OK "):
                again.append(sock)
                if len(again) == 20:
                    break
            else:
                sock.close()
                time.sleep(0.05)  # closes still being processed
        assert len(again) == 20
        assert firstLine(d.pop3_port, source).startswith(TOO_MANY)
    finally:
        for sock in again:
            sock.close()
    assert "access.limit ip=127.0.0.40 limit=max_connections_per_ip" in d.log()


@pytest.fixture(scope="session")
def small_limits_daemon(daemon_factory):
    """3 connections in all, 2 per address, 1 s to log in."""
    config = accessConfig("max_connections = 3", "max_connections_per_ip = 2", ipv6=True)
    config = config.replace("idle_timeout_login = 30", "idle_timeout_login = 1")
    return daemon_factory(config, users=(), name="small-limits")


def test_total_limit_mapped_addresses_and_login_timeout(small_limits_daemon):
    """
    The per-address count treats ::ffff:127.0.0.60 (dual-stack listener) as
    127.0.0.60; the total limit holds; the pre-login timeout frees the slots.
    """
    d = small_limits_daemon
    start = len(d.log())
    held = []
    try:
        for port in (d.pop3_port, d.ports["port4"]):  # plain IPv4, then IPv4-mapped
            sock = connect(port, "127.0.0.60")
            assert sock.makefile("rb").readline().startswith(b"+OK ")
            held.append(sock)
        for port in (d.pop3_port, d.ports["port4"]):
            assert firstLine(port, "127.0.0.60").startswith(TOO_MANY)
        assert d.wait_log("access.limit ip=127.0.0.60 limit=max_connections_per_ip",
                          start=start)
        sock = connect(d.pop3_port, "127.0.0.61")
        assert sock.makefile("rb").readline().startswith(b"+OK ")
        held.append(sock)
        assert firstLine(d.pop3_port, "127.0.0.62").startswith(TOO_MANY)
        assert d.wait_log("access.limit ip=127.0.0.62 limit=max_connections\n", start=start)
        # silent clients are cut off by the 1 s pre-login timeout (the line
        # itself: test_pre_login_timeout_line_reaches_client)...
        for sock in held:
            sock.settimeout(5)
            try:
                data = readAll(sock)
            except socket.timeout:
                pytest.fail("the silent client was not disconnected")
            assert data in (b"", b"-ERR [SYS/TEMP] Idle timeout, closing connection\r\n")
    finally:
        for sock in held:
            sock.close()
    # ...and their slots are free again
    deadline = time.monotonic() + 3
    while True:
        line = firstLine(d.pop3_port, "127.0.0.62")
        if line.startswith(b"+OK ") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert line.startswith(b"+OK "), line


def test_pre_login_timeout_line_reaches_client(small_limits_daemon):
    """The idle-timeout line is delivered before the close (not lost to an abort)."""
    d = small_limits_daemon
    with connect(d.pop3_port, "127.0.0.63") as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK ")
        try:
            line = reader.readline()
        except ConnectionResetError:
            line = b"<reset>"
    assert line == b"-ERR [SYS/TEMP] Idle timeout, closing connection\r\n"


def test_per_user_limit_and_mailbox_lock(limits_daemon):
    """
    With one mailbox per user, a second session of the same user always
    meets the mailbox lock first (the realm locks before the per-user lease
    is taken, and both are given back together in connectionLost), so the
    per-user limit cannot be told apart from the lock from outside; what we
    can check: the second session gets the lock's [IN-USE], another user is
    not limited, and the per-user count returns to zero after each QUIT (a
    leaked lease would answer "Too many sessions" to the next login).
    """
    d = limits_daemon
    context = tlsContext(d)
    first = SourcePOP3SSL("127.0.0.1", d.pop3s_port, "127.0.0.42", context)
    try:
        assert first.user("alice").startswith(b"+OK")
        assert first.pass_(ALICE_PASSWORD).startswith(b"+OK")
        second = SourcePOP3SSL("127.0.0.1", d.pop3s_port, "127.0.0.43", context)
        try:
            second.user("alice")
            with pytest.raises(poplib.error_proto) as refused:
                second.pass_(ALICE_PASSWORD)
            assert refused.value.args[0] == b"-ERR [IN-USE] Mailbox is locked by another session"
        finally:
            second.quit()
        other = SourcePOP3SSL("127.0.0.1", d.pop3s_port, "127.0.0.43", context)
        assert other.user("bob").startswith(b"+OK")
        assert other.pass_(BOB_PASSWORD).startswith(b"+OK")
        other.quit()
    finally:
        first.quit()
    for attempt in range(3):
        again = SourcePOP3SSL("127.0.0.1", d.pop3s_port, "127.0.0.44", context)
        again.user("alice")
        assert again.pass_(ALICE_PASSWORD).startswith(b"+OK"), attempt
        again.quit()
    assert "auth.limit" not in d.log()


# -- check-config -------------------------------------------------------------------

def test_check_config_prints_effective_rules(rules_daemon, tmp_path):
    import subprocess

    from tests.integration.daemon import SECUREPOP

    _, d = rules_daemon
    out = d.cli("check-config").stdout.decode()
    assert "'127.0.0.8 255.255.255.252' -> network 127.0.0.8/30" in out, out
    assert "'127.0.0.16/29' -> network 127.0.0.16/29" in out
    assert f"host {TRUSTED[0]}" in out
    # a non-contiguous mask is a configuration error naming the rule
    bad = tmp_path / "bad.toml"
    bad.write_text(d.config_text.replace('"127.0.0.8 255.255.255.252"',
                                         '"127.0.0.8 255.255.0.255"'))
    result = subprocess.run([SECUREPOP, "--config", str(bad), "check-config"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "rule 2: '127.0.0.8 255.255.0.255'" in output and "not contiguous" in output, output
