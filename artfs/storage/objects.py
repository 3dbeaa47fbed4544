"""``ObjectStore``: content-addressed bytes (DESIGN.md §7).

Objects are named by the BLAKE3 digest (32 bytes) of their content and never
change.  Nothing above this interface knows whether an object is a file, an S3
key or a cache entry, and nothing above it ever gets a descriptor it could
write through: writers hand over bytes or a descriptor to *copy from*, readers
get bytes.

Writing goes through a :class:`Batch`: objects put into a batch become visible
and durable together when the batch closes (``with store.batch() as b: ...``);
an object is never visible under its name before its bytes are durable
(invariant 1 of DESIGN.md §5).  A put always (re)writes the object, so a
damaged or missing object is healed by putting its content again (invariant 2).
A batch that is not closed (an exception) leaves nothing visible.

Reading gives raw, unverified bytes: verification against digests and chunk
lists belongs to the repo layer (``artfs.repo.content``), which knows what an
object is supposed to be.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator


class Batch(ABC):
    """Objects written together; durable and visible when :meth:`close` returns."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> bytes:
        """Store ``data``; returns its digest."""

    @abstractmethod
    def put_fd(self, fd: int, size: int | None = None) -> tuple[bytes, int, bytes | None]:
        """Copy a file's content from offset 0 (at most ``size`` bytes); returns
        ``(digest, size, chunk-list digest or None)``.  What is hashed is the copy,
        so a source that changes meanwhile can never produce a misnamed object.
        The chunk list (see format.py) is stored in the same batch."""

    @abstractmethod
    def close(self) -> None:
        """Make every object of the batch durable, then visible under its name."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; nothing becomes visible."""

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ObjectStore(ABC):
    #: whether one reader of an object already fetches ahead of a sequential reader by itself
    #: (then the mounts' own read-ahead within a file, which opens a reader per piece, keeps out)
    reads_ahead = False

    @abstractmethod
    def batch(self) -> Batch:
        """A new batch of writes."""

    @abstractmethod
    def has(self, digests: Iterable[bytes]) -> dict[bytes, int]:
        """Sizes of those of ``digests`` that exist (one call for many: batched)."""

    def stamps(self, digests: Iterable[bytes]) -> dict[bytes, str]:
        """A short text per existing object that changes whenever the object is rewritten or
        damaged in place (its size, and where the back end can tell, its change time); put's stat
        cache trusts a remembered digest only while the stamp is the same."""
        return {d: str(n) for d, n in self.has(digests).items()}

    @abstractmethod
    def open(self, digest: bytes):
        """A reader of the object: ``pread(offset, size) -> bytes`` (short only at the end) and
        ``close()``.  Raises Corrupt("missing object ...") when the object does not exist.

        A reader that serves a local copy of a remote object (the scale-out store's cache) also
        has ``refetch(offset, size) -> bool``: the bytes read there missed their digest, so drop
        the local copy and fetch them again, verified, for the next pread; False when there is
        nothing fresher.  The caller (``repo.content``) calls it once per failed read.  Readers
        of the only copy (the local store) have none."""

    def read(self, digest: bytes, offset: int, size: int) -> bytes:
        """Up to ``size`` raw bytes at ``offset`` (short only at the end), in reads of at most
        64 MiB.  Raises Corrupt("missing object ...") when the object does not exist."""
        r = self.open(digest)
        try:
            parts, off = [], offset
            while size > 0:
                b = r.pread(off, min(size, 1 << 26))
                if not b:
                    break
                parts.append(b)
                off += len(b)
                size -= len(b)
            return b"".join(parts)
        finally:
            r.close()

    def get(self, digest: bytes) -> bytes:
        """The whole object, verified against its name (Corrupt otherwise)."""
        from .hashing import digest as blake

        data = self.read(digest, 0, 1 << 62)
        if blake(data) != digest:
            from ..errors import Corrupt

            raise Corrupt(f"corrupt object {digest.hex()}")
        return data

    @abstractmethod
    def verify(self, digest: bytes) -> bool:
        """Re-hash one object: False when it is missing or its bytes miss its name."""

    @abstractmethod
    def delete(self, digests: Iterable[bytes]) -> int:
        """Remove objects (gc only); returns the bytes freed."""

    @abstractmethod
    def list(self) -> Iterator[bytes]:
        """Every object's digest (gc, fsck)."""

    @abstractmethod
    def clean_temporaries(self) -> int:
        """Remove what writers that died left behind (gc, under its exclusive lock)."""
