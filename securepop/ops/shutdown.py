"""
Graceful stop (SIGTERM): stop accepting, let sessions in flight finish
within C{[server] shutdown_grace}, then close the rest.

Nothing is deleted for a session that did not QUIT: closing a connection
goes through the protocol's C{connectionLost}, which releases the mailbox
without committing marks.  A client that sends QUIT during the grace period
gets its deletions, as it would at any other time.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer

from securepop import events


class GracefulShutdown(service.Service):
    """
    Add it as the I{first} child of the server's service: children stop in
    reverse order, all in the same turn, so the listeners stop listening
    while this one waits for the sessions.

    @param context: the L{ServerContext} whose C{sessions} are waited for.
    @param clock: an L{IReactorTime}.
    @param grace: seconds sessions may take before they are closed.
    @param poll: how often the set of sessions is looked at.
    """

    name = "graceful-shutdown"

    def __init__(self, context, clock, grace, poll=0.1):
        self.context = context
        self.clock = clock
        self.grace = grace
        self.poll = poll
        self.closed = 0

    def stopService(self):
        super().stopService()
        return self.drain()

    def drain(self):
        """Deferred firing when no session is left (waited, then closed)."""
        sessions = self.context.sessions
        if not sessions:
            return defer.succeed(0)
        events.emit("shutdown.draining", sessions=len(sessions), grace=self.grace)
        done = defer.Deferred()
        deadline = self.clock.seconds() + self.grace

        def check():
            if not self.context.sessions:
                events.emit("shutdown.drained", closed=self.closed)
                done.callback(self.closed)
            elif self.clock.seconds() >= deadline:
                self.close_remaining()
                # connectionLost follows on the next reactor turns
                self.clock.callLater(self.poll, after_close)
            else:
                self.clock.callLater(self.poll, check)

        def after_close():
            events.emit("shutdown.drained", closed=self.closed)
            done.callback(self.closed)

        check()
        return done

    def close_remaining(self):
        """The grace period is over: abort what is left (no QUIT, no commit)."""
        for session in list(self.context.sessions):
            self.closed += 1
            events.emit("shutdown.closed", "warn", ip=session.peer, user=session.username,
                        state=session.state)
            transport = session.transport
            if transport is None:
                self.context.sessions.discard(session)
                continue
            # Not every wrapper a session may sit under can abort.
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()


def add_graceful_shutdown(server, grace, clock=None):
    """
    Put a L{GracefulShutdown} first among C{server}'s children (a
    L{securepop.service.SecurePOPService}); returns it.
    """
    shutdown = GracefulShutdown(server.context, clock or server.reactor, grace)
    shutdown.parent = server
    server.services.insert(0, shutdown)
    server.namedServices[shutdown.name] = shutdown
    if server.running:
        shutdown.startService()
    return shutdown
