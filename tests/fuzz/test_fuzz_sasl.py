"""
Fuzz every SASL decoder: any sequence of client responses ends in a
challenge, credentials, or a clean refusal (L{SASLError} /
L{UnauthorizedLogin}) -- never another exception.  NTLM messages are also
mutated from real ones (pyspnego, in the corpus) and the NTLM parsers must
fail only with L{NTLMMessageError}.
"""

import struct

import pytest
from hypothesis import given, strategies as st
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import ISASLContext
from securepop.sasl import ntlm_messages as msgs
from securepop.sasl.base import Challenge
from securepop.sasl.cram_md5 import CramMD5Mechanism
from securepop.sasl.gssapi import GSSAPI, GSSAPIRefused, parse_layer_choice
from securepop.sasl.login import LOGIN
from securepop.sasl.ntlm import NTLMDelegateMechanism, NTLMMechanism
from securepop.sasl.plain import PLAIN
from securepop.sasl.scram import ScramSHA256Mechanism
from tests.fuzz.harness import (
    FIXED_NTLM_CHALLENGE, MemorySource, corpus, fuzz_settings, make_settings,
)


@implementer(ISASLContext)
class Context:
    hostname = "localhost"
    secure = True

    def __init__(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.settings = make_settings().auth
        self.source = MemorySource()

    def normaliseUsername(self, raw):
        name = raw.strip().lower()
        if not name or len(name) > 255 or any(ord(c) < 0x20 for c in name):
            raise ValueError("bad")
        return name

    def lookupSecret(self, username, kind):
        return self.source.lookupSecret(username, kind)

    def channelBinding(self, kind):
        return b"\x07" * 32

    def ntlmDelegate(self):
        return FakeDelegate()

    def gssapiAcceptor(self):
        return TransparentAcceptor()


class TransparentAcceptor:
    """Accepts any token as alice's; wrapping is the identity, so the fuzzed
    bytes reach the security-layer parser as they are."""

    realms = ("EXAMPLE.COM",)

    def step(self, token, binding):
        return defer.succeed((b"rep" if token[:1] == b"m" else None, token[:1] != b"c"))

    def initiator(self):
        return "alice@EXAMPLE.COM"

    def channelBound(self):
        return False

    def wrap(self, data):
        return data

    def unwrap(self, message):
        return message

    def abort(self):
        pass


class FakeDelegate:
    def negotiate(self, token):
        flags = msgs.NEGOTIATE_UNICODE | msgs.NEGOTIATE_NTLM
        return defer.succeed(msgs.build_challenge(flags, FIXED_NTLM_CHALLENGE, "EXAMPLE",
                                                  msgs.build_av_pairs([])))

    def authenticate(self, token):
        return defer.fail(UnauthorizedLogin("dc says no"))


MECHANISMS = [PLAIN, LOGIN, CramMD5Mechanism(), NTLMMechanism(lambda: FIXED_NTLM_CHALLENGE),
              NTLMDelegateMechanism(), ScramSHA256Mechanism(),
              ScramSHA256Mechanism(channel_binding=True), GSSAPI]

NTLM_SEEDS = [m for m in corpus("ntlm")]
scram_like = st.lists(st.sampled_from([b"n", b"y", b"p=tls-exporter", b"p=x", b",", b"a=", b"n=",
                                       b"r=", b"c=", b"p=", b"biws", b"=2C", b"=3D", b"=",
                                       b"alice", b"\xff", b"m=1", b"s=", b"i=1"]),
                      max_size=20).map(b"".join)


def mutate(data, edits):
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)


ntlm_tokens = st.one_of(
    st.binary(max_size=400),
    st.builds(mutate, st.sampled_from(NTLM_SEEDS),
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8)),
    st.builds(lambda seed, n: seed[:n], st.sampled_from(NTLM_SEEDS), st.integers(0, 400)),
    st.builds(lambda seed, at, v: seed[:at] + struct.pack("<I", v) + seed[at + 4:],
              st.sampled_from(NTLM_SEEDS), st.integers(8, 90), st.integers(0, 2**32 - 1)),
)
response = st.one_of(st.binary(max_size=300), scram_like, ntlm_tokens,
                     st.just(b"\0alice\0Correct-Horse-7"), st.just(b"alice 0123456789abcdef" * 2))


def run_exchange(mechanism, responses):
    exchange = mechanism.newExchange(Context())
    outcomes = []
    for r in responses:
        d = defer.maybeDeferred(exchange.step, r)
        d.addBoth(outcomes.append)
        result = outcomes[-1]
        if not isinstance(result, Challenge):
            break
    for result in outcomes:
        if hasattr(result, "check"):                      # a Failure
            assert result.check(SASLError, UnauthorizedLogin), result.getTraceback()
        else:
            assert isinstance(result, Challenge) or hasattr(result, "username"), result
    return outcomes


# (hypothesis inside pytest.mark.parametrize breaks pytest-twisted: draw the mechanism)
@fuzz_settings(900)
@given(st.sampled_from(MECHANISMS), st.one_of(st.none(), response),
       st.lists(response, max_size=3))
def test_any_responses_end_cleanly(mechanism, initial, responses):
    """C{None} only as the initial response (no AUTH argument): the protocol's contract."""
    run_exchange(mechanism, [initial] + responses)


@fuzz_settings(300)
@given(ntlm_tokens)
def test_ntlm_parsers_fail_only_with_message_error(token):
    for parse in (msgs.parse_negotiate, msgs.parse_challenge, msgs.parse_authenticate,
                  msgs.parse_av_pairs):
        try:
            parse(token)
        except msgs.NTLMMessageError:
            pass


@fuzz_settings(300)
@given(st.binary(max_size=300))
def test_gssapi_layer_parser_fails_only_with_refusal(data):
    try:
        assert isinstance(parse_layer_choice(data), str)
    except GSSAPIRefused:
        pass


def test_real_ntlm_messages_parse():
    """The positive case: every pyspnego message of the corpus parses."""
    parsed = {"negotiate": msgs.parse_negotiate, "challenge": msgs.parse_challenge,
              "authenticate": msgs.parse_authenticate}
    from pathlib import Path

    for path in sorted((Path(__file__).parent / "corpus" / "ntlm").iterdir()):
        kind = path.name.split("_")[0]
        parsed[kind](path.read_bytes())
    with pytest.raises(msgs.NTLMMessageError):
        msgs.parse_authenticate(b"NTLMSSP\x00\x03\x00\x00\x00" + b"\xff" * 60)


def test_plain_good_response_gives_credentials():
    outcomes = run_exchange(PLAIN, [b"\0alice\0Correct-Horse-7"])
    assert outcomes[0].username == "alice"
    refused = run_exchange(PLAIN, [b"alice"])[0]
    assert refused.check(SASLError)
