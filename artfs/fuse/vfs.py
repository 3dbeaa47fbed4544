"""The filesystem models behind a mount: inodes, handles and file content.

Plain Python with no pyfuse3 in it, so tests can drive it without a mount
(borg's vfs.py / fuse.py split).  ``ops.py`` adapts it to pyfuse3 and maps the
domain errors raised here to errnos.  The models speak to the repo layer only
(DESIGN.md §7): no SQL, no object or scratch paths.

* :class:`VersionVFS` (here) shows a committed version.  It keeps no object
  per file: a directory, when first listed, gets a block of inode numbers, one
  per entry of its (sorted, immutable) tree, so a file's inode number says which
  directory and which entry it is.  Names of a hard-link group share the number
  of the first name seen.  Memory is the directories the kernel has visited plus
  the store's bounded tree cache, whatever the size of the version.
* :class:`artfs.fuse.draft_vfs.DraftVFS` shows a draft.

Content: every byte read from the store is verified piece by piece on every
read (``repo.ContentReader``); a mismatch is EIO, never wrong bytes.  Small
files are read and verified whole at open and served from memory.

Concurrency: every method runs on the trio thread, except those named
``*_blocking``, which ops.py runs in worker threads.
"""
from __future__ import annotations

import bisect
import time

from .. import repo
from ..errors import BadInput, IsADirectory, NotADirectory, NotFound, NotPermitted, ReadOnly
from ..storage.format import BLK, CHR, DIR, FILE, REF, SYMLINK, Entry

ROOT_INO = 1
FIRST_INO = 16  # 2..15 are the control files (ops.py)
CTL_NAME = b".artfs"
BLKSIZE = 128 * 1024
SMALL_FILE = 64 * 1024  # stored files up to this size are read whole at open

__all__ = ["BaseVFS", "Handle", "VersionVFS", "NotPermitted", "stat_dict", "CTL_NAME", "ROOT_INO", "FIRST_INO"]


class Handle:
    """An open file: its node and what it reads from (stored content, or the node's scratch file)."""

    __slots__ = ("fh", "node", "writable", "reader", "data", "append", "ra_expect", "ra_next")

    def __init__(self, fh: int, node, writable: bool):
        self.fh = fh
        self.node = node
        self.writable = writable
        self.reader: repo.ContentReader | None = None  # stored content (verified reads)
        self.data: bytes | None = None  # a small stored file's verified bytes
        self.append = False
        self.ra_expect: int | None = None  # where a sequential read would go on (fuse.readahead)
        self.ra_next: int | None = None  # the first piece not yet read ahead

    def close_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.data = None


def stat_dict(ino: int, e: Entry, *, size: int | None = None, mtime: int | None = None, ctime: int | None = None,
              nlink: int = 1) -> dict:
    if e.kind == DIR:
        size = 4096
    elif e.kind == SYMLINK:
        size = len(e.target)
    elif e.kind not in (FILE, REF):
        size = 0
    elif size is None:
        size = e.size
    mtime = e.mtime_ns if mtime is None else mtime
    return {
        "st_ino": ino,
        "st_mode": e.st_mode,
        "st_nlink": nlink,
        "st_uid": e.uid,
        "st_gid": e.gid,
        "st_rdev": e.rdev if e.kind in (CHR, BLK) else 0,
        "st_size": size,
        "st_blksize": BLKSIZE,
        "st_blocks": (size + 511) // 512,
        "st_atime_ns": e.atime_ns,
        "st_mtime_ns": mtime,
        "st_ctime_ns": mtime if ctime is None else ctime,
    }


class BaseVFS:
    """What both models share: open files and verified content."""

    readonly = True
    draft = None

    def __init__(self, store):
        self.store = store
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.mount_time_ns = time.time_ns()

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

    def open_stored_blocking(self, h: Handle, e: Entry) -> None:
        """Point a handle at stored content (an object or a reference); a small file is read
        and verified now and kept in memory (worker thread: may read and hash)."""
        r = repo.ContentReader(self.store, e)
        if e.size <= SMALL_FILE:
            try:
                data = r.read(0, e.size) if e.size else (r.verify_all() or b"")
            finally:
                r.close()
            h.close_reader()
            h.data = data
        else:
            h.close_reader()
            h.reader = r

    @staticmethod
    def read_stored(h: Handle, off: int, size: int) -> bytes:
        if h.data is not None:
            return h.data[off:off + size]
        return h.reader.read(off, size)

    def siblings(self, n) -> tuple | None:
        """(a key of its directory, its index there, the directory's entries) of a node, for
        read-ahead across files; None where the model cannot say cheaply."""
        return None

    def _close_handle(self, fh: int) -> Handle | None:
        h = self.handles.pop(fh, None)
        if h is not None:
            h.close_reader()
        return h


class _Dir:
    """A directory the kernel has reached; its entries own inode numbers base+1 .. base+count."""

    __slots__ = ("ino", "parent", "tree", "entry", "base", "count")

    def __init__(self, ino: int, parent: int, tree: bytes, entry: Entry):
        self.ino = ino
        self.parent = parent  # a version's directory has one path, so one parent
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


def _name_of(e: Entry) -> bytes:
    return e.name


class VersionVFS(BaseVFS):
    readonly = True

    def __init__(self, store, info: repo.VersionInfo):
        super().__init__(store)
        self.info = info
        root = _Dir(ROOT_INO, ROOT_INO, info.root, info.root_entry())
        self.dirs: dict[int, _Dir] = {ROOT_INO: root}
        self._bases: list[int] = []  # increasing, so bisect finds the directory of an inode
        self._based: list[_Dir] = []
        self.next_ino = FIRST_INO
        self._nsub: dict[bytes, int] = {}
        links = repo.link_table(store, info.links)
        self.nlink = {h: len(paths) for h, paths in links.items()}
        self.link_ino: dict[bytes, int] = {}  # hlid -> the inode number of its first name seen
        self.link_node: dict[int, _File] = {}

    def _entries(self, d: _Dir) -> list:
        ents = self.store.tree(d.tree)
        if d.base is None:
            d.base = self.next_ino
            d.count = len(ents)
            self.next_ino += d.count + 1
            self._bases.append(d.base)
            self._based.append(d)
        return ents

    def _child(self, d: _Dir, index: int, e: Entry):
        ino = d.base + 1 + index
        if e.kind == DIR:
            sub = self.dirs.get(ino)
            if sub is None:
                sub = self.dirs[ino] = _Dir(ino, d.ino, e.digest, e)
            return sub
        if e.hlid is not None and e.hlid in self.nlink:
            first = self.link_ino.setdefault(e.hlid, ino)
            if first not in self.link_node:
                self.link_node[first] = _File(first, d, index)
            return self.link_node[first]
        return _File(ino, d, index)

    def node(self, ino: int):
        d = self.dirs.get(ino)
        if d is not None:
            return d
        n = self.link_node.get(ino)
        if n is not None:
            return n
        i = bisect.bisect_right(self._bases, ino) - 1
        if i >= 0:
            d = self._based[i]
            index = ino - d.base - 1
            if 0 <= index < d.count:
                return _File(ino, d, index)
        raise NotFound("stale inode")

    def entry(self, n) -> Entry:
        if isinstance(n, _Dir):
            return n.entry
        return self.store.tree(n.dir.tree)[n.index]

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
            raise NotFound("no such entry")
        return self._child(d, i, ents[i]), ents[i]

    def listdir(self, ino: int) -> list[tuple[bytes, Entry]]:
        return [(e.name, e) for e in self._entries(self._dir(ino))]

    def parent_of(self, ino: int) -> int:
        """The inode number of a directory's parent (the root's is its own)."""
        return self._dir(ino).parent

    def dirent_node(self, parent_ino: int, index: int, name: bytes, e: Entry):
        d = self._dir(parent_ino)
        self._entries(d)
        return self._child(d, index, e)

    def dirent_counted(self, n, counted: bool) -> None:
        """Nothing to count: version inodes are never dropped."""

    def forget(self, ino: int, count: int) -> None:
        """Nothing to forget (see dirent_counted)."""

    def _subdirs(self, tree: bytes) -> int:
        n = self._nsub.get(tree)
        if n is None:
            n = self._nsub[tree] = sum(1 for e in self.store.tree(tree) if e.kind == DIR)
        return n

    def stat(self, n, e: Entry | None = None) -> dict:
        e = e or self.entry(n)
        if e.kind == DIR:
            nlink = 2 + self._subdirs(e.digest)
        elif e.hlid is not None:
            nlink = self.nlink.get(e.hlid, 1)
        else:
            nlink = 1
        return stat_dict(n.ino, e, nlink=nlink)

    def open(self, ino: int, writable: bool) -> tuple[Handle, Entry]:
        """A handle (not yet backed: ops.py calls open_stored_blocking in a thread)."""
        if writable:
            raise ReadOnly("read-only file system")
        n = self.node(ino)
        e = self.entry(n)
        if e.kind == DIR:
            raise IsADirectory("is a directory")
        if e.kind not in (FILE, REF):
            raise BadInput("not a regular file")
        return self._new_handle(n, False), e

    def release(self, fh: int) -> None:
        self._close_handle(fh)

    def siblings(self, n) -> tuple | None:
        if isinstance(n, _File):
            return n.dir.ino, n.index, self.store.tree(n.dir.tree)
        return None

    def xattrs(self, ino: int) -> tuple:
        return self.entry(self.node(ino)).xattrs

    def ref_text(self) -> str:
        return f"{self.info.ref}\n"

    def status_text(self) -> str:
        return ""

