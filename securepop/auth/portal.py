"""
The portal and the realm: from a verified user to an open, locked maildrop.
"""

from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from securepop.auth.checkers import PasswordChecker, SecretChecker, VerifiedChecker
from securepop.interfaces import ISecureMailbox


class LoginMind:
    """Passed as the mind to the portal; the realm notes who logged in."""

    record = None


@implementer(IRealm)
class MaildirRealm:
    """
    Opens the user's Maildir (path confined to the mail root), takes its
    lock (L{securepop.errors.MailboxInUse} when held) and snapshots it.

    @param run_blocking: C{f(*args) -> Deferred}, running the directory scan
        off the reactor thread (a thread pool in the daemon).
    """

    def __init__(self, root_template, data_dir, run_blocking=None, trash=None):
        self.root_template = root_template
        self.data_dir = data_dir
        self.trash = trash
        self._run = run_blocking or (lambda f, *a: defer.maybeDeferred(f, *a))

    def path_for(self, record):
        from securepop.mailstore.paths import mailbox_path

        if record.mailbox:
            return record.mailbox
        return mailbox_path(self.root_template, self.data_dir, record.username)

    def requestAvatar(self, avatarId, mind, *interfaces):
        if ISecureMailbox not in interfaces:
            return defer.fail(NotImplementedError("securepop only serves maildrops"))
        from securepop.mailstore.maildir import MaildirMailbox

        if mind is not None:
            mind.record = avatarId
        path = self.path_for(avatarId)
        d = self._run(MaildirMailbox.open, path, True, self.trash)

        def opened(mailbox):
            return ISecureMailbox, mailbox, mailbox.release

        return d.addCallback(opened)


def build_portal(source, realm, cache=None):
    """One portal with the three checkers over one credential source."""
    return Portal(realm, [PasswordChecker(source, cache), SecretChecker(source),
                          VerifiedChecker(source)])
