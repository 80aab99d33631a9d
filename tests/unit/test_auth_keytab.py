"""Keytab files: the principals, the mode, and the start-time checks."""

import os
import shutil
import struct
import subprocess

import pytest

from securepop import config
from securepop.auth.keytab import (
    KeytabError, gssapi_problem, keytab_realms, parse_keytab, read_keytab,
)
from securepop.errors import ConfigError


def record(principal, kvno=2, enctype=18, key=b"k" * 32, kvno32=None, deleted=False):
    name, _, realm = principal.rpartition("@")
    parts = name.split("/")
    body = struct.pack(">H", len(parts)) + struct.pack(">H", len(realm)) + realm.encode()
    for part in parts:
        body += struct.pack(">H", len(part)) + part.encode()
    body += struct.pack(">IIBH", 1, 0, kvno % 256, enctype)
    body += struct.pack(">H", len(key)) + key
    if kvno32 is not None:
        body += struct.pack(">I", kvno32)
    size = -len(body) if deleted else len(body)
    return struct.pack(">i", size) + body


def keytab(*records):
    return b"\x05\x02" + b"".join(records)


def write(tmp_path, data, mode=0o600, name="pop.keytab"):
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


GOOD = keytab(record("pop/mail.example.com@EXAMPLE.COM"),
              record("pop/mail.example.com@EMEA.EXAMPLE.COM", kvno=300, kvno32=300),
              record("host/mail.example.com@EXAMPLE.COM", deleted=True),
              record("HTTP/mail.example.com@EXAMPLE.COM"))


def test_parse_principals_kvno_and_holes():
    entries = parse_keytab(GOOD)
    assert [e.principal for e in entries] == [
        "pop/mail.example.com@EXAMPLE.COM", "pop/mail.example.com@EMEA.EXAMPLE.COM",
        "HTTP/mail.example.com@EXAMPLE.COM"]
    assert entries[1].kvno == 300 and entries[0].enctype == 18


@pytest.mark.parametrize("data, text", [
    (b"", "not a Kerberos keytab"),
    (b"\x04\x02", "not a Kerberos keytab"),
    (b"\x05\x01" + record("a@B")[4:], "5.1 is not supported"),
    (GOOD[:-5], "truncated"),
    (keytab(struct.pack(">i", 6) + struct.pack(">H", 0) + b"\x00" * 4), "components"),
    (keytab(struct.pack(">i", 4) + b"\x00\x01\x00\x09"), "truncated"),
    (keytab(struct.pack(">i", 1000) + b"\x00" * 10), "truncated"),
])
def test_malformed_keytabs(data, text):
    with pytest.raises(KeytabError, match=text):
        parse_keytab(data)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_safe_modes(tmp_path, mode):
    assert len(read_keytab(write(tmp_path, GOOD, mode))) == 3


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o660, 0o620, 0o666, 0o601])
def test_modes_others_can_use_are_refused(tmp_path, mode):
    with pytest.raises(KeytabError, match=f"{mode:04o}"):
        read_keytab(write(tmp_path, GOOD, mode))


def test_not_a_regular_file_or_missing(tmp_path):
    with pytest.raises(KeytabError, match="not a regular file"):
        read_keytab(str(tmp_path))
    with pytest.raises(KeytabError, match="cannot open"):
        read_keytab(str(tmp_path / "missing"))
    target = write(tmp_path, GOOD)
    os.symlink(target, tmp_path / "link")
    with pytest.raises(KeytabError, match="cannot open"):
        read_keytab(str(tmp_path / "link"))


def test_realms_of_the_service_principal(tmp_path):
    path = write(tmp_path, GOOD)
    assert keytab_realms(path, "pop", "mail.example.com") == ("EXAMPLE.COM",
                                                              "EMEA.EXAMPLE.COM")
    assert keytab_realms(path, "HTTP", "mail.example.com.") == ("EXAMPLE.COM",)


@pytest.mark.parametrize("service, host", [
    ("pop", "other.example.com"), ("imap", "mail.example.com"),
    ("host", "mail.example.com"),       # a deleted record
    ("pop", "MAIL.example.com"),        # the library compares exactly
])
def test_missing_principal_is_named(tmp_path, service, host):
    with pytest.raises(KeytabError) as info:
        keytab_realms(write(tmp_path, GOOD), service, host)
    assert f"{service}/{host}@REALM" in str(info.value)
    assert "pop/mail.example.com@EXAMPLE.COM" in str(info.value)   # what it holds


def test_ktutil_keytab(tmp_path):
    """A keytab MIT's own tool wrote (32-bit kvno included)."""
    ktutil = shutil.which("ktutil")
    if ktutil is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ktutil (krb5-user) is not installed")
        pytest.skip("ktutil is not installed")
    path = tmp_path / "kt"
    script = (f"addent -password -p pop/mail.example.com@EXAMPLE.COM -k 300 -e "
              f"aes256-cts-hmac-sha1-96\nsecret\nwkt {path}\nquit\n")
    subprocess.run([ktutil], input=script, text=True, check=True, capture_output=True)
    path.chmod(0o600)
    [entry] = read_keytab(str(path))
    assert (entry.principal, entry.kvno, entry.enctype) == (
        "pop/mail.example.com@EXAMPLE.COM", 300, 18)


# -- [auth.gssapi] in the configuration ------------------------------------------

def gssapi_config(tmp_path, keytab_path, extra=""):
    return (f'[server]\nhostname = "mail.example.com"\ndata_dir = "{tmp_path}"\n'
            f'[auth]\nmechanisms = ["GSSAPI", "PLAIN"]\n'
            f'[auth.gssapi]\nkeytab = "{keytab_path}"\n{extra}')


def test_config_accepts_a_good_keytab(tmp_path):
    settings = config.parse(gssapi_config(tmp_path, write(tmp_path, GOOD)), "f")
    assert settings.auth.gssapi.service == "pop" and settings.auth.gssapi.realms == ()
    assert settings.auth.channel_binding == "allow"
    relative = config.parse(gssapi_config(tmp_path, "pop.keytab"), "f")   # data_dir
    assert relative.auth.gssapi.keytab == "pop.keytab"


@pytest.mark.parametrize("mode, extra, key, reason", [
    (0o644, "", "auth.gssapi.keytab", "0644"),
    (0o600, 'service = "imap"\n', "auth.gssapi.keytab", "imap/mail.example.com@REALM"),
    (0o600, 'service = "pop/x"\n', "auth.gssapi.service", "service name"),
    (0o600, 'realms = ["EXAMPLE.COM", "A@B"]\n', "auth.gssapi.realms", "realm names"),
    (0o600, 'realms = "EXAMPLE.COM"\n', "auth.gssapi.realms", "list"),
    (0o600, 'principal = "x"\n', "auth.gssapi.principal", "unknown key"),
])
def test_config_refuses_with_file_key_and_reason(tmp_path, mode, extra, key, reason):
    text = gssapi_config(tmp_path, write(tmp_path, GOOD, mode), extra)
    with pytest.raises(ConfigError) as info:
        config.parse(text, "securepop.toml")
    assert info.value.key == key and reason in info.value.reason
    assert str(info.value).startswith("securepop.toml")


def test_config_gssapi_needs_a_keytab_only_when_enabled(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.parse('[auth]\nmechanisms = ["GSSAPI"]\n', "f")
    assert info.value.key == "auth.gssapi.keytab"
    # not enabled: the section is not checked
    config.parse('[auth.gssapi]\nkeytab = "/nonexistent"\n', "f")


def test_config_channel_binding_choices():
    assert config.parse('[auth]\nchannel_binding = "require"\n', "f").auth.channel_binding \
        == "require"
    with pytest.raises(ConfigError, match="off, allow, require"):
        config.parse('[auth]\nchannel_binding = "yes"\n', "f")


def test_problem_helper_says_nothing_for_a_good_section(tmp_path):
    settings = config.parse(gssapi_config(tmp_path, write(tmp_path, GOOD)), "f")
    assert gssapi_problem(settings) is None
