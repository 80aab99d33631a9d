"""LOGIN."""

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.errors import SASLError
from securepop.interfaces import PLAINTEXT, ISASLContext, ISASLExchange, ISASLMechanism
from securepop.sasl.base import Challenge
from securepop.sasl.login import LOGIN


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.test"
    clock = None
    secure = True
    settings = None

    def normaliseUsername(self, raw):
        if not raw.isalnum():
            raise ValueError("bad user name")
        return raw.lower()

    def lookupSecret(self, username, kind):
        raise AssertionError("LOGIN never looks up a secret")

    def channelBinding(self, kind):
        return None


def test_interfaces():
    assert verifyObject(ISASLMechanism, LOGIN)
    assert (LOGIN.name, LOGIN.exposesPassword, LOGIN.requires) == (
        "LOGIN", True, PLAINTEXT)


def test_exchange_provides_the_interface_and_names_no_user():
    """The user step is kept for the credentials, not charged on a failed password."""
    exchange = LOGIN.newExchange(Context())
    assert verifyObject(ISASLExchange, exchange)
    exchange.step(None)
    assert exchange.step(b"Tim") == Challenge(b"Password:")
    with pytest.raises(SASLError):
        exchange.step(b"")                          # empty password
    assert exchange.username is None
    exchange.abort()
    exchange.abort()
    assert LOGIN.newExchange(Context()).step(b"tim") == Challenge(b"Password:")


def test_prompts_then_credentials():
    exchange = LOGIN.newExchange(Context())
    assert exchange.step(None) == Challenge(b"Username:")
    assert exchange.step(b"Alice") == Challenge(b"Password:")
    creds = exchange.step(b"s3cret pass")
    assert (creds.username, creds.password) == ("alice", b"s3cret pass")


def test_initial_response_is_the_user_name():
    exchange = LOGIN.newExchange(Context())
    assert exchange.step(b"alice") == Challenge(b"Password:")
    assert exchange.step(b"pw").username == "alice"


@pytest.mark.parametrize("user", [b"", b"a\x00b", b"\xff\xfe", b"a" * 2000,
                                  b"not valid"])
def test_bad_user_names_refused(user):
    exchange = LOGIN.newExchange(Context())
    exchange.step(None)
    with pytest.raises(SASLError):
        exchange.step(user)


@pytest.mark.parametrize("password", [b"", b"p" * 2000])
def test_bad_passwords_refused(password):
    exchange = LOGIN.newExchange(Context())
    exchange.step(b"alice")
    with pytest.raises(SASLError):
        exchange.step(password)


def test_no_step_after_the_end():
    exchange = LOGIN.newExchange(Context())
    exchange.step(b"alice")
    exchange.step(b"pw")
    with pytest.raises(SASLError):
        exchange.step(b"more")


def test_failed_exchange_stays_failed():
    exchange = LOGIN.newExchange(Context())
    with pytest.raises(SASLError):
        exchange.step(b"")
    with pytest.raises(SASLError):
        exchange.step(b"pw")
