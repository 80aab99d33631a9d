"""
The issuer's signing keys (a JSON Web Key Set, RFC 7517) for bearer tokens.

Only asymmetric keys are kept (RSA, EC, OKP); each key carries the
algorithms it may verify, derived from its type (and its C{alg} when the
set names one), so a token can never pick C{none} or an HMAC with the
public key as secret.

L{FileKeys} reads a local set once (a SIGHUP reload builds a new one).
L{RemoteKeys} fetches C{jwks_url} over verified HTTPS, off the reactor's
critical path: logins use the cached set while a refresh runs; an unknown
key id starts a refresh (at most one per C{min_refresh} seconds) and waits
for it at most C{wait} seconds; a failed fetch keeps the keys it had.
"""

from __future__ import annotations

import io
import json

from jwt import PyJWK
from jwt.exceptions import PyJWTError
from twisted.internet import defer, protocol
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, ResponseDone,
)
from twisted.web.http_headers import Headers

from securepop import events

MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT = 10.0

_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",)}
_OKP = {"Ed25519": ("EdDSA",), "Ed448": ("EdDSA",)}

#: Every algorithm a token may name: asymmetric signatures only.
ALGORITHMS = frozenset(_RSA) | {"ES256", "ES384", "ES512", "EdDSA"}


class JWKSError(ValueError):
    """A key set that cannot be used (the reason names what is wrong)."""


def _algorithms(jwk):
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = _RSA
    elif kty == "EC":
        allowed = _EC.get(jwk.get("crv"), ())
    elif kty == "OKP":
        allowed = _OKP.get(jwk.get("crv"), ())
    else:
        return ()               # "oct" (HMAC) and anything unknown: never
    named = jwk.get("alg")
    if named is not None:
        return (named,) if named in allowed else ()
    return allowed


class KeySet:
    """
    Usable verification keys by key id.

    @ivar keys: list of C{(kid or None, PyJWK, allowed algorithms)}.
    """

    def __init__(self, keys=()):
        self.keys = list(keys)

    @classmethod
    def parse(cls, data):
        """
        @param data: the JWKS document (bytes or str).
        @raise JWKSError: not a JWKS, or no usable asymmetric key in it.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise JWKSError(f"not JSON: {e}") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise JWKSError('not a JWK Set (no "keys" list)')
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            allowed = _algorithms(entry)
            if not allowed:
                continue
            try:
                key = PyJWK(entry, allowed[0])
            except (PyJWTError, ValueError, TypeError, KeyError):
                continue
            kid = entry.get("kid")
            keys.append((kid if isinstance(kid, str) else None, key, allowed))
        if not keys:
            raise JWKSError("no usable signing key (RSA, EC P-256/384/521, Ed25519/Ed448)")
        return cls(keys)

    def find(self, kid, alg):
        """
        The key for a token's header, or None: the key id must match (a
        token without one matches only a set of one key), and the key must
        allow C{alg}.
        """
        if kid is None:
            candidates = self.keys if len(self.keys) == 1 else []
        else:
            candidates = [k for k in self.keys if k[0] == kid]
        for _, key, allowed in candidates:
            if alg in allowed:
                return key
        return None

    def knows(self, kid):
        return kid is None or any(k[0] == kid for k in self.keys)


class FileKeys:
    """A local JWKS file, read when the configuration is (start, SIGHUP)."""

    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JWKS_BYTES + 1)
        except OSError as e:
            raise JWKSError(f"cannot read {path!r}: {e.strerror or e}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JWKSError(f"{path!r} is larger than {MAX_JWKS_BYTES} bytes")
        self.keyset = KeySet.parse(data)

    def lookup(self, kid, alg):
        """@return: Deferred firing with the PyJWK or None."""
        return defer.succeed(self.keyset.find(kid, alg))


class _Body(protocol.Protocol):
    """Collects a response body of at most L{MAX_JWKS_BYTES}."""

    def __init__(self, finished):
        self.finished, self.parts, self.size = finished, [], 0

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > MAX_JWKS_BYTES:
            self.transport.stopProducing()
            if not self.finished.called:
                self.finished.errback(JWKSError("JWKS response too large"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def https_agent(reactor, ca_file=""):
    """
    An HTTP client that verifies the server's certificate and name (against
    C{ca_file}, else the system's trust store).
    """
    if ca_file:
        with open(ca_file, "rb") as f:
            pem = f.read()
        certs = [Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                 for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        if not certs:
            raise ValueError(f"no PEM certificate in {ca_file!r}")
        policy = BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certs))
    else:
        policy = BrowserLikePolicyForHTTPS()
    return Agent(reactor, contextFactory=policy, connectTimeout=FETCH_TIMEOUT)


def request(agent, reactor, method, url, headers, body=None, timeout=FETCH_TIMEOUT):
    """
    @return: Deferred firing with the body (bytes) of a 200 answer, at most
        L{MAX_JWKS_BYTES}; any other status fails with L{JWKSError}.
    """
    d = agent.request(method, url.encode("ascii"), Headers(headers),
                      None if body is None else FileBodyProducer(io.BytesIO(body)))

    def got(response):
        if response.code != 200:
            response.deliverBody(protocol.Protocol())
            raise JWKSError(f"HTTP status {response.code}")
        finished = defer.Deferred()
        response.deliverBody(_Body(finished))
        return finished

    d.addCallback(got)
    d.addTimeout(timeout, reactor)
    return d


def https_fetcher(reactor, url, ca_file=""):
    """
    @return: callable -> Deferred firing with the body of C{url} (bytes),
        fetched over verified HTTPS.
    """
    agent = https_agent(reactor, ca_file)
    return lambda: request(agent, reactor, b"GET", url, {b"Accept": [b"application/json"]})


class RemoteKeys:
    """
    The issuer's JWKS from a URL, cached.

    @param fetch: callable -> Deferred of the JWKS bytes (L{https_fetcher}).
    @param clock: IReactorTime.
    @param refresh: seconds after which a lookup refreshes in the background.
    @param min_refresh: at most one fetch per this many seconds.
    @param wait: the longest a lookup of an unknown key id waits.
    """

    def __init__(self, fetch, clock, url="", refresh=3600.0, min_refresh=30.0, wait=2.0):
        self._fetch = fetch
        self._clock = clock
        self.url = url
        self.refresh, self.min_refresh, self.wait = refresh, min_refresh, wait
        self.keyset = KeySet()
        self.fetched_at = None
        self._last_attempt = None
        self._waiters = None     # list of Deferreds while a fetch is in flight

    def start(self):
        """Fetch once now, so the first login finds the keys."""
        self._refresh()

    def lookup(self, kid, alg):
        """
        @return: Deferred firing with the PyJWK or None (unknown after a
            refresh, or the refresh took longer than C{wait}).
        """
        now = self._clock.seconds()
        if self.fetched_at is not None and now - self.fetched_at >= self.refresh:
            self._refresh()
        if self.keyset.knows(kid) and self.fetched_at is not None:
            return defer.succeed(self.keyset.find(kid, alg))
        done = self._refresh()
        if done is None:
            return defer.succeed(self.keyset.find(kid, alg))
        result = defer.Deferred()
        timer = self._clock.callLater(self.wait, lambda: result.called or result.callback(None))

        def refreshed(_):
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(self.keyset.find(kid, alg))

        done.addCallback(refreshed)
        return result

    def _refresh(self):
        """
        Start a fetch unless one runs or ran less than C{min_refresh} ago.

        @return: a Deferred firing (None) when the fetch in flight ends, or
            None when no fetch runs.
        """
        now = self._clock.seconds()
        if self._waiters is None:
            if self._last_attempt is not None and now - self._last_attempt < self.min_refresh:
                return None
            self._last_attempt = now
            self._waiters = []
            d = defer.maybeDeferred(self._fetch)
            d.addCallback(self._fetched)
            d.addErrback(self._failed)
            d.addBoth(self._wake)
            if self._waiters is None:       # finished synchronously
                return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _fetched(self, data):
        self.keyset = KeySet.parse(data)
        self.fetched_at = self._clock.seconds()
        events.emit("oauth2.jwks_fetched", url=self.url, keys=len(self.keyset.keys))

    def _failed(self, failure):
        # The issuer down or a bad document: the keys already cached stay.
        events.emit("oauth2.jwks_failed", "warn", url=self.url,
                    error=failure.getErrorMessage()[:200], cached=len(self.keyset.keys))

    def _wake(self, _):
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.callback(None)
