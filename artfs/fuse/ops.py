"""pyfuse3 adapter: kernel requests -> VFS calls, domain errors -> errno, cache policy.

Only ``FUSEError`` leaves a handler (``@fuse_handler`` converts everything
else, logging what was unexpected as EIO), because any other exception kills
the whole mount.

Cache policy: a committed version is immutable, so the kernel may keep
entries, attributes and pages for an hour (``keep_cache``).  A draft only
changes through this mount, so the kernel's own invalidation on write,
create, unlink and rename keeps it coherent; after a commit that merged newer
versions in, the entries that changed are invalidated.

Concurrency: handlers run as trio tasks on one thread.  Metadata work
(SQLite), hashing, copying, fsync and reads of stored content run in worker
threads, so a lock held by another process or a slow disk never stalls other
requests.  A draft change is planned, persisted (on the loop when the local
store's database is free, else in a worker thread: ``_persist``) and applied
under one lock (``mutex``); ``Gate`` lets a commit wait for in-flight
changes and writes and hold new ones back until it is done, so a write lands
wholly before or wholly after a commit.

Background work, once the daemon calls :meth:`Operations.start` with its
nursery: read-ahead across a directory's small files and within big files
(``readahead.py``), and empty scratch files made ahead for creates
(``scratch_pool.py``).  Without ``start`` (tests of this layer) neither runs.
"""
from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import stat

import pyfuse3
import trio

from .. import errors, repo
from ..repo import staging
from ..errors import NotPermitted
from ..storage.format import BLK, CHR, DIR, FIFO, FILE, REF, SOCK, SYMLINK
from ..repo.content import read_cached
from . import heap
from .readahead import ReadAhead
from .scratch_pool import ScratchPool
from .vfs import CTL_NAME, ROOT_INO, SMALL_FILE, BaseVFS

log = logging.getLogger("artfs.fuse")

CTL_DIR = 2
CTL_FILES = {b"ref": 3, b"status": 4, b"commit": 5, b"finish": 6, b"pid": 7}
CTL_NAMES = {v: k for k, v in CTL_FILES.items()}
CTL_FH_BASE = 1 << 48
RO_TIMEOUT = 3600.0
DRAFT_TIMEOUT = 10.0
TRIM_AFTER = 1024  # files committed at once before the heap is trimmed (artfs.fuse.heap)
REF_READ_TIMEOUT = 60.0  # a file:// reference on a hung network file system fails with EIO, not a hang
KIND_OF_MODE = {stat.S_IFREG: FILE, stat.S_IFIFO: FIFO, stat.S_IFCHR: CHR, stat.S_IFBLK: BLK, stat.S_IFSOCK: SOCK}

_ERRNO = [
    (errors.Exists, errno.EEXIST),
    (errors.NotEmpty, errno.ENOTEMPTY),
    (errors.NotADirectory, errno.ENOTDIR),
    (errors.IsADirectory, errno.EISDIR),
    (NotPermitted, errno.EPERM),
    (errors.NotFound, errno.ENOENT),
    (errors.ReadOnly, errno.EROFS),
    (errors.NoSpace, errno.ENOSPC),
    (errors.Corrupt, errno.EIO),
    (errors.Conflict, errno.EBUSY),
    (errors.BadInput, errno.EINVAL),
    (errors.StoreMissing, errno.EIO),
]


def errno_of(exc: BaseException) -> int:
    for cls, no in _ERRNO:
        if isinstance(exc, cls):
            return no
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def fuse_handler(fn):
    """Turn domain errors into errnos at the edge; log anything unexpected as EIO."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except (errors.ArtfsError, OSError) as exc:
            no = errno_of(exc)
            if no in (errno.EIO, errno.ENOSPC):
                log.error("%s%r: %s", fn.__name__, args[:2], exc)
            raise pyfuse3.FUSEError(no) from None
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Gate:
    """Many changes at once, or one exclusive holder (commit)."""

    def __init__(self):
        self.active = 0
        self.closed: trio.Event | None = None
        self.drained: trio.Event | None = None

    async def enter(self) -> None:
        while self.closed is not None:
            await self.closed.wait()
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self.drained is not None:
            self.drained.set()

    async def close(self) -> None:
        while self.closed is not None:
            await self.closed.wait()
        self.closed = trio.Event()
        while self.active:
            self.drained = trio.Event()
            await self.drained.wait()
        self.drained = None

    def open(self) -> None:
        ev, self.closed = self.closed, None
        if ev is not None:
            ev.set()

    def __call__(self):
        return _Entered(self)


class _Entered:
    def __init__(self, gate: Gate):
        self.gate = gate

    async def __aenter__(self):
        await self.gate.enter()

    async def __aexit__(self, *exc):
        self.gate.leave()


ACL_ACCESS = b"system.posix_acl_access"


def acl_mode(value: bytes) -> tuple[int, bool]:
    """(permission bits, whether the mode says all of it) of a POSIX ACL xattr (the kernel's
    posix_acl_equiv_mode)."""
    import struct

    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        raise pyfuse3.FUSEError(errno.EINVAL)
    mode, equivalent = 0, True
    for off in range(4, len(value), 8):
        tag, perm, _ = struct.unpack_from("<HHI", value, off)
        perm &= 0o7
        if tag == 0x01:  # ACL_USER_OBJ
            mode |= perm << 6
        elif tag == 0x04:  # ACL_GROUP_OBJ
            mode |= perm << 3
        elif tag == 0x20:  # ACL_OTHER
            mode |= perm
        elif tag == 0x10:  # ACL_MASK: the group bits show the mask
            mode = (mode & ~0o070) | (perm << 3)
            equivalent = False
        elif tag in (0x02, 0x08):  # ACL_USER, ACL_GROUP
            equivalent = False
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)
    return mode, equivalent


def _groups(pid: int) -> set[int]:
    from .draft_vfs import caller_groups

    return caller_groups(pid)


def _name_ok(name: bytes) -> None:
    if len(name) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True  # the kernel keeps POSIX ACLs (cached, enforced) and turns a plain ACL into a mode

    def __init__(self, vfs: BaseVFS, collab=None, owner_uid: int | None = None, owner_gid: int | None = None):
        super().__init__()
        self.vfs = vfs
        self.ro = vfs.readonly
        self.timeout = RO_TIMEOUT if self.ro else DRAFT_TIMEOUT
        self.gate = Gate()
        self.mutex = trio.Lock()
        self.copy_locks: dict[int, trio.Lock] = {}
        self.dirs: dict[int, tuple[int, list]] = {}
        self.next_dh = 1
        self.ctl: dict[int, tuple[int, bytearray]] = {}
        self.next_ctl = CTL_FH_BASE
        self.collab = collab  # collaborative-version hooks (upsert/finish), if mounted with a distributed id
        self.last_error = ""  # why the last write to .artfs/commit or finish failed (read back by `artfs commit`)
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.owner_gid = os.getgid() if owner_gid is None else owner_gid
        self.readahead = ReadAhead(vfs.store, SMALL_FILE)  # these two are active once start() is called
        self.scratch_pool = ScratchPool(vfs.draft) if vfs.draft is not None else None
        self.nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Let background work (read-ahead, scratch files made ahead) run in ``nursery``."""
        self.nursery = nursery
        self.readahead.start(nursery)
        if self.scratch_pool is not None:
            self.scratch_pool.start(nursery)

    # -- attributes ----------------------------------------------------------------
    def _attr(self, fields: dict) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        for k, v in fields.items():
            setattr(a, k, v)
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        return a

    def _ctl_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        now = self.vfs.mount_time_ns
        if ino == CTL_DIR:
            mode, nlink = stat.S_IFDIR | 0o700, 2
        else:
            writable = CTL_NAMES[ino] in (b"commit", b"finish") and not self.ro
            mode, nlink = stat.S_IFREG | (0o600 if writable else 0o400), 1
        # the mount owner's: with allow_other, the kernel keeps other users out
        a = self._attr({"st_ino": ino, "st_mode": mode, "st_nlink": nlink, "st_uid": self.owner_uid,
                        "st_gid": self.owner_gid, "st_size": 0, "st_blksize": 4096, "st_blocks": 0,
                        "st_atime_ns": now, "st_mtime_ns": now, "st_ctime_ns": now})
        a.entry_timeout = a.attr_timeout = 0
        return a

    @staticmethod
    def _is_ctl(ino: int) -> bool:
        return CTL_DIR <= ino < 16

    # -- lookups ----------------------------------------------------------------
    @fuse_handler
    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == ROOT_INO and name == CTL_NAME:
            return self._ctl_attr(CTL_DIR)
        if parent_inode == CTL_DIR:
            ino = CTL_FILES.get(name)
            if ino is None or (name == b"finish" and self.collab is None):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._ctl_attr(ino)
        _name_ok(name)
        n, e = self.vfs.lookup(parent_inode, name)
        return self._attr(self.vfs.stat(n, e))

    async def forget(self, inode_list):
        try:
            for ino, count in inode_list:
                if not self._is_ctl(ino):
                    self.vfs.forget(ino, count)
        except Exception:
            log.exception("forget")

    @fuse_handler
    async def getattr(self, inode, ctx=None):
        if self._is_ctl(inode):
            return self._ctl_attr(inode)
        return self._attr(self.vfs.stat(self.vfs.node(inode)))

    @fuse_handler
    async def readlink(self, inode, ctx):
        e = self.vfs.entry(self.vfs.node(inode))
        if e.kind != SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return e.target

    # -- directories --------------------------------------------------------------
    def _listing(self, inode: int) -> list:
        """(name, Entry) per entry; "." and ".." first, as (name, inode number), and the control
        files as (name, None)."""
        if inode == CTL_DIR:
            names = [k for k in CTL_FILES if k != b"finish" or self.collab is not None]
            return [(b".", CTL_DIR), (b"..", ROOT_INO)] + [(k, None) for k in sorted(names)]
        return [(b".", inode), (b"..", self.vfs.parent_of(inode))] + self.vfs.listdir(inode)

    def _dot_attr(self, ino: int):
        if self._is_ctl(ino):
            return self._ctl_attr(ino)
        return self._attr(self.vfs.stat(self.vfs.node(ino)))

    @fuse_handler
    async def opendir(self, inode, ctx):
        if not self._is_ctl(inode):
            self.vfs.node(inode)
        dh = self.next_dh
        self.next_dh += 1
        self.dirs[dh] = (inode, [])
        return dh

    @fuse_handler
    async def readdir(self, fh, start_id, token):
        inode, listing = self.dirs[fh]
        if start_id == 0:  # opendir, or rewinddir: the directory as it is now
            listing = self._listing(inode)
            self.dirs[fh] = (inode, listing)
        vfs = self.vfs
        for i in range(start_id, len(listing)):
            name, e = listing[i]
            if isinstance(e, int):  # "." or "..": the kernel counts no lookup for these
                try:
                    attr = self._dot_attr(e)
                except errors.NotFound:  # the parent went away meanwhile: leave ".." out
                    continue
                if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                    return
                continue
            if e is None:  # control directory
                if not pyfuse3.readdir_reply(token, name, self._ctl_attr(CTL_FILES[name]), i + 1):
                    return
                continue
            n = vfs.dirent_node(inode, i - 2, name, e)  # its index among the entries, after "." and ".."
            counted = pyfuse3.readdir_reply(token, name, self._attr(vfs.stat(n, e)), i + 1)
            vfs.dirent_counted(n, counted)
            if not counted:
                return

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    # -- draft changes: plan (here) -> persist (worker thread) -> apply (here) ----------------
    def _writable_name(self, parent_inode: int, name: bytes) -> None:
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._is_ctl(parent_inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        if parent_inode == ROOT_INO and name == CTL_NAME:
            raise pyfuse3.FUSEError(errno.EPERM)
        _name_ok(name)

    async def _persist(self, ch) -> None:
        """One metadata transaction for a planned change: on the loop when the store can do it
        without waiting (no worker-thread trip), else in a worker thread."""
        d = self.vfs.draft
        if not d.try_persist_now(ch):
            await trio.to_thread.run_sync(d.persist, ch)

    async def _make(self, parent_inode, name, kind, mode, ctx, rdev=0, target=None):
        """create / mknod / mkdir / symlink: a new name (and, for a regular file, its scratch file:
        if the transaction fails, persist removes it)."""
        from .draft_vfs import new_owner

        vfs = self.vfs
        d = vfs.draft
        async with self.gate(), self.mutex:
            parent = vfs.entry(vfs.node(parent_inode))
            perm, gid = new_owner(parent, kind, stat.S_IMODE(mode), ctx.uid, ctx.gid, ctx.pid)
            sname, made = self.scratch_pool.take() if kind == FILE else (None, False)
            try:
                ch = vfs.plan_create(parent_inode, name, kind, perm, ctx.uid, gid, rdev=rdev, target=target,
                                     scratch=sname)
            except BaseException:
                if made:  # untouched: back to the pool
                    self.scratch_pool.give_back(sname)
                raise
            # the scratch file here (made ahead: an open), then the transaction (see _persist)
            sf = d.create_scratch_for(sname, made) if sname is not None else None
            try:
                await self._persist(ch)
            except BaseException:
                if sf is not None:
                    sf.close()
                raise
            return vfs.apply_create(ch, parent_inode, name, sf)

    @fuse_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable_name(parent_inode, name)
        n, e = await self._make(parent_inode, name, DIR, mode, ctx)
        return self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable_name(parent_inode, name)
        kind = KIND_OF_MODE.get(stat.S_IFMT(mode))
        if kind is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        n, e = await self._make(parent_inode, name, kind, mode, ctx, rdev=rdev)
        return self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable_name(parent_inode, name)
        if len(target) > 4095:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        n, e = await self._make(parent_inode, name, SYMLINK, 0o777, ctx, target=target)
        return self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable_name(parent_inode, name)
        n, e = await self._make(parent_inode, name, FILE, mode, ctx)
        h, _ = self.vfs.open(n.ino, True)
        h.append = bool(flags & os.O_APPEND)
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=True), self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable_name(new_parent_inode, new_name)
        if self._is_ctl(inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        vfs = self.vfs
        async with self.gate(), self.mutex:
            ch = vfs.plan_link(inode, new_parent_inode, new_name)
            await self._persist(ch)
            n, e = vfs.apply_link(ch, new_parent_inode, new_name)
        return self._attr(vfs.stat(n, e))

    @fuse_handler
    async def rmdir(self, parent_inode, name, ctx):
        await self._remove(parent_inode, name, True)

    @fuse_handler
    async def unlink(self, parent_inode, name, ctx):
        await self._remove(parent_inode, name, False)

    async def _remove(self, parent_inode, name, is_dir: bool) -> None:
        self._writable_name(parent_inode, name)
        vfs = self.vfs
        async with self.gate(), self.mutex:
            ch, ino = vfs.plan_remove(parent_inode, name, is_dir)
            await self._persist(ch)
            vfs.apply_remove(ch, ino)

    @fuse_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable_name(parent_inode_old, name_old)
        self._writable_name(parent_inode_new, name_new)
        vfs = self.vfs
        async with self.gate(), self.mutex:
            ch, moved, target = vfs.plan_rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
            await self._persist(ch)
            vfs.apply_rename(ch, moved, target, parent_inode_old, name_old, parent_inode_new, name_new,
                             bool(flags & pyfuse3.RENAME_EXCHANGE))

    # -- attributes ----------------------------------------------------------------
    @fuse_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if self._is_ctl(inode):
            return self._ctl_attr(inode)  # `echo msg > .artfs/commit` truncates first
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        vfs = self.vfs
        async with self.gate():
            n = vfs.node(inode)
            if fields.update_size:
                e = vfs.entry(n)
                if e.kind == DIR:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if e.kind not in (FILE, REF):
                    raise pyfuse3.FUSEError(errno.EINVAL)
                await self._copy_up(n, truncate=attr.st_size == 0)
                await trio.to_thread.run_sync(n.scratch.truncate, attr.st_size)
            kw = {}
            if fields.update_mode:
                kw["mode"] = attr.st_mode
            if fields.update_uid:
                kw["uid"] = attr.st_uid
            if fields.update_gid:
                kw["gid"] = attr.st_gid
            if fields.update_mtime:
                kw["mtime_ns"] = attr.st_mtime_ns
            if fields.update_atime:
                kw["atime_ns"] = attr.st_atime_ns
            if kw or fields.update_size:
                async with self.mutex:
                    e = vfs.entry(n)
                    if "mtime_ns" in kw and n.scratch is None and e.scratch is not None and n.orphan is None:
                        n.scratch = await trio.to_thread.run_sync(vfs.draft.open_scratch, e.scratch)
                    if "mtime_ns" in kw and n.scratch is not None:
                        # a changed file's mtime lives in its scratch file (writes move it)
                        await trio.to_thread.run_sync(n.scratch.set_times, kw.get("atime_ns", e.atime_ns),
                                                      kw["mtime_ns"])
                    ch = vfs.plan_setattr(n, **kw)
                    if ch is not None:
                        await self._persist(ch)
                        vfs.apply(ch)
            return self._attr(vfs.stat(n))

    # -- files -----------------------------------------------------------------------
    async def _copy_up(self, n, truncate: bool) -> None:
        """Give a node a scratch file of its own (once), off the trio thread, and record it."""
        vfs = self.vfs
        lock = self.copy_locks.setdefault(n.ino, trio.Lock())
        async with lock:
            if not vfs.needs_copy_up(n):
                if n.scratch is None:  # changed before (e.g. by an earlier mount): open its scratch file
                    e = vfs.entry(n)
                    if e.scratch is not None:
                        n.scratch = await trio.to_thread.run_sync(vfs.draft.open_scratch, e.scratch)
                return
            e = vfs.entry(n)
            name, sf = await trio.to_thread.run_sync(vfs.copy_up_blocking, n, e, truncate)
            try:
                if name is not None and e.scratch != name:
                    async with self.mutex:
                        ch = vfs.plan_setattr(n, scratch=name, ctime_ns=e.ctime_ns)
                        if ch is not None:
                            await self._persist(ch)
                            vfs.apply(ch)
            except BaseException:
                sf.close()
                raise
            vfs.adopt_scratch(n, name, sf, fresh=name is not None and e.scratch != name)
        if not lock.locked():
            self.copy_locks.pop(n.ino, None)

    @fuse_handler
    async def open(self, inode, flags, ctx):
        if self._is_ctl(inode):
            status = None
            if inode == CTL_FILES[b"status"] and not self.ro:
                status = await self.exclusive(self.vfs.status_blocking)  # a snapshot, hashed in a thread
            return self._open_ctl(inode, flags, status)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable and self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        vfs = self.vfs
        if writable:
            async with self.gate():
                n = vfs.node(inode)
                truncate = bool(flags & os.O_TRUNC)
                await self._copy_up(n, truncate=truncate)
                h, _ = vfs.open(inode, True)
                h.append = bool(flags & os.O_APPEND)
                if truncate:  # a file already changed was not copied again; even an empty one's
                    # mtime and ctime move (ftruncate always stamps them, as open(O_TRUNC) does on ext4)
                    await trio.to_thread.run_sync(n.scratch.truncate, 0)
        else:
            h, e = vfs.open(inode, False)
            try:
                await self._back(h, e)
            except BaseException:
                vfs.release(h.fh)
                raise
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=True)

    async def _back(self, h, e) -> None:
        """Give a read handle its content: the node's scratch file, or verified stored content."""
        vfs = self.vfs
        n = h.node
        if not self.ro and (n.scratch is not None or e.scratch is not None):
            if n.scratch is None:
                n.scratch = await trio.to_thread.run_sync(vfs.draft.open_scratch, e.scratch)
            return
        if e.kind == REF:
            with trio.move_on_after(REF_READ_TIMEOUT) as scope:
                await trio.to_thread.run_sync(vfs.open_stored_blocking, h, e, abandon_on_cancel=True)
            if scope.cancelled_caught:
                raise errors.ReferenceChanged(f"reference {e.uri} did not answer in time")
        else:
            ra = self.readahead
            if e.size <= SMALL_FILE:
                await ra.settle(e, 0, e.size)
                data = read_cached(e, 0, e.size)  # read ahead (or read before): no worker-thread trip
            else:
                data = None
            if data is not None:
                h.close_reader()
                h.data = data
            else:
                await trio.to_thread.run_sync(vfs.open_stored_blocking, h, e)
            where = vfs.siblings(n)
            if where is not None:
                ra.opened(*where)

    @fuse_handler
    async def read(self, fh, off, size):
        if fh >= CTL_FH_BASE:
            _, buf = self.ctl[fh]
            return bytes(buf[off: off + size])
        vfs = self.vfs
        h = vfs.handle(fh)
        if not self.ro and h.node.scratch is not None:
            return vfs.read_scratch(h, off, size)
        if h.data is None and h.reader is None:
            await self._back(h, vfs.entry(h.node))
            if h.node.scratch is not None:
                return vfs.read_scratch(h, off, size)
        if h.data is not None:
            return h.data[off:off + size]
        reader = h.reader
        if reader.is_ref:
            with trio.move_on_after(REF_READ_TIMEOUT) as scope:
                data = await trio.to_thread.run_sync(reader.read, off, size, abandon_on_cancel=True)
            if scope.cancelled_caught:
                raise errors.ReferenceChanged("a referenced file did not answer in time")
            return data
        e = reader.entry
        ra = self.readahead
        ra.read(h, e, off, size)
        await ra.settle(e, off, size)
        data = read_cached(e, off, size)
        if data is not None:
            return data
        return await trio.to_thread.run_sync(reader.read, off, size)

    @fuse_handler
    async def write(self, fh, off, buf):
        if fh >= CTL_FH_BASE:
            return await self._write_ctl(fh, buf)
        vfs = self.vfs
        async with self.gate():
            h = vfs.handle(fh)
            if h.node.scratch is None:
                await self._copy_up(h.node, truncate=False)
            return vfs.write(h, off, buf)

    async def flush(self, fh):
        # Data is made durable by fsync and commit, not close: answering ENOSYS once
        # makes the kernel stop sending flush on every close().
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_handler
    async def release(self, fh):
        if fh >= CTL_FH_BASE:
            self.ctl.pop(fh, None)
            return
        self.vfs.release(fh)

    @fuse_handler
    async def fsync(self, fh, datasync):
        if fh >= CTL_FH_BASE or self.ro:
            return
        vfs = self.vfs
        h = vfs.handle(fh)
        n = h.node
        if n.scratch is not None:
            await trio.to_thread.run_sync(n.scratch.fsync)
            if not n.scratch_dir_synced:
                await trio.to_thread.run_sync(vfs.draft.sync_scratch_dir)
                n.scratch_dir_synced = True
        await self._durable()

    async def _durable(self) -> None:
        """Every change so far on disk, then delete the scratch files those changes replaced."""
        await trio.to_thread.run_sync(staging.make_durable, self.vfs.store, self.vfs.draft)

    @fuse_handler
    async def fsyncdir(self, fh, datasync):
        if not self.ro:
            await self._durable()

    @fuse_handler
    async def statfs(self, ctx):
        st = await trio.to_thread.run_sync(os.statvfs, self.vfs.store.state_dir)  # where scratch files go
        s = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(s, k, getattr(st, k))
        s.f_namemax = 255
        return s

    # -- xattrs ----------------------------------------------------------------------
    @fuse_handler
    async def getxattr(self, inode, name, ctx):
        if self._is_ctl(inode):
            raise pyfuse3.FUSEError(errno.ENODATA)
        for k, v in self.vfs.xattrs(inode):
            if k == name:
                return v
        raise pyfuse3.FUSEError(errno.ENODATA)

    @fuse_handler
    async def listxattr(self, inode, ctx):
        if self._is_ctl(inode):
            return []
        names = [k for k, _ in self.vfs.xattrs(inode)]
        if ctx.uid != 0:  # the kernel checks trusted.* get/set itself, but leaves listing to us
            names = [k for k in names if not k.startswith(b"trusted.")]
        return names

    @fuse_handler
    async def setxattr(self, inode, name, value, ctx):
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._is_ctl(inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        if name == ACL_ACCESS:
            await self._set_access_acl(inode, bytes(value), ctx)
            return
        await self._set_xattrs(inode, lambda cur: {**cur, bytes(name): bytes(value)})

    async def _set_access_acl(self, inode, value: bytes, ctx) -> None:
        """An access ACL sets the mode too (the kernel leaves that to the file system, as
        posix_acl_update_mode does for local ones); one the mode fully says is not kept."""
        from ..storage.format import xattr_tuple

        mode_bits, equivalent = acl_mode(value)
        vfs = self.vfs
        async with self.gate(), self.mutex:
            n = vfs.node(inode)
            e = vfs.entry(n)
            mode = (e.mode & ~0o777) | mode_bits
            if mode & stat.S_ISGID and ctx.uid != 0 and e.gid != ctx.gid and e.gid not in _groups(ctx.pid):
                mode &= ~stat.S_ISGID
            cur = {k: v for k, v in e.xattrs if k != ACL_ACCESS}
            if not equivalent:
                cur[ACL_ACCESS] = value
            ch = vfs.plan_setattr(n, mode=mode, xattrs=xattr_tuple(cur))
            if ch is not None:
                await self._persist(ch)
                vfs.apply(ch)

    @fuse_handler
    async def removexattr(self, inode, name, ctx):
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._is_ctl(inode):
            raise pyfuse3.FUSEError(errno.EPERM)

        def drop(cur):
            if name not in cur:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return {k: v for k, v in cur.items() if k != name}

        await self._set_xattrs(inode, drop)

    async def _set_xattrs(self, inode, change) -> None:
        from ..storage.format import xattr_tuple

        vfs = self.vfs
        async with self.gate(), self.mutex:
            n = vfs.node(inode)
            new = xattr_tuple(change(dict(vfs.entry(n).xattrs)))
            ch = vfs.plan_setattr(n, xattrs=new)
            if ch is not None:
                await self._persist(ch)
                vfs.apply(ch)

    # -- the control files --------------------------------------------------------------
    def _open_ctl(self, inode: int, flags: int, status: str | None = None) -> pyfuse3.FileInfo:
        if inode == CTL_DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        name = CTL_NAMES[inode]
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable and (self.ro or name not in (b"commit", b"finish")):
            raise pyfuse3.FUSEError(errno.EROFS if self.ro else errno.EACCES)
        fh = self.next_ctl
        self.next_ctl += 1
        text = status if status is not None else self._ctl_text(name)
        self.ctl[fh] = (inode, bytearray(b"" if writable else text.encode()))
        return pyfuse3.FileInfo(fh=fh, direct_io=True, nonseekable=False)

    def _ctl_text(self, name: bytes) -> str:
        vfs = self.vfs
        if name == b"ref":
            return vfs.ref_text()
        if name == b"pid":
            return f"{os.getpid()}\n"
        if name == b"commit":
            if self.ro:
                return ""
            out = self.last_error or vfs.draft.outcome
            return out + "\n" if out else ""
        if name == b"finish":
            return self.collab.finish_outcome() if self.collab else ""
        return ""

    async def _write_ctl(self, fh: int, buf: bytes) -> int:
        inode, _ = self.ctl[fh]
        name = CTL_NAMES[inode]
        message = bytes(buf).decode("utf-8", "replace").strip() or None
        try:
            self.last_error = ""
            if name == b"commit":
                await self.commit(message)
            elif name == b"finish" and self.collab is not None:
                await self.collab.finish(self, message)
            else:
                raise pyfuse3.FUSEError(errno.EACCES)
        except pyfuse3.FUSEError:
            raise
        except (errors.ArtfsError, OSError) as exc:
            log.error("%s failed: %s", name.decode(), exc)
            self.last_error = f"error: {exc}"
            raise pyfuse3.FUSEError(errno_of(exc)) from None
        except Exception as exc:
            log.exception("%s failed", name.decode())
            self.last_error = f"error: internal error: {type(exc).__name__}: {exc}"
            raise pyfuse3.FUSEError(errno.EIO) from None
        return len(buf)

    async def exclusive(self, fn, *args):
        """Run fn(*args) in a worker thread with every change held back.  The caller may
        update in-memory state right after it returns, before its next await, still alone."""
        await self.gate.close()
        try:
            async with self.mutex:
                return await trio.to_thread.run_sync(fn, *args)
        finally:
            self.gate.open()

    async def commit(self, message: str | None) -> str:
        if self.collab is not None:
            return await self.collab.upsert(self, message)
        vfs = self.vfs
        d = vfs.draft
        await self.gate.close()
        try:
            async with self.mutex:
                old_base = d.base_root
                result = await trio.to_thread.run_sync(repo.commit_draft, vfs.store, d, message)
                await self.start_clean(list(result.done))
                await self.after_commit(old_base if result.rebased_from is not None else None)
                self.give_back_memory(len(result.done))
        finally:
            self.gate.open()
        log.info("committed %s", d.outcome)
        return d.outcome

    async def start_clean(self, dead: list[str]) -> None:
        """After the draft was reset in the store (a commit, a finish): read its new state in a
        worker thread and install it here, on the loop, so no request sees half of it; adopt the
        new parent's hard-link groups; delete the scratch files the reset retired."""
        d = self.vfs.draft
        d.install(await trio.to_thread.run_sync(d.fetch, True))  # the pins stay as they are
        if not d.links_adopted:
            ch = d.plan_noop()
            await self._persist(ch)
            d.apply(ch)
        d.dead.extend(dead)
        await trio.to_thread.run_sync(d.flush_dead)

    def give_back_memory(self, committed: int) -> None:
        """After a commit of ``committed`` files: what its trees and the draft's old state took
        is free once the commit's request has returned; then give it back to the kernel, when
        that was much (a full collection also empties Python's free lists)."""
        if committed >= TRIM_AFTER and self.nursery is not None:
            self.nursery.start_soon(self._give_back_memory)

    async def _give_back_memory(self) -> None:
        async with self.mutex:  # runs once the commit let go of it (and of its locals)
            pass
        gc.collect()
        await trio.to_thread.run_sync(heap.trim)

    async def after_commit(self, merged_from: bytes | None) -> None:
        """Handles of committed files go back to stored content; after a merge with newer
        versions, the kernel forgets what changed underneath."""
        vfs = self.vfs
        for n in vfs.after_commit():
            e = vfs.entry(n)
            for h in list(n.handles):
                await trio.to_thread.run_sync(vfs.open_stored_blocking, h, e)
        if merged_from is not None:
            await self._invalidate_changes(merged_from)

    async def _invalidate_changes(self, old_base: bytes | None) -> None:
        from ..repo.diff import diff_items, tree_children

        vfs = self.vfs
        ch = tree_children(vfs.store)
        changes = await trio.to_thread.run_sync(diff_items, ch, old_base, ch, vfs.draft.base_root)
        by_path = {}
        for node in list(vfs.nodes.values()):
            try:
                by_path[vfs.path(node)] = node.ino
            except errors.NotFound:
                continue
        for _, path in changes:
            parent = by_path.get(path[:-1])
            if parent is not None:
                try:
                    pyfuse3.invalidate_entry_async(parent, path[-1])
                except Exception:  # the kernel may already have dropped it
                    log.debug("invalidate %r", path, exc_info=True)
            ino = by_path.get(path)
            if ino is not None:
                try:
                    pyfuse3.invalidate_inode(ino, attr_only=False)
                except Exception:
                    log.debug("invalidate inode %d", ino, exc_info=True)
