"""NTLM verified locally (NT hash) and through a domain controller."""

import hashlib
import struct
from types import SimpleNamespace

import pytest
import spnego
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securepop.errors import SASLError
from securepop.interfaces import (
    NT_HASH, NTLM_DELEGATE, ISASLContext, ISASLExchange, ISASLMechanism,
    ISecretCredentials, IVerifiedCredentials,
)
from securepop.testing import ntlm as m
from securepop.sasl.base import Challenge
from securepop.sasl.ntlm import (
    NTLM, NTLM_DELEGATED, INTLMDelegate, NTLMCredentials, NTLMMechanism,
    NTLMRefused, channel_binding_hash, check_authenticate_policy, desl, filetime_to_unix, hmac_md5,
    ntlm2_session_challenge, ntlmv1_response, ntowfv2, parse_ntlmv2_blob,
    unix_to_filetime,
)
from securepop.schemes import nt_hash

from tests.unit.nlmp_vectors import SPEC_AUTHENTICATE, SPEC_CHALLENGE  # noqa: E402
NOW = 1_800_000_000.0
SPEC_SERVER_CHALLENGE = bytes.fromhex("0123456789abcdef")
SPEC_CLIENT_CHALLENGE = b"\xaa" * 8


@implementer(ISASLContext)
class Context:
    hostname = "mail.example.test"
    secure = False

    def __init__(self, delegate=None, **settings):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.settings = SimpleNamespace(**settings)
        self.delegate = delegate

    def normaliseUsername(self, raw):
        user = raw.split("\\")[-1].lower()
        if not user.isalnum():
            raise ValueError("bad user name")
        return user

    def lookupSecret(self, username, kind):
        raise AssertionError("NTLM credentials are checked by the checker")

    def channelBinding(self, kind):
        return None

    def ntlmDelegate(self):
        return self.delegate


def result(value):
    if not isinstance(value, defer.Deferred):
        return value
    box = []
    value.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], defer.Failure):
        box[0].raiseException()
    return box[0]


def spnego_client(user="alice", password="secret"):
    return spnego.client(user, password, hostname="mail.example.test",
                         service="pop", protocol="ntlm",
                         options=spnego.NegotiateOptions.use_ntlm)


def run_exchange(context, user="alice", password="secret",
                 mechanism=NTLM, before_authenticate=None):
    """Drive pyspnego against an exchange; return (exchange, credentials)."""
    client = spnego_client(user, password)
    exchange = mechanism.newExchange(context)
    assert exchange.step(None) == Challenge(b"")
    challenge = result(exchange.step(client.step()))
    authenticate = client.step(challenge.data)
    if before_authenticate:
        authenticate = before_authenticate(authenticate)
    return exchange, result(exchange.step(authenticate))


# -- [MS-NLMP] 4.2.4 NTLMv2 test vectors --------------------------------------

def test_spec_nt_hash_and_ntowfv2():
    assert nt_hash("Password").hex() == "a4f49c406510bdcab6824ee7c30fd852"
    key = ntowfv2(nt_hash("Password"), "User", "Domain")
    assert key.hex() == "0c868a403bfd7a93a3001ef22ef02e3f"


def test_spec_lmv2_ntproofstr_and_session_base_key():
    key = ntowfv2(nt_hash("Password"), "User", "Domain")
    lmv2 = hmac_md5(key, SPEC_SERVER_CHALLENGE + SPEC_CLIENT_CHALLENGE)
    assert (lmv2 + SPEC_CLIENT_CHALLENGE).hex() == (
        "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
    target_info = m.parse_challenge(SPEC_CHALLENGE).target_info
    temp = (b"\x01\x01" + b"\x00" * 6 + b"\x00" * 8 + SPEC_CLIENT_CHALLENGE
            + b"\x00" * 4 + target_info + b"\x00" * 4)
    proof = hmac_md5(key, SPEC_SERVER_CHALLENGE + temp)
    assert proof.hex() == "68cd0ab851e51c96aabc927bebef6a1c"
    assert hmac_md5(key, proof).hex() == "8de40ccadbc14a82f15cb0ad0de95ca3"


def spec_credentials(allow_ntlmv1=False):
    return NTLMCredentials(
        username="user",
        message=m.parse_authenticate(SPEC_AUTHENTICATE),
        server_challenge=SPEC_SERVER_CHALLENGE,
        transcript=b"", allow_ntlmv1=allow_ntlmv1)


def test_spec_authenticate_message_verifies():
    creds = spec_credentials()
    assert verifyObject(ISecretCredentials, creds)
    assert creds.kind == NT_HASH
    assert creds.checkSecret(nt_hash("Password")) is True


@pytest.mark.parametrize("secret", [nt_hash("password"), b"\x00" * 16,
                                    nt_hash("Password")[:15], "x" * 16, None])
def test_spec_authenticate_message_wrong_secret(secret):
    assert spec_credentials().checkSecret(secret) is False


def test_spec_message_with_another_server_challenge_fails():
    creds = NTLMCredentials("user", m.parse_authenticate(SPEC_AUTHENTICATE),
                            b"\x00" * 8, b"")
    assert creds.checkSecret(nt_hash("Password")) is False


def test_spec_timestamp_zero_is_outside_the_window():
    message = m.parse_authenticate(SPEC_AUTHENTICATE)
    with pytest.raises(NTLMRefused) as info:
        check_authenticate_policy(message, Context())
    assert info.value.reason == "timestamp-outside-window"
    context = Context()
    context.clock = Clock()
    context.clock.advance(filetime_to_unix(0) + 299)
    check_authenticate_policy(message, context)   # inside: no exception


def test_ntlmv1_spec_vectors():
    """[MS-NLMP] 4.2.2.2.1 and 4.2.3.2.2."""
    assert ntlmv1_response(nt_hash("Password"), SPEC_SERVER_CHALLENGE).hex() \
        == "67c43011f30298a2ad35ece64f16331c44bdbed927841f94"
    ess = ntlm2_session_challenge(SPEC_SERVER_CHALLENGE, SPEC_CLIENT_CHALLENGE)
    assert desl(nt_hash("Password"), ess).hex() == (
        "7537f803ae367128ca458204bde7caf81e97ed2683267232")


def test_filetime_round_trip():
    assert filetime_to_unix(unix_to_filetime(NOW)) == NOW
    assert unix_to_filetime(0) == 116444736000000000


# -- full exchanges with pyspnego ---------------------------------------------

def test_interfaces():
    for mechanism, kind in ((NTLM, NT_HASH), (NTLM_DELEGATED, NTLM_DELEGATE)):
        assert verifyObject(ISASLMechanism, mechanism)
        assert (mechanism.name, mechanism.exposesPassword,
                mechanism.requires) == ("NTLM", False, kind)
        assert verifyObject(ISASLExchange, mechanism.newExchange(Context()))


def test_pyspnego_ntlmv2_with_mic_succeeds():
    _, creds = run_exchange(Context())
    assert creds.username == "alice"
    blob = parse_ntlmv2_blob(creds.message.nt_response[16:])
    assert blob.av_flags() & m.AV_FLAG_MIC_PRESENT, "pyspnego sends a MIC"
    assert creds.message.mic() != b"\x00" * 16
    assert creds.checkSecret(nt_hash("secret")) is True


def test_pyspnego_wrong_password_fails():
    _, creds = run_exchange(Context(), password="wrong")
    assert creds.checkSecret(nt_hash("secret")) is False


def test_domain_qualified_user_goes_through_normalisation():
    _, creds = run_exchange(Context(), user="EXAMPLE\\Alice")
    assert creds.message.domain == "EXAMPLE"
    assert creds.username == "alice"
    assert creds.checkSecret(nt_hash("secret")) is True


def test_tampered_mic_fails():
    def flip_mic(token):
        return token[:72] + bytes([token[72] ^ 1]) + token[73:]
    _, creds = run_exchange(Context(), before_authenticate=flip_mic)
    assert creds.checkSecret(nt_hash("secret")) is False


def test_tampered_workstation_breaks_the_mic():
    def rename_workstation(token):
        message = m.parse_authenticate(token)
        assert message.workstation
        length, _, offset = struct.unpack_from("<HHI", token, 44)
        return token[:offset] + b"X\x00" + token[offset + 2:]
    _, creds = run_exchange(Context(), before_authenticate=rename_workstation)
    assert creds.checkSecret(nt_hash("secret")) is False


def hand_made_ntlmv2(ntowf_domain, sent_domain, password="secret"):
    """An NTLMv2 AUTHENTICATE (no MIC) whose NTOWFv2 used C{ntowf_domain}."""
    context = Context()
    exchange = NTLM.newExchange(context)
    raw = exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE)).data
    challenge = m.parse_challenge(raw)
    key = ntowfv2(nt_hash(password), "Alice", ntowf_domain)
    blob = (b"\x01\x01" + b"\x00" * 6
            + struct.pack("<Q", unix_to_filetime(context.clock.seconds()))
            + b"\x11" * 8 + b"\x00" * 4 + challenge.target_info + b"\x00" * 4)
    proof = hmac_md5(key, challenge.server_challenge + blob)
    token = m.build_authenticate(m.NEGOTIATE_UNICODE, b"\x00" * 24,
                                 proof + blob, sent_domain, "Alice", "WS")
    return exchange.step(token)


@pytest.mark.parametrize("ntowf_domain", ["EXAMPLE", ""])
def test_ntowfv2_with_and_without_domain(ntowf_domain):
    creds = hand_made_ntlmv2(ntowf_domain, sent_domain="EXAMPLE")
    assert creds.username == "alice"
    assert creds.checkSecret(nt_hash("secret")) is True
    assert creds.checkSecret(nt_hash("other")) is False


def test_ntowfv2_with_another_domain_fails():
    creds = hand_made_ntlmv2("OTHER", sent_domain="EXAMPLE")
    assert creds.checkSecret(nt_hash("secret")) is False


def test_timestamp_outside_window_refused():
    context = Context(ntlm_timestamp_window=300)
    client = spnego_client()
    exchange = NTLM.newExchange(context)
    exchange.step(None)
    challenge = exchange.step(client.step())
    authenticate = client.step(challenge.data)
    context.clock.advance(301)
    with pytest.raises(NTLMRefused) as info:
        exchange.step(authenticate)
    assert info.value.reason == "timestamp-outside-window"


def test_timestamp_inside_window_accepted():
    context = Context(ntlm_timestamp_window=300)
    client = spnego_client()
    exchange = NTLM.newExchange(context)
    exchange.step(None)
    challenge = exchange.step(client.step())
    authenticate = client.step(challenge.data)
    context.clock.advance(299)
    assert exchange.step(authenticate).checkSecret(nt_hash("secret"))


def test_negotiate_as_initial_response():
    client = spnego_client()
    exchange = NTLM.newExchange(Context())
    challenge = exchange.step(client.step())
    creds = exchange.step(client.step(challenge.data))
    assert creds.checkSecret(nt_hash("secret"))


def test_challenge_contents():
    context = Context(netbios_domain="example", dns_domain="example.test")
    exchange = NTLMMechanism(challenge_factory=lambda: b"C" * 8).newExchange(
        context)
    exchange.step(None)
    raw = exchange.step(m.build_negotiate(
        m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM | m.NEGOTIATE_SEAL)).data
    challenge = m.parse_challenge(raw)
    assert challenge.server_challenge == b"C" * 8
    assert challenge.flags & m.NEGOTIATE_UNICODE
    assert challenge.flags & m.NEGOTIATE_SEAL
    assert not challenge.flags & m.NEGOTIATE_OEM
    pairs = dict(m.parse_av_pairs(challenge.target_info))
    assert pairs[m.AV_NB_DOMAIN_NAME] == "EXAMPLE".encode("utf-16-le")
    assert pairs[m.AV_NB_COMPUTER_NAME] == "MAIL".encode("utf-16-le")
    assert pairs[m.AV_DNS_DOMAIN_NAME] == "example.test".encode("utf-16-le")
    assert pairs[m.AV_DNS_COMPUTER_NAME] == (
        "mail.example.test".encode("utf-16-le"))
    assert struct.unpack("<Q", pairs[m.AV_TIMESTAMP])[0] == \
        unix_to_filetime(NOW)


def test_oem_client_gets_oem_challenge():
    exchange = NTLM.newExchange(Context())
    raw = exchange.step(m.build_negotiate(m.NEGOTIATE_OEM | m.NEGOTIATE_NTLM))
    challenge = m.parse_challenge(raw.data)
    assert challenge.flags & m.NEGOTIATE_OEM
    assert not challenge.flags & m.NEGOTIATE_UNICODE
    assert challenge.target_name == b"MAIL"


def test_server_challenges_are_fresh():
    seen = set()
    for _ in range(3):
        exchange = NTLM.newExchange(Context())
        raw = exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE)).data
        seen.add(m.parse_challenge(raw).server_challenge)
    assert len(seen) == 3


def negotiated_exchange(**settings):
    exchange = NTLM.newExchange(Context(**settings))
    exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM))
    return exchange


@pytest.mark.parametrize("token, reason", [
    (m.build_authenticate(m.NEGOTIATE_UNICODE | m.NEGOTIATE_ANONYMOUS, b"",
                          b"", "", "", "WS"), "anonymous"),
    (m.build_authenticate(m.NEGOTIATE_UNICODE, b"\x00", b"", "", "", "WS"),
     "anonymous"),
    (m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 24, b"N" * 24, "D", "",
                          "WS"), "anonymous"),
    (m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 24, b"", "D", "alice",
                          "WS"), "lm-refused"),
    (m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 24, b"N" * 24, "D",
                          "alice", "WS"), "ntlmv1-refused"),
])
def test_policy_refusals(token, reason):
    with pytest.raises(NTLMRefused) as info:
        negotiated_exchange().step(token)
    assert info.value.reason == reason
    assert isinstance(info.value, SASLError)


@pytest.mark.parametrize("token", [
    b"",
    b"not ntlm at all",
    SPEC_AUTHENTICATE[:40],
    m.build_negotiate(m.NEGOTIATE_UNICODE),
    m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 30, "D", "alice",
                         "WS"),                     # impossible NT length
    m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 16 + b"\x02\x01"
                         + b"\x00" * 40, "D", "alice", "WS"),   # bad version
    m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 16 + b"\x01\x01"
                         + b"\x00" * 26 + b"\x02\x00\x40\x00" + b"\x00" * 4,
                         "D", "alice", "WS"),     # AV pair past the end
    m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 16 + b"\x01\x01"
                         + b"\x00" * 40, "D", "alice", "WS"),  # timestamp 0
    m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 100, "D", "al ice",
                         "WS"),
])
def test_hostile_authenticate_refused(token):
    with pytest.raises(SASLError):
        negotiated_exchange().step(token)


@pytest.mark.parametrize("token", [
    b"garbage", m.SIGNATURE + struct.pack("<II", 1, 0),
    SPEC_AUTHENTICATE, m.build_negotiate(m.NEGOTIATE_UNICODE)[:15],
])
def test_hostile_negotiate_refused(token):
    with pytest.raises(SASLError):
        NTLM.newExchange(Context()).step(token)


def test_no_step_after_the_end_and_no_none_midway():
    exchange = NTLM.newExchange(Context())
    exchange.step(None)
    with pytest.raises(SASLError):
        exchange.step(None)
    exchange, _ = run_exchange(Context())
    with pytest.raises(SASLError):
        exchange.step(b"more")


def test_credentials_repr_hides_the_response():
    _, creds = run_exchange(Context())
    assert creds.message.nt_response.hex()[:16] not in repr(creds)


# -- NTLMv1 only when insecure_allow_ntlmv1 ---------------------------------

@pytest.mark.parametrize("level", ["0", "1"])
def test_ntlmv1_refused_by_default(monkeypatch, level):
    monkeypatch.setenv("LM_COMPAT_LEVEL", level)
    with pytest.raises(NTLMRefused) as info:
        run_exchange(Context())
    assert info.value.reason == "ntlmv1-refused"


@pytest.mark.parametrize("level", ["0", "1"])   # plain v1, v1 with ESS
def test_ntlmv1_accepted_when_insecure_allowed(monkeypatch, level):
    monkeypatch.setenv("LM_COMPAT_LEVEL", level)
    _, creds = run_exchange(Context(insecure_allow_ntlmv1=True))
    assert len(creds.message.nt_response) == 24
    assert creds.checkSecret(nt_hash("secret")) is True
    assert creds.checkSecret(nt_hash("Secret")) is False


def test_ntlmv1_credentials_fail_when_not_allowed():
    """Even a v1 response that slipped through is never accepted."""
    message = m.parse_authenticate(m.build_authenticate(
        m.NEGOTIATE_UNICODE, b"", ntlmv1_response(nt_hash("pw"), b"C" * 8),
        "", "alice", ""))
    creds = NTLMCredentials("alice", message, b"C" * 8, b"")
    assert creds.checkSecret(nt_hash("pw")) is False
    allowed = NTLMCredentials("alice", message, b"C" * 8, b"",
                              allow_ntlmv1=True)
    assert allowed.checkSecret(nt_hash("pw")) is True


# -- delegated to a domain controller ----------------------------------------

@implementer(INTLMDelegate)
class FakeDomainController:
    """Verifies like a DC would, with the NT hashes it knows."""

    def __init__(self, hashes):
        self.hashes = hashes
        self.calls = []
        self._inner = NTLMMechanism()

    def negotiate(self, token):
        self.calls.append("negotiate")
        self._exchange = self._inner.newExchange(Context())
        return defer.succeed(self._exchange.step(token).data)

    def authenticate(self, token):
        self.calls.append("authenticate")
        creds = self._exchange.step(token)
        secret = self.hashes.get(creds.username)
        if secret is None or not creds.checkSecret(secret):
            return defer.fail(UnauthorizedLogin("NT_STATUS_LOGON_FAILURE"))
        return defer.succeed("EXAMPLE\\" + creds.message.user)


def test_delegate_success():
    dc = FakeDomainController({"alice": nt_hash("secret")})
    assert verifyObject(INTLMDelegate, dc)
    _, creds = run_exchange(Context(delegate=dc), mechanism=NTLM_DELEGATED)
    assert verifyObject(IVerifiedCredentials, creds)
    assert (creds.username, creds.mechanism) == ("alice", "NTLM")
    assert dc.calls == ["negotiate", "authenticate"]


def test_delegate_wrong_password():
    dc = FakeDomainController({"alice": nt_hash("secret")})
    with pytest.raises(UnauthorizedLogin):
        run_exchange(Context(delegate=dc), password="wrong",
                     mechanism=NTLM_DELEGATED)


def test_delegate_anonymous_refused_before_the_dc_is_asked():
    dc = FakeDomainController({})
    exchange = NTLM_DELEGATED.newExchange(Context(delegate=dc))
    result(exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE)))
    with pytest.raises(NTLMRefused):
        exchange.step(m.build_authenticate(
            m.NEGOTIATE_UNICODE | m.NEGOTIATE_ANONYMOUS, b"", b"", "", "", ""))
    assert dc.calls == ["negotiate"]


def test_delegate_ntlmv1_refused_unless_allowed(monkeypatch):
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")
    dc = FakeDomainController({"alice": nt_hash("secret")})
    with pytest.raises(NTLMRefused):
        run_exchange(Context(delegate=dc), mechanism=NTLM_DELEGATED)
    assert dc.calls == ["negotiate"]


def test_delegate_garbage_challenge_refused():
    class Broken:
        def negotiate(self, token):
            return defer.succeed(b"TT garbage")

        def authenticate(self, token):
            raise AssertionError("never reached")
    exchange = NTLM_DELEGATED.newExchange(Context(delegate=Broken()))
    with pytest.raises(SASLError):
        result(exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE)))


def test_delegate_hostile_negotiate_refused_before_the_dc_is_asked():
    dc = FakeDomainController({})
    with pytest.raises(SASLError):
        NTLM_DELEGATED.newExchange(Context(delegate=dc)).step(b"junk")
    assert dc.calls == []


def test_exchanges_provide_abort_and_username():
    """The local exchange holds nothing; the delegated one frees its DC helper once."""
    local = NTLM.newExchange(Context())
    assert verifyObject(ISASLExchange, local)
    assert local.username is None
    local.abort()
    with pytest.raises(NTLMRefused):                # anonymous, charged to no name
        negotiated_exchange().step(m.build_authenticate(
            m.NEGOTIATE_UNICODE | m.NEGOTIATE_ANONYMOUS, b"", b"", "", "", ""))

    class Helper(FakeDomainController):
        aborted = 0

        def abort(self):
            self.aborted += 1

    dc = Helper({})
    delegated = NTLM_DELEGATED.newExchange(Context(delegate=dc))
    assert verifyObject(ISASLExchange, delegated)
    delegated.abort()                               # nothing held yet
    result(delegated.step(m.build_negotiate(m.NEGOTIATE_UNICODE)))
    delegated.abort()
    delegated.abort()
    assert dc.aborted == 1


# -- user names: the server's own domains (securepop.auth.usernames) -----------

class RuleContext(Context):
    """A context applying the server's real user-name rule."""

    hostname = "pop.example.com"

    def __init__(self, delegate=None, **settings):
        from securepop.config import AuthSettings

        super().__init__(delegate)
        self.settings = AuthSettings(**{"netbios_domain": "EXAMPLE", **settings})

    def normaliseUsername(self, raw):
        from securepop.auth.usernames import normalise_username

        return normalise_username(raw, self.settings, self.hostname)


@pytest.mark.parametrize("user", [
    "EXAMPLE\\alice", "example\\Alice", "alice@example.com", "Alice@Example.COM",
    "pop.example.com\\alice", "alice@pop.example.com", "POP\\alice", "alice",
])
def test_the_servers_own_domain_is_the_local_user(user):
    _, creds = run_exchange(RuleContext(), user=user)
    assert creds.username == "alice"
    assert creds.checkSecret(nt_hash("secret")) is True


@pytest.mark.parametrize("user,logged", [
    ("OTHER\\alice", "OTHER\\alice"), ("alice@other.org", "alice@other.org"),
    ("example.com.evil\\alice", "example.com.evil\\alice"),
])
def test_another_domain_is_refused_and_logged_as_sent(user, logged):
    with pytest.raises(SASLError) as e:
        run_exchange(RuleContext(), user=user)
    assert e.value.reason == "foreign-domain"
    exchange = NTLM.newExchange(RuleContext())
    client = spnego_client(user)
    exchange.step(None)
    challenge = exchange.step(client.step())
    with pytest.raises(SASLError):
        exchange.step(client.step(challenge.data))
    assert exchange.username == logged


def test_strip_domain_takes_any_domain():
    _, creds = run_exchange(RuleContext(strip_domain=True), user="OTHER\\alice")
    assert creds.username == "alice"


def test_the_announced_domain_is_accepted_back():
    """What a client copies from our CHALLENGE (fetchmail, Outlook) is own."""
    context = RuleContext(netbios_domain="")
    exchange = NTLM.newExchange(context)
    exchange.step(None)
    challenge = m.parse_challenge(exchange.step(m.build_negotiate(
        m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM)).data)
    announced = dict(m.parse_av_pairs(challenge.target_info))
    for av in (m.AV_NB_DOMAIN_NAME, m.AV_NB_COMPUTER_NAME, m.AV_DNS_DOMAIN_NAME,
               m.AV_DNS_COMPUTER_NAME):
        domain = announced[av].decode("utf-16-le")
        assert context.normaliseUsername(f"{domain}\\alice") == "alice", domain


def test_delegated_name_follows_the_same_rule():
    dc = FakeDomainController({"alice": nt_hash("secret")})
    _, creds = run_exchange(RuleContext(delegate=dc), mechanism=NTLM_DELEGATED)
    assert creds.username == "alice"        # the DC said EXAMPLE\alice

    class ForeignDC(FakeDomainController):
        def authenticate(self, token):
            d = super().authenticate(token)
            return d.addCallback(lambda name: name.replace("EXAMPLE", "OTHER"))

    with pytest.raises(SASLError):
        run_exchange(RuleContext(delegate=ForeignDC({"alice": nt_hash("secret")})),
                     mechanism=NTLM_DELEGATED)


# -- channel binding (Extended Protection) -----------------------------------

SERVER_END_POINT = bytes(range(32))         # our certificate's hash


class TLSContext(Context):
    """A connection under TLS whose certificate hash is L{SERVER_END_POINT}."""

    secure = True

    def __init__(self, binding=SERVER_END_POINT, **settings):
        super().__init__(**settings)
        self.binding = binding

    def channelBinding(self, kind):
        assert kind == "tls-server-end-point"
        return self.binding


def bound_client(application_data):
    from spnego.channel_bindings import GssChannelBindings

    bindings = None
    if application_data is not None:
        bindings = GssChannelBindings(application_data=application_data)
    return spnego.client("alice", "secret", hostname="mail.example.test", service="pop",
                         protocol="ntlm", channel_bindings=bindings)


def bound_exchange(context, application_data, mechanism=NTLM):
    client = bound_client(application_data)
    exchange = mechanism.newExchange(context)
    challenge = result(exchange.step(client.step()))
    return result(exchange.step(client.step(challenge.data)))


RIGHT = b"tls-server-end-point:" + SERVER_END_POINT
WRONG = b"tls-server-end-point:" + b"\xee" * 32     # a relay's certificate


def test_channel_binding_hash_is_what_pyspnego_sends():
    from spnego.channel_bindings import GssChannelBindings

    expected = hashlib.md5(GssChannelBindings(application_data=RIGHT).pack()).digest()
    assert channel_binding_hash(RIGHT) == expected
    client = bound_client(RIGHT)
    exchange = NTLM.newExchange(TLSContext())
    challenge = result(exchange.step(client.step()))
    message = m.parse_authenticate(client.step(challenge.data))
    pairs = dict(parse_ntlmv2_blob(message.nt_response[16:]).av_pairs)
    assert pairs[m.AV_CHANNEL_BINDINGS] == expected


@pytest.mark.parametrize("mode, sent, ours, refusal", [
    ("require", RIGHT, SERVER_END_POINT, None),
    ("require", None, SERVER_END_POINT, "channel-binding-missing"),
    ("require", WRONG, SERVER_END_POINT, "channel-binding-mismatch"),
    ("require", RIGHT, None, "channel-binding-unavailable"),    # no TLS here
    ("allow", RIGHT, SERVER_END_POINT, None),
    ("allow", None, SERVER_END_POINT, None),
    ("allow", WRONG, SERVER_END_POINT, "channel-binding-mismatch"),
    ("allow", WRONG, None, None),           # cannot tell without TLS
    ("off", WRONG, SERVER_END_POINT, None),
    ("off", None, SERVER_END_POINT, None),
], ids=["require-right", "require-none", "require-wrong", "require-no-tls", "allow-right",
        "allow-none", "allow-wrong", "allow-wrong-no-tls", "off-wrong", "off-none"])
def test_channel_binding_modes(mode, sent, ours, refusal):
    context = TLSContext(binding=ours, channel_binding=mode)
    if refusal is None:
        creds = bound_exchange(context, sent)
        assert creds.checkSecret(nt_hash("secret"))
        return
    with pytest.raises(NTLMRefused) as info:
        bound_exchange(context, sent)
    assert info.value.reason == refusal


def test_channel_binding_default_is_allow():
    with pytest.raises(NTLMRefused, match="mismatch"):
        bound_exchange(TLSContext(), WRONG)
    assert bound_exchange(TLSContext(), None).checkSecret(nt_hash("secret"))


def test_channel_binding_required_refuses_ntlmv1():
    token = m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 24, b"N" * 24, "D",
                                 "alice", "WS")
    exchange = NTLM.newExchange(TLSContext(channel_binding="require",
                                           insecure_allow_ntlmv1=True))
    exchange.step(m.build_negotiate(m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM))
    with pytest.raises(NTLMRefused) as info:
        exchange.step(token)
    assert info.value.reason == "channel-binding-missing"


@pytest.mark.parametrize("sent, refusal", [
    (None, "channel-binding-missing"), (WRONG, "channel-binding-mismatch")],
    ids=["none", "wrong"])
def test_delegated_ntlm_checks_the_binding_before_the_dc_is_asked(sent, refusal):
    dc = FakeDomainController({"alice": nt_hash("secret")})
    context = TLSContext(channel_binding="require", delegate=dc)
    with pytest.raises(NTLMRefused) as info:
        bound_exchange(context, sent, NTLM_DELEGATED)
    assert info.value.reason == refusal
    assert dc.calls == ["negotiate"]
    dc = FakeDomainController({"alice": nt_hash("secret")})
    creds = bound_exchange(TLSContext(channel_binding="require", delegate=dc), RIGHT,
                           NTLM_DELEGATED)
    assert creds.username == "alice" and dc.calls == ["negotiate", "authenticate"]
