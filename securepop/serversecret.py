"""
The server secret: 32 random bytes kept in the data directory
(C{server.secret}, mode 0600), from which purpose-specific keys are derived.

Some values an attacker can compare between connections must be as stable
as the real ones they imitate, yet unpredictable: the made-up SCRAM salt of
an unknown user must not change across restarts or differ between workers,
or it tells which users exist.  A key drawn per process cannot do that; a
secret in the data directory, which every worker shares, can.

The file is made at the first start (written in full under a temporary
name, then hard-linked into place, so concurrent workers all end up with the
same secret) and refused when group or others may access it.  Removing it
makes a new one at the next start: the derived values change once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from securepop.errors import ConfigError

SECRET_FILE = "server.secret"
SECRET_BYTES = 32
#: The configuration key an error names: the file lives in the data directory.
CONFIG_KEY = "server.data_dir"


class ServerSecret:
    """
    One installation's secret; L{derive} gives independent keys per purpose.

    @ivar path: the file it was read from, or None.
    """

    def __init__(self, secret: bytes, path=None):
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a server secret is {SECRET_BYTES} bytes")
        self._secret = bytes(secret)
        self.path = path

    def __repr__(self):
        return f"<ServerSecret {self.path or '(in memory)'}>"     # never the bytes

    def derive(self, purpose: bytes) -> bytes:
        """
        @param purpose: a fixed label per use, e.g. C{b"scram-fake-salt"}:
            keys for different purposes are unrelated.
        @return: HMAC-SHA256(secret, purpose), 32 bytes.
        """
        if not isinstance(purpose, bytes) or not purpose:
            raise ValueError("the purpose is a non-empty bytes label")
        return hmac.new(self._secret, purpose, hashlib.sha256).digest()

    @classmethod
    def generate(cls):
        """A fresh secret held only in memory (tests, embedding without a data dir)."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load_or_create(cls, path, config_path="(defaults)"):
        """
        Read the secret at C{path}; make it first when there is none.

        @param config_path: the configuration file, for the error message.
        @raise ConfigError: the file is not a regular file, others may access
            it, it has the wrong size, or it cannot be read or made.
        """
        path = Path(path)
        try:
            return cls._load(path, config_path)
        except FileNotFoundError:
            pass
        _create(path, config_path)
        try:
            return cls._load(path, config_path)
        except OSError as e:
            raise _error(config_path, path, f"cannot read {path}: {e.strerror or e}")

    @classmethod
    def _load(cls, path, config_path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _error(config_path, path, f"cannot read {path}: {e.strerror or e}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _error(config_path, path, f"{path} is not a regular file")
            if st.st_mode & 0o077:
                raise _error(
                    config_path, path,
                    f"the server secret {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
            data = os.read(fd, SECRET_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) != SECRET_BYTES:
            raise _error(config_path, path,
                         f"the server secret {path} holds {len(data)} bytes, not "
                         f"{SECRET_BYTES}; remove it and a new one is made at start")
        return cls(data, path)


def _error(config_path, path, reason):
    return ConfigError(config_path, CONFIG_KEY, reason)


def _create(path: Path, config_path):
    """
    Write a new secret under a temporary name and link it to C{path}; when
    another process linked its own first, keep that one.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise _error(config_path, path,
                     f"cannot create the server secret in {path.parent}: {e.strerror or e}")
    try:
        try:
            os.fchmod(fd, 0o600)        # whatever the umask
            view = memoryview(secrets.token_bytes(SECRET_BYTES))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return                      # another worker was first: use its secret
        except OSError as e:
            raise _error(config_path, path,
                         f"cannot create the server secret {path}: {e.strerror or e}")
        _sync_directory(path.parent)
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def for_settings(settings):
    """The L{ServerSecret} of the data directory C{settings} name."""
    return ServerSecret.load_or_create(Path(settings.data_path) / SECRET_FILE,
                                       settings.path or "(defaults)")
