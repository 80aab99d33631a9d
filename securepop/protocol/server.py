"""
The POP3 server factory, and the import path of the session and its states.

The session itself lives in L{securepop.protocol.session}; its commands in
L{securepop.protocol.authorization} and L{securepop.protocol.transaction},
declared in the table of L{securepop.protocol.commands}.
"""

from twisted.internet.protocol import Factory

from securepop.protocol.authorization import SASLContext
from securepop.protocol.login import POLICY_REFUSALS
from securepop.protocol.session import (
    CLOSE_GRACE, COMMANDS_PER_TURN, MAX_AUTH_LINE, MAX_BUFFER, MAX_COMMAND_LINE, POP3Session,
)
from securepop.protocol.states import AUTHORIZATION, CLOSED, TRANSACTION, UPDATE

__all__ = [
    "AUTHORIZATION", "CLOSED", "CLOSE_GRACE", "COMMANDS_PER_TURN", "MAX_AUTH_LINE",
    "MAX_BUFFER", "MAX_COMMAND_LINE", "POLICY_REFUSALS", "POP3Factory", "POP3Session",
    "SASLContext", "TRANSACTION", "UPDATE",
]


class POP3Factory(Factory):
    """Makes one L{POP3Session} per connection of one listener."""

    noisy = False

    def __init__(self, ctx, listener):
        self.ctx = ctx
        self.listener = listener

    def buildProtocol(self, addr):
        session = POP3Session(self.ctx, self.listener)
        session.factory = self
        return session
