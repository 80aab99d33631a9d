"""The server secret: made once 0600, refused when exposed, keys per purpose."""

import hashlib
import hmac
import multiprocessing
import os
import stat
from types import SimpleNamespace

import pytest

from securepop import serversecret
from securepop.errors import ConfigError
from securepop.serversecret import SECRET_BYTES, SECRET_FILE, ServerSecret


def test_first_start_makes_a_private_secret_and_later_starts_read_it(tmp_path):
    old = os.umask(0)              # a careless umask does not leak the secret
    try:
        first = ServerSecret.load_or_create(tmp_path / SECRET_FILE)
    finally:
        os.umask(old)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == SECRET_BYTES
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]   # no temporary left
    again = ServerSecret.load_or_create(path)
    assert again.derive(b"scram-fake-salt") == first.derive(b"scram-fake-salt")
    assert first.path == path


def test_another_data_dir_has_another_secret(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerSecret.load_or_create(tmp_path / "a" / SECRET_FILE)
    b = ServerSecret.load_or_create(tmp_path / "b" / SECRET_FILE)
    assert a.derive(b"x") != b.derive(b"x")


def test_derive_is_hmac_sha256_of_the_purpose():
    secret = ServerSecret(b"s" * 32)
    assert secret.derive(b"scram-fake-salt") == hmac.new(
        b"s" * 32, b"scram-fake-salt", hashlib.sha256).digest()
    assert secret.derive(b"auth-cache") != secret.derive(b"scram-fake-salt")
    with pytest.raises(ValueError):
        secret.derive(b"")
    with pytest.raises(ValueError):
        secret.derive("text")
    with pytest.raises(ValueError):
        ServerSecret(b"short")


def test_repr_does_not_show_the_secret():
    secret = ServerSecret(b"\x01" * 32)
    assert "\\x01" not in repr(secret) and "0101" not in repr(secret)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_a_secret_others_can_access_is_refused(tmp_path, mode):
    path = tmp_path / SECRET_FILE
    ServerSecret.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as e:
        ServerSecret.load_or_create(path, "/etc/securepop.toml")
    assert e.value.key == "server.data_dir"
    assert str(e.value.path) == "/etc/securepop.toml"
    assert "chmod 600" in e.value.reason and str(path) in e.value.reason
    path.chmod(0o600)              # the fix named works
    ServerSecret.load_or_create(path)


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_a_secret_of_the_wrong_size_is_refused_not_replaced(tmp_path, content):
    path = tmp_path / SECRET_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as e:
        ServerSecret.load_or_create(path)
    assert "remove it" in e.value.reason
    assert path.read_bytes() == content


def test_a_symlink_or_directory_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    ServerSecret.load_or_create(target)
    link = tmp_path / SECRET_FILE
    link.symlink_to(target)
    with pytest.raises(ConfigError):
        ServerSecret.load_or_create(link)
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError) as e:
        ServerSecret.load_or_create(directory)
    assert "not a regular file" in e.value.reason


def test_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        ServerSecret.load_or_create(tmp_path / "missing" / SECRET_FILE)
    assert "cannot create" in e.value.reason


def test_losing_the_race_keeps_the_winners_secret(tmp_path, monkeypatch):
    """Another worker links its secret between our check and our link."""
    path = tmp_path / SECRET_FILE
    winner = os.urandom(32)
    real_link = os.link

    def link(src, dst):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, winner)
        os.close(fd)
        return real_link(src, dst)

    monkeypatch.setattr(serversecret.os, "link", link)
    secret = ServerSecret.load_or_create(path)
    assert secret.derive(b"p") == ServerSecret(winner).derive(b"p")
    assert path.read_bytes() == winner
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]


def _derive_in_child(path, queue):
    queue.put(ServerSecret.load_or_create(path).derive(b"scram-fake-salt"))


def test_workers_starting_together_share_one_secret(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    path = tmp_path / SECRET_FILE
    children = [ctx.Process(target=_derive_in_child, args=(path, queue)) for _ in range(6)]
    for child in children:
        child.start()
    keys = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join(30)
    assert len(set(keys)) == 1
    assert keys[0] == ServerSecret.load_or_create(path).derive(b"scram-fake-salt")


def test_for_settings_uses_the_data_dir(tmp_path):
    settings = SimpleNamespace(data_path=tmp_path, path=None)
    secret = serversecret.for_settings(settings)
    assert secret.path == tmp_path / SECRET_FILE
    assert (tmp_path / SECRET_FILE).exists()
