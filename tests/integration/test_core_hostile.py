"""
Hostile input against the real daemon: every line gets its documented
answer, nothing crashes, no exception text reaches the wire, and other
clients are served meanwhile.  Also: STLS command injection, credentials
before TLS, CAPA by state, pipelining floods and idle timeouts.
"""

import base64
import socket
import threading
import time

import pytest

from tests.integration import clients as C

PASSWORD = C.CORE_PASSWORD
USER = "hostile"
BODIES = [b"Subject: a\n\none\n", b"Subject: b\n\ntwo\n", b"Subject: c\n\nthree\n"]


@pytest.fixture(scope="module")
def core(daemon_factory):
    d = C.core_daemon(daemon_factory)
    C.reset_mailbox(d, USER)
    for body in BODIES:
        C.store_message(d, USER, body)
    return d


@pytest.fixture
def served(core):
    """After the test: no leak on the wire, and a fresh client is still served."""
    opened = []

    def connect(tls=C.PLAIN, **kw):
        c = C.RawPOP3(core, tls, **kw)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        C.assert_no_leak(bytes(c.received))
        c.close()
    C.still_serving(core, "alice", PASSWORD)


def logged_in(connect, tls=C.IMPLICIT):
    c = connect(tls)
    assert c.login(USER, PASSWORD).startswith(b"+OK")
    return c


def quit_and_check_nothing_deleted(core, c):
    assert c.command(b"QUIT").startswith(b"+OK")
    assert len(core.messages(USER)) == len(BODIES)


# -- malformed commands ----------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    (b"", b"-ERR Unknown command"),
    (b" ", b"-ERR Unknown command"),
    (b"XYZZY", b"-ERR Unknown command"),
    (b"RETR", b"-ERR Syntax error in arguments"),
    (b"RETR 1 2", b"-ERR Syntax error in arguments"),
    (b"RETR  1", b"-ERR Syntax error in arguments"),
    (b"LIST a", b"-ERR Syntax error in arguments"),
    (b"LIST 1 2", b"-ERR Syntax error in arguments"),
    (b"TOP 1", b"-ERR Syntax error in arguments"),
    (b"TOP 1 x", b"-ERR Syntax error in arguments"),
    (b"TOP 1 -1", b"-ERR Syntax error in arguments"),
    (b"DELE", b"-ERR Syntax error in arguments"),
    (b"DELE 1x", b"-ERR Syntax error in arguments"),
    (b"DELE 1.0", b"-ERR Syntax error in arguments"),
    (b"DELE 0x1", b"-ERR Syntax error in arguments"),
    (b"DELE -1", b"-ERR Syntax error in arguments"),
    (b"DELE +1", b"-ERR Syntax error in arguments"),
    (b"DELE 99999999999", b"-ERR Syntax error in arguments"),
    (b"DELE 0", b"-ERR No such message"),
    (b"DELE 4", b"-ERR No such message"),
    (b"DELE 4294967297", b"-ERR No such message"),
    (b"RETR 0", b"-ERR No such message"),
    (b"RETR 9999999999", b"-ERR No such message"),
    (b"TOP 0 1", b"-ERR No such message"),
    (b"LIST 0", b"-ERR No such message"),
    (b"UIDL 4", b"-ERR No such message"),
    (b"STAT 1", b"-ERR Syntax error in arguments"),
    (b"NOOP x", b"-ERR Syntax error in arguments"),
    (b"QUIT now", b"-ERR Syntax error in arguments"),
    (b"RSET 1", b"-ERR Syntax error in arguments"),
    (b"NOOP\x00", b"-ERR Syntax error in arguments"),
    (b"DE\x00LE 1", b"-ERR Syntax error in arguments"),
    (b"DELE \x001", b"-ERR Syntax error in arguments"),
    (b"\xff\xfe", b"-ERR Unknown command"),
    (b"DELE \xb9", b"-ERR Syntax error in arguments"),
    (b"R\xc3\xa9TR 1", b"-ERR Unknown command"),
])
def test_transaction_bad_line_answered_and_nothing_deleted(core, served, line, reply):
    c = logged_in(served)
    assert c.command(line) == reply
    assert c.command(b"STAT").startswith(b"+OK 3 ")        # the session goes on
    quit_and_check_nothing_deleted(core, c)


def test_valid_dele_is_the_positive_case(core, served):
    c = logged_in(served)
    assert c.command(b"DELE 3") == b"+OK Message 3 deleted"
    assert c.command(b"DELE 3") == b"-ERR Message already deleted"
    assert c.command(b"RSET") == b"+OK"
    quit_and_check_nothing_deleted(core, c)


@pytest.mark.parametrize("line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 0",
                                  b"RSET", b"NOOP"])
def test_transaction_commands_refused_before_login(served, line):
    c = served(C.IMPLICIT)
    assert c.command(line) == b"-ERR Command not valid in this state"


def test_overlong_line_refused_session_goes_on(served):
    c = logged_in(served)
    assert c.command(b"NOOP " + b"x" * 250) == b"-ERR Line too long"     # 257 octets with CRLF
    assert c.command(b"LIST " + b"1" * 248) == b"-ERR Syntax error in arguments"  # 255: fits
    assert c.command(b"NOOP") == b"+OK"


def test_huge_line_gets_exactly_one_answer(served):
    c = logged_in(served)
    c.send(b"y" * 100_000 + b"\r\nNOOP\r\n")       # one huge line, then one command
    assert c.readline() == b"-ERR Line too long"
    assert c.readline() == b"+OK"


def test_endless_line_is_not_buffered(core, served):
    c = served(C.PLAIN)
    pid = core.proc.pid
    before = C.vmrss_kib(pid)
    try:
        c.send(b"z" * 4_000_000 + b"\r\nNOOP\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert (C.vmrss_kib(pid) - before) / 1024 < 8
    lines = []
    try:
        while not lines or lines[-1] not in (
                b"-ERR Command not valid in this state",
                b"-ERR [SYS/PERM] Too many errors, closing connection"):
            lines.append(c.readline())
    except (EOFError, ConnectionResetError):
        pass
    # Refused (and, if too often, closed); never taken as a command.
    assert lines and set(lines) <= {b"-ERR Line too long", b"-ERR Command not valid in this state",
                                    b"-ERR [SYS/PERM] Too many errors, closing connection"}


def test_repeated_bad_commands_close_connection(served):
    c = served(C.PLAIN)
    for _ in range(9):
        assert c.command(b"BOGUS") == b"-ERR Unknown command"
    assert c.command(b"BOGUS") == b"-ERR [SYS/PERM] Too many errors, closing connection"
    assert c.closed(5)


def test_nul_and_non_utf8_user_name_fail_generically(served):
    c = served(C.PLAIN)
    c.starttls()
    assert c.command(b"USER \xff\xfe") == b"+OK Send PASS"
    assert c.command(b"PASS " + PASSWORD.encode()) == b"-ERR [AUTH] Authentication failed"
    assert c.command(b"USER ali\x00ce") == b"-ERR Syntax error in arguments"
    assert c.command(b"USER alice") == b"+OK Send PASS"
    assert c.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK")


# -- pipelining ------------------------------------------------------------------------------

def test_thousands_of_pipelined_commands_answered_in_order(core, served):
    c = logged_in(served)
    c.command(b"LIST")
    sizes = c.multiline()
    kinds = [b"NOOP", b"STAT", b"LIST 2", b"UIDL 3", b"DELE 9"]
    expected_prefix = [b"+OK", b"+OK 3 ", b"+OK 2 ", b"+OK 3 ", b"-ERR No such message"]
    n = 5000
    batch = b"".join(kinds[i % 5] + b"\r\n" for i in range(n))
    sender = threading.Thread(target=c.send, args=(batch,))
    sender.start()
    # Meanwhile another client is served.
    C.still_serving(core, "alice", PASSWORD)
    replies = [c.readline() for _ in range(n)]
    sender.join()
    for i, reply in enumerate(replies):
        assert reply.startswith(expected_prefix[i % 5]), (i, reply)
    assert replies[2] == b"+OK " + sizes[1]
    assert c.command(b"NOOP") == b"+OK"           # none lost, none extra
    assert c.silent(0.3) == b""
    quit_and_check_nothing_deleted(core, c)


def test_pipelined_flood_does_not_starve_other_clients(core):
    """
    One client pipelines 1500 UIDL (9 KB) on a 1000-message maildrop and
    never reads.  The queue must be bounded (stop reading / max_pipeline)
    and other clients served meanwhile, not after ~3 million lines.
    """
    user = "pipeline"
    if len(core.messages(user)) != 1000:
        C.reset_mailbox(core, user)
        for i in range(1000):
            C.store_message(core, user, b"Subject: %d\n\nx\n" % i, name="flood%04d" % i)
    pid = core.proc.pid
    c = C.RawPOP3(core, C.IMPLICIT)
    try:
        assert c.login(user, PASSWORD).startswith(b"+OK")
        before = C.vmrss_kib(pid)
        c.send(b"UIDL\r\n" * 1500)
        time.sleep(0.3)
        started = time.monotonic()
        C.still_serving(core, "alice", PASSWORD)
        waited = time.monotonic() - started
        growth_mib = (C.vmrss_kib(pid) - before) / 1024
    finally:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    assert waited < 2.5, f"another client waited {waited:.1f} s behind one pipelining client"
    assert growth_mib < 16, f"server RSS grew {growth_mib:.0f} MiB for an unread pipeline"


# -- login state ------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"USER alice", b"PASS " + PASSWORD.encode(),
                                  b"APOP alice 0123456789abcdef0123456789abcdef",
                                  b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()),
                                  b"AUTH LOGIN", b"STLS"])
def test_second_login_refused_after_login(core, served, line):
    c = logged_in(served)
    reply = c.command(line)
    assert reply.startswith(b"-ERR"), reply
    if not line.startswith(b"STLS"):
        assert reply == b"-ERR Already authenticated"
    # Still the same user's session.
    assert c.command(b"STAT").startswith(b"+OK 3 ")
    quit_and_check_nothing_deleted(core, c)


@pytest.mark.parametrize("line", [b"USER " + USER.encode(), b"PASS " + PASSWORD.encode(),
                                  b"APOP alice 0123456789abcdef0123456789abcdef",
                                  b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()),
                                  b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5",
                                  b"AUTH SCRAM-SHA-256", b"AUTH NTLM"])
def test_credentials_before_tls_refused_with_auth_code(served, line):
    c = served(C.PLAIN)
    assert c.command(line).startswith(b"-ERR [AUTH]")
    assert c.command(b"STAT") == b"-ERR Command not valid in this state"


def test_credentials_after_stls_accepted(served):
    c = served(C.PLAIN)
    c.starttls()
    assert c.command(b"USER " + USER.encode()) == b"+OK Send PASS"
    assert c.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK")
    assert c.command(b"QUIT").startswith(b"+OK")


def capa(c):
    assert c.command(b"CAPA").startswith(b"+OK")
    return c.multiline()


def test_capa_by_state(served):
    plain = served(C.PLAIN)
    before = capa(plain)
    assert b"STLS" in before
    assert b"USER" not in before and not any(l.startswith(b"SASL") for l in before)
    plain.starttls()
    after = capa(plain)
    assert b"STLS" not in after and b"USER" in after
    assert any(l.startswith(b"SASL ") and b"PLAIN" in l.split() for l in after)
    implicit = served(C.IMPLICIT)
    caps = capa(implicit)
    assert b"STLS" not in caps and b"USER" in caps
    assert implicit.login(USER, PASSWORD).startswith(b"+OK")
    logged = capa(implicit)
    assert not {b"STLS", b"USER"} & set(logged)
    assert not any(l.startswith(b"SASL") for l in logged)
    assert {b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING"} <= set(logged)
    implicit.command(b"QUIT")


def test_stls_refused_where_it_makes_no_sense(served):
    implicit = served(C.IMPLICIT)
    assert implicit.command(b"STLS") == b"-ERR STLS not available"
    plain = served(C.PLAIN)
    plain.starttls()
    assert plain.command(b"STLS") == b"-ERR STLS not available"
    assert plain.command(b"NOOP") == b"-ERR Command not valid in this state"   # TLS alive


# -- STLS command injection ----------------------------------------------------------------------

def test_capa_pipelined_after_stls_is_never_answered(served):
    c = served(C.PLAIN)
    c.send(b"STLS\r\nCAPA\r\n")
    assert c.readline() == b"+OK Begin TLS negotiation"
    assert c.buf == b"" and c.silent(0.3) == b""       # nothing more in cleartext
    c.sock = C.client_context(c.daemon).wrap_socket(c.sock, server_hostname=C.HOST)
    assert c.silent(0.7) == b""                         # ... nor inside TLS
    caps = capa(c)                                      # the TLS session works
    assert b"USER" in caps and b"STLS" not in caps
    assert c.login(USER, PASSWORD).startswith(b"+OK")
    assert c.command(b"QUIT").startswith(b"+OK")


def test_login_pipelined_after_stls_is_discarded(served):
    c = served(C.PLAIN)
    c.send(b"STLS\r\nUSER " + USER.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\nDELE 1\r\n")
    assert c.readline() == b"+OK Begin TLS negotiation"
    c.sock = C.client_context(c.daemon).wrap_socket(c.sock, server_hostname=C.HOST)
    assert c.silent(0.7) == b""
    assert c.command(b"STAT") == b"-ERR Command not valid in this state"   # not logged in
    assert c.command(b"PASS " + PASSWORD.encode()) == b"-ERR USER first"    # USER forgotten


# -- the log -------------------------------------------------------------------------------------------

def test_no_traceback_in_daemon_log(core):
    log = core.log()
    assert "Traceback" not in log
    assert "Unhandled error" not in log
    assert PASSWORD not in log                      # credentials never logged


# -- idle timeouts --------------------------------------------------------------------------------------

IDLE_CONFIG = """
[server]
hostname = "localhost"
data_dir = "{data_dir}"
idle_timeout_login = 1
idle_timeout = 2
[[listen]]
endpoint = "tcp:{pop3_port}:interface=127.0.0.1"
tls = "starttls"
[[listen]]
endpoint = "tcp:{pop3s_port}:interface=127.0.0.1"
tls = "implicit"
[auth]
failure_delay = 0.2
"""


@pytest.fixture(scope="module")
def idle(daemon_factory):
    d = daemon_factory(config=IDLE_CONFIG, users=(("alice", PASSWORD),), name="idle")
    C.reset_mailbox(d, "alice")
    C.store_message(d, "alice", b"Subject: big\r\n\r\n" + (b"w" * 998 + b"\r\n") * 30_000)
    C.store_message(d, "alice", b"Subject: small\r\n\r\nsmall\r\n")
    return d


def test_idle_unauthenticated_client_is_closed(idle):
    with C.RawPOP3(idle, C.PLAIN) as c:
        started = time.monotonic()
        assert c.closed(6)
        assert time.monotonic() - started < 5
    assert "session.timeout" in idle.log()


def test_idle_timeout_line_reaches_the_client(idle):
    with C.RawPOP3(idle, C.PLAIN) as c:
        assert c.readline(timeout=4) == b"-ERR [SYS/TEMP] Idle timeout, closing connection"


def test_active_unauthenticated_client_is_not_closed(idle):
    with C.RawPOP3(idle, C.PLAIN) as c:
        for _ in range(6):                  # 2.4 s > idle_timeout_login, each gap 0.4 s
            time.sleep(0.4)
            assert c.command(b"CAPA").startswith(b"+OK")
            c.multiline()
        assert c.command(b"QUIT").startswith(b"+OK")


def test_client_that_stops_reading_mid_retr_is_disconnected(idle):
    c = C.RawPOP3(idle, C.IMPLICIT, timeout=30)
    try:
        assert c.login("alice", PASSWORD).startswith(b"+OK")
        assert c.command(b"LIST").startswith(b"+OK")
        sizes = {int(n): int(s) for n, s in (l.split() for l in c.multiline())}
        big = max(sizes, key=sizes.get)
        small = min(sizes, key=sizes.get)
        assert c.command(b"DELE %d" % small).startswith(b"+OK")
        log_start = len(idle.log())
        c.send(b"RETR %d\r\n" % big)
        c._fill()                           # the first bytes, then stop reading
        assert idle.wait_log("session.timeout", timeout=15, start=log_start), \
            "no idle timeout for a client that stopped reading"
        # What is left in the socket buffers ends short of the message: closed.
        received = len(c.buf)
        try:
            while True:
                c._fill(5)
                received = len(c.buf)
        except (EOFError, ConnectionResetError, OSError):
            pass
        assert received < sizes[big]
    finally:
        c.close()
    assert len(idle.messages("alice")) == 2          # the DELE was not committed
    with C.RawPOP3(idle, C.IMPLICIT) as again:       # lock released
        assert again.login("alice", PASSWORD).startswith(b"+OK")
        again.command(b"QUIT")


def test_client_that_reads_finishes_retr_despite_short_timeout(idle):
    with C.RawPOP3(idle, C.IMPLICIT, timeout=30) as c:
        assert c.login("alice", PASSWORD).startswith(b"+OK")
        assert c.command(b"LIST").startswith(b"+OK")
        sizes = {int(n): int(s) for n, s in (l.split() for l in c.multiline())}
        big = max(sizes, key=sizes.get)
        assert len(c.retr(big)) == sizes[big]
        time.sleep(1.2)                              # idle, but under idle_timeout
        assert c.command(b"NOOP") == b"+OK"
        c.command(b"QUIT")
