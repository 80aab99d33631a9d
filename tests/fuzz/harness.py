"""
An in-memory securepop session for fuzzing: the real L{POP3Session} and
L{ServerContext}, the real checkers and portal, over an in-memory
credential source and maildrop, a L{task.Clock} and a transport that pumps
pull producers (RETR/TOP) to the end.

Everything random in a session (APOP timestamp, CRAM-MD5 challenge, NTLM
challenge, SCRAM nonce) is fixed here, so the same input bytes always give
the same output bytes, whatever the chunking.
"""

from __future__ import annotations

import io
from dataclasses import replace

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from securepop import config
from securepop.auth.portal import build_portal
from securepop.auth.records import UserRecord
from securepop.interfaces import (
    CLEARTEXT_SECRET, NT_HASH, PLAINTEXT, SCRAM_SHA_256, ICredentialSource, ISecureMailbox,
)
from securepop.protocol.context import ServerContext
from securepop.protocol.server import POP3Session
from securepop import schemes as sasl_secrets
from securepop.sasl.cram_md5 import CramMD5Mechanism
from securepop.sasl.login import LOGIN
from securepop.sasl.ntlm import NTLMMechanism
from securepop.sasl.plain import PLAIN
from securepop.sasl.scram import ScramSHA256Mechanism

USER, PASSWORD = "alice", "Correct-Horse-7"
FIXED_CHALLENGE = b"<1896.697170952@localhost>"
FIXED_APOP = "<1896.697170952@localhost>"
FIXED_NTLM_CHALLENGE = b"\x01\x23\x45\x67\x89\xab\xcd\xef"
FIXED_SCRAM_NONCE = b"3rfcNHYJY1ZVvWVs7j"

SCRAM_SECRET = sasl_secrets.scram_secret(PASSWORD, salt=b"fuzz-salt-16byte", iterations=4096)


@implementer(ICredentialSource)
class MemorySource:
    """One user, every credential kind, answers at once."""

    name = "memory"

    def __init__(self, users=((USER, PASSWORD),)):
        self.users = dict(users)

    def capabilities(self):
        return frozenset({PLAINTEXT, NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET})

    def verifyPassword(self, username, password):
        if self.users.get(username, "").encode() == password and username in self.users:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("bad-credentials"))

    def lookupSecret(self, username, kind):
        if username not in self.users:
            return defer.fail(UnauthorizedLogin("unknown-user"))
        password = self.users[username]
        secret = {
            NT_HASH: lambda: sasl_secrets.nt_hash(password),
            CLEARTEXT_SECRET: lambda: sasl_secrets.cleartext_secret(password),
            SCRAM_SHA_256: lambda: SCRAM_SECRET,
        }[kind]()
        return defer.succeed((UserRecord(username), secret))

    def lookupUser(self, username):
        if username not in self.users:
            return defer.fail(UnauthorizedLogin("unknown-user"))
        return defer.succeed(UserRecord(username))


@implementer(ISecureMailbox)
class MemoryMailbox:
    """RFC 1939 semantics over a list of byte strings; records what QUIT removed."""

    def __init__(self, store, username):
        self.store, self.username = store, username
        self.messages = list(store.boxes.setdefault(username, []))
        self.deleted = set()
        self.released = False
        self.committed = False

    def listMessages(self, index=None):
        sizes = [_crlf(m) for m in self.messages]
        if index is None:
            return [0 if i in self.deleted else s for i, s in enumerate(sizes)]
        return sizes[index]

    def getMessage(self, index):
        return io.BytesIO(self.messages[index])

    def getUidl(self, index):
        return "uid%d" % (index + 1)

    def deleteMessage(self, index):
        self.deleted.add(index)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        pass

    def isDeleted(self, index):
        return index in self.deleted

    def hasOnlyCRLF(self, index):
        return False        # unknown: RETR converts the line ends

    def commit(self):
        self.committed = True
        keep = [m for i, m in enumerate(self.messages) if i not in self.deleted]
        self.store.boxes[self.username] = keep
        self.store.removed.extend(m for i, m in enumerate(self.messages) if i in self.deleted)
        return defer.succeed(len(self.deleted))

    def release(self):
        self.released = True
        self.store.locked.discard(self.username)


def _crlf(data):
    from securepop.testing.pop3 import stuff_whole

    # The size a client counts: the stuffed form minus the stuffing and the terminator.
    wire = stuff_whole(data)[:-3]
    return len(wire.replace(b"\r\n..", b"\r\n.")) - (1 if wire.startswith(b"..") else 0)


@implementer(IRealm)
class MemoryRealm:
    def __init__(self):
        self.boxes = {}
        self.removed = []
        self.locked = set()

    def requestAvatar(self, avatarId, mind, *interfaces):
        if mind is not None:
            mind.record = avatarId
        from securepop.errors import MailboxInUse

        if avatarId.username in self.locked:
            return defer.fail(MailboxInUse(avatarId.username))
        self.locked.add(avatarId.username)
        box = MemoryMailbox(self, avatarId.username)
        return defer.succeed((ISecureMailbox, box, box.release))


class FixedContext(ServerContext):
    def apop_timestamp(self):
        return FIXED_APOP


class PumpingTransport(StringTransport):
    """
    A client that reads everything: L{pump} drives a registered pull
    producer to its end.

    @ivar sync_first: as Twisted's TCP transport (C{FileDescriptor}), call
        C{resumeProducing} once inside C{registerProducer}; False behaves
        as the TLS transport (nothing happens inside the call).
    """

    def __init__(self, sync_first=False):
        super().__init__()
        self.sync_first = sync_first

    def registerProducer(self, producer, streaming):
        super().registerProducer(producer, streaming)
        if self.sync_first and not streaming:
            producer.resumeProducing()

    def pump(self, limit=100000):
        while self.producer is not None and not self.streaming and limit:
            self.producer.resumeProducing()
            limit -= 1

    def startTLS(self, ctx):
        self.tls_started = True


def make_settings(**server):
    text = """
[server]
hostname = "localhost"
idle_timeout_login = 30
idle_timeout = 600
[auth]
mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "NTLM", "CRAM-MD5"]
apop = true
failure_delay = 0
max_attempts = 3
"""
    settings = config.parse(text)
    if server:
        settings = replace(settings, server=replace(settings.server, **server))
    return settings


def make_context(settings=None, realm=None, clock=None):
    settings = settings or make_settings()
    realm = realm or MemoryRealm()
    source = MemorySource()
    mechanisms = {
        "PLAIN": PLAIN,
        "LOGIN": LOGIN,
        "CRAM-MD5": CramMD5Mechanism(lambda host: FIXED_CHALLENGE),
        "NTLM": NTLMMechanism(lambda: FIXED_NTLM_CHALLENGE),
        "SCRAM-SHA-256": ScramSHA256Mechanism(nonce_factory=lambda: FIXED_SCRAM_NONCE),
    }
    ctx = FixedContext(settings, clock or task.Clock(), build_portal(source, realm), source,
                       mechanisms, tls=object())
    ctx.realm = realm
    return ctx


def open_session(ctx, tls="none", cleartext=True, sync_first=False):
    """A greeted session on a fresh transport."""
    listener = config.ListenSettings(endpoint="tcp:0", tls=tls,
                                     insecure_allow_cleartext=cleartext)
    session = POP3Session(ctx, listener)
    transport = PumpingTransport(sync_first)
    session.makeConnection(transport)
    return session, transport


def run_session(data_chunks, messages=(), tls="none", settings=None, end=True,
                sync_first=False):
    """
    Feed C{data_chunks} to a new session, advance the clock past every
    pending penalty, end the connection.

    @return: (output bytes, session, realm)
    """
    ctx = make_context(settings)
    ctx.realm.boxes[USER] = list(messages)
    session, transport = open_session(ctx, tls=tls, sync_first=sync_first)
    for chunk in data_chunks:
        if transport.disconnecting:
            break
        session.dataReceived(chunk)
        transport.pump()
        ctx.clock.advance(0)
    transport.pump()
    if end:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        session.connectionLost(Failure(ConnectionDone()))
    return transport.value(), session, ctx.realm


def split(data, cuts):
    """C{data} cut at the sorted, distinct positions in C{cuts}."""
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def examples(n):
    """
    Hypothesis example budget: C{n} in CI; C{SECUREPOP_FUZZ_SCALE=50} for a
    long run by hand.
    """
    import os

    return max(1, int(n * float(os.environ.get("SECUREPOP_FUZZ_SCALE", "1"))))


def corpus(kind):
    """The seed inputs under C{tests/fuzz/corpus/KIND/} (bytes, sorted by name)."""
    from pathlib import Path

    folder = Path(__file__).parent / "corpus" / kind
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def fuzz_settings(n, **extra):
    """C{@settings} for one fuzz test: bounded, no deadline, blob printed."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples(n), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much], **extra)
