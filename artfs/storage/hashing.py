"""BLAKE3 of files and pieces of files, kernel-side copies, and sparse files.

Two ways to read a file for hashing:

* :func:`hash_fd` reads with ``pread`` (never mmap): for files we do not own
  (sources of ``put``, ``file://`` references, scratch files a program may
  truncate), where a concurrent truncation under an mmap would kill the process
  with SIGBUS.
* :func:`hash_own` may mmap: for temporary copies only this process writes.

Both return the whole-content digest (what ``b3sum`` prints) and, for content
larger than :data:`format.CHUNK`, the chunk list (see format.py).

Sparse files cost what their data costs: both walk the file's data extents
(``lseek`` ``SEEK_DATA``/``SEEK_HOLE``, :func:`extents`) and feed a hole to
the hash from a shared zero buffer without reading it (the digests are those
of the full byte stream, holes as the zeros they read as), and
:func:`copy_fd` copies only the data, so the holes stay holes in the copy.
:func:`write_sparse` is the other direction, for writers of verified content
(``export``, copy-up): all-zero blocks are skipped, to become holes.  Where a
file system cannot tell holes (``SEEK_DATA`` unsupported), the whole file is
data: the same bytes, only not sparse.
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
SPARSE_BLOCK = 4096  # the grain of holes :func:`write_sparse` leaves
# lseek errnos that mean "this file system cannot tell holes" (then: all data)
_NO_SEEK_DATA = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE, errno.ENOSYS)
_pool: ThreadPoolExecutor | None = None
_zeros: bytes | None = None
_zero_chunk_digest: bytes | None = None


def _chunk_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="artfs-chunks")
    return _pool


def zeros() -> bytes:
    """CHUNK zero bytes, shared (holes are hashed and compared from it, never read)."""
    global _zeros, _zero_chunk_digest
    if _zeros is None:
        z = bytes(CHUNK)
        _zero_chunk_digest = blake3.blake3(z).digest()
        _zeros = z
    return _zeros


def zero_chunk_digest() -> bytes:
    """The BLAKE3 of one CHUNK of zeros (what a hole's piece of a chunk list is)."""
    zeros()
    return _zero_chunk_digest


def is_zero(data: bytes) -> bool:
    """Whether ``data`` (bytes -- a memoryview compares slowly -- at most CHUNK long) is all
    zero bytes: a memcmp against the shared zero buffer."""
    n = len(data)
    if n == CHUNK:
        return data == zeros()
    return n == 0 or (data[:1] == b"\0" and data == zeros()[:n])


def _chunk_digests(view) -> bytes:
    return b"".join(blake3.blake3(view[i:i + CHUNK]).digest() for i in range(0, len(view), CHUNK))


def digest(data) -> bytes:
    return blake3.blake3(data).digest()


class Hasher:
    """Incremental whole-content digest plus chunk list.

    ``update`` takes the next bytes in blocks of any length (blocks that are multiples of
    CHUNK hash their chunks on a second thread meanwhile); ``update_zeros`` takes ``n`` zero
    bytes without any buffer of the caller (a hole)."""

    def __init__(self, size_hint: int = 0):
        self.h = blake3.blake3(max_threads=blake3.blake3.AUTO if size_hint >= _MT_MIN else 1)
        self.parts: list = []
        self.size = 0
        self._part = None  # blake3 of the chunk begun but not complete
        self._fill = 0  # its bytes so far

    def _top_up(self, view) -> int:
        """Feed the chunk begun (if any) from the start of ``view``; returns bytes used."""
        if not self._fill:
            return 0
        k = min(CHUNK - self._fill, len(view))
        self._part.update(view[:k])
        self._fill += k
        if self._fill == CHUNK:
            self.parts.append(self._part.digest())
            self._part, self._fill = None, 0
        return k

    def update(self, block) -> None:
        """``block``: the next bytes."""
        view = memoryview(block)
        n = len(view)
        if not n:
            return
        i = self._top_up(view)
        j = i + (n - i) // CHUNK * CHUNK  # whole chunks: view[i:j]
        body = view[i:j]
        fut = _chunk_pool().submit(_chunk_digests, body) if len(body) > CHUNK else None
        self.h.update(view)
        if fut is not None:
            self.parts.append(fut.result())
        elif body:
            self.parts.append(_chunk_digests(body))
        if j < n:
            self._part, self._fill = blake3.blake3(view[j:]), n - j
        self.size += n

    def update_zeros(self, n: int) -> None:
        """``n`` zero bytes (a hole): hashed from the shared zero buffer, nothing read."""
        if n <= 0:
            return
        z = memoryview(zeros())
        left = n
        while left:
            k = min(left, CHUNK)
            self.h.update(z[:k])
            left -= k
        i = 0
        while i < n and self._fill:
            i += self._top_up(z[:min(CHUNK, n - i)])
        whole = (n - i) // CHUNK
        if whole:
            self.parts.append(zero_chunk_digest() * whole)
        rest = n - i - whole * CHUNK
        if rest:
            self._part, self._fill = blake3.blake3(z[:rest]), rest
        self.size += n

    def result(self) -> tuple[bytes, int, bytes | None]:
        """(digest, size, chunk list or None when the content fits one chunk)."""
        parts = self.parts + ([self._part.digest()] if self._fill else [])
        return self.h.digest(), self.size, (b"".join(parts) if self.size > CHUNK else None)


def extents(fd: int, start: int, end: int):
    """``(offset, length, is_data)`` covering ``[start, end)`` of an open file in order, as far
    as the file goes (a file that ends before ``end`` ends the walk there).  Holes per
    ``SEEK_DATA``/``SEEK_HOLE``; where the file system cannot tell, one data extent.  Moves
    the descriptor's file position (callers use pread)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from pos on: a hole to the end of the file
                stop = min(end, os.fstat(fd).st_size)
                if stop > pos:
                    yield pos, stop - pos, False
                return
            if exc.errno in _NO_SEEK_DATA:
                yield pos, end - pos, True
                return
            raise
        if data > pos:
            yield pos, min(data, end) - pos, False
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno != errno.ENXIO and exc.errno not in _NO_SEEK_DATA:
                raise
            hole = end  # ENXIO: the file shrank under us; the read of it will come up short
        hole = min(hole, end)
        yield data, hole - data, True
        pos = hole


def pread_sparse(fd: int, size: int, offset: int) -> bytes:
    """``os.pread(fd, size, offset)``, except that holes are not read (reading one makes the
    kernel allocate and clear page-cache pages): they are zeros from the shared buffer.  A
    piece that is all hole is that buffer itself (or a slice of it), so :func:`is_zero`
    answers at once.  Small reads (no room for a hole worth two lseeks) are plain preads."""
    if size < 16 * SPARSE_BLOCK:
        return os.pread(fd, size, offset)
    parts = list(extents(fd, offset, offset + size))
    if not parts:
        return b""
    if len(parts) == 1 and parts[0][2]:
        return os.pread(fd, size, offset)
    end = parts[-1][0] + parts[-1][1]
    if not any(is_data for _, _, is_data in parts):
        n = end - offset
        return zeros() if n == CHUNK else zeros()[:n] if n < CHUNK else bytes(n)
    buf = bytearray(end - offset)
    view = memoryview(buf)
    for off, n, is_data in parts:
        if is_data:
            got = os.preadv(fd, [view[off - offset:off - offset + n]], off)
            if got < n:  # the file ended there
                view.release()
                del buf[off - offset + got:]
                break
    else:
        view.release()
    return bytes(buf)


def _hash_extents(fd: int, h: Hasher, end: int, view=None) -> int:
    """Feed ``[0, end)`` of ``fd`` to ``h``: data read (from ``view``, an mmap of the file, or
    with pread), holes from the zero buffer.  Returns where it stopped (``end`` unless the
    file was shorter)."""
    pos = 0
    for off, n, is_data in extents(fd, 0, end):
        if not is_data:
            h.update_zeros(n)
            pos = off + n
            continue
        if view is not None:
            h.update(view[off:off + n])
            pos = off + n
            continue
        pos, stop = off, off + n
        while pos < stop:
            want = min(READ_BLOCK - pos % READ_BLOCK, stop - pos)  # aligned reads after the first
            buf = os.pread(fd, want, pos)
            h.update(buf)
            pos += len(buf)
            if len(buf) < want:  # end of file (a regular file reads short only there)
                return pos
    return pos


def hash_fd(fd: int, limit: int | None = None) -> tuple[bytes, int, bytes | None]:
    """Digest, size and chunk list of an open file from offset 0 (to its end, or to ``limit``
    bytes), read with pread; holes are not read."""
    size = os.fstat(fd).st_size
    h = Hasher(size if limit is None else limit)
    end = size if limit is None else min(size, limit)
    off = _hash_extents(fd, h, end)
    if off == end:  # the file may have grown meanwhile: read on, as far as it goes
        while limit is None or off < limit:
            want = READ_BLOCK if limit is None else min(READ_BLOCK, limit - off)
            buf = os.pread(fd, want, off)
            h.update(buf)
            off += len(buf)
            if len(buf) < want:
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
            h = Hasher(size)
            _hash_extents(fd, h, size, view)
            return h.result()
        finally:
            view.release()


def _copy_range(src: int, dst: int, size: int, src_off: int, dst_off: int) -> int:
    """Copy ``size`` bytes kernel-side (reflink where the file system can); returns bytes
    copied (fewer when ``src`` ends first)."""
    off = 0
    while off < size:
        try:
            n = os.copy_file_range(src, dst, size - off, src_off + off, dst_off + off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(dst, dst_off + off, os.SEEK_SET)  # sendfile writes at dst's position
            n = os.sendfile(dst, src, src_off + off, size - off)
        if n == 0:
            break
        off += n
    return off


def copy_fd(src: int, dst: int, size: int, src_off: int = 0) -> int:
    """Make ``dst`` a copy of ``size`` bytes of ``src`` from ``src_off`` (fewer if ``src`` ends
    first): kernel-side (reflink where the file system can), only the data extents -- holes
    stay holes, ``dst`` gets its length from ``ftruncate``.  ``dst`` is meant to be a new
    file; anything it held is dropped.  Returns the bytes copied (``dst``'s length)."""
    if os.fstat(dst).st_size:
        os.ftruncate(dst, 0)
    length = 0
    for off, n, is_data in extents(src, src_off, src_off + size):
        got = _copy_range(src, dst, n, off, off - src_off) if is_data else n
        length = off - src_off + got
        if got < n:
            break
    if os.fstat(dst).st_size != length:
        os.ftruncate(dst, length)
    return length


def write_sparse(fd: int, data, off: int) -> None:
    """``pwrite`` ``data`` at ``off`` but leave out its all-zero :data:`SPARSE_BLOCK`-aligned
    blocks, which a new file then keeps as holes: only for a range of the file never written
    before (a skipped block keeps what was there).  The caller then sets the file's full
    length with ``ftruncate`` (a file that ends in a hole has no byte written there)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if not n or (n <= CHUNK and is_zero(data)):
        return
    zb = zeros()[:SPARSE_BLOCK]
    view = memoryview(data)
    if data.find(zb) < 0:  # no run of a block's length of zeros at all: one write
        _pwrite_all(fd, view, off)
        return
    B = SPARSE_BLOCK
    start = None  # first byte of the data run being gathered
    i = 0
    while i < n:
        j = min(n, (off + i) // B * B + B - off)  # the next block boundary (in file offsets)
        zero = data.startswith(zb, i) if j - i == B else is_zero(data[i:j])
        if zero:
            if start is not None:
                _pwrite_all(fd, view[start:i], off + start)
                start = None
        elif start is None:
            start = i
        i = j
    if start is not None:
        _pwrite_all(fd, view[start:], off + start)


def _pwrite_all(fd: int, view, off: int) -> None:
    while view:
        k = os.pwrite(fd, view, off)
        view = view[k:]
        off += k
