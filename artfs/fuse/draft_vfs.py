"""The filesystem model of a draft mount: nodes over a persistent Draft.

Inode numbers come from the draft (``Draft.ino_of``): stable for the draft's
life, so a node can be dropped when the kernel forgets it and found again
under the same number.  A :class:`Node` exists per inode the kernel knows
(lookup counts) or that has open handles; it knows the directory and name it
was last reached by (a hard-linked inode is resolved through its inode record
instead).  A node unlinked or renamed over while the kernel still knows it
keeps a snapshot of its entry (``orphan``) and its scratch file, so
open-then-unlinked files stay readable and writable until closed (a stored
file written after its unlink gets an anonymous scratch file).

Changes go through the draft's plan / persist / apply protocol: ops.py plans
on the trio thread (``plan_*`` here), persists in a worker thread
(``Draft.persist``) and applies on the trio thread (``apply_*`` here, which
also updates the nodes), holding one lock from plan to apply.

Content: an unchanged file is read from the store (verified); the first write
(or truncate) copies it into a scratch file of the draft, and every handle of
the node moves onto that scratch file so all readers see the writes.  After a
commit the handles move back onto the stored content.
"""
from __future__ import annotations

import errno
import stat
import time

from .. import repo
from ..errors import BadInput, IsADirectory, NotADirectory, NotFound, NotPermitted
from ..repo.drafts import ROOT_INO, Change, Draft, ScratchFile
from ..storage import format as fmt
from ..storage.format import DIR, FILE, REF, SYMLINK, Entry
from .vfs import CTL_NAME, BaseVFS, Handle, stat_dict


class Node:
    __slots__ = ("ino", "parent", "name", "lookups", "orphan", "handles", "scratch", "scratch_dir_synced")

    def __init__(self, ino: int, parent: int | None, name: bytes):
        self.ino = ino
        self.parent = parent  # inode number of the directory it was last reached by
        self.name = name
        self.lookups = 0
        self.orphan: Entry | None = None  # removed from the tree while still known
        # () until a handle opens: an empty set is 216 bytes, and the kernel keeps a node for
        # every name it looked up (100k nodes after an `ls -lR`)
        self.handles: set | tuple = ()
        self.scratch: ScratchFile | None = None  # open scratch file, shared by the node's handles
        self.scratch_dir_synced = True


class DraftVFS(BaseVFS):
    readonly = False

    def __init__(self, store, draft: Draft):
        super().__init__(store)
        self.draft = draft
        root = Node(ROOT_INO, None, b"")
        root.lookups = 1
        self.nodes: dict[int, Node] = {ROOT_INO: root}

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
            p = self.nodes.get(n.parent)
            if p is None:
                raise NotFound("the directory of this file is gone")
            n = p
        return tuple(reversed(parts))

    def entry(self, n: Node) -> Entry:
        if n.orphan is not None:
            return n.orphan
        if n.ino == ROOT_INO:
            return self.draft.root
        inode = self.draft.inodes.get(n.ino)
        if inode is not None:  # a hard-linked inode: its record, whatever name reached it
            return inode.with_(name=n.name, link=n.ino)
        e = self.draft.lookup(self.path(n))
        if e is None:
            raise NotFound("no such file")
        return e

    def _known(self, parent: int, name: bytes, e: Entry) -> Node:
        ino = self.draft.ino_of(parent, name, e)
        n = self.nodes.get(ino)
        if n is None:
            n = self.nodes[ino] = Node(ino, parent, name)
        elif n.orphan is None:
            n.parent, n.name = parent, name
        return n

    def lookup(self, parent_ino: int, name: bytes) -> tuple[Node, Entry]:
        """Find a name; the caller reports it to the kernel (lookup count + 1)."""
        parent = self.node(parent_ino)
        pe = self.entry(parent)
        if pe.kind != DIR:
            raise NotADirectory("not a directory")
        if parent.ino == ROOT_INO and name == CTL_NAME:
            raise NotFound("control directory")  # handled by ops.py
        e = self.draft.child(pe, name)
        if e is None:
            raise NotFound("no such entry")
        n = self._known(parent_ino, name, e)
        n.lookups += 1
        return n, e

    def listdir(self, ino: int) -> list[tuple[bytes, Entry]]:
        n = self.node(ino)
        e = self.entry(n)
        if e.kind != DIR:
            raise NotADirectory("not a directory")
        return sorted(self.draft.children(e).items())

    def parent_of(self, ino: int) -> int:
        """The inode number of a directory's parent (the root's, or a removed one's, is its own)."""
        n = self.node(ino)
        return n.parent if n.parent is not None else ino

    def dirent_node(self, parent_ino: int, index: int, name: bytes, e: Entry) -> Node:
        return self._known(parent_ino, name, e)

    def dirent_counted(self, n: Node, counted: bool) -> None:
        """After readdir_reply: the kernel now knows the entry (or, if not counted, does not)."""
        if counted:
            n.lookups += 1
        else:
            self._maybe_drop(n)

    def forget(self, ino: int, count: int) -> None:
        n = self.nodes.get(ino)
        if n is None or ino == ROOT_INO:
            return
        n.lookups -= count
        self._maybe_drop(n)

    def _maybe_drop(self, n: Node) -> None:
        if n.lookups <= 0 and not n.handles and n.ino != ROOT_INO:
            self.nodes.pop(n.ino, None)
            if n.scratch is not None:
                n.scratch.close()
                n.scratch = None

    # -- attributes ---------------------------------------------------------------
    def stat(self, n: Node, e: Entry | None = None) -> dict:
        e = e or self.entry(n)
        size = mtime = None
        ctime = e.ctime_ns
        if e.kind == DIR:
            nlink = 2 + self.draft.subdirs(e)
        elif n.orphan is not None:
            nlink = 0
        else:
            nlink = e.nlink if e.link is not None else 1
        if n.scratch is not None or e.scratch is not None:  # a changed file: its scratch file is the truth
            st = n.scratch.fstat() if n.scratch is not None else self.draft.scratch_stat(e.scratch)
            if st is not None:
                size, mtime = st.st_size, st.st_mtime_ns
                ctime = max(ctime, st.st_ctime_ns)
        return stat_dict(n.ino, e, size=size, mtime=mtime, ctime=max(ctime, mtime or 0) if e.kind != DIR else ctime,
                         nlink=nlink)

    # -- planning changes (trio thread; nothing changes until apply) ----------------------
    def _child_path(self, parent_ino: int, name: bytes) -> tuple:
        parent = self.node(parent_ino)
        if parent.orphan is not None:
            raise NotFound("directory was removed")
        if parent_ino == ROOT_INO and name == CTL_NAME:
            raise NotPermitted(".artfs is reserved")
        fmt.check_name(name)
        return self.path(parent) + (name,)

    def plan_create(self, parent_ino: int, name: bytes, kind: int, mode: int, uid: int, gid: int, *,
                    rdev: int = 0, target: bytes | None = None, scratch: str | None = None) -> Change:
        path = self._child_path(parent_ino, name)
        if kind == SYMLINK and (not target or len(target) > fmt.MAX_TARGET):
            raise BadInput("bad symlink target")
        return self.draft.plan_create(path, kind, mode, uid, gid, rdev=rdev, target=target, scratch=scratch)

    def apply_create(self, ch: Change, parent_ino: int, name: bytes, sf: ScratchFile | None = None) -> tuple[Node, Entry]:
        self.draft.apply(ch)
        ino, e = ch.result
        n = self.nodes.get(ino) or Node(ino, parent_ino, name)
        self.nodes[ino] = n
        n.parent, n.name, n.orphan = parent_ino, name, None
        n.lookups += 1
        if sf is not None:
            n.scratch = sf
            n.scratch_dir_synced = False
        return n, e

    def plan_link(self, ino: int, parent_ino: int, name: bytes) -> Change:
        n = self.node(ino)
        if n.orphan is not None:
            raise NotFound("file was removed")
        dst = self._child_path(parent_ino, name)
        if n.ino in self.draft.inodes:  # already hard-linked: by number, whatever its names are now
            return self.draft.plan_link(None, dst, ino=n.ino)
        return self.draft.plan_link(self.path(n), dst)

    def apply_link(self, ch: Change, parent_ino: int, name: bytes) -> tuple[Node, Entry]:
        self.draft.apply(ch)
        ino, e = ch.result
        n = self.nodes.get(ino)
        if n is None:
            n = self.nodes[ino] = Node(ino, parent_ino, name)
        n.lookups += 1
        return n, e

    def plan_remove(self, parent_ino: int, name: bytes, is_dir: bool) -> tuple[Change, int]:
        path = self._child_path(parent_ino, name)
        d = self.draft
        e = d.lookup(path)
        if e is None:
            raise NotFound("no such file")
        ino = d.ino_of(parent_ino, name, e)
        return d.plan_remove(path, "dir" if is_dir else "file"), ino

    def apply_remove(self, ch: Change, ino: int) -> None:
        removed = ch.result
        self.draft.apply(ch)
        self._gone(ino, removed)

    def _gone(self, ino: int, removed: Entry) -> None:
        """A name left the tree; its node (if the kernel knows it) becomes an orphan unless the
        inode lives on under other names."""
        n = self.nodes.get(ino)
        if n is None:
            return
        if removed.link is not None and removed.link in self.draft.inodes:
            return  # other names remain
        n.orphan = removed.with_(ctime_ns=time.time_ns())
        n.parent = None
        self._maybe_drop(n)

    def plan_rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int
                    ) -> tuple[Change, int, int | None]:
        d = self.draft
        old = self._child_path(old_parent, old_name)
        new = self._child_path(new_parent, new_name)
        e = d.lookup(old)
        if e is None:
            raise NotFound("no such file")
        t = d.lookup(new)
        tino = d.ino_of(new_parent, new_name, t) if t is not None else None
        ch = d.plan_rename(old, new, noreplace=bool(flags & 1), exchange=bool(flags & 2))
        return ch, d.ino_of(old_parent, old_name, e), tino

    def apply_rename(self, ch: Change, moved_ino: int, target_ino: int | None, old_parent: int, old_name: bytes,
                     new_parent: int, new_name: bytes, exchange: bool) -> None:
        moved, replaced = ch.result
        self.draft.apply(ch)
        if exchange and target_ino is not None:
            t = self.nodes.get(target_ino)
            if t is not None:
                t.parent, t.name = old_parent, old_name
        elif replaced is not None and target_ino is not None and target_ino != moved_ino:
            self._gone(target_ino, replaced)
        n = self.nodes.get(moved_ino)
        if n is not None:
            n.parent, n.name = new_parent, new_name

    def plan_setattr(self, n: Node, **kw) -> Change | None:
        """A metadata change of a node; None for an orphan (changed in memory only)."""
        if n.orphan is not None:
            n.orphan = n.orphan.with_(ctime_ns=time.time_ns(), **{k: v for k, v in kw.items()
                                                                   if k in ("mode", "uid", "gid", "mtime_ns",
                                                                            "atime_ns", "xattrs")})
            return None
        if n.ino in self.draft.inodes:  # a hard-linked inode: by number, whatever its names are now
            return self.draft.plan_setattr(None, ino=n.ino, **kw)
        return self.draft.plan_setattr(() if n.ino == ROOT_INO else self.path(n), **kw)

    def apply(self, ch: Change) -> None:
        self.draft.apply(ch)

    # -- content -----------------------------------------------------------------------
    def needs_copy_up(self, n: Node) -> bool:
        e = self.entry(n)
        return e.kind in (FILE, REF) and n.scratch is None and (e.scratch is None or n.orphan is not None)

    def copy_up_blocking(self, n: Node, e: Entry, truncate: bool) -> tuple[str | None, ScratchFile]:
        """A scratch file with the node's content (worker thread).  An orphan gets an anonymous
        one; a named one is recorded by the caller with a setattr change."""
        d = self.draft
        if e.scratch is not None and n.orphan is None:  # already changed: just open it
            return e.scratch, d.open_scratch(e.scratch)
        if n.orphan is not None:
            sf = d.anon_scratch()
            try:
                if e.scratch is not None and not truncate:
                    src = d.open_scratch(e.scratch)
                    try:
                        from ..storage.hashing import copy_fd

                        copy_fd(src.fd, sf.fd, src.fstat().st_size)
                    finally:
                        src.close()
                elif not truncate and e.size:
                    with repo.ContentReader(self.store, e) as r:
                        for i in range(fmt.chunk_count(r.size)):
                            sf.pwrite(r.piece(i), i * fmt.CHUNK)
            except BaseException:
                sf.close()
                raise
            return None, sf
        return d.copy_up(e, truncate)

    def adopt_scratch(self, n: Node, name: str | None, sf: ScratchFile, fresh: bool) -> None:
        """The node's bytes now live in ``sf``: move every handle onto it."""
        n.scratch = sf
        if fresh:
            n.scratch_dir_synced = False
        for h in n.handles:
            h.close_reader()

    def open(self, ino: int, writable: bool) -> tuple[Handle, Entry]:
        n = self.node(ino)
        e = self.entry(n)
        if e.kind == DIR:
            raise IsADirectory("is a directory")
        if e.kind not in (FILE, REF):
            raise BadInput("not a regular file")
        h = self._new_handle(n, writable)
        if not n.handles:
            n.handles = set()
        n.handles.add(h)
        return h, e

    def backed_by_scratch(self, h: Handle) -> bool:
        return h.node.scratch is not None

    def read_scratch(self, h: Handle, off: int, size: int) -> bytes:
        return h.node.scratch.pread(off, size)

    def write(self, h: Handle, off: int, buf: bytes) -> int:
        return h.node.scratch.pwrite(buf, off)

    def release(self, fh: int) -> None:
        h = self._close_handle(fh)
        if h is None:
            return
        n = h.node
        if n.handles:
            n.handles.discard(h)
            if not n.handles:
                n.handles = ()
        if not n.handles and n.scratch is not None:
            # Closed with its last handle (reopened by path when needed): the kernel keeps
            # inodes, and so nodes, of every file a `cp -r` made, and a descriptor each would run
            # out (EMFILE) after RLIMIT_NOFILE files.  An anonymous (orphan) scratch file is gone
            # with its descriptor.
            n.scratch.close()
            n.scratch = None
        self._maybe_drop(n)

    def after_commit(self) -> list[Node]:
        """The draft is clean on a new version: nodes holding scratch files of committed content
        let them go (their handles reopen stored content).  Returns the nodes whose handles the
        caller must re-back."""
        moved = []
        for n in list(self.nodes.values()):
            if n.scratch is None or n.orphan is not None:
                continue
            try:
                e = self.entry(n)
            except NotFound:
                continue
            if e.scratch != n.scratch.name:
                n.scratch.close()
                n.scratch = None
                if n.handles:
                    moved.append(n)
        return moved

    # -- xattrs ------------------------------------------------------------------------
    def xattrs(self, ino: int) -> tuple:
        return self.entry(self.node(ino)).xattrs

    # -- control texts -----------------------------------------------------------------
    def ref_text(self) -> str:
        return repo.workspace.ref_text(self.store, self.draft) + "\n"

    def status_blocking(self) -> str:
        from ..names import quote

        return "".join(f"{code} {quote(b'/'.join(p))}\n" for code, p in self.draft.status())


def caller_groups(pid: int) -> set[int]:
    """Supplementary groups of the process making a request (for setgid rules)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(x) for x in line.split()[1:]}
    except OSError:
        pass
    return set()


def new_owner(parent: Entry, kind: int, mode: int, uid: int, gid: int, pid: int) -> tuple[int, int]:
    """(mode, gid) of a new entry, as the kernel does for local file systems (inode_init_owner):
    a setgid directory gives its group (and, to subdirectories, its setgid bit)."""
    if parent.mode & stat.S_ISGID:
        gid = parent.gid
        if kind == DIR:
            mode |= stat.S_ISGID
        elif mode & stat.S_ISGID and mode & stat.S_IXGRP and uid != 0 and gid not in caller_groups(pid):
            mode &= ~stat.S_ISGID
    return mode, gid


__all__ = ["DraftVFS", "Node", "caller_groups", "new_owner", "errno"]
