"""The users file: argon2id hashes, per-mechanism secrets, atomic 0600 rewrites."""

import os
import stat

import pytest
from twisted.cred.error import UnauthorizedLogin
from zope.interface.verify import verifyObject

from securepop.auth import userfile
from securepop.errors import ConfigError
from securepop.interfaces import (
    CLEARTEXT_SECRET, ICredentialSource, NT_HASH, PLAINTEXT, SCRAM_SHA_256,
)
from securepop.sasl import secrets as derive


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire synchronously"
    return out[0]


@pytest.fixture
def path(tmp_path, monkeypatch):
    # Cheap argon2 parameters keep the unit tests fast; the format is the same.
    from argon2 import PasswordHasher

    monkeypatch.setattr(userfile, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
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
