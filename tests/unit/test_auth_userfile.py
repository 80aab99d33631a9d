"""The users file: argon2id hashes, per-mechanism secrets, atomic 0600 rewrites."""

import os
import stat

import pytest
from twisted.cred.error import UnauthorizedLogin
from zope.interface.verify import verifyObject

from securepop.auth import userfile
from securepop.errors import ConfigError
from securepop.mailstore.quota import Quota
from securepop.interfaces import (
    CLEARTEXT_SECRET, ICredentialSource, NT_HASH, PLAINTEXT, SCRAM_SHA_256,
)
from securepop import schemes as derive
from securepop.schemes import HashParameters


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire synchronously"
    return out[0]


@pytest.fixture
def path(tmp_path, monkeypatch):
    # Cheap argon2 parameters keep the unit tests fast; the format is the same.
    from argon2 import PasswordHasher

    monkeypatch.setattr(derive, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))
    return tmp_path / "users"


def test_add_stores_argon2id_and_only_needed_secrets(path):
    userfile.set_password(path, "alice", "pw one", {NT_HASH}, create=True)
    line = path.read_text()
    assert line.startswith("alice:$argon2id$")
    assert "pw one" not in line
    assert ":nt=" + derive.nt_hash("pw one").hex() in line
    assert "scram=" not in line and "secret=" not in line
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_kinds_follow_enabled_mechanisms():
    assert userfile.kinds_for_mechanisms(["PLAIN", "LOGIN"], False) == set()
    assert userfile.kinds_for_mechanisms(["NTLM"], False) == {NT_HASH}
    assert userfile.kinds_for_mechanisms(["SCRAM-SHA-256"], False) == {SCRAM_SHA_256}
    assert userfile.kinds_for_mechanisms(["PLAIN"], True) == {CLEARTEXT_SECRET}
    assert userfile.kinds_for_mechanisms(["CRAM-MD5"], False) == {CLEARTEXT_SECRET}


def test_add_twice_and_missing_user(path):
    userfile.set_password(path, "alice", "x", set(), create=True)
    with pytest.raises(KeyError):
        userfile.set_password(path, "alice", "y", set(), create=True)
    with pytest.raises(KeyError):
        userfile.set_password(path, "bob", "y", set(), create=False)
    with pytest.raises(KeyError):
        userfile.delete_user(path, "bob")
    userfile.delete_user(path, "alice")
    assert userfile.UsersFile(path).load() == {}


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a:b", "a b", "a\x00b",
                                  "a\nb", "x" * 256])
def test_hostile_names_refused(path, name):
    with pytest.raises(ValueError):
        userfile.set_password(path, name, "pw", set(), create=True)
    assert not path.exists()


def test_source_verifies_password(path):
    userfile.set_password(path, "alice", "right", set(), create=True)
    source = userfile.FileCredentialSource(path)
    verifyObject(ICredentialSource, source)
    assert PLAINTEXT in source.capabilities()
    assert result_of(source.verifyPassword("alice", b"right")).username == "alice"
    failure = result_of(source.verifyPassword("alice", b"wrong"))
    assert failure.check(UnauthorizedLogin)
    assert result_of(source.verifyPassword("nobody", b"right")).check(UnauthorizedLogin)


def test_source_secrets(path):
    userfile.set_password(path, "alice", "pw", {NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET},
                          create=True)
    userfile.set_password(path, "bob", "pw", set(), create=True)
    source = userfile.FileCredentialSource(path)
    record, nt = result_of(source.lookupSecret("alice", NT_HASH))
    assert nt == derive.nt_hash("pw")
    _, scram = result_of(source.lookupSecret("alice", SCRAM_SHA_256))
    expected = derive.scram_secret("pw", salt=scram.salt, iterations=scram.iterations)
    assert scram == expected
    _, secret = result_of(source.lookupSecret("alice", CLEARTEXT_SECRET))
    assert secret == b"pw"
    # bob was added before the mechanisms were enabled: a clear refusal.
    assert result_of(source.lookupSecret("bob", NT_HASH)).check(UnauthorizedLogin)
    assert result_of(source.lookupSecret("nobody", NT_HASH)).check(UnauthorizedLogin)


def test_source_rereads_changed_file(path):
    userfile.set_password(path, "alice", "pw", set(), create=True)
    source = userfile.FileCredentialSource(path)
    before = source.generation
    userfile.set_password(path, "carol", "pw", set(), create=True)
    assert result_of(source.lookupUser("carol")).username == "carol"
    assert source.generation != before


def test_malformed_file_is_reported_with_line(path):
    path.write_text("alice:$argon2id$v=19$x\nbroken line\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as e:
        userfile.UsersFile(path).load()
    assert e.value.line == 2


def test_unknown_field_refused(path):
    path.write_text("alice:$argon2id$v=19$x:evil=1\n")
    with pytest.raises(ConfigError, match="unknown field"):
        userfile.UsersFile(path).load()


def test_readable_by_others_refused(path):
    userfile.set_password(path, "alice", "pw", set(), create=True)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        userfile.FileCredentialSource(path)


def test_malformed_secret_is_a_refusal_not_a_crash(path):
    userfile.set_password(path, "alice", "pw", {NT_HASH, SCRAM_SHA_256}, create=True)
    text = path.read_text()
    nt = text.split(":nt=")[1].split(":")[0]
    path.write_text(text.replace(nt, "zz").replace("scram=", "scram=1,!!,"))
    source = userfile.FileCredentialSource(path)
    assert result_of(source.lookupSecret("alice", NT_HASH)).check(UnauthorizedLogin)
    assert result_of(source.lookupSecret("alice", SCRAM_SHA_256)).check(UnauthorizedLogin)


# -- hash parameters and rehash after login ----------------------------------------

from argon2 import extract_parameters  # noqa: E402

OLD = HashParameters(memory_kib=64, time_cost=1, parallelism=1)
NEW = HashParameters(memory_kib=128, time_cost=2, parallelism=1)


def params_of(path, name):
    p = extract_parameters(userfile.UsersFile(path).load()[name].password_hash)
    return HashParameters(p.memory_cost, p.time_cost, p.parallelism)


class QueuedRun:
    """A run_blocking double: jobs wait until the test runs them, in order."""

    def __init__(self):
        self.jobs = []

    def __call__(self, f, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_next(self, index=0):
        """Run the oldest job (or the one at C{index}); return what it returned."""
        f, args, d = self.jobs.pop(index)
        value = f(*args)
        d.callback(value)
        return value


def test_new_hashes_use_the_given_parameters(path):
    userfile.set_password(path, "alice", "pw", set(), create=True, params=NEW)
    assert params_of(path, "alice") == NEW
    userfile.set_password(path, "alice", "pw2", set(), create=False, params=OLD)
    assert params_of(path, "alice") == OLD
    entry = userfile.make_entry("bob", "pw", set(), NEW)
    assert "$m=128,t=2,p=1$" in entry.password_hash


def test_old_parameters_verify_and_are_rehashed_after_login(path):
    userfile.set_password(path, "alice", "right", {NT_HASH}, create=True, params=OLD)
    userfile.set_password(path, "bob", "other", set(), create=True, params=OLD)
    nt_before = userfile.UsersFile(path).load()["alice"].extras["nt"]
    source = userfile.FileCredentialSource(path, params=NEW)
    assert result_of(source.verifyPassword("alice", b"right")).username == "alice"
    assert params_of(path, "alice") == NEW
    assert params_of(path, "bob") == OLD                  # only the one who logged in
    users = userfile.UsersFile(path).load()
    assert users["alice"].extras["nt"] == nt_before       # other secrets kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The rewritten hash verifies, the wrong password still does not.
    assert result_of(source.verifyPassword("alice", b"right")).username == "alice"
    assert result_of(source.verifyPassword("alice", b"wrong")).check(UnauthorizedLogin)
    fresh = userfile.FileCredentialSource(path, params=NEW)
    assert result_of(fresh.verifyPassword("alice", b"right")).username == "alice"


def test_wrong_password_or_unknown_user_never_rehashes(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    before = path.read_bytes()
    source = userfile.FileCredentialSource(path, params=NEW)
    assert result_of(source.verifyPassword("alice", b"wrong")).check(UnauthorizedLogin)
    assert result_of(source.verifyPassword("nobody", b"right")).check(UnauthorizedLogin)
    assert path.read_bytes() == before


def test_hash_with_current_parameters_is_left_alone(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=NEW)
    before = path.stat()
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    d = source.verifyPassword("alice", b"right")
    run.run_next()
    assert result_of(d).username == "alice"
    assert run.jobs == []                                  # no rehash queued
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino,
                                                              before.st_mtime_ns)


def test_rehash_runs_off_the_reactor_and_does_not_delay_the_login(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    d = source.verifyPassword("alice", b"right")
    assert not d.called and len(run.jobs) == 1            # the verification
    run.run_next()
    assert result_of(d).username == "alice"                # answered already...
    assert params_of(path, "alice") == OLD
    assert [job[0] for job in run.jobs] == [userfile.rehash_entry]   # ...rehash queued
    # A second login while the rehash waits does not queue another one.
    d2 = source.verifyPassword("alice", b"right")
    run.run_next(-1)
    assert result_of(d2).username == "alice"
    assert [job[0] for job in run.jobs] == [userfile.rehash_entry]
    run.run_next()
    assert params_of(path, "alice") == NEW


def test_rehash_skipped_when_file_changed_meanwhile_and_no_entry_lost(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    d = source.verifyPassword("alice", b"right")
    run.run_next()
    assert result_of(d).username == "alice"
    # `securepop user add bob` lands between the login and its rehash.
    userfile.set_password(path, "bob", "pw", set(), create=True, params=NEW)
    assert run.run_next() == "changed"
    users = userfile.UsersFile(path).load()
    assert set(users) == {"alice", "bob"}
    assert params_of(path, "alice") == OLD
    # The next login rehashes, and bob stays.
    d = source.verifyPassword("alice", b"right")
    run.run_next()
    assert result_of(d).username == "alice"
    assert run.run_next() == "rehashed"
    assert set(userfile.UsersFile(path).load()) == {"alice", "bob"}
    assert params_of(path, "alice") == NEW


def test_rehash_skipped_when_the_password_changed_meanwhile(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    d = source.verifyPassword("alice", b"right")
    run.run_next()
    userfile.set_password(path, "alice", "changed", set(), create=False, params=OLD)
    assert run.run_next() == "changed"
    fresh = userfile.FileCredentialSource(path, params=OLD)
    assert result_of(fresh.verifyPassword("alice", b"changed")).username == "alice"
    assert result_of(fresh.verifyPassword("alice", b"right")).check(UnauthorizedLogin)


def test_rehash_does_not_wait_for_another_writer(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    before = path.read_bytes()
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    source.verifyPassword("alice", b"right")
    run.run_next()
    with userfile.locked(path):                            # `securepop user` at work
        assert run.run_next() == "busy"
    assert path.read_bytes() == before


def test_concurrent_user_add_waits_for_the_rehash_and_is_kept(path, monkeypatch):
    """A `user add` that starts while a rehash rewrites the file is never lost."""
    import threading
    import time

    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    source.verifyPassword("alice", b"right")
    run.run_next()
    adder = threading.Thread(target=userfile.set_password,
                             args=(path, "bob", "pw", set(), True, NEW))
    real_load = userfile.UsersFile.load

    def load_then_let_adder_start(self):
        users = real_load(self)
        if not adder.is_alive() and adder.ident is None:
            adder.start()
            time.sleep(0.3)            # the adder reads and hashes now, if it can
        return users

    monkeypatch.setattr(userfile.UsersFile, "load", load_then_let_adder_start)
    assert run.run_next() == "rehashed"
    adder.join(10)
    monkeypatch.setattr(userfile.UsersFile, "load", real_load)
    assert set(userfile.UsersFile(path).load()) == {"alice", "bob"}
    assert params_of(path, "alice") == NEW


def test_dummy_hash_for_unknown_users_uses_the_configured_parameters(path):
    userfile.set_password(path, "alice", "right", set(), create=True, params=NEW)
    run = QueuedRun()
    source = userfile.FileCredentialSource(path, run, params=NEW)
    d = source.verifyPassword("nobody", b"right")
    assert source._dummy is None                           # made in the thread, not here
    run.run_next()
    assert result_of(d).check(UnauthorizedLogin)
    p = extract_parameters(source._dummy)
    assert (p.memory_cost, p.time_cost, p.parallelism) == (128, 2, 1)


def test_user_stamp_changes_only_for_the_changed_user(path):
    userfile.set_password(path, "alice", "a", set(), create=True, params=OLD)
    userfile.set_password(path, "bob", "b", set(), create=True, params=OLD)
    source = userfile.FileCredentialSource(path, params=OLD)
    alice, bob = source.userStamp("alice"), source.userStamp("bob")
    assert alice and bob and alice != bob
    assert source.userStamp("nobody") == ""
    userfile.set_password(path, "carol", "c", set(), create=True, params=OLD)
    assert (source.userStamp("alice"), source.userStamp("bob")) == (alice, bob)
    userfile.set_password(path, "alice", "a2", set(), create=False, params=OLD)
    assert source.userStamp("alice") != alice
    assert source.userStamp("bob") == bob
    userfile.delete_user(path, "bob")
    assert source.userStamp("bob") == ""


def test_lock_file_is_private(path):
    userfile.set_password(path, "alice", "a", set(), create=True)
    lock = path.with_name("users.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_rehash_that_cannot_write_is_reported_once_and_login_still_works(path, monkeypatch):
    from twisted.logger import globalLogPublisher

    userfile.set_password(path, "alice", "right", set(), create=True, params=OLD)
    source = userfile.FileCredentialSource(path, params=NEW)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    calls = []

    def refuse(self, users):
        calls.append(1)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(userfile.UsersFile, "save", refuse)
    try:
        for _ in range(3):
            assert result_of(source.verifyPassword("alice", b"right")).username == "alice"
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert len(calls) == 1
    errors = [e for e in seen if e.get("securepop_event") == "auth.rehash"]
    assert len(errors) == 1 and errors[0]["sp_outcome"] == "error"
    assert "right" not in repr(errors)
    assert params_of(path, "alice") == OLD
# -- lookups by the normalised name (securepop.auth.usernames) --------------------------

def _rule(name):
    from securepop.auth.usernames import normalise_username
    from securepop.config import AuthSettings

    return normalise_username(name, AuthSettings(), "pop.example.com")


def _write_mixed_case(path):
    """A users file written before the CLI normalised names: 'Eve' as typed."""
    userfile.set_password(path, "Eve", "pw", {NT_HASH}, create=True)
    userfile.set_password(path, "dave@other.org", "pw", set(), create=True)


def test_source_finds_an_entry_under_its_normalised_name(path):
    _write_mixed_case(path)
    source = userfile.FileCredentialSource(path, normalise=_rule)
    assert result_of(source.verifyPassword("eve", b"pw")).username == "eve"
    assert result_of(source.verifyPassword("eve", b"wrong")).check(UnauthorizedLogin)
    record, nt = result_of(source.lookupSecret("eve", NT_HASH))
    assert (record.username, nt) == ("eve", derive.nt_hash("pw"))
    assert result_of(source.lookupUser("eve")).username == "eve"
    # lookups take the normalised name only, and a name no login can send
    # serves nothing
    for name in ("Eve", "dave@other.org", "dave"):
        assert result_of(source.lookupUser(name)).check(UnauthorizedLogin)
        assert result_of(source.verifyPassword(name, b"pw")).check(UnauthorizedLogin)


def test_source_without_the_rule_uses_names_as_written(path):
    _write_mixed_case(path)
    source = userfile.FileCredentialSource(path)
    assert result_of(source.lookupUser("eve")).check(UnauthorizedLogin)
    assert result_of(source.lookupUser("Eve")).username == "Eve"


def test_source_index_follows_the_file(path):
    userfile.set_password(path, "alice", "pw", set(), create=True)
    source = userfile.FileCredentialSource(path, normalise=_rule)
    assert result_of(source.lookupUser("carol")).check(UnauthorizedLogin)
    userfile.set_password(path, "Carol", "pw", set(), create=True)
    assert result_of(source.lookupUser("carol")).username == "carol"


def test_source_logs_entries_sharing_a_login_name(path):
    from twisted.logger import globalLogPublisher

    userfile.set_password(path, "Eve", "one", set(), create=True)
    userfile.set_password(path, "eve", "two", set(), create=True)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        source = userfile.FileCredentialSource(path, normalise=_rule)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    texts = [e.get("securepop_text", "") for e in seen]
    assert any("auth.users_ambiguous" in t and "entries=Eve,eve" in t and "serves=eve" in t
               for t in texts), texts
    # the entry written as logins send the name wins
    assert result_of(source.verifyPassword("eve", b"two")).username == "eve"
    assert result_of(source.verifyPassword("eve", b"one")).check(UnauthorizedLogin)


def test_quota_field_is_read_checked_and_reported_by_lookup_user(tmp_path):
    path = tmp_path / "users"
    userfile.set_password(path, "alice", "pw", set(), create=True)
    userfile.set_quota(path, "alice", Quota(1000, 7))
    entry = userfile.UsersFile(path).load()["alice"]
    assert entry.extras["quota"] == "1000,7"
    source = userfile.FileCredentialSource(path)
    records = []
    source.lookupUser("alice").addCallback(records.append)
    assert records[0].info == {"quota": "1000,7"}
    path.write_text(path.read_text().replace("quota=1000,7", "quota=much"))
    with pytest.raises(ConfigError) as e:
        userfile.UsersFile(path).load()
    assert "OCTETS" in e.value.reason
