"""BLAKE3 of files and pieces of files, and kernel-side copies.

Two ways to read a file for hashing:

* :func:`hash_fd` reads with ``pread`` (never mmap): for files we do not own
  (sources of ``put``, ``file://`` references, scratch files a program may
  truncate), where a concurrent truncation under an mmap would kill the process
  with SIGBUS.
* :func:`hash_own` may mmap: for temporary copies only this process writes.

Both return the whole-content digest (what ``b3sum`` prints) and, for content
larger than :data:`format.CHUNK`, the chunk list (see format.py).
"""
from __future__ import annotations

import errno
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import blake3

from .format import CHUNK

READ_BLOCK = 8 * CHUNK
_MT_MIN = 16 * CHUNK  # below this, blake3's threads cost more than they save
_pool: ThreadPoolExecutor | None = None


def _chunk_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="artfs-chunks")
    return _pool


def _chunk_digests(view) -> bytes:
    return b"".join(blake3.blake3(view[i:i + CHUNK]).digest() for i in range(0, len(view), CHUNK))


def digest(data) -> bytes:
    return blake3.blake3(data).digest()


class Hasher:
    """Incremental whole-content digest plus chunk list (feed CHUNK-aligned blocks)."""

    def __init__(self, size_hint: int = 0):
        self.h = blake3.blake3(max_threads=blake3.blake3.AUTO if size_hint >= _MT_MIN else 1)
        self.parts: list = []
        self.size = 0

    def update(self, block) -> None:
        """``block``: the next bytes; every block but the last must be a multiple of CHUNK."""
        view = memoryview(block)
        fut = _chunk_pool().submit(_chunk_digests, view) if len(view) > CHUNK else None
        self.h.update(view)
        self.parts.append(fut.result() if fut is not None else _chunk_digests(view))
        self.size += len(view)

    def result(self) -> tuple[bytes, int, bytes | None]:
        """(digest, size, chunk list or None when the content fits one chunk)."""
        return self.h.digest(), self.size, (b"".join(self.parts) if self.size > CHUNK else None)


def hash_fd(fd: int, limit: int | None = None) -> tuple[bytes, int, bytes | None]:
    """Digest, size and chunk list of an open file from offset 0, read with pread."""
    size = os.fstat(fd).st_size if limit is None else limit
    h = Hasher(size)
    off = 0
    while limit is None or off < limit:
        want = READ_BLOCK if limit is None else min(READ_BLOCK, limit - off)
        buf = os.pread(fd, want, off)
        h.update(buf)
        off += len(buf)
        if len(buf) < want:  # end of file (a regular file reads short only there)
            break
    return h.result()


def hash_own(fd: int) -> tuple[bytes, int, bytes | None]:
    """Like :func:`hash_fd` for a file only we write (a temporary copy): may mmap."""
    size = os.fstat(fd).st_size
    if size < _MT_MIN:
        return hash_fd(fd)
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
        view = memoryview(mm)
        try:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            fut = _chunk_pool().submit(_chunk_digests, view)
            h.update(view)
            chunks = fut.result()
            return h.digest(), size, chunks
        finally:
            view.release()


def copy_fd(src: int, dst: int, size: int, src_off: int = 0) -> int:
    """Copy ``size`` bytes kernel-side (reflink where the file system can); returns bytes copied."""
    off = 0
    while off < size:
        try:
            n = os.copy_file_range(src, dst, size - off, src_off + off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(dst, off, os.SEEK_SET)  # sendfile writes at dst's position
            n = os.sendfile(dst, src, src_off + off, size - off)
        if n == 0:
            break
        off += n
    return off
