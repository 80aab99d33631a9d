#!/usr/bin/env python3
"""
securepop inside another Twisted application.

The host application here serves a small web page of its own and runs
securepop beside it in the same reactor, with its *own* users and its *own*
mailboxes, plugged in through securepop's public interfaces:

 - L{securepop.ICredentialSource}: the host's user store (a dict here; a
   database in real life), verifying passwords off the reactor thread;
 - L{securepop.ISecureMailbox}: the host's maildrop (in memory here), with
   RFC 1939 semantics: DELE marks, only C{commit()} (QUIT) removes;
 - a twisted.cred realm handing out those mailboxes, and
   L{securepop.auth.portal.build_portal} for the checkers.

Run it::

    python examples/embedded_app.py --pop3-port 11110 --web-port 18080

then C{poplib.POP3("127.0.0.1", 11110)}, user C{demo}, password
C{demo-password}.  The listener allows credentials without TLS because it
only listens on loopback for the demonstration; a real application keeps
STLS or implicit TLS (C{[[listen]] tls}) and the default
C{require_secure_channel}.

Note: C{SecurePOPService.reload()} rebuilds the source and portal from the
configuration; an application that plugs in its own calls L{plug_in} again
after a reload.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import replace

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer, endpoints, threads
from twisted.web import resource, server
from zope.interface import implementer

import securepop
from securepop import ICredentialSource, ISecureMailbox
from securepop.auth.portal import build_portal
from securepop.auth.records import UserRecord
from securepop.config import ListenSettings
from securepop.interfaces import PLAINTEXT
from securepop.sasl import registry


@implementer(ICredentialSource)
class HostUserStore:
    """The host application's users: name -> password (a database in real life)."""

    name = "host-app"

    def __init__(self, users, reactor):
        self.users = dict(users)
        self.reactor = reactor

    def capabilities(self):
        return frozenset({PLAINTEXT})

    def verifyPassword(self, username, password):
        import hmac

        def check():     # a real store hashes: keep it off the reactor thread
            stored = self.users.get(username)
            expected = (stored or "\0").encode("utf-8")
            if not hmac.compare_digest(expected, password) or stored is None:
                raise UnauthorizedLogin("bad-password")
            return UserRecord(username)

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), check)

    def lookupSecret(self, username, kind):
        return defer.fail(UnauthorizedLogin("no secrets here"))

    def lookupUser(self, username):
        if username in self.users:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("unknown-user"))


@implementer(ISecureMailbox)
class MemoryMailbox:
    """A maildrop kept in memory: RFC 1939 marks, removal only on commit()."""

    def __init__(self, store, username):
        self.store = store
        self.username = username
        self.messages = list(store.get(username, []))   # snapshot at login
        self.deleted = set()

    def listMessages(self, index=None):
        if index is None:
            return [0 if i in self.deleted else len(m) for i, m in enumerate(self.messages)]
        return 0 if index in self.deleted else len(self.messages[index])

    def getMessage(self, index):
        return io.BytesIO(self.messages[index])

    def getUidl(self, index):
        import hashlib

        return hashlib.sha256(self.messages[index]).hexdigest()[:32]

    def deleteMessage(self, index):
        self.deleted.add(index)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        return defer.succeed(None)

    def isDeleted(self, index):
        return index in self.deleted

    def hasOnlyCRLF(self, index):
        return False        # unknown: RETR converts the line ends

    def commit(self):
        gone = {self.messages[i] for i in self.deleted}
        self.store[self.username] = [m for m in self.store.get(self.username, [])
                                     if m not in gone]
        self.deleted.clear()
        return defer.succeed(None)

    def release(self):
        pass


@implementer(IRealm)
class MemoryRealm:
    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces):
        if ISecureMailbox not in interfaces:
            return defer.fail(NotImplementedError())
        if mind is not None:
            mind.record = avatarId          # securepop's LoginMind notes who it was
        mailbox = MemoryMailbox(self.store, avatarId.username)
        return defer.succeed((ISecureMailbox, mailbox, mailbox.release))


def plug_in(pop3, source, realm):
    """Give a running or new SecurePOPService the host's users and mailboxes."""
    ctx = pop3.context
    ctx.source = source
    ctx.portal = build_portal(source, realm)
    ctx.mechanisms = {name: registry.mechanism_for(name, source.capabilities())
                      for name in ("PLAIN", "LOGIN")}
    ctx.settings = replace(ctx.settings, auth=replace(ctx.settings.auth,
                                                      mechanisms=("PLAIN", "LOGIN")))


class StatusPage(resource.Resource):
    isLeaf = True

    def __init__(self, pop3, store):
        super().__init__()
        self.pop3, self.store = pop3, store

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        waiting = sum(len(v) for v in self.store.values())
        return (f"open POP3 sessions: {len(self.pop3.context.sessions)}\n"
                f"messages waiting: {waiting}\n").encode()


def build(reactor, pop3_port, web_port, data_dir):
    """The host application: its web page and securepop, in one service tree."""
    users = {"demo": "demo-password"}
    store = {"demo": [b"From: host@example.test\r\nSubject: hello\r\n\r\nfrom the host app\r\n"]}
    settings = securepop.load_config(None, data_dir)
    settings = replace(
        settings,
        server=replace(settings.server, hostname="localhost"),
        listen=(ListenSettings(endpoint=f"tcp:{pop3_port}:interface=127.0.0.1",
                               tls="none", insecure_allow_cleartext=True),),
        auth=replace(settings.auth, failure_delay=0.5),
    )
    app = service.MultiService()
    pop3 = securepop.makeService(settings, reactor)
    plug_in(pop3, HostUserStore(users, reactor), MemoryRealm(store))
    pop3.setServiceParent(app)
    web = StreamServerEndpointService(
        endpoints.TCP4ServerEndpoint(reactor, web_port, interface="127.0.0.1"),
        server.Site(StatusPage(pop3, store)))
    web.setServiceParent(app)
    return app, store


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pop3-port", type=int, default=11110)
    parser.add_argument("--web-port", type=int, default=18080)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="securepop-embedded-")
    app, _ = build(reactor, args.pop3_port, args.web_port, data_dir)
    reactor.callWhenRunning(app.startService)
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
