"""
The article's Network Monitor check, automated: capture loopback traffic
with tcpdump during a real login + RETR, and look for the password and the
message body in the capture.

Over STLS and over implicit TLS neither may appear.  On a cleartext listener
that explicitly allows credentials (a test-only configuration) the password
does appear: so the check is shown to be able to fail.
"""

import poplib
import signal
import ssl
import struct
import subprocess
import time

import pytest

from tests.integration.daemon import require_tool, wait_for_port
from tests.integration.fixtures_tls import (  # noqa: F401 (fixtures)
    PASSWORD,
    openssl_ca,
    tls_config,
)

BODY_LINES = [
    b"Quarterly numbers: the vault code is 8-3-1-4-7.",
    b"Please keep this line away from the wire: Zebra-Umbrella-9921",
]
MESSAGE = (
    b"From: boss@example.test\r\nTo: alice@example.test\r\n"
    b"Subject: wire check\r\n\r\n" + b"\r\n".join(BODY_LINES) + b"\r\n"
)

CLEARTEXT_LISTENER = """
[[listen]]
endpoint = "tcp:{port3}:interface=127.0.0.1"
tls = "none"
insecure_allow_cleartext = true
"""


@pytest.fixture(scope="module")
def wire_daemon(daemon_factory, openssl_ca):
    require_tool("tcpdump")
    cert, key = openssl_ca.issue("localhost-wire")
    daemon = daemon_factory(
        tls_config(cert, key) + CLEARTEXT_LISTENER,
        users=(("alice", PASSWORD),), name="tls-wire",
    )
    wait_for_port("127.0.0.1", daemon.ports["port3"], proc=daemon.proc)
    daemon.deliver("alice", MESSAGE)
    return daemon


class Capture:
    """
    tcpdump on lo for one port; C{payload()} is every TCP payload byte, in
    capture order.  C{--immediate-mode}: without it, packets still in
    libpcap's ring buffer when tcpdump is stopped are lost.
    """

    def __init__(self, port, path):
        self.path = path
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-n",
             "-w", str(path),
             f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        line = self.proc.stderr.readline()  # "listening on lo ..."
        assert b"listening" in line, line

    def stop(self):
        time.sleep(0.3)  # let the last segments reach the capture
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self.summary = self.proc.stderr.read().decode(errors="replace")

    def payload(self):
        return tcp_payload(self.path.read_bytes())


def tcp_payload(pcap):
    """
    Every TCP payload byte of a classic pcap file (Ethernet or Linux
    "cooked" link layer, IPv4/IPv6), in capture order.  Parsed here rather
    than with tshark, whose fields go empty when a dissector claims the port.
    """
    magic = pcap[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(order + "I", pcap[20:24])[0]
    link_header = {1: 14, 113: 16, 276: 20}[linktype]
    out, offset = [], 24
    while offset + 16 <= len(pcap):
        incl = struct.unpack(order + "I", pcap[offset + 8:offset + 12])[0]
        frame = pcap[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        ip = frame[link_header:]
        if ip[:1] and ip[0] >> 4 == 4:
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            if ip[9] != 6:
                continue
            tcp = ip[ihl:total]
        elif ip[:1] and ip[0] >> 4 == 6:
            if ip[6] != 6:
                continue
            tcp = ip[40:40 + struct.unpack(">H", ip[4:6])[0]]
        else:
            continue
        out.append(tcp[(tcp[12] >> 4) * 4:])
    return b"".join(out)


def login_and_retr(client):
    client.user("alice")
    client.pass_(PASSWORD)
    lines = client.retr(1)[1]
    client.quit()
    return lines


def tls_context(openssl_ca):
    context = ssl.create_default_context(cafile=openssl_ca.root)
    return context


def captured(port, tmp_path, session):
    capture = Capture(port, tmp_path / f"capture-{port}.pcap")
    try:
        lines = session()
    finally:
        capture.stop()
    data = capture.payload()
    assert len(data) > 200, (
        f"the capture saw (almost) nothing: {capture.summary} "
        f"{capture.path.stat().st_size} bytes")
    return lines, data


def assert_secret(data, lines):
    for body in BODY_LINES:
        assert body in lines  # the client did receive it...
        assert body not in data  # ...but the wire did not show it
    assert PASSWORD.encode() not in data
    assert b"alice" not in data  # even the user name is inside TLS


def test_stls_session_hides_password_and_body(wire_daemon, openssl_ca, tmp_path):
    def session():
        client = poplib.POP3("127.0.0.1", wire_daemon.pop3_port, timeout=10)
        client.stls(tls_context(openssl_ca))
        return login_and_retr(client)

    lines, data = captured(wire_daemon.pop3_port, tmp_path, session)
    assert b"+OK" in data and b"STLS" in data  # the cleartext part is visible
    assert_secret(data, lines)


def test_implicit_tls_session_hides_password_and_body(wire_daemon, openssl_ca,
                                                      tmp_path):
    def session():
        client = poplib.POP3_SSL("127.0.0.1", wire_daemon.pop3s_port,
                                 context=tls_context(openssl_ca), timeout=10)
        return login_and_retr(client)

    lines, data = captured(wire_daemon.pop3s_port, tmp_path, session)
    assert b"+OK" not in data  # not even the greeting
    assert_secret(data, lines)


def test_cleartext_session_shows_password_and_body(wire_daemon, tmp_path):
    """
    The negative case: the same check finds everything on a cleartext
    listener, so it can fail.
    """
    port = wire_daemon.ports["port3"]

    def session():
        return login_and_retr(poplib.POP3("127.0.0.1", port, timeout=10))

    lines, data = captured(port, tmp_path, session)
    assert PASSWORD.encode() in data
    for body in BODY_LINES:
        assert body in data
