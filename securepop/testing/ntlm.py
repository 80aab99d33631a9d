"""
NTLM test helpers: the client's messages (NEGOTIATE, AUTHENTICATE), which
the server never builds.

The message codec of L{securepop.sasl.ntlm_messages} is re-exported, so a
test reads one namespace: C{m.parse_challenge(...)} beside
C{m.build_authenticate(...)}.
"""

import struct

from securepop.sasl.ntlm_messages import *  # noqa: F401,F403 (the codec, see above)
from securepop.sasl.ntlm_messages import (
    _AUTHENTICATE_HEADER,
    _MIC_END,
    AUTHENTICATE_TYPE,
    NEGOTIATE_TYPE,
    NEGOTIATE_UNICODE,
    SERVER_VERSION,
    SIGNATURE,
    encode_string,
)


def build_negotiate(flags, version=SERVER_VERSION):
    """A NEGOTIATE_MESSAGE without domain and workstation (as a client sends it)."""
    return (SIGNATURE + struct.pack("<II", NEGOTIATE_TYPE, flags)
            + struct.pack("<HHIHHI", 0, 0, 40, 0, 0, 40) + version)


def build_authenticate(flags, lm_response, nt_response, domain, user,
                       workstation, encrypted_session_key=b"",
                       version=SERVER_VERSION, with_mic=True):
    """
    An AUTHENTICATE_MESSAGE with a zero MIC field (for tests;
    a caller that needs a MIC computes it over this and splices it in at
    offset 72).
    """
    unicode = bool(flags & NEGOTIATE_UNICODE)
    payloads = [lm_response, nt_response, encode_string(domain, unicode),
                encode_string(user, unicode),
                encode_string(workstation, unicode), encrypted_session_key]
    offset = _MIC_END if with_mic else _AUTHENTICATE_HEADER + len(version)
    descriptors = b""
    for payload in payloads:
        descriptors += struct.pack("<HHI", len(payload), len(payload), offset)
        offset += len(payload)
    header = (SIGNATURE + struct.pack("<I", AUTHENTICATE_TYPE) + descriptors
              + struct.pack("<I", flags) + version)
    if with_mic:
        header += b"\x00" * 16
    return header + b"".join(payloads)
