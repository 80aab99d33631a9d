"""
The issuer's key set (L{securepop.auth.jwks}): only asymmetric signing keys,
each with the algorithms its type allows; a remote set that is cached,
refreshed when an unknown key id arrives (rate-limited, bounded wait) and
kept when the issuer is down.
"""

import json

import pytest
from twisted.internet import defer, task

from securepop.auth.jwks import FileKeys, JWKSError, KeySet, RemoteKeys
from securepop.testing.oauth import Issuer


@pytest.fixture(scope="module")
def issuer():
    return Issuer()


def test_keyset_keeps_asymmetric_keys_with_their_algorithms(issuer):
    document = issuer.jwks()
    document["keys"].append({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})
    document["keys"].append({"kty": "RSA", "kid": "enc", "use": "enc",
                             **{k: v for k, v in document["keys"][0].items()
                                if k in ("n", "e")}})
    keys = KeySet.parse(json.dumps(document))
    assert sorted(k[0] for k in keys.keys) == ["ec-2", "ed-3", "rsa-1"]
    assert keys.find("rsa-1", "PS256") is not None
    assert keys.find("rsa-1", "ES256") is None
    assert keys.find("ec-2", "ES256") is not None and keys.find("ec-2", "ES384") is None
    assert keys.find("ed-3", "EdDSA") is not None
    assert keys.find("hmac", "HS256") is None
    assert keys.find(None, "RS256") is None         # no kid: only a set of one key


def test_named_alg_restricts_the_key(issuer):
    document = issuer.jwks(["rsa-1"])
    document["keys"][0]["alg"] = "PS256"
    keys = KeySet.parse(json.dumps(document))
    assert keys.find("rsa-1", "PS256") is not None
    assert keys.find("rsa-1", "RS256") is None
    assert keys.find(None, "PS256") is not None     # the only key


@pytest.mark.parametrize("data, reason", [
    (b"not json", "not JSON"),
    (b"[]", "no \"keys\""),
    (b'{"keys": []}', "no usable"),
    (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable"),
    (b'{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}', "no usable"),
])
def test_unusable_sets_are_refused(data, reason):
    with pytest.raises(JWKSError, match=reason):
        KeySet.parse(data)


def test_file_keys(tmp_path, issuer):
    path = tmp_path / "jwks.json"
    path.write_bytes(issuer.jwks_bytes())
    keys = FileKeys(str(path))
    found = []
    keys.lookup("ec-2", "ES256").addCallback(found.append)
    assert found[0] is not None
    with pytest.raises(JWKSError, match="cannot read"):
        FileKeys(str(tmp_path / "missing.json"))


class Fetcher:
    """A JWKS endpoint the test answers by hand."""

    def __init__(self):
        self.calls = []

    def __call__(self):
        d = defer.Deferred()
        self.calls.append(d)
        return d


def lookup(keys, kid, alg="RS256"):
    results = []
    keys.lookup(kid, alg).addBoth(results.append)
    return results


def test_remote_keys_fetch_refresh_and_rate_limit(issuer):
    clock, fetch = task.Clock(), Fetcher()
    keys = RemoteKeys(fetch, clock, "https://i/", refresh=3600, min_refresh=30, wait=2)
    keys.start()
    assert len(fetch.calls) == 1
    pending = lookup(keys, "rsa-1")
    assert pending == [] and len(fetch.calls) == 1     # waits on the fetch in flight
    fetch.calls[0].callback(issuer.jwks_bytes(["rsa-1"]))
    assert pending[0] is not None
    # A kid the issuer published later: one refresh, which finds it.
    issuer_kid = issuer.add_key("rsa", "rotated")
    clock.advance(31)
    waiting = lookup(keys, issuer_kid)
    assert len(fetch.calls) == 2 and waiting == []
    fetch.calls[1].callback(issuer.jwks_bytes())
    assert waiting[0] is not None
    # Unknown kids within min_refresh start no fetch and are refused at once.
    assert lookup(keys, "nope") == [None] and len(fetch.calls) == 2
    clock.advance(30)
    assert lookup(keys, "rsa-1")[0] is not None and len(fetch.calls) == 2
    # Periodic: after `refresh` seconds a lookup refreshes in the background.
    clock.advance(3600)
    assert lookup(keys, "rsa-1")[0] is not None and len(fetch.calls) == 3
    del issuer.keys["rotated"]


def test_issuer_down_keeps_cached_keys_and_wait_is_bounded(issuer):
    clock, fetch = task.Clock(), Fetcher()
    keys = RemoteKeys(fetch, clock, "https://i/", refresh=3600, min_refresh=30, wait=2)
    keys.start()
    fetch.calls[0].callback(issuer.jwks_bytes(["rsa-1"]))
    clock.advance(60)
    waiting = lookup(keys, "unknown")
    assert waiting == [] and len(fetch.calls) == 2
    clock.advance(2.0)                   # the issuer hangs: refused after `wait`
    assert waiting == [None]
    fetch.calls[1].errback(ConnectionRefusedError())
    assert lookup(keys, "rsa-1")[0] is not None      # still the cached key
    clock.advance(60)
    lookup(keys, "unknown2")
    fetch.calls[2].callback(b"<html>maintenance</html>")   # a bad document: kept too
    assert lookup(keys, "rsa-1")[0] is not None


def test_remote_keys_before_any_fetch_refuse_after_wait():
    clock, fetch = task.Clock(), Fetcher()
    keys = RemoteKeys(fetch, clock, "https://i/", wait=2)
    keys.start()
    waiting = lookup(keys, "rsa-1")
    clock.advance(1.9)
    assert waiting == []
    clock.advance(0.2)
    assert waiting == [None]
