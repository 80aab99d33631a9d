"""
Tests for L{securepop.mailstore.maildir}: RFC 1939 semantics on a Maildir.
"""

import os

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from securepop.errors import MailboxInUse
from securepop.interfaces import ISecureMailbox
from securepop.mailstore import maildir as maildirModule
from securepop.mailstore.delivery import deliver, ensureMaildir
from securepop.mailstore.maildir import (
    CommitIncomplete,
    MaildirMailbox,
    MaildirStore,
    MessageGone,
)
from securepop.mailstore.snapshot import SIZE_CACHE_NAME


def place(maildir, subdir, name, data, mtime):
    """Write a message file directly, as another MDA would, with a mtime."""
    path = os.path.join(maildir, subdir, name)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def maildir(tmp_path):
    path = str(tmp_path / "Maildir")
    ensureMaildir(path)
    return path


@pytest.fixture
def three(maildir):
    """A Maildir with three messages, m1 < m2 < m3 by delivery time."""
    place(maildir, "new", "1000.A.host", b"one\n", 1000)
    place(maildir, "cur", "2000.B.host:2,S", b"two\r\n", 2000)
    place(maildir, "new", "3000.C.host", b"three\n", 3000)
    return maildir


def contents(mailbox):
    out = []
    for i in range(len(mailbox.listMessages())):
        if mailbox.isDeleted(i):
            out.append(None)
            continue
        with mailbox.getMessage(i) as f:
            out.append(f.read())
    return out


def test_provides_interface(three):
    with MaildirMailbox.open(three) as mailbox:
        assert verifyObject(ISecureMailbox, mailbox)
    assert verifyObject(ISecureMailbox, MaildirStore().open(three))


def test_snapshot_order_and_exact_sizes(three):
    with MaildirMailbox.open(three) as mailbox:
        assert contents(mailbox) == [b"one\n", b"two\r\n", b"three\n"]
        # LF stored -> one octet more per line; CRLF stored -> as is.
        assert mailbox.listMessages() == [5, 5, 7]
        assert mailbox.listMessages(2) == 7


@pytest.mark.parametrize(
    "data, size",
    [
        (b"a\nb\n", 6),
        (b"a\r\nb\r\n", 6),
        (b"a\rb\n", 5),  # bare CR left alone
        (b"no newline", 12),  # CRLF appended
        (b"", 0),
        (b"x\r", 4),
        (b"\n\n\n", 6),
    ],
)
def test_sizes_match_streaming_rule(maildir, data, size):
    place(maildir, "new", "1.X.host", data, 1000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [size]


def test_same_mtime_ordered_by_name(maildir):
    for name in ("b", "c", "a"):
        place(maildir, "new", f"1000.{name}.host", name.encode() + b"\n", 1000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert contents(mailbox) == [b"a\n", b"b\n", b"c\n"]


def test_only_regular_visible_files_listed(maildir, tmp_path):
    place(maildir, "new", "1000.A.host", b"real\n", 1000)
    os.mkdir(os.path.join(maildir, "cur", "subdir"))
    os.mkdir(os.path.join(maildir, "new", "1001.dir.host"))
    place(maildir, "cur", ".hidden", b"hidden\n", 1000)
    place(maildir, "tmp", "1002.T.host", b"in progress\n", 1000)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0\n")
    os.symlink(secret, os.path.join(maildir, "cur", "1003.L.host:2,"))
    with MaildirMailbox.open(maildir) as mailbox:
        assert contents(mailbox) == [b"real\n"]


@pytest.mark.parametrize("bad", [-1, 3, 99, True, "1", None, 1.0])
def test_invalid_indices_raise_index_error(three, bad):
    with MaildirMailbox.open(three) as mailbox:
        for call in (mailbox.getMessage, mailbox.getUidl, mailbox.deleteMessage,
                     mailbox.isDeleted, mailbox.listMessages):
            if bad is None and call == mailbox.listMessages:
                continue
            with pytest.raises(IndexError):
                call(bad)
        assert mailbox.listMessages() == [5, 5, 7]  # nothing marked


def test_dele_marks_only(three):
    with MaildirMailbox.open(three) as mailbox:
        mailbox.deleteMessage(1)
        assert mailbox.isDeleted(1) and not mailbox.isDeleted(0)
        assert mailbox.listMessages() == [5, 0, 7]
        assert mailbox.listMessages(1) == 0
        with pytest.raises(IndexError):
            mailbox.getMessage(1)
        with pytest.raises(IndexError):
            mailbox.getUidl(1)
        with pytest.raises(IndexError):
            mailbox.deleteMessage(1)  # already deleted
        # the numbering of the others does not move
        assert mailbox.getMessage(2).read() == b"three\n"
        assert os.path.exists(os.path.join(three, "cur", "2000.B.host:2,S"))


def test_rset_restores_numbering(three):
    with MaildirMailbox.open(three) as mailbox:
        uidls = [mailbox.getUidl(i) for i in range(3)]
        mailbox.deleteMessage(0)
        mailbox.deleteMessage(2)
        mailbox.undeleteMessages()
        assert mailbox.listMessages() == [5, 5, 7]
        assert [mailbox.getUidl(i) for i in range(3)] == uidls
        assert contents(mailbox) == [b"one\n", b"two\r\n", b"three\n"]


def test_commit_removes_only_marked(three):
    mailbox = MaildirMailbox.open(three)
    mailbox.deleteMessage(0)
    mailbox.deleteMessage(2)
    results = []
    mailbox.commit().addCallback(results.append)
    assert results == [2]
    mailbox.release()
    assert sorted(os.listdir(os.path.join(three, "new"))) == []
    assert os.listdir(os.path.join(three, "cur")) == ["2000.B.host:2,S"]
    with MaildirMailbox.open(three) as again:
        assert contents(again) == [b"two\r\n"]


def test_sync_is_commit(three):
    mailbox = MaildirMailbox.open(three)
    mailbox.deleteMessage(1)
    mailbox.sync()
    mailbox.release()
    with MaildirMailbox.open(three) as again:
        assert contents(again) == [b"one\n", b"three\n"]


def test_release_without_commit_removes_nothing(three):
    mailbox = MaildirMailbox.open(three)
    for i in range(3):
        mailbox.deleteMessage(i)
    mailbox.release()
    mailbox.release()  # idempotent
    with MaildirMailbox.open(three) as again:
        assert contents(again) == [b"one\n", b"two\r\n", b"three\n"]


def test_commit_after_release_refused(three):
    mailbox = MaildirMailbox.open(three)
    mailbox.deleteMessage(0)
    mailbox.release()
    failures = []
    mailbox.commit().addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)
    assert os.path.exists(os.path.join(three, "new", "1000.A.host"))


def test_commit_twice_removes_once(three):
    with MaildirMailbox.open(three) as mailbox:
        mailbox.deleteMessage(0)
        first, second = [], []
        mailbox.commit().addCallback(first.append)
        mailbox.commit().addCallback(second.append)
        assert (first, second) == ([1], [0])


def test_commit_missing_file_is_fine(three):
    with MaildirMailbox.open(three) as mailbox:
        mailbox.deleteMessage(0)
        mailbox.deleteMessage(1)
        os.unlink(os.path.join(three, "new", "1000.A.host"))
        results = []
        mailbox.commit().addCallback(results.append)
        assert results == [1]
    assert os.listdir(os.path.join(three, "cur")) == []


def test_commit_failure_reported(three, monkeypatch):
    def refuse(path, *a, **kw):
        raise PermissionError(13, "denied", path)

    with MaildirMailbox.open(three) as mailbox:
        mailbox.deleteMessage(0)
        monkeypatch.setattr(os, "unlink", refuse)
        failures = []
        mailbox.commit().addErrback(failures.append)
        monkeypatch.undo()
    assert failures[0].check(CommitIncomplete)
    assert failures[0].value.failed == 1
    assert os.path.exists(os.path.join(three, "new", "1000.A.host"))


def test_commit_moves_to_trash(three):
    mailbox = MaildirMailbox.open(three, trash=".Trash")
    mailbox.deleteMessage(0)
    mailbox.deleteMessage(1)
    mailbox.commit()
    mailbox.release()
    trashCur = os.path.join(three, ".Trash", "cur")
    assert sorted(os.listdir(trashCur)) == ["1000.A.host:2,", "2000.B.host:2,S"]
    with open(os.path.join(trashCur, "1000.A.host:2,"), "rb") as f:
        assert f.read() == b"one\n"
    with MaildirMailbox.open(three, trash=".Trash") as again:
        assert contents(again) == [b"three\n"]  # the trash folder is not listed


def test_trash_never_overwrites(three):
    trash = os.path.join(three, ".Trash")
    ensureMaildir(trash)
    place(trash, "cur", "1000.A.host:2,", b"older\n", 10)
    with MaildirMailbox.open(three, trash=trash) as mailbox:
        mailbox.deleteMessage(0)
        mailbox.commit()
    names = os.listdir(os.path.join(trash, "cur"))
    assert len(names) == 2
    datas = sorted(open(os.path.join(trash, "cur", n), "rb").read() for n in names)
    assert datas == [b"older\n", b"one\n"]


def test_mail_arriving_during_session_kept(three):
    mailbox = MaildirMailbox.open(three)
    for i in range(3):
        mailbox.deleteMessage(i)
    arrived = deliver(three, b"late\n")
    assert len(mailbox.listMessages()) == 3  # snapshot
    mailbox.commit()
    mailbox.release()
    with MaildirMailbox.open(three) as again:
        assert contents(again) == [b"late\n"]
        assert again.getUidl(0) == arrived.split(",")[0].encode()


def test_second_open_in_use_until_released(three):
    first = MaildirMailbox.open(three)
    with pytest.raises(MailboxInUse):
        MaildirMailbox.open(three)
    first.release()
    MaildirMailbox.open(three).release()


def test_uidl_stable_across_flag_rename(three):
    with MaildirMailbox.open(three) as mailbox:
        before = [mailbox.getUidl(i) for i in range(3)]
        # another program (an MUA) flags message 1 and moves message 0 to cur/
        os.rename(os.path.join(three, "cur", "2000.B.host:2,S"),
                  os.path.join(three, "cur", "2000.B.host:2,RS"))
        os.rename(os.path.join(three, "new", "1000.A.host"),
                  os.path.join(three, "cur", "1000.A.host:2,S"))
        assert mailbox.getMessage(1).read() == b"two\r\n"  # found again
        assert mailbox.getMessage(0).read() == b"one\n"
        mailbox.deleteMessage(1)
        mailbox.commit()
    assert before == [b"1000.A.host", b"2000.B.host", b"3000.C.host"]
    with MaildirMailbox.open(three) as again:
        assert [again.getUidl(i) for i in range(2)] == [before[0], before[2]]


def test_uidl_ignores_size_fields(maildir):
    place(maildir, "cur", "1000.A.host,S=4,W=5:2,S", b"one\n", 1000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.getUidl(0) == b"1000.A.host"


def test_uidls_unique_in_snapshot(maildir):
    # two files with one unique base (a broken MDA): UIDLs still differ
    place(maildir, "new", "1000.A.host", b"a\n", 1000)
    place(maildir, "cur", "1000.A.host:2,S", b"b\n", 1001)
    place(maildir, "cur", "bad name\x01:2,", b"c\n", 1002)
    with MaildirMailbox.open(maildir) as mailbox:
        uidls = [mailbox.getUidl(i) for i in range(3)]
    assert len(set(uidls)) == 3
    for uidl in uidls:
        assert 1 <= len(uidl) <= 70 and all(0x21 <= o <= 0x7E for o in uidl)


def test_vanished_message(three):
    with MaildirMailbox.open(three) as mailbox:
        os.unlink(os.path.join(three, "new", "3000.C.host"))
        with pytest.raises(MessageGone):
            mailbox.getMessage(2)
        with pytest.raises(IndexError):  # MessageGone is an IndexError
            mailbox.getMessage(2)
        assert mailbox.getMessage(0).read() == b"one\n"


def test_symlink_swapped_in_after_snapshot_not_followed(three, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret\n")
    with MaildirMailbox.open(three) as mailbox:
        path = os.path.join(three, "new", "3000.C.host")
        os.unlink(path)
        os.symlink(secret, path)
        with pytest.raises(MessageGone):
            mailbox.getMessage(2)


def test_create_false_on_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        MaildirMailbox.open(str(tmp_path / "none"), create=False)
    assert not (tmp_path / "none").exists()


def test_create_true_makes_private_maildir(tmp_path):
    path = tmp_path / "a" / "Maildir"
    with MaildirMailbox.open(str(path)) as mailbox:
        assert mailbox.listMessages() == []
    for sub in ("tmp", "new", "cur"):
        assert (path / sub).stat().st_mode & 0o777 == 0o700


def test_lock_refreshed_on_clock_and_stopped_at_release(three):
    clock = Clock()
    mailbox = MaildirMailbox.open(three, clock=clock, staleAfter=600)
    lockPath = os.path.join(three, "securepop.lock")
    os.utime(lockPath, (1, 1))
    clock.advance(99)
    assert os.stat(lockPath).st_mtime == 1
    clock.advance(1)
    assert os.stat(lockPath).st_mtime > 1
    mailbox.release()
    assert clock.getDelayedCalls() == []
    assert os.path.getsize(lockPath) == 0        # flock: kept, emptied


def test_dotlock_file_removed_at_release(three):
    mailbox = MaildirMailbox.open(three, lockMethod="dotlock")
    lockPath = os.path.join(three, "securepop.lock")
    assert os.path.getsize(lockPath) > 0
    mailbox.release()
    assert not os.path.exists(lockPath)


def count_opens(monkeypatch):
    opened = []
    realOpen = os.open

    def countingOpen(path, *args, **kwargs):
        opened.append(path)
        return realOpen(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", countingOpen)
    return opened


def test_size_cache_for_ten_thousand_messages(maildir, monkeypatch):
    for i in range(10_000):
        place(maildir, "cur", f"{1000 + i}.M{i}.host:2,S", b"line\n" * (i % 7), 1000 + i)
    opened = count_opens(monkeypatch)
    with MaildirMailbox.open(maildir) as mailbox:
        sizes = mailbox.listMessages()
    assert len(opened) >= 10_000  # first login reads every file once
    assert sizes[:3] == [0, 6, 12]
    assert os.path.exists(os.path.join(maildir, SIZE_CACHE_NAME))

    del opened[:]
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == sizes
    assert len(opened) < 10  # lock, cache, directories: no message file

    # a changed file (new mtime) is counted again, only that one
    place(maildir, "cur", "1003.M3.host:2,S", b"x\n", 5)
    del opened[:]
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages(0) == 3
    assert sum(1 for p in opened if "1003.M3.host" in os.fspath(p)) == 1


def test_size_memo_spares_the_cache_file_and_follows_changes(maildir, monkeypatch):
    place(maildir, "cur", "1000.A.host:2,", b"a\nb\n", 1000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6]
    opened = count_opens(monkeypatch)
    with MaildirMailbox.open(maildir) as mailbox:      # second login: from memory
        assert mailbox.listMessages() == [6]
    assert not [p for p in opened if SIZE_CACHE_NAME in os.fspath(p) or "1000.A" in os.fspath(p)]
    # a file rewritten in place (other size and mtime) is counted again
    place(maildir, "cur", "1000.A.host:2,", b"a\nb\nc\n", 2000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [9]


def test_size_fields_in_name_avoid_reading(maildir, monkeypatch):
    deliver(maildir, b"a\nb\n")
    opened = count_opens(monkeypatch)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6]
    assert not [p for p in opened if "/new/" in os.fspath(p)]


def test_wrong_size_field_not_trusted(maildir):
    # S= does not match the file: W= is ignored and the file counted
    place(maildir, "cur", "1000.A.host,S=999,W=1:2,", b"a\nb\n", 1000)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6]


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"version": 2, "sizes": []}',
                                     b'{"version": 2, "sizes": {"1000.A.host": [4, 0, "x"]}}'])
def test_corrupt_size_cache_ignored(maildir, garbage):
    place(maildir, "cur", "1000.A.host:2,", b"a\nb\n", 1000)
    with open(os.path.join(maildir, SIZE_CACHE_NAME), "wb") as f:
        f.write(garbage)
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6]


def test_lying_size_cache_entry_for_other_mtime_ignored(maildir):
    place(maildir, "cur", "1000.A.host:2,", b"a\nb\n", 1000)
    with open(os.path.join(maildir, SIZE_CACHE_NAME), "w") as f:
        f.write('{"version": 2, "sizes": {"1000.A.host": [4, 1, 77]}}')
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6]


def test_open_failure_releases_lock(three, monkeypatch):
    def boom(*a, **kw):
        raise OSError("disk gone")

    monkeypatch.setattr(maildirModule, "scanMaildir", boom)
    with pytest.raises(OSError):
        MaildirMailbox.open(three)
    monkeypatch.undo()
    MaildirMailbox.open(three).release()


def test_runner_used_for_commit(three):
    calls = []

    def runner(function, *args):
        calls.append(function)
        from twisted.internet import defer
        return defer.maybeDeferred(function, *args)

    with MaildirMailbox.open(three, runner=runner) as mailbox:
        mailbox.deleteMessage(0)
        mailbox.commit()
    assert len(calls) == 1
    assert not os.path.exists(os.path.join(three, "new", "1000.A.host"))


def test_store_login_inline_with_refresh(tmp_path):
    clock = Clock()
    store = MaildirStore("mail/{user}/Maildir", str(tmp_path), reactor=clock)
    deliver(str(store.pathFor("alice")), b"hi\n")
    results = []
    store.login("alice").addCallback(results.append)
    mailbox = results[0]
    assert verifyObject(ISecureMailbox, mailbox)
    assert mailbox.listMessages() == [4]
    assert clock.getDelayedCalls()  # lock refresh scheduled
    failures = []
    store.login("alice").addErrback(failures.append)
    assert failures[0].check(MailboxInUse)
    mailbox.release()
    assert clock.getDelayedCalls() == []


def test_store_login_hostile_name_fails(tmp_path):
    store = MaildirStore("mail/{user}/Maildir", str(tmp_path), reactor=Clock())
    failures = []
    store.login("../../etc").addErrback(failures.append)
    assert failures[0].check(ValueError)
    assert not (tmp_path / "etc").exists()


def test_store_explicit_path_confined(tmp_path):
    store = MaildirStore("mail/{user}/Maildir", str(tmp_path))
    inside = tmp_path / "mail" / "shared" / "Maildir"
    assert store.pathFor("alice", str(inside)) == inside.resolve()
    with pytest.raises(ValueError):
        store.pathFor("alice", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError):
        store.pathFor("alice", str(tmp_path / "mail" / ".." / "x"))


def test_store_login_cancelled_before_open_finishes_releases(tmp_path, monkeypatch):
    from twisted.internet import defer

    store = MaildirStore("mail/{user}/Maildir", str(tmp_path), reactor=Clock())
    pending = []

    def slowThread(function, *args):
        d = defer.Deferred()
        pending.append((d, function, args))
        return d

    monkeypatch.setattr(store, "_inThread", slowThread)
    outcome = []
    login = store.login("alice")
    login.addErrback(outcome.append)
    login.cancel()  # the client disconnected meanwhile
    d, function, args = pending.pop()
    d.callback(function(*args))  # the thread finishes later
    assert outcome[0].check(defer.CancelledError)
    MaildirMailbox.open(str(store.pathFor("alice"))).release()  # not left locked


@pytest_twisted.inlineCallbacks
def test_store_with_real_threadpool(tmp_path):
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(1, 2)
    pool.start()
    try:
        store = MaildirStore("mail/{user}/Maildir", str(tmp_path), reactor=reactor,
                             threadpool=pool, trash=".Trash")
        deliver(str(store.pathFor("bob")), b"one\n")
        deliver(str(store.pathFor("bob")), b"two\n")
        mailbox = yield store.login("bob")
        mailbox.deleteMessage(0)
        removed = yield mailbox.commit()
        mailbox.release()
        assert removed == 1
        again = yield store.login("bob")
        assert [again.getMessage(0).read()] == [b"two\n"]
        again.release()
    finally:
        pool.stop()


def test_fifo_never_listed_nor_opened(three):
    os.mkfifo(os.path.join(three, "new", "500.F.host"))
    with MaildirMailbox.open(three) as mailbox:
        assert len(mailbox.listMessages()) == 3
        path = os.path.join(three, "new", "3000.C.host")
        os.unlink(path)
        os.mkfifo(path)  # swapped in after the snapshot: must not block
        with pytest.raises(MessageGone):
            mailbox.getMessage(2)


def test_old_tmp_files_cleaned_young_kept(maildir):
    import time as timeModule

    old = timeModule.time() - 37 * 3600
    place(maildir, "tmp", "1.dead.host", b"half", old)
    place(maildir, "tmp", "2.busy.host", b"in progress", timeModule.time())
    os.mkdir(os.path.join(maildir, "tmp", "adir"))
    os.utime(os.path.join(maildir, "tmp", "adir"), (old, old))
    MaildirMailbox.open(maildir).release()
    assert sorted(os.listdir(os.path.join(maildir, "tmp"))) == ["2.busy.host", "adir"]


def test_relocation_never_picks_another_message(maildir):
    # a broken MDA reused one unique name for two messages
    place(maildir, "new", "1000.A.host", b"first\n", 1000)
    place(maildir, "cur", "1000.A.host:2,S", b"second!\n", 1001)
    with MaildirMailbox.open(maildir) as mailbox:
        os.unlink(os.path.join(maildir, "new", "1000.A.host"))
        with pytest.raises(MessageGone):
            mailbox.getMessage(0)
        mailbox.deleteMessage(0)
        mailbox.commit()
    assert os.listdir(os.path.join(maildir, "cur")) == ["1000.A.host:2,S"]


def test_package_exports():
    import securepop.mailstore as package

    for name in package.__all__:
        assert getattr(package, name) is not None
    assert package.MaildirMailbox is MaildirMailbox
    assert "MaildirStore" in package.__all__ and "deliver" in package.__all__


# -- where a login's open runs: the thread pool, or inline when known cheap ------------------------

class InlineReactor(Clock):
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class RecordingPool:
    """Runs 'thread' work at once and records it."""

    def __init__(self):
        self.calls = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.calls.append(getattr(f, "__name__", repr(f)))
        try:
            result = f(*args, **kwargs)
        except BaseException:
            from twisted.python.failure import Failure
            onResult(False, Failure())
        else:
            onResult(True, result)


def poolStore(tmp_path, **kw):
    pool = RecordingPool()
    store = MaildirStore("mail/{user}/Maildir", str(tmp_path), reactor=InlineReactor(),
                         threadpool=pool, **kw)
    return store, pool


def loginNow(store, user="alice"):
    results = []
    store.login(user).addBoth(results.append)
    assert len(results) == 1
    return results[0]


def test_first_open_in_thread_then_inline(tmp_path):
    store, pool = poolStore(tmp_path)
    box = store.pathFor("alice")
    deliver(str(box), b"one\n")
    place(str(box), "cur", "1000.A.host:2,", b"a\nb\n", 1000)    # no size in the name
    mailbox = loginNow(store)
    assert pool.calls == ["_openBlocking"] and mailbox.listMessages() == [6, 5]
    mailbox.release()
    mailbox = loginNow(store)
    assert pool.calls == ["_openBlocking"]                      # inline this time
    assert mailbox.listMessages() == [6, 5]
    assert mailbox.commit().result == 0 and pool.calls == ["_openBlocking"]  # nothing marked
    mailbox.release()


def test_unknown_size_goes_to_the_thread_and_leaves_no_lock(tmp_path):
    store, pool = poolStore(tmp_path)
    box = str(store.pathFor("alice"))
    deliver(box, b"one\n")
    loginNow(store).release()
    place(box, "new", "2000.B.host", b"x\n" * 10, 2000)          # arrived, size unknown
    mailbox = loginNow(store)
    assert pool.calls == ["_openBlocking", "_openBlocking"]
    assert mailbox.listMessages() == [30, 5]
    mailbox.deleteMessage(0)
    mailbox.commit()
    assert pool.calls[-1] == "_removeMarked"                   # deletions: in the thread
    mailbox.release()


def test_inline_refuses_a_held_lock(tmp_path):
    store, pool = poolStore(tmp_path)
    deliver(str(store.pathFor("alice")), b"one\n")
    first = loginNow(store)
    first.release()
    held = loginNow(store)                                      # inline
    second = loginNow(store)                                    # inline too: refused
    assert isinstance(second, Failure) and second.check(MailboxInUse)
    held.release()


@pytest.mark.parametrize("limit, messages", [(0, 1), (2, 3)])
def test_big_or_disabled_always_in_thread(tmp_path, limit, messages):
    store, pool = poolStore(tmp_path, inlineOpenMax=limit)
    box = str(store.pathFor("alice"))
    for i in range(messages):
        deliver(box, b"m\n")
    loginNow(store).release()
    loginNow(store).release()
    assert pool.calls == ["_openBlocking", "_openBlocking"]


def test_has_only_crlf_from_the_exact_size(maildir):
    place(maildir, "cur", "1000.A.host:2,", b"a\r\nb\r\n", 1000)    # CRLF only
    place(maildir, "cur", "1001.B.host:2,", b"a\nb\r\n", 1001)      # one bare LF
    place(maildir, "cur", "1002.C.host:2,", b"no line end", 1002)
    with MaildirMailbox.open(maildir) as mailbox:
        # the last one gets a final CRLF on the wire: sizes differ, no shortcut
        assert [mailbox.hasOnlyCRLF(i) for i in range(3)] == [True, False, False]
