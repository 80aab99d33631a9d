"""
The user's Maildir on this server, as the migration fills it: the mailbox
lock for the whole run (no session sees a half-moved maildrop, and no run
starts while a session has it), the kept UIDLs
(L{securepop.mailstore.uidlist}), and each message written like a
delivery (C{tmp/}, fsync, link into C{new/} with C{,S=,W=}).

Crash safety: every message to fetch is first recorded as C{pending} with
the unique name its file will get; then the files are written; then the
records become C{kept}.  A run that dies anywhere leaves either a pending
record without a file (fetched again next time, under the same name) or a
pending record with its file (kept next time): never a duplicate, never a
message served under a new UIDL.
"""

import os
import time

from securepop.fileio import atomic_write
from securepop.mailstore import uidlist
from securepop.mailstore.delivery import FILE_MODE, ensureMaildir, uniqueName
from securepop.mailstore.lock import acquire
from securepop.mailstore.maildir import LOCK_NAME
from securepop.mailstore.sizes import CRLFCounter
from securepop.mailstore.snapshot import uniquePart


class TargetMaildir:
    """
    One user's Maildir, locked.  Use L{open}; L{close} releases the lock.

    @ivar kept: C{{unique: KeptUidl}} as on disk plus this run's changes.
    """

    def __init__(self, path, lock, kept, present):
        self.path = path
        self._lock = lock
        self.kept = kept
        self._present = present
        self._dirty = False
        self._last_save = time.monotonic()

    @classmethod
    def open(cls, path, lock_method="flock", stale_after=1800.0, create=True):
        """
        Lock the Maildir (creating it when C{create}) and read its kept UIDLs.

        @raise MailboxInUse: a session (or another migration) holds it.
        """
        path = os.fspath(path)
        if create:
            ensureMaildir(path)
        lock = acquire(os.path.join(path, LOCK_NAME), staleAfter=stale_after,
                       method=lock_method)
        try:
            present = set()
            for sub in ("new", "cur"):
                try:
                    present.update(uniquePart(name)
                                   for name in os.listdir(os.path.join(path, sub)))
                except FileNotFoundError:
                    pass
            kept = uidlist.read(path)
        except BaseException:
            lock.release()
            raise
        target = cls(path, lock, kept, present)
        for unique, record in kept.items():
            if record.state == uidlist.PENDING and unique in present:
                record.state = uidlist.KEPT   # written by a run that died before saving
                target._dirty = True
        return target

    def has_file(self, unique):
        return unique in self._present

    def known(self):
        """
        @return: C{{uidl: unique}} of the messages that need no fetch: kept
            (even when deleted here since: a user's deletion stands), or
            pending with their file written.
        """
        return {record.uidl: unique for unique, record in self.kept.items()
                if record.state == uidlist.KEPT or unique in self._present}

    def plan(self, uidls):
        """
        Record C{uidls} (in the old order, none of them L{known}) as pending
        and save: a pending record left by an interrupted run keeps its
        unique name and order.

        @return: C{[(uidl, unique)]}.
        """
        pending = {record.uidl: unique for unique, record in self.kept.items()
                   if record.state == uidlist.PENDING}
        order = max((record.order for record in self.kept.values()), default=-1)
        planned = []
        for uidl in uidls:
            unique = pending.get(uidl)
            if unique is None:
                order += 1
                unique = uniqueName()
                while unique in self.kept:
                    unique = uniqueName()
                self.kept[unique] = uidlist.KeptUidl(uidl, order, uidlist.PENDING)
            planned.append((uidl, unique))
        if planned:
            uidlist.write(self.path, self.kept)
        return planned

    def store(self, unique, data):
        """
        Write one message as the file C{new/<unique>,S=..,W=..} (never over
        an existing file) and count it as written.

        @return: its POP3 size.
        """
        counter = CRLFCounter()
        counter.feed(data)
        final = os.path.join(self.path, "new",
                             f"{unique},S={counter.rawSize},W={counter.crlfSize}")
        atomic_write(final, data, FILE_MODE, replace=False,
                     temp_dir=os.path.join(self.path, "tmp"),
                     temp_names=(uniqueName() for _ in range(10)))
        self._present.add(unique)
        self.kept[unique].state = uidlist.KEPT
        self._dirty = True
        self._lock.refresh()
        return counter.crlfSize

    def save(self, every=None):
        """
        Rewrite the uidlist when records changed (at most once per C{every}
        seconds when given): written files become kept.
        """
        if not self._dirty:
            return
        if every is not None and time.monotonic() - self._last_save < every:
            return
        for unique, record in self.kept.items():
            if record.state == uidlist.PENDING and unique in self._present:
                record.state = uidlist.KEPT
        uidlist.write(self.path, self.kept)
        self._dirty = False
        self._last_save = time.monotonic()

    def close(self):
        self._lock.release()
