"""
Tests for L{securepop.mailstore.sizes}: the count matches the stream rule.
"""

import io

from hypothesis import given, strategies as st

from securepop.mailstore.sizes import CRLFCounter, crlfSizeOfBytes, crlfSizeOfFile


def streamed(data):
    """The protocol's rule, written the obvious way: what RETR sends."""
    out = bytearray()
    previous = b""
    for i in range(len(data)):
        octet = data[i : i + 1]
        if octet == b"\n" and previous != b"\r":
            out += b"\r"
        out += octet
        previous = octet
    if data and not data.endswith(b"\n"):
        out += b"\r\n"
    return bytes(out)


def test_examples():
    assert crlfSizeOfBytes(b"a\nb\n") == 6
    assert crlfSizeOfBytes(b"a\r\nb\r\n") == 6
    assert crlfSizeOfBytes(b"a\rb") == 5
    assert crlfSizeOfBytes(b"") == 0
    assert crlfSizeOfBytes(b"\r\n") == 2
    assert crlfSizeOfBytes(b"\n") == 2
    assert crlfSizeOfBytes(b"\r") == 3


lineish = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\0", b"\xff"]),
                   max_size=60).map(b"".join)


@given(lineish, st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_counter_matches_stream_rule_for_any_split(data, cuts):
    counter = CRLFCounter()
    edges = sorted({min(c, len(data)) for c in cuts})
    start = 0
    for edge in edges + [len(data)]:
        counter.feed(data[start:edge])
        start = edge
    assert counter.rawSize == len(data)
    assert counter.crlfSize == len(streamed(data))


@given(lineish)
def test_file_count_matches(data):
    assert crlfSizeOfFile(io.BytesIO(data)) == len(streamed(data))


@given(lineish, st.integers(min_value=1, max_value=7))
def test_agrees_with_protocol_streamer(data, chunk):
    """The size LIST announces is what RETR sends, before dot-stuffing."""
    from securepop.protocol.streaming import DotStuffer

    data = data.replace(b".", b"")  # dot-stuffing is not counted (RFC 1939)
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
    out += stuffer.finish()
    assert out.endswith(b".\r\n")
    assert len(out) - 3 == crlfSizeOfBytes(data)
