"""
LOGIN (draft-murchison-sasl-login): user name, then password, each after a
prompt.  Obsolete but what many clients still send; the password crosses the
wire, so it is offered under TLS only unless cleartext is allowed.  An
initial response is the user name.
"""

from twisted.cred.credentials import UsernamePassword
from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import PLAINTEXT, ISASLExchange, ISASLMechanism
from securepop.sasl.base import Challenge
from securepop.sasl.credentials import normalise

MAX_PART = 1024
USERNAME_PROMPT = b"Username:"
PASSWORD_PROMPT = b"Password:"


@implementer(ISASLExchange)
class _LoginExchange:
    username = None         # the credentials carry the user name to the portal

    def __init__(self, context):
        self._context = context
        self._username = None
        self._state = "start"

    def step(self, response):
        if self._state == "start" and response is None:
            self._state = "user"
            return Challenge(USERNAME_PROMPT)
        if self._state in ("start", "user"):
            self._state = "failed"
            if not response or len(response) > MAX_PART or b"\x00" in response:
                raise SASLError("LOGIN user name empty, too long or with NUL")
            try:
                raw = response.decode("utf-8")
            except UnicodeDecodeError:
                raise SASLError("LOGIN user name is not UTF-8") from None
            self._username = normalise(self._context, raw)
            self._state = "password"
            return Challenge(PASSWORD_PROMPT)
        if self._state == "password":
            self._state = "done"
            if not response or len(response) > MAX_PART:
                raise SASLError("LOGIN password empty or too long")
            return UsernamePassword(self._username, response)
        raise SASLError("LOGIN exchange already finished")

    def abort(self):
        """Nothing is held between steps: nothing to release."""


@implementer(ISASLMechanism)
class LoginMechanism:
    name = "LOGIN"
    exposesPassword = True
    requires = PLAINTEXT

    def newExchange(self, context):
        return _LoginExchange(context)


LOGIN = LoginMechanism()
