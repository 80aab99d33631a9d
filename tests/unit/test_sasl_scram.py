"""SCRAM-SHA-256 (RFC 7677, RFC 5802) and SCRAM-SHA-256-PLUS."""

import base64
import hashlib
import hmac
from types import SimpleNamespace

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.auth.records import UserRecord
from securepop.errors import SASLError, SourceUnavailable
from securepop.interfaces import (
    SCRAM_SHA_256, ISASLContext, ISASLExchange, ISASLMechanism, IVerifiedCredentials,
)
from securepop.sasl.base import Challenge
from securepop.sasl.scram import (
    SCRAM_SHA_256_MECHANISM, SCRAM_SHA_256_PLUS_MECHANISM,
    ScramSHA256Mechanism,
)
from securepop.schemes import scram_secret
from securepop.serversecret import ServerSecret

# RFC 7677 section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF"
                    b"$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.test"
    clock = None

    def __init__(self, secrets=None, secure=True, binding=None,
                 mechanisms=("SCRAM-SHA-256",)):
        self.secrets = secrets if secrets is not None else {
            "user": scram_secret("pencil", RFC_SALT, 4096)}
        self.secure = secure
        self.binding = binding or {}
        self.settings = SimpleNamespace(mechanisms=mechanisms)
        self.lookups = []
        self.locked = set()

    def normaliseUsername(self, raw):
        if raw.strip() != raw:
            raise ValueError("spaces")
        return raw.lower()

    def checkPolicy(self, username):
        if username in self.locked:
            raise UnauthorizedLogin("locked-out")

    def lookupSecret(self, username, kind):
        self.lookups.append((username, kind))
        if username == "down":
            return defer.fail(SourceUnavailable("ldap down"))
        if username not in self.secrets:
            return defer.fail(UnauthorizedLogin("no such user"))
        return defer.succeed((UserRecord(username), self.secrets[username]))

    def channelBinding(self, kind):
        return self.binding.get(kind)


def result(value):
    """The result of a value or an already-fired Deferred."""
    if not isinstance(value, defer.Deferred):
        return value
    box = []
    value.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], defer.Failure):
        box[0].raiseException()
    return box[0]


def rfc_mechanism(**kwargs):
    return ScramSHA256Mechanism(nonce_factory=lambda: RFC_SERVER_NONCE,
                                **kwargs)


def client_proof(password, salt, iterations, auth_message):
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message,
                         hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, signature))


def run_client(exchange, password, gs2=b"n,,", user=b"user",
               binding_data=b"", nonce=b"fyko+d2lbbFgONRv9qkxdawL"):
    """A small SCRAM client: returns the server-final challenge."""
    first_bare = b"n=" + user + b",r=" + nonce
    server_first = result(exchange.step(gs2 + first_bare)).data
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salt = base64.b64decode(attrs[b"s"])
    final_bare = (b"c=" + base64.b64encode(gs2 + binding_data)
                  + b",r=" + attrs[b"r"])
    auth_message = first_bare + b"," + server_first + b"," + final_bare
    proof = client_proof(password, salt, int(attrs[b"i"]), auth_message)
    return result(exchange.step(
        final_bare + b",p=" + base64.b64encode(proof)))


def test_interfaces():
    for mechanism in (SCRAM_SHA_256_MECHANISM, SCRAM_SHA_256_PLUS_MECHANISM):
        assert verifyObject(ISASLMechanism, mechanism)
        assert mechanism.exposesPassword is False
        assert mechanism.requires == SCRAM_SHA_256
    assert SCRAM_SHA_256_MECHANISM.name == "SCRAM-SHA-256"
    assert SCRAM_SHA_256_PLUS_MECHANISM.name == "SCRAM-SHA-256-PLUS"


def test_exchange_provides_the_interface_and_names_its_user():
    """The user is known after client-first: a failed proof is charged to it."""
    exchange = rfc_mechanism().newExchange(Context())
    assert verifyObject(ISASLExchange, exchange)
    assert exchange.username is None
    assert result(exchange.step(RFC_CLIENT_FIRST)).data == RFC_SERVER_FIRST
    assert exchange.username == "user"
    exchange.abort()
    exchange.abort()
    with pytest.raises(UnauthorizedLogin):
        result(exchange.step(RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=AHzb")))
    assert exchange.username == "user"


def test_rfc7677_example_exchange():
    context = Context()
    exchange = rfc_mechanism().newExchange(context)
    assert exchange.step(None) == Challenge(b"")
    assert result(exchange.step(RFC_CLIENT_FIRST)) == Challenge(
        RFC_SERVER_FIRST)
    assert context.lookups == [("user", SCRAM_SHA_256)]
    assert result(exchange.step(RFC_CLIENT_FINAL)) == Challenge(
        RFC_SERVER_FINAL)
    creds = result(exchange.step(b""))
    assert verifyObject(IVerifiedCredentials, creds)
    assert (creds.username, creds.mechanism) == ("user", "SCRAM-SHA-256")


def test_rfc7677_example_wrong_password():
    context = Context({"user": scram_secret("pencil!", RFC_SALT, 4096)})
    exchange = rfc_mechanism().newExchange(context)
    result(exchange.step(RFC_CLIENT_FIRST))
    with pytest.raises(UnauthorizedLogin):
        result(exchange.step(RFC_CLIENT_FINAL))
    with pytest.raises(SASLError):
        exchange.step(b"")


def test_fresh_nonce_round_trip_and_wrong_password():
    exchange = SCRAM_SHA_256_MECHANISM.newExchange(Context())
    final = run_client(exchange, b"pencil")
    assert final.data.startswith(b"v=")
    assert result(exchange.step(b"")).username == "user"
    with pytest.raises(UnauthorizedLogin):
        run_client(SCRAM_SHA_256_MECHANISM.newExchange(Context()), b"pencils")


def test_server_nonces_differ():
    firsts = {result(SCRAM_SHA_256_MECHANISM.newExchange(Context()).step(
        RFC_CLIENT_FIRST)).data for _ in range(5)}
    assert len(firsts) == 5


def test_unknown_user_looks_like_a_real_one_until_the_proof():
    context = Context()
    salts = []
    for _ in range(2):
        exchange = rfc_mechanism().newExchange(context)
        first = result(exchange.step(b"n,,n=nobody,r=abc")).data
        salts.append(first.split(b",s=")[1])
    assert salts[0] == salts[1], "decoy salt must be stable per user name"
    assert b"i=4096" in first
    with pytest.raises(UnauthorizedLogin):
        run_client(rfc_mechanism().newExchange(context), b"pencil",
                   user=b"nobody")


def _decoy_salt(mechanism, user=b"nobody"):
    first = result(mechanism.newExchange(Context()).step(
        b"n,,n=" + user + b",r=abc")).data
    attrs = dict(part.split(b"=", 1) for part in first.split(b","))
    return base64.b64decode(attrs[b"s"]), attrs[b"i"]


def test_unknown_user_salt_is_keyed_by_the_server_secret():
    """
    Two mechanisms built from the same secret (two workers, or before and
    after a restart) give an unknown user the same salt; another secret gives
    another salt; the salt has a real one's form (16 bytes, 4096 rounds).
    """
    secret = ServerSecret(b"k" * 32)
    one = SCRAM_SHA_256_MECHANISM.withServerSecret(secret)
    two = SCRAM_SHA_256_MECHANISM.withServerSecret(ServerSecret(b"k" * 32))
    other = SCRAM_SHA_256_MECHANISM.withServerSecret(ServerSecret(b"x" * 32))
    salt, iterations = _decoy_salt(one)
    assert (salt, iterations) == _decoy_salt(two)
    assert _decoy_salt(other)[0] != salt
    assert _decoy_salt(one, b"somebody")[0] != salt
    real = scram_secret("pencil")
    assert len(salt) == len(real.salt) == 16
    assert iterations == str(real.iterations).encode() == b"4096"
    # the process-wide mechanism is not keyed by that secret
    assert _decoy_salt(SCRAM_SHA_256_MECHANISM)[0] != salt


def test_with_server_secret_keeps_the_mechanism_and_still_refuses_the_proof():
    plus = SCRAM_SHA_256_PLUS_MECHANISM.withServerSecret(ServerSecret.generate())
    assert verifyObject(ISASLMechanism, plus)
    assert plus.name == "SCRAM-SHA-256-PLUS" and plus.channel_binding
    keyed = rfc_mechanism().withServerSecret(ServerSecret.generate())
    assert result(keyed.newExchange(Context()).step(RFC_CLIENT_FIRST)) == \
        Challenge(RFC_SERVER_FIRST)          # real users are untouched
    with pytest.raises(UnauthorizedLogin):
        run_client(keyed.newExchange(Context()), b"pencil", user=b"nobody")


def test_source_unavailable_propagates():
    with pytest.raises(SourceUnavailable):
        result(rfc_mechanism().newExchange(Context()).step(
            b"n,,n=down,r=abc"))


def test_saslname_escapes_and_authzid():
    context = Context({"a,b=c": scram_secret("pw", b"salt", 4096)})
    exchange = SCRAM_SHA_256_MECHANISM.newExchange(context)
    final = run_client(exchange, b"pw", gs2=b"n,a=a=2Cb=3Dc,",
                       user=b"a=2Cb=3Dc")
    assert final.data.startswith(b"v=")
    assert result(exchange.step(b"")).username == "a,b=c"


def test_empty_initial_response_then_empty_again_refused():
    exchange = SCRAM_SHA_256_MECHANISM.newExchange(Context())
    assert exchange.step(b"") == Challenge(b"")
    with pytest.raises(SASLError):
        result(exchange.step(b""))


@pytest.mark.parametrize("client_first", [
    b"n", b"n,,", b"x,,n=user,r=abc", b"n,,r=abc,n=user",
    b"n,,n=user", b"n,,n=,r=abc", b"n,,n=user,r=", b"n,,n=user,r=a,b",
    b"n,,m=ext,n=user,r=abc", b"n,,n=user,r=abc,m=ext",
    b"n,,n=us=er,r=abc", b"n,,n=\xff,r=abc", b"n,b=other,n=user,r=abc",
    b"n,a=other,n=user,r=abc", b"p=tls-exporter,,n=user,r=abc",
    b"n,,n=user,r=abc\n", b"n,,n=user,r=" + b"a" * 5000,
    b"n,,n= user,r=abc",
])
def test_hostile_client_first(client_first):
    exchange = SCRAM_SHA_256_MECHANISM.newExchange(Context())
    with pytest.raises(SASLError):
        result(exchange.step(client_first))


@pytest.mark.parametrize("client_final", [
    b"", b"c=biws", b"c=biws,r=x,p=AAAA",
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,c=biws,p=AAAA",
    b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
])
def test_hostile_client_final(client_final):
    exchange = rfc_mechanism().newExchange(Context())
    result(exchange.step(RFC_CLIENT_FIRST))
    with pytest.raises(SASLError):
        result(exchange.step(client_final))


def test_non_empty_last_response_refused():
    exchange = rfc_mechanism().newExchange(Context())
    result(exchange.step(RFC_CLIENT_FIRST))
    result(exchange.step(RFC_CLIENT_FINAL))
    with pytest.raises(SASLError):
        exchange.step(b"v=junk")


def test_y_flag_accepted_when_plus_not_offered():
    context = Context(secure=True, mechanisms=("SCRAM-SHA-256",))
    exchange = SCRAM_SHA_256_MECHANISM.newExchange(context)
    assert run_client(exchange, b"pencil", gs2=b"y,,").data.startswith(b"v=")


def test_y_flag_is_a_downgrade_when_plus_offered():
    context = Context(secure=True,
                      mechanisms=("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"))
    with pytest.raises(SASLError):
        result(SCRAM_SHA_256_MECHANISM.newExchange(context).step(
            b"y,,n=user,r=abc"))


def test_plus_with_channel_binding():
    context = Context(binding={"tls-exporter": b"\x01" * 32})
    exchange = SCRAM_SHA_256_PLUS_MECHANISM.newExchange(context)
    final = run_client(exchange, b"pencil", gs2=b"p=tls-exporter,,",
                       binding_data=b"\x01" * 32)
    assert final.data.startswith(b"v=")
    creds = result(exchange.step(b""))
    assert creds.mechanism == "SCRAM-SHA-256-PLUS"


def test_plus_with_other_binding_data_refused():
    """A man in the middle terminates TLS: the client's binding differs."""
    context = Context(binding={"tls-exporter": b"\x01" * 32})
    exchange = SCRAM_SHA_256_PLUS_MECHANISM.newExchange(context)
    with pytest.raises(SASLError):
        run_client(exchange, b"pencil", gs2=b"p=tls-exporter,,",
                   binding_data=b"\x02" * 32)


@pytest.mark.parametrize("gs2", [b"n,,", b"y,,", b"p=tls-unique,,",
                                 b"p=tls-server-end-point,,"])
def test_plus_refuses_missing_or_unknown_binding(gs2):
    context = Context(binding={"tls-exporter": b"\x01" * 32})
    with pytest.raises(SASLError):
        result(SCRAM_SHA_256_PLUS_MECHANISM.newExchange(context).step(
            gs2 + b"n=user,r=abc"))
