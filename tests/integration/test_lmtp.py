"""
The LMTP listener with the real daemon: Python's smtplib.LMTP and raw
sockets on its Unix socket and TCP port, the messages read back over POP3.
"""

import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from tests.integration.clients import poplib_retr, pop3
from tests.integration.daemon import LISTENERS, Daemon, free_port, require_tool, wait_for, wait_for_port

PASSWORD = "Lmtp-Test-Pass-1"

CONFIG = """
[server]
hostname = "mx.example.org"
data_dir = "{data_dir}"
""" + LISTENERS + """[auth]
mechanisms = ["PLAIN"]
failure_delay = 0.2
[metrics]
endpoint = "tcp:{port4}:interface=127.0.0.1"
[[lmtp]]
endpoint = "unix:{data_dir}/lmtp"
domains = ["example.com"]
max_message_size = 65536
[[lmtp]]
endpoint = "tcp:{port3}:interface=127.0.0.1"
"""

USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture(scope="module")
def lmtpd(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("lmtp"), CONFIG)
    for user in USERS:
        d.add_user(user, PASSWORD)
    d.cli("user", "quota", "carol", "0,1")         # one message
    d.cli("user", "quota", "dave", "2000,0")       # 2000 octets
    d.socket = str(d.data_dir / "lmtp")
    d.start(wait_ports=(d.pop3_port, d.pop3s_port, d.ports["port3"]))
    assert wait_for(lambda: os.path.exists(d.socket))
    yield d
    d.stop()


def lmtp_client(d):
    client = smtplib.LMTP(d.socket, timeout=30)
    client.ehlo_or_helo_if_needed()          # LHLO
    return client


def retr_all(d, user):
    client = pop3(d, user=user, password=PASSWORD)
    try:
        count = len(client.list()[1])
        return [poplib_retr(client, i) for i in range(1, count + 1)]
    finally:
        client.quit()


def raw_session(d, data, wait_for_reply=b"221 ", timeout=20):
    """Send C{data} in one write on the Unix socket; read until C{wait_for_reply}."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(d.socket)
        s.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while wait_for_reply not in received and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
    return [line.decode("ascii") for line in received.split(b"\r\n") if line]


def tree(path):
    return sorted(str(p) for p in path.rglob("*") if p.name != "twistd.log")


MESSAGE = (b"From: sender@example.org\r\nTo: alice@mx.example.org\r\nSubject: lmtp\r\n"
           b"\r\n.leading dot\r\n..two dots\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n\r\nend\r\n")


def test_two_recipients_250_each_and_unknown_550_arrive_byte_exact(lmtpd):
    client = lmtp_client(lmtpd)
    try:
        assert client.does_esmtp
        for ext in ("pipelining", "enhancedstatuscodes", "8bitmime", "size"):
            assert client.has_extn(ext), ext
        assert client.mail("sender@example.org")[0] == 250
        assert client.rcpt("alice@mx.example.org")[0] == 250
        code, text = client.rcpt("nobody@mx.example.org")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("bob@example.com")[0] == 250
        code, text = client.data(MESSAGE)            # the first recipient's reply
        assert code == 250 and b"alice@mx.example.org" in text
        code, text = client.getreply()               # the second's
        assert code == 250 and b"bob@example.com" in text
    finally:
        client.quit()
    header = b"Return-Path: <sender@example.org>\r\nDelivered-To: <%s>\r\n"
    assert retr_all(lmtpd, "alice")[-1] == header % b"alice@mx.example.org" + MESSAGE
    assert retr_all(lmtpd, "bob")[-1] == header % b"bob@example.com" + MESSAGE
    assert not (lmtpd.data_dir / "mail" / "nobody").exists()


def test_tcp_listener_delivers_too(lmtpd):
    client = smtplib.LMTP("127.0.0.1", lmtpd.ports["port3"], timeout=30)
    try:
        before = len(lmtpd.messages("bob"))
        assert client.sendmail("", ["bob@localhost"], b"Subject: tcp\r\n\r\nx\r\n") == {}
    finally:
        client.quit()
    assert len(lmtpd.messages("bob")) == before + 1
    assert retr_all(lmtpd, "bob")[-1].startswith(b"Return-Path: <>\r\n")


def test_over_quota_552_and_the_mailbox_is_unchanged(lmtpd):
    client = lmtp_client(lmtpd)
    try:
        assert client.sendmail("a@example.org", ["carol@localhost"], b"Subject: 1\r\n\r\n") == {}
        before = lmtpd.messages("carol")
        client.mail("a@example.org")
        code, text = client.rcpt("carol@localhost")  # already holds its one message
        assert (code, text[:5]) == (552, b"5.2.2")
        client.rset()
        # dave: 2000 octets; a 3000-octet message is refused after DATA
        client.mail("a@example.org")
        assert client.rcpt("dave@localhost")[0] == 250
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 38)
        assert (code, text[:5]) == (552, b"5.2.2")
        assert client.sendmail("a@example.org", ["dave@localhost"], b"Subject: s\r\n\r\nok\r\n") == {}
    finally:
        client.quit()
    assert lmtpd.messages("carol") == before
    assert len(lmtpd.messages("dave")) == 1
    assert retr_all(lmtpd, "dave")[0].endswith(b"\r\n\r\nok\r\n")


HOSTILE = [
    (b"../../../etc/passwd@localhost", "550 5.1.1"),
    (b"../x@localhost", "550 5.1.1"),
    (b"a/b@localhost", "550 5.1.1"),
    (b"x\x00y@localhost", "501 5.1.3"),
    (b"..@localhost", "550 5.1.1"),
    (b"alice@evil.example", "550 5.1.2"),
    (b"A" * 5000 + b"@localhost", "500 5.5.2"),
]


def test_hostile_recipients_refused_and_nothing_created(lmtpd):
    root = lmtpd.dir.parent
    before = tree(root)
    session = b"LHLO test\r\nMAIL FROM:<a@example.org>\r\n"
    for rcpt, _ in HOSTILE:
        session += b"RCPT TO:<" + rcpt + b">\r\n"
    session += b"DATA\r\nQUIT\r\n"
    replies = raw_session(lmtpd, session)
    codes = [r[:9] for r in replies if not r.startswith("250-")]
    assert codes[0].startswith("220")
    assert codes[1:3] == ["250 SIZE ", "250 2.1.0"]
    assert codes[3:3 + len(HOSTILE)] == [code for _, code in HOSTILE]
    assert codes[-2:] == ["503 5.5.1", "221 2.0.0"]
    assert tree(root) == before
    assert "Traceback" not in lmtpd.log()


def test_oversized_message_refused_and_nothing_stored(lmtpd):
    before = lmtpd.messages("alice")
    client = lmtp_client(lmtpd)
    try:
        client.mail("a@example.org")
        assert client.rcpt("alice@localhost")[0] == 250
        code, text = client.data(b"Subject: huge\r\n\r\n" + (b"x" * 98 + b"\r\n") * 1000)
        assert (code, text[:5]) == (552, b"5.3.4")
        code, text = client.docmd("MAIL FROM:<a@example.org> SIZE=1000000")
        assert (code, text[:5]) == (552, b"5.3.4")     # announced too big: refused at once
    finally:
        client.close()
    assert lmtpd.messages("alice") == before


def test_pipelined_commands_in_order_and_a_dropped_data_leaves_nothing(lmtpd):
    before = lmtpd.messages("alice")
    replies = raw_session(lmtpd, b"LHLO p\r\nMAIL FROM:<a@example.org>\r\n"
                                 b"RCPT TO:<alice@localhost>\r\nRCPT TO:<ghost@localhost>\r\n"
                                 b"DATA\r\nSubject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    codes = [r[:9] for r in replies if not r.startswith("250-")]
    assert codes[1:] == ["250 SIZE ", "250 2.1.0", "250 2.1.5", "550 5.1.1", "354 Start",
                         "250 2.0.0", "221 2.0.0"]
    assert len(lmtpd.messages("alice")) == len(before) + 1
    before = lmtpd.messages("alice")
    # dropped in the middle of DATA: nothing in new/, nothing left in tmp/
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(lmtpd.socket)
        s.sendall(b"LHLO p\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
                  b"DATA\r\nSubject: cut\r\n\r\n" + b"half a message\r\n" * 500)
        received = b""
        while b"354" not in received:
            received += s.recv(4096)
    time.sleep(0.5)
    assert lmtpd.messages("alice") == before
    assert os.listdir(lmtpd.maildir("alice") / "tmp") == []
    # the server still serves
    assert raw_session(lmtpd, b"LHLO p\r\nNOOP\r\nQUIT\r\n")[-2:] == ["250 2.0.0 OK",
                                                                       "221 2.0.0 Bye"]


def test_metrics_count_lmtp_outcomes(lmtpd):
    raw_session(lmtpd, b"LHLO m\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@localhost>\r\nQUIT\r\n")
    with urllib.request.urlopen(f"http://127.0.0.1:{lmtpd.ports['port4']}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    assert 'securepop_lmtp_deliveries_total{result="delivered"}' in text
    assert 'securepop_lmtp_deliveries_total{result="unknown_user"}' in text
    assert 'result="disk_full"' not in text


# -- Postfix delivering through lmtp:unix: ------------------------------------------------

POSTFIX_MAIN_CF = """
compatibility_level = 3.6
queue_directory = {spool}/queue
data_directory = {spool}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.org
mydomain = example.org
myorigin = example.org
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = example.com
virtual_transport = lmtp:unix:{socket}
lmtp_line_length_limit = 998
maillog_file = {spool}/maillog
maillog_file_prefixes = /tmp
notify_classes =
bounce_notice_recipient = postmaster
biff = no
smtputf8_enable = no
"""


def postfix_master_cf(port):
    """Debian's master.cf with nothing chrooted (the socket is outside the queue) and
    the SMTP listener on a loopback port."""
    lines = []
    for line in open("/etc/postfix/master.cf").read().splitlines():
        fields = line.split()
        if line[:1] in ("", " ", "\t", "#") or len(fields) < 8:
            lines.append(line)
            continue
        if fields[0] == "smtp" and fields[1] == "inet":
            fields[0] = f"127.0.0.1:{port}"
        fields[4] = "n"
        lines.append("  ".join(fields))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def postfix_setup(tmp_path_factory):
    postfix = require_tool("postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    # Postfix's daemons run as the postfix user: its spool and the LMTP socket live in
    # a directory it can enter (pytest's tmp is private to root).
    spool = tempfile.mkdtemp(prefix="splmtp-")
    os.chmod(spool, 0o755)
    sock = os.path.join(spool, "securepop.lmtp")
    config = CONFIG.replace('endpoint = "unix:{data_dir}/lmtp"',
                            f'endpoint = "unix:{sock}"\nmode = 0o666')
    d = Daemon(tmp_path_factory.mktemp("lmtp-postfix"), config)
    d.add_user("alice", PASSWORD)
    d.socket = sock
    d.start(wait_ports=(d.pop3_port, d.pop3s_port, d.ports["port3"]))
    assert wait_for(lambda: os.path.exists(sock))
    etc = os.path.join(spool, "etc")
    os.mkdir(etc)
    smtp_port = free_port()
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(POSTFIX_MAIN_CF.format(spool=spool, socket=sock))
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write(postfix_master_cf(smtp_port))
    for name in ("dynamicmaps.cf", "postfix-files"):
        if os.path.exists(f"/etc/postfix/{name}"):
            shutil.copy(f"/etc/postfix/{name}", etc)
    os.mkdir(os.path.join(spool, "queue"), 0o755)        # postfix-script fills it
    maillog = os.path.join(spool, "maillog")
    open(maillog, "w").close()
    shutil.chown(maillog, "postfix")
    started = subprocess.run([postfix, "-c", etc, "start"], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + open(maillog).read()
        wait_for_port("127.0.0.1", smtp_port, timeout=30)
        yield d, smtp_port, spool
    finally:
        subprocess.run([postfix, "-c", etc, "stop"], capture_output=True)
        d.stop()
        shutil.rmtree(spool, ignore_errors=True)


def test_postfix_delivers_through_lmtp_unix(postfix_setup):
    d, smtp_port, spool = postfix_setup
    body = (b"Subject: via postfix\r\nMessage-ID: <pf-1@example.org>\r\n"
            b"Date: Sat, 05 Dec 2026 15:00:00 +0000\r\nFrom: <sender@example.org>\r\n"
            b"\r\nhello through Postfix\r\n.dot line\r\n")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        refused = smtp.sendmail("sender@example.org",
                                ["alice@example.com", "nobody@example.com"], body)
    assert refused == {}        # Postfix queues both (no virtual_mailbox_maps to check)
    assert wait_for(lambda: len(d.messages("alice")) == 1, timeout=60), \
        open(os.path.join(spool, "maillog")).read()
    message = retr_all(d, "alice")[0]
    assert message.startswith(b"Return-Path: <sender@example.org>\r\n"
                              b"Delivered-To: <alice@example.com>\r\nReceived: ")
    assert message.endswith(b"\r\n\r\nhello through Postfix\r\n.dot line\r\n")
    assert b"Subject: via postfix\r\n" in message
    # the unknown recipient is bounced by Postfix with securepop's 550 5.1.1
    assert wait_for(lambda: "5.1.1" in open(os.path.join(spool, "maillog")).read(),
                    timeout=60)
    log = open(os.path.join(spool, "maillog")).read()
    assert "nobody@example.com" in log and "status=bounced" in log
    assert not (d.data_dir / "mail" / "nobody").exists()
