"""
A Maildir as a POP3 maildrop with RFC 1939 semantics.

Why not L{twisted.mail.maildir.MaildirMailbox}: it moves files at DELE
(RFC 1939 removes them at QUIT), reorders at RSET, lists subdirectories,
has no lock and changes UIDLs when another program renames a file.

Reading the snapshot (names, UIDLs, sizes, tmp/ cleanup) is
L{securepop.mailstore.snapshot}; this module is the session's mailbox
(L{MaildirMailbox}) and the store that opens one per login (L{MaildirStore}).

Decisions:
 - B{Snapshot}: C{new/} and C{cur/} are read once, when the mailbox is
   opened.  Only regular files count: subdirectories, symlinks (a symlink
   could expose any file the server can read), names starting with "."
   and anything in C{tmp/} are ignored.  Mail arriving later shows at the
   next login; nothing in the session can lose it, since the only removal
   is of the marked files of the snapshot.
 - B{No move from new/ to cur/}: opening never renames anything, so a crash
   at any moment cannot lose or duplicate a message (Dovecot moves; POP3
   does not need it).  A file renamed meanwhile by another program (flags,
   or new/ -> cur/) is found again by its unique base name.
 - B{Order}: by mtime (delivery time), then name; stable across sessions.
 - B{Sizes}: CRLF octets exactly as the protocol streams them (see
   L{securepop.mailstore.sizes}); taken from C{,W=} in the name when C{,S=}
   matches the file, else counted once and kept in C{securepop-sizes.json}
   in the Maildir (keyed by unique name, size and mtime; atomic rewrite).
 - B{UIDL}: the unique name (before the first "," or ":"), which flag
   renames and C{,S=/,W=} fields never change; when it is not 1-70 octets
   of 0x21-0x7E, C{"h"} + 40 hex digits of its SHA-256.  A message moved
   from another server keeps that server's UIDL and order instead
   (L{securepop.mailstore.uidlist}).
 - B{Lock}: L{securepop.mailstore.lock}, in C{<maildir>/securepop.lock}
   unless given, taken before the snapshot.
 - B{Commit} (QUIT): unlink each marked file, or move it into the trash
   Maildir's C{cur/}; a file already gone is fine; directories fsynced.
"""

import errno
import os
import shutil
import time

from twisted.internet import defer, task, threads
from zope.interface import implementer

from securepop.errors import SecurePOPError
from securepop.fileio import fsync_directory
from securepop.interfaces import ISecureMailbox
from securepop.mailstore.lock import (
    DEFAULT_METHOD,
    DEFAULT_STALE_AFTER,
    acquire as acquire_lock,
)
from securepop.mailstore.delivery import ensureMaildir
from securepop.mailstore.paths import confine, mailbox_path, mailRoot
from securepop.mailstore.quota import record as record_quota_change
from securepop.mailstore.sizes import openRegularFile
from securepop.mailstore.snapshot import (
    SizesUnknown,
    applyUidls,
    cleanTmpSometimes,
    computeSizes,
    known_message_count,
    scanMaildir,
    uniquePart,
)

LOCK_NAME = "securepop.lock"
# Maildirs up to this many messages (when last opened) are opened on the
# reactor thread (L{MaildirStore._openQuickly}).
INLINE_OPEN_MAX_MESSAGES = 1000


class MessageGone(IndexError):
    """
    The message of a valid index vanished from disk (removed by another
    program): an IndexError so the protocol answers C{-ERR}.
    """


class CommitIncomplete(SecurePOPError):
    """
    Some marked messages could not be removed at QUIT (RFC 1939: C{-ERR
    some deleted messages not removed}).

    @ivar failed: how many.
    """

    def __init__(self, failed):
        self.failed = failed
        super().__init__(f"{failed} marked message(s) not removed")


def _runSynchronously(function, *args):
    return defer.maybeDeferred(function, *args)


@implementer(ISecureMailbox)
class MaildirMailbox:
    """
    One POP3 session's view of a Maildir.  Create with L{open}.

    @ivar path: the Maildir path (L{str}).
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, path, entries, mailboxLock, trash=None, clock=None,
                 runner=_runSynchronously, refreshInterval=None):
        self.path = os.fspath(path)
        self._entries = entries
        self._deleted = set()
        self._lock = mailboxLock
        self._trash = os.fspath(trash) if trash is not None else None
        self._runner = runner
        self._committed = False
        self._refresher = None
        self._refreshInterval = refreshInterval or DEFAULT_STALE_AFTER / 6
        if clock is not None:
            self.startRefreshing(clock)

    def startRefreshing(self, clock):
        """
        Refresh the lock every C{staleAfter / 6} seconds until L{release}.
        Call on the reactor thread (L{MaildirStore.login} does).

        @type clock: L{IReactorTime}
        """
        if self._refresher is not None or self._lock is None or not self._lock.held:
            return
        self._refresher = task.LoopingCall(self._lock.refresh)
        self._refresher.clock = clock
        self._refresher.start(self._refreshInterval, now=False)

    @classmethod
    def open(cls, path, create=True, trash=None, clock=None, lockPath=None,
             staleAfter=DEFAULT_STALE_AFTER, runner=None,
             lockMethod=DEFAULT_METHOD, mayCount=True):
        """
        Lock the Maildir at C{path} and snapshot it.  Blocking and slow for
        big mailboxes (directory scan, sizes): call it in a thread, e.g.
        C{deferToThreadPool(reactor, pool, MaildirMailbox.open, path, ...)}.

        @param create: create a missing Maildir (tmp/new/cur, 0700).
        @param trash: None to unlink at QUIT, or a Maildir to move marked
            messages into (created when missing): absolute, or relative to
            C{path} (e.g. C{".Trash"}, the Maildir++ folder, which is never
            listed since it is not in new/ or cur/).
        @param clock: L{IReactorTime} used to refresh the lock while the
            session lasts (without refreshes a session longer than
            C{staleAfter} may lose its lock to another host).  Only when
            called on the reactor thread; from a thread leave it None and
            call L{startRefreshing} afterwards (as L{MaildirStore.login}).
        @param lockPath: lock file; default C{<path>/securepop.lock}.
        @param lockMethod: C{"flock"} or C{"dotlock"} (L{securepop.mailstore.lock}).
        @param mayCount: False to raise L{SizesUnknown} (lock released)
            rather than read a message to learn its size.
        @param runner: C{runner(f, *args) -> Deferred} used by L{commit}
            (e.g. C{partial(deferToThreadPool, reactor, pool)}); default
            runs synchronously.
        @raise MailboxInUse: when another session holds the lock.
        @raise FileNotFoundError: when missing and C{create} is false.
        """
        path = os.fspath(path)
        if trash is not None:
            trash = os.path.join(path, os.fspath(trash))
        if create:
            ensureMaildir(path)
        elif not all(os.path.isdir(os.path.join(path, sub)) for sub in ("new", "cur")):
            raise FileNotFoundError(errno.ENOENT, "no Maildir", path)
        mailboxLock = acquire_lock(
            lockPath if lockPath is not None else os.path.join(path, LOCK_NAME),
            staleAfter=staleAfter, method=lockMethod,
        )
        try:
            cleanTmpSometimes(path, time.time())
            entries = scanMaildir(path)
            computeSizes(path, entries, mayCount=mayCount)
            applyUidls(path, entries)
            if trash is not None:
                ensureMaildir(trash)
        except BaseException:
            mailboxLock.release()
            raise
        return cls(path, entries, mailboxLock, trash=trash, clock=clock,
                   runner=runner or _runSynchronously,
                   refreshInterval=staleAfter / 6)

    # -- helpers

    def _entry(self, index, allowDeleted=False):
        if isinstance(index, bool) or not isinstance(index, int):
            raise IndexError("message index must be an int")
        if index < 0 or index >= len(self._entries):
            raise IndexError("no such message")
        if not allowDeleted and index in self._deleted:
            raise IndexError("message deleted")
        return self._entries[index]

    def _locate(self, entry):
        """
        @return: the current path of C{entry}'s file, following a rename by
            another program (flags, new/ -> cur/), or None when gone.
        """
        current = os.path.join(self.path, entry.subdir, entry.name)
        if os.path.lexists(current):
            return current
        # Rare (another program renamed it): a directory scan.  Never pick a
        # file of another snapshot entry or of another size (a Maildir file
        # never changes; a flag rename keeps its size), so a broken MDA
        # that reused a unique name cannot make us serve or remove the
        # wrong message.
        others = {(e.subdir, e.name) for e in self._entries if e is not entry}
        for subdir in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self.path, subdir))
            except OSError:
                continue
            for name in names:
                if (uniquePart(name) != entry.unique or name.startswith(".")
                        or (subdir, name) in others):
                    continue
                candidate = os.path.join(self.path, subdir, name)
                try:
                    if os.lstat(candidate).st_size != entry.rawSize:
                        continue
                except OSError:
                    continue
                entry.subdir, entry.name = subdir, name
                return candidate
        return None

    # -- IMailbox

    def listMessages(self, index=None):
        """
        @return: CRLF size of message C{index} (0 when deleted), or the
            list of all sizes.
        """
        if index is None:
            return [0 if i in self._deleted else entry.crlfSize
                    for i, entry in enumerate(self._entries)]
        entry = self._entry(index, allowDeleted=True)
        return 0 if index in self._deleted else entry.crlfSize

    def hasOnlyCRLF(self, index):
        """
        @return: True when message C{index} needs no line-ending conversion
            on the wire: its POP3 size equals its size on disk, which the
            size count guarantees only when every LF already has its CR
            (RETR then skips that pass).
        """
        entry = self._entry(index, allowDeleted=True)
        return entry.crlfSize is not None and entry.crlfSize == entry.rawSize

    def getMessage(self, index):
        """
        @return: a binary file object on the stored message (raw octets; the
            caller closes it).
        @raise IndexError: bad or deleted index; L{MessageGone} when the
            file vanished.
        """
        entry = self._entry(index)
        # The file is usually where the snapshot saw it: open it straight
        # away, and look for it (a rename by another program) only when the
        # open says it is gone.
        path = os.path.join(self.path, entry.subdir, entry.name)
        for _ in range(3):
            try:
                fd = openRegularFile(path)
            except FileNotFoundError:
                path = self._locate(entry)  # renamed, or renamed again meanwhile
                if path is None:
                    break
                continue
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EINVAL):
                    break  # swapped for a symlink, FIFO or device: refuse
                raise
            # Unbuffered: the streamer reads whole chunks, and a buffered
            # reader would add an isatty ioctl, an lseek and a read per RETR.
            return open(fd, "rb", buffering=0)
        raise MessageGone("message file vanished")

    def getUidl(self, index):
        """
        @return: the UIDL (L{bytes}).
        """
        return self._entry(index).uidl

    def deleteMessage(self, index):
        """
        Mark only; removal happens in L{commit}.
        """
        self._entry(index)
        self._deleted.add(index)

    def undeleteMessages(self):
        """
        Unmark every message; the numbering never changed.
        """
        self._deleted.clear()

    def sync(self):
        """
        Twisted's name for the UPDATE state: same as L{commit}.
        """
        return self.commit()

    # -- ISecureMailbox

    def isDeleted(self, index):
        """
        @raise IndexError: for an index outside the snapshot.
        """
        self._entry(index, allowDeleted=True)
        return index in self._deleted

    def commit(self):
        """
        Remove (or move to trash) the marked messages.

        @return: Deferred firing with the number removed, or failing with
            L{CommitIncomplete}.
        """
        if self._committed:
            return defer.succeed(0)
        if self._lock is None or not self._lock.held:
            return defer.fail(RuntimeError("commit after release"))
        self._committed = True
        marked = [self._entries[i] for i in sorted(self._deleted)]
        if not marked:
            return defer.succeed(0)  # the usual QUIT: no thread, no fsync
        return self._runner(self._removeMarked, marked)

    def _removeMarked(self, marked):
        removed, failed, octets = 0, 0, 0
        touched = set()
        for entry in marked:
            path = self._locate(entry)
            if path is None:
                continue  # already gone: fine
            try:
                if self._trash is None:
                    os.unlink(path)
                else:
                    _moveToTrash(path, entry.name, self._trash)
                    touched.add(os.path.join(self._trash, "cur"))
            except FileNotFoundError:
                continue
            except OSError:
                failed += 1
                continue
            removed += 1
            octets += entry.rawSize
            touched.add(os.path.dirname(path))
        if removed:
            record_quota_change(self.path, -octets, -removed)
        for directory in touched:
            try:
                fsync_directory(directory)
            except OSError:
                failed += 1
        if failed:
            raise CommitIncomplete(failed)
        return removed

    def release(self):
        """
        Drop the lock without removing anything.  Idempotent.
        """
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _moveToTrash(path, name, trash):
    """
    Move one message into C{trash/cur/} without replacing anything there;
    across file systems copy, fsync, then unlink.
    """
    target = os.path.join(trash, "cur", name if ":" in name else name + ":2,")
    if os.path.lexists(target):
        base, _, info = os.path.basename(target).partition(":")
        target = os.path.join(trash, "cur", f"{base}.{os.urandom(4).hex()}:{info}")
    try:
        os.link(path, target, follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.EXDEV and e.errno not in (errno.EPERM, errno.ENOTSUP):
            raise
        if e.errno == errno.EXDEV:
            tmpTarget = os.path.join(trash, "tmp", os.path.basename(target))
            shutil.copyfile(path, tmpTarget, follow_symlinks=False)
            fd = os.open(tmpTarget, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmpTarget, target)
        else:
            os.rename(path, target)
            return
    os.unlink(path)


class MaildirStore:
    """
    Opens mailboxes with one configuration (what the realm holds).

    @ivar rootTemplate: e.g. C{"mail/{user}/Maildir"} (C{[mail] root});
    @ivar dataDir: what a relative template is relative to;
    @ivar trash: trash Maildir (relative to each mailbox) or None;
    @ivar staleAfter: lock age limit in seconds;
    @ivar lockMethod: C{"flock"} or C{"dotlock"} (C{[mail] lock});
    @ivar inlineOpenMax: see L{_openQuickly} (C{[mail] inline_open_max_messages}).
    """

    def __init__(self, rootTemplate="mail/{user}/Maildir", dataDir=".", trash=None,
                 reactor=None, threadpool=None,
                 staleAfter=DEFAULT_STALE_AFTER, create=True,
                 lockMethod=DEFAULT_METHOD,
                 inlineOpenMax=INLINE_OPEN_MAX_MESSAGES):
        """
        @param reactor: IReactorTime (and IReactorThreads when C{threadpool}
            is given); refreshes the locks.
        @param threadpool: a started L{twisted.python.threadpool.ThreadPool}
            for the blocking work (open, commit); None runs it inline
            (tests, CLI).
        """
        self.rootTemplate, self.dataDir = rootTemplate, dataDir
        self.trash, self.staleAfter, self.create = trash, staleAfter, create
        self.lockMethod = lockMethod
        self.inlineOpenMax = inlineOpenMax
        self.reactor, self.threadpool = reactor, threadpool

    def _inThread(self, function, *args):
        if self.threadpool is None:
            return defer.maybeDeferred(function, *args)
        return threads.deferToThreadPool(self.reactor, self.threadpool, function, *args)

    def login(self, username, explicit=None):
        """
        Open the user's mailbox off the reactor thread.  Call on the reactor
        thread.  Cancelling the returned Deferred (the client went away
        while the mailbox was being opened) releases the mailbox as soon as
        the open finishes, so no lock is left behind.

        @return: Deferred firing with a locked L{MaildirMailbox} (its lock
            refreshed on C{reactor}), or failing with L{MailboxInUse},
            L{ValueError} (hostile name) or L{OSError}.
        """
        cancelled = []
        result = defer.Deferred(lambda d: cancelled.append(True))

        def opened(mailbox):
            if cancelled:
                mailbox.release()
                return
            if self.reactor is not None:
                mailbox.startRefreshing(self.reactor)
            result.callback(mailbox)

        def failed(failure):
            if not cancelled:
                result.errback(failure)

        d = self._openQuickly(username, explicit)
        if d is None:
            d = self._inThread(self._openBlocking, username, explicit)
        d.addCallbacks(opened, failed)
        return result

    def _openQuickly(self, username, explicit):
        """
        Open on the reactor thread when that is a few cheap syscalls: the
        Maildir was opened before with at most C{inlineOpenMax} messages and
        every size is known without reading a file.  A hand-off to the
        thread pool costs more than such an open, and while a pool thread
        runs Python every C call of the reactor thread that releases the
        GIL (each pyOpenSSL call does) becomes a thread switch.

        @return: a Deferred, or None to open in the thread pool.
        """
        if self.threadpool is None or self.inlineOpenMax <= 0:
            return None
        try:
            path = self.pathFor(username, explicit)
        except ValueError:
            return None  # the thread path reports it
        known = known_message_count(path)
        if known is None or known > self.inlineOpenMax:
            return None
        try:
            return defer.succeed(MaildirMailbox.open(
                path, create=self.create, trash=self.trash, staleAfter=self.staleAfter,
                runner=self._inThread, lockMethod=self.lockMethod, mayCount=False))
        except SizesUnknown:
            return None  # new mail to measure: in the thread pool
        except Exception:
            return defer.fail()

    def _openBlocking(self, username, explicit):
        return MaildirMailbox.open(self.pathFor(username, explicit), create=self.create,
                                   trash=self.trash, staleAfter=self.staleAfter,
                                   runner=self._inThread, lockMethod=self.lockMethod)

    def pathFor(self, username, explicit=None):
        """
        @param explicit: a mailbox path the directory gave for this user
            (L{UserRecord.mailbox}), confined to the mail root too.
        @return: the confined Maildir path (L{pathlib.Path}).
        @raise ValueError: hostile user name or escaping path.
        """
        if explicit:
            return confine(explicit, mailRoot(self.rootTemplate, self.dataDir))
        return mailbox_path(self.rootTemplate, self.dataDir, username)

    def open(self, path):
        """
        As L{MaildirMailbox.open}, synchronously (blocking: tests and CLI).
        """
        return MaildirMailbox.open(path, create=self.create, trash=self.trash,
                                   staleAfter=self.staleAfter, runner=self._inThread,
                                   lockMethod=self.lockMethod)
