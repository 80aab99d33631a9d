"""SASL GSSAPI (RFC 4752): the framing, the security layer, names, binding."""

from types import SimpleNamespace

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.errors import SASLError
from securepop.interfaces import (
    KERBEROS, ISASLContext, ISASLExchange, ISASLMechanism, IVerifiedCredentials,
)
from securepop.sasl.base import Challenge
from securepop.sasl.gssapi import (
    GSSAPI, LAYER_OFFER, GSSAPIRefused, IGSSAcceptorExchange, parse_layer_choice,
    principal_user,
)

END_POINT = b"\x5a" * 32


@implementer(IGSSAcceptorExchange)
class FakeAcceptor:
    """
    Accepts after C{rounds} tokens; wraps by prefixing C{W} (a message
    without it does not verify, as a tampered one).
    """

    realms = ("EXAMPLE.COM", "EMEA.EXAMPLE.COM")

    def __init__(self, principal="alice@EXAMPLE.COM", rounds=1, mutual=b"AP-REP",
                 bound=False):
        self.principal = principal
        self.rounds = rounds
        self.mutual = mutual
        self.bound = bound
        self.tokens, self.bindings = [], []
        self.aborted = False

    def step(self, token, binding):
        self.tokens.append(token)
        self.bindings.append(binding)
        if token == b"refused":
            return defer.fail(GSSAPIRefused("GSSAPI context refused", "gss-failed"))
        if len(self.tokens) < self.rounds:
            return defer.succeed((b"more", False))
        return defer.succeed((self.mutual, True))

    def initiator(self):
        return self.principal

    def channelBound(self):
        return self.bound

    def wrap(self, data):
        return b"W" + data

    def unwrap(self, message):
        if not message.startswith(b"W"):
            raise GSSAPIRefused("GSSAPI context refused", "gss-failed")
        return message[1:]

    def abort(self):
        self.aborted = True


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.com"
    clock = None

    def __init__(self, acceptor=None, binding=END_POINT, **settings):
        self.acceptor = acceptor if acceptor is not None else FakeAcceptor()
        self.binding = binding
        self.secure = binding is not None
        self.settings = SimpleNamespace(**settings)

    def normaliseUsername(self, raw):
        if "@" in raw or "\\" in raw or not raw.strip():
            raise ValueError("bad user name")
        return raw.lower()

    def lookupSecret(self, username, kind):
        raise AssertionError("GSSAPI looks no secret up")

    def channelBinding(self, kind):
        assert kind == "tls-server-end-point"
        return self.binding

    def checkPolicy(self, username):
        pass

    def ntlmDelegate(self):
        return None

    def gssapiAcceptor(self):
        return self.acceptor


def result(value):
    if not isinstance(value, defer.Deferred):
        return value
    box = []
    value.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], defer.Failure):
        box[0].raiseException()
    return box[0]


def run(context, *responses):
    exchange = GSSAPI.newExchange(context)
    return exchange, [result(exchange.step(response)) for response in responses]


def test_interfaces():
    assert verifyObject(ISASLMechanism, GSSAPI)
    assert GSSAPI.requires == KERBEROS and not GSSAPI.exposesPassword
    assert verifyObject(ISASLExchange, GSSAPI.newExchange(Context()))
    assert verifyObject(IGSSAcceptorExchange, FakeAcceptor())


def test_full_exchange_with_mutual_authentication():
    context = Context()
    exchange, steps = run(context, None, b"AP-REQ", b"", b"W" + LAYER_OFFER)
    assert steps[:3] == [Challenge(b""), Challenge(b"AP-REP"), Challenge(b"W" + LAYER_OFFER)]
    assert LAYER_OFFER == b"\x01\x00\x00\x00"        # "no security layer", size 0
    creds = steps[3]
    assert verifyObject(IVerifiedCredentials, creds)
    assert (creds.username, creds.mechanism) == ("alice", "GSSAPI")
    assert context.acceptor.tokens == [b"AP-REQ"]
    assert context.acceptor.bindings == [b"tls-server-end-point:" + END_POINT]
    assert context.acceptor.aborted            # the context is released at the end
    with pytest.raises(SASLError):
        exchange.step(b"")


def test_without_mutual_token_the_offer_comes_at_once():
    """curl asks for no mutual authentication: no AP-REP, the offer follows."""
    context = Context(FakeAcceptor(mutual=None))
    _, steps = run(context, b"AP-REQ", b"W\x01\x00\x00\x00")
    assert steps[0] == Challenge(b"W" + LAYER_OFFER)
    assert steps[1].username == "alice"


def test_multi_round_context():
    context = Context(FakeAcceptor(rounds=3))
    _, steps = run(context, b"t1", b"t2", b"t3", b"", b"W\x01\x00\x00\x00")
    assert steps[:2] == [Challenge(b"more"), Challenge(b"more")]
    assert steps[-1].username == "alice"


def test_client_may_send_a_nonzero_size_with_no_layer():
    _, steps = run(Context(), b"AP-REQ", b"", b"W\x01\xff\xff\xff")
    assert steps[-1].username == "alice"


@pytest.mark.parametrize("answer, reason", [
    (b"", "malformed"),
    (b"\x01\x00\x00", "malformed"),                   # truncated
    (b"\x02\x00\x00\x00", "bad-security-layer"),      # integrity: not offered
    (b"\x04\x00\x10\x00", "bad-security-layer"),      # confidentiality
    (b"\x07\x00\x00\x00", "bad-security-layer"),
    (b"\x00\x00\x00\x00", "bad-security-layer"),
    (b"\x01\x00\x00\x00\xff\xfe", "malformed"),       # authzid not UTF-8
    (b"\x01\x00\x00\x00al\x00ice", "malformed"),      # control character
    (b"\x01\x00\x00\x00" + b"a" * 2000, "malformed"),
])
def test_malformed_layer_answers_refused(answer, reason):
    with pytest.raises(GSSAPIRefused) as info:
        parse_layer_choice(answer)
    assert info.value.reason == reason
    exchange, _ = run(Context(), b"AP-REQ", b"")
    with pytest.raises(SASLError):
        result(exchange.step(b"W" + answer))


def test_layer_answer_that_does_not_unwrap_is_refused():
    exchange, _ = run(Context(), b"AP-REQ", b"")
    with pytest.raises(GSSAPIRefused):
        result(exchange.step(b"\x01\x00\x00\x00"))      # not wrapped


@pytest.mark.parametrize("authzid", ["alice", "ALICE", "alice@EXAMPLE.COM",
                                     "alice@EMEA.EXAMPLE.COM"])
def test_authzid_of_the_same_user_is_honoured(authzid):
    _, steps = run(Context(), b"AP-REQ", b"", b"W\x01\x00\x00\x00" + authzid.encode())
    assert steps[-1].username == "alice"


@pytest.mark.parametrize("authzid", ["bob", "bob@EXAMPLE.COM", "alice@OTHER.ORG"])
def test_authzid_of_another_user_is_refused(authzid):
    exchange, _ = run(Context(), b"AP-REQ", b"")
    with pytest.raises((UnauthorizedLogin, SASLError)):
        result(exchange.step(b"W\x01\x00\x00\x00" + authzid.encode()))


@pytest.mark.parametrize("principal, user", [
    ("alice@EXAMPLE.COM", "alice"),
    ("Alice@EXAMPLE.COM", "alice"),          # then the server's one user-name rule
    ("bob@EMEA.EXAMPLE.COM", "bob"),
])
def test_principal_maps_to_the_user(principal, user):
    assert principal_user(principal, FakeAcceptor.realms, Context()) == user


@pytest.mark.parametrize("principal, reason", [
    ("alice@OTHER.ORG", "foreign-realm"),
    ("alice@example.com", "foreign-realm"),        # realms are case sensitive
    ("alice/admin@EXAMPLE.COM", "not-a-user"),
    ("pop/mail.example.com@EXAMPLE.COM", "not-a-user"),
    ("a\\@b@EXAMPLE.COM", "malformed-principal"),
    ("@EXAMPLE.COM", "malformed-principal"),
    ("alice", "malformed-principal"),
    ("alice@", "malformed-principal"),
])
def test_principals_refused(principal, reason):
    with pytest.raises(GSSAPIRefused) as info:
        principal_user(principal, FakeAcceptor.realms, Context())
    assert info.value.reason == reason
    exchange = GSSAPI.newExchange(Context(FakeAcceptor(principal)))
    with pytest.raises(GSSAPIRefused):
        result(exchange.step(b"AP-REQ"))
    assert exchange.username == principal      # the failure log names it


def test_refused_token_fails_the_step():
    exchange = GSSAPI.newExchange(Context())
    with pytest.raises(GSSAPIRefused) as info:
        result(exchange.step(b"refused"))
    assert info.value.reason == "gss-failed"


@pytest.mark.parametrize("responses", [
    (None, b""),                   # an empty token
    (b"x" * (64 * 1024 + 1),),     # too long
    (b"AP-REQ", b"not empty"),     # the answer to the AP-REP must be empty
])
def test_malformed_exchanges(responses):
    exchange = GSSAPI.newExchange(Context())
    with pytest.raises(SASLError):
        for response in responses:
            result(exchange.step(response))


def test_no_acceptor_no_login():
    context = Context()
    context.acceptor = None
    with pytest.raises(GSSAPIRefused):
        result(GSSAPI.newExchange(context).step(b"AP-REQ"))


@pytest.mark.parametrize("mode, bound, binding, refused, passed", [
    ("require", True, END_POINT, False, True),
    ("require", False, END_POINT, True, True),       # the client sent none
    ("require", False, None, True, False),           # no TLS: nothing to bind to
    ("allow", False, END_POINT, False, True),
    ("allow", False, None, False, False),
    ("off", False, END_POINT, False, False),
])
def test_channel_binding(mode, bound, binding, refused, passed):
    context = Context(FakeAcceptor(bound=bound), binding=binding, channel_binding=mode)
    exchange = GSSAPI.newExchange(context)
    if refused:
        with pytest.raises(GSSAPIRefused) as info:
            result(exchange.step(b"AP-REQ"))
        assert info.value.reason == "channel-binding-missing"
    else:
        assert result(exchange.step(b"AP-REQ")) == Challenge(b"AP-REP")
    expected = b"tls-server-end-point:" + END_POINT if passed else None
    assert context.acceptor.bindings == [expected]


def test_abort_releases_the_context():
    context = Context()
    exchange = GSSAPI.newExchange(context)
    result(exchange.step(b"AP-REQ"))
    exchange.abort()
    exchange.abort()
    assert context.acceptor.aborted
