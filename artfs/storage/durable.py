"""Durability barriers: the one place that decides how bytes reach stable storage.

A *barrier* makes a set of files (their data) and directories (their entries)
durable.  Two ways to do it, chosen per file system:

* ``syncfs`` of the whole file system: one call for any number of files.  Used
  where the kernel implements it as a real flush (ext4, xfs, btrfs, f2fs, zfs).
* ``fsync`` of every file and directory named, in threads: the portable way,
  used everywhere else -- notably on FUSE file systems, where the kernel sends no
  request for ``syncfs`` at all (and on NFS).

Every caller names the files and directories a barrier covers even when syncfs
will be used, so the call sites are the same on both paths and the power-loss
tests (which run the store on a FUSE layer, hence on the fsync path) check the
barriers of both.  ``ARTFS_DURABILITY=fsync|syncfs`` forces one way (tests).
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

_libc = ctypes.CDLL(None, use_errno=True)

# statfs f_type of file systems whose syncfs flushes everything (see statfs(2))
SYNCFS_TRUSTED = {
    0xEF53,  # ext2/3/4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0xF2F52010,  # f2fs
    0x2FC12FC1,  # zfs
}
TMPFS = 0x01021994  # memory: nothing to flush, syncfs is free


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


def fs_type(path: str) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return buf.f_type & 0xFFFFFFFF


def choose_mode(path: str) -> str:
    forced = os.environ.get("ARTFS_DURABILITY")
    if forced in ("fsync", "syncfs"):
        return forced
    t = fs_type(path)
    return "syncfs" if t in SYNCFS_TRUSTED or t == TMPFS else "fsync"


def fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


class Durability:
    """Barriers for one store directory (its file system decides the way)."""

    def __init__(self, root: str):
        self.root = root
        self.mode = choose_mode(root)
        self.calls = 0  # barriers run (tests count them)

    def barrier(self, files=(), dirs=()) -> None:
        """Make the data of ``files`` and the entries of ``dirs`` durable (paths)."""
        files, dirs = list(files), list(dict.fromkeys(dirs))
        if not files and not dirs:
            return
        self.calls += 1
        if self.mode == "syncfs":
            syncfs(self.root)
            return
        if len(files) > 4:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(fsync_path, files))
        else:
            for f in files:
                fsync_path(f)
        for d in dirs:
            fsync_path(d, directory=True)
