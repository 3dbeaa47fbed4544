#!/usr/bin/env python3
"""crashfs: a FUSE file system that simulates a power loss, for durability tests.

Everything lives in memory twice: the *live* state, which processes see and which
every operation changes at once, and the *durable* state, which is what a power
cut would leave.  Nothing becomes durable by itself; the model is strict POSIX
(like LazyFS), so a program passes only if it asks for durability where it needs it:

* ``fsync``/``fdatasync`` of a file makes that inode's current data, size and
  attributes (mode, owner, times) durable.  It does not make any of its names durable.
* ``fsync`` of a directory (FUSE ``fsyncdir``) makes that directory's current set
  of entries (name -> inode) durable, and its attributes.
* create, mkdir, mknod, symlink, link, unlink, rmdir and rename are live only until
  the affected directory is fsynced (for a rename: both parents, each on its own;
  fsyncing only the new parent leaves the inode under both names).
* A new inode's durable state is what it was created with: a file named by a
  durable entry but never fsynced survives as an empty (0-byte) file with its
  creation mode - the "empty object under its final name" failure.  A new
  directory exists durably once its parent is fsynced, and has durable entries
  once it is fsynced itself.  A symlink's target is durable with its name.
* ``sync``/``syncfs`` never reach a FUSE server: the kernel sends no request for
  them (only virtiofs forwards syncfs), so a program that relies on syncfs gets
  no durability here.  That is the honest answer for a FUSE file system, and a
  false alarm for a program meant for local disks, where syncfs does work.
  The control command ``sync`` makes everything durable at a moment the test
  chooses, standing in for a syncfs when a test needs one.

A crash (control ``crash``, or ``arm N``: crash right before the N-th next mutating
request) turns the disk dead: every request then fails with EIO (close, release and
forget still succeed, as they do on a dead disk).  Kernel attribute caches are
invalidated at the crash so ``stat`` reaches the dead file system too; pages already
in the page cache may still be read through file descriptors opened before the crash.
``dump DIR`` writes the durable state into a real directory, where ordinary tools
(sqlite3, fsck) check what survived.

Mutating requests, counted by ``ops`` and by ``arm``: create, mknod, mkdir, symlink,
link, unlink, rmdir, rename, write, setattr (truncate, chmod, chown, utimes), open
with O_TRUNC, fsync and fsyncdir, counted when they arrive, also those that then
fail (EEXIST, ENOENT...).  The kernel decides how syscalls map onto them:
a large write() may arrive as several write requests, and dirty pages of a
MAP_SHARED mapping are written back whenever the kernel chooses (on msync, fsync,
close or in the background), so their place in the count is not fixed.

Limits: byte-range locks and flock are left to the kernel (local to this machine,
which is all SQLite and artfs need); no xattrs, no fallocate (glibc's
posix_fallocate falls back to writing), copy_file_range falls back to read/write in
the kernel; sockets are not dumped; a directory reached twice through durable
entries (possible after unsynced directory renames) is dumped once only.  No
writeback cache (every write() reaches us) and page cache is kept between opens.

Run: ``python tests/crashfs.py MOUNTPOINT --control SOCKET [--foreground]
[--allow-other] [--ready-fd FD] [--log FILE]``; SOCKET is a path, or ``@name`` for
an abstract socket.  Without --foreground it detaches and prints the daemon's pid
once it serves; SIGTERM unmounts and exits.  The control protocol is one line per command, one reply line
per command (``ok [value]`` or ``err message``): ``ops``, ``arm N``, ``crash``,
``sync``, ``dump DIR``, ``state``, ``errors`` (internal errors so far; must be 0),
``quit``.  From Python, use :class:`CrashFS`::

    with CrashFS(tmp_path) as fs:
        write_things_under(fs.path)
        fs.crash()
        fs.dump(tmp_path / "after")
"""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid

import pyfuse3
import trio
from pyfuse3 import FUSEError

log = logging.getLogger("crashfs")

ROOT = pyfuse3.ROOT_INODE
BLOCK = 1 << 16  # copy-on-write unit: an fsync shares blocks instead of copying the file
TIMEOUT = 300.0  # kernel caches are safe: every change passes through the kernel (and a crash invalidates them)
MUTATING = "create mknod mkdir symlink link unlink rmdir rename write setattr open(O_TRUNC) fsync fsyncdir"


# -- file data ------------------------------------------------------------------------

def read_blocks(blocks, size: int, off: int, length: int) -> bytes:
    """Bytes [off, off+length) of a file made of BLOCK-sized pieces; None or a short
    block reads as zeros (holes, and the tail beyond what was written)."""
    end = min(off + length, size)
    parts = []
    pos = off
    while pos < end:
        bi, bo = divmod(pos, BLOCK)
        take = min(BLOCK - bo, end - pos)
        blk = blocks[bi] if bi < len(blocks) else None
        piece = b"" if blk is None else blk[bo:bo + take]
        parts.append(piece)
        if len(piece) < take:
            parts.append(bytes(take - len(piece)))
        pos += take
    return b"".join(parts)


class Data:
    """A file's live bytes.  ``snapshot`` (fsync) shares the blocks with the durable
    copy; a later write copies a shared block first, so an fsync costs no copy and a
    small write after it copies at most one block."""

    __slots__ = ("size", "blocks", "owned")

    def __init__(self) -> None:
        self.size = 0
        self.blocks: list = []
        self.owned: set[int] = set()  # blocks no snapshot shares, safe to change in place

    def snapshot(self) -> tuple[int, tuple]:
        self.owned = set()
        return (self.size, tuple(self.blocks))

    def read(self, off: int, length: int) -> bytes:
        return read_blocks(self.blocks, self.size, off, length)

    def _own(self, bi: int) -> bytearray:
        blk = self.blocks[bi]
        if blk is not None and bi in self.owned:
            return blk
        blk = bytearray() if blk is None else bytearray(blk)
        self.blocks[bi] = blk
        self.owned.add(bi)
        return blk

    def write(self, off: int, buf: bytes) -> None:
        mv = memoryview(buf)
        end = off + len(buf)
        if len(self.blocks) < -(-end // BLOCK):
            self.blocks.extend([None] * (-(-end // BLOCK) - len(self.blocks)))
        pos = off
        while pos < end:
            bi, bo = divmod(pos, BLOCK)
            take = min(BLOCK - bo, end - pos)
            chunk = mv[pos - off:pos - off + take]
            old = self.blocks[bi]
            if bo == 0 and (old is None or len(old) <= take):
                self.blocks[bi] = bytearray(chunk)  # overwrites all that block holds: no copy of the old bytes
                self.owned.add(bi)
            else:
                blk = self._own(bi)
                if len(blk) < bo:
                    blk.extend(bytes(bo - len(blk)))
                blk[bo:bo + take] = chunk
            pos += take
        self.size = max(self.size, end)

    def truncate(self, size: int) -> None:
        if size < self.size:
            nb = -(-size // BLOCK)
            del self.blocks[nb:]
            self.owned = {i for i in self.owned if i < nb}
            keep = size - (nb - 1) * BLOCK
            if nb and nb <= len(self.blocks):
                blk = self.blocks[nb - 1]
                if blk is not None and len(blk) > keep:  # bytes past the new end must read as zeros if it grows again
                    if nb - 1 in self.owned:
                        del blk[keep:]
                    else:
                        self.blocks[nb - 1] = bytearray(blk[:keep])
                        self.owned.add(nb - 1)
        self.size = size


# -- inodes ---------------------------------------------------------------------------

class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "rdev", "atime", "mtime", "ctime",
                 "nlink", "lookups", "opens", "data", "target", "entries", "parent",
                 "d_attrs", "d_data", "d_entries", "d_refs")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, rdev: int = 0, target: bytes | None = None):
        now = time.time_ns()
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.atime = self.mtime = self.ctime = now
        self.nlink = 0
        self.lookups = 0  # kernel references (lookup/create/... minus forget)
        self.opens = 0
        self.data = Data() if stat.S_ISREG(mode) else None
        self.target = target
        self.entries: dict[bytes, int] | None = {} if stat.S_ISDIR(mode) else None
        self.parent = 0
        # The durable state starts as the inode was created: an fsync or fsyncdir
        # replaces it.  It only matters once a durable entry names the inode.
        self.d_attrs = self.attrs()
        self.d_data = (0, ()) if self.data is not None else None
        self.d_entries: dict[bytes, int] | None = {} if self.entries is not None else None
        self.d_refs = 0  # durable entries naming this inode: keeps it after the live one is gone

    def attrs(self) -> tuple:
        return (self.mode, self.uid, self.gid, self.atime, self.mtime, self.ctime)

    def size(self) -> int:
        if self.data is not None:
            return self.data.size
        if self.target is not None:
            return len(self.target)
        return 4096 if self.entries is not None else 0

    def touch(self, *, m: bool = True) -> None:
        self.ctime = time.time_ns()
        if m:
            self.mtime = self.ctime


def handler(fn):
    """Run a (synchronous) implementation as a pyfuse3 handler.  Handlers never
    await, so each request is atomic.  Only FUSEError may leave a handler: any
    other exception is a bug here, logged, counted and answered with EIO."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return fn(self, *args)
        except FUSEError:
            raise
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in %s%r", fn.__name__, args[:3])
            raise FUSEError(errno.EIO) from None

    return wrapper


def quiet(fn):
    """For forget/release/releasedir: no client request waits on them, so they must
    not fail, not even after a crash."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            fn(self, *args)
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in %s", fn.__name__)

    return wrapper


class CrashOps(pyfuse3.Operations):
    enable_writeback_cache = False  # every write() must reach us, in order, to be modelled

    def __init__(self, mountpoint: str) -> None:
        super().__init__()
        self.mountpoint = canonical(mountpoint)
        root = Inode(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        root.nlink = 2
        root.parent = ROOT
        root.lookups = 1  # the kernel holds the root for the whole mount
        self.inodes: dict[int, Inode] = {ROOT: root}
        self.next_ino = ROOT + 1
        self.dir_handles: dict[int, list] = {}  # fh -> [ino, snapshot of entries or None]
        self.next_dh = 1
        self.nops = 0
        self.arm_at: int | None = None
        self.crashed = False
        self.internal_errors = 0
        self.nursery = None
        self.invalidated: trio.Event | None = None

    # -- crash machinery -----------------------------------------------------------
    def _alive(self) -> None:
        if self.crashed:
            raise FUSEError(errno.EIO)

    def _mutate(self) -> None:
        """Every mutating request passes here first: count it, crash if armed."""
        self._alive()
        self.nops += 1
        if self.arm_at is not None and self.nops >= self.arm_at:
            self.crash()
            raise FUSEError(errno.EIO)

    def crash(self) -> None:
        if self.crashed:
            return
        self.crashed = True
        self.arm_at = None
        log.warning("crash after %d mutating operations", self.nops)
        # The kernel would answer stat from its attribute cache for TIMEOUT seconds;
        # invalidate so the dead disk is seen.  From a thread: a notification can wait
        # on kernel locks held by requests that the event loop must answer meanwhile.
        known = [ino for ino, n in self.inodes.items() if n.lookups > 0]
        self.invalidated = trio.Event()
        if self.nursery is None:
            self.invalidated.set()
        else:
            self.nursery.start_soon(self._invalidate, known)

    async def _invalidate(self, inos: list[int]) -> None:
        def run():
            for ino in inos:
                try:
                    pyfuse3.invalidate_inode(ino, attr_only=True)
                except OSError:  # the kernel forgot it meanwhile
                    pass

        try:
            await trio.to_thread.run_sync(run)
        finally:
            self.invalidated.set()

    # -- durability ----------------------------------------------------------------
    def _commit_file(self, node: Inode) -> None:
        if node.data is not None:
            node.d_data = node.data.snapshot()
        node.d_attrs = node.attrs()

    def _commit_dir(self, node: Inode) -> None:
        old, new = node.d_entries, dict(node.entries)
        for ino in new.values():  # count the new references before dropping the old ones
            self.inodes[ino].d_refs += 1
        node.d_entries = new
        node.d_attrs = node.attrs()
        for ino in old.values():
            child = self.inodes[ino]
            child.d_refs -= 1
            self._maybe_free(child)

    def sync_all(self) -> None:
        """What syncfs does on a real disk: everything live becomes durable."""
        for node in list(self.inodes.values()):
            if node.ino not in self.inodes:
                continue
            if node.entries is not None:
                self._commit_dir(node)
            else:
                self._commit_file(node)

    def _maybe_free(self, node: Inode) -> None:
        """Drop what nothing can reach any more: the live data once no name, kernel
        reference or open file is left, the inode once no durable entry names it."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.ino == ROOT or n.nlink or n.lookups > 0 or n.opens > 0:
                continue
            if n.data is not None:
                n.data = None
            if n.d_refs > 0 or n.ino not in self.inodes:
                continue
            del self.inodes[n.ino]
            for ino in (n.d_entries or {}).values():
                child = self.inodes[ino]
                child.d_refs -= 1
                stack.append(child)
            n.d_entries = None

    # -- helpers -------------------------------------------------------------------
    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = node.mode
        e.st_nlink = node.nlink
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_rdev = node.rdev
        size = node.size()
        e.st_size = size
        e.st_blksize = 4096
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = node.atime
        e.st_mtime_ns = node.mtime
        e.st_ctime_ns = node.ctime
        return e

    def _dir(self, ino: int) -> Inode:
        node = self.inodes[ino]
        if node.entries is None:
            raise FUSEError(errno.ENOTDIR)
        return node

    def _child(self, parent: Inode, name: bytes) -> Inode:
        ino = parent.entries.get(name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        return self.inodes[ino]

    def _new(self, parent_ino: int, name: bytes, mode: int, ctx, rdev: int = 0, target: bytes | None = None) -> Inode:
        parent = self._dir(parent_ino)
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        if name in parent.entries:
            raise FUSEError(errno.EEXIST)
        if parent.nlink == 0:  # removed while someone still had it open
            raise FUSEError(errno.ENOENT)
        node = Inode(self.next_ino, mode, ctx.uid, ctx.gid, rdev, target)
        self.next_ino += 1
        self.inodes[node.ino] = node
        parent.entries[name] = node.ino
        parent.touch()
        node.nlink = 1
        node.lookups += 1
        if node.entries is not None:
            node.nlink = 2
            node.parent = parent.ino
            parent.nlink += 1
        return node

    def _unlink_node(self, parent: Inode, name: bytes, node: Inode) -> None:
        del parent.entries[name]
        parent.touch()
        if node.entries is not None:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        node.touch(m=False)
        self._maybe_free(node)

    # -- requests: names -----------------------------------------------------------
    @handler
    def lookup(self, parent_ino, name, ctx):
        self._alive()
        parent = self._dir(parent_ino)
        if name == b".":
            node = parent
        elif name == b"..":
            node = self.inodes.get(parent.parent)
            if node is None:  # its parent was removed meanwhile
                raise FUSEError(errno.ENOENT)
        else:
            ino = parent.entries.get(name)
            if ino is None:  # a cached negative entry: spares the lookup before every create
                e = pyfuse3.EntryAttributes()
                e.st_ino = 0
                e.entry_timeout = TIMEOUT
                return e
            node = self.inodes[ino]
        node.lookups += 1
        return self._entry(node)

    @quiet
    def forget(self, inode_list):
        for ino, n in inode_list:
            node = self.inodes.get(ino)
            if node is not None:
                node.lookups -= n
                self._maybe_free(node)

    @handler
    def getattr(self, ino, ctx):
        self._alive()
        return self._entry(self.inodes[ino])

    @handler
    def setattr(self, ino, attr, fields, fh, ctx):
        self._mutate()
        node = self.inodes[ino]
        if fields.update_size:
            if node.data is None:
                raise FUSEError(errno.EISDIR if node.entries is not None else errno.EINVAL)
            node.data.truncate(attr.st_size)
            node.touch()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime = attr.st_mtime_ns
        node.ctime = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return self._entry(node)

    @handler
    def readlink(self, ino, ctx):
        self._alive()
        node = self.inodes[ino]
        if node.target is None:
            raise FUSEError(errno.EINVAL)
        return node.target

    @handler
    def mknod(self, parent_ino, name, mode, rdev, ctx):
        self._mutate()
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise FUSEError(errno.EPERM)  # no device nodes on a test disk
        return self._entry(self._new(parent_ino, name, mode, ctx, rdev))

    @handler
    def mkdir(self, parent_ino, name, mode, ctx):
        self._mutate()
        return self._entry(self._new(parent_ino, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    @handler
    def symlink(self, parent_ino, name, target, ctx):
        self._mutate()
        return self._entry(self._new(parent_ino, name, stat.S_IFLNK | 0o777, ctx, target=bytes(target)))

    @handler
    def link(self, ino, new_parent_ino, new_name, ctx):
        self._mutate()
        node = self.inodes[ino]
        if node.entries is not None:
            raise FUSEError(errno.EPERM)
        parent = self._dir(new_parent_ino)
        if new_name in parent.entries:
            raise FUSEError(errno.EEXIST)
        if len(new_name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        parent.entries[new_name] = ino
        parent.touch()
        node.nlink += 1
        node.touch(m=False)
        node.lookups += 1
        return self._entry(node)

    @handler
    def unlink(self, parent_ino, name, ctx):
        self._mutate()
        parent = self._dir(parent_ino)
        node = self._child(parent, name)
        if node.entries is not None:
            raise FUSEError(errno.EISDIR)
        self._unlink_node(parent, name, node)

    @handler
    def rmdir(self, parent_ino, name, ctx):
        self._mutate()
        parent = self._dir(parent_ino)
        node = self._child(parent, name)
        if node.entries is None:
            raise FUSEError(errno.ENOTDIR)
        if node.entries:
            raise FUSEError(errno.ENOTEMPTY)
        self._unlink_node(parent, name, node)

    @handler
    def rename(self, old_parent_ino, old_name, new_parent_ino, new_name, flags, ctx):
        self._mutate()
        op, np_ = self._dir(old_parent_ino), self._dir(new_parent_ino)
        src = self._child(op, old_name)
        dst_ino = np_.entries.get(new_name)
        dst = self.inodes[dst_ino] if dst_ino is not None else None
        if len(new_name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        if flags & pyfuse3.RENAME_EXCHANGE:
            if dst is None:
                raise FUSEError(errno.ENOENT)
            op.entries[old_name], np_.entries[new_name] = dst.ino, src.ino
            if op is not np_:
                for node, frm, to in ((src, op, np_), (dst, np_, op)):
                    if node.entries is not None:
                        frm.nlink -= 1
                        to.nlink += 1
                        node.parent = to.ino
            for n in (op, np_, src, dst):
                n.touch(m=n is op or n is np_)
            return
        if dst is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            if dst is src:  # two names of one inode: POSIX says do nothing
                return
            if src.entries is not None and dst.entries is None:
                raise FUSEError(errno.ENOTDIR)
            if src.entries is None and dst.entries is not None:
                raise FUSEError(errno.EISDIR)
            if dst.entries:
                raise FUSEError(errno.ENOTEMPTY)
        del op.entries[old_name]
        if dst is not None:
            np_.entries.pop(new_name)
            if dst.entries is not None:
                np_.nlink -= 1
                dst.nlink = 0
            else:
                dst.nlink -= 1
            dst.touch(m=False)
        np_.entries[new_name] = src.ino
        if src.entries is not None and op is not np_:
            op.nlink -= 1
            np_.nlink += 1
            src.parent = np_.ino
        op.touch()
        np_.touch()
        src.touch(m=False)
        if dst is not None:
            self._maybe_free(dst)

    # -- requests: files -----------------------------------------------------------
    @handler
    def open(self, ino, flags, ctx):
        self._alive()
        node = self.inodes[ino]
        if node.data is None:
            raise FUSEError(errno.EISDIR if node.entries is not None else errno.EINVAL)
        if flags & os.O_TRUNC:  # the kernel passes O_TRUNC here (atomic_o_trunc) instead of a setattr
            self._mutate()
            node.data.truncate(0)
            node.touch()
        node.opens += 1
        return pyfuse3.FileInfo(fh=ino, keep_cache=True)

    @handler
    def create(self, parent_ino, name, mode, flags, ctx):
        self._mutate()
        node = self._new(parent_ino, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        node.opens += 1
        return (pyfuse3.FileInfo(fh=node.ino, keep_cache=True), self._entry(node))

    @handler
    def read(self, fh, off, size):
        self._alive()
        return self.inodes[fh].data.read(off, size)

    @handler
    def write(self, fh, off, buf):
        self._mutate()
        node = self.inodes[fh]
        node.data.write(off, buf)
        node.touch()
        return len(buf)

    @handler
    def flush(self, fh):
        return None  # write-through: nothing is buffered, and close succeeds even on a dead disk

    @quiet
    def release(self, fh):
        node = self.inodes[fh]
        node.opens -= 1
        self._maybe_free(node)

    @handler
    def fsync(self, fh, datasync):
        self._mutate()
        self._commit_file(self.inodes[fh])

    # -- requests: directories -----------------------------------------------------
    @handler
    def opendir(self, ino, ctx):
        self._alive()
        self._dir(ino)
        fh = self.next_dh
        self.next_dh += 1
        self.dir_handles[fh] = [ino, None]
        return fh

    @handler
    def readdir(self, fh, start_id, token):
        self._alive()
        h = self.dir_handles[fh]
        node = self._dir(h[0])
        if start_id == 0 or h[1] is None:  # a listing is a snapshot: offsets stay valid under changes
            h[1] = list(node.entries.items())
        snap = h[1]
        for i in range(start_id, len(snap)):
            name, ino = snap[i]
            if node.entries.get(name) != ino:  # removed since the listing began
                continue
            child = self.inodes[ino]
            if not pyfuse3.readdir_reply(token, name, self._entry(child), i + 1):
                break
            child.lookups += 1

    @quiet
    def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    @handler
    def fsyncdir(self, fh, datasync):
        self._mutate()
        self._commit_dir(self._dir(self.dir_handles[fh][0]))

    @handler
    def statfs(self, ctx):
        self._alive()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        used = sum(n.data.size for n in self.inodes.values() if n.data is not None) // 4096
        s.f_blocks = (1 << 28) + used  # a 1 TiB disk that is never full
        s.f_bfree = s.f_bavail = 1 << 28
        s.f_files = (1 << 24) + len(self.inodes)
        s.f_ffree = s.f_favail = 1 << 24
        s.f_namemax = 255
        return s

    @handler
    def access(self, ino, mode, ctx):
        self._alive()  # default_permissions: the kernel checks modes itself
        return True

    # -- dump ----------------------------------------------------------------------
    def dump_plan(self) -> list[tuple]:
        """The durable tree as a list of (kind, relative path, ...) in creation order.
        Pure memory, so it runs in the event loop between requests; the durable
        pieces it holds are immutable (a later write copies a block before changing it)."""
        plan = []
        first_path: dict[int, bytes] = {}  # inode -> its first name: later names become hard links
        seen_dirs = {ROOT}
        stack = [(self.inodes[ROOT], b"")]
        while stack:
            d, dpath = stack.pop()
            for name, ino in sorted(d.d_entries.items()):
                node = self.inodes[ino]
                rel = dpath + name
                fmt = stat.S_IFMT(node.d_attrs[0])
                if fmt == stat.S_IFDIR:
                    if ino in seen_dirs:  # unsynced directory renames can leave it under two durable parents
                        log.warning("dump: directory %r reached twice, dumped once", rel)
                        continue
                    seen_dirs.add(ino)
                    plan.append(("dir", rel, node.d_attrs))
                    stack.append((node, rel + b"/"))
                elif fmt == stat.S_IFLNK:
                    plan.append(("symlink", rel, node.d_attrs, node.target))
                elif fmt == stat.S_IFREG and ino in first_path:
                    plan.append(("hardlink", rel, first_path[ino]))
                elif fmt == stat.S_IFREG:
                    first_path[ino] = rel
                    plan.append(("file", rel, node.d_attrs, node.d_data))
                elif fmt == stat.S_IFIFO:
                    plan.append(("fifo", rel, node.d_attrs))
                else:
                    log.warning("dump: %r (mode %o) not dumped", rel, node.d_attrs[0])
        return plan

    def dump_dest_ok(self, dest: str) -> None:
        # Judged on the path as written: resolving it would look into the mount.
        if dest == self.mountpoint or dest.startswith(self.mountpoint + os.sep):
            raise ValueError("the dump directory must not be on the crashfs mount")


    # -- control -------------------------------------------------------------------
    async def control(self, line: str) -> tuple[str, bool]:
        """One control command -> (reply line, quit?)."""
        cmd, _, arg = line.strip().partition(" ")
        if self.invalidated is not None:
            await self.invalidated.wait()  # after a crash, answer once the kernel caches are gone
        if cmd == "ops":
            return f"ok {self.nops}", False
        if cmd == "state":
            return ("ok crashed" if self.crashed else "ok live"), False
        if cmd == "errors":
            return f"ok {self.internal_errors}", False
        if cmd == "arm":
            try:
                n = int(arg)
            except ValueError:
                return "err usage: arm N (N >= 1)", False
            if n < 1:
                return "err usage: arm N (N >= 1)", False
            if self.crashed:
                return "err already crashed", False
            self.arm_at = self.nops + n
            return "ok", False
        if cmd == "crash":
            self.crash()
            await self.invalidated.wait()
            return "ok", False
        if cmd == "sync":
            if self.crashed:
                return "err crashed", False
            self.sync_all()
            return "ok", False
        if cmd == "dump":
            if not arg or not os.path.isabs(arg):
                return "err usage: dump ABSOLUTE_DIR", False
            dest = os.path.normpath(arg)
            try:
                self.dump_dest_ok(dest)
                plan = self.dump_plan()
                return f"ok {await trio.to_thread.run_sync(write_dump, dest, plan)}", False
            except (OSError, ValueError) as exc:
                return f"err {exc}", False
        if cmd == "quit":
            return "ok", True
        return f"err unknown command {cmd!r} (ops, arm N, crash, sync, dump DIR, state, errors, quit)", False

    async def serve_control(self, stream) -> None:
        buf = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        reply, stop = await self.control(os.fsdecode(line))
                    except Exception as exc:
                        self.internal_errors += 1
                        log.exception("control command %r failed", line)
                        reply, stop = f"err internal error: {exc!r}", False
                    await stream.send_all(reply.encode() + b"\n")
                    if stop:
                        pyfuse3.terminate()
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away


def write_dump(dest: str, plan: list[tuple]) -> int:
    """Create what ``dump_plan`` describes under ``dest`` (created, or empty).  Runs
    in a thread, so the file system keeps answering if ``dest`` leads into it."""
    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise ValueError(f"{dest} is not empty")
    root = os.fsencode(dest) + b"/"
    as_root = os.geteuid() == 0
    dirs = []
    for kind, rel, *rest in plan:
        p = root + rel
        if kind == "dir":
            os.mkdir(p, 0o700)  # modes are set last: a 0500 directory must be filled first
            dirs.append((p, rest[0]))
            continue
        if kind == "hardlink":
            os.link(root + rest[0], p)
            continue
        mode, uid, gid, atime, mtime, _ = rest[0]
        if kind == "symlink":
            os.symlink(rest[1], p)
            if as_root:
                os.lchown(p, uid, gid)
            os.utime(p, ns=(atime, mtime), follow_symlinks=False)
        elif kind == "fifo":
            os.mkfifo(p, stat.S_IMODE(mode))
        else:
            size, blocks = rest[1]
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, size)
                for i, blk in enumerate(blocks):
                    if blk:
                        os.pwrite(fd, blk, i * BLOCK)
                if as_root:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, stat.S_IMODE(mode))
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)
    for p, (mode, uid, gid, atime, mtime, _) in reversed(dirs):  # children before parents
        if as_root:
            os.chown(p, uid, gid)
        os.chmod(p, stat.S_IMODE(mode))
        os.utime(p, ns=(atime, mtime))
    return len(plan)


# -- daemon -----------------------------------------------------------------------------

def _sockaddr(control: str) -> str:
    return "\0" + control[1:] if control.startswith("@") else control


def canonical(path: str) -> str:
    """The path as /proc/mounts shows it, found without looking into the path
    itself: a stat of a mount point whose server does not answer never returns."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_mounted(path: str) -> bool:
    path = canonical(path)
    unescape = functools.partial(re.sub, r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)))
    with open("/proc/mounts") as f:
        return any(unescape(line.split()[1]) == path for line in f)


async def _serve(ops: CrashOps, sock: socket.socket, on_ready) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        nursery.start_soon(trio.serve_listeners, ops.serve_control, [listener])
        await nursery.start(_on_signals)
        on_ready()
        await pyfuse3.main()  # returns on unmount, or on quit/SIGTERM via terminate()
        nursery.cancel_scope.cancel()


async def _on_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return


def run(args, on_ready=lambda: None) -> int:
    mnt = os.path.abspath(args.mountpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(_sockaddr(args.control))  # before mounting: a bad socket path fails with nothing to undo
    sock.listen(16)
    ops = CrashOps(mnt)
    options = {"default_permissions", "fsname=crashfs", "subtype=crashfs"}
    if args.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, mnt, options)
        try:
            trio.run(_serve, ops, sock, on_ready)
        finally:
            pyfuse3.close(unmount=is_mounted(mnt))  # fusermount3 -u may have unmounted it already
    finally:
        sock.close()
        if not args.control.startswith("@"):
            try:
                os.unlink(args.control)
            except OSError:
                pass
    log.info("exit after %d mutating operations (%s)", ops.nops, "crashed" if ops.crashed else "live")
    return 1 if ops.internal_errors else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="FUSE file system that simulates power loss (see module docstring)")
    p.add_argument("mountpoint")
    p.add_argument("--control", required=True, help="Unix socket path, or @name for an abstract socket")
    p.add_argument("--foreground", action="store_true", help="do not detach")
    p.add_argument("--allow-other", action="store_true", help="mount with -o allow_other")
    p.add_argument("--ready-fd", type=int, help="write 'ready' to this fd once serving, then close it")
    p.add_argument("--log", help="log file (stderr by default; /dev/null when detached)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s crashfs[%(process)d] %(levelname)s %(message)s",
                        filename=args.log)

    def signal_ready(fd):
        if fd is not None:
            os.write(fd, b"ready\n")
            os.close(fd)

    if args.foreground:
        return run(args, lambda: signal_ready(args.ready_fd))

    # Detach: the parent returns once the child serves (or failed), so a shell
    # script can use the mount right after.
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        deadline = time.monotonic() + 60
        data = b""
        while b"\n" not in data and time.monotonic() < deadline:
            if select.select([r], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(r, 64)
                if not chunk:
                    break
                data += chunk
        if data.startswith(b"ready"):
            print(pid)
            return 0
        print("crashfs: failed to start", file=sys.stderr)
        return 1
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def ready():
        signal_ready(args.ready_fd)
        signal_ready(w)
        os.dup2(devnull, 2)  # errors before this point went to the caller's stderr; holding it longer would keep its pipe open

    try:
        rc = run(args, ready)
    except BaseException:
        log.exception("crashfs failed")
        rc = 1
    os._exit(rc)


# -- test helper --------------------------------------------------------------------------

class CrashFSError(RuntimeError):
    pass


def send(control: str, line: str, timeout: float = 120) -> str:
    """Send one command to a crashfs control socket; returns the value after
    ``ok`` ("" for a bare ok) and raises CrashFSError on ``err``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(_sockaddr(control))
        s.sendall(os.fsencode(line) + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise CrashFSError(f"crashfs closed the control connection during {line!r}")
            buf += chunk
    reply = buf.decode(errors="replace").strip()
    if reply == "ok" or reply.startswith("ok "):
        return reply[3:]
    raise CrashFSError(f"{line!r}: {reply}")


class CrashFS:
    """``with CrashFS(workdir) as fs:`` mounts crashfs at ``fs.path`` (workdir/mnt).

    Control: ``fs.ops()``, ``fs.arm(n)``, ``fs.crash()``, ``fs.sync()``,
    ``fs.dump(dir)``, ``fs.state()``, ``fs.errors()``.  On exit it always unmounts
    (``fusermount3 -u``, then ``-u -z`` if busy) and ends the daemon by its pid,
    whatever happened in the block.  The daemon's log is ``fs.log_path``.
    """

    def __init__(self, workdir, *, allow_other: bool = False, control: str | None = None,
                 ready_timeout: float = 30.0) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, "mnt")
        self.log_path = os.path.join(self.workdir, "crashfs.log")
        if control is None:
            control = os.path.join(self.workdir, "control.sock")
            if len(os.fsencode(control)) > 100:  # sun_path holds 108 bytes
                control = f"@crashfs-{uuid.uuid4().hex}"
        self.control = control
        self.allow_other = allow_other
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "CrashFS":
        os.makedirs(self.path, exist_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), self.path, "--control", self.control, "--foreground"]
        if self.allow_other:
            cmd.append("--allow-other")
        r, w = os.pipe()
        try:
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(cmd + ["--ready-fd", str(w)], pass_fds=(w,),
                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
            os.close(w)
            w = None
            self._wait_ready(r)
        except BaseException:
            if w is not None:
                os.close(w)
            self.close()
            raise
        finally:
            os.close(r)
        return self

    def _wait_ready(self, r: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CrashFSError(f"crashfs not ready after {self.ready_timeout}s; log: {self._log_tail()}")
            if not select.select([r], [], [], left)[0]:
                continue
            chunk = os.read(r, 64)
            if not chunk:  # the daemon closed the pipe without a word: it died
                try:
                    rc = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    rc = None
                raise CrashFSError(f"crashfs exited ({rc}) before it was ready; log: {self._log_tail()}")
            data += chunk

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace").strip()
        except OSError:
            return "(no log)"

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmount and end the daemon; never raises (it runs after failed tests)."""
        try:
            self._unmount()
        except (OSError, subprocess.TimeoutExpired):
            # fusermount3 waited on a daemon that does not answer: killing the
            # daemon aborts the connection, and then the mount can go.
            self._end(grace=0)
            try:
                self._unmount()
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._end(grace=10)

    def _unmount(self) -> None:
        if is_mounted(self.path):
            if subprocess.run(["fusermount3", "-u", self.path], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", self.path], capture_output=True, timeout=30)  # busy

    def _end(self, grace: float) -> None:
        """End the daemon by its pid: quit, then SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if grace:
            try:  # after a lazy unmount the connection lives on: ask the daemon to leave
                self.command("quit", timeout=5)
            except (OSError, CrashFSError):
                pass
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        self.proc.kill()
        self.proc.wait()

    # -- control ---------------------------------------------------------------------
    def command(self, line: str, timeout: float = 120) -> str:
        return send(self.control, line, timeout)

    def ops(self) -> int:
        return int(self.command("ops"))

    def arm(self, n: int) -> None:
        self.command(f"arm {n}")

    def crash(self) -> None:
        self.command("crash")

    def sync(self) -> None:
        self.command("sync")

    def state(self) -> str:
        return self.command("state")

    def errors(self) -> int:
        return int(self.command("errors"))

    def dump(self, dest) -> str:
        dest = os.path.abspath(os.fspath(dest))
        self.command(f"dump {dest}")
        return dest


if __name__ == "__main__":
    sys.exit(main())
