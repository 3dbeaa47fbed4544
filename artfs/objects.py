"""Content-addressed object store (blobs and trees) in a local directory.

Layout: ``objects/<2 hex>/<62 hex>``, files 0600, directories 0700.  An
object's name is the BLAKE3 of its bytes; objects are write-once.

Writing an object: the bytes go to a temporary file in ``tmp/`` (same file
system), are hashed *as written* (the copy, not the source, so a source that
changes under us cannot produce a misnamed object), and the file is renamed
to its name.  Durability is batched: callers call :meth:`sync` once (one
``syncfs``) before they record anything that names the new objects, which is
the same guarantee as an fsync per object at a fraction of the cost.

Concurrency: any number of processes may write at once; a rename onto an
existing name replaces identical bytes, so races are harmless.  Deletion
belongs to ``gc`` alone, under the store's exclusive lock.

Everything above this module speaks digests; only the FUSE fast path asks
for :meth:`local_path` to read an object with ``pread``.
"""
from __future__ import annotations

import ctypes
import errno
import os
import uuid

import blake3

from .errors import Corrupt, NotFound

_libc = ctypes.CDLL(None, use_errno=True)
HASH_CHUNK = 1 << 20
MMAP_MIN = 1 << 20  # below this, one read() beats mmap + threads


def hash_file(path: str) -> tuple[str, int]:
    """BLAKE3 hex and size of a file; large files use blake3's threads."""
    size = os.stat(path).st_size
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if size >= 16 * MMAP_MIN else 1)
    if size >= MMAP_MIN:
        h.update_mmap(path)
    else:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest(), size


def hash_fd(fd: int) -> tuple[str, int]:
    """BLAKE3 of an open file from offset 0 (for scratch files held open)."""
    size = os.fstat(fd).st_size
    return hash_file(f"/proc/self/fd/{fd}") if size >= MMAP_MIN else (blake3.blake3(os.pread(fd, size, 0)).hexdigest(), size)


def copy_fd(src: int, dst: int, size: int) -> None:
    """Kernel-side copy (reflink where the file system can)."""
    off = 0
    while off < size:
        try:
            n = os.copy_file_range(src, dst, size - off, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(dst, off, os.SEEK_SET)  # sendfile writes at dst's position, copy_file_range did not move it
            n = os.sendfile(dst, src, off, size - off)
        if n == 0:
            break
        off += n


class ObjectStore:
    def __init__(self, root: str):
        self.root = root
        self.obj_dir = os.path.join(root, "objects")
        self.tmp_dir = os.path.join(root, "tmp")

    def create(self) -> None:
        for d in (self.obj_dir, self.tmp_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    # -- names -------------------------------------------------------------
    def local_path(self, hexd: str) -> str:
        return os.path.join(self.obj_dir, hexd[:2], hexd[2:])

    def has(self, hexd: str) -> bool:
        return os.path.exists(self.local_path(hexd))

    def tmp_path(self) -> str:
        return os.path.join(self.tmp_dir, uuid.uuid4().hex)

    def _install(self, tmp: str, hexd: str) -> None:
        dst = self.local_path(hexd)
        if os.path.exists(dst):
            os.unlink(tmp)
            return
        try:
            os.rename(tmp, dst)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
            os.rename(tmp, dst)

    # -- writing -----------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        hexd = blake3.blake3(data).hexdigest()
        if self.has(hexd):
            return hexd
        tmp = self.tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._install(tmp, hexd)
        return hexd

    def put_file(self, src: str) -> tuple[str, int]:
        """Copy a file in; returns (hex, size).  The copy is what gets hashed."""
        sfd = os.open(src, os.O_RDONLY)
        try:
            return self.put_fd(sfd)
        finally:
            os.close(sfd)

    def put_fd(self, sfd: int) -> tuple[str, int]:
        size = os.fstat(sfd).st_size
        if size < MMAP_MIN:
            data = os.pread(sfd, size + 1, 0)
            return self.put_bytes(data), len(data)
        tmp = self.tmp_path()
        dfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_fd(sfd, dfd, size)
            hexd, size = hash_fd(dfd)
        finally:
            os.close(dfd)
        self._install(tmp, hexd)
        return hexd, size

    def adopt(self, path: str) -> tuple[str, int]:
        """Move a file we own (e.g. a draft's scratch file) in, without copying."""
        hexd, size = hash_file(path)
        os.chmod(path, 0o600)
        self._install(path, hexd)
        return hexd, size

    def sync(self) -> None:
        """Make every object written so far durable (one syncfs for the file system)."""
        fd = os.open(self.obj_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------
    def get_bytes(self, hexd: str, verify: bool = True) -> bytes:
        try:
            with open(self.local_path(hexd), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise Corrupt(f"missing object {hexd}") from None
        if verify and blake3.blake3(data).hexdigest() != hexd:
            raise Corrupt(f"corrupt object {hexd}")
        return data

    def open_fd(self, hexd: str) -> int:
        try:
            return os.open(self.local_path(hexd), os.O_RDONLY)
        except FileNotFoundError:
            raise Corrupt(f"missing object {hexd}") from None

    def size(self, hexd: str) -> int:
        try:
            return os.stat(self.local_path(hexd)).st_size
        except FileNotFoundError:
            raise NotFound(f"missing object {hexd}") from None

    def verify(self, hexd: str) -> bool:
        """Re-hash one object; False when its bytes do not match its name."""
        try:
            return hash_file(self.local_path(hexd))[0] == hexd
        except FileNotFoundError:
            return False

    # -- listing / deletion (gc, fsck) --------------------------------------
    def iter_all(self):
        try:
            subs = sorted(os.listdir(self.obj_dir))
        except FileNotFoundError:
            return
        for sub in subs:
            if len(sub) != 2:
                continue
            for name in os.listdir(os.path.join(self.obj_dir, sub)):
                yield sub + name

    def delete(self, hexd: str) -> int:
        p = self.local_path(hexd)
        try:
            size = os.stat(p).st_size
            os.unlink(p)
            return size
        except FileNotFoundError:
            return 0
