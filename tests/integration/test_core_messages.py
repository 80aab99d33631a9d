"""
What real clients download is bit-exact against what was delivered
(sha256 of the CRLF-normalised stored message), for the messages that break
naive servers: lines starting with ".", a 100 KB line, 8-bit bytes, NUL-free
binary-ish content, bare CRs, LF-only / CRLF / mixed storage, a missing final
line end, a "." or a CRLF split at the server's 64 KiB read boundary, and a
50 MB message.  A 100 MB RETR must not grow the server's memory.
"""

import base64
import os
import random
import threading
import time

import pytest

from tests.integration import clients as C

PASSWORD = C.CORE_PASSWORD
CHUNK = 64 * 1024          # securepop.protocol.streaming.CHUNK_SIZE


def filler(size, final_newline=True):
    """Exactly C{size} octets of short LF lines (RFC 5322 length, so every client copes)."""
    out = []
    while size > 200:
        out.append(b"a" * 75 + b"\n")
        size -= 76
    out.append(b"b" * (size - 1) + (b"\n" if final_newline else b"b"))
    return b"".join(out)


def _messages():
    rnd = random.Random(1939)
    no_cr = [b for b in range(1, 256) if b != 13]
    head = b"Subject: boundary\n\n"
    return {
        "dots": b"Subject: dots\n\n.\n..\n...\n.x\nmid.dle\n. \n\n.\n",
        "dot_first_line": b".first line starts with a dot\n..\n.\n",
        "long_line": b"Subject: long\n\n" + b"y" * 100_000 + b"\n." + b"z" * 100_000 + b"\nend\n",
        "eight_bit": "Subject: =?utf-8?q?8bit?= \xe9\n\n".encode("latin-1")
                     + bytes(range(0x80, 0x100)) + b"\n" + "Grüße, 東京\n".encode("utf-8"),
        "binaryish": b"Subject: binary\n\n" + bytes(rnd.choice(no_cr) for _ in range(30_000)),
        "bare_cr": b"Subject: cr\n\na\rb\r\r\n\rc\n\r.d\n\r",
        "lf_only": b"Subject: lf\n\nline 1\nline 2\n.line 3\n",
        "crlf": b"Subject: crlf\r\n\r\nline 1\r\n.line 2\r\n",
        "mixed": b"Subject: mixed\r\n\nA\r\nB\n.C\r\n",
        "no_final_eol": b"Subject: eol\n\nno line end at the end",
        # The server reads 64 KiB at a time: a "." opening the second read, a
        # CRLF split by the boundary, a "." right after a CRLF that ends a read.
        "dot_at_chunk_start": head + filler(CHUNK - len(head)) + b".dot\n",
        "crlf_across_chunks": head + filler(CHUNK - 1 - len(head), False) + b"\r\n.after\r\n",
        "dot_after_crlf_chunk": head + filler(CHUNK - 2 - len(head), False) + b"\r\n.x\n",
    }


MESSAGES = _messages()
assert MESSAGES["dot_at_chunk_start"][CHUNK:CHUNK + 1] == b"."
assert MESSAGES["crlf_across_chunks"][CHUNK - 1:CHUNK + 2] == b"\r\n."
assert MESSAGES["dot_after_crlf_chunk"][CHUNK - 2:CHUNK + 1] == b"\r\n."
# poplib strips a CR at the start of a line (its _getline), so bare CRs are
# checked with the other clients only.
POPLIB_SAFE = [k for k, v in MESSAGES.items() if b"\r" not in v.replace(b"\r\n", b"")]
# fetchmail splits lines longer than its buffer and drops a message whose first
# line is not a header; getmail6 re-parses the message (bare CRs, header-less
# first lines).  Those two clients get the RFC 5322-shaped messages.
RFC5322_SHAPED = [k for k in POPLIB_SAFE if k not in ("long_line", "dot_first_line")]
FETCHMAIL_SAFE = RFC5322_SHAPED + ["bare_cr"]
# Delivered through `securepop deliver` (the rest is written into new/ directly:
# each CLI start costs seconds on a loaded machine).
VIA_CLI = ("dots", "crlf", "binaryish")


def expected_digests(names):
    return sorted(C.sha256(C.crlf_normalise(MESSAGES[n])) for n in names)


def describe(names, digests):
    """Which messages were not received exactly (for assertion messages)."""
    got = set(digests)
    return [n for n in names if C.sha256(C.crlf_normalise(MESSAGES[n])) not in got]


@pytest.fixture(scope="module")
def core(daemon_factory):
    d = C.core_daemon(daemon_factory)
    C.reset_mailbox(d, "messages")
    for name in MESSAGES:
        if name in VIA_CLI:
            d.deliver("messages", MESSAGES[name])
        else:
            C.store_message(d, "messages", MESSAGES[name])
    return d


def test_delivery_stores_octets_unchanged(core):
    stored = sorted(p.read_bytes() for sub in ("new", "cur")
                    for p in (core.maildir("messages") / sub).iterdir())
    assert stored == sorted(MESSAGES.values())
    assert len(stored) == len(MESSAGES)


def test_raw_client_sizes_and_bodies_exact(core):
    with C.RawPOP3(core, C.IMPLICIT) as c:
        assert c.login("messages", PASSWORD).startswith(b"+OK")
        assert c.command(b"LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in c.multiline()]
        bodies = [c.retr(i) for i in range(1, len(sizes) + 1)]
        assert c.command(b"QUIT").startswith(b"+OK")
    assert [len(b) for b in bodies] == sizes            # LIST counts CRLF octets exactly
    digests = [C.sha256(b) for b in bodies]
    assert sorted(digests) == expected_digests(MESSAGES), describe(MESSAGES, digests)
    C.assert_no_leak(bytes(c.received).replace(MESSAGES["binaryish"], b""))


def test_raw_client_sees_stuffed_wire_form(core):
    # The wire form itself: the first line and every "." line are stuffed.
    with C.RawPOP3(core, C.IMPLICIT) as c:
        c.login("messages", PASSWORD)
        c.command(b"UIDL")
        uidls = c.multiline()
        raws = []
        for i in range(1, len(uidls) + 1):
            c.send(b"RETR %d\r\n" % i)
            assert c.readline().startswith(b"+OK")
            data = bytearray(c.buf)
            while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
                data += c.sock.recv(1 << 20)
            c.buf = b""
            raws.append(bytes(data))
    assert sum(r.startswith(b"..first line starts with a dot\r\n...\r\n..\r\n")
               for r in raws) == 1
    assert sum(b"\r\n\r\n..\r\n...\r\n....\r\n..x\r\nmid.dle\r\n.. \r\n" in r
               for r in raws) == 1
    for wire in raws:
        body = wire[:-3]
        # No line of the body is a lone "." (that would end the message early).
        assert not body.startswith(b".\r\n") and b"\r\n.\r\n" not in body


def test_top_zero_lines_is_header_and_separator(core):
    with C.RawPOP3(core, C.IMPLICIT) as c:
        c.login("messages", PASSWORD)
        c.command(b"LIST")
        count = len(c.multiline())
        tops = []
        for i in range(1, count + 1):
            assert c.command(b"TOP %d 0" % i).startswith(b"+OK")
            tops.append(c.body())
    assert b"Subject: crlf\r\n\r\n" in tops
    assert b"Subject: mixed\r\n\r\n" in tops
    assert b"Subject: lf\r\n\r\n" in tops
    # Negative: a body line never leaks into TOP 0.
    assert not any(b"line 1" in t for t in tops)


def test_poplib_stls_downloads_exact(core):
    client = C.pop3(core, C.STARTTLS, "messages", PASSWORD)
    try:
        digests = [C.sha256(C.poplib_retr(client, i))
                   for i in range(1, client.stat()[0] + 1)]
    finally:
        client.quit()
    want = expected_digests(POPLIB_SAFE)
    assert sorted(set(digests) & set(want)) == want, describe(POPLIB_SAFE, digests)


def test_poplib_pop3_ssl_downloads_exact(core):
    client = C.pop3(core, C.IMPLICIT, "messages", PASSWORD)
    try:
        digests = [C.sha256(C.poplib_retr(client, i))
                   for i in range(1, client.stat()[0] + 1)]
    finally:
        client.quit()
    want = expected_digests(POPLIB_SAFE)
    assert sorted(set(digests) & set(want)) == want, describe(POPLIB_SAFE, digests)


@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_curl_downloads_exact(core, tls):
    digests = []
    for i in range(1, len(MESSAGES) + 1):
        r = C.curl(core, "messages", PASSWORD, str(i), tls=tls)
        assert r.returncode == 0, r.stderr
        digests.append(C.sha256(r.stdout))
    assert sorted(digests) == expected_digests(MESSAGES), describe(MESSAGES, digests)
    # Negative: one past the end is an error, not an empty message.
    r = C.curl(core, "messages", PASSWORD, str(len(MESSAGES) + 1), tls=tls)
    assert r.returncode != 0 and r.stdout == b""


@pytest.mark.parametrize("tls", [C.STARTTLS, C.IMPLICIT])
def test_fetchmail_downloads_exact(core, tmp_path, tls):
    proc, messages = C.fetchmail(core, "messages", PASSWORD, tmp_path, tls=tls)
    assert proc.returncode == 0, proc.stderr
    digests = [C.sha256(m) for m in messages]
    want = expected_digests(FETCHMAIL_SAFE)
    assert sorted(set(digests) & set(want)) == want, describe(FETCHMAIL_SAFE, digests)


def test_getmail_downloads_exact(core, tmp_path):
    # getmail6 stores LF line ends (and adds Return-Path): compare with the
    # LF form of what was delivered.
    proc, messages = C.getmail(core, "messages", PASSWORD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = sorted(C.sha256(C.strip_getmail_headers(m)) for m in messages)
    want = sorted(C.sha256(C.lf_normalise(MESSAGES[n])) for n in RFC5322_SHAPED)
    assert sorted(set(got) & set(want)) == want
    assert len(messages) == len(MESSAGES)


# -- 50 MB -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big(core):
    """A 50 MB LF-stored message with dot lines and 8-bit bytes."""
    lines = base64.encodebytes(os.urandom(37 * 2**20))
    body = lines.replace(b"\nA", b"\n.A").replace(b"\nB", b"\n\xe9B")
    data = b"Subject: fifty megabytes\n\n" + body
    assert len(data) > 50 * 10**6
    C.reset_mailbox(core, "bigmsg")
    C.store_message(core, "bigmsg", data)
    wire = C.crlf_normalise(data)
    return C.sha256(wire), len(wire)


def test_50mb_message_curl_pop3s_exact(core, big, tmp_path):
    digest, size = big
    out = tmp_path / "big.eml"
    r = C.curl(core, "bigmsg", PASSWORD, "1", tls=C.IMPLICIT, output=out)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == size
    assert C.sha256(out.read_bytes()) == digest


def test_50mb_message_raw_stls_exact(core, big):
    digest, size = big
    with C.RawPOP3(core, C.PLAIN, timeout=60) as c:
        c.starttls()
        c.login("bigmsg", PASSWORD)
        assert c.command(b"LIST 1") == b"+OK 1 %d" % size
        body = c.retr(1)
        assert c.command(b"NOOP") == b"+OK"        # the session goes on after the body
    assert len(body) == size
    assert C.sha256(body) == digest


# -- memory ------------------------------------------------------------------------------

def test_100mb_retr_keeps_server_memory_flat(core):
    """VmRSS of the daemon before, during (sampled) and after a 100 MB RETR."""
    size = 100 * 2**20
    line = b"x" * 1022 + b"\r\n"
    C.reset_mailbox(core, "rss")
    C.store_message(core, "rss", b"Subject: rss\r\n\r\n" + line * (size // len(line)))
    C.store_message(core, "rss", b"Subject: small\r\n\r\nwarm up\r\n")
    pid = core.proc.pid
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(C.vmrss_kib(pid))
            time.sleep(0.01)

    with C.RawPOP3(core, C.IMPLICIT, timeout=60) as c:
        c.login("rss", PASSWORD)
        assert c.command(b"LIST").startswith(b"+OK")
        sizes = {int(n): int(s) for n, s in (l.split() for l in c.multiline())}
        big_n = max(sizes, key=sizes.get)
        c.retr(min(sizes, key=sizes.get))           # warm up the RETR path
        before = C.vmrss_kib(pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            assert c.command(b"RETR %d" % big_n).startswith(b"+OK")
            received, tail = 0, b""
            while not (tail + b"").endswith(b"\r\n.\r\n"):
                chunk = c.buf or c.sock.recv(1 << 20)
                c.buf = b""
                assert chunk, "connection closed during RETR"
                received += len(chunk)
                tail = (tail + chunk)[-5:]
        finally:
            stop.set()
            sampler.join()
        after = C.vmrss_kib(pid)
    assert received == sizes[big_n] + 3
    assert len(samples) > 5
    growth_mib = (max(samples + [after]) - before) / 1024
    assert growth_mib < 8, f"RSS grew by {growth_mib:.1f} MiB during a 100 MB RETR"
