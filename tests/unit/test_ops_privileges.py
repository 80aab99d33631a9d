"""Tests for securepop.ops.privileges: refuse readable secrets, drop for good."""

import os
import pwd
from dataclasses import replace

import pytest

from securepop import config
from securepop.errors import ConfigError
from securepop.ops import privileges


def settings_for(tmp_path, **tls):
    s = config.load(None, str(tmp_path))
    return replace(s, tls=replace(s.tls, **tls)) if tls else s


def test_resolve_nobody():
    who = privileges.resolve("nobody")
    assert who.uid == pwd.getpwnam("nobody").pw_uid
    assert who.gid in who.groups


def test_resolve_refuses_root_and_unknown():
    with pytest.raises(ConfigError, match="root"):
        privileges.resolve("root")
    with pytest.raises(ConfigError, match="no such user"):
        privileges.resolve("no-such-user-securepop")
    with pytest.raises(ConfigError, match="no such group"):
        privileges.resolve("nobody", "no-such-group-securepop")


def test_users_file_readable_by_others_refused(tmp_path):
    users = tmp_path / "users"
    users.write_text("")
    users.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        privileges.check_secret_files(settings_for(tmp_path))
    users.chmod(0o600)
    privileges.check_secret_files(settings_for(tmp_path))


def test_key_readable_by_others_refused(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("x")
    key.chmod(0o640)
    s = settings_for(tmp_path, certificate=str(tmp_path / "c.pem"), key=str(key))
    with pytest.raises(ConfigError, match="chmod 600"):
        privileges.check_secret_files(s)
    key.chmod(0o600)
    privileges.check_secret_files(s)


def test_bind_password_file_readable_by_others_refused_naming_it(tmp_path):
    secret = tmp_path / "ldap-password"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    s = config.parse('[auth]\nsource = "ldap"\nmechanisms = ["PLAIN"]\n'
                     '[auth.ldap]\nurls = ["ldaps://ldap.example.test"]\n'
                     f'base_dn = "dc=example"\nbind_password_file = "{secret}"\n',
                     "f.toml", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        privileges.check_secret_files(s)
    assert e.value.key == "auth.ldap.bind_password_file"
    assert e.value.reason.startswith("the bind password file is accessible by group or "
                                     "others (mode 0644); run: chmod 600 ")
    assert "private key" not in str(e.value)
    secret.chmod(0o600)
    privileges.check_secret_files(s)


def test_data_dir_must_belong_to_target(tmp_path):
    s = settings_for(tmp_path)
    nobody = privileges.resolve("nobody")
    with pytest.raises(ConfigError, match="chown"):
        privileges.check_data_dir(s, nobody)
    me = privileges.Identity("me", os.stat(tmp_path).st_uid, 0, (0,))
    privileges.check_data_dir(s, me)


class FakeOS:
    def __init__(self, euid=0):
        self.calls = []
        self.euid = euid

    def geteuid(self):
        return self.euid

    def setgroups(self, groups):
        self.calls.append(("setgroups", tuple(groups)))

    def setresgid(self, *ids):
        self.calls.append(("setresgid", ids))

    def setresuid(self, *ids):
        self.calls.append(("setresuid", ids))
        self.euid = ids[1]

    def setuid(self, uid):
        if self.euid != 0:
            raise PermissionError("no")
        self.calls.append(("setuid", uid))


def test_drop_order_groups_then_gid_then_uid():
    fake = FakeOS()
    who = privileges.Identity("svc", 1234, 2345, (2345, 99))
    assert privileges.drop(who, fake) is True
    assert fake.calls == [("setgroups", (2345, 99)), ("setresgid", (2345, 2345, 2345)),
                          ("setresuid", (1234, 1234, 1234))]


def test_drop_detects_regainable_root():
    class Broken(FakeOS):
        def setresuid(self, *ids):
            self.calls.append(("setresuid", ids))     # euid stays 0

    with pytest.raises(PermissionError, match="regained"):
        privileges.drop(privileges.Identity("svc", 1234, 2345, (2345,)), Broken())


def test_drop_without_root():
    who = privileges.Identity("svc", 1234, 2345, (2345,))
    assert privileges.drop(who, FakeOS(euid=1234)) is False   # already that user
    with pytest.raises(PermissionError, match="not running as root"):
        privileges.drop(who, FakeOS(euid=1000))


class SeteuidOS(FakeOS):
    def getgroups(self):
        return [0]

    def setegid(self, gid):
        self.calls.append(("setegid", gid))

    def seteuid(self, uid):
        self.calls.append(("seteuid", uid))
        self.euid = uid


def test_acting_as_switches_effective_ids_and_back():
    fake = SeteuidOS()
    who = privileges.Identity("svc", 1234, 2345, (2345,))
    with privileges.acting_as(who, fake) as acting:
        assert acting.active and fake.euid == 1234
    assert fake.euid == 0
    assert fake.calls == [("setgroups", (2345,)), ("setegid", 2345), ("seteuid", 1234),
                          ("seteuid", 0), ("setegid", 0), ("setgroups", (0,))]


def test_acting_as_is_noop_without_identity_or_root():
    fake = SeteuidOS(euid=1000)
    with privileges.acting_as(privileges.Identity("svc", 1, 1, (1,)), fake) as acting:
        assert not acting.active
    with privileges.acting_as(None, SeteuidOS()) as acting:
        assert not acting.active
    assert fake.calls == []


def test_preload_imports_modules():
    assert isinstance(privileges.preload_modules(), list)


def test_redis_password_file_readable_by_others_refused_naming_it(tmp_path):
    (tmp_path / "users").write_text("")
    (tmp_path / "users").chmod(0o600)
    secret = tmp_path / "redis-password"
    secret.write_text("pw\n")
    secret.chmod(0o604)
    text = f'[state]\nbackend = "redis"\npassword_file = "{secret}"\n'
    s = config.parse(text, "f.toml", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        privileges.check_secret_files(s)
    assert e.value.key == "state.password_file"
    assert e.value.reason.startswith("the Redis password file is accessible by group or others")
    # the memory backend never reads it
    privileges.check_secret_files(config.parse(text.replace('"redis"', '"memory"'), "f.toml",
                                               str(tmp_path)))
    secret.chmod(0o600)
    privileges.check_secret_files(s)
