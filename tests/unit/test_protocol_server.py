"""
The factory and the import path L{securepop.protocol.server} keeps for the
session and its states.
"""

from securepop.protocol import server, session, states
from tests.unit.protocol_harness import Harness, identity  # noqa: F401 (fixtures)


def test_factory_makes_one_session_per_connection(tmp_path, identity):
    h = Harness(tmp_path, identity)
    factory = server.POP3Factory(h.ctx, h.listener)
    first, second = factory.buildProtocol(None), factory.buildProtocol(None)
    assert first is not second
    assert isinstance(first, session.POP3Session)
    assert first.factory is factory and first.ctx is h.ctx and first.listener is h.listener
    assert first.state == states.AUTHORIZATION


def test_server_keeps_the_public_names():
    assert server.POP3Session is session.POP3Session
    assert (server.AUTHORIZATION, server.TRANSACTION, server.UPDATE, server.CLOSED) == (
        "AUTHORIZATION", "TRANSACTION", "UPDATE", "CLOSED")
