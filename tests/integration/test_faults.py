"""
Fault injection against the real daemon, with one invariant checked after
every fault: each delivered message is either still in its mailbox, intact
(SHA-256), or was marked by a QUIT (removed for sure when that QUIT was
answered +OK); no partial file is ever visible in new/ or cur/ (nor left in
tmp/); the mailbox lock recovers (a fresh login works).

Faults: disk full (a 2 MiB tmpfs made by the test) during delivery and
during the QUIT commit; C{kill -9} of the server during QUIT, many times at
random moments; SIGTERM under load.  (Directory, ntlm_auth and DNS faults
are tested with their modules.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from tests.integration.clients import IMPLICIT, RawPOP3, crlf_normalise, store_message
from tests.integration.daemon import Daemon
from tests.integration.test_soak import (
    _MSGID, PASSWORD, SOAK_CONFIG, Ledger, one_session,
)

ITERATIONS = int(os.environ.get("SECUREPOP_FAULT_ITERATIONS", "6"))


def make_daemon(tmp_path, name, users=("alice",)):
    d = Daemon(tmp_path, SOAK_CONFIG, name=name)
    return d


def add_users(d, users):
    for user in users:
        d.add_user(user, PASSWORD)


def check_invariant(daemon, ledger, users):
    lost, duplicated, corrupt, problems = ledger.check(daemon, users)
    assert problems == [] and (lost, duplicated, corrupt) == (0, 0, 0), problems


def login_works(daemon, user):
    with RawPOP3(daemon, tls=IMPLICIT) as c:
        reply = c.login(user, PASSWORD)
        assert reply.startswith(b"+OK"), reply
        assert c.command(b"QUIT").startswith(b"+OK")


# -- disk full -------------------------------------------------------------------------------

@pytest.fixture
def tmpfs_daemon(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("disk-full tests need root (mount -t tmpfs)")
        pytest.skip("disk-full tests need root (mount -t tmpfs)")
    d = make_daemon(tmp_path, "tmpfs")
    d.data_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(d.data_dir)],
                   check=True)
    try:
        add_users(d, ["alice"])
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.data_dir)], check=False)


def fill(path):
    """Fill the file system of C{path} to the last byte; return the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_delivery_leaves_no_partial_file(tmpfs_daemon):
    d, ledger = tmpfs_daemon, Ledger()
    for _ in range(3):
        d.deliver("alice", ledger.new_message("alice", 2000))
    before = d.messages("alice")
    filler = fill(d.data_dir)
    big = ledger.new_message("alice", 300_000)
    ident = _MSGID.search(big).group(1).decode()
    result = d.cli("deliver", "alice", input=big, check=False)
    assert result.returncode != 0                 # refused, not half-stored
    ledger.delivered["alice"].pop(ident)
    assert d.messages("alice") == before
    check_invariant(d, ledger, ["alice"])         # also: tmp/ is empty
    filler.unlink()
    login_works(d, "alice")
    d.deliver("alice", ledger.new_message("alice", 2000))    # space back: delivery works
    check_invariant(d, ledger, ["alice"])


def test_disk_full_during_quit_commit(tmpfs_daemon):
    d, ledger = tmpfs_daemon, Ledger()
    for _ in range(4):
        d.deliver("alice", ledger.new_message("alice", 1500))
    with RawPOP3(d, tls=IMPLICIT) as c:
        reply = c.login("alice", PASSWORD)
        assert reply.startswith(b"+OK"), reply
        filler = fill(d.data_dir)                 # full while the session holds the lock
        bodies = [c.retr(n) for n in (1, 2)]
        assert c.command(b"DELE 1").startswith(b"+OK")
        assert c.command(b"DELE 2").startswith(b"+OK")
        reply = c.command(b"QUIT")
    marked = {_MSGID.search(b).group(1).decode() for b in bodies}
    if reply.startswith(b"+OK"):
        ledger.deleted["alice"] = marked
    else:
        assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
        ledger.ambiguous["alice"] = marked
    check_invariant(d, ledger, ["alice"])
    filler.unlink()
    login_works(d, "alice")                       # the lock was released
    check_invariant(d, ledger, ["alice"])


def test_login_on_a_full_disk_fails_safely(tmpfs_daemon):
    d, ledger = tmpfs_daemon, Ledger()
    d.deliver("alice", ledger.new_message("alice", 1500))
    filler = fill(d.data_dir)
    with RawPOP3(d, tls=IMPLICIT) as c:
        reply = c.login("alice", PASSWORD)
    assert reply.startswith(b"+OK") or reply.startswith(b"-ERR [SYS/TEMP]"), reply
    check_invariant(d, ledger, ["alice"])
    filler.unlink()
    login_works(d, "alice")


def test_login_on_a_full_disk_works(tmpfs_daemon):
    d, ledger = tmpfs_daemon, Ledger()
    d.deliver("alice", ledger.new_message("alice", 1500))
    filler = fill(d.data_dir)
    try:
        login_works(d, "alice")
    finally:
        filler.unlink()


# -- kill -9 during QUIT -------------------------------------------------------------------------

def test_kill9_during_quit_loses_nothing_and_lock_recovers(tmp_path):
    rng = random.Random(int(os.environ.get("SECUREPOP_FAULT_SEED", "9")))
    d = make_daemon(tmp_path, "kill9")
    add_users(d, ["alice"])
    ledger = Ledger()
    outcomes = {"+OK": 0, "lost-answer": 0}
    d.start()
    try:
        for iteration in range(ITERATIONS):
            for _ in range(rng.randint(2, 8)):
                store_message(d, "alice", ledger.new_message("alice", rng.randint(100, 200_000)))
            c = RawPOP3(d, tls=IMPLICIT, timeout=20)
            assert c.login("alice", PASSWORD).startswith(b"+OK")
            c.command(b"LIST")
            numbers = [int(l.split()[0]) for l in c.multiline()]
            marked = set()
            for n in rng.sample(numbers, rng.randint(1, len(numbers))):
                body = c.retr(n)
                marked.add(_MSGID.search(body).group(1).decode())
                assert c.command(b"DELE %d" % n).startswith(b"+OK")
            ledger.ambiguous["alice"] = ledger.ambiguous.get("alice", set()) | marked
            c.send(b"QUIT\r\n")
            time.sleep(rng.choice([0, 0, rng.uniform(0, 0.005)]))
            d.kill9()
            try:
                reply = c.readline(timeout=2)
            except (EOFError, OSError):
                reply = b""
            c.close()
            if reply.startswith(b"+OK"):
                outcomes["+OK"] += 1
                ledger.ambiguous["alice"] -= marked
                ledger.deleted.setdefault("alice", set()).update(marked)
            else:
                outcomes["lost-answer"] += 1
            check_invariant(d, ledger, ["alice"])
            d.start()
            login_works(d, "alice")               # the dead process's lock is recovered
    finally:
        d.stop()
    print("kill -9 during QUIT:", ITERATIONS, "iterations", outcomes)


# -- SIGTERM under load --------------------------------------------------------------------------

def test_sigterm_under_load(tmp_path):
    d = make_daemon(tmp_path, "sigterm")
    users = [f"u{i}" for i in range(8)]
    add_users(d, ["soak"])
    from tests.integration.clients import clone_users

    clone_users(d, "soak", users)
    ledger = Ledger()
    for user in users:
        for _ in range(5):
            store_message(d, user, ledger.new_message(user, 5000))
    d.start()
    stop = threading.Event()
    terminating = threading.Event()
    refused_early = []

    def worker(user, seed):
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                one_session(d, ledger, user, rng, drop_chance=0.1)
            except OSError as e:
                # Connecting (or the implicit handshake) fails once the listener
                # closes at SIGTERM: that ends this client, and only then.
                if not terminating.is_set():
                    refused_early.append(f"{user}: {e!r}")
                return

    threads = [threading.Thread(target=worker, args=(u, i), daemon=True)
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    time.sleep(4)
    started = time.monotonic()
    terminating.set()
    code = d.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(30)
    print(f"SIGTERM under load: exit {code} after {took:.1f}s, {ledger.counts}")
    assert code in (0, -signal.SIGTERM)            # twistd may exit by the signal
    assert took < 5 + 5                           # shutdown_grace + slack
    assert ledger.counts["sessions"] > 0
    assert not refused_early                      # connections worked until SIGTERM
    check_invariant(d, ledger, users)
    d.start()
    try:
        for user in users:
            login_works(d, user)
    finally:
        d.stop()
