"""
The local users file: the embedded default credential source.

One user a line, fields separated by ":" (none of them can contain one)::

    alice:$argon2id$v=19$m=19456,t=2,p=1$...:nt=<hex>:scram=4096,<salt>,<stored>,<server>:secret=<b64>

The argon2id hash verifies USER/PASS, PLAIN and LOGIN.  The other fields are
written only for mechanisms enabled when the password was set: C{nt} for
NTLM, C{scram} for SCRAM-SHA-256, C{secret} (password-equivalent) for APOP
and CRAM-MD5.  The file is rewritten atomically (temporary file, fsync,
rename) with mode 0600, under an exclusive lock on C{<file>.lock} so two
writers never lose each other's change, and re-read when it changes on disk.

The argon2id cost is configured (L{securepop.schemes.HashParameters}); a hash made with other
parameters still verifies and is rewritten with the configured ones after
the next successful login (L{rehash_entry}).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from argon2.exceptions import InvalidHashError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from securepop.fileio import atomic_write
from securepop import events
from securepop.auth.records import UserRecord
from securepop.auth.usernames import index_names
from securepop.errors import ConfigError
from securepop.interfaces import (
    CLEARTEXT_SECRET, ICredentialSource, NT_HASH, PLAINTEXT, SCRAM_SHA_256,
)
from securepop.mailstore.paths import checkUsername
from securepop.mailstore.quota import format_quota, parse_quota
from securepop.schemes import (
    DUMMY_PASSWORD, cleartext_secret, decode_scram_secret, describe_hash, encode_scram_secret,
    hasher_for, nt_hash, scram_secret, verify_hash,
)

#: Which stored field serves which credential kind, and which mechanisms need it.
FIELD_FOR_KIND = {NT_HASH: "nt", SCRAM_SHA_256: "scram", CLEARTEXT_SECRET: "secret"}
MECHANISMS_FOR_KIND = {
    NT_HASH: ("NTLM",), SCRAM_SHA_256: ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"),
    CLEARTEXT_SECRET: ("CRAM-MD5", "APOP"),
}


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


def make_entry(name, password: str, kinds, params=None) -> UserEntry:
    """
    Hash C{password} (argon2id with C{params}, L{securepop.schemes.HashParameters}; the
    defaults when None) and derive the secrets for C{kinds}.
    """
    extras = {}
    if NT_HASH in kinds:
        extras["nt"] = nt_hash(password).hex()
    if SCRAM_SHA_256 in kinds:
        extras["scram"] = encode_scram_secret(scram_secret(password))
    if CLEARTEXT_SECRET in kinds:
        extras["secret"] = base64.b64encode(cleartext_secret(password)).decode()
    return UserEntry(name, hasher_for(params).hash(password), extras)


def check_name(name: str) -> str:
    """A user name the file can hold and a Maildir path can use."""
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
                if not sep or key not in ("nt", "scram", "secret", "quota"):
                    raise ConfigError(self.path, "auth.file.path",
                                      f"unknown field {key!r} for user {parts[0]!r}", number)
                if key == "quota":
                    try:
                        parse_quota(value)
                    except ValueError as e:
                        raise ConfigError(self.path, "auth.file.path",
                                          f"user {parts[0]!r}: {e}", number) from None
                extras[key] = value
            users[parts[0]] = UserEntry(parts[0], parts[1], extras)
        return users

    def save(self, users: dict[str, UserEntry]) -> None:

        data = "".join(users[name].line() + "\n" for name in sorted(users))
        atomic_write(self.path, data.encode("utf-8"), 0o600)

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


def file_stamp(path):
    """What tells one version of the users file from the next (None: absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@contextlib.contextmanager
def locked(path, blocking=True):
    """
    Hold the exclusive lock on C{<path>.lock} (made 0600) around a
    read-modify-write of the users file; yields False instead of waiting
    when C{blocking} is false and another writer holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"),
                 os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if blocking or e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def rehash_entry(path, entry, stamp, hasher, password):
    """
    Rewrite C{entry}'s hash with C{hasher}'s parameters after C{password}
    verified against it.  Blocking (a hash, a lock, an fsync): run it off the
    reactor thread.

    The file is rewritten only when it is still the version C{entry} was
    read from (C{stamp}, L{file_stamp}) and the entry is unchanged, under
    the same lock as C{securepop user}; otherwise nothing is written (a
    concurrent change wins, and the next login tries again).

    @return: C{"rehashed"}, C{"changed"} (the file or the entry changed
        since it was read) or C{"busy"} (another writer holds the lock).
    """
    new_hash = hasher.hash(password)
    with locked(path, blocking=False) as held:
        if not held:
            return "busy"
        if file_stamp(path) != stamp:
            return "changed"
        users_file = UsersFile(path)
        users = users_file.load()
        for key, current in users.items():
            if current.name == entry.name and current.line() == entry.line():
                break
        else:
            return "changed"
        users[key] = replace(current, password_hash=new_hash)
        users_file.save(users)
        return "rehashed"


@implementer(ICredentialSource)
class FileCredentialSource:
    """
    L{ICredentialSource} over the users file.

    Re-reads the file when its modification time or size changes (so
    C{securepop user add} takes effect without a reload); argon2 runs through
    C{run_blocking}, off the reactor thread.  A hash made with parameters
    other than C{params} is rewritten after a successful login, through
    C{run_blocking} too, without delaying the login.

    Lookups take a normalised name (L{securepop.auth.usernames}) and find
    the entry whose name normalises to it, so an entry written before the
    rule applied to the CLI (C{Eve}) serves the login C{eve}; an entry no
    login can reach serves nothing.  C{normalise} is that rule for one name
    (default: names are used as written).
    """

    name = "file"

    def __init__(self, path, run_blocking=None, params=None, normalise=None):
        """
        @param run_blocking: C{f(callable, *args) -> Deferred}, running the
            callable off the reactor thread.
        @param params: L{securepop.schemes.HashParameters} for the dummy hash and rehashes;
            the defaults when None.
        @param normalise: the user-name rule for one name, or None.
        """
        self.file = UsersFile(path)
        self.file.check_permissions()
        self._run = run_blocking or (lambda f, *a: defer.maybeDeferred(f, *a))
        self._normalise = normalise
        self._hasher = hasher_for(params)
        self._dummy = None
        self._dummy_lock = threading.Lock()
        self._rehashing = set()
        self._rehash_off = False
        self._stamp = None
        self._users = {}
        self._index = {}
        self.reload()

    def capabilities(self):
        return frozenset({PLAINTEXT, NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET})

    def reload(self):
        stamp = file_stamp(self.file.path)
        if stamp != self._stamp:
            self._users = self.file.load()
            self._index = self._build_index(self._users)
            self._stamp = stamp

    def _build_index(self, users):
        """Normalised name -> the stored name that serves it."""
        if self._normalise is None:
            return {name: name for name in users}
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

    def userStamp(self, username):
        """
        Changes whenever this user's entry does (C{user passwd}, C{user del}),
        and only then: the auth cache keys include it, so one user's change
        does not flush the others' cached logins.
        """
        entry = self._entry(username)
        if entry is None:
            return ""
        return hashlib.sha256(entry.line().encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def users(self):
        return self._current()

    def _dummy_hash(self):
        """
        Verified when the user does not exist, so "no such user" costs the
        same as a wrong password (same parameters).  Made on first use, in
        the blocking thread.
        """
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(DUMMY_PASSWORD)
            return self._dummy

    def verifyPassword(self, username, password):
        entry = self._entry(username)
        stamp = self._stamp
        hasher = self._hasher

        def verify():
            hashed = entry.password_hash if entry else self._dummy_hash()
            return verify_hash(hashed, password, hasher)

        d = self._run(verify)

        def checked(ok):
            if ok and entry is not None:
                self._rehash_if_needed(entry, stamp, password)
                return UserRecord(username)
            raise UnauthorizedLogin("bad-password" if entry else "no-such-user")

        return d.addCallback(checked)

    def _rehash_if_needed(self, entry, stamp, password):
        """After a successful login: bring an old hash to the parameters in force."""
        try:
            needed = self._hasher.check_needs_rehash(entry.password_hash)
        except InvalidHashError:
            needed = False
        if not needed or self._rehash_off or entry.name in self._rehashing:
            return
        self._rehashing.add(entry.name)
        old = describe_hash(entry.password_hash)
        d = self._run(rehash_entry, self.file.path, entry, stamp, self._hasher, password)

        def done(outcome):
            # "changed"/"busy" are benign (another writer or worker won): the
            # next login tries again.
            events.emit("auth.rehash", user=entry.name, outcome=outcome,
                        old=old, new=f"m={self._hasher.memory_cost},t={self._hasher.time_cost},"
                                     f"p={self._hasher.parallelism}")

        def failed(failure):
            # E.g. a users file or directory the daemon may not write: say so
            # once, not at every login, until a reload builds a new source.
            self._rehash_off = True
            events.emit("auth.rehash", "error", user=entry.name, outcome="error",
                        error=failure.getErrorMessage(),
                        message="old hashes are not rewritten until the next reload")

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: self._rehashing.discard(entry.name))

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
        entry = self._entry(username)
        if entry is not None:
            quota = entry.extras.get("quota")
            return defer.succeed(UserRecord(username, info={"quota": quota} if quota else {}))
        return defer.fail(UnauthorizedLogin("no-such-user"))

    def shutdown(self):
        """Nothing to stop: the hashing runs on the caller's threads (C{run_blocking})."""


def _decode(kind, value):
    """A stored field as the secret of C{kind}; L{ValueError} if malformed."""
    if kind == NT_HASH:
        raw = bytes.fromhex(value)
        if len(raw) != 16:
            raise ValueError("NT hash must be 16 bytes")
        return raw
    if kind == SCRAM_SHA_256:
        return decode_scram_secret(value)
    return base64.b64decode(value, validate=True)


def set_password(path, name, password, kinds, create, params=None):
    """
    Add (C{create}) or change a user's password, hashed with C{params}
    (L{securepop.schemes.HashParameters}; the defaults when None); returns the entry.
    """
    check_name(name)
    entry = make_entry(name, password, kinds, params)
    f = UsersFile(path)
    with locked(path):
        users = f.load()
        if create and name in users:
            raise KeyError(f"user {name} already exists")
        if not create and name not in users:
            raise KeyError(f"no such user: {name}")
        if name in users and "quota" in users[name].extras:   # not a secret: kept
            entry = UserEntry(entry.name, entry.password_hash,
                              {**entry.extras, "quota": users[name].extras["quota"]})
        users[name] = entry
        f.save(users)
    return entry


def set_quota(path, name, quota):
    """
    Set (a L{securepop.mailstore.quota.Quota}) or remove (C{None}) a user's
    own quota, which overrides C{[mail] quota_bytes/quota_messages}.
    """
    f = UsersFile(path)
    with locked(path):
        users = f.load()
        if name not in users:
            raise KeyError(f"no such user: {name}")
        entry = users[name]
        extras = {k: v for k, v in entry.extras.items() if k != "quota"}
        if quota is not None:
            extras["quota"] = format_quota(quota)
        users[name] = UserEntry(entry.name, entry.password_hash, extras)
        f.save(users)


def delete_user(path, name):
    f = UsersFile(path)
    with locked(path):
        users = f.load()
        if name not in users:
            raise KeyError(f"no such user: {name}")
        del users[name]
        f.save(users)
