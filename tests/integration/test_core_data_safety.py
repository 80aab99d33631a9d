"""
RFC 1939 data safety against the real daemon: DELE only marks, QUIT in
TRANSACTION removes, every other end of a session removes nothing, RSET
restores the numbering, a second session gets [IN-USE], a killed server's
lock does not block the next login, and mail arriving during a session is
kept for the next one.
"""

import socket
import time

import pytest

from tests.integration import clients as C
from tests.integration.daemon import Daemon

PASSWORD = C.CORE_PASSWORD
USER = "safety"
BODIES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n", b"Subject: three\n\nthird\n"]


@pytest.fixture(scope="module")
def core(daemon_factory):
    return C.core_daemon(daemon_factory)


def login_when_free(daemon, user, timeout=10.0):
    """
    Log in, retrying while the previous session's lock is being released
    (the server notices a dropped connection asynchronously).
    """
    deadline = time.monotonic() + timeout
    while True:
        c = C.RawPOP3(daemon, C.IMPLICIT)
        reply = c.login(user, PASSWORD)
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            assert reply.startswith(b"+OK"), reply
            return c
        assert reply.startswith(b"-ERR [IN-USE]"), reply
        c.close()
        time.sleep(0.1)


@pytest.fixture
def mailbox(core):
    """Three messages in the safety user's Maildir; returns their stored names."""
    C.reset_mailbox(core, USER)
    for body in BODIES:
        C.store_message(core, USER, body)
    return core.messages(USER)


def uidl_map(c):
    assert c.command(b"UIDL").startswith(b"+OK")
    return [tuple(line.split()) for line in c.multiline()]


def test_dele_then_dropped_connection_keeps_everything(core, mailbox):
    c = login_when_free(core, USER)
    assert c.command(b"DELE 1").startswith(b"+OK")
    assert c.command(b"DELE 3").startswith(b"+OK")
    assert c.command(b"STAT") == b"+OK 1 %d" % len(C.crlf_normalise(BODIES[1]))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                      # RST, no QUIT
    c = login_when_free(core, USER)
    try:
        assert c.command(b"STAT").startswith(b"+OK 3 ")
    finally:
        c.command(b"QUIT")
        c.close()
    assert core.messages(USER) == mailbox


def test_dele_then_quit_removes_only_marked(core, mailbox):
    c = login_when_free(core, USER)
    before = uidl_map(c)
    assert c.command(b"DELE 2").startswith(b"+OK")
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    assert len(core.messages(USER)) == 2
    c = login_when_free(core, USER)
    try:
        after = uidl_map(c)
        assert [uid for _, uid in after] == [before[0][1], before[2][1]]
        assert [c.retr(1), c.retr(2)] == [C.crlf_normalise(BODIES[0]),
                                          C.crlf_normalise(BODIES[2])]
    finally:
        c.command(b"QUIT")
        c.close()


def test_quit_without_dele_removes_nothing(core, mailbox):
    c = login_when_free(core, USER)
    assert c.retr(1) == C.crlf_normalise(BODIES[0])
    assert c.command(b"QUIT").startswith(b"+OK")
    c.close()
    assert core.messages(USER) == mailbox


def test_deleted_message_is_not_listed_nor_retrievable(core, mailbox):
    c = login_when_free(core, USER)
    try:
        assert c.command(b"DELE 2").startswith(b"+OK")
        assert c.command(b"RETR 2").startswith(b"-ERR")
        assert c.command(b"DELE 2").startswith(b"-ERR")
        assert c.command(b"LIST 2").startswith(b"-ERR")
        assert c.command(b"TOP 2 0").startswith(b"-ERR")
        assert c.command(b"LIST").startswith(b"+OK")
        assert [line.split()[0] for line in c.multiline()] == [b"1", b"3"]
        assert c.command(b"RSET") == b"+OK"
    finally:
        c.command(b"QUIT")
        c.close()
    assert core.messages(USER) == mailbox


def test_rset_restores_numbering(core, mailbox):
    c = login_when_free(core, USER)
    try:
        before = uidl_map(c)
        assert c.command(b"LIST").startswith(b"+OK")
        sizes = c.multiline()
        for n in (b"1", b"2", b"3"):
            assert c.command(b"DELE " + n).startswith(b"+OK")
        assert c.command(b"STAT") == b"+OK 0 0"
        assert c.command(b"RSET").startswith(b"+OK")
        assert uidl_map(c) == before
        assert c.command(b"LIST").startswith(b"+OK")
        assert c.multiline() == sizes
        assert c.retr(3) == C.crlf_normalise(BODIES[2])
        assert c.command(b"QUIT").startswith(b"+OK")
    finally:
        c.close()
    assert core.messages(USER) == mailbox


def test_second_session_is_in_use_until_first_quits(core):
    C.reset_mailbox(core, "inuse")
    C.store_message(core, "inuse", BODIES[0])
    first = C.RawPOP3(core, C.IMPLICIT)
    assert first.login("inuse", PASSWORD).startswith(b"+OK")
    try:
        with C.RawPOP3(core, C.PLAIN) as second:
            second.starttls()
            reply = second.login("inuse", PASSWORD)
            assert reply.startswith(b"-ERR [IN-USE]"), reply
            # The refused session is still in AUTHORIZATION, not logged in.
            assert second.command(b"STAT").startswith(b"-ERR")
        assert first.command(b"DELE 1").startswith(b"+OK")
        assert first.command(b"QUIT").startswith(b"+OK")
    finally:
        first.close()
    with C.RawPOP3(core, C.IMPLICIT) as third:
        assert third.login("inuse", PASSWORD).startswith(b"+OK")
        assert third.command(b"STAT") == b"+OK 0 0"
        third.command(b"QUIT")


def test_mail_arriving_during_session_kept_for_next_login(core, mailbox):
    c = login_when_free(core, USER)
    try:
        core.deliver(USER, b"Subject: late\n\nlate arrival\n")
        assert c.command(b"STAT").startswith(b"+OK 3 ")        # snapshot at login
        for n in (b"1", b"2", b"3"):
            assert c.command(b"DELE " + n).startswith(b"+OK")
        assert c.command(b"QUIT").startswith(b"+OK")
    finally:
        c.close()
    assert len(core.messages(USER)) == 1
    c = login_when_free(core, USER)
    try:
        assert c.retr(1) == b"Subject: late\r\n\r\nlate arrival\r\n"
    finally:
        c.command(b"QUIT")
        c.close()


def test_kill9_leaves_mail_and_next_login_works(tmp_path):
    d = Daemon(tmp_path)
    d.add_user("alice", PASSWORD)
    d.start()
    try:
        C.store_message(d, "alice", BODIES[0])
        C.store_message(d, "alice", BODIES[1])
        stored = d.messages("alice")
        c = C.RawPOP3(d, C.IMPLICIT)
        assert c.login("alice", PASSWORD).startswith(b"+OK")
        assert c.command(b"DELE 1").startswith(b"+OK")
        # Negative first: while the session lives, the lock holds.
        with C.RawPOP3(d, C.IMPLICIT) as other:
            assert other.login("alice", PASSWORD).startswith(b"-ERR [IN-USE]")
        d.kill9()
        assert c.closed(5)
        c.close()
        assert d.messages("alice") == stored                # DELE was never committed
        d.start()
        with C.RawPOP3(d, C.IMPLICIT) as again:
            reply = again.login("alice", PASSWORD)
            assert reply.startswith(b"+OK"), reply          # stale lock recovered
            assert again.command(b"STAT").startswith(b"+OK 2 ")
            assert again.command(b"QUIT").startswith(b"+OK")
    finally:
        d.stop()
    assert "Traceback" not in d.log()
