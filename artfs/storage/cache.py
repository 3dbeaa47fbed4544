"""A per-machine object cache for the scale-out store: bounded, LRU, verified on fill.

Layout (``$XDG_CACHE_HOME/artfs/<store id>/``, every directory 0700, every file 0600)::

    objects/<2 hex>/<62 hex>      a whole object (small ones; big ones without a chunk list)
    spans/<2 hex>/<62 hex>.<i>    span i (SPAN bytes) of a big object, read on demand
    tmp/                          fills and upload spools in progress (atomic rename into place)
    index.sqlite                  what is cached, its size and when it was last used
    boot_id                       the kernel boot the cache was last used in

Only verified bytes ever enter: a whole object is checked against its digest,
each span of a big object piece by piece against the object's chunk list (the
caller, ``s3_objects``, does the checking; this module stores and evicts).
A copy that goes bad afterwards (a bad disk block, a stray write) is caught by
the reads that verify what they serve (``repo.content``): the reader drops it
(:meth:`ObjectCache.drop`, :meth:`ObjectCache.drop_span`) and fetches the bytes
again from the bucket.
Files are written to ``tmp/`` and renamed into place, so a reader never sees
half a file, and a reader's open descriptor keeps working when the entry is
evicted meanwhile (POSIX: the inode lives until closed).  Nothing is fsynced:
after a power loss the cache may hold anything, so a cache first used in
another boot of the kernel is emptied at open (``boot_id``).

Size bound: ``index.sqlite`` (SQLite in WAL mode, shared by every process of
this machine) keeps each entry's size and last use, and a running total; a
fill that takes the total over the limit evicts the least recently used
entries (to 90% of the limit).  Uses are recorded in batches (at most every
couple of seconds per process), not on every read.  An entry whose file is
missing is a miss; a file without a row is adopted when next used.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import threading
import time
import uuid

from .format import CHUNK
from .sqlite_meta import switch_to_wal

SPAN = 8 * CHUNK  # bytes per cached span of a big object (a multiple of CHUNK: pieces never straddle)
DEFAULT_LIMIT = 4 << 30
TOUCH_EVERY = 2.0  # seconds between batched last-use updates of one process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(key TEXT PRIMARY KEY, size INTEGER NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_used ON entries(used);
CREATE TABLE IF NOT EXISTS totals(id INTEGER PRIMARY KEY CHECK (id = 1), total INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0);
CREATE TABLE IF NOT EXISTS bigobj(digest TEXT PRIMARY KEY, size INTEGER NOT NULL, chunks TEXT NOT NULL)
"""


def parse_size(text) -> int:
    """``"4G"``, ``"512M"``, ``"100k"``, ``"1.5GiB"`` or a number of bytes."""
    if isinstance(text, int):
        return text
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise ValueError(f"bad size {text!r} (e.g. 4G, 512M, 100000)") from None
    if n < 0:
        raise ValueError(f"bad size {text!r}")
    return n


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _private(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)


class ObjectCache:
    def __init__(self, root: str, limit: int = DEFAULT_LIMIT):
        self.root = root
        self.limit = max(0, int(limit))
        self.obj_dir = os.path.join(root, "objects")
        self.span_dir = os.path.join(root, "spans")
        self.tmp_dir = os.path.join(root, "tmp")
        self.index_path = os.path.join(root, "index.sqlite")
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pool_pid = os.getpid()
        self._touch_lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self.fills = 0  # entries this process filled (tests, benchmarks)
        self.filled_bytes = 0
        self._open()

    # -- setup ------------------------------------------------------------------------------
    def _open(self) -> None:
        _private(self.root)
        fd = os.open(os.path.join(self.root, "cache.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            boot = _boot_id()
            marker = os.path.join(self.root, "boot_id")
            try:
                with open(marker) as f:
                    seen = f.read().strip()
            except FileNotFoundError:
                seen = None
            if seen is not None and seen != boot:
                self._wipe()  # written without fsync in another boot: nothing in it can be trusted
            for d in (self.obj_dir, self.span_dir, self.tmp_dir):
                _private(d)
            if seen != boot:
                tmp = marker + ".tmp"
                with open(tmp, "w") as f:
                    f.write(boot + "\n")
                os.rename(tmp, marker)
            conn = self._connect()
            try:
                conn.executescript(_SCHEMA)
            finally:
                self._give_back(conn)
        finally:
            os.close(fd)

    def _wipe(self) -> None:
        away = os.path.join(self.root, f"wipe-{uuid.uuid4().hex}")
        _private(away)
        for name in ("objects", "spans", "tmp", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            p = os.path.join(self.root, name)
            if os.path.lexists(p):
                os.rename(p, os.path.join(away, name))
        shutil.rmtree(away, ignore_errors=True)
        for name in os.listdir(self.root):
            if name.startswith("wipe-"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def _connect(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.index_path)
        conn = sqlite3.connect(self.index_path, isolation_level=None, timeout=120, check_same_thread=False)
        if fresh:
            try:
                os.chmod(self.index_path, 0o600)
            except OSError:
                pass
        conn.execute("PRAGMA busy_timeout=120000")
        switch_to_wal(conn, 120)
        conn.execute("PRAGMA synchronous=OFF")  # a cache: a reboot empties it anyway
        return conn

    def _db(self) -> "_Tx":
        """A transaction on a pooled connection (a few per process, whatever the number of threads:
        each holds three descriptors)."""
        with self._pool_lock:
            if self._pool_pid != os.getpid():
                self._idle, self._pool_pid = [], os.getpid()  # a forked child's are not its own
            conn = self._idle.pop() if self._idle else None
        return _Tx(self, conn or self._connect())

    def _give_back(self, conn) -> None:
        with self._pool_lock:
            if self._pool_pid == os.getpid() and len(self._idle) < 2:
                self._idle.append(conn)
                return
        conn.close()

    # -- paths ------------------------------------------------------------------------------
    def whole_path(self, d: bytes) -> str:
        h = d.hex()
        return os.path.join(self.obj_dir, h[:2], h[2:])

    def span_path(self, d: bytes, i: int) -> str:
        h = d.hex()
        return os.path.join(self.span_dir, h[:2], f"{h[2:]}.{i}")

    @staticmethod
    def _key_whole(d: bytes) -> str:
        return "o:" + d.hex()

    @staticmethod
    def _key_span(d: bytes, i: int) -> str:
        return f"s:{d.hex()}:{i}"

    def _path_of(self, key: str) -> str:
        kind, h, *rest = key.split(":")
        d = bytes.fromhex(h)
        return self.whole_path(d) if kind == "o" else self.span_path(d, int(rest[0]))

    def fits(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes may enter (a quarter of the bound at most)."""
        return size <= self.limit // 4

    # -- lookups ---------------------------------------------------------------------------
    def _open_entry(self, key: str, path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._touch(key)
        return fd

    def whole_fd(self, d: bytes) -> int | None:
        """A read-only descriptor on the cached whole object, or None."""
        return self._open_entry(self._key_whole(d), self.whole_path(d))

    def span_fd(self, d: bytes, i: int) -> int | None:
        return self._open_entry(self._key_span(d, i), self.span_path(d, i))

    def info(self, d: bytes) -> tuple[int, bytes] | None:
        """(size, chunk-list digest) of a big object seen before."""
        with self._db() as db:
            r = db.execute("SELECT size, chunks FROM bigobj WHERE digest=?", (d.hex(),)).fetchone()
        return (r[0], bytes.fromhex(r[1])) if r else None

    def set_info(self, d: bytes, size: int, chunks: bytes) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO bigobj VALUES(?,?,?)", (d.hex(), size, chunks.hex()))

    # -- fills -----------------------------------------------------------------------------
    def new_tmp(self) -> tuple[str, int]:
        p = os.path.join(self.tmp_dir, uuid.uuid4().hex)
        return p, os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _install(self, key: str, path: str, tmp: str, size: int) -> None:
        try:
            os.rename(tmp, path)
        except FileNotFoundError:
            _private(os.path.dirname(path))
            os.rename(tmp, path)
        now = time.time()
        with self._db() as db:
            if db.execute("INSERT OR IGNORE INTO entries VALUES(?,?,?)", (key, size, now)).rowcount:
                db.execute("UPDATE totals SET total=total+? WHERE id=1", (size,))
            else:
                db.execute("UPDATE entries SET used=? WHERE key=?", (now, key))
        self.fills += 1
        self.filled_bytes += size
        self._evict()

    def _fill(self, key: str, path: str, data) -> bool:
        if not self.fits(len(data)):
            return False
        try:
            tmp, fd = self.new_tmp()
        except OSError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.close(fd)
            _unlink(tmp)
            return False  # a full disk: the cache is an optimisation, the caller has the bytes
        os.close(fd)
        try:
            self._install(key, path, tmp, len(data))
        except OSError:
            _unlink(tmp)
            return False
        return True

    def put_whole(self, d: bytes, data) -> bool:
        """Cache a whole object's verified bytes; False when it does not fit or cannot be written."""
        return self._fill(self._key_whole(d), self.whole_path(d), data)

    def put_whole_file(self, d: bytes, tmp: str, size: int) -> bool:
        """Move a verified temporary file (from :meth:`new_tmp`) in as a whole object."""
        if not self.fits(size):
            return False
        try:
            self._install(self._key_whole(d), self.whole_path(d), tmp, size)
        except OSError:
            return False
        return True

    def put_span(self, d: bytes, i: int, data) -> bool:
        return self._fill(self._key_span(d, i), self.span_path(d, i), data)

    def drop(self, digests) -> None:
        """Forget objects (gc deleted them from the store, or a cached copy went bad on this disk)."""
        self._forget([(self._key_whole(d), self.whole_path(d)) for d in digests])

    def drop_span(self, d: bytes, i: int) -> None:
        """Forget span i of a big object (its cached copy went bad on this disk)."""
        self._forget([(self._key_span(d, i), self.span_path(d, i))])

    def _forget(self, entries: list[tuple[str, str]]) -> None:
        """Remove (key, path) entries: files first (a reader that has one open keeps it), then rows."""
        for _, path in entries:
            _unlink(path)
        with self._db() as db:
            for k, _ in entries:
                r = db.execute("DELETE FROM entries WHERE key=? RETURNING size", (k,)).fetchone()
                if r:
                    db.execute("UPDATE totals SET total=total-? WHERE id=1", (r[0],))

    # -- recency and eviction ---------------------------------------------------------------
    def _touch(self, key: str) -> None:
        with self._touch_lock:
            self._touched[key] = time.time()
            due = len(self._touched) >= 256 or time.monotonic() - self._last_flush > TOUCH_EVERY
        if due:
            self.flush()

    def flush(self) -> None:
        """Record batched uses; an entry whose row is missing (a race with eviction) is adopted."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
            self._last_flush = time.monotonic()
        if not touched:
            return
        with self._db() as db:
            for key, t in touched.items():
                if db.execute("UPDATE entries SET used=MAX(used, ?) WHERE key=?", (t, key)).rowcount == 0:
                    try:
                        size = os.stat(self._path_of(key)).st_size
                    except OSError:
                        continue
                    db.execute("INSERT OR IGNORE INTO entries VALUES(?,?,?)", (key, size, t))
                    db.execute("UPDATE totals SET total=total+? WHERE id=1", (size,))
        self._evict()

    def used(self) -> int:
        with self._db() as db:
            return db.execute("SELECT total FROM totals WHERE id=1").fetchone()[0]

    def _evict(self) -> None:
        with self._db() as db:
            total = db.execute("SELECT total FROM totals WHERE id=1").fetchone()[0]
            if total <= self.limit:
                return
            goal = int(self.limit * 0.9)
            victims = []
            offset = 0
            while total > goal:
                rows = db.execute("SELECT key, size FROM entries ORDER BY used LIMIT 1000 OFFSET ?",
                                  (offset,)).fetchall()
                if not rows:
                    break
                offset += len(rows)
                for key, size in rows:
                    if total <= goal:
                        break
                    victims.append(key)
                    total -= size
            for key in victims:
                r = db.execute("DELETE FROM entries WHERE key=? RETURNING size", (key,)).fetchone()
                if r:
                    db.execute("UPDATE totals SET total=total-? WHERE id=1", (r[0],))
        for key in victims:  # after the rows: a reader that opens it meanwhile keeps its descriptor
            _unlink(self._path_of(key))

    def clean_tmp(self, older_than: float = 3600.0) -> int:
        """Remove temporaries that processes which died left behind."""
        n = 0
        cutoff = time.time() - older_than
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return 0
        for name in names:
            p = os.path.join(self.tmp_dir, name)
            try:
                if os.stat(p).st_mtime < cutoff:
                    os.unlink(p)
                    n += 1
            except FileNotFoundError:
                pass
        return n

    def disk_usage(self) -> int:
        """Bytes of cached files on disk (tests: the bound is kept)."""
        total = 0
        for top in (self.obj_dir, self.span_dir):
            for d, _, files in os.walk(top):
                for f in files:
                    try:
                        total += os.stat(os.path.join(d, f)).st_size
                    except FileNotFoundError:
                        pass
        return total


class _Tx:
    """``with cache._db() as db``: BEGIN IMMEDIATE ... COMMIT on a pooled connection."""

    __slots__ = ("cache", "conn")

    def __init__(self, cache: ObjectCache, conn):
        self.cache = cache
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        except sqlite3.Error:
            self.conn.close()
            raise
        self.cache._give_back(self.conn)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
