#!/usr/bin/env python3
"""A bare pyfuse3 passthrough: the floor artfs's mounts are measured against (scripts/bench).

    passthrough.py SOURCE MOUNTPOINT [--ready-fd N]

Mirrors SOURCE at MOUNTPOINT until unmounted (``fusermount3 -u``) or SIGTERM.  What the
issue calls "the bare pyfuse3 passthrough" (../shared/reference/peer-benchmarks.md, "pt"):
the same stack as artfs (pyfuse3 on trio, ``default_permissions``), entries and attributes
cached for 60 s, ``keep_cache``, every call done inline on the trio thread, no xattrs (its
ENOSYS makes the kernel stop asking), no flush (the same ENOSYS artfs answers).  Inode
numbers are the source's.  Not a file system for anything but benchmarks: no hard-link or
rename bookkeeping beyond what ``cp -r``, ``ls -lR``, ``find``, ``cat`` and ``rm -rf`` need.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 60.0
STAT_FIELDS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks",
               "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


def _errno(exc: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(exc.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str):
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.lookups: dict[int, int] = {}
        self.dirs: dict[int, list] = {}
        self.next_dh = 1

    # -- inodes -------------------------------------------------------------------------
    def _path(self, ino: int) -> str:
        try:
            return self.paths[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _attr(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        for k in STAT_FIELDS:
            setattr(a, k, getattr(st, k))
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    def _known(self, path: str, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = self._attr(st)
        if st.st_ino == os.lstat(self.paths[pyfuse3.ROOT_INODE]).st_ino:
            a.st_ino = pyfuse3.ROOT_INODE
        self.paths[a.st_ino] = path
        self.lookups[a.st_ino] = self.lookups.get(a.st_ino, 0) + 1
        return a

    async def lookup(self, parent_inode, name, ctx=None):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise _errno(exc) from None
        return self._known(path, st)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                if ino != pyfuse3.ROOT_INODE:
                    self.paths.pop(ino, None)

    async def getattr(self, inode, ctx=None):
        try:
            st = os.lstat(self._path(inode))
        except OSError as exc:
            raise _errno(exc) from None
        a = self._attr(st)
        a.st_ino = inode
        return a

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode), follow_symlinks=False)
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1,
                         follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
        except OSError as exc:
            raise _errno(exc) from None
        return await self.getattr(inode)

    async def statfs(self, ctx):
        s = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, k, getattr(s, k))
        out.f_namemax = s.f_namemax
        return out

    # -- directories --------------------------------------------------------------------
    async def opendir(self, inode, ctx):
        path = self._path(inode)
        try:
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            raise _errno(exc) from None
        dh = self.next_dh
        self.next_dh += 1
        self.dirs[dh] = (path, names)
        return dh

    async def readdir(self, fh, start_id, token):
        path, names = self.dirs[fh]
        for i in range(start_id, len(names)):
            p = os.path.join(path, names[i])
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), self._attr(st), i + 1):
                return
            self.paths[st.st_ino] = p
            self.lookups[st.st_ino] = self.lookups.get(st.st_ino, 0) + 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        try:
            os.mkdir(path, stat.S_IMODE(mode) & ~ctx.umask)
            os.chown(path, ctx.uid, ctx.gid)
            return self._known(path, os.lstat(path))
        except OSError as exc:
            raise _errno(exc) from None

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(os.path.join(self._path(parent_inode), os.fsdecode(name)))
        except OSError as exc:
            raise _errno(exc) from None

    async def unlink(self, parent_inode, name, ctx):
        try:
            os.unlink(os.path.join(self._path(parent_inode), os.fsdecode(name)))
        except OSError as exc:
            raise _errno(exc) from None

    # -- files --------------------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as exc:
            raise _errno(exc) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(mode) & ~ctx.umask)
            os.fchown(fd, ctx.uid, ctx.gid)
            return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._known(path, os.fstat(fd))
        except OSError as exc:
            raise _errno(exc) from None

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # as artfs: the kernel stops sending flush

    async def release(self, fh):
        os.close(fh)

    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # no xattrs: the kernel stops asking

    async def listxattr(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("--ready-fd", type=int, help="write 'ok' here once mounted")
    a = p.parse_args()
    ops = Passthrough(os.path.realpath(a.source))
    opts = set(pyfuse3.default_options)  # default_permissions, as artfs
    opts.update({"fsname=passthrough", "subtype=passthrough"})
    pyfuse3.init(ops, a.mountpoint, opts)
    if a.ready_fd is not None:
        os.write(a.ready_fd, b"ok\n")
        os.close(a.ready_fd)

    async def serve():
        async with trio.open_nursery() as nursery:
            async def on_signal():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
