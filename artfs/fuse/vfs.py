"""The filesystem model behind a mount: inodes, handles and file content.

Plain Python with no pyfuse3 in it, so tests can drive it without a mount
(borg's vfs.py / fuse.py split).  ``ops.py`` adapts it to pyfuse3 and maps
the domain errors raised here to errnos.  Two models share this base:

* :class:`VersionVFS` (here) shows a committed version.  It keeps no object
  per file: a directory, when first listed, gets a block of inode numbers,
  one per entry in its (sorted, immutable) tree, so a file's inode number
  says which directory and which entry it is.  Memory is the directories the
  kernel has visited plus the store's bounded tree cache, whatever the size
  of the version; inode numbers are never reused within a mount.
* :class:`artfs.fuse.draft_vfs.DraftVFS` shows a draft (mutable nodes).

Content integrity: the bytes of a stored object (or of a ``file://``
reference) are verified against their digest once per mount, in a worker
thread, before the first open of that content returns; a mismatch makes
every open and read of it fail with EIO, so a corrupt object never yields
wrong bytes.  Verifying costs one extra pass over data that then sits in the
page cache for the reads that follow.

Concurrency: every method runs on the trio thread, except the ones whose
name ends in ``_blocking``, which ops.py runs in worker threads.
"""
from __future__ import annotations

import bisect
import os
import time

import blake3

from .. import repo, treefmt
from ..draft import DEntry, IsADirectory, NotADirectory
from ..errors import BadInput, Corrupt, NotFound, ReadOnly, ReferenceChanged
from ..objects import hash_fd
from ..treefmt import DIR, REF, SYMLINK

ROOT_INO = 1
FIRST_INO = 16  # 2..15 are the control files (ops.py)
CTL_NAME = b".artfs"
BLKSIZE = 128 * 1024
SMALL_FILE = 64 * 1024  # stored files up to this size are read whole at open


class NotPermitted(BadInput):
    """EPERM: e.g. touching the reserved control directory, hard links."""


class Handle:
    """An open file: a descriptor on its current backing (object, reference or scratch file)."""

    __slots__ = ("fh", "node", "fd", "on_scratch", "writable", "expect", "is_ref", "data")

    def __init__(self, fh: int, node, writable: bool):
        self.fh = fh
        self.node = node
        self.fd = -1
        self.on_scratch = False
        self.writable = writable
        self.expect: str | None = None  # digest the backing's bytes must have
        self.is_ref = False
        self.data: bytes | None = None  # a small stored file's verified bytes (no descriptor kept)


def as_entry(e: DEntry) -> treefmt.Entry:
    return treefmt.Entry(b"x", e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, digest=e.digest, uri=e.uri)


def stat_dict(ino: int, e: DEntry, size: int | None = None, mtime: int | None = None, ctime: int = 0,
              nlink: int | None = None) -> dict:
    size = e.size if size is None else size
    mtime = e.mtime_ns if mtime is None else mtime
    if e.kind == DIR:
        size = 4096
    elif e.kind == SYMLINK:
        size = len(e.target)
    return {
        "st_ino": ino,
        "st_mode": e.st_mode,
        "st_nlink": (2 if e.kind == DIR else 1) if nlink is None else nlink,
        "st_uid": e.uid,
        "st_gid": e.gid,
        "st_size": size,
        "st_blksize": BLKSIZE,
        "st_blocks": (size + 511) // 512,
        "st_atime_ns": mtime,
        "st_mtime_ns": mtime,
        "st_ctime_ns": max(mtime, ctime),
    }


class BaseVFS:
    """What both models share: open files and content verification."""

    readonly = True
    draft = None

    def __init__(self, store):
        self.store = store
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.mount_time_ns = time.time_ns()
        self.verified: set[str] = set()
        self.corrupt: set[str] = set()

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise NotFound("bad file handle")
        return h

    def _new_handle(self, node, writable: bool) -> Handle:
        h = Handle(self.next_fh, node, writable)
        self.next_fh += 1
        self.handles[h.fh] = h
        return h

    def _open_stored(self, h: Handle, e: DEntry) -> None:
        """Point a handle at stored content (an object or a reference)."""
        old = h.fd
        if e.digest is not None and e.digest.hex() in self.corrupt:
            raise Corrupt(f"object {e.digest.hex()} is corrupt")
        h.fd, h.expect = repo.open_content(self.store, as_entry(e))
        h.is_ref = e.kind == REF
        h.on_scratch = False
        h.data = None
        if old >= 0:
            os.close(old)
        if e.size <= SMALL_FILE:
            # Small: read it once, verify it, serve reads from memory (one syscall fewer per
            # read, no descriptor held).
            data = os.pread(h.fd, SMALL_FILE + 1, 0)
            os.close(h.fd)
            h.fd = -1
            if h.expect not in self.verified:
                self._check(h, blake3.blake3(data).hexdigest())
            h.data = data

    def pending_verify(self, h: Handle) -> str | None:
        """The digest this handle's content still has to be checked against, if any."""
        if h.on_scratch or h.data is not None or h.expect is None or h.expect in self.verified:
            return None
        return h.expect

    def verify_blocking(self, h: Handle) -> None:
        """Hash the handle's content once (worker thread); Corrupt if it does not match."""
        self._check(h, hash_fd(h.fd)[0])

    def _check(self, h: Handle, got: str) -> None:
        hexd = h.expect
        if got != hexd:
            if not h.is_ref:
                self.corrupt.add(hexd)
                raise Corrupt(f"object {hexd} is corrupt")
            raise ReferenceChanged("a referenced file changed since it was recorded")
        self.verified.add(hexd)

    def read(self, h: Handle, off: int, size: int) -> bytes:
        if h.data is not None:
            return h.data[off:off + size]
        if h.expect is not None and not h.on_scratch and h.expect in self.corrupt:
            raise Corrupt(f"object {h.expect} is corrupt")
        return os.pread(h.fd, size, off)

    def open(self, ino: int, writable: bool) -> Handle:
        """Open a file on its current backing (a draft copies up before a writable open: ops.py)."""
        n = self.node(ino)
        e = self.entry(n)
        if e.kind == DIR:
            raise IsADirectory("is a directory")
        h = self._new_handle(n, writable)
        try:
            self._open_backing(h, e)
        except BaseException:
            self.handles.pop(h.fh, None)
            raise
        self._opened(n, h)
        return h

    def _opened(self, n, h: Handle) -> None:
        """A model that tracks a node's handles records the new one here."""

    def _close_handle(self, fh: int) -> Handle | None:
        h = self.handles.pop(fh, None)
        if h is not None and h.fd >= 0:
            os.close(h.fd)
            h.fd = -1
        return h


class VersionView:
    """A committed version as DEntry values (the read-only counterpart of a Draft)."""

    def __init__(self, store, info: repo.VersionInfo):
        self.store = store
        self.info = info

    def root(self) -> DEntry:
        return DEntry(DIR, 0o755, os.getuid(), os.getgid(), self.info.total_bytes, int(self.info.created * 1e9),
                      tree=self.info.root, ident=self.info.ident)


class _Dir:
    """A directory the kernel has reached; its entries own inode numbers base+1 .. base+count."""

    __slots__ = ("ino", "tree", "entry", "base", "count")

    def __init__(self, ino: int, tree: bytes, entry: DEntry):
        self.ino = ino
        self.tree = tree
        self.entry = entry
        self.base: int | None = None
        self.count = 0


class _File:
    """A non-directory of a version, made on demand from its inode number."""

    __slots__ = ("ino", "dir", "index")

    def __init__(self, ino: int, d: _Dir, index: int):
        self.ino = ino
        self.dir = d
        self.index = index


def _name_of(e: treefmt.Entry) -> bytes:
    return e.name


class VersionVFS(BaseVFS):
    readonly = True

    def __init__(self, view: VersionView):
        super().__init__(view.store)
        self.view = view
        root = _Dir(ROOT_INO, view.info.root, view.root())
        self.dirs: dict[int, _Dir] = {ROOT_INO: root}
        self._bases: list[int] = []  # increasing, so bisect finds the directory of an inode
        self._based: list[_Dir] = []
        self.next_ino = FIRST_INO

    def _entries(self, d: _Dir) -> list:
        ents = self.store.tree(d.tree)
        if d.base is None:
            d.base = self.next_ino
            d.count = len(ents)
            self.next_ino += d.count + 1
            self._bases.append(d.base)
            self._based.append(d)
        return ents

    def _child(self, d: _Dir, index: int, e: treefmt.Entry):
        ino = d.base + 1 + index
        if e.kind == DIR:
            sub = self.dirs.get(ino)
            if sub is None:
                sub = self.dirs[ino] = _Dir(ino, e.digest, DEntry.of(e))
            return sub
        return _File(ino, d, index)

    def node(self, ino: int):
        d = self.dirs.get(ino)
        if d is not None:
            return d
        i = bisect.bisect_right(self._bases, ino) - 1
        if i >= 0:
            d = self._based[i]
            index = ino - d.base - 1
            if 0 <= index < d.count:
                return _File(ino, d, index)
        raise NotFound("stale inode")

    def entry(self, n) -> DEntry:
        if isinstance(n, _Dir):
            return n.entry
        return DEntry.of(self.store.tree(n.dir.tree)[n.index])

    def _dir(self, ino: int) -> _Dir:
        d = self.dirs.get(ino)
        if d is None:
            self.node(ino)  # NotFound for a stale inode
            raise NotADirectory("not a directory")
        return d

    def lookup(self, parent_ino: int, name: bytes):
        d = self._dir(parent_ino)
        ents = self._entries(d)
        i = bisect.bisect_left(ents, name, key=_name_of)
        if i == len(ents) or ents[i].name != name:
            raise NotFound(f"no {name!r}")
        return self._child(d, i, ents[i]), DEntry.of(ents[i])

    def listdir(self, ino: int) -> list[tuple[bytes, DEntry]]:
        return [(e.name, DEntry.of(e)) for e in self._entries(self._dir(ino))]

    def dirent_node(self, parent_ino: int, index: int, name: bytes, e: DEntry):
        d = self._dir(parent_ino)
        self._entries(d)
        ino = d.base + 1 + index
        if e.kind == DIR:
            sub = self.dirs.get(ino)
            if sub is None:
                sub = self.dirs[ino] = _Dir(ino, e.tree, e)
            return sub
        return _File(ino, d, index)

    def dirent_counted(self, n, counted: bool) -> None:
        """Nothing to count: version inodes are never dropped."""

    def forget(self, ino: int, count: int) -> None:
        """Nothing to forget (see dirent_counted)."""

    def stat(self, n, e: DEntry | None = None) -> dict:
        return stat_dict(n.ino, e or self.entry(n))

    def open(self, ino: int, writable: bool) -> Handle:
        if writable:
            raise ReadOnly("read-only file system")
        return super().open(ino, False)

    def _open_backing(self, h: Handle, e: DEntry) -> None:
        self._open_stored(h, e)

    def release(self, fh: int) -> None:
        self._close_handle(fh)

    def ref_text(self) -> str:
        return f"{self.view.info.ref}\n"

    def status_text(self) -> str:
        return ""
