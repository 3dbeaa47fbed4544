"""pyfuse3 adapter: kernel requests -> VFS calls, domain errors -> errno, cache policy.

Only ``FUSEError`` leaves a handler (``@fuse_handler`` converts everything
else, logging what was unexpected as EIO), because any other exception
kills the whole mount.

Cache policy: a committed version is immutable, so the kernel may keep
entries, attributes and pages for an hour (``keep_cache``).  A draft only
changes through this mount, so the kernel's own invalidation on write,
create, unlink and rename keeps it coherent; a commit changes nothing the
kernel can see (same inodes, sizes, times and bytes).

Concurrency: handlers run as trio tasks on one thread.  Hashing, copying and
fsync run in worker threads.  ``Gate`` lets a commit (or a status snapshot)
wait for in-flight mutations and holds new ones back until it is done, so a
write lands wholly before or wholly after a commit.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import stat

import pyfuse3
import trio

from .. import errors
from ..draft import Exists, IsADirectory, NotADirectory, NotEmpty
from .vfs import CTL_NAME, ROOT_INO, BaseVFS, NotPermitted

log = logging.getLogger("artfs.fuse")

CTL_DIR = 2
CTL_FILES = {b"ref": 3, b"status": 4, b"commit": 5, b"finish": 6, b"pid": 7}
CTL_NAMES = {v: k for k, v in CTL_FILES.items()}
CTL_FH_BASE = 1 << 48
RO_TIMEOUT = 3600.0
DRAFT_TIMEOUT = 10.0
INLINE_VERIFY = 256 * 1024  # smaller contents are hashed on the trio thread

_ERRNO = [
    (Exists, errno.EEXIST),
    (NotEmpty, errno.ENOTEMPTY),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NotPermitted, errno.EPERM),
    (errors.NotFound, errno.ENOENT),
    (errors.ReadOnly, errno.EROFS),
    (errors.Corrupt, errno.EIO),
    (errors.Finished, errno.EBUSY),
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
            if no == errno.EIO:
                log.error("%s%r: %s", fn.__name__, args[:2], exc)
            raise pyfuse3.FUSEError(no) from None
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Gate:
    """Many mutations at once, or one exclusive holder (commit, status)."""

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


class _Mutation:
    def __init__(self, gate: Gate):
        self.gate = gate

    async def __aenter__(self):
        await self.gate.enter()

    async def __aexit__(self, *exc):
        self.gate.leave()


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: BaseVFS, collab=None):
        super().__init__()
        self.vfs = vfs
        self.ro = vfs.readonly
        self.timeout = RO_TIMEOUT if self.ro else DRAFT_TIMEOUT
        self.gate = Gate()
        self.commit_lock = trio.Lock()
        self.copy_locks: dict[int, trio.Lock] = {}
        self.verify_locks: dict[str, trio.Lock] = {}
        self.dirs: dict[int, list] = {}
        self.next_dh = 1
        self.ctl: dict[int, tuple[int, bytearray]] = {}
        self.next_ctl = CTL_FH_BASE
        self.collab = collab  # collaborative-version hooks (upsert/finish), if mounted with a distributed id

    def mutation(self):
        return _Mutation(self.gate)

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
            mode, nlink = stat.S_IFDIR | 0o555, 2
        else:
            writable = CTL_NAMES[ino] in (b"commit", b"finish") and not self.ro
            mode, nlink = stat.S_IFREG | (0o644 if writable else 0o444), 1
        a = self._attr({"st_ino": ino, "st_mode": mode, "st_nlink": nlink, "st_uid": os.getuid(),
                        "st_gid": os.getgid(), "st_size": 0, "st_blksize": 4096, "st_blocks": 0,
                        "st_atime_ns": now, "st_mtime_ns": now, "st_ctime_ns": now})
        a.entry_timeout = a.attr_timeout = 0
        return a

    def _is_ctl(self, ino: int) -> bool:
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
        if len(name) > 255:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
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
        if e.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return e.target

    # -- directories --------------------------------------------------------------
    @fuse_handler
    async def opendir(self, inode, ctx):
        if inode == CTL_DIR:
            names = [k for k in CTL_FILES if k != b"finish" or self.collab is not None]
            listing = [(k, None) for k in sorted(names)]
        else:
            listing = self.vfs.listdir(inode)
        dh = self.next_dh
        self.next_dh += 1
        self.dirs[dh] = (inode, listing)
        return dh

    @fuse_handler
    async def readdir(self, fh, start_id, token):
        inode, listing = self.dirs[fh]
        vfs = self.vfs
        for i in range(start_id, len(listing)):
            name, e = listing[i]
            if e is None:  # control directory
                if not pyfuse3.readdir_reply(token, name, self._ctl_attr(CTL_FILES[name]), i + 1):
                    return
                continue
            n = vfs.dirent_node(inode, i, name, e)
            counted = pyfuse3.readdir_reply(token, name, self._attr(vfs.stat(n, e)), i + 1)
            vfs.dirent_counted(n, counted)
            if not counted:
                return

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    @fuse_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._check_name(parent_inode, name)
        async with self.mutation():
            n, e = self.vfs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid)
            return self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def rmdir(self, parent_inode, name, ctx):
        self._check_name(parent_inode, name)
        async with self.mutation():
            self.vfs.unlink(parent_inode, name, is_dir=True)

    @fuse_handler
    async def unlink(self, parent_inode, name, ctx):
        self._check_name(parent_inode, name)
        async with self.mutation():
            self.vfs.unlink(parent_inode, name, is_dir=False)

    @fuse_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self._check_name(parent_inode, name)
        async with self.mutation():
            n, e = self.vfs.symlink(parent_inode, name, target, ctx.uid, ctx.gid)
            return self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._check_name(parent_inode_old, name_old)
        self._check_name(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL if not self.ro else errno.EROFS)
        async with self.mutation():
            self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                            bool(flags & pyfuse3.RENAME_NOREPLACE))

    @fuse_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        # Hard links would make two names share one mutable file; versions store
        # files by content, so we refuse cleanly rather than pretend.
        raise pyfuse3.FUSEError(errno.EROFS if self.ro else errno.EPERM)

    @fuse_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS if self.ro else errno.EPERM)

    def _check_name(self, parent_inode: int, name: bytes) -> None:
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent_inode == CTL_DIR or self._is_ctl(parent_inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        if parent_inode == ROOT_INO and name == CTL_NAME:
            raise pyfuse3.FUSEError(errno.EPERM)
        if len(name) > 255:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    # -- attributes ----------------------------------------------------------------
    @fuse_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if self._is_ctl(inode):
            return self._ctl_attr(inode)  # `echo msg > .artfs/commit` truncates first
        if self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        async with self.mutation():
            vfs = self.vfs
            n = vfs.node(inode)
            if fields.update_size:
                await self._copy_up(n, truncate=attr.st_size == 0)
                await trio.to_thread.run_sync(vfs.truncate_blocking, n, attr.st_size)
            mtime = attr.st_mtime_ns if fields.update_mtime else None
            vfs.setattr(
                inode,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                mtime_ns=mtime,
            )
            return self._attr(vfs.stat(n))

    # -- files -----------------------------------------------------------------------
    async def _copy_up(self, n, truncate: bool) -> None:
        """Give a node its own scratch file (once), off the trio thread."""
        lock = self.copy_locks.setdefault(n.ino, trio.Lock())
        async with lock:
            if not self.vfs.needs_copy_up(n):
                return
            sname = await trio.to_thread.run_sync(self.vfs.copy_up_blocking, n, truncate)
            self.vfs.adopt_scratch(n, sname)
        if not lock.locked():
            self.copy_locks.pop(n.ino, None)

    @fuse_handler
    async def open(self, inode, flags, ctx):
        if self._is_ctl(inode):
            status = None
            if inode == CTL_FILES[b"status"] and not self.ro:
                status = await self.exclusive(self.vfs.status_text)  # a snapshot, hashed in a thread
            return self._open_ctl(inode, flags, status)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable and self.ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        vfs = self.vfs
        if writable:
            async with self.mutation():
                n = vfs.node(inode)
                truncate = bool(flags & os.O_TRUNC)
                await self._copy_up(n, truncate=truncate)
                h = vfs.open(inode, True)
                if truncate:  # a file already changed in the draft was not copied up again
                    await trio.to_thread.run_sync(vfs.truncate_blocking, n, 0)
        else:
            h = vfs.open(inode, False)
            try:
                await self._verify(h)
            except BaseException:
                vfs.release(h.fh)
                raise
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=True)

    async def _verify(self, h) -> None:
        """Check stored content against its digest once per mount, off the trio thread."""
        hexd = self.vfs.pending_verify(h)
        if hexd is None:
            return
        if os.fstat(h.fd).st_size <= INLINE_VERIFY:
            self.vfs.verify_blocking(h)  # microseconds: cheaper than a trip to a worker thread
            return
        lock = self.verify_locks.setdefault(hexd, trio.Lock())
        async with lock:
            if self.vfs.pending_verify(h) is not None:
                await trio.to_thread.run_sync(self.vfs.verify_blocking, h)
        if not lock.locked():
            self.verify_locks.pop(hexd, None)

    @fuse_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check_name(parent_inode, name)
        async with self.mutation():
            n, e, _ = self.vfs.create(parent_inode, name, mode, ctx.uid, ctx.gid)
            h = self.vfs.open(n.ino, True)
            return pyfuse3.FileInfo(fh=h.fh, keep_cache=True), self._attr(self.vfs.stat(n, e))

    @fuse_handler
    async def read(self, fh, off, size):
        if fh >= CTL_FH_BASE:
            _, buf = self.ctl[fh]
            return bytes(buf[off: off + size])
        return self.vfs.read(self.vfs.handle(fh), off, size)

    @fuse_handler
    async def write(self, fh, off, buf):
        if fh >= CTL_FH_BASE:
            return await self._write_ctl(fh, buf)
        async with self.mutation():
            h = self.vfs.handle(fh)
            if not h.on_scratch:
                await self._copy_up(h.node, truncate=False)
            return self.vfs.write(h, off, buf)

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
        if fh >= CTL_FH_BASE:
            return
        h = self.vfs.handle(fh)
        if h.on_scratch:
            await trio.to_thread.run_sync(os.fsync, h.fd)
        if not self.ro:
            await trio.to_thread.run_sync(self.vfs.store.meta.durable)

    async def fsyncdir(self, fh, datasync):
        if not self.ro:
            await trio.to_thread.run_sync(self.vfs.store.meta.durable)

    @fuse_handler
    async def statfs(self, ctx):
        st = os.statvfs(self.vfs.store.path)
        s = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(s, k, getattr(st, k))
        s.f_namemax = 255
        return s

    # -- xattrs are not versioned.  ENOSYS once makes the kernel stop asking (no round
    # trip per `ls -l` entry) and answer EOPNOTSUPP itself; a version's mount is
    # read-only, so the kernel refuses setxattr there with EROFS before we see it.
    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.EROFS if self.ro else errno.ENOSYS)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS if self.ro else errno.ENOSYS)

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
            out = vfs.draft.outcome
            return out + "\n" if out else ""
        if name == b"finish":
            return self.collab.finish_outcome() if self.collab else ""
        return ""

    async def _write_ctl(self, fh: int, buf: bytes) -> int:
        inode, _ = self.ctl[fh]
        name = CTL_NAMES[inode]
        message = bytes(buf).decode("utf-8", "replace").strip() or None
        try:
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
            raise pyfuse3.FUSEError(errno_of(exc)) from None
        except Exception:
            log.exception("%s failed", name.decode())
            raise pyfuse3.FUSEError(errno.EIO) from None
        return len(buf)

    async def exclusive(self, fn, *args):
        """Run fn(*args) in a worker thread with every mutation held back.  The caller may
        update in-memory state right after it returns, before its next await, still alone."""
        async with self.commit_lock:
            await self.gate.close()
            try:
                return await trio.to_thread.run_sync(fn, *args)
            finally:
                self.gate.open()

    async def commit(self, message: str | None) -> str:
        if self.collab is not None:
            return await self.collab.upsert(self, message)
        d = self.vfs.draft
        num, unchanged, adopted = await self.exclusive(d.commit_durable, message)
        # no checkpoint between the gate opening and these two: no mutation can come in between
        d.commit_finish(adopted)
        self.vfs.after_commit()
        log.info("committed %s:v%d%s", d.artifact, num, " (unchanged)" if unchanged else "")
        return d.outcome
