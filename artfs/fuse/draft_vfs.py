"""The filesystem model of a draft mount: mutable nodes over a persistent Draft.

A :class:`Node` per name the kernel knows, numbered from a counter that
never goes back, so an inode number is never reused within a mount.  A node
knows only its parent and name: its entry is looked up in the draft by path
each time, since the draft changes under it.  A node that is unlinked or
renamed over while the kernel still knows it keeps a snapshot of its entry
(``orphan``) and its open descriptors, so open-then-unlinked files stay
readable and writable until closed.

Content: an unchanged file is read straight from its object; the first open
for writing (or truncate) copies it up into a scratch file of the draft, and
every open handle of that node is moved onto the scratch file so all readers
see the writes.  After a commit the handles move back onto objects.

Concurrency: as in vfs.py — trio thread, except ``*_blocking`` methods.
"""
from __future__ import annotations

import os
import stat
import time

from .. import repo, treefmt
from ..draft import DEntry, Draft, Exists, IsADirectory, NotADirectory
from ..errors import BadInput, Corrupt, NotFound, ReadOnly, ReferenceChanged
from ..objects import copy_fd, hash_fd
from ..treefmt import DIR, FILE, REF, SYMLINK
from .vfs import CTL_NAME, FIRST_INO, ROOT_INO, BaseVFS, Handle, NotPermitted, as_entry, stat_dict


class Node:
    __slots__ = ("ino", "parent", "name", "lookups", "orphan", "kids", "handles", "ctime_ns")

    def __init__(self, ino: int, parent: "Node | None", name: bytes):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.lookups = 0
        self.orphan: DEntry | None = None  # removed from the tree while still known
        self.kids: dict[bytes, Node] | None = None
        self.handles: set = set()
        self.ctime_ns = 0


class DraftVFS(BaseVFS):
    readonly = False

    def __init__(self, draft: Draft):
        super().__init__(draft.store)
        self.view = draft
        self.draft = draft
        draft.touch_parents = True
        self.nodes: dict[int, Node] = {}
        self.next_ino = FIRST_INO
        root = Node(ROOT_INO, None, b"")
        root.lookups = 1
        root.kids = {}
        self.nodes[ROOT_INO] = root

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
        return n

    def lookup(self, parent_ino: int, name: bytes) -> tuple[Node, DEntry]:
        """Find a name; the caller reports it to the kernel (lookup count + 1)."""
        parent = self.node(parent_ino)
        pe = self.entry(parent)
        if pe.kind != DIR:
            raise NotADirectory("not a directory")
        if parent.ino == ROOT_INO and name == CTL_NAME:
            raise NotFound("control directory")  # handled by ops.py
        e = self.draft.child(pe, name)
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
        return sorted(self.draft.children(e).items())

    def dirent_node(self, parent_ino: int, index: int, name: bytes, e: DEntry) -> Node:
        return self._child_node(self.node(parent_ino), name, e)

    def dirent_counted(self, n: Node, counted: bool) -> None:
        """After readdir_reply: the kernel now knows the entry (or, if not counted, does not)."""
        if counted:
            n.lookups += 1
        elif n.lookups <= 0 and not n.handles:
            self._drop(n)

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
        size = mtime = None
        if e.scratch is not None:  # a changed file: its scratch file has the true size and mtime
            fd = self._scratch_fd(n)
            try:  # an open descriptor also serves a file that was unlinked while open
                st = os.fstat(fd) if fd is not None else os.stat(self.draft.scratch_path(e.scratch))
                size, mtime = st.st_size, st.st_mtime_ns
            except FileNotFoundError:
                pass
        nlink = 0 if n.orphan is not None and e.kind != DIR else None
        return stat_dict(n.ino, e, size, mtime, n.ctime_ns, nlink)

    # -- draft mutations (all raise ReadOnly on a version) ----------------------------
    def _writable(self) -> Draft:
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
        """A directory's ctime moves when its entries change (its mtime moved in the draft's
        own transaction: ``touch_parents``)."""
        self.node(parent_ino).ctime_ns = time.time_ns()

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
        """Make a scratch copy of a file's content (worker thread); returns the scratch name.

        The copy is hashed before it is used, so a corrupt object is never copied up."""
        e = self.entry(n)
        sname, spath = self.draft.new_scratch()
        dfd = os.open(spath, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not truncate and e.size:
                sfd, hexd = repo.open_content(self.store, as_entry(e))
                try:
                    copy_fd(sfd, dfd, os.fstat(sfd).st_size)
                finally:
                    os.close(sfd)
                if hexd not in self.verified:
                    if hash_fd(dfd)[0] != hexd:
                        os.unlink(spath)
                        if e.kind == REF:
                            raise ReferenceChanged(f"reference {e.uri} changed since it was recorded")
                        self.corrupt.add(hexd)
                        raise Corrupt(f"object {hexd} is corrupt")
                    self.verified.add(hexd)
            if not truncate:
                os.utime(dfd, ns=(e.mtime_ns, e.mtime_ns))  # opening is not writing: keep the mtime
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
        if e.scratch is not None:
            old = h.fd
            h.fd = os.open(self.draft.scratch_path(e.scratch), os.O_RDWR if h.writable else os.O_RDONLY)
            h.on_scratch = True
            h.expect = None
            h.data = None
            if old >= 0:
                os.close(old)
        else:
            self._open_stored(h, e)

    def _opened(self, n: Node, h: Handle) -> None:
        n.handles.add(h)

    def write(self, h: Handle, off: int, buf: bytes) -> int:
        if not h.on_scratch:
            raise ReadOnly("not copied up")  # ops.py copies up before writing
        return os.pwrite(h.fd, buf, off)

    def release(self, fh: int) -> None:
        h = self._close_handle(fh)
        if h is None:
            return
        n = h.node
        n.handles.discard(h)
        if not n.handles and n.lookups <= 0 and n.ino in self.nodes:
            self._drop(n)

    @staticmethod
    def _scratch_fd(n: Node) -> int | None:
        for h in n.handles:
            if h.on_scratch:
                return h.fd
        return None

    def truncate_blocking(self, n: Node, size: int) -> None:
        fd = self._scratch_fd(n)
        if fd is not None:
            os.ftruncate(fd, size)  # works for an open-unlinked file too
        else:
            os.truncate(self.draft.scratch_path(self.entry(n).scratch), size)

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
                if h.expect:
                    self.verified.add(h.expect)  # commit just hashed these bytes

    # -- control texts -----------------------------------------------------------------
    def ref_text(self) -> str:
        d = self.draft
        parent = f"parent {d.artifact}:v{d.parent}" if d.parent is not None else "no parent"
        return f"{d.artifact}:draft ({parent})\n"

    def status_text(self) -> str:
        return "".join(f"{code} {path}\n" for code, path in self.draft.status())
