"""
C{[mail] lock = "redis"}: the maildrop lease taken before the Maildir is
opened, refused for a second holder, given back once on every end path.
Sessions run in memory (L{tests.unit.protocol_harness}) over a memory
state store.
"""

import os

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from securepop import config
from securepop.errors import MailboxInUse, StateUnavailable
from securepop.interfaces import ISecureMailbox
from securepop.mailstore import lease as leasemodule
from securepop.mailstore.lease import LeasedMailbox, LeasedMaildirStore, local_method
from securepop.mailstore.lock import acquire as acquire_lock
from securepop.mailstore.maildir import LOCK_NAME, MaildirStore
from securepop.state.memory import MemoryStateStore
from securepop.state.outage import OutageGuard
from tests.unit.protocol_harness import PASSWORD, Harness, identity, login  # noqa: F401


class RecordingStore(MemoryStateStore):
    """A memory store that notes each maildrop call and what the disk held then."""

    def __init__(self, clock, maildir):
        super().__init__(clock)
        self.maildir = maildir
        self.calls = []
        self.fail_acquire = self.fail_release = None

    def acquire_maildrop(self, username, holder):
        self.calls.append(("acquire", username, holder))
        if self.fail_acquire is not None:
            return defer.fail(self.fail_acquire)
        return super().acquire_maildrop(username, holder)

    def release_maildrop(self, username, holder):
        # Whether this session's flock was dropped first, what the disk held.
        try:
            acquire_lock(os.path.join(self.maildir, LOCK_NAME), method="flock").release()
            free = True
        except MailboxInUse:
            free = False
        stored = sorted(os.listdir(os.path.join(self.maildir, "new")))
        self.calls.append(("release", username, holder, len(stored), free))
        if self.fail_release is not None:
            return defer.fail(self.fail_release)
        return super().release_maildrop(username, holder)

    def releases(self):
        return [c for c in self.calls if c[0] == "release"]


@pytest.fixture
def leased(tmp_path, identity):  # noqa: F811
    h = Harness(tmp_path, identity, listener_tls="implicit")
    h.state = RecordingStore(h.clock, str(h.maildir))
    realm = h.ctx.portal.realm
    realm.store = LeasedMaildirStore(realm.store, h.state, node="node-a")
    h.connect()
    h.lines()
    return h


def holder_of(h, user="alice"):
    return h.state._maildrops.get(user)


def flock_free(h):
    try:
        acquire_lock(os.path.join(h.maildir, LOCK_NAME), method="flock").release()
    except MailboxInUse:
        return False
    return True


def test_login_takes_the_lease_with_a_unique_holder_and_the_flock(leased):
    login(leased)
    holder = holder_of(leased)
    assert holder is not None and holder.startswith(f"node-a:{os.getpid()}:")
    assert not flock_free(leased)
    other = LeasedMaildirStore(None, None, node="node-a").newHolder()
    assert other != holder


def test_quit_gives_the_lease_back_once_after_the_deletions_and_the_flock(leased):
    login(leased)
    holder = holder_of(leased)
    assert leased.send(b"DELE 1\r\n")[0].startswith(b"+OK")
    assert leased.send(b"QUIT\r\n")[0].startswith(b"+OK")
    leased.session.connectionLost(Failure(ConnectionDone()))
    # Released once, with the flock already free and the message gone.
    assert leased.state.releases() == [("release", "alice", holder, 2, True)]
    assert holder_of(leased) is None
    assert flock_free(leased)


def test_a_lease_held_elsewhere_is_in_use_and_takes_no_flock(leased):
    leased.state.acquire_maildrop("alice", "node-b:1:x")
    assert leased.send(b"USER alice\r\n") == [b"+OK Send PASS"]
    reply = leased.send(b"PASS " + PASSWORD + b"\r\n")
    assert reply == [b"-ERR [IN-USE] Mailbox is locked by another session"]
    assert holder_of(leased) == "node-b:1:x"      # the other's lease untouched
    assert leased.state.releases() == []
    assert flock_free(leased)
    # Given back there: the next login here succeeds.
    leased.state.release_maildrop("alice", "node-b:1:x")
    leased.state.calls.clear()
    login(leased)
    assert holder_of(leased) is not None


def test_a_flock_held_on_this_host_is_in_use_and_gives_the_lease_back(leased):
    held = acquire_lock(os.path.join(leased.maildir, LOCK_NAME), method="flock")
    try:
        leased.send(b"USER alice\r\n")
        reply = leased.send(b"PASS " + PASSWORD + b"\r\n")
        assert reply == [b"-ERR [IN-USE] Mailbox is locked by another session"]
    finally:
        held.release()
    assert holder_of(leased) is None
    assert len(leased.state.releases()) == 1


def test_connection_lost_gives_the_lease_back_once(leased):
    login(leased)
    leased.send(b"DELE 1\r\n")
    leased.session.connectionLost(Failure(ConnectionDone()))
    leased.session.connectionLost(Failure(ConnectionDone()))
    # Nothing removed (no QUIT), the lease given back once.
    assert [c[3:] for c in leased.state.releases()] == [(3, True)]
    assert holder_of(leased) is None


def test_idle_timeout_gives_the_lease_back_once(leased):
    login(leased)
    leased.clock.advance(601)
    assert leased.transport.disconnecting
    leased.session.connectionLost(Failure(ConnectionDone()))
    assert len(leased.state.releases()) == 1
    assert holder_of(leased) is None


def test_state_unavailable_is_sys_temp_and_takes_no_flock(leased):
    leased.state.fail_acquire = StateUnavailable("redis did not answer")
    leased.send(b"USER alice\r\n")
    reply = leased.send(b"PASS " + PASSWORD + b"\r\n")
    assert reply == [b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later"]
    assert flock_free(leased)
    assert leased.state.releases() == []


class DownStore(MemoryStateStore):
    """A shared store that never answers."""

    kind = "redis"

    def acquire_maildrop(self, username, holder):
        return defer.fail(StateUnavailable("down"))

    release_maildrop = acquire_maildrop


@pytest.mark.parametrize("on_outage, expected", [
    ("refuse", b"-ERR [SYS/TEMP]"), ("local", b"+OK Logged in")])
def test_an_outage_refuses_or_answers_from_the_process(tmp_path, identity,  # noqa: F811
                                                       on_outage, expected):
    h = Harness(tmp_path, identity, listener_tls="implicit")
    local = MemoryStateStore(h.clock)
    guard = OutageGuard(DownStore(h.clock), local, on_outage, h.clock)
    realm = h.ctx.portal.realm
    realm.store = LeasedMaildirStore(realm.store, guard)
    h.connect()
    h.lines()
    h.send(b"USER alice\r\n")
    assert h.send(b"PASS " + PASSWORD + b"\r\n")[0].startswith(expected)
    if on_outage == "local":
        assert local._maildrops.get("alice") is not None    # this process's exclusion
        h.session.connectionLost(Failure(ConnectionDone()))
        assert local._maildrops == {}


def test_a_failed_release_is_logged_not_raised(leased):
    login(leased)
    leased.state.fail_release = StateUnavailable("down")
    leased.send(b"QUIT\r\n")
    leased.session.connectionLost(Failure(ConnectionDone()))
    assert len(leased.state.releases()) == 1


def test_cancelled_while_the_lease_is_asked_gives_it_back(tmp_path):
    answer = defer.Deferred()

    class Slow(MemoryStateStore):
        def acquire_maildrop(self, username, holder):
            return answer.addCallback(lambda _: super(Slow, self).acquire_maildrop(
                username, holder))

    state = Slow(None)
    store = LeasedMaildirStore(MaildirStore("mail/{user}/Maildir", str(tmp_path)), state)
    d = store.login("alice")
    d.cancel()
    d.addErrback(lambda f: None)
    answer.callback(None)
    assert state._maildrops == {}
    assert not os.path.isdir(tmp_path / "mail")     # never opened


def test_cancelled_while_opening_gives_mailbox_and_lease_back(tmp_path):
    state = MemoryStateStore(None)
    inner = MaildirStore("mail/{user}/Maildir", str(tmp_path))
    opening = defer.Deferred()
    inner.login = lambda username, explicit=None: opening
    store = LeasedMaildirStore(inner, state)
    d = store.login("alice")
    assert state._maildrops.get("alice") is not None
    d.cancel()
    d.addErrback(lambda f: None)
    released = []

    class Box:
        def release(self):
            released.append(state._maildrops.get("alice"))

    opening.callback(Box())
    assert released and released[0] is not None     # the flock first, then the lease
    assert state._maildrops == {}


def test_a_hostile_name_takes_no_lease(tmp_path):
    state = MemoryStateStore(None)
    store = LeasedMaildirStore(MaildirStore("mail/{user}/Maildir", str(tmp_path)), state)
    with pytest.raises(ValueError):
        store.login("../bob")
    assert state._maildrops == {}


def test_the_leased_mailbox_provides_the_interface_and_releases_once(tmp_path):
    state = MemoryStateStore(None)
    store = LeasedMaildirStore(MaildirStore("mail/{user}/Maildir", str(tmp_path),
                                            lockMethod="flock"), state)
    mailbox = store.login("alice").result
    assert isinstance(mailbox, LeasedMailbox)
    assert verifyObject(ISecureMailbox, mailbox)
    calls = []
    state.release_maildrop = lambda *a: calls.append(a) or defer.succeed(None)
    mailbox.release()
    mailbox.release()
    assert len(calls) == 1


def test_local_method():
    assert local_method("redis") == "flock"
    assert local_method("dotlock") == "dotlock"
    assert local_method("flock") == "flock"


def test_describe_names_the_lock(tmp_path):
    redis = config.parse('[mail]\nlock = "redis"\n[state]\nbackend = "redis"\nlease_ttl = 3\n',
                         data_dir=str(tmp_path))
    assert leasemodule.describe(redis).startswith("mail.lock = redis: a maildrop lease")
    assert "lease_ttl 3 s" in leasemodule.describe(redis)
    plain = config.parse("", data_dir=str(tmp_path))
    assert leasemodule.describe(plain).startswith("mail.lock = flock")


def test_quit_answers_once_the_lease_is_back(leased):
    """A client that reconnects at once after +OK must not meet its own lease."""
    login(leased)
    answer = defer.Deferred()
    leased.state.release_maildrop = lambda username, holder: answer
    assert leased.send(b"QUIT\r\n") == []
    assert flock_free(leased)                         # the local lock first
    answer.callback(None)
    assert leased.lines() == [b"+OK Bye"]
    assert leased.transport.disconnecting
