"""
The portal and the realm: from a verified user to an open, locked maildrop.
"""

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from securepop.auth.checkers import PasswordChecker, SecretChecker, VerifiedChecker
from securepop.auth.oauth2 import BearerChecker
from securepop.errors import MailboxUnavailable
from securepop.interfaces import ISecureMailbox


class LoginMind:
    """Passed as the mind to the portal; the realm notes who logged in."""

    record = None


@implementer(IRealm)
class MaildirRealm:
    """
    Opens the user's Maildir (path confined to the mail root), takes its
    lock (L{securepop.errors.MailboxInUse} when held) and snapshots it, off
    the reactor thread, through a L{securepop.mailstore.maildir.MaildirStore}.
    """

    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces):
        if ISecureMailbox not in interfaces:
            return defer.fail(NotImplementedError("securepop only serves maildrops"))
        if mind is not None:
            mind.record = avatarId
        try:
            d = self.store.login(avatarId.username, avatarId.mailbox)
        except ValueError:
            return defer.fail(UnauthorizedLogin("unusable-mailbox-path"))

        def refused(failure):
            if failure.check(OSError):
                # Disk full, permissions, storage away: try later, not "wrong
                # password"; the reason goes to the log, not to the client.
                raise MailboxUnavailable(f"{failure.value.strerror or failure.value}")
            failure.trap(ValueError)
            raise UnauthorizedLogin("unusable-mailbox-path")

        d.addCallbacks(lambda mailbox: (ISecureMailbox, mailbox, mailbox.release), refused)
        return d


def build_portal(source, realm, cache=None, bearer=None, shared=None):
    """
    One portal with the checkers over one credential source, and the bearer
    token checker when C{bearer} (a L{securepop.auth.oauth2.BearerValidator})
    is given; C{shared} is the auth cache's shared level
    (L{securepop.auth.sharedcache}) or None.
    """
    checkers = [PasswordChecker(source, cache, shared), SecretChecker(source),
                VerifiedChecker(source)]
    if bearer is not None:
        checkers.append(BearerChecker(bearer, source))
    return Portal(realm, checkers)
