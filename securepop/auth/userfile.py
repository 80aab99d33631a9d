"""
The local users file: the embedded default credential source.

One user a line, fields separated by ":" (none of them can contain one)::

    alice:$argon2id$v=19$m=65536,t=3,p=4$...:nt=<hex>:scram=4096,<salt>,<stored>,<server>:secret=<b64>

The argon2id hash verifies USER/PASS, PLAIN and LOGIN.  The other fields are
written only for mechanisms enabled when the password was set: C{nt} for
NTLM, C{scram} for SCRAM-SHA-256, C{secret} (password-equivalent) for APOP
and CRAM-MD5.  The file is rewritten atomically (temporary file, fsync,
rename) with mode 0600, and re-read when it changes on disk.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from securepop import events
from securepop.auth.records import UserRecord
from securepop.errors import ConfigError
from securepop.interfaces import (
    CLEARTEXT_SECRET, ICredentialSource, NT_HASH, PLAINTEXT, SCRAM_SHA_256,
)

#: Which stored field serves which credential kind, and which mechanisms need it.
FIELD_FOR_KIND = {NT_HASH: "nt", SCRAM_SHA_256: "scram", CLEARTEXT_SECRET: "secret"}
MECHANISMS_FOR_KIND = {
    NT_HASH: ("NTLM",), SCRAM_SHA_256: ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"),
    CLEARTEXT_SECRET: ("CRAM-MD5", "APOP"),
}

_hasher = PasswordHasher()
_dummy = []


def _dummy_hash():
    """Verified when the user does not exist, so "no such user" costs the same."""
    if not _dummy:
        _dummy.append(_hasher.hash("securepop-no-such-user"))
    return _dummy[0]


@dataclass(frozen=True)
class UserEntry:
    name: str
    password_hash: str
    extras: dict = field(default_factory=dict, compare=False)

    def line(self) -> str:
        parts = [self.name, self.password_hash]
        parts += [f"{k}={v}" for k, v in sorted(self.extras.items())]
        return ":".join(parts)


def kinds_for_mechanisms(mechanisms, apop):
    """The stored secrets the enabled mechanisms need."""
    kinds = set()
    for kind, mechs in MECHANISMS_FOR_KIND.items():
        if any(m in mechanisms for m in mechs) or (apop and "APOP" in mechs):
            kinds.add(kind)
    return kinds


def make_entry(name, password: str, kinds) -> UserEntry:
    """Hash C{password} and derive the secrets for C{kinds}."""
    from securepop.sasl import secrets as derive

    extras = {}
    if NT_HASH in kinds:
        extras["nt"] = derive.nt_hash(password).hex()
    if SCRAM_SHA_256 in kinds:
        extras["scram"] = _encode_scram(derive.scram_secret(password))
    if CLEARTEXT_SECRET in kinds:
        extras["secret"] = base64.b64encode(derive.cleartext_secret(password)).decode()
    return UserEntry(name, _hasher.hash(password), extras)


def check_name(name: str) -> str:
    """A user name the file can hold and a Maildir path can use."""
    from securepop.mailstore.paths import checkUsername

    checkUsername(name)
    if ":" in name or any(c.isspace() for c in name):
        raise ValueError("user name must not contain ':' or white space")
    return name


class UsersFile:
    """Reads and atomically rewrites the users file."""

    def __init__(self, path):
        self.path = Path(path)

    def load(self) -> dict[str, UserEntry]:
        users = {}
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return users
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(self.path, "auth.file.path", f"cannot read users file: {e}")
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) < 2 or not parts[0] or not parts[1].startswith("$argon2"):
                raise ConfigError(self.path, "auth.file.path",
                                  "malformed entry (expected name:argon2-hash[:extras])", number)
            extras = {}
            for extra in parts[2:]:
                key, sep, value = extra.partition("=")
                if not sep or key not in ("nt", "scram", "secret"):
                    raise ConfigError(self.path, "auth.file.path",
                                      f"unknown field {key!r} for user {parts[0]!r}", number)
                extras[key] = value
            users[parts[0]] = UserEntry(parts[0], parts[1], extras)
        return users

    def save(self, users: dict[str, UserEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".users.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for name in sorted(users):
                    f.write(users[name].line() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def check_permissions(self):
        """Refuse a users file others can read: it holds password equivalents."""
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(self.path, "auth.file.path",
                              f"users file is accessible by group or others "
                              f"(mode {stat.S_IMODE(mode):04o}); run chmod 600")


@implementer(ICredentialSource)
class FileCredentialSource:
    """
    L{ICredentialSource} over the users file.

    Re-reads the file when its modification time or size changes (so
    C{securepop user add} takes effect without a reload); argon2 runs through
    C{run_blocking}, off the reactor thread.

    Lookups take a normalised name (L{securepop.auth.usernames}) and find
    the entry whose name normalises to it, so an entry written before the
    rule applied to the CLI (C{Eve}) serves the login C{eve}; an entry no
    login can reach serves nothing.  C{normalise} is that rule for one name
    (default: names are used as written).
    """

    name = "file"

    def __init__(self, path, run_blocking=None, normalise=None):
        self.file = UsersFile(path)
        self.file.check_permissions()
        self._run = run_blocking or (lambda f, *a: defer.maybeDeferred(f, *a))
        self._normalise = normalise
        self._stamp = None
        self._users = {}
        self._index = {}
        self.reload()

    def capabilities(self):
        return frozenset({PLAINTEXT, NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET})

    def reload(self):
        try:
            st = self.file.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._users = self.file.load()
            self._index = self._build_index(self._users)
            self._stamp = stamp

    def _build_index(self, users):
        """Normalised name -> the stored name that serves it."""
        if self._normalise is None:
            return {name: name for name in users}
        from securepop.auth.usernames import index_names

        index, unreachable, ambiguous = index_names(users, self._normalise)
        for normalised, stored in sorted(ambiguous.items()):
            events.emit("auth.users_ambiguous", "warn", user=normalised,
                        entries=",".join(stored), serves=index[normalised])
        return index

    def _entry(self, username):
        """The entry a normalised login name reaches, or None."""
        users = self._current()
        stored = self._index.get(username)
        return users.get(stored) if stored is not None else None

    def _current(self):
        try:
            self.reload()
        except ConfigError as e:
            events.emit("auth.source_error", "error", source="file", error=str(e))
        return self._users

    @property
    def generation(self):
        """Changes whenever the file does (auth cache keys include it)."""
        return self._stamp

    @property
    def users(self):
        return self._current()

    def verifyPassword(self, username, password):
        entry = self._entry(username)
        hashed = entry.password_hash if entry else _dummy_hash()

        def verify():
            try:
                _hasher.verify(hashed, password)
                return True
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        d = self._run(verify)

        def checked(ok):
            if ok and entry is not None:
                return UserRecord(username)
            raise UnauthorizedLogin("bad-password" if entry else "no-such-user")

        return d.addCallback(checked)

    def lookupSecret(self, username, kind):
        entry = self._entry(username)
        if entry is None:
            return defer.fail(UnauthorizedLogin("no-such-user"))
        field_name = FIELD_FOR_KIND.get(kind)
        value = entry.extras.get(field_name) if field_name else None
        if value is None:
            mechs = "/".join(MECHANISMS_FOR_KIND.get(kind, (kind,)))
            events.emit("auth.secret_missing", "warn", user=username, kind=kind,
                        hint=f"set-the-password-again-to-enable-{mechs}")
            return defer.fail(UnauthorizedLogin("secret-missing"))
        try:
            secret = _decode(kind, value)
        except (ValueError, binascii.Error):
            events.emit("auth.source_error", "error", source="file", user=username,
                        error=f"malformed {field_name} field")
            return defer.fail(UnauthorizedLogin("secret-malformed"))
        return defer.succeed((UserRecord(username), secret))

    def lookupUser(self, username):
        if self._entry(username) is not None:
            return defer.succeed(UserRecord(username))
        return defer.fail(UnauthorizedLogin("no-such-user"))


def _encode_scram(secret):
    """C{iterations,salt,StoredKey,ServerKey} (base64): no ':' in a field."""
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return ",".join([str(secret.iterations), b64(secret.salt),
                     b64(secret.stored_key), b64(secret.server_key)])


def _decode_scram(value):
    from securepop.auth.records import ScramSecret
    from securepop.sasl.secrets import MAX_SCRAM_ITERATIONS

    iterations, salt, stored, server = value.split(",")
    if not iterations.isdigit() or not 1 <= int(iterations) <= MAX_SCRAM_ITERATIONS:
        raise ValueError("bad SCRAM iteration count")
    salt, stored, server = (base64.b64decode(x, validate=True) for x in (salt, stored, server))
    if not salt or len(stored) != 32 or len(server) != 32:
        raise ValueError("bad SCRAM key length")
    return ScramSecret(salt, int(iterations), stored, server)


def _decode(kind, value):
    from securepop.sasl import secrets as derive

    if kind == NT_HASH:
        raw = bytes.fromhex(value)
        if len(raw) != 16:
            raise ValueError("NT hash must be 16 bytes")
        return raw
    if kind == SCRAM_SHA_256:
        return _decode_scram(value)
    return base64.b64decode(value, validate=True)


def set_password(path, name, password, kinds, create):
    """Add (C{create}) or change a user's password; returns the entry."""
    check_name(name)
    f = UsersFile(path)
    users = f.load()
    if create and name in users:
        raise KeyError(f"user {name} already exists")
    if not create and name not in users:
        raise KeyError(f"no such user: {name}")
    users[name] = make_entry(name, password, kinds)
    f.save(users)
    return users[name]


def delete_user(path, name):
    f = UsersFile(path)
    users = f.load()
    if name not in users:
        raise KeyError(f"no such user: {name}")
    del users[name]
    f.save(users)
