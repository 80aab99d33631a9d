"""
SIGTERM during an active RETR of a large message: it finishes within the
grace period, and nothing that was only marked (DELE without QUIT) is
removed.  A session that overstays the grace period is closed, still
without removing anything.
"""

import signal
import socket
import time

from tests.integration.daemon import DEFAULT_CONFIG, Daemon
from tests.integration.ops_client import POP3, read_exactly_until_dot
from tests.integration.test_ops_reload import big_message

PASSWORD = "Stop-pw-42"


def grace_config(seconds):
    return DEFAULT_CONFIG.replace("idle_timeout_login = 30\n",
                                  f"idle_timeout_login = 30\nshutdown_grace = {seconds}\n")


def test_sigterm_lets_retr_finish_and_removes_nothing(tmp_path):
    d = Daemon(tmp_path, grace_config(30), name="stop")
    d.add_user("alice", PASSWORD)
    d.deliver("alice", big_message(8))
    d.deliver("alice", b"Subject: small\r\n\r\nmarked only\r\n")
    before = d.messages("alice")
    assert len(before) == 2
    d.start()
    c = POP3(d.pop3s_port, rcvbuf=16384)
    c.login("alice", PASSWORD)
    assert c.cmd("DELE 2").startswith(b"+OK")
    size = int(c.cmd("LIST 1").split()[2])
    c.send("RETR 1")
    assert c.line().startswith(b"+OK")
    first = c.file.read(100_000)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_log("shutdown.draining")
    time.sleep(0.3)
    refused = False
    try:
        socket.create_connection(("127.0.0.1", d.pop3s_port), timeout=2).close()
    except OSError:
        refused = True
    assert refused                                   # no longer accepting
    rest = read_exactly_until_dot(c)
    assert len(first) + rest >= size                 # the RETR finished
    c.close()                                        # no QUIT
    code = d.stop(timeout=30)
    assert code in (0, -15)
    assert d.messages("alice") == before             # the marked one is still there
    assert "shutdown.closed" not in d.log()


def test_session_overstaying_grace_is_closed_without_commit(tmp_path):
    d = Daemon(tmp_path, grace_config(1), name="stop-grace")
    d.add_user("alice", PASSWORD)
    d.deliver("alice", b"Subject: one\r\n\r\nx\r\n")
    before = d.messages("alice")
    d.start()
    c = POP3(d.pop3s_port)
    c.login("alice", PASSWORD)
    assert c.cmd("DELE 1").startswith(b"+OK")
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(30)
    assert time.monotonic() - started < 15
    assert d.wait_log("shutdown.closed")
    d.stop()
    assert d.messages("alice") == before
