"""
The three NTLM messages of [MS-NLMP] section 2.2.1, parsed and built with
strict bounds checks.

Every length and offset in a message comes from the client, so each field is
checked against the message before it is read, and every size is capped: a
hostile message fails with L{NTLMMessageError} (a L{SASLError}), never with
an IndexError or a huge allocation.
"""

import struct
from dataclasses import dataclass

from securepop.errors import SASLError

SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE_TYPE, CHALLENGE_TYPE, AUTHENTICATE_TYPE = 1, 2, 3

# Negotiate flags ([MS-NLMP] 2.2.2.5).
NEGOTIATE_UNICODE = 0x00000001
NEGOTIATE_OEM = 0x00000002
REQUEST_TARGET = 0x00000004
NEGOTIATE_SIGN = 0x00000010
NEGOTIATE_SEAL = 0x00000020
NEGOTIATE_LM_KEY = 0x00000080
NEGOTIATE_NTLM = 0x00000200
NEGOTIATE_ANONYMOUS = 0x00000800
NEGOTIATE_OEM_DOMAIN_SUPPLIED = 0x00001000
NEGOTIATE_OEM_WORKSTATION_SUPPLIED = 0x00002000
NEGOTIATE_ALWAYS_SIGN = 0x00008000
TARGET_TYPE_DOMAIN = 0x00010000
TARGET_TYPE_SERVER = 0x00020000
NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NEGOTIATE_IDENTIFY = 0x00100000
NEGOTIATE_TARGET_INFO = 0x00800000
NEGOTIATE_VERSION = 0x02000000
NEGOTIATE_128 = 0x20000000
NEGOTIATE_KEY_EXCH = 0x40000000
NEGOTIATE_56 = 0x80000000

# AV_PAIR ids ([MS-NLMP] 2.2.2.1).
AV_EOL = 0
AV_NB_COMPUTER_NAME = 1
AV_NB_DOMAIN_NAME = 2
AV_DNS_COMPUTER_NAME = 3
AV_DNS_DOMAIN_NAME = 4
AV_DNS_TREE_NAME = 5
AV_FLAGS = 6
AV_TIMESTAMP = 7
AV_SINGLE_HOST = 8
AV_TARGET_NAME = 9
AV_CHANNEL_BINDINGS = 10
AV_FLAG_MIC_PRESENT = 0x00000002

#: Caps on client-supplied sizes; real messages are a few hundred bytes.
MAX_MESSAGE = 8192
MAX_NAME_BYTES = 512
MAX_NT_RESPONSE = 4096
MAX_AV_PAIRS = 64

#: What this server says it is in the VERSION field: 10.0, NTLM revision 15.
SERVER_VERSION = struct.pack("<BBH3xB", 10, 0, 0, 0x0F)

_AUTHENTICATE_HEADER = 64   # up to and including NegotiateFlags
_MIC_OFFSET = 72
_MIC_END = 88


class NTLMMessageError(SASLError):
    """A malformed NTLM message."""


@dataclass(frozen=True)
class NegotiateMessage:
    flags: int
    domain: bytes
    workstation: bytes
    raw: bytes


@dataclass(frozen=True)
class ChallengeMessage:
    flags: int
    server_challenge: bytes
    target_name: bytes
    target_info: bytes
    raw: bytes


@dataclass(frozen=True)
class AuthenticateMessage:
    """
    @ivar payload_start: the smallest offset of a non-empty field: the
        header (and so VERSION and MIC) ends there.
    """

    flags: int
    lm_response: bytes
    nt_response: bytes
    domain: str
    user: str
    workstation: str
    encrypted_session_key: bytes
    payload_start: int
    raw: bytes

    def mic(self):
        """
        @return: the 16-byte MIC field, or None when the header has no room
            for one.
        """
        if self.payload_start < _MIC_END:
            return None
        return self.raw[_MIC_OFFSET:_MIC_END]

    def without_mic(self):
        """The message with its MIC zeroed, as the MIC is computed over."""
        return self.raw[:_MIC_OFFSET] + b"\x00" * 16 + self.raw[_MIC_END:]


def _header(data, expected_type, minimum):
    if not isinstance(data, bytes):
        raise NTLMMessageError("NTLM message is not bytes")
    if len(data) > MAX_MESSAGE:
        raise NTLMMessageError("NTLM message too long")
    if len(data) < minimum:
        raise NTLMMessageError("NTLM message truncated")
    if data[:8] != SIGNATURE:
        raise NTLMMessageError("NTLM signature missing")
    (message_type,) = struct.unpack_from("<I", data, 8)
    if message_type != expected_type:
        raise NTLMMessageError(
            f"NTLM message type {message_type}, expected {expected_type}")


def _field(data, at, header_size, limit):
    """
    Read one (Len, MaxLen, Offset) security buffer.

    @param header_size: payload may not start inside the fixed header.
    @param limit: the largest length accepted for this field.
    @return: (bytes, offset)
    """
    length, _max_length, offset = struct.unpack_from("<HHI", data, at)
    if length == 0:
        return b"", None
    if length > limit:
        raise NTLMMessageError("NTLM field too long")
    if offset < header_size or offset + length > len(data):
        raise NTLMMessageError("NTLM field out of bounds")
    return data[offset:offset + length], offset


def decode_string(raw, unicode):
    """
    Decode a name field: UTF-16LE when Unicode was negotiated, else OEM
    (taken as Latin-1, which never fails).

    @raise NTLMMessageError: odd length, invalid UTF-16 or an embedded NUL.
    """
    if unicode:
        if len(raw) % 2:
            raise NTLMMessageError("NTLM Unicode string of odd length")
        try:
            text = raw.decode("utf-16-le")
        except UnicodeDecodeError:
            raise NTLMMessageError("NTLM string is not UTF-16") from None
    else:
        text = raw.decode("latin-1")
    if "\x00" in text:
        raise NTLMMessageError("NUL in NTLM string")
    return text


def encode_string(text, unicode):
    return text.encode("utf-16-le" if unicode else "ascii", "strict")


def parse_negotiate(data):
    """
    Parse a NEGOTIATE_MESSAGE.  Old clients send only the first 16 bytes
    (no domain and workstation fields); that is accepted.

    @rtype: L{NegotiateMessage}
    """
    _header(data, NEGOTIATE_TYPE, 16)
    (flags,) = struct.unpack_from("<I", data, 12)
    domain = workstation = b""
    if len(data) >= 32:
        domain, _ = _field(data, 16, 32, MAX_NAME_BYTES)
        workstation, _ = _field(data, 24, 32, MAX_NAME_BYTES)
    return NegotiateMessage(flags, domain, workstation, data)


def build_challenge(flags, server_challenge, target_name, target_info,
                    version=SERVER_VERSION):
    """
    @param target_name: L{str}, encoded as the flags say.
    @param target_info: L{bytes} from L{build_av_pairs}.
    @return: a CHALLENGE_MESSAGE (bytes).
    """
    if len(server_challenge) != 8:
        raise ValueError("the server challenge is 8 bytes")
    name = encode_string(target_name, bool(flags & NEGOTIATE_UNICODE))
    header_size = 56
    name_offset = header_size
    info_offset = name_offset + len(name)
    return (SIGNATURE
            + struct.pack("<I", CHALLENGE_TYPE)
            + struct.pack("<HHI", len(name), len(name), name_offset)
            + struct.pack("<I", flags)
            + server_challenge
            + b"\x00" * 8
            + struct.pack("<HHI", len(target_info), len(target_info),
                          info_offset)
            + version
            + name + target_info)


def parse_challenge(data):
    """@rtype: L{ChallengeMessage}"""
    _header(data, CHALLENGE_TYPE, 48)
    target_name, _ = _field(data, 12, 48, MAX_NAME_BYTES)
    (flags,) = struct.unpack_from("<I", data, 20)
    server_challenge = data[24:32]
    target_info, _ = _field(data, 40, 48, MAX_MESSAGE)
    if target_info:
        parse_av_pairs(target_info)
    return ChallengeMessage(flags, server_challenge, target_name,
                            target_info, data)


def parse_authenticate(data):
    """
    Parse an AUTHENTICATE_MESSAGE.  The header must reach NegotiateFlags
    (64 bytes); every payload field must lie after it and inside the
    message.

    @rtype: L{AuthenticateMessage}
    """
    _header(data, AUTHENTICATE_TYPE, _AUTHENTICATE_HEADER)
    (flags,) = struct.unpack_from("<I", data, 60)
    fields = {}
    offsets = []
    limits = (("lm", 12, 24), ("nt", 20, MAX_NT_RESPONSE),
              ("domain", 28, MAX_NAME_BYTES), ("user", 36, MAX_NAME_BYTES),
              ("workstation", 44, MAX_NAME_BYTES), ("key", 52, 16))
    for name, at, limit in limits:
        fields[name], offset = _field(data, at, _AUTHENTICATE_HEADER, limit)
        if offset is not None:
            offsets.append(offset)
    unicode = bool(flags & NEGOTIATE_UNICODE)
    return AuthenticateMessage(
        flags=flags,
        lm_response=fields["lm"],
        nt_response=fields["nt"],
        domain=decode_string(fields["domain"], unicode),
        user=decode_string(fields["user"], unicode),
        workstation=decode_string(fields["workstation"], unicode),
        encrypted_session_key=fields["key"],
        payload_start=min(offsets, default=len(data)),
        raw=data,
    )


def parse_av_pairs(data):
    """
    Parse an AV_PAIR list that must end with MsvAvEOL.

    @return: list of (id, value bytes), without the EOL.
    """
    pairs = []
    at = 0
    while True:
        if len(pairs) > MAX_AV_PAIRS:
            raise NTLMMessageError("too many NTLM AV pairs")
        if at + 4 > len(data):
            raise NTLMMessageError("NTLM AV pair list truncated")
        av_id, length = struct.unpack_from("<HH", data, at)
        at += 4
        if av_id == AV_EOL:
            if length != 0:
                raise NTLMMessageError("NTLM MsvAvEOL with a value")
            return pairs
        if at + length > len(data):
            raise NTLMMessageError("NTLM AV pair out of bounds")
        pairs.append((av_id, data[at:at + length]))
        at += length


def build_av_pairs(pairs):
    """
    @param pairs: iterable of (id, value bytes); MsvAvEOL is appended.
    """
    out = b""
    for av_id, value in pairs:
        out += struct.pack("<HH", av_id, len(value)) + value
    return out + struct.pack("<HH", AV_EOL, 0)
