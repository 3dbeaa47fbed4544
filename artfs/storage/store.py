"""A store: its object store, its metadata store, and this machine's state for it.

Two kinds, chosen by what is at the store path (``Store.open``):

* the embedded default, a directory (every directory 0700, every file 0600)::

      STORE/artfs-store        marker (format line)
      STORE/meta.sqlite        metadata (sqlite_meta.py)
      STORE/objects/ STORE/tmp/   content-addressed objects (local_objects.py)
      STORE/drafts/<uuid>/     scratch files of drafts (named by a uuid: never reused)
      STORE/locks/             one lock file per draft (a mount holds it), kept apart
                               from the data so deleting a draft's files cannot free it
      STORE/logs/              mount daemon logs
      STORE/gc.lock, gc.turn   see :class:`FlockGc`

* scale-out (DESIGN.md §10): a small description file naming a PostgreSQL
  metadata store and an S3 bucket; this machine's state (object cache, scratch
  files, locks, logs) lives under the user's XDG directories, keyed by the
  store's id (``scaleout.py``).

Everything above the storage layer uses the same :class:`Store` interface:
``objects`` (ObjectStore), ``meta`` (MetaStore), ``state_dir`` (this
machine's drafts/, locks/, logs/) and ``writing()`` / ``collecting()`` (the gc
rule, kept by a coordinator: flock here, leases in the metadata store for
scale-out).
"""
from __future__ import annotations

import fcntl
import os
import stat
import threading
import uuid
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


def private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, 0o700)


_private_dir = private_dir


class FlockGc:
    """The gc rule on one machine: a writer holds a shared ``flock`` on ``gc.lock`` from before it
    writes its first object until the metadata row that references them is committed; gc holds
    it exclusively for its whole mark and sweep.  So gc never sees an object that a writer is
    about to reference but has not yet recorded.

    A writer passes the turnstile (``gc.turn``) on its way in, so once gc waits there no new
    writer starts: flock alone grants shared locks ahead of a waiting exclusive one, and busy
    writers would starve gc forever."""

    def __init__(self, directory: str):
        self.directory = directory

    @contextmanager
    def _flock(self, how, name: str):
        fd = os.open(os.path.join(self.directory, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def writing(self):
        with self._flock(fcntl.LOCK_SH, "gc.turn"):
            pass
        with self._flock(fcntl.LOCK_SH, "gc.lock"):
            yield

    @contextmanager
    def collecting(self):
        with self._flock(fcntl.LOCK_EX, "gc.turn"), self._flock(fcntl.LOCK_EX, "gc.lock"):
            yield


class Store:
    """One store: ``objects``, ``meta``, this machine's ``state_dir``, the gc rule, a tree cache."""

    kind = "local"

    def __init__(self, path: str, objects=None, meta=None, state_dir: str | None = None, gc=None):
        self.path = os.path.abspath(path)
        self.objects = objects if objects is not None else LocalObjectStore(self.path)
        self.meta = meta if meta is not None else SqliteMeta(os.path.join(self.path, "meta.sqlite"))
        self.state_dir = state_dir or self.path
        self.gc_rule = gc if gc is not None else FlockGc(self.path)
        self._trees: OrderedDict[bytes, list | dict] = OrderedDict()
        self._tree_cache_entries = 0
        self.tree_cache_limit = 400_000  # decoded entries kept (about 150 MB at most)
        self._tree_lock = threading.Lock()  # the cache is shared by worker threads

    # -- opening -------------------------------------------------------------
    @classmethod
    def init(cls, path: str | None = None) -> "Store":
        """Create a local store (idempotent).  A non-empty directory that is not a store is
        refused; an existing directory gets private modes (0700), since the store holds names
        and data."""
        path = os.path.abspath(path or default_store_path())
        if os.path.isfile(path):  # a scale-out store's description: it exists already
            from .scaleout import open_scaleout

            return open_scaleout(path)
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, MARKER)):
            # another process may be creating it right now
            foreign = {n for n in os.listdir(path) if n not in STORE_NAMES and not n.startswith(MARKER + ".tmp")}
            if foreign:
                raise StoreMissing(f"{path} is not an artfs store and not empty; give a new or empty directory")
        if os.path.exists(path) and not os.path.isdir(path):
            raise BadInput(f"{path} exists and is not a directory")
        private_dir(path)
        s = cls(path)
        s.objects.create()
        s.ensure_state()
        s.meta.create()
        s.meta.check_schema()
        with s.writing(), s.objects.batch() as b:  # gc's rule holds for this object too
            b.put_bytes(fmt.EMPTY_TREE)
        marker = os.path.join(path, MARKER)
        if not os.path.exists(marker):
            tmp = f"{marker}.tmp.{uuid.uuid4().hex}"  # one per creator: they may race
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, STORE_FORMAT.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, marker)  # the same bytes from every creator: the last rename wins harmlessly
            s.objects.durability.barrier(dirs=[path])
        return s

    @classmethod
    def open(cls, path: "str | Store | None" = None) -> "Store":
        """The store at ``path``: a local store directory, or a scale-out store's description."""
        if isinstance(path, Store):
            return path
        path = os.path.abspath(path or default_store_path())
        if os.path.isfile(path):
            from .scaleout import open_scaleout  # only a scale-out store needs its clients

            return open_scaleout(path)
        if not os.path.exists(os.path.join(path, MARKER)):
            raise StoreMissing(f"no artfs store at {path}; create it with: artfs --store {path} init")
        s = cls(path)
        s.ensure_state()
        s.meta.check_schema()
        if fmt.EMPTY_TREE_DIGEST not in s.objects.has([fmt.EMPTY_TREE_DIGEST]):
            # a store made by artfs 0.1 has only the format-1 empty tree; drafts and gc need this one
            with s.writing(), s.objects.batch() as b:
                b.put_bytes(fmt.EMPTY_TREE)
        return s

    def ensure_state(self) -> None:
        """This machine's directories for the store (drafts' scratch files, locks, logs)."""
        private_dir(self.state_dir)
        for d in ("drafts", "logs", "locks"):
            if not os.path.isdir(os.path.join(self.state_dir, d)):
                private_dir(os.path.join(self.state_dir, d))

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
    def write_tree(batch, entries) -> tuple[bytes, bytes, int, int]:
        """Store a directory's tree in ``batch``; returns (tree digest, identity digest, files
        and references below, their bytes)."""
        ents = list(entries)
        tree = batch.put_bytes(fmt.encode_tree(ents))
        counted = (fmt.FILE, fmt.REF)
        nfiles = sum(x.nfiles if x.kind == fmt.DIR else int(x.kind in counted) for x in ents)
        nbytes = sum(x.size for x in ents if x.kind == fmt.DIR or x.kind in counted)
        return tree, fmt.tree_identity(ents), nfiles, nbytes

    @staticmethod
    def write_dir(batch, meta: fmt.Entry, entries) -> fmt.Entry:
        """Store a directory in ``batch``; returns ``meta`` (the directory's own entry) as a DIR
        entry naming the tree, with the file count and byte total of everything below."""
        tree, ident, nfiles, nbytes = Store.write_tree(batch, entries)
        return meta.with_(kind=fmt.DIR, digest=tree, ident=ident, nfiles=nfiles, size=nbytes,
                          dir_id=None, scratch=None, link=None, nlink=1, ctime_ns=0, chunks=None, hlid=None)

    # -- this machine's state -------------------------------------------------------
    def scratch_dir(self, scratch: str) -> str:
        return os.path.join(self.state_dir, "drafts", scratch)

    def scratch_root(self) -> str:
        return os.path.join(self.state_dir, "drafts")

    def draft_lock_path(self, scratch: str) -> str:
        return os.path.join(self.state_dir, "locks", f"draft-{scratch}.lock")

    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    # -- drafts across machines (a local store is one machine) ---------------------------
    def draft_here(self, row: dict) -> bool:
        """Whether a draft's scratch files (if any) live on this machine."""
        return True

    def claim_draft(self, draft, what: str):
        """Called by ``repo.lock_draft`` once it holds the local lock: something with
        ``release()`` to hold the draft across machines, or None (nothing more to hold)."""
        return None

    # -- the gc rule -------------------------------------------------------------
    def writing(self):
        """Held by writers from their first object to the row that references it."""
        return self.gc_rule.writing()

    def collecting(self):
        """Held by gc for its whole mark and sweep."""
        return self.gc_rule.collecting()
