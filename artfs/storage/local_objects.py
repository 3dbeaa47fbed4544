"""The local ``ObjectStore``: objects as files in a directory.

Layout: ``objects/<2 hex>/<62 hex>`` (files 0600, directories 0700) and
``tmp/`` for writes in progress, on the same file system.

A batch writes each object to a temporary file (hashing the copy, never the
source), then on close: barrier (the temporaries' data is durable), rename
each to its name (replacing whatever was there: a re-put heals a damaged
object), barrier (the names are durable).  So no name ever points at bytes
that a power loss could take away, and the cost is two barriers per batch,
not one fsync per object (see durable.py).

Concurrency: any number of processes may write at once (renames of identical
bytes are harmless).  Deletion belongs to gc, which the Store's locks keep
apart from writers.
"""
from __future__ import annotations

import errno
import os
import uuid
from typing import Iterable, Iterator

from ..errors import Corrupt, NoSpace
from .durable import Durability
from .format import CHUNK
from .hashing import copy_fd, digest as blake, hash_fd, hash_own, pread_sparse
from .objects import Batch, ObjectStore

_FULL = (errno.ENOSPC, errno.EDQUOT)


class LocalReader:
    """Raw range reads of one object (an open read-only descriptor)."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int):
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def pread(self, offset: int, size: int) -> bytes:
        try:
            return pread_sparse(self.fd, size, offset)  # holes of a sparse object are not read
        except OSError as exc:
            raise Corrupt(f"object unreadable: {exc.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalBatch(Batch):
    def __init__(self, store: "LocalObjectStore"):
        self.store = store
        self.pending: dict[bytes, str] = {}  # digest -> temporary file
        self.relied: set[str] = set()  # directories of existing objects this batch reuses

    def _new_tmp(self) -> tuple[str, int]:
        p = os.path.join(self.store.tmp_dir, uuid.uuid4().hex)
        return p, os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _full(self, exc: OSError):
        raise NoSpace(f"no space left in the store at {self.store.root} ({exc.strerror})") from None

    def put_bytes(self, data: bytes) -> bytes:
        d = blake(data)
        if d in self.pending:
            return d
        if self.store.sound(d, data):
            # another writer's object may be renamed but its name not yet durable: this batch's
            # barrier covers that directory too before anything relies on it
            self.relied.add(os.path.dirname(self.store.path(d)))
            return d
        tmp, fd = self._new_tmp()
        self.pending[d] = tmp  # registered first: abort() removes it whatever happens next
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            if exc.errno in _FULL:
                self._full(exc)
            raise
        finally:
            os.close(fd)
        return d

    def put_fd(self, fd: int, size: int | None = None) -> tuple[bytes, int, bytes | None]:
        if size is None:
            size = os.fstat(fd).st_size
        if size <= CHUNK:
            data = _pread_all(fd, size)
            if len(data) <= CHUNK:
                return self.put_bytes(data), len(data), None
        tmp, tfd = self._new_tmp()
        key = object()
        self.pending[key] = tmp
        try:
            try:
                copy_fd(fd, tfd, size)
            except OSError as exc:
                if exc.errno in _FULL:
                    self._full(exc)
                raise
            d, n, chunks = hash_own(tfd)
        finally:
            os.close(tfd)
        del self.pending[key]
        if d in self.pending:
            os.unlink(tmp)
        else:
            self.pending[d] = tmp
        return d, n, (self.put_bytes(chunks) if chunks is not None else None)

    def close(self) -> None:
        s = self.store
        if not self.pending:
            if self.relied:
                s.durability.barrier(dirs=sorted(self.relied | {s.obj_dir}))
                self.relied.clear()
            return
        s.durability.barrier(files=self.pending.values())
        dirs = set()
        for d, tmp in self.pending.items():
            final = s.path(d)
            sub = os.path.dirname(final)
            try:
                os.rename(tmp, final)
            except FileNotFoundError:
                os.makedirs(sub, mode=0o700, exist_ok=True)
                os.rename(tmp, final)
            dirs.add(sub)
        self.pending.clear()
        # objects/ too, always: a subdirectory this batch made, or one another writer made and
        # died before syncing its name, is reachable after a power cut only once objects/ is synced
        s.durability.barrier(dirs=sorted(dirs | self.relied | {s.obj_dir}))
        self.relied.clear()

    def abort(self) -> None:
        for tmp in self.pending.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.pending.clear()


def _pread_all(fd: int, size: int) -> bytes:
    """Up to CHUNK + 1 bytes from offset 0 (one more than ``size`` tells a file that grew)."""
    parts, off, want = [], 0, min(size, CHUNK) + 1
    while off < want:
        b = os.pread(fd, want - off, off)
        if not b:
            break
        parts.append(b)
        off += len(b)
    return b"".join(parts)


class LocalObjectStore(ObjectStore):
    def __init__(self, root: str):
        self.root = root
        self.obj_dir = os.path.join(root, "objects")
        self.tmp_dir = os.path.join(root, "tmp")
        self.durability = Durability(root)

    def create(self) -> None:
        for d in (self.obj_dir, self.tmp_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def path(self, d: bytes) -> str:
        h = d.hex()
        return f"{self.obj_dir}/{h[:2]}/{h[2:]}"  # os.path.join's checks cost a third of a stat

    def batch(self) -> LocalBatch:
        return LocalBatch(self)

    def sound(self, d: bytes, data: bytes) -> bool:
        """Whether the object for ``data`` exists with exactly these bytes (small objects:
        cheaper to check than to rewrite; a damaged one is rewritten)."""
        try:
            with open(self.path(d), "rb") as f:
                return f.read(len(data) + 1) == data
        except OSError:
            return False

    def has(self, digests: Iterable[bytes]) -> dict[bytes, int]:
        out = {}
        for d in digests:
            try:
                out[d] = os.stat(self.path(d)).st_size
            except FileNotFoundError:
                pass
        return out

    def stamps(self, digests: Iterable[bytes]) -> dict[bytes, str]:
        out = {}
        for d in digests:
            try:
                st = os.stat(self.path(d))
            except FileNotFoundError:
                continue
            out[d] = f"{st.st_size}.{st.st_ino}.{st.st_mtime_ns}.{st.st_ctime_ns}"
        return out

    def open(self, d: bytes) -> LocalReader:
        try:
            return LocalReader(os.open(self.path(d), os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            raise Corrupt(f"missing object {d.hex()}") from None

    def verify(self, d: bytes) -> bool:
        try:
            fd = os.open(self.path(d), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return hash_fd(fd)[0] == d
        except OSError:
            return False
        finally:
            os.close(fd)

    def delete(self, digests: Iterable[bytes]) -> int:
        freed = 0
        for d in digests:
            p = self.path(d)
            try:
                freed += os.stat(p).st_size
                os.unlink(p)
            except FileNotFoundError:
                pass
        return freed

    def list(self) -> Iterator[bytes]:
        try:
            subs = sorted(os.listdir(self.obj_dir))
        except FileNotFoundError:
            return
        for sub in subs:
            if len(sub) != 2:
                continue
            for name in os.listdir(os.path.join(self.obj_dir, sub)):
                try:
                    d = bytes.fromhex(sub + name)
                except ValueError:
                    continue
                if len(d) == 32:
                    yield d

    def clean_temporaries(self) -> int:
        n = 0
        for name in os.listdir(self.tmp_dir):
            try:
                os.unlink(os.path.join(self.tmp_dir, name))
                n += 1
            except FileNotFoundError:
                pass
        return n
