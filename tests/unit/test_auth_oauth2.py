"""
The bearer token validator and checker (L{securepop.auth.oauth2}): a good
token of each key type is accepted; every forgery, wrong claim or wrong
user is refused with its reason.
"""

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from securepop import config
from securepop.auth.jwks import FileKeys
from securepop.auth.oauth2 import BearerChecker, BearerValidator, TokenRefused, build_validator
from securepop.auth.oauth2_settings import OAuth2Settings
from securepop.auth.records import UserRecord
from securepop.errors import ConfigError, SourceUnavailable
from securepop.sasl.oauth import BearerCredentials
from securepop.testing.oauth import Issuer, hmac_token, unsigned_token


def _lower(raw):
    if "\n" in raw:
        raise ValueError("control character")
    return raw.lower()


@pytest.fixture(scope="module")
def issuer():
    return Issuer()


@pytest.fixture
def validator(issuer, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_bytes(issuer.jwks_bytes())
    clock = task.Clock()
    clock.advance(time.time())
    settings = OAuth2Settings(issuer=issuer.issuer, audience=issuer.audience,
                              jwks_file=str(path), required_scope="pop", leeway=60)
    return BearerValidator(settings, FileKeys(str(path)), clock, _lower)


def outcome(d):
    results = []
    d.addBoth(results.append)
    assert results, "the validation did not finish at once"
    result = results[0]
    if hasattr(result, "value"):
        assert result.check(TokenRefused), result
        return "refused:" + result.getErrorMessage()
    return result


@pytest.mark.parametrize("kid", ["rsa-1", "ec-2", "ed-3"])
def test_good_token_of_every_key_type_is_accepted(issuer, validator, kid):
    assert outcome(validator.validate(issuer.token(kid, user="Alice"))) == "alice"


def test_scp_list_grants_the_scope(issuer, validator):
    token = issuer.token(scope=None, scp=["pop", "imap"])
    assert outcome(validator.validate(token)) == "alice"


def test_audience_list_containing_ours_is_accepted(issuer, validator):
    token = issuer.token(aud=["other", issuer.audience])
    assert outcome(validator.validate(token)) == "alice"


def test_leeway_accepts_a_token_expired_seconds_ago(issuer, validator):
    now = validator.clock.seconds()
    assert outcome(validator.validate(issuer.token(exp=int(now) - 30))) == "alice"


@pytest.mark.parametrize("changes, reason", [
    ({"exp": int(time.time()) - 3600}, "token-expired"),
    ({"aud": "someone-else"}, "token-wrong-audience"),
    ({"iss": "https://evil.test/"}, "token-wrong-issuer"),
    ({"nbf": int(time.time()) + 3600}, "token-not-yet-valid"),
    ({"iat": int(time.time()) + 3600}, "token-not-yet-valid"),
    ({"scope": "openid mail"}, "token-missing-scope"),
    ({"scope": None}, "token-missing-scope"),
    ({"exp": None}, "token-missing-claim"),
    ({"aud": None}, "token-missing-claim"),
    ({"preferred_username": None}, "token-no-username"),
    ({"preferred_username": 7}, "token-no-username"),
    ({"preferred_username": "a\nb"}, "token-unacceptable-username"),
    ({"exp": "tomorrow"}, "token-malformed"),
])
def test_bad_claims_are_refused(issuer, validator, changes, reason):
    token = issuer.token(**changes)
    assert outcome(validator.validate(token)) == "refused:" + reason


def test_foreign_key_is_refused(issuer, validator):
    stranger = Issuer(kinds=("rsa",))       # same kid, another key
    assert outcome(validator.validate(stranger.token("rsa-1"))) == \
        "refused:token-bad-signature"


def test_unknown_kid_is_refused(issuer, validator):
    stranger = Issuer(kinds=("rsa",))
    stranger.keys["rotated-9"] = stranger.keys.pop("rsa-1")
    assert outcome(validator.validate(stranger.token("rotated-9"))) == \
        "refused:token-unknown-key"


def test_alg_none_is_refused(issuer, validator):
    token = unsigned_token(issuer.claims())
    assert outcome(validator.validate(token)) == "refused:token-bad-algorithm"


def test_hs256_with_the_public_key_as_secret_is_refused(issuer, validator):
    kind, key = issuer.keys["rsa-1"]
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hmac_token(issuer.claims(), pem, "rsa-1")
    assert outcome(validator.validate(token)) == "refused:token-bad-algorithm"


def test_algorithm_the_key_does_not_allow_is_refused(issuer, validator):
    """An EC token header naming the RSA key: no key to try."""
    token = issuer.token("ec-2")
    forged = jwt.encode(issuer.claims(), issuer.keys["ec-2"][1], algorithm="ES256",
                        headers={"kid": "rsa-1"})
    assert outcome(validator.validate(token)) == "alice"
    assert outcome(validator.validate(forged)) == "refused:token-unknown-key"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 20000, "é.é.é"])
def test_garbage_is_refused(validator, token):
    assert outcome(validator.validate(token)).startswith("refused:token-")


class Source:
    def __init__(self, users):
        self.users = users

    def lookupUser(self, username):
        if username in self.users:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("no-user"))


def test_checker_provides_interface(validator):
    verifyObject(ICredentialsChecker, BearerChecker(validator, Source({})))


@pytest.mark.parametrize("authzid, users, expected", [
    (None, {"alice"}, "alice"),
    ("alice", {"alice"}, "alice"),
    ("bob", {"alice", "bob"}, "refused:token-for-another-user"),
    (None, {"bob"}, "refused:no-user"),        # missing or disabled in the source
])
def test_checker_user_must_match_and_exist(issuer, validator, authzid, users, expected):
    checker = BearerChecker(validator, Source(users))
    creds = BearerCredentials(authzid, issuer.token(), "OAUTHBEARER", b"{}")
    d = checker.requestAvatarId(creds)
    results = []
    d.addBoth(results.append)
    result = results[0]
    if isinstance(result, UserRecord):
        assert result.username == expected
    else:
        assert result.check(UnauthorizedLogin)
        assert "refused:" + result.getErrorMessage() == expected


def test_another_users_token_is_refused(issuer, validator):
    checker = BearerChecker(validator, Source({"alice", "bob"}))
    creds = BearerCredentials("alice", issuer.token(user="bob"), "XOAUTH2", b"{}")
    failures = []
    checker.requestAvatarId(creds).addErrback(failures.append)
    assert failures and failures[0].getErrorMessage() == "token-for-another-user"


# -- configuration --------------------------------------------------------------------

BASE = """
[auth]
mechanisms = ["PLAIN", "OAUTHBEARER"]
[auth.oauth2]
issuer = "https://issuer.test/"
audience = "pop.test"
"""


def test_config_needs_issuer_audience_and_keys(tmp_path):
    with pytest.raises(ConfigError, match="auth.oauth2.jwks_url: one of jwks_url, jwks_file"):
        config.parse(BASE, "f.toml")
    with pytest.raises(ConfigError, match="exclude each other"):
        config.parse(BASE + 'jwks_url = "https://i.test/k"\njwks_file = "k.json"\n', "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml.*auth.oauth2.issuer: is required"):
        config.parse(BASE.replace('issuer = "https://issuer.test/"', ""), "f.toml")
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        config.parse(BASE + 'jwks_url = "http://issuer.test/jwks"\n', "f.toml")
    with pytest.raises(ConfigError, match="introspection_url.*go together"):
        config.parse(BASE + 'jwks_url = "https://i.test/k"\nintrospection_url = "https://i/"\n',
                     "f.toml")
    with pytest.raises(ConfigError, match="introspection_url: must be an https"):
        config.parse(BASE + 'introspection_url = "http://i/"\n', "f.toml")
    only = config.parse(BASE + 'introspection_url = "https://i/in"\n'
                        'introspection_client_id = "pop"\nintrospection_secret_file = "s"\n')
    assert only.auth.oauth2.introspection_client_id == "pop"
    with pytest.raises(ConfigError, match="username_claim"):
        config.parse(BASE + 'jwks_url = "https://i.test/k"\nusername_claim = "name"\n', "f")
    with pytest.raises(ConfigError, match="unknown key"):
        config.parse(BASE + 'jwks_url = "https://i.test/k"\nsecret = "x"\n', "f")
    good = config.parse(BASE + 'jwks_url = "https://i.test/k"\n', "f")
    assert good.auth.oauth2.jwks_url == "https://i.test/k"
    # Without a bearer mechanism the section is not required.
    assert config.parse("[auth]\nmechanisms = [\"PLAIN\"]\n").auth.oauth2.issuer == ""


def test_build_validator_names_a_bad_jwks_file(tmp_path):
    bad = tmp_path / "jwks.json"
    bad.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    settings = config.parse(BASE + f'jwks_file = "{bad}"\n', "f.toml")
    with pytest.raises(ConfigError, match="f.toml: auth.oauth2.jwks_file: no usable"):
        build_validator(settings, task.Clock(), _lower)
    plain = config.parse('[auth]\nmechanisms = ["PLAIN"]\n')
    assert build_validator(plain, task.Clock(), _lower) is None


def test_non_finite_times_are_malformed(issuer, validator):
    kind, key = issuer.keys["rsa-1"]
    for name in ("exp", "nbf", "iat"):
        claims = issuer.claims()
        claims[name] = float("nan")
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "rsa-1"})
        assert outcome(validator.validate(token)) == "refused:token-malformed", name


def test_a_reload_keeps_the_remote_keys(tmp_path):
    """The same jwks_url after a reload: the same cache (the issuer may be down then)."""
    text = BASE + 'jwks_url = "https://i.test/k"\njwks_wait = 1.5\n'
    clock = MemoryReactorClock()
    first = build_validator(config.parse(text, "f"), clock, _lower)
    again = build_validator(config.parse(text.replace("1.5", "2.5"), "f"), clock, _lower)
    assert again.keys is first.keys and again.keys.wait == 2.5
    other = build_validator(config.parse(text.replace("i.test/k", "j.test/k"), "f"), clock,
                            _lower)
    assert other.keys is not first.keys


# -- introspection (RFC 7662) ------------------------------------------------------------

class Introspector:
    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def introspect(self, token):
        self.asked.append(token)
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(dict(self.answer))


def opaque(validator, answer, token="opaque-token-123"):
    v = BearerValidator(validator.settings, validator.keys, validator.clock, _lower,
                        Introspector(answer))
    return outcome(v.validate(token)), v.introspector.asked


def active(issuer, **changes):
    claims = dict(issuer.claims(**changes), active=True)
    return claims


def test_opaque_token_is_introspected(issuer, validator):
    assert opaque(validator, active(issuer)) == ("alice", ["opaque-token-123"])
    # RFC 7662's "username" when the configured claim is absent.
    answer = active(issuer, preferred_username=None, username="Bob")
    assert opaque(validator, answer)[0] == "bob"
    # A JWT still goes to the keys, not to the endpoint.
    assert opaque(validator, {}, issuer.token()) == ("alice", [])


@pytest.mark.parametrize("changes, reason", [
    ({"active": False}, "token-inactive"),
    ({"active": "true"}, "token-inactive"),
    ({"iss": "https://evil.test/"}, "token-wrong-issuer"),
    ({"aud": "other"}, "token-wrong-audience"),
    ({"aud": None}, "token-wrong-audience"),
    ({"exp": int(time.time()) - 3600}, "token-expired"),
    ({"scope": "openid"}, "token-missing-scope"),
    ({"preferred_username": None}, "token-no-username"),
])
def test_introspection_answers_are_checked(issuer, validator, changes, reason):
    answer = active(issuer)
    for name, value in changes.items():
        if value is None:
            answer.pop(name)
        else:
            answer[name] = value
    assert opaque(validator, answer)[0] == "refused:" + reason


def test_opaque_token_without_introspection_is_malformed(validator):
    assert outcome(validator.validate("opaque-token-123")) == "refused:token-malformed"


def test_endpoint_down_is_unavailable_not_a_wrong_token(issuer, validator):
    v = BearerValidator(validator.settings, validator.keys, validator.clock, _lower,
                        Introspector(SourceUnavailable("introspection failed")))
    failures = []
    v.validate("opaque").addErrback(failures.append)
    assert failures[0].check(SourceUnavailable) and not failures[0].check(TokenRefused)


def test_build_validator_checks_the_secret_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o644)
    text = (BASE + 'introspection_url = "https://i.test/introspect"\n'
            f'introspection_client_id = "pop"\nintrospection_secret_file = "{secret}"\n')
    with pytest.raises(ConfigError, match="introspection_secret_file: .*chmod 600"):
        build_validator(config.parse(text, "f.toml"), MemoryReactorClock(), _lower)
    secret.chmod(0o600)
    v = build_validator(config.parse(text, "f.toml"), MemoryReactorClock(), _lower)
    assert v.keys is None and "s3cr3t" not in repr(v.introspector)
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        build_validator(config.parse(text, "f.toml"), MemoryReactorClock(), _lower)
