"""A store: where it is, and the object and metadata stores inside it.

Layout of the embedded default store::

    STORE/artfs-store        marker (format version)
    STORE/meta.sqlite        metadata (meta.py)
    STORE/objects/ STORE/tmp/   content-addressed objects (objects.py)
    STORE/drafts/<id>/       scratch files of drafts (copied-up / new files)
    STORE/logs/              mount daemon logs
    STORE/gc.lock, gc.turn   see :meth:`Store.writing` and :meth:`Store.collecting`

The gc rule: a writer holds a shared ``flock`` on ``gc.lock`` from before it
writes or reuses its first object until the metadata row that references
them is committed; ``gc`` holds it exclusively for its whole mark and sweep.
So gc never sees an object that a writer is about to reference but has not
yet recorded.
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager

from . import treefmt
from .errors import StoreMissing
from .meta import SqliteMeta
from .objects import ObjectStore

MARKER = "artfs-store"
STORE_FORMAT = "artfs store 1\n"


def default_store_path() -> str:
    env = os.environ.get("ARTFS_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "artfs")


class Store:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.objects = ObjectStore(self.path)
        self.meta = SqliteMeta(os.path.join(self.path, "meta.sqlite"))
        self._trees: OrderedDict[bytes, list | dict] = OrderedDict()
        self._tree_cache_entries = 0
        self.tree_cache_limit = 400_000  # decoded entries kept (about 150 MB at most)
        self._tree_lock = threading.Lock()  # the cache is shared by FUSE worker threads

    # -- opening -------------------------------------------------------------
    @classmethod
    def init(cls, path: str | None = None) -> "Store":
        path = os.path.abspath(path or default_store_path())
        os.makedirs(path, mode=0o700, exist_ok=True)
        s = cls(path)
        s.objects.create()
        for d in ("drafts", "logs"):
            os.makedirs(os.path.join(path, d), mode=0o700, exist_ok=True)
        s.meta.create()
        with s.writing():  # gc's rule holds for this object too
            s.objects.put_bytes(treefmt.EMPTY_TREE)
        marker = os.path.join(path, MARKER)
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(STORE_FORMAT)
        return s

    @classmethod
    def open(cls, path: "str | Store | None" = None) -> "Store":
        if isinstance(path, Store):
            return path
        path = os.path.abspath(path or default_store_path())
        if not os.path.exists(os.path.join(path, MARKER)):
            raise StoreMissing(f"no artfs store at {path}; create it with: artfs --store {path} init")
        return cls(path)

    # -- trees ---------------------------------------------------------------
    def tree(self, digest: bytes) -> list:
        """Decoded entries of a tree object (verified, cached)."""
        with self._tree_lock:
            hit = self._trees.get(digest)
            if hit is not None:
                self._trees.move_to_end(digest)
                return hit
        entries = treefmt.decode_tree(self.objects.get_bytes(digest.hex()))
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

    def write_tree(self, entries) -> tuple[bytes, bytes]:
        """Store a directory; returns (tree digest, identity)."""
        data = treefmt.encode_tree(entries)
        hexd = self.objects.put_bytes(data)
        return bytes.fromhex(hexd), treefmt.tree_identity(entries)

    def write_dir(self, name: bytes, entries, mode: int, uid: int, gid: int, mtime_ns: int) -> treefmt.Entry:
        """Store a directory; returns its DIR entry, with the file count and byte total of
        everything below (so a version's counts follow from its root)."""
        ents = list(entries)
        tree, ident = self.write_tree(ents)
        counted = (treefmt.FILE, treefmt.REF)
        nfiles = sum(x.nfiles if x.kind == treefmt.DIR else int(x.kind in counted) for x in ents)
        nbytes = sum(x.size for x in ents if x.kind == treefmt.DIR or x.kind in counted)
        return treefmt.Entry(name, treefmt.DIR, mode, uid, gid, nbytes, mtime_ns, digest=tree, ident=ident,
                             nfiles=nfiles)

    # -- paths ---------------------------------------------------------------
    def draft_dir(self, draft_id: int) -> str:
        return os.path.join(self.path, "drafts", str(draft_id))

    def log_dir(self) -> str:
        return os.path.join(self.path, "logs")

    # -- the gc lock ---------------------------------------------------------
    @contextmanager
    def _flock(self, how, name: str = "gc.lock"):
        fd = os.open(os.path.join(self.path, name), os.O_RDWR | os.O_CREAT, 0o600)
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
