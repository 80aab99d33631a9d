"""
Map a user name to a Maildir path confined to the mail root.

A user name comes from the network (USER, AUTH) or a directory (LDAP), so
it is refused when it could name anything but one directory entry: path
separators, "." and "..", NUL and other control characters, or more than
255 octets in UTF-8 (the longest name a POSIX file system accepts).  The
result is resolved (symlinks followed) and must still lie under the mail
root, so a planted symlink cannot lead a session out of it either.
"""

import functools
import os
import pathlib
import unicodedata

USER_PLACEHOLDER = "{user}"
MAX_USERNAME_OCTETS = 255


def checkUsername(username):
    """
    @type username: L{str}
    @return: C{username} unchanged when it can be one path component.
    @raise ValueError: otherwise (the message never echoes the name).
    """
    if not isinstance(username, str):
        raise ValueError("user name must be text")
    if username in ("", ".", ".."):
        raise ValueError("user name is empty, '.' or '..'")
    if "/" in username or "\\" in username:
        raise ValueError("user name contains a path separator")
    if not (username.isascii() and username.isprintable()):  # else no Cc/Cs/Zl/Zp
        for character in username:
            if unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp"):
                raise ValueError("user name contains a control character")
    try:
        encoded = username.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("user name is not valid Unicode") from None
    if len(encoded) > MAX_USERNAME_OCTETS:
        raise ValueError("user name is longer than 255 octets")
    return username


def mailRoot(rootTemplate, dataDir):
    """
    The directory every mailbox made from C{rootTemplate} must stay under:
    the template's directories before the first component holding
    C{{user}}, relative to C{dataDir} unless absolute.

    @rtype: L{pathlib.Path}
    @raise ValueError: when the template has no C{{user}}.
    """
    if USER_PLACEHOLDER not in rootTemplate:
        raise ValueError("mail root template must contain {user}")
    template = pathlib.PurePath(rootTemplate)
    prefix = []
    for part in template.parts:
        if USER_PLACEHOLDER in part:
            break
        if part == "..":
            raise ValueError("mail root template must not contain '..'")
        prefix.append(part)
    if not prefix:
        # the user's directory right in the data directory could be named
        # like the users file or the certificate
        raise ValueError("mail root template must put {user} below a directory")
    root = pathlib.Path(*prefix)
    if not root.is_absolute():
        root = pathlib.Path(dataDir) / root
    return root


def mailbox_path(root_template, data_dir, username):
    """
    @param root_template: e.g. C{"mail/{user}/Maildir"}, relative to
        C{data_dir} or absolute; C{{user}} is replaced by the user name
        (plain text replacement, never L{str.format}).
    @param data_dir: the server's data directory.
    @param username: the normalised user name.
    @return: the resolved Maildir path (L{pathlib.Path}), strictly under
        the mail root.
    @raise ValueError: for a hostile user name or a path that escapes.
    """
    checkUsername(username)
    # os.path on strings, not pathlib: this runs for every login.
    root = resolvePath(_mailRootText(root_template, os.fspath(data_dir)))
    relative = root_template.replace(USER_PLACEHOLDER, username)
    if ".." in relative.split("/"):
        raise ValueError("mailbox path contains '..'")
    candidate = os.path.join(os.fspath(data_dir), relative)  # absolute: stays as is
    resolved = resolvePath(candidate)
    if resolved == root or not resolved.startswith(root.rstrip("/") + "/"):
        raise ValueError("mailbox path escapes the mail root")
    return pathlib.Path(resolved)


_O_PATH = getattr(os, "O_PATH", None)


def resolvePath(path):
    """
    C{os.path.realpath}, from the kernel when C{path} exists: open it with
    C{O_PATH} and read C{/proc/self/fd/N} (three syscalls instead of an
    lstat per component and a loop in Python: 7 against 27 microseconds,
    for every login).  Anything else (a missing Maildir not yet created,
    no /proc, another OS) takes C{os.path.realpath}.
    """
    if _O_PATH is not None:
        try:
            fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        except OSError:
            return os.path.realpath(path)
        try:
            resolved = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            resolved = None
        finally:
            os.close(fd)
        if resolved is not None and resolved.startswith("/") \
                and not resolved.endswith(" (deleted)"):
            return resolved
    return os.path.realpath(path)


@functools.lru_cache(maxsize=64)
def _mailRootText(rootTemplate, dataDir):
    return os.fspath(mailRoot(rootTemplate, dataDir))


mailboxPath = mailbox_path


def confine(path, root):
    """
    Check an explicit mailbox path (e.g. from a directory attribute)
    against a root.

    @return: the resolved path (L{pathlib.Path}), strictly under C{root}.
    @raise ValueError: when it escapes (after symlinks) or is the root.
    """
    if "\0" in os.fspath(path):
        raise ValueError("mailbox path contains NUL")
    resolvedRoot = pathlib.Path(root).resolve()
    resolved = pathlib.Path(path).resolve()
    if resolved == resolvedRoot or not resolved.is_relative_to(resolvedRoot):
        raise ValueError("mailbox path escapes the mail root")
    return resolved
