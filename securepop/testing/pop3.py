"""
POP3 test helpers: the wire form of a whole message, computed in one go,
to compare with what L{securepop.protocol.streaming} sends in chunks.
"""

from securepop.protocol.streaming import DotStuffer, TopFilter


def stuff_whole(data: bytes, top_lines=None) -> bytes:
    """
    The complete wire form of a message: CRLF line ends, dot-stuffed, and
    the final C{.} line; with C{top_lines}, what C{TOP n top_lines} sends.
    """
    s = DotStuffer()
    out = s.feed(data)
    if top_lines is None:
        return out + s.finish()
    t = TopFilter(top_lines)
    body = t.feed(out)
    if t.done:
        return body + b".\r\n"
    return body + t.feed(s.finish()[:-3]) + b".\r\n"
