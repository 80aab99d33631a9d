"""
NTLM ("Secure Password Authentication", [MS-POP3] and [MS-NLMP]): the
password never crosses the wire.

Two mechanisms share the name C{NTLM}: L{NTLMMechanism} verifies NTLMv2
against the NT hash the source stores, and L{NTLMDelegateMechanism} hands the
messages to a domain controller (Samba winbind) that verifies them.  The
registry offers whichever the configured source can serve.

POP3 flow: C{AUTH NTLM} -> C{+} -> NEGOTIATE -> C{+ CHALLENGE} ->
AUTHENTICATE -> credentials.  A NEGOTIATE may also come as the initial
response.

Settings read from C{context.settings} (each optional):
C{insecure_allow_ntlmv1} (bool, False), C{channel_binding} (C{"off"},
C{"allow"} (default), C{"require"}: L{check_channel_binding}),
C{ntlm_timestamp_window} (seconds,
300), C{netbios_domain} (str; the configuration's default is "SECUREPOP";
when empty, the host name's first label), C{dns_domain} (str; when empty,
the host name without its first label).
"""

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from twisted.internet.defer import maybeDeferred
from zope.interface import Interface, implementer

from securepop.auth.usernames import server_names
from securepop.errors import SASLError
from securepop.interfaces import (
    NT_HASH, NTLM_DELEGATE, ISASLExchange, ISASLMechanism,
    ISecretCredentials,
)
import securepop.sasl.ntlm_messages as msgs
from securepop.sasl.base import Challenge
from securepop.sasl.credentials import VerifiedCredentials, normalise

DEFAULT_TIMESTAMP_WINDOW = 300.0
#: Seconds between 1601-01-01 (FILETIME epoch) and 1970-01-01.
_FILETIME_EPOCH_OFFSET = 11644473600

#: Flags the server echoes when the client asks for them.
_ECHOED_FLAGS = (
    msgs.NEGOTIATE_SIGN | msgs.NEGOTIATE_SEAL | msgs.NEGOTIATE_ALWAYS_SIGN
    | msgs.NEGOTIATE_EXTENDED_SESSIONSECURITY | msgs.NEGOTIATE_IDENTIFY
    | msgs.NEGOTIATE_128 | msgs.NEGOTIATE_56 | msgs.NEGOTIATE_KEY_EXCH
    | msgs.NEGOTIATE_VERSION
)


class NTLMRefused(SASLError):
    """
    A well-formed NTLM login this server refuses by policy.

    @ivar reason: short token for the failure log (C{anonymous},
        C{ntlmv1-refused}, C{lm-refused}, C{timestamp-outside-window}).
    """

    def __init__(self, reason):
        super().__init__(f"NTLM refused: {reason}")
        self.reason = reason


class INTLMDelegate(Interface):
    """
    One NTLM exchange verified by a domain controller (Samba's C{ntlm_auth
    --helper-protocol=squid-2.5-ntlmssp}).  C{context.ntlmDelegate()} returns
    a fresh one per AUTH: the helper keeps the challenge between the two
    calls.
    """

    def negotiate(token):
        """
        @param token: the client's NEGOTIATE_MESSAGE (bytes).
        @return: Deferred firing with the CHALLENGE_MESSAGE (bytes).
        """

    def authenticate(token):
        """
        @param token: the client's AUTHENTICATE_MESSAGE (bytes).
        @return: Deferred firing with the verified user name (str, as the DC
            reports it, e.g. C{EXAMPLE\\alice}); errbacks with
            L{twisted.cred.error.UnauthorizedLogin} for a failed proof.
        """


# -- the NTLM arithmetic ([MS-NLMP] 3.3) -----------------------------------

def hmac_md5(key, data):
    return hmac.new(key, data, hashlib.md5).digest()


def ntowfv2(nt_hash, user, domain):
    """NTOWFv2 from a stored NT hash: HMAC_MD5(NT, UTF16(Upper(user)+dom))."""
    return hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le"))


def _des_key(seven):
    """Spread 7 key bytes over 8 DES key bytes (parity bits ignored)."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des(key7, block):
    key = _des_key(key7)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def desl(key16, data8):
    """DESL() of [MS-NLMP] 6: three DES encryptions of one 8-byte block."""
    padded = key16 + b"\x00" * 5
    return b"".join(_des(padded[i:i + 7], data8) for i in (0, 7, 14))


def ntlmv1_response(nt_hash, challenge):
    """The 24-byte NTLMv1 response to an 8-byte challenge."""
    return desl(nt_hash, challenge)


def ntlm2_session_challenge(server_challenge, client_challenge):
    """The challenge NTLMv1 with extended session security answers."""
    return hashlib.md5(server_challenge + client_challenge).digest()[:8]


def rc4(key, data):
    encryptor = Cipher(ARC4(key), mode=None).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def unix_to_filetime(seconds):
    return int((seconds + _FILETIME_EPOCH_OFFSET) * 10_000_000)


def filetime_to_unix(filetime):
    return filetime / 10_000_000 - _FILETIME_EPOCH_OFFSET


@dataclass(frozen=True)
class NTLMv2Blob:
    """The client's NTLMv2_CLIENT_CHALLENGE ([MS-NLMP] 2.2.2.7)."""

    timestamp: int
    client_challenge: bytes
    av_pairs: tuple

    def av_flags(self):
        for av_id, value in self.av_pairs:
            if av_id == msgs.AV_FLAGS and len(value) == 4:
                return struct.unpack("<I", value)[0]
        return 0


def parse_ntlmv2_blob(blob):
    """
    @param blob: the NT response after its 16-byte NTProofStr.
    @rtype: L{NTLMv2Blob}
    """
    if len(blob) < 28 + 4:
        raise msgs.NTLMMessageError("NTLMv2 response truncated")
    if blob[0] != 1 or blob[1] != 1:
        raise msgs.NTLMMessageError("unknown NTLMv2 response version")
    (timestamp,) = struct.unpack_from("<Q", blob, 8)
    return NTLMv2Blob(timestamp, blob[16:24],
                      tuple(msgs.parse_av_pairs(blob[28:])))


# -- credentials --------------------------------------------------------------

@implementer(ISecretCredentials)
@dataclass(frozen=True)
class NTLMCredentials:
    """
    An AUTHENTICATE_MESSAGE waiting for the user's NT hash.

    @ivar message_user: the user name as the client sent it (NTOWFv2 uses
        it, not the normalised one).
    @ivar transcript: NEGOTIATE and CHALLENGE bytes, for the MIC.
    """

    username: str
    message: msgs.AuthenticateMessage = field(repr=False)
    server_challenge: bytes = field(repr=False)
    transcript: bytes = field(repr=False)
    allow_ntlmv1: bool = False
    kind: str = NT_HASH
    mechanism: str = "NTLM"

    def checkSecret(self, secret):
        """
        @param secret: the 16-byte NT hash.
        @return: True when the response proves knowledge of it (and the MIC,
            when the client flagged one, is right).
        """
        if not isinstance(secret, bytes) or len(secret) != 16:
            return False
        nt_response = self.message.nt_response
        if len(nt_response) > 24:
            return self._check_v2(secret)
        if len(nt_response) == 24 and self.allow_ntlmv1:
            return self._check_v1(secret)
        return False

    def _check_v2(self, nt_hash):
        proof, blob = self.message.nt_response[:16], \
            self.message.nt_response[16:]
        matched_key = None
        # Clients differ on whether the domain goes into NTOWFv2: try both,
        # always both, so the time taken says nothing.
        for domain in (self.message.domain, ""):
            key = ntowfv2(nt_hash, self.message.user, domain)
            expected = hmac_md5(key, self.server_challenge + blob)
            if hmac.compare_digest(expected, proof) and matched_key is None:
                matched_key = key
        if matched_key is None:
            return False
        parsed = parse_ntlmv2_blob(blob)
        if not parsed.av_flags() & msgs.AV_FLAG_MIC_PRESENT:
            return True
        mic = self.message.mic()
        if mic is None:
            return False
        session_base_key = hmac_md5(matched_key, proof)
        exported = session_base_key
        if (self.message.flags & msgs.NEGOTIATE_KEY_EXCH
                and len(self.message.encrypted_session_key) == 16):
            exported = rc4(session_base_key,
                           self.message.encrypted_session_key)
        expected_mic = hmac_md5(
            exported, self.transcript + self.message.without_mic())
        return hmac.compare_digest(expected_mic, mic)

    def _check_v1(self, nt_hash):
        lm = self.message.lm_response
        challenge = self.server_challenge
        if (self.message.flags & msgs.NEGOTIATE_EXTENDED_SESSIONSECURITY
                and len(lm) == 24 and lm[8:] == b"\x00" * 16):
            challenge = ntlm2_session_challenge(challenge, lm[:8])
        expected = ntlmv1_response(nt_hash, challenge)
        return hmac.compare_digest(expected, self.message.nt_response)


# -- policy shared by both mechanisms ----------------------------------------

def _settings(context, name, default):
    return getattr(context.settings, name, default)


def check_authenticate_policy(message, context, check_timestamp=True):
    """
    Refuse, before any secret is touched, what this server never accepts:
    anonymous logins, LM-only responses, NTLMv1 (unless
    C{insecure_allow_ntlmv1}), and NTLMv2 timestamps outside the window.

    @raise NTLMRefused: naming the reason.
    @raise NTLMMessageError: for a malformed NTLMv2 response.
    """
    nt, lm = message.nt_response, message.lm_response
    if (message.flags & msgs.NEGOTIATE_ANONYMOUS or not message.user
            or (not nt and lm in (b"", b"\x00"))):
        raise NTLMRefused("anonymous")
    if not nt:
        raise NTLMRefused("lm-refused")
    if len(nt) == 24:
        if not _settings(context, "insecure_allow_ntlmv1", False):
            raise NTLMRefused("ntlmv1-refused")
        check_channel_binding(None, context)
        return
    if len(nt) < 16 + 32:
        raise msgs.NTLMMessageError("NT response of impossible length")
    blob = parse_ntlmv2_blob(nt[16:])
    check_channel_binding(blob, context)
    if check_timestamp:
        window = float(_settings(context, "ntlm_timestamp_window",
                                 DEFAULT_TIMESTAMP_WINDOW))
        skew = abs(filetime_to_unix(blob.timestamp) - context.clock.seconds())
        if skew > window:
            raise NTLMRefused("timestamp-outside-window")


def channel_binding_hash(application_data):
    """
    MsvAvChannelBindings for C{application_data}: the MD5 of a
    gss_channel_bindings_struct with no addresses (RFC 4121 4.1.1.2, [MS-NLMP]
    2.2.2.1), as SSPI and pyspnego compute it.
    """
    return hashlib.md5(struct.pack("<5I", 0, 0, 0, 0, len(application_data))
                       + application_data).digest()


def check_channel_binding(blob, context):
    """
    Extended Protection: the client's MsvAvChannelBindings against this TLS
    connection (C{tls-server-end-point}, RFC 5929).  The pair is inside the
    NTLMv2 response, so the proof covers it: a relay cannot change it.

    C{auth.channel_binding}: C{"off"} ignores it; C{"allow"} refuses a
    binding to another channel (a relay, or TLS ended at a proxy) and
    accepts a client that sent none (or zeros, "no binding"); C{"require"}
    also refuses a client that sent none, NTLMv1 (which has no room for it),
    and a connection without TLS.

    @param blob: the L{NTLMv2Blob}, or None for NTLMv1.
    @raise NTLMRefused: C{channel-binding-missing}, C{-unavailable},
        C{-mismatch}.
    """
    mode = _settings(context, "channel_binding", "allow")
    if mode == "off":
        return
    sent = next((value for av_id, value in (blob.av_pairs if blob else ())
                 if av_id == msgs.AV_CHANNEL_BINDINGS and any(value)), None)
    if sent is None:
        if mode == "require":
            raise NTLMRefused("channel-binding-missing")
        return
    ours = context.channelBinding("tls-server-end-point")
    if not ours:
        if mode == "require":
            raise NTLMRefused("channel-binding-unavailable")
        return
    expected = channel_binding_hash(b"tls-server-end-point:" + ours)
    if not hmac.compare_digest(sent, expected):
        raise NTLMRefused("channel-binding-mismatch")


def _message_username(message):
    """
    The user name as the client gave it: C{DOMAIN\\user} when the message
    names a domain.  The one user-name rule (L{securepop.auth.usernames})
    then decides: the server's own NetBIOS domain, DNS domain or host name
    (what fetchmail and Outlook send back from our CHALLENGE, what curl
    sends for C{-u 'EXAMPLE\\alice'}) means the local user, any other
    domain is refused unless C{strip_domain} is on.
    """
    if message.domain:
        return f"{message.domain}\\{message.user}"
    return message.user


def _names(context):
    """(NetBIOS computer, NetBIOS domain, DNS computer, DNS domain)."""
    return server_names(context.settings, context.hostname)


def challenge_flags(client_flags, domain_target=True):
    """The flags of our CHALLENGE_MESSAGE for a client's NEGOTIATE flags."""
    flags = (msgs.REQUEST_TARGET | msgs.NEGOTIATE_NTLM
             | msgs.NEGOTIATE_TARGET_INFO
             | (msgs.TARGET_TYPE_DOMAIN if domain_target
                else msgs.TARGET_TYPE_SERVER))
    if client_flags & msgs.NEGOTIATE_UNICODE:
        flags |= msgs.NEGOTIATE_UNICODE
    else:
        flags |= msgs.NEGOTIATE_OEM
    return flags | (client_flags & _ECHOED_FLAGS)


def _check_negotiate(message):
    if not message.flags & (msgs.NEGOTIATE_UNICODE | msgs.NEGOTIATE_OEM):
        raise msgs.NTLMMessageError("NTLM NEGOTIATE without a character set")


# -- local verification -------------------------------------------------------

@implementer(ISASLExchange)
class _NTLMExchange:
    username = None         # known after AUTHENTICATE (for the failure log line)

    def __init__(self, context, challenge_factory):
        self._context = context
        self._challenge_factory = challenge_factory
        self._state = "start"
        self._negotiate = None
        self._challenge = None
        self._server_challenge = None

    def step(self, response):
        if self._state == "start" and not response:
            self._state = "negotiate"
            return Challenge(b"")
        if self._state in ("start", "negotiate"):
            if response is None:
                raise SASLError("NTLM NEGOTIATE expected")
            return self._on_negotiate(response)
        if self._state == "authenticate":
            self._state = "done"
            return self._on_authenticate(response or b"")
        raise SASLError("NTLM exchange already finished")

    def _on_negotiate(self, token):
        self._state = "failed"
        negotiate = msgs.parse_negotiate(token)
        _check_negotiate(negotiate)
        nb_computer, nb_domain, dns_computer, dns_domain = _names(
            self._context)
        server_challenge = self._challenge_factory()
        now = unix_to_filetime(self._context.clock.seconds())
        target_info = msgs.build_av_pairs([
            (msgs.AV_NB_DOMAIN_NAME, nb_domain.encode("utf-16-le")),
            (msgs.AV_NB_COMPUTER_NAME, nb_computer.encode("utf-16-le")),
            (msgs.AV_DNS_DOMAIN_NAME, dns_domain.encode("utf-16-le")),
            (msgs.AV_DNS_COMPUTER_NAME, dns_computer.encode("utf-16-le")),
            (msgs.AV_TIMESTAMP, struct.pack("<Q", now)),
        ])
        flags = challenge_flags(negotiate.flags)
        try:
            challenge = msgs.build_challenge(
                flags, server_challenge, nb_domain, target_info)
        except UnicodeEncodeError:
            raise SASLError("NTLM target name not encodable for an OEM "
                            "client") from None
        self._negotiate, self._challenge = negotiate.raw, challenge
        self._server_challenge = server_challenge
        self._state = "authenticate"
        return Challenge(challenge)

    def _on_authenticate(self, token):
        message = msgs.parse_authenticate(token)
        self.username = message.user or None        # for the failure log line
        check_authenticate_policy(message, self._context)
        qualified = _message_username(message)
        self.username = qualified or None       # a refused name is logged as sent
        username = normalise(self._context, qualified)
        return NTLMCredentials(
            username=username,
            message=message,
            server_challenge=self._server_challenge,
            transcript=self._negotiate + self._challenge,
            allow_ntlmv1=bool(_settings(self._context,
                                        "insecure_allow_ntlmv1", False)),
        )

    def abort(self):
        """Nothing is held between steps: nothing to release."""


@implementer(ISASLMechanism)
class NTLMMechanism:
    """
    NTLM verified here against the stored NT hash.

    @param challenge_factory: returns the 8-byte server challenge; fresh
        random bytes unless a test fixes it.
    """

    name = "NTLM"
    exposesPassword = False
    requires = NT_HASH

    def __init__(self, challenge_factory=lambda: os.urandom(8)):
        self._challenge_factory = challenge_factory

    def newExchange(self, context):
        return _NTLMExchange(context, self._challenge_factory)


# -- verification by the domain controller -----------------------------------

@implementer(ISASLExchange)
class _NTLMDelegateExchange:
    username = None

    def __init__(self, context):
        self._context = context
        self._state = "start"
        self._delegate = None

    def step(self, response):
        if self._state == "start" and not response:
            self._state = "negotiate"
            return Challenge(b"")
        if self._state in ("start", "negotiate"):
            if response is None:
                raise SASLError("NTLM NEGOTIATE expected")
            self._state = "failed"
            _check_negotiate(msgs.parse_negotiate(response))
            self._delegate = self._context.ntlmDelegate()
            d = maybeDeferred(self._delegate.negotiate, response)

            def challenged(token):
                msgs.parse_challenge(token)
                self._state = "authenticate"
                return Challenge(token)
            return d.addCallback(challenged)
        if self._state == "authenticate":
            self._state = "done"
            token = response or b""
            message = msgs.parse_authenticate(token)
            self.username = message.user or None    # for the failure log line
            # The DC checks the proof and its timestamp; the local policy
            # (no anonymous, no NTLMv1 unless allowed) still applies.
            check_authenticate_policy(message, self._context,
                                      check_timestamp=False)
            d = maybeDeferred(self._delegate.authenticate, token)
            d.addCallback(lambda name: VerifiedCredentials(
                normalise(self._context, name), "NTLM"))
            return d
        raise SASLError("NTLM exchange already finished")

    def abort(self):
        """Cancelled, refused here, or the client left: free the DC helper."""
        delegate, self._delegate = self._delegate, None
        if delegate is not None and hasattr(delegate, "abort"):
            delegate.abort()


@implementer(ISASLMechanism)
class NTLMDelegateMechanism:
    """NTLM verified by a domain controller through C{context.ntlmDelegate()}."""

    name = "NTLM"
    exposesPassword = False
    requires = NTLM_DELEGATE

    def newExchange(self, context):
        return _NTLMDelegateExchange(context)


NTLM = NTLMMechanism()
NTLM_DELEGATED = NTLMDelegateMechanism()
