"""NTLM message parsing and building, including hostile messages."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from securepop.errors import SASLError
from securepop.testing import ntlm as m

from tests.unit.nlmp_vectors import SPEC_AUTHENTICATE, SPEC_CHALLENGE  # noqa: E402


def test_spec_challenge_parses():
    challenge = m.parse_challenge(SPEC_CHALLENGE)
    assert challenge.server_challenge == bytes.fromhex("0123456789abcdef")
    assert challenge.target_name == "Server".encode("utf-16-le")
    assert challenge.flags == 0xE28A8233
    assert m.parse_av_pairs(challenge.target_info) == [
        (m.AV_NB_DOMAIN_NAME, "Domain".encode("utf-16-le")),
        (m.AV_NB_COMPUTER_NAME, "Server".encode("utf-16-le")),
    ]


def test_spec_authenticate_parses():
    message = m.parse_authenticate(SPEC_AUTHENTICATE)
    assert (message.user, message.domain, message.workstation) == (
        "User", "Domain", "COMPUTER")
    assert message.lm_response.hex() == (
        "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
    assert message.nt_response[:16].hex() == "68cd0ab851e51c96aabc927bebef6a1c"
    assert message.encrypted_session_key.hex() == (
        "c5dad2544fc9799094ce1ce90bc9d03e")
    assert message.flags & m.NEGOTIATE_UNICODE
    assert message.payload_start == 0x48
    assert message.mic() is None   # 72-byte header: no room for a MIC


def test_build_challenge_round_trip():
    info = m.build_av_pairs([(m.AV_NB_DOMAIN_NAME, "EX".encode("utf-16-le")),
                             (m.AV_TIMESTAMP, b"\x01" * 8)])
    raw = m.build_challenge(m.NEGOTIATE_UNICODE | m.NEGOTIATE_NTLM,
                            b"12345678", "EXAMPLE", info)
    parsed = m.parse_challenge(raw)
    assert parsed.server_challenge == b"12345678"
    assert parsed.target_name == "EXAMPLE".encode("utf-16-le")
    assert parsed.target_info == info
    oem = m.parse_challenge(m.build_challenge(m.NEGOTIATE_OEM, b"12345678",
                                              "EXAMPLE", info))
    assert oem.target_name == b"EXAMPLE"


def test_build_challenge_needs_eight_byte_challenge():
    with pytest.raises(ValueError):
        m.build_challenge(m.NEGOTIATE_UNICODE, b"1234567", "X", b"")


def test_build_authenticate_round_trip_with_mic_room():
    raw = m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 24, b"N" * 60,
                               "DOM", "alice", "WS", b"K" * 16)
    message = m.parse_authenticate(raw)
    assert (message.user, message.domain, message.workstation) == (
        "alice", "DOM", "WS")
    assert message.mic() == b"\x00" * 16
    assert message.without_mic() == raw


def test_negotiate_short_and_full():
    short = m.SIGNATURE + struct.pack("<II", 1, m.NEGOTIATE_OEM)
    assert m.parse_negotiate(short).flags == m.NEGOTIATE_OEM
    full = m.build_negotiate(m.NEGOTIATE_UNICODE)
    assert m.parse_negotiate(full).flags == m.NEGOTIATE_UNICODE


def test_oem_names_decode_as_latin1():
    raw = m.build_authenticate(m.NEGOTIATE_OEM, b"", b"N" * 24, "D", "bob",
                               "W")
    assert m.parse_authenticate(raw).user == "bob"


def test_errors_are_sasl_errors():
    assert issubclass(m.NTLMMessageError, SASLError)


# -- hostile input -------------------------------------------------------------

@pytest.mark.parametrize("length", range(len(SPEC_AUTHENTICATE)))
def test_every_truncation_of_authenticate_refused(length):
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(SPEC_AUTHENTICATE[:length])


@pytest.mark.parametrize("length", range(len(SPEC_CHALLENGE)))
def test_every_truncation_of_challenge_refused(length):
    with pytest.raises(m.NTLMMessageError):
        m.parse_challenge(SPEC_CHALLENGE[:length])


@pytest.mark.parametrize("length", range(16))
def test_truncated_negotiate_refused(length):
    with pytest.raises(m.NTLMMessageError):
        m.parse_negotiate(m.build_negotiate(m.NEGOTIATE_UNICODE)[:length])


def patch_field(message, at, length, offset):
    return message[:at] + struct.pack("<HHI", length, length, offset) + \
        message[at + 8:]


@pytest.mark.parametrize("at", [12, 20, 28, 36, 44, 52])
@pytest.mark.parametrize("length, offset", [
    (0xFFFF, 0x48),                       # huge length
    (8, 0xFFFFFFFF),                      # offset far beyond the end
    (8, len(SPEC_AUTHENTICATE) - 4),      # runs past the end
    (8, 8),                               # inside the fixed header
])
def test_authenticate_field_out_of_bounds(at, length, offset):
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(patch_field(SPEC_AUTHENTICATE, at, length,
                                         offset))


def test_lm_response_longer_than_24_refused():
    raw = m.build_authenticate(m.NEGOTIATE_UNICODE, b"L" * 25, b"N" * 24,
                               "D", "u", "W")
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(raw)


@pytest.mark.parametrize("at", [16, 24])
def test_negotiate_field_out_of_bounds(at):
    raw = patch_field(m.build_negotiate(m.NEGOTIATE_UNICODE), at, 100, 40)
    with pytest.raises(m.NTLMMessageError):
        m.parse_negotiate(raw)


@pytest.mark.parametrize("name", [b"ab\x00", b"\x00\xd8", b"a\x00\x00\x00"])
def test_bad_unicode_user_refused(name):
    """Odd length, a lone surrogate, an embedded NUL."""
    raw = bytearray(m.build_authenticate(m.NEGOTIATE_UNICODE, b"", b"N" * 24,
                                         "", "", ""))
    raw = bytes(raw[:36]) + struct.pack("<HHI", len(name), len(name),
                                        len(raw)) + bytes(raw[44:]) + name
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(raw)


@pytest.mark.parametrize("mutate", [
    lambda b: b"NTLMSSQ\x00" + b[8:],                       # signature
    lambda b: b[:8] + struct.pack("<I", 2) + b[12:],         # wrong type
    lambda b: b + b"\x00" * m.MAX_MESSAGE,                   # too long
])
def test_bad_headers_refused(mutate):
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(mutate(SPEC_AUTHENTICATE))


def test_non_bytes_refused():
    with pytest.raises(m.NTLMMessageError):
        m.parse_authenticate(SPEC_AUTHENTICATE.hex())


@pytest.mark.parametrize("pairs", [
    b"",                                         # no EOL
    b"\x02\x00\x0c\x00Dom",                      # value past the end
    b"\x02\x00",                                 # truncated header
    b"\x00\x00\x04\x00abcd",                     # EOL with a value
    b"\x01\x00\x00\x00" * (m.MAX_AV_PAIRS + 2) + b"\x00\x00\x00\x00",
])
def test_bad_av_pairs_refused(pairs):
    with pytest.raises(m.NTLMMessageError):
        m.parse_av_pairs(pairs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([1, 2, 3]))
def test_random_bytes_only_ever_raise_ntlm_errors(tail, message_type):
    data = m.SIGNATURE + struct.pack("<I", message_type) + tail
    parser = {1: m.parse_negotiate, 2: m.parse_challenge,
              3: m.parse_authenticate}[message_type]
    try:
        parser(data)
    except m.NTLMMessageError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SPEC_AUTHENTICATE) - 1), st.integers(0, 255))
def test_single_byte_corruption_never_crashes(position, value):
    data = bytearray(SPEC_AUTHENTICATE)
    data[position] = value
    try:
        m.parse_authenticate(bytes(data))
    except m.NTLMMessageError:
        pass
