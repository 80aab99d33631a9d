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
