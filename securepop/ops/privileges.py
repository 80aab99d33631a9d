"""
Bind as root, then run as C{[server] user} / C{group}.

twistd (and L{securepop.assembly.OperatingRoot}) bind every listener in
C{privilegedStartService}; L{drop} then switches group list, group and user
for good (real, effective and saved ids), and checks that root cannot be
regained.  Before anything starts, L{check_secret_files} refuses a private
key or users file that others can read, reusing the checks of the TLS and
users-file modules.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from securepop import events
from securepop.auth.userfile import UsersFile
from securepop.errors import ConfigError
from securepop.tls.certificates import check_key_file_mode


@dataclass(frozen=True)
class Identity:
    """Who the server runs as after the drop."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str = "/"


def resolve(user: str, group: str = "", path="(configuration)") -> Identity:
    """
    Look up C{user} (and C{group}, default: the user's primary group).

    @raise ConfigError: unknown user or group, or root itself.
    """
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ConfigError(path, "server.user", f"no such user {user!r}")
    if entry.pw_uid == 0:
        raise ConfigError(path, "server.user", "must not be root (that is no drop)")
    gid = entry.pw_gid
    if group:
        try:
            gid = (grp.getgrnam(group) if not group.isdigit() else grp.getgrgid(int(group))).gr_gid
        except KeyError:
            raise ConfigError(path, "server.group", f"no such group {group!r}")
    try:
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    except OSError:
        groups = (gid,)
    return Identity(entry.pw_name, entry.pw_uid, gid, groups, entry.pw_dir)


def check_secret_files(settings):
    """
    Refuse to start with a private key or users file others may read.

    @raise ConfigError: naming the file and the chmod that fixes it.
    """
    tls = settings.tls
    if tls.key:
        check_key_file_mode(str(settings.resolve(tls.key)))
    for sni in tls.sni:
        check_key_file_mode(str(settings.resolve(sni.key)), "tls.sni.key")
    if settings.auth.source == "file":
        UsersFile(settings.resolve(settings.auth.file.path)).check_permissions()
    source = settings.auth.source
    if source in ("ldap", "ad"):
        secret = (settings.auth.ldap if source == "ldap" else settings.auth.ad).bind_password_file
        if secret:
            check_key_file_mode(str(settings.resolve(secret)),
                                f"auth.{source}.bind_password_file", "the bind password file")
    if settings.state.backend == "redis" and settings.state.password_file:
        check_key_file_mode(str(settings.resolve(settings.state.password_file)),
                            "state.password_file", "the Redis password file")


def check_data_dir(settings, identity: Identity):
    """
    After the drop the server must still reach its data: refuse a data
    directory the target user does not own (mailboxes, locks, users file).
    """
    path = settings.data_path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid != identity.uid:
        raise ConfigError(
            settings.path or "(defaults)", "server.data_dir",
            f"{path} is owned by uid {st.st_uid}, not by {identity.user} "
            f"(uid {identity.uid}); run: chown -R {identity.user}: {path}")


def drop(identity: Identity, os_module=os):
    """
    Switch to C{identity} for good.  Order matters: supplementary groups and
    group while still root, the user last.

    @raise PermissionError: not root, or root could be regained.
    """
    if os_module.geteuid() != 0:
        if os_module.geteuid() == identity.uid:
            return False
        raise PermissionError(f"cannot switch to {identity.user}: not running as root")
    os_module.setgroups(list(identity.groups))
    os_module.setresgid(identity.gid, identity.gid, identity.gid)
    os_module.setresuid(identity.uid, identity.uid, identity.uid)
    try:
        os_module.setuid(0)
    except PermissionError:
        pass
    else:   # pragma: no cover (only a broken kernel gets here)
        raise PermissionError("root could be regained after dropping privileges")
    if os_module is os:
        os.environ["HOME"] = identity.home
        os.environ["USER"] = os.environ["LOGNAME"] = identity.user
    events.emit("privileges.dropped", user=identity.user, uid=identity.uid,
                gid=identity.gid)
    return True


class acting_as:
    """
    While building the server (reading keys, the users file, creating the
    self-signed certificate), act as C{identity} through the effective ids,
    so what is created belongs to it and what it cannot read fails now, not
    at the first reload.  Root comes back at the end to bind the ports.
    """

    def __init__(self, identity: Identity | None, os_module=os):
        self.identity = identity
        self.os = os_module
        self.active = False

    def __enter__(self):
        o = self.os
        if self.identity is None or o.geteuid() != 0:
            return self
        self._groups = o.getgroups()
        o.setgroups(list(self.identity.groups))
        o.setegid(self.identity.gid)
        o.seteuid(self.identity.uid)
        self.active = True
        return self

    def __exit__(self, *exc):
        if self.active:
            o = self.os
            o.seteuid(0)
            o.setegid(0)
            o.setgroups(self._groups)
            self.active = False
        return False


def preload_modules(package="securepop"):
    """
    Import every securepop module (and so the standard library parts they
    use) while still root: after the drop the interpreter's own files may
    be out of reach (a Python installed under a root-only directory), and a
    lazy import at the first login or reload would fail.
    """
    import importlib
    import pkgutil

    root = importlib.import_module(package)
    failed = []
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if ".cli" in info.name or info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:       # optional parts: note, do not stop
            failed.append((info.name, str(e)))
    for name in ("encodings.idna", "encodings.utf_16_le", "json", "hmac", "secrets"):
        importlib.import_module(name)
    return failed
