"""CRAM-MD5 (RFC 2195)."""

import re

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.errors import SASLError
from securepop.interfaces import (
    CLEARTEXT_SECRET, ISASLContext, ISASLExchange, ISASLMechanism, ISecretCredentials,
)
from securepop.sasl.base import Challenge
from securepop.sasl.cram_md5 import CRAM_MD5, CramMD5Mechanism, new_challenge

RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"
RFC_SECRET = b"tanstaaftanstaaf"


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.test"
    clock = None
    secure = False
    settings = None

    def normaliseUsername(self, raw):
        if " " in raw:
            raise ValueError("space in user name")
        return raw.lower()

    def lookupSecret(self, username, kind):
        raise AssertionError("the checker looks the secret up")

    def channelBinding(self, kind):
        return None


def rfc_exchange():
    mechanism = CramMD5Mechanism(challenge_factory=lambda host: RFC_CHALLENGE)
    exchange = mechanism.newExchange(Context())
    assert exchange.step(None) == Challenge(RFC_CHALLENGE)
    return exchange


def test_interfaces():
    assert verifyObject(ISASLMechanism, CRAM_MD5)
    assert (CRAM_MD5.name, CRAM_MD5.exposesPassword, CRAM_MD5.requires) == (
        "CRAM-MD5", False, CLEARTEXT_SECRET)


def test_exchange_provides_the_interface_and_holds_nothing():
    exchange = rfc_exchange()
    assert verifyObject(ISASLExchange, exchange)
    assert exchange.username is None
    exchange.abort()
    exchange.abort()
    with pytest.raises(SASLError):                  # a broken response is still refused
        exchange.step(b"tim not-a-digest")
    assert exchange.username is None


def test_rfc2195_example():
    creds = rfc_exchange().step(RFC_RESPONSE)
    assert verifyObject(ISecretCredentials, creds)
    assert creds.username == "tim"
    assert creds.kind == CLEARTEXT_SECRET
    assert creds.checkSecret(RFC_SECRET) is True


def test_rfc2195_example_wrong_secret():
    creds = rfc_exchange().step(RFC_RESPONSE)
    assert creds.checkSecret(b"tanstaaftanstaaF") is False
    assert creds.checkSecret("tanstaaftanstaaf") is False  # str, not bytes


def test_upper_case_hex_accepted():
    creds = rfc_exchange().step(RFC_RESPONSE.upper().replace(b"TIM", b"tim"))
    assert creds.checkSecret(RFC_SECRET) is True


def test_challenges_are_fresh_and_well_formed():
    first, second = new_challenge("mail.example.test"), new_challenge(
        "mail.example.test")
    assert first != second
    assert re.match(rb"^<[0-9a-f]{16}\.[0-9a-f]{16}@mail\.example\.test>$",
                    first)


def test_initial_response_refused():
    with pytest.raises(SASLError):
        CRAM_MD5.newExchange(Context()).step(RFC_RESPONSE)


@pytest.mark.parametrize("response", [
    b"", b"tim", b"tim b913a602", b"timb913a602c7eda7a495b4e6e7334d3890",
    b" b913a602c7eda7a495b4e6e7334d3890",
    b"tim b913a602c7eda7a495b4e6e7334d389g",
    b"tim b913a602c7eda7a495b4e6e7334d3890\n",
    b"\xff b913a602c7eda7a495b4e6e7334d3890",
    b"x" * 2000 + b" b913a602c7eda7a495b4e6e7334d3890",
    b"bad user b913a602c7eda7a495b4e6e7334d3890",
])
def test_hostile_responses_refused(response):
    with pytest.raises(SASLError):
        rfc_exchange().step(response)


def test_no_step_after_the_end():
    exchange = rfc_exchange()
    exchange.step(RFC_RESPONSE)
    with pytest.raises(SASLError):
        exchange.step(RFC_RESPONSE)
