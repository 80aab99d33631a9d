"""
Writing a file so that no reader ever sees part of it: the users file, a
certificate or key, a message delivered into a Maildir.

The data goes to a temporary file in a directory on the same file system,
created with its final mode (a key is never readable by others, not even
for a moment), is fsynced, then given its final name in one step, and the
directory holding that name is fsynced so the name survives a power loss.
Any failure before that step removes the temporary file and leaves the
final name untouched.

Blocking (writes and fsyncs): call it off the reactor thread.
"""

import errno
import os
import secrets

# Hard links are not possible here: the rename fallback of a no-replace
# publish (a FAT, some network file systems, a temporary file elsewhere).
_NO_LINK = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV)
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_directory(path):
    """Make the names in directory C{path} durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o600, *, replace=True, temp_dir=None, temp_names=None):
    """
    Write C{data} to C{path}: a reader sees the old file (or none) or the
    whole new one, never part of it.

    @param path: the final path; or a callable given the temporary file's
        path once everything is written, returning the final path (a
        Maildir name carries the message's size).
    @param data: L{bytes}, or an iterable of L{bytes} written as they come
        (a message read in chunks); an exception it raises removes the
        temporary file.
    @param mode: the file's mode, set before any byte is written.
    @param replace: C{True}: an existing file at C{path} is replaced
        (rename).  C{False}: it never is (hard link, then unlink): the write
        fails with L{FileExistsError} instead, as a Maildir delivery must.
    @param temp_dir: the directory of the temporary file, on the same file
        system as C{path} (a Maildir's C{tmp/}); C{path}'s directory,
        created with mode 0700 when missing, by default (needed when
        C{path} is a callable).
    @param temp_names: the temporary file's names to try in turn (created
        exclusively); random hidden names by default.
    @raise FileExistsError: every name in C{temp_names} is taken, or
        C{replace} is false and C{path} exists.
    @return: the final path.
    """
    if temp_dir is None:
        if callable(path):
            raise TypeError("atomic_write: a callable path needs temp_dir")
        temp_dir = os.path.dirname(os.path.abspath(path))
        os.makedirs(temp_dir, mode=0o700, exist_ok=True)
    if temp_names is None:
        temp_names = (f".tmp-{secrets.token_hex(8)}" for _ in range(10))
    fd, temp = _create(temp_dir, temp_names, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            for chunk in ((data,) if isinstance(data, (bytes, bytearray, memoryview))
                          else data):
                _write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = path(temp) if callable(path) else path
        if replace:
            os.replace(temp, final)
        else:
            _publish(temp, final)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(os.path.dirname(os.path.abspath(final)))
    return final


def _create(directory, names, mode):
    for name in names:
        temp = os.path.join(directory, name)
        try:
            return os.open(temp, _OPEN_FLAGS, mode), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _publish(source, target):
    """Move C{source} to C{target} without ever replacing an existing file."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "target exists", target) from None
        os.rename(source, target)
    else:
        os.unlink(source)
