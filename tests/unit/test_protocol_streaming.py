"""
Property tests of RETR/TOP streaming: for any bytes and any chunk size, the
client's un-stuffed view equals the CRLF-normalised stored message, and TOP
finds the header/body separator wherever the chunks cut it.
"""

import io
import re

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from securepop.protocol.streaming import DotStuffer, MessageProducer, TopFilter
from securepop.testing.pop3 import stuff_whole

LINE_BYTES = st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\x00", b"\xff", b" "])
MESSAGES = st.lists(LINE_BYTES, max_size=60).map(b"".join) | st.binary(max_size=300)


def crlf_normalise(data):
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if data and not data.endswith(b"\n"):
        data += b"\r\n"
    return data


def unstuff(wire):
    """A client's reading of a multi-line body: terminator off, stuffing undone."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    # No line may be a lone "." before the end: that would end the message early.
    assert b"." not in lines
    return b"".join((l[1:] if l.startswith(b".") else l) + b"\r\n" for l in lines)


def chunked(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


class FullBuffer(StringTransport):
    """A transport whose buffer is full after every write: the producer is
    paused each time and must wait to be resumed."""

    def write(self, data):
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


def stream(data, size, top=None):
    """The wire form produced by MessageProducer reading C{size} bytes at a time."""
    transport = FullBuffer()
    producer = MessageProducer(io.BytesIO(data), transport, top, chunk_size=size)
    d = producer.start()
    results = []
    d.addCallback(results.append)
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert results == [len(transport.value())]
    return transport.value()


def test_producer_interface():
    verifyObject(IPushProducer, MessageProducer(io.BytesIO(b""), StringTransport()))


@settings(max_examples=400)
@given(MESSAGES, st.integers(min_value=1, max_value=17))
def test_any_bytes_any_chunk_size_round_trip(data, size):
    stuffer = DotStuffer()
    wire = b"".join(stuffer.feed(c) for c in chunked(data, size)) + stuffer.finish()
    assert unstuff(wire) == crlf_normalise(data)
    assert wire == stuff_whole(data)                    # independent of the chunking


def three_passes(data):
    """The plain definition the fast paths of DotStuffer.feed must match."""
    if data.endswith(b"\r"):
        data = data[:-1]
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\n.", b"\n..")
    return b"." + out if out.startswith(b".") else out


@settings(max_examples=600)
@given(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b".", b"a", b"\n.", b"\r\n."]),
                max_size=40).map(b"".join))
def test_feed_matches_three_passes(data):
    assert DotStuffer().feed(data) == three_passes(data)


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"\r\n", b".", b"a", b"\r\n.", b".."]), max_size=40)
       .map(b"".join), st.integers(min_value=1, max_value=9))
def test_crlf_mode_same_wire_for_crlf_messages(data, size):
    plain, crlf = DotStuffer(), DotStuffer(crlf=True)
    chunks = chunked(data, size)
    assert (b"".join(crlf.feed(c) for c in chunks) + crlf.finish()
            == b"".join(plain.feed(c) for c in chunks) + plain.finish())


def test_crlf_mode_trusts_its_hint():
    # The negative case: told "CRLF only" about a bare-LF message, it does
    # not convert -- the hint must come from the store's exact size count.
    assert DotStuffer(crlf=True).feed(b"a\n.b\n") == b"a\n..b\n"
    assert DotStuffer().feed(b"a\n.b\n") == b"a\r\n..b\r\n"


@settings(max_examples=200)
@given(MESSAGES, st.integers(min_value=1, max_value=9))
def test_producer_matches_whole_message(data, size):
    assert stream(data, size) == stuff_whole(data)


def test_dot_at_start_of_message_and_of_chunk():
    data = b".first\n.second\n"
    for size in range(1, len(data) + 1):
        assert stream(data, size) == b"..first\r\n..second\r\n.\r\n"


def test_crlf_split_between_chunks_is_not_doubled():
    data = b"ab\r\n.c\r\n"
    for size in range(1, len(data) + 1):
        assert stream(data, size) == b"ab\r\n..c\r\n.\r\n"   # never CR CR LF


def test_lone_dot_line_and_bare_cr():
    assert stuff_whole(b".\n") == b"..\r\n.\r\n"
    assert stuff_whole(b"a\rb") == b"a\rb\r\n.\r\n"
    assert stuff_whole(b"") == b".\r\n"
    assert stuff_whole(b"end\r") == b"end\r\r\n.\r\n"
    # Negative: a dot inside a line is not stuffed.
    assert stuff_whole(b"a.b\n") == b"a.b\r\n.\r\n"


def top_expected(data, n):
    """Header, separator, then n body lines of the normalised message."""
    norm = crlf_normalise(data)
    lines = norm.split(b"\r\n")[:-1]
    out = []
    in_header = True
    count = 0
    for line in lines:
        if in_header:
            out.append(line)
            if line == b"":
                in_header = False
            continue
        if count >= n:
            break
        out.append(line)
        count += 1
    return b"".join(l + b"\r\n" for l in out)


HEADERS = st.lists(st.sampled_from([b"A: 1", b"Subject: x", b".B: y", b"C:\r", b"D: \xff"]),
                   max_size=5).map(lambda hs: b"".join(h + b"\n" for h in hs))
BODIES = st.lists(st.sampled_from([b"", b".", b"..", b"line", b"x\r", b"\xe9"]),
                  max_size=8).map(lambda ls: b"".join(l + b"\r\n" for l in ls))


@settings(max_examples=300)
@given(HEADERS, st.sampled_from([b"\n", b"\r\n"]), BODIES, st.integers(0, 10),
       st.integers(min_value=1, max_value=7))
def test_top_separator_anywhere(header, separator, body, n, size):
    data = header + separator + body
    wire = stream(data, size, top=n)
    assert unstuff(wire) == top_expected(data, n)


def test_top_separator_split_across_chunks():
    data = b"Subject: s\r\n\r\nbody 1\r\nbody 2\r\n"
    cut = data.index(b"\r\n\r\n")
    for size in (cut + 1, cut + 2, cut + 3, cut + 4):
        assert stream(data, size, top=0) == b"Subject: s\r\n\r\n.\r\n"
        assert stream(data, size, top=1) == b"Subject: s\r\n\r\nbody 1\r\n.\r\n"


def test_top_more_lines_than_message_sends_it_all():
    data = b"H: 1\n\nonly\n"
    assert stream(data, 3, top=50) == stuff_whole(data)


def test_top_filter_negative_no_separator():
    t = TopFilter(0)
    assert t.feed(b"A: 1\r\nB: 2\r\n") == b"A: 1\r\nB: 2\r\n"
    assert not t.done                           # no empty line yet: still in the header


def test_whole_message_sent_at_once_when_the_buffer_allows():
    data = b"a\r\n.b\r\n" * 1000
    transport = StringTransport()
    d = MessageProducer(io.BytesIO(data), transport, chunk_size=1000).start()
    assert transport.value() == stuff_whole(data)  # inside start(): no turn to wait for
    assert transport.producer is None
    assert d.called


def test_paused_producer_writes_nothing_until_resumed():
    transport = FullBuffer()
    producer = MessageProducer(io.BytesIO(b"x" * 100), transport, chunk_size=10)
    producer.start()
    assert transport.value() == b"x" * 10
    transport.write(b"")                         # still paused: nothing more
    assert transport.value() == b"x" * 10
    producer.resumeProducing()
    assert transport.value() == b"x" * 20


def test_resume_from_inside_a_write_does_not_recurse():
    class Reentrant(StringTransport):
        def write(self, data):
            super().write(data)
            if self.producer is not None and len(self.value()) < 50:
                self.producer.pauseProducing()
                self.producer.resumeProducing()  # e.g. a buffer drained at once

    transport = Reentrant()
    d = MessageProducer(io.BytesIO(b"y" * 100), transport, chunk_size=10).start()
    assert transport.value() == b"y" * 100 + b"\r\n.\r\n" and d.called


def test_stop_producing_closes_file_and_fails_deferred():
    f = io.BytesIO(b"x" * 1000)
    transport = FullBuffer()
    producer = MessageProducer(f, transport, chunk_size=10)
    d = producer.start()
    failures = []
    d.addErrback(failures.append)
    producer.stopProducing()
    assert f.closed and len(failures) == 1
    producer.resumeProducing()                  # after stop: nothing more is written
    assert len(transport.value()) <= 20
