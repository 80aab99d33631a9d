"""
Values a SASL exchange step returns, and the tiny helpers every mechanism uses.
"""

from dataclasses import dataclass

from securepop.errors import SASLError


@dataclass(frozen=True)
class Challenge:
    """Server data for the next C{+ base64} continuation line."""

    data: bytes


class OneResponseExchange:
    """
    An exchange of exactly one client response (PLAIN, OAUTHBEARER,
    XOAUTH2): an empty challenge first when AUTH came without an initial
    response, then L{respond} to the response, once; any further step is
    an error.  Nothing is held between steps.
    """

    username = None         # the credentials carry the user name to the portal
    mechanism_name = "?"

    def __init__(self, context):
        self._context = context
        self._state = "start"

    def step(self, response):
        if self._state == "start" and response is None:
            self._state = "wait"
            return Challenge(b"")
        if self._state == "done":
            raise SASLError(f"{self.mechanism_name} exchange already finished")
        self._state = "done"
        return self.respond(response or b"")

    def respond(self, data):
        """@return: the credentials in C{data} (bytes); @raise SASLError."""
        raise NotImplementedError

    def abort(self):
        """Nothing is held between steps: nothing to release."""
