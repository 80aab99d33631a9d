"""
Kerberos keytab files: the principals one holds, and whether it is safe to use.

A keytab holds the service's long-term keys: whoever reads it can forge
tickets to the service (log in as anyone), and whoever writes it can add a
key of their own.  So the server refuses, at start, a keytab that others may
read or write, that its group may write, or that lacks the principal
C{<service>/<server.hostname>@REALM} (in any realm).  Group read is
allowed (C{root:securepop 0640} is the usual way to let the dropped-privilege
service read it).

The file format is MIT's (and Heimdal's, and what C{ktpass} and C{samba-tool
domain exportkeytab} write): version 0x0502, big-endian records.  Only the
principal names are read here, never a key; the GSS-API library reads the
keys.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass

#: Mode bits a keytab must not have: group write, any access for others.
FORBIDDEN_MODE = 0o037
MAX_KEYTAB_BYTES = 1024 * 1024
_MAX_COMPONENTS = 16


@dataclass(frozen=True)
class GSSAPISettings:
    """
    C{[auth.gssapi]}: Kerberos (RFC 4752) with the key of
    C{<service>/<server.hostname>}.  Kept apart from L{securepop.config} so
    that module stays small; it builds and checks this section like the
    others (L{gssapi_problem}).

    @ivar keytab: the keytab's path (relative: to the data directory).
    @ivar realms: the realms whose users may log in; empty: those the keytab
        holds the service principal for.
    """

    keytab: str = ""
    service: str = "pop"
    realms: tuple[str, ...] = ()


class KeytabError(ValueError):
    """A keytab that cannot be read or used; the text says why."""


@dataclass(frozen=True)
class KeytabEntry:
    """One record: a principal (its name parts and realm) and a key version."""

    components: tuple[str, ...]
    realm: str
    kvno: int
    enctype: int

    @property
    def principal(self):
        return "/".join(self.components) + "@" + self.realm


def _counted(data, at, end):
    if at + 2 > end:
        raise KeytabError("truncated record")
    (length,) = struct.unpack_from(">H", data, at)
    at += 2
    if at + length > end:
        raise KeytabError("truncated record")
    return data[at:at + length], at + length


def parse_keytab(data):
    """
    @param data: the file's bytes.
    @return: list of L{KeytabEntry}, in file order (deleted records skipped).
    @raise KeytabError: not a version 0x0502 keytab, or a malformed record.
    """
    if len(data) < 2 or data[0] != 5:
        raise KeytabError("not a Kerberos keytab file")
    if data[1] != 2:
        raise KeytabError(f"keytab version 5.{data[1]} is not supported (5.2 is)")
    entries, at = [], 2
    while at + 4 <= len(data):
        (size,) = struct.unpack_from(">i", data, at)
        at += 4
        if size == 0:
            break
        end = at + abs(size)
        if end > len(data):
            raise KeytabError("truncated record")
        if size > 0:
            entries.append(_entry(data, at, end))
        at = end
    return entries


def _entry(data, at, end):
    if at + 2 > end:
        raise KeytabError("truncated record")
    (count,) = struct.unpack_from(">H", data, at)
    if not 1 <= count <= _MAX_COMPONENTS:
        raise KeytabError("principal with an impossible number of components")
    realm, at = _counted(data, at + 2, end)
    parts = []
    for _ in range(count):
        part, at = _counted(data, at, end)
        parts.append(part)
    if at + 4 + 4 + 1 + 2 > end:
        raise KeytabError("truncated record")
    _name_type, _timestamp, kvno, enctype = struct.unpack_from(">IIBH", data, at)
    at += 11
    _key, at = _counted(data, at, end)
    if at + 4 <= end:               # a 32-bit kvno follows when the 8-bit one overflowed
        (kvno32,) = struct.unpack_from(">I", data, at)
        if kvno32:
            kvno = kvno32
    try:
        return KeytabEntry(tuple(p.decode("utf-8") for p in parts),
                           realm.decode("utf-8"), kvno, enctype)
    except UnicodeDecodeError:
        raise KeytabError("principal name is not UTF-8") from None


def read_keytab(path):
    """
    Read and check a keytab file.

    @return: list of L{KeytabEntry}.
    @raise KeytabError: missing, not a regular file, readable or writable by
        others (L{FORBIDDEN_MODE}), unreadable, or malformed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise KeytabError(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeytabError(f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & FORBIDDEN_MODE:
            raise KeytabError(
                f"{path} has mode {mode:04o}: others may read or write it (it holds "
                f"the service key); chmod 0600, or 0640 with the service's group")
        data = os.read(fd, MAX_KEYTAB_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEYTAB_BYTES:
        raise KeytabError(f"{path} is larger than a keytab can be")
    return parse_keytab(data)


def service_realms(entries, service, hostname):
    """
    @return: the realms (in file order, no repeats) for which the keytab
        holds C{service/hostname}.  Names compare exactly, as the KDC and
        the GSS-API library compare them (a host name is lower case in a
        principal by convention).
    """
    realms = []
    for entry in entries:
        if (len(entry.components) == 2 and entry.components[0] == service
                and entry.components[1] == hostname.rstrip(".")
                and entry.realm not in realms):
            realms.append(entry.realm)
    return realms


def keytab_realms(path, service, hostname):
    """
    The realms for which the keytab at C{path} holds C{service/hostname}.

    @raise KeytabError: a bad keytab, or no such principal in it.
    """
    entries = read_keytab(path)
    found = service_realms(entries, service, hostname)
    if not found:
        has = sorted({entry.principal for entry in entries})[:5]
        raise KeytabError(f"{path} holds no key for {service}/{hostname}@REALM (it holds "
                          f"{', '.join(has) or 'nothing'}; add it with setspn and ktpass, or "
                          f"samba-tool spn add and domain exportkeytab)")
    return tuple(found)


def gssapi_problem(settings):
    """
    What is wrong with C{[auth.gssapi]} for a configuration that enables
    GSSAPI: C{(key, reason)}, or C{None}.  The keytab is read (its mode and
    principals, never a key).
    """
    g = settings.auth.gssapi
    for key, ok, reason in (
            ("service", re.fullmatch(r"[A-Za-z0-9._-]+", g.service), "must be a service name"),
            ("realms", all(re.fullmatch(r"[^\s@/\\]+", r) for r in g.realms),
             "must be realm names"),
            ("keytab", g.keytab, "is required with GSSAPI in auth.mechanisms")):
        if not ok:
            return f"auth.gssapi.{key}", reason
    try:
        keytab_realms(str(settings.resolve(g.keytab)), g.service, settings.server.hostname)
    except KeytabError as e:
        return "auth.gssapi.keytab", str(e)
    return None
