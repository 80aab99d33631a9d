"""
Tests for L{securepop.mailstore.delivery}: no partial file is ever visible.
"""

import io
import os

import pytest

from securepop.mailstore import delivery as deliveryModule
from securepop.mailstore.delivery import deliver, ensureMaildir, uniqueName
from securepop.mailstore.maildir import MaildirMailbox
from securepop.mailstore.snapshot import nameFields


def listing(maildir):
    return {sub: sorted(os.listdir(os.path.join(maildir, sub))) for sub in ("tmp", "new", "cur")}


def test_deliver_bytes_exact_with_size_fields(tmp_path):
    maildir = str(tmp_path / "Maildir")
    data = b"Subject: t\n\n.dot\nline\r\nbare\rcr\nlast"
    name = deliver(maildir, data)
    assert listing(maildir) == {"tmp": [], "new": [name], "cur": []}
    with open(os.path.join(maildir, "new", name), "rb") as f:
        assert f.read() == data
    fields = nameFields(name)
    assert fields == {"S": len(data), "W": len(data) + 4 + 2}  # 4 bare LFs, no final LF
    assert ":" not in name and "/" not in name
    assert os.stat(os.path.join(maildir, "new", name)).st_mode & 0o777 == 0o600


def test_deliver_file_in_many_chunks(tmp_path):
    maildir = str(tmp_path / "Maildir")
    data = (b"x" * 1000 + b"\r") * 300 + b"\n"  # CR at chunk edges
    name = deliver(maildir, io.BytesIO(data))
    with open(os.path.join(maildir, "new", name), "rb") as f:
        assert f.read() == data
    assert nameFields(name)["W"] == len(data)  # the final LF follows a CR


def test_creates_private_maildir_and_parents(tmp_path):
    maildir = tmp_path / "mail" / "alice" / "Maildir"
    deliver(str(maildir), b"x\n")
    for path in (tmp_path / "mail", tmp_path / "mail" / "alice", maildir,
                 maildir / "tmp", maildir / "new", maildir / "cur"):
        assert path.stat().st_mode & 0o777 == 0o700


def test_existing_maildir_untouched(tmp_path):
    maildir = str(tmp_path / "Maildir")
    ensureMaildir(maildir)
    os.chmod(maildir, 0o750)
    deliver(maildir, b"x\n")
    assert os.stat(maildir).st_mode & 0o777 == 0o750


def test_maildir_path_a_file_refused(tmp_path):
    target = tmp_path / "Maildir"
    target.write_bytes(b"not a dir")
    with pytest.raises(OSError):
        deliver(str(target), b"x\n")
    assert target.read_bytes() == b"not a dir"


def test_failed_fsync_leaves_nothing(tmp_path, monkeypatch):
    maildir = str(tmp_path / "Maildir")
    ensureMaildir(maildir)

    def failingFsync(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failingFsync)
    with pytest.raises(OSError):
        deliver(maildir, b"lost?\n")
    monkeypatch.undo()
    assert listing(maildir) == {"tmp": [], "new": [], "cur": []}


def test_failed_read_leaves_nothing(tmp_path):
    maildir = str(tmp_path / "Maildir")

    class Broken(io.RawIOBase):
        calls = 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 2:
                raise OSError("client went away")
            return b"y" * 100

    with pytest.raises(OSError):
        deliver(maildir, Broken())
    assert listing(maildir) == {"tmp": [], "new": [], "cur": []}


def test_text_input_refused(tmp_path):
    maildir = str(tmp_path / "Maildir")
    with pytest.raises(TypeError):
        deliver(maildir, io.StringIO("text"))
    assert listing(maildir) == {"tmp": [], "new": [], "cur": []}


def test_never_replaces_an_existing_file(tmp_path, monkeypatch):
    maildir = str(tmp_path / "Maildir")
    ensureMaildir(maildir)
    monkeypatch.setattr(deliveryModule, "uniqueName", lambda now: "1.fixed.host")
    existing = os.path.join(maildir, "new", "1.fixed.host,S=2,W=3")
    with open(existing, "wb") as f:
        f.write(b"a\n")
    with pytest.raises(FileExistsError):
        deliver(maildir, b"b\n")
    with open(existing, "rb") as f:
        assert f.read() == b"a\n"
    assert listing(maildir)["tmp"] == []


def test_unique_names(tmp_path, monkeypatch):
    monkeypatch.setattr(deliveryModule.socket, "gethostname", lambda: "a/b:c,d")
    name = uniqueName()
    assert "/" not in name and ":" not in name and "," not in name
    assert name.endswith(".a\\057b\\072c\\054d")
    maildir = str(tmp_path / "Maildir")
    names = {deliver(maildir, b"%d\n" % i) for i in range(200)}
    assert len(names) == 200


def test_delivered_mail_seen_with_exact_size(tmp_path):
    maildir = str(tmp_path / "Maildir")
    deliver(maildir, b"a\nb\n")
    deliver(maildir, b"c\r\n")
    with MaildirMailbox.open(maildir) as mailbox:
        assert mailbox.listMessages() == [6, 3]
