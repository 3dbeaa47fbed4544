"""Drafts: the persistent, mutable state of a version being prepared.

A draft is its parent's root tree plus an overlay, kept in the metadata
store so that unmounting, a crash or a reboot loses nothing:

* A *materialized directory* (``dir_id``; the root is 0) has a base tree
  (or none, for a new directory) and overlay rows ``name -> rec`` that add,
  replace or white out (``rec = None``) names of that base.
* A directory entry that was never changed below stays a plain reference to
  its tree digest; it is materialized (given a ``dir_id`` whose base is that
  digest) the first time something inside it changes: O(depth), never O(size).
* A changed file's bytes live in a *scratch file* ``STORE/drafts/<id>/<name>``
  until commit; an unchanged file is just its digest.

Opening a draft of any size is O(number of changes).  Renaming a directory
moves one overlay row.  Commit rebuilds only the materialized directories,
hashes only scratch files (in threads) and shares every other subtree by
digest.

Concurrency: a Draft object belongs to one thread at a time (the FUSE layer
serialises mutations; commit runs while writers are held back).  Each
mutation is one metadata transaction.

Commit and crash safety: a scratch file is hard-linked into the object store
under its digest, trees are written, ``syncfs``, then one transaction
inserts the version and resets the draft; only after that are the scratch
names unlinked.  A crash before the transaction leaves the draft as it was
(its scratch files are still there); a scratch file found with more than one
link when a draft is opened is replaced by a private copy, so an object is
never modified through a scratch name.
"""
from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import msgpack

from . import treefmt
from .errors import BadInput, Conflict, Corrupt, NotFound
from .objects import copy_fd
from .treefmt import DIR, FILE, REF, SYMLINK, Entry

Path = tuple  # tuple[bytes, ...]


class NotADirectory(BadInput):
    pass


class IsADirectory(BadInput):
    pass


class NotEmpty(Conflict):
    pass


class Exists(Conflict):
    pass


@dataclass(slots=True)
class DEntry:
    """One name in a draft: like treefmt.Entry, but its content may be mutable."""

    kind: int
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    digest: bytes | None = None  # FILE (stored) / REF
    scratch: str | None = None  # FILE whose bytes are in a scratch file
    tree: bytes | None = None  # DIR not materialized: its tree
    ident: bytes | None = None
    nfiles: int = 0
    dir_id: int | None = None  # DIR materialized
    target: bytes | None = None  # SYMLINK
    uri: str | None = None  # REF

    @classmethod
    def of(cls, e: Entry) -> "DEntry":
        return cls(e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, digest=e.digest if e.kind != DIR else None,
                   tree=e.digest if e.kind == DIR else None, ident=e.ident, nfiles=e.nfiles, target=e.target, uri=e.uri)

    def copy(self, **kw) -> "DEntry":
        return replace(self, **kw)

    @property
    def st_mode(self) -> int:
        fmt = {FILE: stat.S_IFREG, REF: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}[self.kind]
        return fmt | self.mode

    @property
    def executable(self) -> bool:
        return self.kind in (FILE, REF) and bool(self.mode & 0o111)

    def encode(self) -> bytes:
        head = [self.kind, self.mode, self.uid, self.gid, self.size, self.mtime_ns]
        if self.kind == FILE:
            tail = ["s", self.scratch] if self.scratch is not None else ["h", self.digest]
        elif self.kind == DIR:
            tail = ["d", self.dir_id] if self.dir_id is not None else ["t", self.tree, self.ident, self.nfiles]
        elif self.kind == SYMLINK:
            tail = ["l", self.target]
        else:
            tail = ["r", self.digest, self.uri]
        return msgpack.packb(head + tail, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "DEntry | None":
        """A draft record (None for a whiteout); a damaged record is Corrupt, never a crash."""
        try:
            row = msgpack.unpackb(data, raw=False)
            if row == [0]:
                return None
            kind, mode, uid, gid, size, mtime, tag, *rest = row
            e = cls(kind, mode, uid, gid, size, mtime)
            if tag == "s":
                (e.scratch,) = rest
            elif tag == "h":
                (e.digest,) = rest
            elif tag == "d":
                (e.dir_id,) = rest
            elif tag == "t":
                e.tree, e.ident, e.nfiles = rest
            elif tag == "l":
                (e.target,) = rest
            elif tag == "r":
                e.digest, e.uri = rest
            else:
                raise ValueError(f"unknown tag {tag!r}")
            if kind not in treefmt.KINDS or (kind == DIR) != (tag in ("d", "t")):
                raise ValueError(f"kind {kind!r} with tag {tag!r}")
        except Exception as exc:  # msgpack and unpacking raise many types for damaged bytes
            raise Corrupt(f"damaged draft record: {type(exc).__name__}: {exc}") from None
        return e


WHITEOUT_REC = msgpack.packb([0])


class Draft:
    """A draft of ``artifact`` on top of version ``parent`` (None: empty)."""

    def __init__(self, store, row: dict):
        self.store = store
        self.meta = store.meta
        self.id: int = row["id"]
        self.key: str = row["key"]
        self.artifact: str = row["artifact"]
        self.type: str = row["type"]
        self.created = row["created"]
        self.scratch_dir = store.draft_dir(self.id)
        self._root = DEntry(DIR, 0o755, os.getuid(), os.getgid(), 0, int(self.created * 1e9), dir_id=0)
        self.touch_parents = False  # a mount sets it: a change moves its directory's mtime (same transaction)
        self._load(row)
        self._digest_cache: dict[str, tuple] = {}  # scratch -> (size, mtime_ns, digest)

    def _load(self, row: dict) -> None:
        self.parent: int | None = row["parent"]
        self.base_root: bytes | None = bytes.fromhex(row["base_root"]) if row["base_root"] else None
        self.outcome: str = row["outcome"]
        dirs, ents = self.meta.draft_state(self.id)
        self.bases: dict[int, bytes | None] = {d: (bytes.fromhex(b) if b else None) for d, b in dirs.items()}
        self.overlay: dict[int, dict[bytes, DEntry | None]] = {d: {} for d in self.bases}
        for dir_id, name, rec in ents:
            self.overlay.setdefault(dir_id, {})[name] = DEntry.decode(rec)
        self.next_id = max([row["next_id"], *[d + 1 for d in self.bases]])
        self._repair_scratch()

    def _repair_scratch(self) -> None:
        """After a crash mid-commit a scratch file may share its inode with an object: unshare it."""
        for ov in self.overlay.values():
            for e in ov.values():
                if e is not None and e.scratch is not None:
                    p = self.scratch_path(e.scratch)
                    try:
                        st = os.stat(p)
                    except FileNotFoundError:
                        continue
                    if st.st_nlink > 1:
                        tmp = p + ".unshare"
                        shutil.copyfile(p, tmp)
                        os.rename(tmp, p)
                    e.size = st.st_size

    # -- opening ---------------------------------------------------------------
    @classmethod
    def open(cls, store, key: str, artifact: str, type_: str, parent: int | None, base_root: str | None) -> "Draft":
        row = store.meta.create_draft(key, artifact, type_, parent, base_root)
        os.makedirs(store.draft_dir(row["id"]), mode=0o700, exist_ok=True)
        return cls(store, row)

    def reload(self) -> None:
        self._load(self.meta.draft_by_id(self.id))

    def discard(self) -> None:
        self.meta.delete_draft(self.id)
        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    # -- scratch files ---------------------------------------------------------
    def scratch_path(self, name: str) -> str:
        return os.path.join(self.scratch_dir, name)

    def new_scratch(self) -> tuple[str, str]:
        name = uuid.uuid4().hex
        os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
        return name, self.scratch_path(name)

    def _drop_scratch(self, name: str) -> None:
        # Open descriptors (open-unlinked files in a mount) keep the bytes alive.
        try:
            os.unlink(self.scratch_path(name))
        except FileNotFoundError:
            pass
        self._digest_cache.pop(name, None)

    # -- reading ---------------------------------------------------------------
    def root(self) -> DEntry:
        return self._root  # the root's own metadata is not versioned

    def _get(self, d: DEntry, name: bytes) -> DEntry | None:
        if d.dir_id is not None:
            ov = self.overlay.get(d.dir_id)
            if ov and name in ov:
                return ov[name]
            base = self.bases.get(d.dir_id)
        else:
            base = d.tree
        if base is None:
            return None
        e = self.store.tree_map(base).get(name)
        return DEntry.of(e) if e is not None else None

    def child(self, d: DEntry, name: bytes) -> DEntry | None:
        if d.kind != DIR:
            raise NotADirectory("not a directory")
        return self._get(d, name)

    def lookup(self, path: Path) -> DEntry | None:
        d = self.root()
        for comp in path:
            if d.kind != DIR:
                return None
            d = self._get(d, comp)
            if d is None:
                return None
        return d

    def children(self, d: DEntry) -> dict[bytes, DEntry]:
        """All names of a directory (merged base + overlay)."""
        if d.kind != DIR:
            raise NotADirectory("not a directory")
        base = self.bases.get(d.dir_id) if d.dir_id is not None else d.tree
        out = {e.name: DEntry.of(e) for e in self.store.tree(base)} if base is not None else {}
        if d.dir_id is not None:
            for name, e in self.overlay.get(d.dir_id, {}).items():
                if e is None:
                    out.pop(name, None)
                else:
                    out[name] = e
        return out

    def listdir(self, path: Path) -> list[tuple[bytes, DEntry]]:
        d = self.lookup(path)
        if d is None:
            raise NotFound(f"no such directory: {treefmt.join_path(path)}")
        return sorted(self.children(d).items())

    def file_digest(self, e: DEntry) -> bytes:
        """Content digest of a file entry (hashes a scratch file, cached by size+mtime)."""
        if e.scratch is None:
            return e.digest
        p = self.scratch_path(e.scratch)
        st = os.stat(p)
        hit = self._digest_cache.get(e.scratch)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        from .objects import hash_file

        d = bytes.fromhex(hash_file(p)[0])
        self._digest_cache[e.scratch] = (st.st_size, st.st_mtime_ns, d)
        return d

    # -- mutation helpers ---------------------------------------------------------
    def _alloc(self) -> int:
        n = self.next_id
        self.next_id += 1
        return n

    def _apply(self, ops) -> None:
        if ops:
            self.meta.draft_apply(self.id, ops, self.next_id)

    def _dir(self, path: Path, ops: list) -> int:
        """dir_id of the directory at ``path``, materializing it (and its ancestors)."""
        cur = self.root()
        for comp in path:
            e = self._get(cur, comp)
            if e is None:
                raise NotFound(f"no such directory: {treefmt.join_path(path)}")
            if e.kind != DIR:
                raise NotADirectory(f"not a directory: {treefmt.join_path(path)}")
            if e.dir_id is None:
                nid = self._alloc()
                self.bases[nid] = e.tree
                self.overlay[nid] = {}
                ops.append(("dir", nid, e.tree.hex() if e.tree else None))
                e = e.copy(dir_id=nid, tree=None, ident=None, nfiles=0)
                self._set(cur.dir_id, comp, e, ops)
            cur = e
        return cur.dir_id

    def _set(self, dir_id: int, name: bytes, e: DEntry | None, ops: list) -> None:
        """Overlay ``name`` in a materialized dir with ``e`` (None removes it)."""
        base = self.bases.get(dir_id)
        in_base = base is not None and name in self.store.tree_map(base)
        ov = self.overlay.setdefault(dir_id, {})
        if e is None and not in_base:
            ov.pop(name, None)
            ops.append(("del", dir_id, name))
        else:
            ov[name] = e
            ops.append(("put", dir_id, name, e.encode() if e is not None else WHITEOUT_REC))

    def _forget_subtree(self, e: DEntry | None, ops: list, keep_scratch=None) -> None:
        """Drop what only ``e`` referenced: materialized dirs and scratch files below it."""
        if e is None:
            return
        if e.scratch is not None and e.scratch != keep_scratch:
            self._drop_scratch(e.scratch)
        if e.dir_id is not None:
            for child in self.overlay.get(e.dir_id, {}).values():
                self._forget_subtree(child, ops, keep_scratch)
            self.overlay.pop(e.dir_id, None)
            self.bases.pop(e.dir_id, None)
            ops.append(("deldir", e.dir_id))

    def _touch(self, dirs, ops: list) -> None:
        """With ``touch_parents``: the directories at ``dirs`` get mtime now, in the same ops."""
        if not self.touch_parents:
            return
        now = time.time_ns()
        for path in dirs:
            if path:  # the root's metadata is not versioned
                gp = self._dir(path[:-1], ops)
                e = self._get(DEntry(DIR, 0, dir_id=gp), path[-1])
                self._set(gp, path[-1], e.copy(mtime_ns=now), ops)

    @staticmethod
    def _split(path: Path) -> tuple[Path, bytes]:
        if not path:
            raise BadInput("the root cannot be changed this way")
        for comp in path:
            treefmt.check_name(comp)
        return path[:-1], path[-1]

    # -- mutations ---------------------------------------------------------------
    def put(self, path: Path, e: DEntry, replace_dir: bool = True) -> DEntry:
        """Set ``path`` to ``e`` (creating or replacing); parents must exist."""
        parent, name = self._split(path)
        ops: list = []
        dir_id = self._dir(parent, ops)
        old = self._get(DEntry(DIR, 0, dir_id=dir_id), name)
        if old is not None and old.kind == DIR and not replace_dir:
            raise IsADirectory(f"is a directory: {treefmt.join_path(path)}")
        self._forget_subtree(old, ops, keep_scratch=e.scratch)
        self._set(dir_id, name, e, ops)
        self._touch([parent], ops)
        self._apply(ops)
        return e

    def update(self, path: Path, **kw) -> DEntry:
        """Change fields of an existing entry (mode, uid, gid, mtime_ns, size, scratch...)."""
        e = self.lookup(path)
        if e is None:
            raise NotFound(f"no such file: {treefmt.join_path(path)}")
        if not path:
            return e  # root metadata is not versioned
        parent, name = self._split(path)
        ops: list = []
        dir_id = self._dir(parent, ops)
        e = self._get(DEntry(DIR, 0, dir_id=dir_id), name)  # may have been re-fetched after materialize
        new = e.copy(**kw)
        self._set(dir_id, name, new, ops)
        self._apply(ops)
        return new

    def mkdir(self, path: Path, mode: int = 0o755, uid: int | None = None, gid: int | None = None,
              mtime_ns: int | None = None) -> DEntry:
        if self.lookup(path) is not None:
            raise Exists(f"exists: {treefmt.join_path(path)}")
        parent, name = self._split(path)
        ops: list = []
        dir_id = self._dir(parent, ops)
        nid = self._alloc()
        self.bases[nid] = None
        self.overlay[nid] = {}
        ops.append(("dir", nid, None))
        e = DEntry(DIR, mode & 0o7777, os.getuid() if uid is None else uid, os.getgid() if gid is None else gid,
                   0, time.time_ns() if mtime_ns is None else mtime_ns, dir_id=nid)
        self._set(dir_id, name, e, ops)
        self._touch([parent], ops)
        self._apply(ops)
        return e

    def makedirs(self, path: Path) -> None:
        for i in range(1, len(path) + 1):
            e = self.lookup(path[:i])
            if e is None:
                self.mkdir(path[:i])
            elif e.kind != DIR:
                raise NotADirectory(f"not a directory: {treefmt.join_path(path[:i])}")

    def remove(self, path: Path, recursive: bool = True) -> DEntry:
        parent, name = self._split(path)
        ops: list = []
        e = self.lookup(path)
        if e is None:
            raise NotFound(f"no such file or directory: {treefmt.join_path(path)}")
        if e.kind == DIR and not recursive and self.children(e):
            raise NotEmpty(f"directory not empty: {treefmt.join_path(path)}")
        dir_id = self._dir(parent, ops)
        self._forget_subtree(e, ops)
        self._set(dir_id, name, None, ops)
        self._touch([parent], ops)
        self._apply(ops)
        return e

    def rename(self, old: Path, new: Path) -> None:
        """Move an entry (file or directory, from the parent or not) over ``new``."""
        if old == new:
            return
        if new[: len(old)] == old:
            raise BadInput("cannot move a directory into itself")
        e = self.lookup(old)
        if e is None:
            raise NotFound(f"no such file or directory: {treefmt.join_path(old)}")
        target = self.lookup(new)
        if target is not None:
            if target.kind == DIR and e.kind != DIR:
                raise IsADirectory(f"is a directory: {treefmt.join_path(new)}")
            if e.kind == DIR and target.kind != DIR:
                raise NotADirectory(f"not a directory: {treefmt.join_path(new)}")
            if target.kind == DIR and self.children(target):
                raise NotEmpty(f"directory not empty: {treefmt.join_path(new)}")
        ops: list = []
        op, oname = self._split(old)
        np_, nname = self._split(new)
        odir = self._dir(op, ops)
        e = self._get(DEntry(DIR, 0, dir_id=odir), oname)  # re-read: materializing may have changed it
        ndir = self._dir(np_, ops)
        old_target = self._get(DEntry(DIR, 0, dir_id=ndir), nname)
        self._forget_subtree(old_target, ops, keep_scratch=e.scratch)
        self._set(odir, oname, None, ops)
        self._set(ndir, nname, e, ops)
        self._touch([op] if op == np_ else [op, np_], ops)
        self._apply(ops)

    # -- adding content from outside (API, put --patch) ------------------------------
    def add_file(self, path: Path, src: str, keep_meta: bool = True) -> DEntry:
        """Copy a local file into the store and set it at ``path`` (parents created)."""
        st = os.stat(src)
        with self.store.writing():
            hexd, size = self.store.objects.put_file(src)
            self.makedirs(path[:-1])
            e = DEntry(FILE, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, digest=bytes.fromhex(hexd))
            return self.put(path, e, replace_dir=True)

    def add_entry(self, path: Path, entry: Entry) -> DEntry:
        """Set a stored entry (file, tree, symlink, reference) at ``path``; parents created."""
        self.makedirs(path[:-1])
        return self.put(path, DEntry.of(entry))

    # -- commit -------------------------------------------------------------------
    def _scratch_entries(self, dir_id: int, out: list) -> None:
        for e in self.overlay.get(dir_id, {}).values():
            if e is None:
                continue
            if e.scratch is not None:
                out.append(e)
            elif e.dir_id is not None:
                self._scratch_entries(e.dir_id, out)

    def build(self, progress=None, threads: int = 4) -> tuple[Entry, dict[str, tuple[bytes, int]]]:
        """Write every changed object and tree; return (root as a DIR Entry, {scratch name: (digest, size)}).

        Cost: the materialized directories and the scratch files, nothing else.
        The caller must hold ``store.writing()`` and sync objects before recording.
        """
        scratch = []
        self._scratch_entries(0, scratch)
        objs = self.store.objects

        def adopt(e: DEntry):
            p = self.scratch_path(e.scratch)
            hexd, size = _link_in(objs, p)
            if progress:
                progress(1)
            return e.scratch, bytes.fromhex(hexd), size

        with ThreadPoolExecutor(threads) as pool:
            done = {name: (d, size) for name, d, size in pool.map(adopt, scratch)}

        def to_entry(name: bytes, e: DEntry) -> Entry:
            if e.kind == DIR:
                if e.dir_id is not None:
                    return build_dir(e.dir_id, name, e)
                return Entry(name, DIR, e.mode, e.uid, e.gid, e.size, e.mtime_ns, digest=e.tree, ident=e.ident, nfiles=e.nfiles)
            if e.kind == FILE and e.scratch is not None:
                d, size = done[e.scratch]
                mtime = os.stat(self.scratch_path(e.scratch)).st_mtime_ns  # writes move the scratch file's mtime
                return Entry(name, FILE, e.mode, e.uid, e.gid, size, mtime, digest=d)
            return Entry(name, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, digest=e.digest, target=e.target, uri=e.uri)

        def build_dir(dir_id: int, name: bytes, de: DEntry) -> Entry:
            base = self.bases.get(dir_id)
            entries = dict(self.store.tree_map(base)) if base is not None else {}
            for n, e in self.overlay.get(dir_id, {}).items():
                if e is None:
                    entries.pop(n, None)
                else:
                    entries[n] = to_entry(n, e)
            return self.store.write_dir(name, entries.values(), de.mode, de.uid, de.gid, de.mtime_ns)

        root = build_dir(0, b"", self.root())
        return root, done

    def commit(self, message: str | None = None, metadata: dict | None = None, how: str = "incremental",
               description: str | None = None, progress=None) -> tuple[int, bool]:
        """Turn the draft into the next version (or find it unchanged); the draft goes on, clean."""
        num, unchanged, adopted = self.commit_durable(message, metadata, how, description, progress)
        self.commit_finish(adopted)
        return num, unchanged

    def commit_durable(self, message: str | None = None, metadata: dict | None = None, how: str = "incremental",
                       description: str | None = None, progress=None) -> tuple[int, bool, list[str]]:
        """The durable half of commit; changes nothing in memory (safe in a worker thread
        while others read this draft).  Returns (number, unchanged, scratch names adopted)."""
        with self.store.writing():
            root, done = self.build(progress)
            adopted = list(done)
            self.store.objects.sync()

            def reset(db, num, unchanged):
                outcome = f"{self.artifact}:v{num}" + (" (unchanged)" if unchanged else "")
                self.meta.reset_draft_in(db, self.id, num, root.digest.hex(), outcome)

            num, unchanged = self.meta.commit_version(
                self.artifact, self.type, root.digest.hex(), root.ident.hex(), self.parent,
                "parent" if self.parent is not None else "latest", message, metadata,
                root.nfiles, root.size, how if self.parent is not None else "single", description, after=reset,
            )
        return num, unchanged, adopted

    def commit_finish(self, adopted: list[str]) -> None:
        """The in-memory half: forget the committed scratch files, start clean."""
        for name in adopted:
            self._drop_scratch(name)
        self.reload()

    def settle(self, done: dict[str, tuple[bytes, int]]) -> None:
        """After an upsert: files built from scratch files now live in the store; point the
        draft's entries at their digests and drop the scratch names (content unchanged)."""
        ops: list = []

        def walk(dir_id: int):
            for name, e in list(self.overlay.get(dir_id, {}).items()):
                if e is None:
                    continue
                if e.scratch is not None and e.scratch in done:
                    digest, size = done[e.scratch]
                    mtime = os.stat(self.scratch_path(e.scratch)).st_mtime_ns
                    self._set(dir_id, name, e.copy(scratch=None, digest=digest, size=size, mtime_ns=mtime), ops)
                elif e.dir_id is not None:
                    walk(e.dir_id)

        walk(0)
        self._apply(ops)
        for name in done:
            self._drop_scratch(name)

    def unshare(self) -> None:
        """After a failed upsert: scratch files hard-linked into the store get private copies again."""
        self._repair_scratch()

    def rebase(self, num: int, root_hex: str, outcome: str) -> None:
        """Start clean on version ``num`` (after a collaborative version was sealed)."""
        with self.meta.tx() as db:
            self.meta.reset_draft_in(db, self.id, num, root_hex, outcome)
        for ov in self.overlay.values():
            for e in ov.values():
                if e is not None and e.scratch is not None:
                    self._drop_scratch(e.scratch)
        self.reload()

    # -- status -------------------------------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        """``(A|M|D, path)`` against the parent, sorted by path; equal content is not M."""
        from .diff import diff_items, draft_children, tree_children

        base = ("t", self.base_root) if self.base_root else ("t", None)
        return diff_items(tree_children(self.store), base, draft_children(self), self.root())


def _link_in(objs, path: str) -> tuple[str, int]:
    """Hash a scratch file and hard-link it into the store under its digest (no copy)."""
    from .objects import hash_file

    hexd, size = hash_file(path)
    dst = objs.local_path(hexd)
    if not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
        try:
            os.link(path, dst)
        except FileExistsError:
            pass
        except OSError:
            # no hard links here: copy instead
            tmp = objs.tmp_path()
            with open(path, "rb") as s, open(tmp, "wb") as d:
                copy_fd(s.fileno(), d.fileno(), size)
            os.rename(tmp, dst)
    return hexd, size
