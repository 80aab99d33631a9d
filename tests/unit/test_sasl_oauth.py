"""
OAUTHBEARER and XOAUTH2 (L{securepop.sasl.oauth}) on the wire: parsing of
good and malformed responses, the one-line and two-line forms, the RFC 7628
error (JSON continuation, dummy response, -ERR) with the penalty counted at
the error, and nothing bearer-related before TLS.
"""

import base64
import json
import time

import pytest
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.jwks import FileKeys
from securepop.auth.oauth2 import BearerValidator
from securepop.auth.portal import build_portal
from securepop.errors import SASLError
from securepop.interfaces import IBearerCredentials, ISASLExchange, ISASLMechanism
from securepop.sasl import registry
from securepop.sasl.oauth import OAUTHBEARER, XOAUTH2, BearerCredentials
from securepop.testing.oauth import Issuer
from tests.unit.protocol_harness import Harness, identity, stls_in_memory  # noqa: F401


class Context:
    settings = config.parse('[auth]\nmechanisms = ["OAUTHBEARER"]\n[auth.oauth2]\n'
                            'issuer = "https://i.test/r"\naudience = "pop"\n'
                            'jwks_url = "https://i.test/k"\nrequired_scope = "pop"\n').auth

    def normaliseUsername(self, raw):
        if raw == "bad":
            raise ValueError("unacceptable")
        return raw.lower()


def step(mechanism, data):
    return mechanism.newExchange(Context()).step(data)


def test_interfaces():
    for m in (OAUTHBEARER, XOAUTH2):
        verifyObject(ISASLMechanism, m)
        verifyObject(ISASLExchange, m.newExchange(Context()))
    verifyObject(IBearerCredentials, BearerCredentials("a", "t", "XOAUTH2", b""))
    assert "s3cr3t" not in repr(BearerCredentials("a", "s3cr3t.v", "XOAUTH2", b""))


@pytest.mark.parametrize("data, user", [
    (b"n,a=Alice,\x01host=pop.test\x01port=995\x01auth=Bearer abc.def-_.g\x01\x01", "alice"),
    (b"n,,\x01auth=Bearer abc.def.g\x01\x01", None),
    (b"y,,\x01auth=bearer abc.def.g==\x01\x01", None),
    (b"n,a=a=3Db=2Cc,\x01auth=Bearer t\x01\x01", "a=b,c"),
])
def test_oauthbearer_parses(data, user):
    creds = step(OAUTHBEARER, data)
    assert (creds.username, creds.mechanism) == (user, "OAUTHBEARER")
    assert creds.token.startswith(("abc", "t"))
    error = json.loads(creds.failureChallenge)
    assert error == {"status": "invalid_token", "scope": "pop",
                     "openid-configuration": "https://i.test/r/.well-known/openid-configuration"}


def test_xoauth2_parses():
    creds = step(XOAUTH2, b"user=Alice@x\x01auth=Bearer ya29.tok\x01\x01")
    assert (creds.username, creds.token, creds.mechanism) == ("alice@x", "ya29.tok", "XOAUTH2")


@pytest.mark.parametrize("mechanism, data", [
    (OAUTHBEARER, b""),
    (OAUTHBEARER, b"n,,auth=Bearer t\x01\x01"),              # no ^A after the header
    (OAUTHBEARER, b"p=tls-unique,,\x01auth=Bearer t\x01\x01"),   # channel binding
    (OAUTHBEARER, b"n,a=,\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"n,b=x,\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"n,a=x=41,\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"n,,\x01auth=Bearer t\x01"),                # one ^A at the end
    (OAUTHBEARER, b"n,,\x01auth=Basic dXNlcg==\x01\x01"),
    (OAUTHBEARER, b"n,,\x01auth=Bearer \x01\x01"),
    (OAUTHBEARER, b"n,,\x01auth=Bearer a b\x01\x01"),
    (OAUTHBEARER, b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01"),
    (OAUTHBEARER, b"n,,\x01\xff=1\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"\xff,,\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"n,a=bad,\x01auth=Bearer t\x01\x01"),
    (OAUTHBEARER, b"n,,\x01auth=Bearer " + b"t" * 13000 + b"\x01\x01"),
    (XOAUTH2, b"auth=Bearer t\x01\x01"),
    (XOAUTH2, b"user=\x01auth=Bearer t\x01\x01"),
    (XOAUTH2, b"user=a\x01auth=Bearer t"),
    (XOAUTH2, b"user=a\x01\x01"),
])
def test_malformed_responses_are_sasl_errors(mechanism, data):
    with pytest.raises(SASLError):
        step(mechanism, data)


def test_registry_offers_bearer_only_under_tls():
    names = ["PLAIN", "OAUTHBEARER", "XOAUTH2"]
    offered = registry.mechanisms_for(names, {"plaintext"}, secure=False, allow_cleartext=True)
    assert [m.name for m in offered] == ["PLAIN"]
    offered = registry.mechanisms_for(names, {"plaintext"}, secure=True, allow_cleartext=False)
    assert [m.name for m in offered] == names
    registry.check_pairings(["XOAUTH2"], {"ntlm-delegate"})    # any source serves it


# -- the protocol -------------------------------------------------------------------

ISSUER = Issuer(kinds=("ec",))


def bearer_harness(tmp_path, identity, listener_tls="implicit"):  # noqa: F811
    h = Harness(tmp_path, identity, listener_tls=listener_tls)
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(ISSUER.jwks_bytes())
    text = (f'[auth]\nmechanisms = ["PLAIN", "OAUTHBEARER", "XOAUTH2"]\n'
            f'failure_delay = 2.0\nfailure_delay_max = 2.0\nmax_attempts = 3\n'
            f'[auth.oauth2]\nissuer = "{ISSUER.issuer}"\naudience = "{ISSUER.audience}"\n'
            f'jwks_file = "{jwks}"\n')
    h.settings = h.ctx.settings = config.parse(text, data_dir=str(tmp_path))
    h.clock.advance(time.time())
    validator = BearerValidator(h.settings.auth.oauth2, FileKeys(str(jwks)), h.clock,
                                lambda raw: raw.lower())
    h.ctx.portal = build_portal(h.source, h.ctx.portal.realm, bearer=validator)
    h.ctx.mechanisms = {n: registry.mechanism_for(n, h.source.capabilities())
                        for n in h.settings.auth.mechanisms}
    h.connect()
    h.lines()
    return h


def b64(data):
    return base64.b64encode(data)


def oauthbearer(token, user=b"alice"):
    return b64(b"n,a=" + user + b",\x01host=localhost\x01port=995\x01auth=Bearer "
               + token.encode() + b"\x01\x01")


def xoauth2(token, user=b"alice"):
    return b64(b"user=" + user + b"\x01auth=Bearer " + token.encode() + b"\x01\x01")


@pytest.mark.parametrize("encode, name", [(oauthbearer, b"OAUTHBEARER"),
                                          (xoauth2, b"XOAUTH2")])
def test_one_line_form_with_a_large_token_logs_in(tmp_path, identity, encode, name):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    token = ISSUER.token(pad_to=3072)
    assert len(token) >= 3072
    line = b"AUTH " + name + b" " + encode(token) + b"\r\n"
    assert len(line) > 4096
    assert h.send(line)[0].startswith(b"+OK Logged in, 3 messages")


@pytest.mark.parametrize("encode, name", [(oauthbearer, b"OAUTHBEARER"),
                                          (xoauth2, b"XOAUTH2")])
def test_two_line_form_logs_in(tmp_path, identity, encode, name):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    assert h.send(b"AUTH " + name + b"\r\n") == [b"+ "]
    reply = h.send(encode(ISSUER.token(pad_to=3072)) + b"\r\n")
    assert reply[0].startswith(b"+OK Logged in")


def test_a_line_over_16_kib_is_malformed(tmp_path, identity):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    assert h.send(b"AUTH XOAUTH2\r\n") == [b"+ "]
    assert h.send(b"A" * (17 * 1024) + b"\r\n") == [b"-ERR [AUTH] Malformed authentication data"]
    # Other commands keep their RFC 2449 limit, whatever the bearer allowance.
    assert h.send(b"NOOP " + b"x" * 300 + b"\r\n")[0].startswith(b"-ERR")


@pytest.mark.parametrize("encode, name, dummy", [(oauthbearer, b"OAUTHBEARER", b"AQ=="),
                                                 (xoauth2, b"XOAUTH2", b"")])
def test_refused_token_gets_rfc7628_error_then_err(
        tmp_path, identity, encode, name, dummy):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    bad = ISSUER.token(aud="elsewhere")
    reply = h.send(b"AUTH " + name + b" " + encode(bad) + b"\r\n")
    assert len(reply) == 1 and reply[0].startswith(b"+ ")
    error = json.loads(base64.b64decode(reply[0][2:]))
    assert error["status"] == "invalid_token"
    assert error["openid-configuration"].endswith("/.well-known/openid-configuration")
    # The failure counted at the error (a client that hangs up now has paid);
    # the dummy response only ends the AUTH.
    assert h.failures(h.session.peer) > 0
    assert h.send(dummy + b"\r\n") == [b"-ERR [AUTH] Authentication failed"]
    # The server goes on: the next good token logs in (after the penalty).
    h.send(b"AUTH " + name + b" " + encode(ISSUER.token()) + b"\r\n")
    h.clock.advance(2.1)
    assert h.lines()[0].startswith(b"+OK Logged in")


def test_another_users_token_and_unknown_user_refused(tmp_path, identity):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    reply = h.send(b"AUTH XOAUTH2 " + xoauth2(ISSUER.token(user="bob")) + b"\r\n")
    assert reply[0].startswith(b"+ ")
    assert h.send(b"\r\n") == [b"-ERR [AUTH] Authentication failed"]
    h.send(b"AUTH OAUTHBEARER " + oauthbearer(ISSUER.token(user="carol"), b"carol") + b"\r\n")
    h.clock.advance(2.1)
    assert h.lines()[0].startswith(b"+ ")


@pytest.mark.parametrize("line", [b"AUTH XOAUTH2 !!!notbase64\r\n",
                                  b"AUTH OAUTHBEARER " + b64(b"garbage") + b"\r\n"])
def test_malformed_initial_response_one_err(tmp_path, identity, line):  # noqa: F811
    h = bearer_harness(tmp_path, identity)
    reply = h.send(line)
    assert reply == [b"-ERR [AUTH] Malformed authentication data"] or \
        reply == [b"-ERR [AUTH] Authentication failed"]
    assert not any(b"Traceback" in r for r in reply)


def test_nothing_bearer_before_tls(tmp_path, identity):  # noqa: F811
    h = bearer_harness(tmp_path, identity, listener_tls="starttls")
    h.settings = h.ctx.settings = h.settings.__class__(
        **{**h.settings.__dict__,
           "tls": h.settings.tls.__class__(**{**h.settings.tls.__dict__,
                                              "require_secure_channel": False})})
    capa = h.send(b"CAPA\r\n")
    sasl = [c for c in capa if c.startswith(b"SASL")]
    assert sasl == [b"SASL PLAIN"]
    assert h.send(b"AUTH XOAUTH2 " + xoauth2(ISSUER.token()) + b"\r\n")[0].startswith(b"-ERR")
    assert h.send(b"AUTH OAUTHBEARER\r\n")[0].startswith(b"-ERR")
