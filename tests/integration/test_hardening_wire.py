"""
Hardening attacks against the real daemon over loopback:

 - protocol log amplification: with C{log.protocol_log} on, a LIST or UIDL
   of a big maildrop writes one log entry, not one per message;
 - the APOP timestamp is offered only in a greeting sent under TLS (implicit
   listeners), never in the cleartext greeting of an STLS listener;
 - behind a trusted PROXY header, STLS and implicit TLS log the same TLS
   facts (C{tls.handshake}, the version in C{session.end}, the TLS metric)
   as a connection without one.

C{SECUREPOP_PROTOLOG_MESSAGES} sets the size of the big maildrop (default
5,000; 100,000 for the figure in docs/reliability.rst); the test prints the
protocol log bytes one LIST cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import poplib
import socket
import struct
import time
import urllib.request

import pytest

from tests.integration import clients
from tests.integration.clients import HOST, IMPLICIT, STARTTLS
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG, wait_for

BIG = int(os.environ.get("SECUREPOP_PROTOLOG_MESSAGES", "5000"))
MESSAGE = b"Subject: m\r\n\r\nx\r\n"

PROTOLOG_CONFIG = DEFAULT_CONFIG + """
[log]
protocol_log = "protocol.log"
"""

PROXY_CONFIG = DEFAULT_CONFIG.replace(
    "[access]\n", '[access]\ntrusted_proxies = ["127.0.0.1"]\n') + """
[log]
format = "json"
[metrics]
endpoint = "tcp:{port3}:interface=127.0.0.1"
"""
assert "trusted_proxies" in PROXY_CONFIG


# -- protocol log amplification ----------------------------------------------------------

def fill_maildir(daemon, user, count):
    """C{count} tiny messages written straight into new/, sizes in their names."""
    md = daemon.maildir(user)
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    size = len(MESSAGE)
    for i in range(count):
        name = md / "new" / f"{1700000000 + i}.M{i}P1.flood,S={size},W={size}"
        with open(name, "wb") as f:
            f.write(MESSAGE)


@pytest.fixture(scope="module")
def logged(daemon_factory):
    d = daemon_factory(PROTOLOG_CONFIG, users=(("alice", ALICE_PASSWORD),
                                               ("bob", ALICE_PASSWORD)), name="protolog")
    clients.reset_mailbox(d, "alice")
    clients.reset_mailbox(d, "bob")
    fill_maildir(d, "alice", BIG)
    fill_maildir(d, "bob", 3)
    return d


def log_growth(daemon, user, command):
    """
    Log in, then send C{command}: the protocol log bytes that command and its
    reply added, the log lines, and the reply's lines and octets (after the
    status line, as received).
    """
    path = daemon.data_dir / "protocol.log"
    client = clients.RawPOP3(daemon, IMPLICIT, timeout=120)
    try:
        assert client.login(user, ALICE_PASSWORD).startswith(b"+OK"), user
        assert client.command(b"NOOP") == b"+OK"
        assert wait_for(lambda: path.read_bytes().endswith(b" S +OK\n"))
        before = path.stat().st_size
        started = time.monotonic()
        status = client.command(command)
        assert status.startswith(b"+OK"), status
        lines = client.multiline()
        log_growth.seconds = time.monotonic() - started
        octets = sum(len(line) + 2 for line in lines) + 3      # and ".\r\n"
        assert client.command(b"NOOP") == b"+OK"
        assert wait_for(lambda: path.read_bytes().endswith(b" S +OK\n"))
        logged = path.read_bytes()[before:].splitlines(keepends=True)
        noop = max(i for i, line in enumerate(logged) if line.endswith(b" C NOOP\n"))
        logged = logged[:noop]
        return sum(map(len, logged)), logged, len(lines), octets
    finally:
        client.command(b"QUIT")
        client.close()


@pytest.mark.parametrize("command", [b"LIST", b"UIDL"])
def test_big_listing_is_one_protocol_log_entry(logged, command):
    grown, entries, count, octets = log_growth(logged, "alice", command)
    print(f"\nprotocol log bytes for one {command.decode()} of {count} messages: {grown} "
          f"(reply in {log_growth.seconds:.3f} s)")
    assert count == BIG
    assert len(entries) == 2, entries[:4]                    # C LIST, then one S entry
    assert entries[0].endswith(b" C " + command + b"\n")
    assert entries[1].endswith(b" S +OK [+%d lines, %d octets]\n" % (BIG + 1, octets))
    assert grown < 400, grown
    # the same command on a 3-message maildrop: the same size, give or take digits
    small, small_entries, small_count, _ = log_growth(logged, "bob", command)
    assert small_count == 3
    assert abs(grown - small) < 16, (grown, small, small_entries)


def test_retr_body_is_not_in_the_protocol_log(logged):
    client = clients.RawPOP3(logged, IMPLICIT)
    try:
        client.login("bob", ALICE_PASSWORD)
        assert client.retr(1) == MESSAGE
        client.command(b"QUIT")
    finally:
        client.close()
    log = (logged.data_dir / "protocol.log").read_bytes()
    assert b"S +OK %d octets" % len(MESSAGE) in log
    assert b"Subject: m" not in log


# -- APOP timestamp only under TLS --------------------------------------------------------

def apop_stamp(greeting: bytes) -> bytes:
    return greeting[greeting.index(b"<"):greeting.index(b">") + 1]


def test_stls_listener_greeting_has_no_apop_timestamp(daemon):
    """apop = true: the cleartext greeting must not invite a digest before STLS."""
    with clients.RawPOP3(daemon, STARTTLS) as c:
        assert c.greeting.startswith(b"+OK"), c.greeting
        assert b"<" not in c.greeting and b">" not in c.greeting, c.greeting
        # a client that sends APOP anyway, before TLS: refused unchecked
        digest = hashlib.md5(b"<1.2@localhost>" + ALICE_PASSWORD.encode()).hexdigest()
        assert c.command(f"APOP alice {digest}") == \
            b"-ERR [AUTH] Authentication requires TLS: use STLS first"
        c.starttls()
        # after STLS there is no timestamp to answer: a clear refusal
        assert c.command(f"APOP alice {digest}") == \
            b"-ERR [AUTH] Authentication mechanism not available"
        assert c.login("alice", ALICE_PASSWORD).startswith(b"+OK")      # USER/PASS works
    # poplib refuses APOP on that greeting by itself
    client = clients.pop3(daemon, STARTTLS)
    try:
        with pytest.raises(poplib.error_proto, match="APOP not supported"):
            client.apop("alice", ALICE_PASSWORD)
    finally:
        client.quit()


def test_implicit_listener_greeting_has_apop_timestamp_and_apop_works(daemon):
    client = clients.pop3(daemon, IMPLICIT)
    try:
        greeting = client.getwelcome()
        assert b"<" in greeting and greeting.rstrip().endswith(b"@localhost>"), greeting
        assert client.apop("alice", ALICE_PASSWORD).startswith(b"+OK")
        assert client.stat()[0] >= 0
    finally:
        client.quit()
    # the negative: a wrong password over the same path
    client = clients.pop3(daemon, IMPLICIT)
    try:
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            client.apop("alice", "Wrong-Horse-8")
    finally:
        client.close()
    # every implicit greeting has its own timestamp
    first = clients.RawPOP3(daemon, IMPLICIT)
    second = clients.RawPOP3(daemon, IMPLICIT)
    try:
        assert apop_stamp(first.greeting) != apop_stamp(second.greeting)
    finally:
        first.close()
        second.close()


# -- TLS facts behind a trusted PROXY header ----------------------------------------------

PROXIED_V1 = "203.0.113.7"
PROXIED_V2 = "203.0.113.8"


def proxy_v1(source, port):
    return f"PROXY TCP4 {source} 127.0.0.1 40001 {port}\r\n".encode()


def proxy_v2(source, port):
    payload = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + \
        struct.pack("!HH", 40002, port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(payload)) \
        + payload


@pytest.fixture(scope="module")
def proxied(daemon_factory):
    return daemon_factory(PROXY_CONFIG, users=(("alice", ALICE_PASSWORD),), name="tlsproxy")


def records(daemon, start):
    out = []
    for line in daemon.log()[start:].splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def session_facts(daemon, start, ip):
    """The tls.handshake and session.end records of client C{ip} since C{start}."""
    assert wait_for(lambda: any(r["event"] == "session.end" and r.get("fields", {}).get("ip") == ip
                                for r in records(daemon, start))), daemon.log()[start:]
    mine = [r for r in records(daemon, start) if r.get("fields", {}).get("ip") == ip]
    handshakes = [r["fields"] for r in mine if r["event"] == "tls.handshake"]
    ends = [r["fields"] for r in mine if r["event"] == "session.end"]
    return handshakes, ends


def tls_count(daemon):
    url = f"http://127.0.0.1:{daemon.ports['port3']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("securepop_tls_sessions_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pop3_session(daemon, tls, source, header=b""):
    """Connect from C{source}, send C{header}, TLS (STLS or implicit), log in, QUIT."""
    port = daemon.pop3s_port if tls == IMPLICIT else daemon.pop3_port
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(15)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    raw.sendall(header)
    ctx = clients.client_context(daemon)
    sock = ctx.wrap_socket(raw, server_hostname=HOST) if tls == IMPLICIT else raw
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    if tls == STARTTLS:
        sock.sendall(b"STLS\r\n")
        assert f.readline().startswith(b"+OK")
        sock = ctx.wrap_socket(raw, server_hostname=HOST)
        f = sock.makefile("rb")
    protocol = sock.version()
    sock.sendall(b"USER alice\r\n")
    assert f.readline().startswith(b"+OK")
    sock.sendall(b"PASS " + ALICE_PASSWORD.encode() + b"\r\n")
    assert f.readline().startswith(b"+OK"), "login"
    sock.sendall(b"QUIT\r\n")
    assert f.readline() == b"+OK Bye\r\n"
    sock.close()
    return protocol


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
@pytest.mark.parametrize("version, client, header", [
    ("none", "127.0.0.2", None),          # the reference: no PROXY header at all
    ("v1", PROXIED_V1, proxy_v1),
    ("v2", PROXIED_V2, proxy_v2),
])
def test_tls_facts_behind_proxy_header(proxied, tls, version, client, header):
    d = proxied
    start = len(d.log())
    counted = tls_count(d)
    port = d.pop3s_port if tls == IMPLICIT else d.pop3_port
    if header is None:
        protocol = pop3_session(d, tls, client)
    else:
        protocol = pop3_session(d, tls, "127.0.0.1", header(client, port))
    assert protocol == "TLSv1.3"
    handshakes, ends = session_facts(d, start, client)
    assert [h["protocol"] for h in handshakes] == [protocol], handshakes
    assert handshakes[0]["cipher"] and handshakes[0]["bits"] >= 128
    assert [e["tls"] for e in ends] == [protocol], ends
    assert ends[0]["user"] == "alice"
    assert wait_for(lambda: tls_count(d) == counted + 1), (counted, tls_count(d))
    if header is not None:
        assert "127.0.0.1" not in {r.get("fields", {}).get("ip") for r in records(d, start)}
