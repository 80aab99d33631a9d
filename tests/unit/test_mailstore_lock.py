"""
Tests for L{securepop.mailstore.lock}: the exclusive per-mailbox lock.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from securepop.errors import MailboxInUse
from securepop.mailstore import lock as lockModule
from securepop.mailstore.lock import LockOwner, acquire


@pytest.fixture
def lockPath(tmp_path):
    return str(tmp_path / "securepop.lock")


def writeLock(path, host=None, pid=None, boot=None, created=None, age=0.0):
    """Leave a lock file as a holder that never released it would."""
    owner = LockOwner(
        host or socket.gethostname(),
        pid if pid is not None else os.getpid(),
        boot or lockModule._bootId(),
        created if created is not None else time.time(),
        "deadbeef",
    )
    with open(path, "wb") as f:
        f.write(owner.serialise())
    when = time.time() - age
    os.utime(path, (when, when))


def deadPid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acquire_writes_owner_and_release_removes(lockPath):
    held = acquire(lockPath)
    with open(lockPath, "rb") as f:
        owner = LockOwner.parse(f.read())
    assert owner.host == socket.gethostname() and owner.pid == os.getpid()
    assert os.stat(lockPath).st_mode & 0o777 == 0o600
    held.release()
    assert not os.path.exists(lockPath)
    held.release()  # idempotent
    assert not held.held


def test_context_manager_releases_on_error(lockPath):
    with pytest.raises(ZeroDivisionError):
        with acquire(lockPath):
            1 / 0
    assert not os.path.exists(lockPath)
    acquire(lockPath).release()


def test_second_acquire_in_process_refused(lockPath):
    with acquire(lockPath):
        with pytest.raises(MailboxInUse):
            acquire(lockPath)
        assert os.path.exists(lockPath)  # the refused attempt did not break it
    acquire(lockPath).release()


HOLDER = """
import sys, time
from securepop.mailstore.lock import acquire
held = acquire(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("method", lockModule.METHODS)
def test_other_process_holds_then_killed_9(lockPath, method):
    holder = HOLDER.replace("acquire(sys.argv[1])", f"acquire(sys.argv[1], method={method!r})")
    child = subprocess.Popen(
        [sys.executable, "-c", holder, lockPath],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert child.stdout.readline() == b"ready\n"
        with pytest.raises(MailboxInUse):
            acquire(lockPath, method=method)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert os.path.getsize(lockPath) > 0  # the killed holder's record is left behind
    held = acquire(lockPath, method=method)  # recovered
    with open(lockPath, "rb") as f:
        assert LockOwner.parse(f.read()).pid == os.getpid()
    held.release()


def test_stale_lock_of_dead_pid_recovered(lockPath):
    writeLock(lockPath, pid=deadPid())
    held = acquire(lockPath)
    with open(lockPath, "rb") as f:
        assert LockOwner.parse(f.read()).pid == os.getpid()
    held.release()


def test_lock_of_live_pid_on_this_host_respected(lockPath):
    # pid 1 is alive; no flock (another implementation's lock file)
    writeLock(lockPath, pid=1)
    with pytest.raises(MailboxInUse):
        acquire(lockPath)
    assert os.path.exists(lockPath)


def test_lock_of_own_pid_from_previous_incarnation_recovered(lockPath):
    # a restarted server in a container often has the same pid
    writeLock(lockPath, pid=os.getpid())
    acquire(lockPath).release()


def test_lock_from_previous_boot_recovered(lockPath):
    writeLock(lockPath, pid=1, boot="another-boot")
    acquire(lockPath).release()


def test_other_host_fresh_lock_respected(lockPath):
    writeLock(lockPath, host="other.example", pid=1234, age=60)
    with pytest.raises(MailboxInUse):
        acquire(lockPath, staleAfter=600)


def test_other_host_unrefreshed_lock_recovered(lockPath):
    writeLock(lockPath, host="other.example", pid=1234, age=601)
    acquire(lockPath, staleAfter=600).release()


def test_age_uses_injected_clock(lockPath):
    writeLock(lockPath, host="other.example", pid=1234)
    with pytest.raises(MailboxInUse):
        acquire(lockPath, staleAfter=600, now=lambda: time.time() + 599)
    acquire(lockPath, staleAfter=600, now=lambda: time.time() + 700).release()


@pytest.mark.parametrize("content", [b"", b"half a rec", b"host notapid boot 1 t\n",
                                     b"\xff\xfe\n"])
def test_unreadable_lock_young_respected_old_recovered(lockPath, content):
    with open(lockPath, "wb") as f:
        f.write(content)
    with pytest.raises(MailboxInUse):
        acquire(lockPath)
    old = time.time() - lockModule.UNWRITTEN_GRACE - 5
    os.utime(lockPath, (old, old))
    acquire(lockPath).release()


def test_refresh_updates_mtime(lockPath):
    with acquire(lockPath) as held:
        os.utime(lockPath, (5, 5))
        held.refresh()
        assert os.stat(lockPath).st_mtime > 5


def test_release_leaves_a_lock_that_is_no_longer_ours(lockPath):
    held = acquire(lockPath)
    os.rename(lockPath, lockPath + ".old")  # someone broke and replaced it
    writeLock(lockPath, host="other.example", pid=42)
    assert not held.stillOurs()
    held.release()
    assert os.path.exists(lockPath)


def test_symlink_at_lock_path_refused(lockPath, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me\n")
    os.symlink(target, lockPath)
    with pytest.raises(OSError):
        acquire(lockPath)
    assert target.read_bytes() == b"keep me\n"
    assert os.path.islink(lockPath)


def test_owner_parse_rejects_garbage():
    assert LockOwner.parse(b"a 1 b 2 c") is None  # no newline: half written
    assert LockOwner.parse(b"a 1 b 2\n") is None
    assert LockOwner.parse(b"a x b 2 c\n") is None
    owner = LockOwner.parse(b"h 12 boot 3 tok\n")
    assert (owner.host, owner.pid, owner.boot, owner.token) == ("h", 12, "boot", "tok")


# -- method "flock" (the default of MaildirStore): the file stays -------------------------------

def flockAcquire(path, **kw):
    return acquire(path, method="flock", **kw)


def test_unknown_method_refused(lockPath):
    with pytest.raises(ValueError):
        acquire(lockPath, method="fcntl")
    assert not os.path.exists(lockPath)


def test_flock_writes_owner_keeps_file_and_empties_it(lockPath):
    held = flockAcquire(lockPath)
    with open(lockPath, "rb") as f:
        owner = LockOwner.parse(f.read())
    assert owner.pid == os.getpid() and os.stat(lockPath).st_mode & 0o777 == 0o600
    inode = os.stat(lockPath).st_ino
    held.release()
    assert os.path.getsize(lockPath) == 0 and os.stat(lockPath).st_ino == inode
    again = flockAcquire(lockPath)                       # same file, no new inode
    assert os.stat(lockPath).st_ino == inode and again.held
    again.release()
    held.release()  # idempotent


def test_flock_second_acquire_in_process_refused(lockPath):
    with flockAcquire(lockPath):
        with pytest.raises(MailboxInUse):
            flockAcquire(lockPath)
        with pytest.raises(MailboxInUse):
            acquire(lockPath)                            # nor by the other method
        assert os.path.getsize(lockPath) > 0             # the record is intact
    flockAcquire(lockPath).release()


@pytest.mark.parametrize("left, free", [
    (dict(pid="dead"), True),
    (dict(pid=1, boot="another-boot"), True),
    (dict(host="other.example", pid=1234, age=601), True),
    (dict(host="other.example", pid=1234, age=60), False),   # another host's live holder
    (dict(pid=1), False),                                     # a live pid, no flock: respected
])
def test_flock_left_records_judged_like_dotlock(lockPath, left, free):
    if left.get("pid") == "dead":
        left = dict(left, pid=deadPid())
    writeLock(lockPath, **left)
    if free:
        flockAcquire(lockPath, staleAfter=600).release()
        assert os.path.getsize(lockPath) == 0
    else:
        with pytest.raises(MailboxInUse):
            flockAcquire(lockPath, staleAfter=600)
        assert LockOwner.parse(open(lockPath, "rb").read()) is not None


def test_flock_release_keeps_a_record_that_is_not_ours(lockPath):
    held = flockAcquire(lockPath)
    writeLock(lockPath, host="other.example", pid=42)    # judged stale elsewhere, taken
    held.release()
    assert LockOwner.parse(open(lockPath, "rb").read()).host == "other.example"


def test_flock_longer_old_record_fully_replaced(lockPath):
    writeLock(lockPath, host="x" * 200 + ".example", pid=1234, age=10_000)
    held = flockAcquire(lockPath, staleAfter=600)
    assert LockOwner.parse(open(lockPath, "rb").read()).pid == os.getpid()
    held.release()


def test_flock_symlink_at_lock_path_refused(lockPath, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me\n")
    os.symlink(target, lockPath)
    with pytest.raises(OSError):
        flockAcquire(lockPath)
    assert target.read_bytes() == b"keep me\n"


@pytest.mark.parametrize("content", [b"half a rec", b"host notapid boot 1 t\n", b"\xff\xfe\n",
                                     b"x" * 5000])
def test_flock_garbage_record_young_respected_old_recovered(lockPath, content):
    with open(lockPath, "wb") as f:
        f.write(content)
    with pytest.raises(MailboxInUse):
        flockAcquire(lockPath)
    old = time.time() - lockModule.UNWRITTEN_GRACE - 5
    os.utime(lockPath, (old, old))
    held = flockAcquire(lockPath)
    assert LockOwner.parse(open(lockPath, "rb").read()).pid == os.getpid()  # fully replaced
    held.release()
    assert os.path.getsize(lockPath) == 0
