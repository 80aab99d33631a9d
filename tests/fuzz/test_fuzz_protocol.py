"""
Fuzz the POP3 line parser and state machine in memory (real session,
real checkers and portal, fixed randomness, fake clock).

Properties, for any input bytes and any segmentation:
  - no exception escapes, no internal error reply, no exception text sent;
  - every reply line ends in CRLF;
  - the output does not depend on how the input was cut into segments;
  - nobody reaches TRANSACTION without the password;
  - credentials are never checked before TLS on a TLS-required listener;
  - nothing pipelined after STLS is answered;
  - RFC 1939 semantics: QUIT removes exactly the marked messages, any
    other end removes nothing, and the lock is always released.
"""

import base64

import pytest
from hypothesis import assume, example, given, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from securepop.protocol import responses as R
from securepop.protocol.states import TRANSACTION
from tests.fuzz.harness import (
    PASSWORD, USER, corpus, fuzz_settings, make_context, open_session, run_session, split,
)

MESSAGES = [b"Subject: one\n\nbody\n", b".dot first\r\n\r\n.\r\n", b"", b"H: v\n\nx" * 50]
LEAKS = (b"Traceback", b"Error", b"Exception", b'File "')

b64 = lambda raw: base64.b64encode(raw)  # noqa: E731
commands = st.sampled_from([
    b"CAPA", b"NOOP", b"STAT", b"LIST", b"UIDL", b"RSET", b"QUIT", b"STLS", b"AUTH",
    b"USER", b"PASS", b"APOP", b"TOP", b"RETR", b"DELE", b"LIST 1", b"UIDL 2", b"XTND",
    b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5", b"AUTH NTLM", b"AUTH SCRAM-SHA-256",
    b"AUTH XOAUTH2", b"*", b"=", b"", b" ", b"USER alice", b"USER " + USER.encode(),
    b"PASS wrong", b"AUTH PLAIN " + b64(b"\0alice\0wrong"), b"AUTH PLAIN =",
    b"AUTH LOGIN " + b64(b"alice"), b64(b"alice"), b64(b"wrong"), b64(b"\0alice\0x"),
    b"APOP alice 0123456789abcdef0123456789abcdef", b"TOP 1 0", b"TOP 1 99", b"RETR 1",
    b"DELE 1", b"DELE 0", b"DELE 4294967296", b"RETR -1", b"LIST 00001", b"TOP 1 x",
])
arguments = st.binary(max_size=40).filter(lambda b: b"\n" not in b)
line = st.one_of(commands, st.tuples(commands, arguments).map(lambda t: t[0] + b" " + t[1]),
                 arguments, st.binary(max_size=300).filter(lambda b: b"\n" not in b))
eol = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n"])
session_input = st.lists(st.tuples(line, eol).map(b"".join), max_size=25).map(b"".join)
login = (b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")


def check_output(out):
    assert R.INTERNAL not in out, out[-400:]
    for marker in LEAKS:
        assert marker not in out, out[-400:]
    assert out.endswith(b"\r\n")


@fuzz_settings(250)
@given(st.one_of(session_input, st.binary(max_size=2000), st.sampled_from(corpus("pop3"))),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=8), st.booleans())
@example(b"USER a\r\n" + b"x" * 300 + b"\r\nNOOP\r\n", [], False)
def test_any_input_any_segmentation(data, cuts, logged_in):
    prefix = login if logged_in else b""
    data = prefix + data
    out, session, realm = run_session([data], MESSAGES)
    check_output(out)
    assert not realm.locked                       # released however the session ended
    # Same bytes, other segmentation: same replies.  (Overlong lines are
    # the known exception, tested below.)
    if max((len(l) for l in data.split(b"\n")), default=0) < 250:
        out2, _, _ = run_session(split(data, cuts), MESSAGES)
        assert out2 == out


@fuzz_settings(250)
@given(session_input)
def test_nobody_logs_in_without_the_password(data):
    assume(PASSWORD.encode() not in data and b64(PASSWORD.encode())[:12] not in data)
    ctx = make_context()
    session, transport = open_session(ctx)
    session.dataReceived(data)
    ctx.clock.advance(100)
    assert session.state != TRANSACTION
    assert not ctx.realm.locked


@fuzz_settings(200)
@given(st.one_of(session_input, st.just(login), st.just(b"AUTH PLAIN " + b64(
    b"\0" + USER.encode() + b"\0" + PASSWORD.encode()) + b"\r\n")))
def test_no_credentials_checked_before_tls(data):
    """On a STLS listener that requires TLS, credentials never reach the source."""
    assume(b"STLS" not in data.upper())
    ctx = make_context()
    calls = []
    for name in ("verifyPassword", "lookupSecret", "lookupUser"):
        original = getattr(ctx.source, name)
        setattr(ctx.source, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    session, transport = open_session(ctx, tls="starttls", cleartext=False)
    session.dataReceived(data)
    ctx.clock.advance(100)
    assert calls == []
    assert session.state != TRANSACTION


@fuzz_settings(200)
@given(session_input)
@example(login + b"STAT\r\n")
def test_nothing_pipelined_after_stls_is_answered(tail):
    ctx = make_context()
    session, transport = open_session(ctx, tls="starttls", cleartext=False)
    transport.clear()
    session.dataReceived(b"STLS\r\n" + tail)
    ctx.clock.advance(1)          # penalties, not the idle timeout
    assert transport.value() == R.STLS_READY + b"\r\n"
    assert session.secure and session.state != TRANSACTION


def test_known_login_reaches_transaction():
    """The positive case next to the negative ones above."""
    out, session, _ = run_session([login + b"STAT\r\n"], MESSAGES, end=False)
    assert session.state == TRANSACTION
    assert b"+OK 4 " in out


# An overlong line costs one strike however it is cut into segments
# (securepop.protocol.session.LineBuffer), not one per 256 bytes.
def test_overlong_line_costs_the_same_whatever_the_segmentation():
    data = b"NOOP " + b"x" * 1000 + b"\r\nCAPA\r\n"
    whole, _, _ = run_session([data])
    bytewise, _, _ = run_session([data[i:i + 1] for i in range(len(data))])
    assert whole.count(R.LINE_TOO_LONG) == 1
    assert bytewise == whole


def test_top_on_a_tcp_transport_sends_exactly_one_reply():
    out, _, _ = run_session([login + b"TOP 1 0\r\nRETR 3\r\nNOOP\r\n"], MESSAGES, sync_first=True)
    assert R.INTERNAL not in out
    assert out.endswith(b"+OK\r\n")


def test_top_on_a_tls_transport_sends_exactly_one_reply():
    out, _, _ = run_session([login + b"TOP 1 0\r\nRETR 3\r\nNOOP\r\n"], MESSAGES)
    assert R.INTERNAL not in out
    assert out.endswith(b".\r\n+OK\r\n")


class MaildropMachine(RuleBasedStateMachine):
    """A logged-in session against a model of RFC 1939's maildrop."""

    @initialize(count=st.integers(min_value=0, max_value=6))
    def login(self, count):
        self.ctx = make_context()
        self.stored = [b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(count)]
        self.ctx.realm.boxes[USER] = list(self.stored)
        self.session, self.transport = open_session(self.ctx)
        self.marked = set()
        self.ended = False
        assert b"+OK Logged in, %d messages" % count in self.send(login)

    def send(self, data):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.transport.clear()
        self.session.dataReceived(data)
        self.transport.pump()
        self.ctx.clock.advance(0)
        if self.transport.disconnecting and not self.ended:
            self.session.connectionLost(Failure(ConnectionDone()))
        return self.transport.value()

    def reply(self, command):
        out = self.send(command + b"\r\n")
        check_output(out)
        return out

    @precondition(lambda self: not self.ended)
    @rule(n=st.integers(min_value=-2, max_value=9))
    def dele(self, n):
        out = self.reply(b"DELE %d" % n)
        if 1 <= n <= len(self.stored) and (n - 1) not in self.marked:
            assert out.startswith(b"+OK")
            self.marked.add(n - 1)
        else:
            assert out.startswith(b"-ERR")

    @precondition(lambda self: not self.ended)
    @rule()
    def rset(self):
        assert self.reply(b"RSET").startswith(b"+OK")
        self.marked.clear()

    @precondition(lambda self: not self.ended)
    @rule()
    def stat(self):
        live = [i for i in range(len(self.stored)) if i not in self.marked]
        out = self.reply(b"STAT")
        assert out.startswith(b"+OK %d " % len(live))

    @precondition(lambda self: not self.ended)
    @rule(n=st.integers(min_value=0, max_value=8))
    def retr(self, n):
        out = self.reply(b"RETR %d" % n)
        if 1 <= n <= len(self.stored) and (n - 1) not in self.marked:
            assert out.startswith(b"+OK")
            assert out.endswith(b".\r\n")
            assert b"body %d" % (n - 1) in out
        else:
            assert out.startswith(b"-ERR")

    @precondition(lambda self: not self.ended)
    @rule()
    def listing(self):
        out = self.reply(b"UIDL")
        listed = {int(l.split()[0]) - 1 for l in out.split(b"\r\n")[1:] if l[:1].isdigit()}
        assert listed == set(range(len(self.stored))) - self.marked

    @precondition(lambda self: not self.ended)
    @rule()
    def quit(self):
        out = self.reply(b"QUIT")
        assert out.endswith(b"+OK Bye\r\n")
        self.ended = True
        kept = [m for i, m in enumerate(self.stored) if i not in self.marked]
        assert self.ctx.realm.boxes[USER] == kept
        assert sorted(self.ctx.realm.removed) == sorted(self.stored[i] for i in self.marked)

    @precondition(lambda self: not self.ended)
    @rule()
    def disconnect(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.session.connectionLost(Failure(ConnectionLost()))
        self.ended = True
        assert self.ctx.realm.boxes[USER] == self.stored
        assert self.ctx.realm.removed == []

    @precondition(lambda self: self.ended)
    @rule()
    def input_after_the_end_is_ignored(self):
        self.transport.clear()
        self.session.dataReceived(b"STAT\r\nDELE 1\r\nQUIT\r\n")
        assert self.transport.value() == b""

    @invariant()
    def lock_released_when_ended(self):
        if getattr(self, "ended", False):
            assert USER not in self.ctx.realm.locked


MaildropMachine.TestCase.settings = fuzz_settings(60, stateful_step_count=25)
test_maildrop_semantics = MaildropMachine.TestCase
