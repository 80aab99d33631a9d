"""
An exclusive per-mailbox lock that also works on shared storage.

Two mechanisms together, because neither is enough alone:

 - a lock file created with C{O_CREAT|O_EXCL} (atomic on local file
   systems and on NFSv3+) holding C{host pid boot-id time token}, so any
   server on any host sharing the storage sees the holder;
 - an C{flock} on that file, held for the whole session, so on one host
   (and on NFS with working lockd) a dead holder is recognised at once: the
   kernel drops the flock when the process dies, however it dies.

A lock file is stale, and is broken, when its flock is free and either it
names this host and its process is gone (dead pid, another boot, or our
own pid without our in-process registration: a restarted server in a
container often gets the same pid), or it has not been refreshed for
C{staleAfter} seconds (the holder refreshes its mtime; another host's
holder is only judged by age), or it is unreadable and older than
C{UNWRITTEN_GRACE} seconds (a holder killed between create and write).
Breaking happens while holding the old file's flock and after checking
that the path still names that very file (inode), so two servers breaking
the same stale lock cannot both win.

That is method C{"dotlock"}, for storage shared by hosts without a
working lock manager.  The default, C{"flock"}, keeps the lock file and
never removes it: the flock alone excludes (local disks, NFSv4 and NFSv3
with lockd), the file holds the holder's record while the lock is held
and is emptied at release.  Creating and unlinking a file per session
costs the file system an inode allocation each time: on ext4 that was
12% of a whole TLS session's CPU in the benchmark (C{recently_deleted}
scans), for a lock that almost never meets a competitor.  A record left
behind by a holder that died is judged by the same stale rules.
"""

import errno
import os
import secrets
import socket
import threading
import time

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

from securepop.errors import MailboxInUse

DEFAULT_STALE_AFTER = 1800.0
METHODS = ("flock", "dotlock")
DEFAULT_METHOD = "flock"
UNWRITTEN_GRACE = 30.0
_ATTEMPTS = 5

# Paths locked by this process; flock cannot tell two sessions of one
# process apart on NFS (emulated with fcntl locks, which are per process).
_heldHere = set()
_acquiring = threading.Lock()  # sessions opened in threads of one process


def _bootId():
    # Read once: a process does not outlive its boot.
    global _BOOT_ID
    if _BOOT_ID is None:
        _BOOT_ID = _readBootId()
    return _BOOT_ID


_BOOT_ID = None


def _readBootId():
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as bootFile:
            return bootFile.read().strip().decode("ascii", "replace") or "-"
    except OSError:
        return "-"


def _hostname():
    return socket.gethostname() or "localhost"


def _pidAlive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _flock(fd, blocking):
    """
    @return: True when the flock is ours, False when another holder has it.
    """
    if fcntl is None:  # pragma: no cover
        return True
    flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return True  # no flock here (NFS without lockd): lock file only
        raise
    return True


class LockOwner:
    """
    What a lock file says about its holder.

    @ivar host: host name; @ivar pid: process id; @ivar boot: boot id;
    @ivar created: seconds since the epoch; @ivar token: random, per lock.
    """

    def __init__(self, host, pid, boot, created, token):
        self.host, self.pid, self.boot = host, pid, boot
        self.created, self.token = created, token

    def serialise(self):
        return f"{self.host} {self.pid} {self.boot} {self.created:.0f} {self.token}\n".encode(
            "utf-8", "replace"
        )

    @classmethod
    def parse(cls, data):
        """
        @return: a L{LockOwner} or None when C{data} is not a whole record.
        """
        try:
            text = data.decode("utf-8")
            if not text.endswith("\n"):
                return None
            host, pid, boot, created, token = text.split()
            return cls(host, int(pid), boot, float(created), token)
        except ValueError:
            return None


class MailboxLock:
    """
    One held lock.  Use L{acquire}; release with L{release} (idempotent) or
    as a context manager.

    @ivar path: the lock file's path.
    """

    def __init__(self, path, fd, owner, persistent=False):
        self.path = os.path.abspath(os.fspath(path))
        self._fd = fd
        self._owner = owner
        self._persistent = persistent

    @property
    def held(self):
        return self._fd is not None

    def refresh(self):
        """
        Touch the lock file so servers on other hosts see a live holder.
        Cheap (one syscall): fine on the reactor thread.
        """
        if self._fd is not None:
            try:
                os.utime(self._fd)
            except OSError:
                pass

    def stillOurs(self):
        """
        @return: True when the path still names our lock file.
        """
        if self._fd is None:
            return False
        try:
            return os.lstat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def release(self):
        """
        Remove the lock file (only if it is still ours) and drop the flock.
        Idempotent; never raises.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                if self._persistent:
                    # Empty the record (only ours: another host may have
                    # judged it stale and written its own), keep the file.
                    if os.pread(fd, 4096, 0) == self._owner.serialise():
                        os.ftruncate(fd, 0)
                elif os.lstat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(self.path)
            except OSError:
                pass
        finally:
            _heldHere.discard(self.path)
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _isStale(path, fd, staleAfter, now):
    """
    Judge a lock file whose flock we could take (so no live holder on this
    host has it).
    """
    try:
        data = os.pread(fd, 4096, 0)
        age = now - os.fstat(fd).st_mtime
    except OSError:
        return False
    owner = LockOwner.parse(data)
    if owner is None:
        return age > UNWRITTEN_GRACE
    if age > staleAfter:
        return True
    if owner.host != _hostname():
        return False
    if owner.boot != _bootId():
        return True
    if owner.pid == os.getpid():
        return path not in _heldHere
    return not _pidAlive(owner.pid)


def acquire(path, staleAfter=DEFAULT_STALE_AFTER, now=time.time, method="dotlock"):
    """
    Take the mailbox lock at C{path}, breaking a stale one.

    A handful of syscalls: fine on the reactor thread on local storage; on
    slow shared storage call it in a thread.

    @param staleAfter: seconds without refresh after which a lock is stale.
    @param now: the wall clock (files carry wall-clock mtimes).
    @param method: C{"dotlock"} (create and remove the file) or C{"flock"}
        (keep the file; see the module docstring).
    @rtype: L{MailboxLock}
    @raise MailboxInUse: when another live session holds it.
    """
    if method not in METHODS:
        raise ValueError(f"lock method must be one of {', '.join(METHODS)}, not {method!r}")
    path = os.path.abspath(os.fspath(path))
    with _acquiring:
        if path in _heldHere:
            raise MailboxInUse(f"lock held in this process: {path}")
        if method == "flock":
            return _acquirePersistent(path, staleAfter, now)
        return _acquire(path, staleAfter, now)


def _acquirePersistent(path, staleAfter, now):
    fd = os.open(path, os.O_CLOEXEC | os.O_NOFOLLOW | os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _flock(fd, blocking=False):
            raise MailboxInUse(f"lock held: {path}")
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is not None and st.st_size and not _isStale(path, fd, staleAfter, now()):
            raise MailboxInUse(f"lock held: {path}")  # a record from another host
        owner = LockOwner(_hostname(), os.getpid(), _bootId(), now(), secrets.token_hex(8))
        record = owner.serialise()
        try:
            os.pwrite(fd, record, 0)
            if st is None or st.st_size > len(record):
                os.ftruncate(fd, len(record))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # A full file system: the flock still excludes, and the user
            # can log in to delete mail and free space.
    except BaseException:
        os.close(fd)
        raise
    _heldHere.add(path)
    return MailboxLock(path, fd, owner, persistent=True)


def _acquire(path, staleAfter, now):
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            _heldHere.add(path)
            try:
                _flock(fd, blocking=True)  # a breaker may peek for an instant
                owner = LockOwner(_hostname(), os.getpid(), _bootId(), now(), secrets.token_hex(8))
                try:
                    # No fsync: after a crash the record is moot anyway (an
                    # empty or stale file is recovered), and it cost 15% of a
                    # login's CPU in the benchmark profile.
                    os.write(fd, owner.serialise())
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    # A full file system: the empty file and its flock still
                    # exclude other sessions, and the user can log in to
                    # delete mail and free space.
            except BaseException:
                _heldHere.discard(path)
                try:
                    os.unlink(path)
                finally:
                    os.close(fd)
                raise
            return MailboxLock(path, fd, owner)

        try:
            fd = os.open(path, flags | os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile: try to create again
        try:
            if not _flock(fd, blocking=False):
                raise MailboxInUse(f"lock held: {path}")
            try:
                samePath = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                samePath = False
            if not samePath:
                continue  # broken and replaced meanwhile: look again
            if not _isStale(path, fd, staleAfter, now()):
                raise MailboxInUse(f"lock held: {path}")
            os.unlink(path)
        finally:
            os.close(fd)
    raise MailboxInUse(f"lock contended: {path}")
