"""The filesystem model behind a mount: inodes, handles and file operations.

Plain Python with no pyfuse3 in it, so tests can drive it without a mount
(borg's vfs.py / fuse.py split).  ``ops.py`` adapts it to pyfuse3 and maps
the domain errors raised here to errnos.

A view is either a committed version (:class:`VersionView`, immutable) or a
draft (:class:`artfs.draft.Draft`).  Both answer ``root()``, ``child(d, name)``
and ``children(d)`` with :class:`DEntry` values.

Inodes: a :class:`Node` per name the kernel knows, numbered from a counter
that never goes back, so an inode number is never reused within a mount.  A
draft node knows only its parent and name (its entry is looked up by path
each time, since the draft changes under it); a version node caches its
immutable entry.  A node that is unlinked or renamed over while the kernel
still knows it keeps a snapshot of its entry (``orphan``) and its open
descriptors, so open-then-unlinked files stay readable and writable.

Content: an unchanged file is read straight from its object; the first open
for writing (or truncate) copies it up into a scratch file of the draft, and
every open handle of that node is moved onto the scratch file so all readers
see the writes.  After a commit the handles move back onto objects.

Concurrency: every method here runs on the trio thread, except the ones
whose name says ``_blocking``, which ops.py runs in worker threads.
"""
from __future__ import annotations

import errno
import os
import stat
import time

import blake3

from .. import repo, treefmt
from ..draft import DEntry, Draft, Exists, IsADirectory, NotADirectory
from ..errors import BadInput, Corrupt, NotFound, ReadOnly
from ..objects import copy_fd
from ..treefmt import DIR, FILE, REF, SYMLINK

ROOT_INO = 1
CTL_NAME = b".artfs"
BLKSIZE = 128 * 1024


class NotPermitted(BadInput):
    """EPERM: e.g. touching the reserved control directory, hard links."""


class VersionView:
    """A committed version as a read-only tree of DEntry values."""

    def __init__(self, store, info: repo.VersionInfo):
        self.store = store
        self.info = info

    def root(self) -> DEntry:
        return DEntry(DIR, 0o755, os.getuid(), os.getgid(), self.info.total_bytes, int(self.info.created * 1e9),
                      tree=self.info.root, ident=self.info.ident)

    def child(self, d: DEntry, name: bytes) -> DEntry | None:
        if d.kind != DIR:
            raise NotADirectory("not a directory")
        e = self.store.tree_map(d.tree).get(name)
        return DEntry.of(e) if e is not None else None

    def children(self, d: DEntry) -> dict[bytes, DEntry]:
        return {e.name: DEntry.of(e) for e in self.store.tree(d.tree)}


class Node:
    __slots__ = ("ino", "parent", "name", "lookups", "cached", "orphan", "kids", "handles", "ctime_ns", "verified")

    def __init__(self, ino: int, parent: "Node | None", name: bytes):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.lookups = 0
        self.cached: DEntry | None = None  # version views: the immutable entry
        self.orphan: DEntry | None = None  # removed from the tree while still known
        self.kids: dict[bytes, Node] | None = None
        self.handles: set = set()
        self.ctime_ns = 0
        self.verified = False  # content digest checked once in this mount


class Handle:
    __slots__ = ("fh", "node", "fd", "on_scratch", "writable", "hasher", "hashed_to", "expect", "append")

    def __init__(self, fh: int, node: Node, writable: bool):
        self.fh = fh
        self.node = node
        self.fd = -1
        self.on_scratch = False
        self.writable = writable
        self.hasher = None
        self.hashed_to = 0
        self.expect: str | None = None


class VFS:
    def __init__(self, view, readonly: bool):
        self.view = view
        self.readonly = readonly
        self.draft: Draft | None = view if isinstance(view, Draft) else None
        self.store = view.store
        self.nodes: dict[int, Node] = {}
        self.next_ino = 16  # 1 is the root, 2..15 are the control files
        root = Node(ROOT_INO, None, b"")
        root.lookups = 1
        root.kids = {}
        if readonly:
            root.cached = view.root()
        self.nodes[ROOT_INO] = root
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.mount_time_ns = time.time_ns()

    # -- nodes -------------------------------------------------------------------
    def node(self, ino: int) -> Node:
        n = self.nodes.get(ino)
        if n is None:
            raise NotFound("stale inode")
        return n

    def path(self, n: Node) -> tuple:
        parts = []
        while n.parent is not None:
            parts.append(n.name)
            n = n.parent
        return tuple(reversed(parts))

    def entry(self, n: Node) -> DEntry:
        if n.cached is not None:
            return n.cached
        if n.orphan is not None:
            return n.orphan
        if n.ino == ROOT_INO:
            return self.view.root()
        e = self.draft.lookup(self.path(n))
        if e is None:
            raise NotFound("no such file")
        return e

    def _child_node(self, parent: Node, name: bytes, e: DEntry) -> Node:
        if parent.kids is None:
            parent.kids = {}
        n = parent.kids.get(name)
        if n is None:
            n = Node(self.next_ino, parent, name)
            self.next_ino += 1
            self.nodes[n.ino] = n
            parent.kids[name] = n
            n.ctime_ns = e.mtime_ns
        if self.readonly:
            n.cached = e
        return n

    def lookup(self, parent_ino: int, name: bytes) -> tuple[Node, DEntry]:
        """Find a name; the caller reports it to the kernel (lookup count + 1)."""
        parent = self.node(parent_ino)
        pe = self.entry(parent)
        if pe.kind != DIR:
            raise NotADirectory("not a directory")
        if parent.ino == ROOT_INO and name == CTL_NAME:
            raise NotFound("control directory")  # handled by ops.py
        e = self.view.child(pe, name) if self.readonly else self.draft.child(pe, name)
        if e is None:
            raise NotFound(f"no {name!r}")
        n = self._child_node(parent, name, e)
        n.lookups += 1
        return n, e

    def listdir(self, ino: int) -> list[tuple[bytes, DEntry]]:
        n = self.node(ino)
        e = self.entry(n)
        if e.kind != DIR:
            raise NotADirectory("not a directory")
        kids = self.view.children(e) if self.readonly else self.draft.children(e)
        return sorted(kids.items())

    def remember(self, parent_ino: int, name: bytes, e: DEntry) -> Node:
        """A readdir entry the kernel will now know (lookup count + 1)."""
        n = self._child_node(self.node(parent_ino), name, e)
        n.lookups += 1
        return n

    def forget(self, ino: int, count: int) -> None:
        n = self.nodes.get(ino)
        if n is None or ino == ROOT_INO:
            return
        n.lookups -= count
        if n.lookups <= 0 and not n.handles:
            self._drop(n)

    def _drop(self, n: Node) -> None:
        self.nodes.pop(n.ino, None)
        if n.parent is not None and n.parent.kids is not None and n.parent.kids.get(n.name) is n:
            del n.parent.kids[n.name]

    # -- attributes ---------------------------------------------------------------
    def stat(self, n: Node, e: DEntry | None = None) -> dict:
        e = e or self.entry(n)
        size, mtime = e.size, e.mtime_ns
        if e.scratch is not None:
            try:
                st = os.stat(self.draft.scratch_path(e.scratch))
                size, mtime = st.st_size, st.st_mtime_ns
            except FileNotFoundError:
                pass
        if e.kind == DIR:
            size = 4096
        elif e.kind == SYMLINK:
            size = len(e.target)
        return {
            "st_ino": n.ino,
            "st_mode": e.st_mode,
            "st_nlink": 2 if e.kind == DIR else (0 if n.orphan is not None else 1),
            "st_uid": e.uid,
            "st_gid": e.gid,
            "st_size": size,
            "st_blksize": BLKSIZE,
            "st_blocks": (size + 511) // 512,
            "st_atime_ns": mtime,
            "st_mtime_ns": mtime,
            "st_ctime_ns": max(mtime, n.ctime_ns),
        }

    # -- draft mutations (all raise ReadOnly on a version) ----------------------------
    def _writable(self) -> Draft:
        if self.readonly:
            raise ReadOnly("read-only file system")
        return self.draft

    def _child_path(self, parent_ino: int, name: bytes) -> tuple:
        parent = self.node(parent_ino)
        if parent.orphan is not None:
            raise NotFound("directory was removed")
        if parent_ino == ROOT_INO and name == CTL_NAME:
            raise NotPermitted(".artfs is reserved")
        treefmt.check_name(name)
        return self.path(parent) + (name,)

    def _touch_dir(self, parent_ino: int) -> None:
        """A directory's mtime/ctime move when its entries change."""
        parent = self.node(parent_ino)
        now = time.time_ns()
        parent.ctime_ns = now
        if parent.ino != ROOT_INO:
            self.draft.update(self.path(parent), mtime_ns=now)

    def create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[Node, DEntry, str]:
        """A new empty file backed by a new scratch file; returns its scratch path too."""
        d = self._writable()
        path = self._child_path(parent_ino, name)
        if d.lookup(path) is not None:
            raise Exists("file exists")
        sname, spath = d.new_scratch()
        fd = os.open(spath, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        st = os.stat(spath)
        e = DEntry(FILE, stat.S_IMODE(mode), uid, gid, 0, st.st_mtime_ns, scratch=sname)
        d.put(path, e)
        self._touch_dir(parent_ino)
        n = self._child_node(self.node(parent_ino), name, e)
        n.orphan = None
        n.lookups += 1
        return n, e, spath

    def mkdir(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[Node, DEntry]:
        d = self._writable()
        path = self._child_path(parent_ino, name)
        if d.lookup(path) is not None:
            raise Exists("file exists")
        e = d.mkdir(path, stat.S_IMODE(mode), uid, gid)
        self._touch_dir(parent_ino)
        n = self._child_node(self.node(parent_ino), name, e)
        n.orphan = None
        n.lookups += 1
        return n, e

    def symlink(self, parent_ino: int, name: bytes, target: bytes, uid: int, gid: int) -> tuple[Node, DEntry]:
        d = self._writable()
        path = self._child_path(parent_ino, name)
        if d.lookup(path) is not None:
            raise Exists("file exists")
        if not target or b"\0" in target or len(target) > treefmt.MAX_TARGET:
            raise BadInput("bad symlink target")
        e = DEntry(SYMLINK, 0o777, uid, gid, len(target), time.time_ns(), target=target)
        d.put(path, e)
        self._touch_dir(parent_ino)
        n = self._child_node(self.node(parent_ino), name, e)
        n.orphan = None
        n.lookups += 1
        return n, e

    def _orphan(self, parent: Node, name: bytes, e: DEntry) -> None:
        """The node at parent/name (if the kernel knows it) leaves the tree."""
        if parent.kids is None:
            return
        n = parent.kids.pop(name, None)
        if n is not None:
            n.orphan = e
            n.parent = None
            n.ctime_ns = time.time_ns()
            if n.lookups <= 0 and not n.handles:
                self.nodes.pop(n.ino, None)

    def unlink(self, parent_ino: int, name: bytes, is_dir: bool) -> None:
        d = self._writable()
        path = self._child_path(parent_ino, name)
        e = d.lookup(path)
        if e is None:
            raise NotFound("no such file")
        if is_dir and e.kind != DIR:
            raise NotADirectory("not a directory")
        if not is_dir and e.kind == DIR:
            raise IsADirectory("is a directory")
        d.remove(path, recursive=False)
        self._orphan(self.node(parent_ino), name, e)
        self._touch_dir(parent_ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, noreplace: bool) -> None:
        d = self._writable()
        old = self._child_path(old_parent, old_name)
        new = self._child_path(new_parent, new_name)
        e = d.lookup(old)
        if e is None:
            raise NotFound("no such file")
        target = d.lookup(new)
        if target is not None and noreplace:
            raise Exists("file exists")
        d.rename(old, new)
        op, np_ = self.node(old_parent), self.node(new_parent)
        if target is not None and old != new:
            self._orphan(np_, new_name, target)
        n = op.kids.pop(old_name, None) if op.kids else None
        if n is not None:
            n.parent = np_
            n.name = new_name
            n.ctime_ns = time.time_ns()
            if np_.kids is None:
                np_.kids = {}
            np_.kids[new_name] = n
        self._touch_dir(old_parent)
        if new_parent != old_parent:
            self._touch_dir(new_parent)

    def setattr(self, ino: int, mode=None, uid=None, gid=None, size=None, mtime_ns=None) -> DEntry:
        d = self._writable()
        n = self.node(ino)
        e = self.entry(n)
        kw = {}
        if mode is not None:
            kw["mode"] = stat.S_IMODE(mode)
        if uid is not None:
            kw["uid"] = uid
        if gid is not None:
            kw["gid"] = gid
        if size is not None:
            if e.kind == DIR:
                raise IsADirectory("is a directory")
            if e.kind == SYMLINK:
                raise BadInput("not a regular file")
        if mtime_ns is not None:
            kw["mtime_ns"] = mtime_ns
        n.ctime_ns = time.time_ns()
        if n.orphan is not None:
            n.orphan = e = e.copy(**kw)
        elif n.ino == ROOT_INO:
            return e
        elif kw:
            e = d.update(self.path(n), **kw)
        if mtime_ns is not None and e.scratch is not None:
            p = d.scratch_path(e.scratch)
            os.utime(p, ns=(mtime_ns, mtime_ns))
        return e

    # -- content -----------------------------------------------------------------------
    def needs_copy_up(self, n: Node) -> bool:
        e = self.entry(n)
        return e.kind in (FILE, REF) and e.scratch is None

    def copy_up_blocking(self, n: Node, truncate: bool) -> str:
        """Make a scratch copy of a file's content (worker thread); returns the scratch name."""
        e = self.entry(n)
        sname, spath = self.draft.new_scratch()
        dfd = os.open(spath, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not truncate and e.size:
                sfd, _ = repo.open_content(self.store, _as_entry(e))
                try:
                    copy_fd(sfd, dfd, os.fstat(sfd).st_size)
                finally:
                    os.close(sfd)
            os.utime(dfd, ns=(e.mtime_ns, e.mtime_ns)) if not truncate else None
        finally:
            os.close(dfd)
        return sname

    def adopt_scratch(self, n: Node, sname: str) -> DEntry:
        """After copy_up_blocking: the node's entry now lives in its scratch file."""
        d = self.draft
        if n.orphan is not None:
            n.orphan = n.orphan.copy(kind=FILE, scratch=sname, digest=None, uri=None)
            e = n.orphan
        else:
            e = d.update(self.path(n), kind=FILE, scratch=sname, digest=None, uri=None)
        self._reopen_handles(n, e)
        return e

    def _reopen_handles(self, n: Node, e: DEntry) -> None:
        for h in n.handles:
            self._open_backing(h, e)

    def _open_backing(self, h: Handle, e: DEntry) -> None:
        old = h.fd
        if e.scratch is not None:
            h.fd = os.open(self.draft.scratch_path(e.scratch), os.O_RDWR if h.writable else os.O_RDONLY)
            h.on_scratch = True
            h.hasher = None
            h.expect = None
        else:
            h.fd, h.expect = repo.open_content(self.store, _as_entry(e))
            h.on_scratch = False
            h.hasher = None if h.node.verified else blake3.blake3()
            h.hashed_to = 0
        if old >= 0:
            os.close(old)

    def open(self, ino: int, writable: bool) -> Handle:
        """Open a file; a writable open of an unchanged file must be copied up first (ops.py)."""
        n = self.node(ino)
        e = self.entry(n)
        if e.kind == DIR:
            raise IsADirectory("is a directory")
        if writable:
            self._writable()
        h = Handle(self.next_fh, n, writable)
        self.next_fh += 1
        self._open_backing(h, e)
        n.handles.add(h)
        self.handles[h.fh] = h
        return h

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise NotFound("bad file handle")
        return h

    def read(self, h: Handle, off: int, size: int) -> bytes:
        data = os.pread(h.fd, size, off)
        if h.hasher is not None:
            self._verify_step(h, off, data)
        return data

    def _verify_step(self, h: Handle, off: int, data: bytes) -> None:
        """Sequential reads are hashed as they pass; at EOF a mismatch becomes EIO."""
        if off != h.hashed_to:
            if off > h.hashed_to:
                h.hasher = None  # not sequential: fsck and export still verify
            return
        h.hasher.update(data)
        h.hashed_to += len(data)
        if len(data) == 0 or h.hashed_to >= os.fstat(h.fd).st_size:
            ok = h.hasher.hexdigest() == h.expect
            h.hasher = None
            if not ok:
                raise Corrupt(f"object {h.expect} is corrupt")
            h.node.verified = True

    def write(self, h: Handle, off: int, buf: bytes) -> int:
        if not h.on_scratch:
            raise ReadOnly("not copied up")  # ops.py copies up before writing
        return os.pwrite(h.fd, buf, off)

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        h.node.handles.discard(h)
        if h.fd >= 0:
            os.close(h.fd)
        n = h.node
        if not n.handles and n.lookups <= 0 and n.ino in self.nodes:
            self._drop(n)

    def truncate_blocking(self, n: Node, size: int) -> None:
        e = self.entry(n)
        os.truncate(self.draft.scratch_path(e.scratch), size)

    def after_commit(self) -> None:
        """The draft is clean on a new parent: move handles from scratch files back to objects."""
        for h in list(self.handles.values()):
            n = h.node
            if h.on_scratch and n.orphan is None:
                try:
                    e = self.entry(n)
                except NotFound:
                    continue
                self._open_backing(h, e)
                n.verified = True  # we just hashed it

    # -- control texts -----------------------------------------------------------------
    def ref_text(self) -> str:
        if self.readonly:
            return f"{self.view.info.ref}\n"
        d = self.draft
        parent = f"parent {d.artifact}:v{d.parent}" if d.parent is not None else "no parent"
        return f"{d.artifact}:draft ({parent})\n"

    def status_text(self) -> str:
        if self.readonly:
            return ""
        return "".join(f"{code} {path}\n" for code, path in self.draft.status())


def _as_entry(e: DEntry) -> treefmt.Entry:
    return treefmt.Entry(b"x", e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, digest=e.digest, uri=e.uri)
