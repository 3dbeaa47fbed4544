"""Reading file content, verified: every byte handed out was checked first.

A stored file is read in pieces of ``format.CHUNK`` bytes.  A file of at most
one piece is checked against its content digest; a larger one against its
chunk list (an object named in its tree entry, itself checked against its
digest).  So every read -- a FUSE read, ``artfs cat``, ``export``,
``Version.open`` -- verifies exactly the pieces it touches, every time: a byte
corrupted on disk after it was first read is still never served (EIO /
Corrupt instead).  A piece that fails is read once more when the object
store's reader can fetch it afresh (``refetch``: the scale-out store's local
cache may hold a copy that went bad while the bucket's is sound); once only,
so a bad copy in the store itself still fails.  Verified pieces are kept in a
small shared LRU (bounded in bytes) so sequential small reads do not re-hash a
piece.

``file://`` references are opened without following symlinks in any path
component (openat2 RESOLVE_NO_SYMLINKS where the kernel has it, else
O_NOFOLLOW), non-blocking, and must be regular files of the recorded size;
their pieces are verified the same way, so a swapped or changed file yields
ReferenceChanged, never someone else's bytes.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections import OrderedDict

from ..errors import BadInput, Corrupt, ReferenceChanged
from ..storage import format as fmt
from ..storage.format import CHUNK, FILE, REF, Entry
from ..storage.hashing import digest as blake
from ..storage.hashing import hash_fd, is_zero, pread_sparse, zero_chunk_digest

CACHE_BYTES = 64 * CHUNK
_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same on x86_64 and aarch64
RESOLVE_NO_SYMLINKS = 0x04
_openat2_missing = False


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_nofollow(path, noatime: bool = False) -> int:
    """Open a file for reading without following any symlink on the way, without blocking on
    a FIFO or device.  OSError as open(2) would raise (ELOOP for a symlink).  ``noatime``:
    leave its atime alone where the caller may (owner or root), as backup tools do."""
    if noatime:
        try:
            return open_nofollow(path) if not hasattr(os, "O_NOATIME") else _open_nofollow(path, os.O_NOATIME)
        except PermissionError:
            pass
    return _open_nofollow(path, 0)


def _open_nofollow(path, extra: int) -> int:
    global _openat2_missing
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | extra
    if not _openat2_missing:
        how = _OpenHow(flags, 0, RESOLVE_NO_SYMLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, -100, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        if e not in (errno.ENOSYS, errno.EPERM) or (e == errno.EPERM and extra):
            # EPERM: O_NOATIME on someone else's file, or a seccomp filter that does not know openat2
            raise OSError(e, os.strerror(e), path)
        _openat2_missing = True
    return os.open(path, flags)


def uri_path(uri: str) -> str:
    if not isinstance(uri, str):
        raise BadInput(f"a reference is a file:/// URI, got {type(uri).__name__}")
    if not uri.startswith("file://"):
        raise BadInput(f"unsupported reference {uri!r}: only file:///absolute/path")
    p = uri[len("file://"):]
    if not p.startswith("/") or "\0" in p:
        raise BadInput(f"bad reference {uri!r}: expected file:///absolute/path")
    return p


def open_reference(uri: str, size: int | None = None) -> int:
    """A descriptor on a referenced regular file (ReferenceChanged when it is not one, or
    not of the recorded ``size``)."""
    p = uri_path(uri)
    try:
        fd = open_nofollow(p)
    except OSError as exc:
        why = "it is (or passes through) a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise ReferenceChanged(f"reference {uri} is unreadable: {why}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ReferenceChanged(f"reference {uri} is unreadable: not a regular file")
    if size is not None and st.st_size != size:
        os.close(fd)
        raise ReferenceChanged(f"reference {uri} changed since it was recorded (size {st.st_size}, was {size})")
    return fd


class _FdReader:
    """Raw reads of a referenced file (the object store's readers have the same shape)."""

    def __init__(self, fd: int):
        self.fd = fd

    def pread(self, off: int, n: int) -> bytes:
        return pread_sparse(self.fd, n, off)  # holes are not read

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PieceCache:
    """Verified pieces, shared by every reader of a process, bounded in bytes."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit = limit
        self.used = 0
        self.items: OrderedDict[tuple, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.items.get(key)
            if v is not None:
                self.items.move_to_end(key)
            return v

    def put(self, key, value: bytes) -> None:
        if len(value) > self.limit // 4:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = value
            self.used += len(value)
            while self.used > self.limit:
                _, old = self.items.popitem(last=False)
                self.used -= len(old)


_pieces = PieceCache()
_chunk_lists: OrderedDict[bytes, list] = OrderedDict()
_chunk_lock = threading.Lock()


class ContentReader:
    """Verified random-access reads of one file entry (an object or a reference).

    Thread-safe for concurrent reads; ``close`` when done.  ``read`` raises Corrupt
    (ReferenceChanged for a reference) for a piece whose bytes miss their digest."""

    def __init__(self, store, e: Entry):
        if e.kind not in (FILE, REF) or e.digest is None:
            raise BadInput(f"{fmt.join_path([e.name])} is not a stored file")
        self.store = store
        self.entry = e
        self.size = e.size
        self.is_ref = e.kind == REF
        self.key = e.digest + (e.uri.encode() if self.is_ref else b"")
        self.raw = _FdReader(open_reference(e.uri, e.size)) if self.is_ref else store.objects.open(e.digest)
        self._pieces: list | None = None

    def _fail(self, why: str):
        if self.is_ref:
            raise ReferenceChanged(f"reference {self.entry.uri} "
                                   + ("changed since it was recorded" if "corrupt" in why else why))
        raise Corrupt(f"object {self.entry.digest.hex()} {why}")

    def _expected(self, i: int) -> bytes:
        if self.size <= CHUNK:
            return self.entry.digest
        if self._pieces is None:
            self._pieces = self._load_pieces()
        return self._pieces[i]

    def _load_pieces(self) -> list:
        e = self.entry
        key = e.chunks or (b"whole:" + self.key)
        with _chunk_lock:
            hit = _chunk_lists.get(key)
        if hit is not None:
            return hit
        if e.chunks is not None:
            pieces = fmt.decode_chunks(self.store.objects.get(e.chunks), self.size)
        else:
            # an entry without a chunk list (made by artfs 0.1): hash it whole once, keep its pieces
            fd = self.raw.fd if self.is_ref else None
            if fd is None:
                d, n, chunks = self._hash_object()
                if (d != e.digest or n != self.size) and self._refetch(0, self.size):
                    d, n, chunks = self._hash_object()
            else:
                d, n, chunks = hash_fd(fd)
            if d != e.digest or n != self.size:
                self._fail("is corrupt")
            pieces = fmt.decode_chunks(chunks, self.size)
        with _chunk_lock:
            _chunk_lists[key] = pieces
            while len(_chunk_lists) > 4096:
                _chunk_lists.popitem(last=False)
        return pieces

    def _refetch(self, off: int, n: int) -> bool:
        """Ask the object store's reader to fetch [off, off + n) afresh (dropping a cached copy
        that went bad); whether reading again may help.  Local readers and references have no
        ``refetch``: what they read is the only copy."""
        refetch = getattr(self.raw, "refetch", None)
        return refetch is not None and bool(refetch(off, n))

    def _hash_object(self):
        from ..storage.hashing import Hasher

        h = Hasher(self.size)
        off = 0
        while off < self.size:
            b = self.raw.pread(off, 8 * CHUNK)
            if not b:
                break
            h.update(b)
            off += len(b)
        return h.result()

    def piece(self, i: int) -> bytes:
        """Piece ``i`` (CHUNK bytes, shorter at the end), verified."""
        ck = (self.key, i)
        want = min(CHUNK, self.size - i * CHUNK)
        hit = None if self.is_ref else _pieces.get(ck)  # a reference may change: check it every time
        if hit is not None and len(hit) == want:  # (another entry of this content may misstate its size)
            return hit
        checked_read = None if self.is_ref else getattr(self.raw, "pread_verified", None)
        for again in (False, True):
            try:
                if checked_read is not None:
                    # the scale-out reader verified what it fetched against these very digests
                    data, verified = checked_read(i * CHUNK, want, self.entry.chunks, self.size)
                else:
                    data, verified = self.raw.pread(i * CHUNK, want), False
            except OSError as exc:
                why = f"is unreadable: {exc.strerror}"
            else:
                if len(data) == want and (verified or _matches(data, self._expected(i))):
                    break
                why = "is corrupt" if len(data) == want else "is shorter than recorded (corrupt)"
            if again or not self._refetch(i * CHUNK, want):
                self._fail(why)
        if not self.is_ref:
            _pieces.put(ck, data)
        return data

    def read(self, off: int, size: int) -> bytes:
        if off >= self.size or size <= 0:
            return b""
        end = min(self.size, off + size)
        first, last = off // CHUNK, (end - 1) // CHUNK
        if first == last:
            p = self.piece(first)
            return p[off - first * CHUNK:end - first * CHUNK]
        parts = []
        for i in range(first, last + 1):
            p = self.piece(i)
            lo = max(off, i * CHUNK) - i * CHUNK
            hi = min(end, (i + 1) * CHUNK) - i * CHUNK
            parts.append(memoryview(p)[lo:hi])  # views: the join below is the only copy
        return b"".join(parts)

    def verify_all(self) -> None:
        for i in range(max(1, fmt.chunk_count(self.size))):
            if self.size == 0:
                self._check_empty()
                return
            self.piece(i)

    def _check_empty(self) -> None:
        if self.raw.pread(0, 1) or blake(b"") != self.entry.digest:
            self._fail("is corrupt")

    def close(self) -> None:
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_cached(e: Entry, off: int, size: int) -> bytes | None:
    """``[off, off + size)`` of a stored file (not a reference: one may change) when every
    piece it touches is in the shared cache of verified pieces, else None.  No I/O, so a
    FUSE handler may call it on the trio thread (``fuse.readahead`` fills the cache)."""
    if e.kind != FILE or e.digest is None:
        return None
    end = min(e.size, off + size)
    if off >= end:
        return b"" if e.size else None  # an empty file is checked by reading it once
    first, last = off // CHUNK, (end - 1) // CHUNK
    parts = []
    for i in range(first, last + 1):
        p = _pieces.get((e.digest, i))
        if p is None or len(p) != min(CHUNK, e.size - i * CHUNK):  # (an entry that misstates its size)
            return None
        parts.append(p)
    if len(parts) == 1:
        return parts[0][off - first * CHUNK:end - first * CHUNK]
    # views of the pieces: the join is the only copy (the kernel's 1 MiB read-ahead requests are
    # not aligned to pieces, so most of a big file's reads span two)
    parts[0] = memoryview(parts[0])[off - first * CHUNK:]
    parts[-1] = memoryview(parts[-1])[:end - last * CHUNK]
    return b"".join(parts)


def _matches(data: bytes, expected: bytes) -> bool:
    """Whether ``data`` hashes to ``expected``.  A whole piece of zeros (a hole of a sparse
    file) is checked with a memcmp against the zero buffer instead: its digest is known."""
    if len(data) == CHUNK and expected == zero_chunk_digest() and is_zero(data):
        return True
    return blake(data) == expected


def iter_content(store, e: Entry, verify_first: bool = False):
    """Yield a file's bytes in order, each piece verified before it is yielded.
    ``verify_first``: check the whole file before the first byte leaves (``artfs cat``)."""
    with ContentReader(store, e) as r:
        if verify_first:
            r.verify_all()
        if r.size == 0:
            r._check_empty()
            return
        for i in range(fmt.chunk_count(r.size)):
            yield r.piece(i)


def read_all(store, e: Entry) -> bytes:
    return b"".join(iter_content(store, e))


def hash_reference(uri: str) -> tuple[bytes, int, bytes | None, os.stat_result]:
    """(digest, size, chunk list, stat) of a referenced file, read with pread (no mmap)."""
    try:
        fd = open_reference(uri)
    except ReferenceChanged as exc:
        raise BadInput(f"cannot read {uri}: {str(exc).split(': ', 1)[-1]}") from None
    try:
        st = os.fstat(fd)
        d, n, chunks = hash_fd(fd, st.st_size)
    except OSError as exc:
        raise BadInput(f"cannot read {uri}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return d, n, chunks, st
