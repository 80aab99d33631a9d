"""
Cold and warm logins on the real daemon: argon2id hashes made with older
parameters are rewritten after a login, and the auth cache serves a polling
client while `securepop user passwd` still takes effect at once.
"""

import os
import poplib
import re
from pathlib import Path

from argon2 import PasswordHasher

from securepop.auth import userfile
from securepop.schemes import HashParameters
from tests.integration.clients import IMPLICIT, pop3
from tests.integration.daemon import DEFAULT_CONFIG, Daemon, wait_for

ALICE, BOB = "Alice-poll-pw-1", "Bob-poll-pw-2"


def login(daemon, user, password):
    """True when a USER/PASS login over implicit TLS succeeds (real poplib)."""
    client = pop3(daemon, IMPLICIT)
    try:
        client.user(user)
        try:
            client.pass_(password)
        except poplib.error_proto:
            return False
        client.quit()
        return True
    finally:
        client.close()


def line_of(path, user):
    return [l for l in Path(path).read_text().splitlines() if l.startswith(user + ":")][0]


def cpu_seconds(pid):
    """User + system CPU the process has used (every thread, the hashing pool too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_users(daemon, lines):
    daemon.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    users = daemon.data_dir / "users"
    users.write_text("".join(line + "\n" for line in lines))
    users.chmod(0o600)
    return users


def test_old_parameter_hash_logs_in_and_is_rewritten_with_the_new_ones(tmp_path):
    d = Daemon(tmp_path, name="rehash")
    # A users file written with argon2-cffi's defaults (m=64 MiB, t=3, p=4),
    # as securepop made them before the parameters were configurable.
    old = PasswordHasher()
    users = write_users(d, [f"alice:{old.hash(ALICE)}", f"bob:{old.hash(BOB)}"])
    assert "$m=65536,t=3,p=4$" in line_of(users, "alice")
    before = users.read_bytes()
    d.start()
    try:
        assert not login(d, "alice", "wrong-password")
        assert not login(d, "nobody", ALICE)
        assert users.read_bytes() == before                   # no rehash on a failure
        assert login(d, "alice", ALICE)                       # the old hash verifies
        assert wait_for(lambda: "$m=19456,t=2,p=1$" in line_of(users, "alice")), \
            line_of(users, "alice")
        assert "$m=65536,t=3,p=4$" in line_of(users, "bob")   # only who logged in
        assert oct(users.stat().st_mode & 0o777) == "0o600"
        assert d.wait_log("auth.rehash user=alice"), d.log()  # logged once written
        log = d.log()
        assert re.search(r"auth\.rehash user=alice outcome=rehashed old=m=65536,t=3,p=4 "
                         r"new=m=19456,t=2,p=1", log), log
        assert ALICE not in log
        # The rewritten hash: the login still works (its cache entry was for the
        # old line), a wrong password still fails, and so after a restart.
        assert login(d, "alice", ALICE)
        assert not login(d, "alice", BOB)
        d.restart()
        assert login(d, "alice", ALICE)
        assert not login(d, "alice", "wrong-password")
        assert "$m=19456,t=2,p=1$" in line_of(users, "alice")
        # check-config tells the parameters, their cost here, and who is waiting.
        out = d.cli("check-config").stdout.decode()
        assert re.search(r"auth\.file: argon2id m=19456 KiB, t=2, p=1; one verification "
                         r"on this machine: \d+\.\d ms \(\d+\.\d ms of CPU\)", out), out
        assert "1 user(s) hashed with other parameters" in out
    finally:
        d.stop()


# Expensive enough (~0.3 s of CPU here, libsodium's AVX2 core included) that
# a verification shows in the daemon's CPU time, whatever else the machine is
# doing.
SLOW_HASH = DEFAULT_CONFIG + """
[auth.file]
argon2_memory_kib = 65536
argon2_time_cost = 16
"""
SLOW = HashParameters(memory_kib=65536, time_cost=16, parallelism=1)


def test_cached_login_survives_but_passwd_takes_effect_at_once(tmp_path):
    d = Daemon(tmp_path, config=SLOW_HASH, name="cache")
    for name, password in (("alice", ALICE), ("bob", BOB)):
        userfile.set_password(d.data_dir / "users", name, password, set(), create=True,
                              params=SLOW)
    d.start()
    try:
        pid = d.proc.pid

        def cost(user, password):
            """(logged in?, daemon CPU seconds the login took)."""
            start = cpu_seconds(pid)
            ok = login(d, user, password)
            return ok, cpu_seconds(pid) - start

        cold = cost("bob", BOB)
        assert cold[0] and cold[1] >= 0.15, cold              # one verification
        warm = cost("bob", BOB)
        assert warm[0] and warm[1] < 0.1, (cold, warm)        # served from the cache
        assert login(d, "alice", ALICE)
        # `securepop user passwd alice`, no SIGHUP.
        d.cli("user", "passwd", "alice", input=b"Alice-new-pw-3\n")
        assert not login(d, "alice", ALICE)                   # the old one: refused at once
        still = cost("bob", BOB)
        assert still[0] and still[1] < 0.1, (cold, still)     # bob's entry untouched
        assert login(d, "alice", "Alice-new-pw-3")
        assert not login(d, "alice", ALICE)
        # `securepop user add` of someone else flushes nobody.
        d.add_user("carol", "Carol-pw-4")
        again = cost("bob", BOB)
        assert again[0] and again[1] < 0.1, (cold, again)
        assert login(d, "carol", "Carol-pw-4")
        # `securepop user del bob`: refused at once, though his login was cached.
        d.cli("user", "del", "bob")
        assert not login(d, "bob", BOB)
        assert "config.reloaded" not in d.log()
    finally:
        d.stop()


def test_sighup_forgets_cached_logins(tmp_path):
    d = Daemon(tmp_path, config=SLOW_HASH, name="cache-hup")
    userfile.set_password(d.data_dir / "users", "bob", BOB, set(), create=True, params=SLOW)
    d.start()
    try:
        pid = d.proc.pid
        assert login(d, "bob", BOB)
        start = cpu_seconds(pid)
        assert login(d, "bob", BOB)
        assert cpu_seconds(pid) - start < 0.1                 # cached
        mark = len(d.log())
        d.sighup()
        assert d.wait_log("config.reloaded", start=mark)
        start = cpu_seconds(pid)
        assert login(d, "bob", BOB)
        assert cpu_seconds(pid) - start >= 0.15               # verified again
    finally:
        d.stop()
