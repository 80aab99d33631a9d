"""
What a login reads from a Maildir: the message files of C{new/} and
C{cur/} in delivery order, their UIDLs, and their POP3 sizes (from the
C{,S=/,W=} name fields, the size cache, or counted once); and the removal
of files left in C{tmp/} by deliveries that died.

Blocking (a directory scan, a stat per file, maybe reads): off the reactor,
except for the few syscalls of a Maildir whose sizes are all known.
"""

import hashlib
import json
import os
import re
import threading

from securepop.mailstore.delivery import FILE_MODE
from securepop.mailstore.sizes import crlfSizeOfPath, openRegularFile
from securepop.mailstore.uidlist import read as read_kept_uidls

SIZE_CACHE_NAME = "securepop-sizes.json"
_CACHE_VERSION = 2
_UIDL_RE = re.compile(rb"[\x21-\x7e]{1,70}")
_HASHED_RE = re.compile(rb"h[0-9a-f]{40}")
_FIELD_RE = re.compile(r"^([A-Za-z])=(\d+)$")


def uniquePart(name):
    """
    @return: the unique base of a Maildir file name (before "," or ":").
    """
    return re.split("[,:]", name, maxsplit=1)[0]


def uidlFor(unique):
    """
    @type unique: L{str} (file system encoding, surrogateescape)
    @return: the UIDL (L{bytes}, 1-70 octets in 0x21-0x7E).
    """
    raw = os.fsencode(unique)
    if _UIDL_RE.fullmatch(raw) and not _HASHED_RE.fullmatch(raw):
        return raw
    return b"h" + hashlib.sha256(raw).hexdigest()[:40].encode("ascii")


def nameFields(name):
    """
    @return: C{dict} of the C{,X=<digits>} fields of the base name
        (e.g. C{{"S": 1234, "W": 1260}}).
    """
    base = name.split(":", 1)[0]
    fields = {}
    for part in base.split(",")[1:]:
        match = _FIELD_RE.match(part)
        if match:
            fields[match.group(1)] = int(match.group(2))
    return fields


class MessageEntry:
    """
    One message of the snapshot.

    @ivar subdir: "new" or "cur"; @ivar name: the file name at snapshot;
    @ivar unique: its unique base; @ivar rawSize: octets on disk;
    @ivar mtimeNs: mtime; @ivar crlfSize: POP3 size or None until known;
    @ivar uidl: bytes.
    """

    __slots__ = ("subdir", "name", "unique", "rawSize", "mtimeNs", "crlfSize", "uidl")

    def __init__(self, subdir, name, rawSize, mtimeNs):
        self.subdir = subdir
        self.name = name
        self.unique = uniquePart(name)
        self.rawSize = rawSize
        self.mtimeNs = mtimeNs
        self.crlfSize = None
        self.uidl = None


def scanMaildir(maildirPath):
    """
    List the regular, non-hidden files of C{new/} and C{cur/} in delivery
    order.  Slow for big mailboxes (a stat per file): off the reactor.

    @rtype: L{list} of L{MessageEntry}
    """
    entries = []
    for subdir in ("new", "cur"):
        try:
            iterator = os.scandir(os.path.join(maildirPath, subdir))
        except FileNotFoundError:
            continue
        with iterator:
            for dirEntry in iterator:
                if dirEntry.name.startswith("."):
                    continue
                try:
                    if not dirEntry.is_file(follow_symlinks=False):
                        continue
                    stat = dirEntry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked
                entries.append(MessageEntry(subdir, dirEntry.name, stat.st_size, stat.st_mtime_ns))
    entries.sort(key=lambda entry: (entry.mtimeNs, entry.name))
    return entries


TMP_MAX_AGE = 36 * 3600


# When each Maildir's tmp/ was last cleaned by this process: a file there
# must be 36 hours old to go, so once an hour is as good as every login.
TMP_CLEAN_INTERVAL = 3600.0
_tmpCleaned = {}
_TMP_CLEANED_MAX = 100_000


def cleanTmpSometimes(maildirPath, now, interval=TMP_CLEAN_INTERVAL):
    """
    L{cleanTmp}, at most once per C{interval} seconds per Maildir.

    @return: how many files were removed (0 when skipped).
    """
    last = _tmpCleaned.get(maildirPath)
    if last is not None and 0 <= now - last < interval:
        return 0
    if len(_tmpCleaned) >= _TMP_CLEANED_MAX:
        _tmpCleaned.clear()
    _tmpCleaned[maildirPath] = now
    return cleanTmp(maildirPath, now)


def cleanTmp(maildirPath, now, maxAge=TMP_MAX_AGE):
    """
    Remove files left in C{tmp/} by deliveries that died, once they are
    older than 36 hours (the Maildir specification's rule; a delivery in
    progress is never that old).

    @return: how many were removed.
    """
    removed = 0
    tmpDir = os.path.join(maildirPath, "tmp")
    try:
        iterator = os.scandir(tmpDir)
    except OSError:
        return 0
    with iterator:
        for dirEntry in iterator:
            try:
                if not dirEntry.is_file(follow_symlinks=False) and not dirEntry.is_symlink():
                    continue
                if now - dirEntry.stat(follow_symlinks=False).st_mtime > maxAge:
                    os.unlink(dirEntry.path)
                    removed += 1
            except OSError:
                continue
    return removed


def _loadSizeCache(path):
    try:
        fd = openRegularFile(path)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as cacheFile:
            data = json.loads(cacheFile.read(64 * 1024 * 1024))
        if data.get("version") != _CACHE_VERSION:
            return {}
        entries = data["sizes"]
        if not isinstance(entries, dict):
            return {}
        return entries
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return {}


def _writeSizeCache(path, sizes):
    """
    Atomically replace the cache file (write, fsync, rename).
    """
    tmpPath = f"{path}.{os.getpid()}.tmp"
    payload = json.dumps({"version": _CACHE_VERSION, "sizes": sizes}).encode("ascii")
    try:
        fd = os.open(
            tmpPath,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
        )
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmpPath, path)
    except OSError:
        try:
            os.unlink(tmpPath)
        except OSError:
            pass  # the cache is only a cache


class _SizeMemo:
    """
    The size caches of recently opened Maildirs, in memory: a login then
    reads no cache file.  Bounded by the number of messages remembered
    (least recently used Maildirs go first).  Entries are checked against
    each file's size and mtime like the file cache, so a stale memo only
    costs a recount.  Shared by the thread pool's threads, hence the lock.
    """

    def __init__(self, maxEntries=200_000):
        self.maxEntries = maxEntries
        self._maildirs = {}  # insertion order = least recently used first
        self._counts = {}    # messages in the Maildir when last opened
        self._entries = 0
        self._lock = threading.Lock()

    def get(self, path):
        with self._lock:
            sizes = self._maildirs.pop(path, None)
            if sizes is not None:
                self._maildirs[path] = sizes
            return sizes

    def count(self, path):
        """How many messages C{path}'s Maildir had when last opened, or None."""
        return self._counts.get(path)

    def put(self, path, sizes, count=None):
        """
        @param sizes: the cache entries (messages without C{,W=});
        @param count: all messages of the Maildir (default: C{len(sizes)}).
        """
        with self._lock:
            old = self._maildirs.pop(path, None)
            if old is not None:
                self._entries -= len(old) + 1
                del self._counts[path]
            if len(sizes) > self.maxEntries:
                return
            self._maildirs[path] = sizes
            self._counts[path] = len(sizes) if count is None else count
            self._entries += len(sizes) + 1
            while self._entries > self.maxEntries:
                oldest = next(iter(self._maildirs))
                self._entries -= len(self._maildirs.pop(oldest)) + 1
                del self._counts[oldest]

    def clear(self):
        with self._lock:
            self._maildirs.clear()
            self._counts.clear()
            self._entries = 0


_sizeMemo = _SizeMemo()


def known_message_count(maildirPath):
    """
    How many messages the Maildir had when this process last opened it, or
    L{None}: whether an open is cheap enough for the reactor thread.
    """
    return _sizeMemo.count(os.path.join(os.fspath(maildirPath), SIZE_CACHE_NAME))


class SizesUnknown(Exception):
    """
    A message's size is neither in its name nor cached: the file must be
    read (L{computeSizes} with C{mayCount=False}, on the reactor thread).
    """


def computeSizes(maildirPath, entries, cacheName=SIZE_CACHE_NAME, countFile=None,
                 mayCount=True):
    """
    Fill in C{crlfSize} of every entry: from C{,W=} when C{,S=} matches the
    file, from the cache when unique name, size and mtime match, else by
    reading the file once; then rewrite the cache if it changed.  Slow when
    many files must be read: off the reactor.
    """
    countFile = countFile or crlfSizeOfPath
    cachePath = os.path.join(maildirPath, cacheName)
    cached = _sizeMemo.get(cachePath)
    if cached is None:
        cached = _loadSizeCache(cachePath)
    fresh = {}
    for entry in entries:
        fields = nameFields(entry.name)
        if fields.get("S") == entry.rawSize and "W" in fields:
            entry.crlfSize = fields["W"]
            continue
        known = cached.get(entry.unique)
        if (
            isinstance(known, list)
            and len(known) == 3
            and known[0] == entry.rawSize
            and known[1] == entry.mtimeNs
            and isinstance(known[2], int)
        ):
            entry.crlfSize = known[2]
        else:
            if not mayCount:
                raise SizesUnknown(entry.name)
            try:
                entry.crlfSize = countFile(os.path.join(maildirPath, entry.subdir, entry.name))
            except OSError:
                entry.crlfSize = entry.rawSize + 2  # vanished or unreadable: best guess
                continue
        fresh[entry.unique] = [entry.rawSize, entry.mtimeNs, entry.crlfSize]
    if fresh != cached:
        _writeSizeCache(cachePath, fresh)
    _sizeMemo.put(cachePath, fresh, len(entries))


def assignUidls(entries, kept=None):
    """
    Give every entry a UIDL, unique within the snapshot: the kept one when
    C{kept} has the entry's unique name (first, so a name-derived UIDL
    never takes it), else one from the name.

    @param kept: C{{unique: KeptUidl}} (L{securepop.mailstore.uidlist}) or None.
    """
    seen = set()
    for entry in entries:
        record = kept.get(entry.unique) if kept else None
        uidl = record.uidl.encode("ascii") if record is not None else None
        if uidl is not None and uidl not in seen:
            seen.add(uidl)
            entry.uidl = uidl
    for entry in entries:
        if entry.uidl is not None:
            continue
        uidl = uidlFor(entry.unique)
        if uidl in seen:  # two files with one unique name: keep both apart
            uidl = uidlFor(entry.name.split(":", 1)[0] + "\0dup")
        counter = 0
        while uidl in seen:
            counter += 1
            uidl = uidlFor(f"{entry.name}\0{counter}")
        seen.add(uidl)
        entry.uidl = uidl


def orderKept(entries, kept):
    """
    Put the messages C{kept} names in the old server's order, in the places
    the delivery order gave them; every other message stays where it was.
    """
    slots = [i for i, entry in enumerate(entries) if entry.unique in kept]
    ordered = sorted((entries[i] for i in slots),
                     key=lambda entry: (kept[entry.unique].order, entry.name))
    for i, entry in zip(slots, ordered):
        entries[i] = entry


def applyUidls(maildirPath, entries):
    """
    The UIDLs and order of a snapshot: L{orderKept} and L{assignUidls} with
    the Maildir's kept UIDLs (L{securepop.mailstore.uidlist}), if any.
    """
    kept = read_kept_uidls(maildirPath)
    if kept:
        orderKept(entries, kept)
    assignUidls(entries, kept)
