"""Tests for securepop.ops.shutdown: sessions finish within the grace period."""

from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock

from securepop.ops.shutdown import GracefulShutdown, add_graceful_shutdown


class Transport:
    def __init__(self, ctx, session):
        self.ctx, self.session = ctx, session
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.ctx.sessions.discard(self.session)   # connectionLost follows


class Session:
    peer, username, state = "127.0.0.1", "alice", "TRANSACTION"


class Context:
    def __init__(self, n):
        self.sessions = set()
        for _ in range(n):
            s = Session()
            s.transport = Transport(self, s)
            self.sessions.add(s)


def test_no_sessions_stops_at_once():
    done = []
    GracefulShutdown(Context(0), Clock(), 10).drain().addCallback(done.append)
    assert done == [0]


def test_session_finishing_in_grace_is_not_closed():
    ctx, clock = Context(1), Clock()
    (session,) = ctx.sessions
    done = []
    GracefulShutdown(ctx, clock, 10).drain().addCallback(done.append)
    clock.advance(5)
    assert done == []
    ctx.sessions.clear()           # the client finished its RETR and QUIT
    clock.advance(0.1)
    assert done == [0]
    assert not session.transport.aborted


def test_sessions_left_after_grace_are_aborted():
    ctx, clock = Context(2), Clock()
    transports = [s.transport for s in ctx.sessions]
    done = []
    shutdown = GracefulShutdown(ctx, clock, 3)
    shutdown.drain().addCallback(done.append)
    clock.advance(2.9)
    assert not any(t.aborted for t in transports) and done == []
    clock.pump([0.1] * 5)
    assert all(t.aborted for t in transports)
    assert done == [2]


def test_transport_without_abort_is_lost():
    ctx, clock = Context(1), Clock()
    (s,) = ctx.sessions
    lost = []
    s.transport = type("T", (), {"loseConnection": lambda self: lost.append(1)})()
    GracefulShutdown(ctx, clock, 0).drain()
    clock.advance(1)
    assert lost == [1]


def test_added_first_so_listeners_stop_in_the_same_turn():
    order = []

    class Listener(Service):
        def stopService(self):
            order.append("listener")
            return super().stopService()

    server = MultiService()
    server.context = Context(1)
    server.reactor = Clock()
    Listener().setServiceParent(server)
    shutdown = add_graceful_shutdown(server, 5)
    assert list(server)[0] is shutdown
    server.startService()
    d = server.stopService()
    assert order == ["listener"]
    fired = []
    d.addCallback(fired.append)
    assert fired == []                  # still waiting for the session
    server.reactor.advance(6)
    server.reactor.advance(1)
    assert fired
