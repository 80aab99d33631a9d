"""
SCRAM-SHA-256 (RFC 7677, RFC 5802) and SCRAM-SHA-256-PLUS (channel
binding to the TLS connection).

The exchange itself verifies the client's proof against the stored keys
(the source hands out salt, iteration count, StoredKey and ServerKey, never
a password), answers with the server signature so the client can check the
server too, and yields L{VerifiedCredentials} after the client's final empty
response.

A user the source does not know gets a made-up salt that is stable for that
name, so the exchange looks the same as for a real user and fails only at
the proof: the user list cannot be probed.  The salt is keyed by the
server secret of the data directory (L{ScramSHA256Mechanism.withServerSecret}),
so it stays the same across restarts and between workers, as a real user's
does, and has the same form (16 bytes, the default iteration count).
"""

import base64
import binascii
import hashlib
import hmac
import os
import re

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from zope.interface import implementer

from securepop.errors import SASLError
from securepop.interfaces import SCRAM_SHA_256, ISASLExchange, ISASLMechanism
from securepop.auth.records import ScramSecret
from securepop.sasl.base import Challenge
from securepop.sasl.credentials import VerifiedCredentials, normalise
from securepop.schemes import DEFAULT_SCRAM_ITERATIONS, SCRAM_SALT_BYTES

MAX_MESSAGE = 2048
#: Channel binding types this server knows, strongest first.
CHANNEL_BINDING_TYPES = ("tls-exporter", "tls-server-end-point")
_PRINTABLE_NONCE = re.compile(rb"[\x21-\x2b\x2d-\x7e]+")
#: The label of the key derived from the server secret for made-up salts.
DECOY_SALT_PURPOSE = b"scram-fake-salt"
#: Without a server secret (a mechanism not built by the service): a key
#: per process, stable within it only.
_PROCESS_DECOY_KEY = os.urandom(32)


def new_nonce():
    """24 random bytes, base64: printable and free of commas."""
    return base64.b64encode(os.urandom(24))


def _decode_saslname(raw):
    """RFC 5802 saslname: '=2C' is ',' and '=3D' is '='; other '=' is bad."""
    if re.search(rb"=(?!2C|3D)", raw):
        raise SASLError("SCRAM user name with a bad '=' escape")
    try:
        return raw.replace(b"=2C", b",").replace(b"=3D", b"=").decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("SCRAM user name is not UTF-8") from None


def _attributes(message, expected):
    """
    Split C{a=1,b=2} into (key, value) pairs, checking that the leading
    keys are C{expected} in order.
    """
    pairs = []
    for part in message.split(b","):
        if len(part) < 2 or part[1:2] != b"=" or not part[:1].isalpha():
            raise SASLError("SCRAM attribute malformed")
        pairs.append((part[:1], part[2:]))
    keys = [key for key, _ in pairs[:len(expected)]]
    if keys != list(expected):
        raise SASLError("SCRAM attributes out of order")
    return pairs


def decoy_secret(username, key):
    """
    What an unknown user's exchange runs with: a salt derived from C{key} and
    the name, in the form of a real user's (L{SCRAM_SALT_BYTES}, the default
    iteration count), and random keys no proof can match.
    """
    salt = hmac.new(key, username.encode("utf-8"),
                    hashlib.sha256).digest()[:SCRAM_SALT_BYTES]
    return ScramSecret(salt, DEFAULT_SCRAM_ITERATIONS, os.urandom(32),
                       os.urandom(32))


@implementer(ISASLExchange)
class _ScramExchange:
    username = None         # known after client-first (for the failure log line)

    def __init__(self, mechanism, context):
        self._mechanism = mechanism
        self._context = context
        self._state = "start"
        self._known = True

    def step(self, response):
        state, self._state = self._state, "failed"
        if state == "start" and not response:
            self._state = "first"
            return Challenge(b"")
        if state in ("start", "first"):
            return self._client_first(response)
        if state == "final":
            return self._client_final(response or b"")
        if state == "verified":
            if response:
                raise SASLError("SCRAM expects an empty last response")
            self._state = "done"
            return VerifiedCredentials(self._username, self._mechanism.name)
        raise SASLError("SCRAM exchange already finished")

    def _client_first(self, message):
        if len(message) > MAX_MESSAGE:
            raise SASLError("SCRAM message too long")
        try:
            cb_flag, authzid, bare = message.split(b",", 2)
        except ValueError:
            raise SASLError("SCRAM client-first without a GS2 header") from None
        self._check_binding_flag(cb_flag)
        pairs = _attributes(bare, (b"n", b"r"))
        if any(key == b"m" for key, _ in pairs):
            raise SASLError("SCRAM mandatory extension not supported")
        user, client_nonce = pairs[0][1], pairs[1][1]
        if not user or not _PRINTABLE_NONCE.fullmatch(client_nonce):
            raise SASLError("SCRAM user name or nonce malformed")
        username = normalise(self._context, _decode_saslname(user))
        if authzid:
            if not authzid.startswith(b"a="):
                raise SASLError("SCRAM authzid malformed")
            wanted = normalise(self._context, _decode_saslname(authzid[2:]))
            if wanted != username:
                raise SASLError("SCRAM authzid differs from the user")
        self._username = self.username = username
        self._gs2_header = cb_flag + b"," + authzid + b","
        self._client_first_bare = bare
        self._nonce = client_nonce + self._mechanism.nonce_factory()

        d = maybeDeferred(self._context.lookupSecret, username, SCRAM_SHA_256)

        def unknown(failure):
            failure.trap(UnauthorizedLogin)
            self._known = False
            return (None, decoy_secret(username, self._mechanism.decoy_key))

        def found(result):
            _record, secret = result
            self._secret = secret
            self._server_first = (
                b"r=" + self._nonce
                + b",s=" + base64.b64encode(secret.salt)
                + b",i=" + str(secret.iterations).encode("ascii"))
            self._state = "final"
            return Challenge(self._server_first)

        return d.addErrback(unknown).addCallback(found)

    def _check_binding_flag(self, cb_flag):
        plus = self._mechanism.channel_binding
        if cb_flag.startswith(b"p="):
            kind = cb_flag[2:].decode("ascii", "replace")
            if not plus:
                raise SASLError("SCRAM channel binding on a non-PLUS "
                                "mechanism")
            if kind not in CHANNEL_BINDING_TYPES:
                raise SASLError("SCRAM channel binding type not supported")
            data = self._context.channelBinding(kind)
            if not data:
                raise SASLError("SCRAM channel binding unavailable")
            self._binding_data = data
            return
        if plus:
            raise SASLError("SCRAM-PLUS without channel binding")
        if cb_flag == b"n":
            self._binding_data = b""
            return
        if cb_flag == b"y":
            # The client could bind but believes we cannot: if we offered
            # -PLUS on this connection, someone removed it (RFC 5802 6).
            if self._context.secure and self._mechanism.plus_offered(
                    self._context):
                raise SASLError("SCRAM channel binding downgrade")
            self._binding_data = b""
            return
        raise SASLError("SCRAM GS2 channel binding flag malformed")

    def _client_final(self, message):
        if len(message) > MAX_MESSAGE:
            raise SASLError("SCRAM message too long")
        without_proof, sep, proof_b64 = message.rpartition(b",p=")
        if not sep:
            raise SASLError("SCRAM client-final without a proof")
        pairs = _attributes(without_proof, (b"c", b"r"))
        try:
            binding = base64.b64decode(pairs[0][1], validate=True)
            proof = base64.b64decode(proof_b64, validate=True)
        except binascii.Error:
            raise SASLError("SCRAM base64 malformed") from None
        if not hmac.compare_digest(binding,
                                   self._gs2_header + self._binding_data):
            raise SASLError("SCRAM channel binding mismatch")
        if not hmac.compare_digest(pairs[1][1], self._nonce):
            raise SASLError("SCRAM nonce mismatch")
        if len(proof) != hashlib.sha256().digest_size:
            raise SASLError("SCRAM proof of wrong length")
        # Policy first: a locked-out user learns nothing from the proof.
        self._context.checkPolicy(self.username)
        auth_message = b",".join(
            (self._client_first_bare, self._server_first, without_proof))
        secret = self._secret
        signature = hmac.new(secret.stored_key, auth_message,
                             hashlib.sha256).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        good = hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                   secret.stored_key)
        if not (good and self._known):
            raise UnauthorizedLogin("SCRAM proof does not match")
        server_signature = hmac.new(secret.server_key, auth_message,
                                    hashlib.sha256).digest()
        self._state = "verified"
        return Challenge(b"v=" + base64.b64encode(server_signature))

    def abort(self):
        """Nothing is held between steps: nothing to release."""


def _plus_in_settings(context):
    names = getattr(context.settings, "mechanisms", ()) or ()
    return "SCRAM-SHA-256-PLUS" in names


@implementer(ISASLMechanism)
class ScramSHA256Mechanism:
    """
    @param channel_binding: True for SCRAM-SHA-256-PLUS.
    @param nonce_factory: returns the server's nonce part (tests fix it).
    @param plus_offered: context -> whether -PLUS is offered on this
        connection, for downgrade detection; by default, whether
        C{context.settings.mechanisms} lists it.
    @param decoy_key: keys the made-up salt of unknown users; by default a
        key per process (see L{withServerSecret}).
    """

    exposesPassword = False
    requires = SCRAM_SHA_256

    def __init__(self, channel_binding=False, nonce_factory=new_nonce,
                 plus_offered=_plus_in_settings, decoy_key=None):
        self.name = "SCRAM-SHA-256-PLUS" if channel_binding else "SCRAM-SHA-256"
        self.channel_binding = channel_binding
        self.nonce_factory = nonce_factory
        self.plus_offered = plus_offered
        self.decoy_key = decoy_key if decoy_key is not None else _PROCESS_DECOY_KEY

    def withServerSecret(self, server_secret):
        """
        This mechanism with unknown users' salts keyed by C{server_secret}
        (a L{securepop.serversecret.ServerSecret}): stable across restarts
        and workers.
        """
        return ScramSHA256Mechanism(self.channel_binding, self.nonce_factory,
                                    self.plus_offered,
                                    server_secret.derive(DECOY_SALT_PURPOSE))

    def newExchange(self, context):
        return _ScramExchange(self, context)


SCRAM_SHA_256_MECHANISM = ScramSHA256Mechanism()
SCRAM_SHA_256_PLUS_MECHANISM = ScramSHA256Mechanism(channel_binding=True)
