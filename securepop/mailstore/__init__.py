"""
The mail store: Maildir mailboxes with RFC 1939 semantics, their lock,
safe delivery, and the user-name-to-path mapping.

Blocking functions (run them off the reactor thread): L{MaildirMailbox.open},
L{MaildirStore.open}, L{deliver}.  Everything else on an open mailbox is a
few small syscalls.
"""

from securepop.mailstore.delivery import deliver, ensureMaildir
from securepop.mailstore.lock import MailboxLock, acquire as acquireLock
from securepop.mailstore.maildir import (
    CommitIncomplete,
    MaildirMailbox,
    MaildirStore,
    MessageGone,
)
from securepop.mailstore.paths import checkUsername, mailbox_path
from securepop.mailstore.sizes import CRLFCounter, crlfSizeOfBytes

__all__ = [
    "CRLFCounter",
    "CommitIncomplete",
    "MailboxLock",
    "MaildirMailbox",
    "MaildirStore",
    "MessageGone",
    "acquireLock",
    "checkUsername",
    "crlfSizeOfBytes",
    "deliver",
    "ensureMaildir",
    "mailbox_path",
]
