"""A store: its object store, its metadata store, and its local state.

Layout of the embedded default store (every directory 0700, every file 0600)::

    STORE/artfs-store        marker (format line)
    STORE/meta.sqlite        metadata (sqlite_meta.py)
    STORE/objects/ STORE/tmp/   content-addressed objects (local_objects.py)
    STORE/drafts/<uuid>/     scratch files of drafts (named by a uuid: never reused)
    STORE/locks/             one lock file per draft (a mount holds it), kept apart
                             from the data so deleting a draft's files cannot free it
    STORE/logs/              mount daemon logs
    STORE/gc.lock, gc.turn   see :meth:`Store.writing` and :meth:`Store.collecting`

The gc rule: a writer holds a shared ``flock`` on ``gc.lock`` from before it
writes its first object until the metadata row that references them is
committed; ``gc`` holds it exclusively for its whole mark and sweep.  So gc never
sees an object that a writer is about to reference but has not yet recorded.
"""
from __future__ import annotations

import fcntl
import os
import stat
import threading
from collections import OrderedDict
from contextlib import contextmanager

from ..errors import BadInput, StoreMissing
from . import format as fmt
from .local_objects import LocalObjectStore
from .sqlite_meta import SqliteMeta

MARKER = "artfs-store"
STORE_FORMAT = "artfs store 2\n"
STORE_NAMES = {MARKER, MARKER + ".tmp", "meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm", "meta.sqlite-journal",
               "objects", "tmp", "drafts", "logs", "locks", "gc.lock", "gc.turn"}


def default_store_path() -> str:
    env = os.environ.get("ARTFS_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "artfs")


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, 0o700)


class Store:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.objects = LocalObjectStore(self.path)
        self.meta = SqliteMeta(os.path.join(self.path, "meta.sqlite"))
        self._trees: OrderedDict[bytes, list | dict] = OrderedDict()
        self._tree_cache_entries = 0
        self.tree_cache_limit = 400_000  # decoded entries kept (about 150 MB at most)
        self._tree_lock = threading.Lock()  # the cache is shared by worker threads

    # -- opening -------------------------------------------------------------
    @classmethod
    def init(cls, path: str | None = None) -> "Store":
        """Create a store (idempotent).  A non-empty directory that is not a store is refused;
        an existing directory gets private modes (0700), since the store holds names and data."""
        path = os.path.abspath(path or default_store_path())
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, MARKER)):
            foreign = set(os.listdir(path)) - STORE_NAMES  # another process may be creating it right now
            if foreign:
                raise StoreMissing(f"{path} is not an artfs store and not empty; give a new or empty directory")
        if os.path.exists(path) and not os.path.isdir(path):
            raise BadInput(f"{path} exists and is not a directory")
        _private_dir(path)
        s = cls(path)
        s.objects.create()
        for d in ("drafts", "logs", "locks"):
            _private_dir(os.path.join(path, d))
        s.meta.create()
        s.meta.check_schema()
        with s.writing(), s.objects.batch() as b:  # gc's rule holds for this object too
            b.put_bytes(fmt.EMPTY_TREE)
        marker = os.path.join(path, MARKER)
        if not os.path.exists(marker):
            fd = os.open(marker + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, STORE_FORMAT.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(marker + ".tmp", marker)
            s.objects.durability.barrier(dirs=[path])
        return s

    @classmethod
    def open(cls, path: "str | Store | None" = None) -> "Store":
        if isinstance(path, Store):
            return path
        path = os.path.abspath(path or default_store_path())
        if not os.path.exists(os.path.join(path, MARKER)):
            raise StoreMissing(f"no artfs store at {path}; create it with: artfs --store {path} init")
        s = cls(path)
        for d in ("locks",):  # added after the first store format
            if not os.path.isdir(os.path.join(path, d)):
                _private_dir(os.path.join(path, d))
        s.meta.check_schema()
        return s

    # -- trees ---------------------------------------------------------------
    def tree(self, digest: bytes) -> list:
        """Decoded entries of a tree object (verified, cached)."""
        with self._tree_lock:
            hit = self._trees.get(digest)
            if hit is not None:
                self._trees.move_to_end(digest)
                return hit
        entries = fmt.decode_tree(self.objects.get(digest))
        self._cache(digest, entries)
        return entries

    def _cache(self, key, value) -> None:
        """LRU bounded by the number of decoded entries, not of trees (a tree may hold a million)."""
        with self._tree_lock:
            old = self._trees.pop(key, None)
            if old is not None:
                self._tree_cache_entries -= len(old)
            self._trees[key] = value
            self._tree_cache_entries += len(value)
            while self._tree_cache_entries > self.tree_cache_limit and len(self._trees) > 1:
                _, evicted = self._trees.popitem(last=False)
                self._tree_cache_entries -= len(evicted)

    def tree_map(self, digest: bytes) -> dict:
        """name -> Entry of a tree (cached alongside the list)."""
        key = b"map:" + digest
        with self._tree_lock:
            hit = self._trees.get(key)
        if hit is None:
            hit = {e.name: e for e in self.tree(digest)}
            self._cache(key, hit)
        return hit

    @staticmethod
    def write_dir(batch, meta: fmt.Entry, entries) -> fmt.Entry:
        """Store a directory in ``batch``; returns ``meta`` (the directory's own entry) as a DIR
        entry naming the tree, with the file count and byte total of everything below."""
        ents = list(entries)
        tree = batch.put_bytes(fmt.encode_tree(ents))
        counted = (fmt.FILE, fmt.REF)
        nfiles = sum(x.nfiles if x.kind == fmt.DIR else int(x.kind in counted) for x in ents)
        nbytes = sum(x.size for x in ents if x.kind == fmt.DIR or x.kind in counted)
        return meta.with_(kind=fmt.DIR, digest=tree, ident=fmt.tree_identity(ents), nfiles=nfiles, size=nbytes,
                          dir_id=None, scratch=None, link=None, nlink=1, ctime_ns=0, chunks=None, hlid=None)

    # -- local state -----------------------------------------------------------
    def scratch_dir(self, scratch: str) -> str:
        return os.path.join(self.path, "drafts", scratch)

    def draft_lock_path(self, scratch: str) -> str:
        return os.path.join(self.path, "locks", f"draft-{scratch}.lock")

    def log_dir(self) -> str:
        return os.path.join(self.path, "logs")

    # -- the gc lock ---------------------------------------------------------
    @contextmanager
    def _flock(self, how, name: str = "gc.lock"):
        fd = os.open(os.path.join(self.path, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def writing(self):
        """Held by writers from first object to the row that references it.

        A writer passes the turnstile (``gc.turn``) on its way in, so once gc
        waits there no new writer starts: flock alone grants shared locks ahead
        of a waiting exclusive one, and busy writers would starve gc forever."""
        with self._flock(fcntl.LOCK_SH, "gc.turn"):
            pass
        with self._flock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def collecting(self):
        """Held by gc for its whole mark and sweep (the turnstile first: see writing)."""
        with self._flock(fcntl.LOCK_EX, "gc.turn"), self._flock(fcntl.LOCK_EX):
            yield
