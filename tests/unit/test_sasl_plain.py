"""PLAIN (RFC 4616)."""

import pytest
from twisted.cred.credentials import IUsernamePassword
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.errors import SASLError
from securepop.interfaces import (
    PLAINTEXT, ISASLContext, ISASLExchange, ISASLMechanism,
)
from securepop.sasl.base import Challenge
from securepop.sasl.plain import PLAIN


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.test"
    clock = None
    secure = True
    settings = None

    def normaliseUsername(self, raw):
        if not raw or " " in raw:
            raise ValueError("bad user name")
        return raw.lower()

    def lookupSecret(self, username, kind):
        raise AssertionError("PLAIN never looks up a secret")

    def channelBinding(self, kind):
        return None


def test_interfaces():
    assert verifyObject(ISASLMechanism, PLAIN)
    assert verifyObject(ISASLExchange, PLAIN.newExchange(Context()))
    assert PLAIN.name == "PLAIN"
    assert PLAIN.exposesPassword is True
    assert PLAIN.requires == PLAINTEXT


def test_exchange_names_no_user_and_holds_nothing():
    """The credentials carry the user name: a failed PLAIN is charged to no user."""
    exchange = PLAIN.newExchange(Context())
    assert verifyObject(ISASLExchange, exchange)
    with pytest.raises(SASLError):
        exchange.step(b"\x00alice\x00")           # no password: refused
    assert exchange.username is None
    exchange.abort()
    exchange.abort()                                # idempotent
    fresh = PLAIN.newExchange(Context())
    fresh.abort()                                   # before any step
    assert IUsernamePassword.providedBy(fresh.step(b"\x00tim\x00pw"))


def test_rfc4616_example_initial_response():
    """RFC 4616 section 4: C: \\0tim\\0tanstaaftanstaaf."""
    creds = PLAIN.newExchange(Context()).step(b"\x00tim\x00tanstaaftanstaaf")
    assert IUsernamePassword.providedBy(creds)
    assert creds.username == "tim"
    assert creds.password == b"tanstaaftanstaaf"


def test_without_initial_response_sends_empty_challenge():
    exchange = PLAIN.newExchange(Context())
    assert exchange.step(None) == Challenge(b"")
    creds = exchange.step(b"\x00Tim\x00pw")
    assert creds.username == "tim"


def test_authzid_equal_to_authcid_accepted_after_normalisation():
    creds = PLAIN.newExchange(Context()).step(b"TIM\x00tim\x00pw")
    assert creds.username == "tim"


def test_rfc4616_proxy_example_refused():
    """RFC 4616's second example: Ursel acting as Kurt.  No proxying."""
    with pytest.raises(SASLError):
        PLAIN.newExchange(Context()).step(b"Kurt\x00Ursel\x00xipj3plmq")


@pytest.mark.parametrize("response", [
    b"", b"tim", b"\x00tim", b"\x00tim\x00pw\x00extra", b"\x00\x00pw",
    b"\x00tim\x00", b"\x00\xff\xfe\x00pw", b"\xff\x00tim\x00pw",
    b"\x00" + b"a" * 5000 + b"\x00pw", b"\x00bad user\x00pw",
])
def test_hostile_responses_refused(response):
    with pytest.raises(SASLError):
        PLAIN.newExchange(Context()).step(response)


def test_step_after_credentials_refused():
    exchange = PLAIN.newExchange(Context())
    exchange.step(b"\x00tim\x00pw")
    with pytest.raises(SASLError):
        exchange.step(b"\x00tim\x00pw")
