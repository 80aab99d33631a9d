"""
Brute-force defence of the real daemon.

50 wrong passwords from one address follow the penalty schedule (roughly:
the unit tests measure it exactly on a fake clock) while valid logins from
another address go through at once; the attempt limit closes the
connection; every failure is one fixed-format log line, and fail2ban's own
C{fail2ban-regex} with C{etc/fail2ban/filter.d/securepop.conf} matches
exactly those lines in the daemon's real log file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.clients import IMPLICIT, STARTTLS
from tests.integration.conftest import ALICE_PASSWORD
from tests.integration.daemon import DEFAULT_CONFIG, require_tool
from tests.integration.test_sasl_clients import (
    LogCursor, SourcePOP3, auth_plain, b64, sasl_daemon_for,
)

BASE, MAXIMUM, ATTEMPTS = 0.05, 0.4, 50
BRUTE_CONFIG = (DEFAULT_CONFIG
                .replace("failure_delay = 0.2\n", f"failure_delay = {BASE}\n")
                .replace("failure_delay_max = 1.0\n", f"failure_delay_max = {MAXIMUM}\n")
                .replace("max_attempts = 3\n", f"max_attempts = {ATTEMPTS}\n"))
assert BRUTE_CONFIG.count(str(MAXIMUM)) == 1 and f"max_attempts = {ATTEMPTS}" in BRUTE_CONFIG

ATTACKER, FRIEND, INJECTOR = "127.0.0.2", "127.0.0.3", "127.0.0.9"
FILTER = Path(__file__).resolve().parents[2] / "etc" / "fail2ban" / "filter.d" / "securepop.conf"
TOO_MANY = b"-ERR [AUTH] Too many failed attempts, closing connection"
FAILED = b"-ERR [AUTH] Authentication failed"


@pytest.fixture(scope="module")
def brute_daemon(daemon_factory):
    return daemon_factory(BRUTE_CONFIG, users=(("alice", ALICE_PASSWORD),), name="brute")


@pytest.fixture(scope="module")
def sasl_daemon(daemon_factory):
    return sasl_daemon_for(daemon_factory)


def expected_delay(failures):
    """The configured schedule: base doubling per failure, up to the maximum."""
    return min(BASE * 2 ** (failures - 1), MAXIMUM)


def cram_md5(conn, user, password):
    """
    One CRAM-MD5 login; @return: (reply, seconds from AUTH to the reply).
    A penalised address waits at AUTH, before the exchange starts.
    """
    started = time.monotonic()
    reply = conn.command(b"AUTH CRAM-MD5")
    assert reply.startswith(b"+ "), reply
    challenge = base64.b64decode(reply[2:])
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    reply = conn.command(b64(f"{user} {digest}".encode()))
    return reply, time.monotonic() - started


class Attack(threading.Thread):
    """
    50 different wrong passwords on one connection.  CRAM-MD5, so that what
    is measured is the penalty: a USER/PASS guess also costs an argon2id
    verification (about a second on a loaded 2-core machine).
    """

    def __init__(self, daemon):
        super().__init__(daemon=True)
        self.target = daemon
        self.durations, self.replies, self.after = [], [], None
        self.closed = False
        self.error = None

    def run(self):
        try:
            with SourcePOP3(self.target, IMPLICIT, source=ATTACKER, timeout=30) as conn:
                for i in range(ATTEMPTS):
                    reply, took = cram_md5(conn, "alice", f"guess-{i}")
                    self.replies.append(reply)
                    self.durations.append(took)
                self.after = conn.readline()
                self.closed = conn.closed(5)
        except Exception as e:      # reported by the test thread
            self.error = e


def friend_login(daemon):
    """A valid CRAM-MD5 login from another address: seconds it took to +OK."""
    with SourcePOP3(daemon, IMPLICIT, source=FRIEND) as conn:
        reply, took = cram_md5(conn, "alice", ALICE_PASSWORD)
        assert reply.startswith(b"+OK Logged in"), reply
        assert conn.command(b"QUIT") == b"+OK Bye"
    return took


def test_fifty_wrong_passwords_follow_the_schedule_and_spare_others(brute_daemon):
    cursor = LogCursor(brute_daemon)
    attack = Attack(brute_daemon)
    attack.start()
    friends = []
    while attack.is_alive():
        friends.append(friend_login(brute_daemon))
        time.sleep(0.5)
    attack.join()
    assert attack.error is None, repr(attack.error)

    # Every guess was refused with the one generic answer; then the limit closed.
    assert attack.replies == [FAILED] * ATTEMPTS
    assert attack.after == TOO_MANY and attack.closed

    d = attack.durations
    # The penalty comes before each check: the first guess waits nothing, the
    # n-th waits the delay that n failures earned.
    expected = [0.0] + [expected_delay(n) for n in range(1, ATTEMPTS)]
    # Never faster than the schedule (5 ms of timer slack) ...
    early = [(n, round(got, 3), want) for n, (got, want) in enumerate(zip(d, expected))
             if got < want * 0.9 - 0.005]
    assert not early, early
    # ... nor much slower (generous: a loaded machine).
    late = [(n, round(got, 3), want) for n, (got, want) in enumerate(zip(d, expected))
            if got > want + 0.75]
    assert not late, late
    # It grows, then plateaus at the maximum.
    assert d[1] < d[3] < d[5], d[:7]
    plateau = d[5:]
    assert MAXIMUM * 0.95 <= statistics.median(plateau) <= MAXIMUM + 0.3, plateau
    assert min(plateau) >= MAXIMUM * 0.9 - 0.005

    # Meanwhile the friend from another address was never slowed down.
    assert len(friends) >= 5, friends
    assert max(friends) < 1.0, friends

    failures = cursor.wait("auth.failure", count=ATTEMPTS, ip=ATTACKER)
    assert len(failures) == ATTEMPTS
    assert all(e["user"] == "alice" and e["mechanism"] == "CRAM-MD5" and e["reason"] != "-"
               for e in failures), failures[:3]
    assert len(cursor.wait("auth.attempts_exceeded", ip=ATTACKER)) == 1
    successes = cursor.events("auth.success")
    assert len(successes) == len(friends) and {e["ip"] for e in successes} == {FRIEND}


def test_fail2ban_regex_matches_exactly_the_failure_lines(brute_daemon):
    """
    On the daemon's real log file: fail2ban's filter matches one line per
    failure, and a user name crafted to look like another address
    (C{ip=10.9.9.9}) does not change which address is banned.
    """
    fail2ban_regex = require_tool("fail2ban-regex")
    cursor = LogCursor(brute_daemon)
    for user in ("x ip=10.9.9.9 ", "y\tip=10.9.9.9", "ip=10.9.9.9"):
        with SourcePOP3(brute_daemon, IMPLICIT, source=INJECTOR) as conn:
            assert auth_plain(conn, user, "nope") == FAILED
    assert len(cursor.wait("auth.failure", count=3, ip=INJECTOR)) == 3
    # A success and a malformed AUTH: one more failure line, no match for the success.
    with SourcePOP3(brute_daemon, IMPLICIT, source=INJECTOR) as conn:
        assert conn.command(b"AUTH PLAIN !!") == b"-ERR [AUTH] Malformed authentication data"
        assert auth_plain(conn, "alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
    assert len(cursor.wait("auth.failure", count=4, ip=INJECTOR)) == 4
    assert cursor.wait("auth.success", ip=INJECTOR)

    log_path = brute_daemon.log_path
    failure_lines = [ln for ln in log_path.read_text(errors="replace").splitlines()
                     if " securepop auth.failure " in ln]
    assert failure_lines
    result = subprocess.run([fail2ban_regex, str(log_path), str(FILTER)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed",
                  result.stdout, re.M)
    assert m, result.stdout
    assert int(m.group(3)) == len(failure_lines), (result.stdout, len(failure_lines))

    ips = subprocess.run([fail2ban_regex, "-o", "ip", str(log_path), str(FILTER)],
                         capture_output=True, text=True, timeout=60).stdout.split()
    expected = [re.search(r" ip=(\S+)", ln).group(1) for ln in failure_lines]
    assert sorted(ips) == sorted(expected)
    assert "10.9.9.9" not in ips and ips.count(INJECTOR) == 4


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT])
def test_attempt_limit_closes_the_connection(sasl_daemon, tls):
    """Default max_attempts = 3: the third failure closes, whatever the mechanism."""
    cursor = LogCursor(sasl_daemon)
    with SourcePOP3(sasl_daemon, tls) as conn:
        assert conn.login("alice", "wrong-1") == FAILED
        assert auth_plain(conn, "alice", "wrong-2") == FAILED
        assert conn.command(b"AUTH CRAM-MD5").startswith(b"+ ")
        assert conn.command(b64(b"alice " + b"0" * 32)) == FAILED
        assert conn.readline() == TOO_MANY
        assert conn.closed(5)
        source = conn.source
    failures = cursor.wait("auth.failure", count=3, ip=source)
    assert [e["mechanism"] for e in failures] == ["USER", "PLAIN", "CRAM-MD5"]
    assert cursor.wait("auth.attempts_exceeded", ip=source)


def test_below_the_attempt_limit_a_login_still_works(sasl_daemon):
    """Negative twin: two failures, then the right password on the same connection."""
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        assert conn.login("alice", "wrong-1") == FAILED
        assert auth_plain(conn, "alice", "wrong-2") == FAILED
        assert auth_plain(conn, "alice", ALICE_PASSWORD).startswith(b"+OK Logged in")
        assert conn.command(b"QUIT") == b"+OK Bye"


def test_cancelled_exchanges_count_as_attempts(sasl_daemon):
    """Three '*' cancels cannot be used to probe without limit."""
    with SourcePOP3(sasl_daemon, IMPLICIT) as conn:
        for _ in range(2):
            assert conn.command(b"AUTH LOGIN") == b"+ VXNlcm5hbWU6"
            assert conn.command(b"*") == b"-ERR [AUTH] Authentication cancelled"
        assert conn.command(b"AUTH LOGIN") == b"+ VXNlcm5hbWU6"
        assert conn.command(b"*") == b"-ERR [AUTH] Authentication cancelled"
        assert conn.readline() == TOO_MANY
        assert conn.closed(5)
