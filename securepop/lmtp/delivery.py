"""
What the LMTP listener does with a recipient and a message: map the
address to a user (the one user-name rule of L{securepop.auth.usernames}),
ask the credential source whether the user exists, confine the Maildir to
the mail root, check the quota, and deliver one file per recipient through
L{securepop.mailstore.delivery.deliver} (C{tmp/}, fsync, link into
C{new/}: never a partial or a duplicated message).

Each refusal is a L{Reply} with its RFC 3463 code; the reason goes to the
log, never the address's bytes unescaped.
"""

from __future__ import annotations

import errno
import threading
import zlib
from dataclasses import dataclass

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from securepop import events
from securepop.auth.usernames import normalise_username
from securepop.errors import SourceUnavailable
from securepop.mailstore.delivery import deliver
from securepop.mailstore.paths import checkUsername
from securepop.mailstore.quota import NO_QUOTA, Quota, current_use, parse_quota, record

#: RFC 5321 section 4.5.3.1.3: the longest reverse- or forward-path.
MAX_PATH_OCTETS = 256

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

#: Quota check and delivery of one Maildir run one at a time in this process
#: (striped: a bounded set of locks, whatever the number of users).
_MAILDIR_LOCKS = tuple(threading.Lock() for _ in range(64))


def _lock_for(maildir):
    return _MAILDIR_LOCKS[zlib.crc32(maildir.encode("utf-8", "surrogateescape")) % 64]


class Reply(Exception):
    """An LMTP reply: C{code} (int), C{status} (RFC 3463, e.g. C{"5.1.1"}), C{text}."""

    def __init__(self, code, status, text, result=None):
        super().__init__(f"{code} {status} {text}")
        self.code, self.status, self.text = code, status, text
        self.result = result            # the metric label, when it is a recipient's outcome

    def line(self):
        return f"{self.code} {self.status} {self.text}".encode("ascii")


UNKNOWN_USER = Reply(550, "5.1.1", "No such user here", "unknown_user")
FOREIGN_DOMAIN = Reply(550, "5.1.2", "Not a domain of this server", "unknown_user")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad recipient address syntax", "refused")
OVER_QUOTA = Reply(552, "5.2.2", "Mailbox full", "over_quota")
SOURCE_DOWN = Reply(451, "4.3.0", "User directory unavailable, try again later",
                    "temp_failure")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later",
                    "temp_failure")
DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage", "disk_full")
TOO_BIG = Reply(552, "5.3.4", "Message too big for system", "too_big")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (1000 octets with CRLF at most)",
                      "refused")


@dataclass(frozen=True)
class Recipient:
    """
    An accepted recipient.

    @ivar address: the forward-path as given (ASCII), for C{Delivered-To}.
    @ivar username: the mailbox owner; @ivar maildir: its confined path.
    @ivar quota: the limit that applies.
    """

    address: str
    username: str
    maildir: str
    quota: Quota = NO_QUOTA


def split_address(raw):
    """
    The local part and domain of a forward-path, refusing what no mailbox
    name may hold.

    @param raw: the bytes between C{<} and C{>}.
    @return: C{(local, domain)} (str; domain C{""} when absent).
    @raise Reply: L{BAD_ADDRESS} for a malformed or overlong path,
        L{UNKNOWN_USER} for a local part no user can have.
    """
    if not raw or len(raw) > MAX_PATH_OCTETS:
        raise BAD_ADDRESS
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BAD_ADDRESS from None
    if any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise BAD_ADDRESS
    if text.startswith("@"):            # a source route (RFC 5321 Appendix C)
        raise BAD_ADDRESS
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = text, ""
    if not local or (at and not domain):
        raise BAD_ADDRESS
    if any(c in local for c in '"\\/@:') or local in (".", ".."):
        raise UNKNOWN_USER
    return local, domain


class Recipients:
    """
    Maps forward-paths to L{Recipient}s for one server.

    @param context: the L{securepop.protocol.context.ServerContext} (its
        C{settings} and C{source} are those in force after a reload).
    @param store: the L{securepop.mailstore.maildir.MaildirStore} (path
        rules); None: the one of the context's realm in force.
    @param domains: C{lmtp.domains}.
    """

    def __init__(self, context, store=None, domains=()):
        self.context = context
        self._store = store
        self.extra_domains = frozenset(d.rstrip(".").casefold() for d in domains)

    def accepted_domains(self):
        hostname = self.context.settings.server.hostname or ""
        return self.extra_domains | {"localhost", hostname.rstrip(".").casefold()}

    def default_quota(self):
        mail = self.context.settings.mail
        return Quota(mail.quota_bytes, mail.quota_messages)

    def resolve(self, raw):
        """
        @return: a Deferred firing with a L{Recipient} or failing with a
            L{Reply}.
        """
        try:
            local, domain = split_address(raw)
            if domain and domain.rstrip(".").casefold() not in self.accepted_domains():
                raise FOREIGN_DOMAIN
            settings = self.context.settings
            try:
                name = checkUsername(normalise_username(local, settings.auth,
                                                        settings.server.hostname))
            except ValueError:
                raise UNKNOWN_USER from None
        except Reply as reply:
            return defer.fail(reply)
        address = raw.decode("ascii")
        d = defer.maybeDeferred(self.context.source.lookupUser, name)
        d.addCallbacks(self._found, self._not_found, callbackArgs=(address,),
                       errbackArgs=(name,))
        return d

    def _found(self, record, address):
        try:
            store = self._store or self.context.portal.realm.store
            maildir = store.pathFor(record.username, record.mailbox)
        except ValueError:
            events.emit("lmtp.refused", "warn", user=record.username,
                        reason="unusable-mailbox-path")
            raise UNKNOWN_USER from None
        quota = self.default_quota()
        override = record.info.get("quota")
        if override:
            try:
                quota = parse_quota(override)
            except ValueError:
                events.emit("lmtp.quota_malformed", "warn", user=record.username,
                            message="the user's quota is not OCTETS[,MESSAGES]; the "
                                    "[mail] default applies")
        return Recipient(address, record.username, str(maildir), quota)

    def _not_found(self, failure, name):
        if failure.check(UnauthorizedLogin):
            raise UNKNOWN_USER
        if failure.check(SourceUnavailable):
            events.emit("lmtp.source_unavailable", "warn", user=name,
                        error=failure.getErrorMessage())
            raise SOURCE_DOWN
        events.emit("lmtp.error", "error", user=name, error=failure.getErrorMessage())
        raise SOURCE_DOWN


def check_quota(recipient, octets=0):
    """
    Whether C{recipient} can take C{octets} more in one message.  Blocking
    (reads C{maildirsize}).

    @raise Reply: L{OVER_QUOTA}.
    """
    if recipient.quota.unlimited:
        return
    use = current_use(recipient.maildir, recipient.quota)
    if recipient.quota.refuses(use, octets):
        raise OVER_QUOTA


def trace_header(sender, recipient):
    """
    The lines put on top of the message: C{Return-Path} and
    C{Delivered-To} (RFC 5321 section 4.4; the addresses were checked to be
    printable ASCII).
    """
    return (b"Return-Path: <" + sender + b">\r\nDelivered-To: <"
            + recipient.address.encode("ascii") + b">\r\n")


def deliver_to(recipient, sender, message):
    """
    Deliver one message to one recipient.  Blocking: run it in a thread.

    @param sender: the reverse-path (bytes, maybe empty).
    @param message: the message text (bytes-like, CRLF lines, unstuffed).
    @return: the file name in C{new/}.
    @raise Reply: L{OVER_QUOTA}, L{DISK_FULL} or L{LOCAL_ERROR}; nothing
        is left in C{new/} then.
    """
    header = trace_header(sender, recipient)
    octets = len(header) + len(message)
    with _lock_for(recipient.maildir):
        check_quota(recipient, octets)
        try:
            name = deliver(recipient.maildir, [header, message])
        except OSError as e:
            events.emit("lmtp.delivery_failed", "error", user=recipient.username,
                        error=e.strerror or str(e))
            raise (DISK_FULL if e.errno in _DISK_FULL else LOCAL_ERROR) from None
        record(recipient.maildir, octets, 1)
    return name


def deliver_all(recipients, sender, message):
    """
    One outcome per recipient, in order: the file name or a L{Reply}.
    Blocking: run it in a thread.
    """
    outcomes = []
    for recipient in recipients:
        try:
            outcomes.append(deliver_to(recipient, sender, message))
        except Reply as reply:
            outcomes.append(reply)
        except Exception as e:      # noqa: BLE001 - one recipient's failure is its reply
            events.emit("lmtp.error", "error", user=recipient.username, error=str(e))
            outcomes.append(LOCAL_ERROR)
    return outcomes
