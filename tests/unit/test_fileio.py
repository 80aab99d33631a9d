"""
Tests for L{securepop.fileio}: a reader sees the old file or the whole new
one, never part of it; the mode is the final one from the first byte; a
failure leaves nothing behind.
"""

import os
import stat

import pytest

from securepop import fileio
from securepop.fileio import atomic_write


def entries(directory):
    return sorted(os.listdir(directory))


def test_writes_the_data_with_the_mode(tmp_path):
    target = tmp_path / "users"
    assert atomic_write(str(target), b"alice\n", 0o600) == str(target)
    assert target.read_bytes() == b"alice\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert entries(tmp_path) == ["users"]             # no temporary file left


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(str(tmp_path / "cert.pem"), b"pem", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cert.pem").stat().st_mode) == 0o644


def test_mode_is_set_before_the_first_byte(tmp_path, monkeypatch):
    modes = []
    real = fileio._write_all

    def spying(fd, data):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real(fd, data)

    monkeypatch.setattr(fileio, "_write_all", spying)
    atomic_write(str(tmp_path / "key.pem"), b"secret", 0o600)
    assert modes == [0o600]


def test_replaces_an_existing_file_whole(tmp_path):
    target = tmp_path / "cert.pem"
    target.write_bytes(b"old")
    inode = target.stat().st_ino
    atomic_write(str(target), b"new", 0o644)
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode              # a new file, renamed in


def test_creates_missing_directories_private(tmp_path):
    target = tmp_path / "data" / "tls" / "key.pem"
    atomic_write(str(target), b"k")
    assert target.read_bytes() == b"k"
    assert stat.S_IMODE((tmp_path / "data" / "tls").stat().st_mode) == 0o700


def test_accepts_a_path_object(tmp_path):
    atomic_write(tmp_path / "users", b"x\n")
    assert (tmp_path / "users").read_bytes() == b"x\n"


def test_failure_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "users"
    target.write_bytes(b"old\n")

    def chunks():
        yield b"half of "
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), chunks())
    assert target.read_bytes() == b"old\n"
    assert entries(tmp_path) == ["users"]


def test_failed_fsync_leaves_nothing(tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        atomic_write(str(tmp_path / "users"), b"x")
    monkeypatch.undo()
    assert entries(tmp_path) == []


def test_chunks_and_a_name_computed_after_writing(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    seen = []

    def chunks():
        for part in (b"a\n", b"bc\n"):
            seen.append(len(part))
            yield part

    def final(temp):
        return str(tmp_path / "new" / f"{os.path.basename(temp)},S={sum(seen)}")

    path = atomic_write(final, chunks(), replace=False, temp_dir=str(tmp_path / "tmp"),
                        temp_names=iter(["unique"]))
    assert path == str(tmp_path / "new" / "unique,S=5")
    assert (tmp_path / "new" / "unique,S=5").read_bytes() == b"a\nbc\n"
    assert entries(tmp_path / "tmp") == []


def test_a_computed_name_needs_the_temporary_directory(tmp_path):
    with pytest.raises(TypeError):
        atomic_write(lambda temp: str(tmp_path / "x"), b"x")
    assert entries(tmp_path) == []


def test_no_replace_never_replaces(tmp_path):
    target = tmp_path / "msg"
    target.write_bytes(b"first delivery")
    with pytest.raises(FileExistsError):
        atomic_write(str(target), b"second", replace=False)
    assert target.read_bytes() == b"first delivery"
    assert entries(tmp_path) == ["msg"]


def test_replace_does_replace(tmp_path):
    # The control of the test above: the default replaces.
    target = tmp_path / "msg"
    target.write_bytes(b"first")
    atomic_write(str(target), b"second")
    assert target.read_bytes() == b"second"


def test_no_replace_without_hard_links_renames(tmp_path, monkeypatch):
    def no_link(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "msg"
    atomic_write(str(target), b"m", replace=False)
    assert target.read_bytes() == b"m"
    target.write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        atomic_write(str(target), b"m2", replace=False)
    assert target.read_bytes() == b"kept"
    assert entries(tmp_path) == ["msg"]


def test_taken_temporary_names_are_skipped(tmp_path):
    (tmp_path / "taken").write_bytes(b"someone else's")
    atomic_write(str(tmp_path / "out"), b"x", temp_names=iter(["taken", "free"]))
    assert (tmp_path / "taken").read_bytes() == b"someone else's"
    assert entries(tmp_path) == ["out", "taken"]


def test_every_temporary_name_taken(tmp_path):
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(FileExistsError):
        atomic_write(str(tmp_path / "out"), b"x", temp_names=iter(["taken"]))
    assert entries(tmp_path) == ["taken"]


def test_temporary_file_is_never_followed_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    os.symlink(victim, tmp_path / "link")
    with pytest.raises(FileExistsError):
        atomic_write(str(tmp_path / "out"), b"x", temp_names=iter(["link"]))
    assert victim.read_bytes() == b"untouched"


def test_the_directory_is_fsynced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(fileio, "fsync_directory", synced.append)
    atomic_write(str(tmp_path / "users"), b"x")
    assert synced == [str(tmp_path)]
