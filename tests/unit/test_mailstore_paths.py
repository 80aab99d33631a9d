"""
Tests for L{securepop.mailstore.paths}: user names cannot leave the mail root.
"""

import os
import pathlib

import pytest

from securepop.mailstore.paths import checkUsername, mailRoot, mailbox_path

TEMPLATE = "mail/{user}/Maildir"


def test_relative_template(tmp_path):
    path = mailbox_path(TEMPLATE, str(tmp_path), "alice")
    assert path == (tmp_path / "mail" / "alice" / "Maildir").resolve()


def test_absolute_template_ignores_data_dir(tmp_path):
    path = mailbox_path(str(tmp_path / "vmail" / "{user}"), "/nonexistent", "bob@example.com")
    assert path == (tmp_path / "vmail" / "bob@example.com").resolve()


@pytest.mark.parametrize("name", ["alice", "a.b", "bob@example.com", "j\u00fcrgen",
                                  "x" * 255, "\u00e9" * 127, "-dash", "..x", "x.."])
def test_acceptable_names(tmp_path, name):
    path = mailbox_path(TEMPLATE, str(tmp_path), name)
    assert path.parent.name == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "../etc", "/etc/passwd", "a\\b", "a\0b", "a\nb", "a\rb",
     "tab\there", "\x7f", "\x85next", "x" * 256, "\u00e9" * 128, "\udcff", "a\u2028b",
     b"alice", None],
)
def test_hostile_names_refused(tmp_path, name):
    with pytest.raises(ValueError):
        mailbox_path(TEMPLATE, str(tmp_path), name)
    assert not (tmp_path / "mail").exists() or not any((tmp_path / "mail").iterdir())


def test_error_text_does_not_echo_name(tmp_path):
    with pytest.raises(ValueError) as info:
        checkUsername("../secret\n")
    assert "secret" not in str(info.value)


def test_symlink_out_of_root_refused(tmp_path):
    (tmp_path / "mail").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "mail" / "mallory")
    with pytest.raises(ValueError):
        mailbox_path(TEMPLATE, str(tmp_path), "mallory")


def test_symlinked_root_allowed(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    os.symlink(storage, tmp_path / "mail")
    path = mailbox_path(TEMPLATE, str(tmp_path), "alice")
    assert path == storage.resolve() / "alice" / "Maildir"


@pytest.mark.parametrize("template", ["mail/Maildir", "mail/{user}/../shared", "../{user}",
                                      "{user}"])
def test_unsafe_templates_refused(tmp_path, template):
    with pytest.raises(ValueError):
        mailbox_path(template, str(tmp_path), "alice")


def test_template_braces_are_not_format_fields(tmp_path):
    # str.format would evaluate this; plain replacement keeps it literal
    path = mailbox_path("mail/{user}/{0.__class__}", str(tmp_path), "alice")
    assert path.name == "{0.__class__}"


def test_mail_root(tmp_path):
    assert mailRoot(TEMPLATE, str(tmp_path)) == tmp_path / "mail"
    assert mailRoot("/srv/{user}/Maildir", "x") == pathlib.Path("/srv")
    assert mailRoot("/srv/u-{user}", "x") == pathlib.Path("/srv")


def test_resolve_path_matches_realpath(tmp_path):
    from securepop.mailstore.paths import resolvePath

    (tmp_path / "real" / "Maildir").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "link")
    for path in (tmp_path / "real" / "Maildir", tmp_path / "link" / "Maildir",
                 tmp_path / "link" / ".." / "real", tmp_path / "missing" / "Maildir"):
        assert resolvePath(str(path)) == os.path.realpath(path)


def test_planted_symlink_to_outside_refused_for_an_existing_target(tmp_path):
    outside = tmp_path / "outside" / "Maildir"
    outside.mkdir(parents=True)
    (tmp_path / "data" / "mail").mkdir(parents=True)
    os.symlink(tmp_path / "outside", tmp_path / "data" / "mail" / "mallory")
    with pytest.raises(ValueError):
        mailbox_path(TEMPLATE, str(tmp_path / "data"), "mallory")
    (tmp_path / "data" / "mail" / "alice" / "Maildir").mkdir(parents=True)
    assert mailbox_path(TEMPLATE, str(tmp_path / "data"), "alice").is_dir()
