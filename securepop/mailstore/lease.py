"""
C{[mail] lock = "redis"}: the maildrop lease in the shared state store
(L{securepop.interfaces.IStateStore.acquire_maildrop}), for hosts that
share a file system without a lock manager.

A login first takes the user's lease on the reactor thread (the holder is
a random id of this session), then opens the Maildir as with C{lock =
"flock"}: the local flock still excludes the processes of one host at the
kernel level, and frees at once when one of them dies.  A lease held by
another holder is L{MailboxInUse} (C{-ERR [IN-USE]}), a store that does
not answer is L{securepop.errors.StateUnavailable} (C{-ERR [SYS/TEMP]}).
The lease is given back after the local lock, once, when the mailbox is
released (QUIT after its deletions, connection lost, timeout, server
stop); the store's heartbeat keeps it while the session lasts, so a node
killed outright loses it within C{[state] lease_ttl}.

The lease is keyed by the user name the realm opens; UIDLs, sizes and
everything else still come from the storage.
"""

import os
import secrets
import socket

from twisted.internet import defer
from zope.interface import implementer

from securepop import events
from securepop.errors import MailboxInUse
from securepop.interfaces import ISecureMailbox

#: The C{[mail] lock} value that takes the lease.
LEASE_METHOD = "redis"
#: What each host locks locally under a lease.
LOCAL_METHOD = "flock"


def local_method(lock):
    """
    @return: the L{securepop.mailstore.lock} method for C{[mail] lock}:
        C{"flock"} under the lease, else C{lock} itself.
    """
    return LOCAL_METHOD if lock == LEASE_METHOD else lock


def describe(settings):
    """One line for C{check-config}: the mailbox lock in force."""
    lock = settings.mail.lock
    if lock == LEASE_METHOD:
        return (f"mail.lock = {lock}: a maildrop lease in the state store "
                f"(lease_ttl {settings.state.lease_ttl:g} s) and a flock on each host")
    if lock == "dotlock":
        return f"mail.lock = {lock}: a lock file (shared storage without a lock manager)"
    return f"mail.lock = {lock}: a kernel flock (one host, NFSv4, NFSv3 with lockd)"


class _Lease:
    """One session's maildrop lease: given back at most once."""

    def __init__(self, state, username, holder):
        self.state, self.username, self.holder = state, username, holder
        self.held = False

    def release(self):
        """
        Give the lease back if it was taken and not yet given back; a store
        that does not answer is logged (the lease then expires).
        """
        if not self.held:
            return defer.succeed(None)
        self.held = False
        d = defer.maybeDeferred(self.state.release_maildrop, self.username, self.holder)
        return d.addErrback(self._failed)

    def _failed(self, failure):
        events.emit("mailbox.lease_release_failed", "warn", user=self.username,
                    error=failure.getErrorMessage())


@implementer(ISecureMailbox)
class LeasedMailbox:
    """
    A L{securepop.mailstore.maildir.MaildirMailbox} under a maildrop lease:
    everything is the mailbox's, except that L{release} also gives the
    lease back (after the local lock).
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, mailbox, lease):
        self._mailbox = mailbox
        self._lease = lease

    def listMessages(self, index=None):
        return self._mailbox.listMessages(index)

    def getMessage(self, index):
        return self._mailbox.getMessage(index)

    def getUidl(self, index):
        return self._mailbox.getUidl(index)

    def deleteMessage(self, index):
        return self._mailbox.deleteMessage(index)

    def undeleteMessages(self):
        return self._mailbox.undeleteMessages()

    def sync(self):
        return self._mailbox.sync()

    def isDeleted(self, index):
        return self._mailbox.isDeleted(index)

    def commit(self):
        return self._mailbox.commit()

    def hasOnlyCRLF(self, index):
        return self._mailbox.hasOnlyCRLF(index)

    def release(self):
        """
        Drop the local lock, then give the lease back.  Idempotent.

        @return: a Deferred firing (never failing) when the lease is back.
        """
        try:
            self._mailbox.release()
        finally:
            released = self._lease.release()
        return released

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class LeasedMaildirStore:
    """
    A L{securepop.mailstore.maildir.MaildirStore} (locking with C{flock})
    whose logins take the user's maildrop lease in C{state} first.

    @ivar store: the Maildir store; @ivar state: the L{IStateStore}.
    """

    def __init__(self, store, state, node=None):
        self.store, self.state = store, state
        self._node = f"{node or socket.gethostname() or 'localhost'}:{os.getpid()}:"

    def pathFor(self, username, explicit=None):
        """The Maildir store's L{MaildirStore.pathFor} (LMTP delivers there)."""
        return self.store.pathFor(username, explicit)

    def newHolder(self):
        """@return: a unique id for one session's lease."""
        return self._node + secrets.token_hex(8)

    def login(self, username, explicit=None):
        """
        Take the lease, then open the mailbox (L{MaildirStore.login}).  Call
        on the reactor thread.  Cancelling the returned Deferred gives the
        mailbox and the lease back as soon as what is in flight finishes.

        @return: Deferred firing with a L{LeasedMailbox}, or failing with
            L{MailboxInUse} (the lease or the flock is held),
            L{securepop.errors.StateUnavailable} or what the store's login
            fails with.
        @raise ValueError: hostile name or path (before any lease is taken).
        """
        self.store.pathFor(username, explicit)
        lease = _Lease(self.state, username, self.newHolder())
        cancelled = []
        result = defer.Deferred(lambda d: cancelled.append(True))

        def claimed(won):
            if not won:
                raise MailboxInUse(f"maildrop lease held elsewhere: {username}")
            lease.held = True
            if cancelled:
                return None
            return self.store.login(username, explicit)

        def opened(mailbox):
            if mailbox is None:
                lease.release()
                return
            leased = LeasedMailbox(mailbox, lease)
            if cancelled:
                leased.release()
                return
            result.callback(leased)

        def failed(failure):
            lease.release()
            if not cancelled:
                result.errback(failure)

        d = defer.maybeDeferred(self.state.acquire_maildrop, username, lease.holder)
        d.addCallback(claimed).addCallbacks(opened, failed)
        return result
