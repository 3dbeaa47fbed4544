"""The scale-out ``ObjectStore``: objects in any S3-compatible bucket (obstore).

Keys are content addresses: ``PREFIX/objects/<2 hex>/<62 hex>`` (BLAKE3), so
a key's bytes never change and any number of machines may write the same
object at once.

Writing (:class:`S3Batch`): a small object is hashed in memory; a larger one
is first copied to a private spool file (what is hashed is the copy, so a
source that changes meanwhile can never produce a misnamed object) and sent
from it, as a multipart upload when it is large.  Uploads run in parallel on
worker threads (obstore releases the GIL); an object is visible once its PUT
completed, and ``close()`` returns when every upload of the batch has, so
the repo layer writes metadata naming them only afterwards (DESIGN.md §5).  A
failed batch names nothing: what it uploaded is garbage for gc.

* A small object is always PUT (one request either way, and a re-put heals a
  damaged one).  A big object that already exists with the same size and an
  ETag that agrees with the file (MD5 of the bytes, or of the parts) is not
  sent again (one HEAD saves the upload); one rewritten in the bucket is, and
  so healed.  Stamps (put's stat cache) are size and ETag for the same reason.  Unconditional PUTs are used on
  purpose: conditional creates (``If-None-Match``) are serialised by some
  servers (SeaweedFS holds a lock for up to seconds under contention), and
  identical content makes overwriting harmless.
* A big object carries its chunk-list digest as user metadata
  (``x-amz-meta-artfs-chunks``), so any machine can verify a range of it
  without its tree entry.
* Existence checks are batched: a few digests get parallel HEADs, many are
  answered by listing each ``objects/<2 hex>/`` prefix from the first digest
  asked for (never more list pages than HEADs would cost).
* Errors: obstore retries 5xx answers, dropped connections and timeouts with
  exponential backoff for up to ``ARTFS_S3_RETRY`` seconds (default 60); then
  the operation fails with one clear line (:class:`ObjectsUnavailable`).

Reading goes through this machine's :class:`~artfs.storage.cache.ObjectCache`:
an object of at most ``SPAN`` bytes is fetched whole and verified against its
digest; a bigger one is fetched in spans on demand, each verified piece by
piece against the object's chunk list, with read-ahead when reads are
sequential.  So mounting and listing a version fetches trees only, and ``cat``
of one file fetches that file (or the ranges read).  A cached copy that went
bad on this disk afterwards is dropped and fetched again, verified, once a read
that checks its bytes finds it out (``get``; ``S3Reader.refetch``, which
``repo.content`` calls).  ``verify`` (fsck) reads the bucket itself, never the
cache.
"""
from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

import obstore
from obstore.store import S3Store

from ..errors import ArtfsError, Corrupt, NoSpace
from . import format as fmt
from .cache import SPAN, ObjectCache
from .format import CHUNK
from .hashing import Hasher, copy_fd, digest as blake, hash_own
from .objects import Batch, ObjectStore

CHUNKS_ATTR = "artfs-chunks"
MULTIPART_PART = 16 << 20  # bytes per part of a multipart upload
HEAD_MAX = 32  # existence checks of at most this many digests are HEADs; more are listings
READ_AHEAD = 3  # spans fetched ahead of a sequential reader
INFLIGHT_UPLOADS = 64  # small uploads queued per store before put_bytes waits


_shared: dict = {}
_shared_lock = threading.Lock()


def _client(bucket: str, region: str, client: dict, retry_seconds: float, kw: dict) -> S3Store:
    """One obstore client per bucket, endpoint and credentials in a process (its connection pool
    is shared by every store object opened on them)."""
    key = ("client", os.getpid(), bucket, region, retry_seconds, tuple(sorted(client.items())),
           tuple(sorted(kw.items())))
    with _shared_lock:
        got = _shared.get(key)
        if got is None:
            retry = {"max_retries": 10, "retry_timeout": timedelta(seconds=retry_seconds),
                     "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5),
                                 "base": 2}}
            got = _shared[key] = S3Store(bucket, region=region, client_options=client, retry_config=retry, **kw)
        return got


def _pools() -> tuple:
    """(upload pool, fetch pool, upload slots) of this process."""
    key = ("pools", os.getpid())
    with _shared_lock:
        got = _shared.get(key)
        if got is None:
            got = _shared[key] = (ThreadPoolExecutor(16, thread_name_prefix="artfs-s3"),
                                  ThreadPoolExecutor(8, thread_name_prefix="artfs-s3-get"),
                                  threading.BoundedSemaphore(INFLIGHT_UPLOADS))
        return got


class ObjectsUnavailable(ArtfsError):
    """The object store failed (unreachable, refused, or kept failing after retries)."""

    exit_code = 2  # not corruption (1): the objects are fine, the way to them is not


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("\n\nDebug source", 1)[0]
    return " ".join(text.split())[:400]


class S3ObjectStore(ObjectStore):
    reads_ahead = True  # S3Reader fetches the spans after a sequential reader's (``_ahead``)

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None, region: str | None = None,
                 cache: ObjectCache, threads: int = 16, retry_seconds: float | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.cache = cache
        if retry_seconds is None:
            retry_seconds = float(os.environ.get("ARTFS_S3_RETRY", "60"))
        self.retry_seconds = retry_seconds
        kw = {}
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            kw["access_key_id"], kw["secret_access_key"] = key, secret
            if os.environ.get("AWS_SESSION_TOKEN"):
                kw["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        client = {"connect_timeout": "10s", "timeout": "300s"}
        if endpoint:
            kw["endpoint"] = endpoint
            kw["virtual_hosted_style_request"] = False
            if endpoint.startswith("http://"):
                client["allow_http"] = True
        self.s3 = _client(bucket, self.region, client, retry_seconds, kw)
        self.threads = threads
        self._sizes: dict[bytes, int] = {}  # from the last list() (gc's freed bytes)
        self.before_delete = None  # gc's lease check (scaleout.PgGc), called before each delete batch
        self.stats = {"put": 0, "put_bytes": 0, "get": 0, "get_bytes": 0, "head": 0, "list": 0, "skipped": 0}

    def __repr__(self) -> str:
        return f"S3ObjectStore(s3://{self.bucket}/{self.prefix})"

    # -- plumbing ---------------------------------------------------------------------------
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")

    def key(self, d: bytes) -> str:
        h = d.hex()
        return f"{self.prefix}/objects/{h[:2]}/{h[2:]}" if self.prefix else f"objects/{h[:2]}/{h[2:]}"

    def _objects_prefix(self) -> str:
        return f"{self.prefix}/objects/" if self.prefix else "objects/"

    def marker_key(self) -> str:
        return f"{self.prefix}/artfs-store" if self.prefix else "artfs-store"

    def pool(self) -> ThreadPoolExecutor:
        """This process's upload threads (shared by every store object: their HTTP connections
        and threads are per process, not per store opened)."""
        return _pools()[0]

    def fetch_pool(self) -> ThreadPoolExecutor:
        return _pools()[1]

    @property
    def _slots(self) -> threading.BoundedSemaphore:
        return _pools()[2]

    def call(self, what: str, fn, *args, **kw):
        """An obstore call; its failures (after obstore's retries) as one clear line."""
        try:
            return fn(*args, **kw)
        except (FileNotFoundError, obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            raise
        except (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError) as exc:
            raise ObjectsUnavailable(f"the object store {self.where()} refused to {what}: {_first_line(exc)} "
                                     "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
        except (obstore.exceptions.BaseError, OSError, RuntimeError, ValueError) as exc:
            raise ObjectsUnavailable(f"the object store {self.where()} failed to {what}: {_first_line(exc)}") from None

    # -- lifecycle ---------------------------------------------------------------------------
    def read_marker(self) -> bytes | None:
        try:
            return bytes(self.call("read the store marker", obstore.get, self.s3, self.marker_key()).bytes())
        except FileNotFoundError:
            return None

    def create_marker(self, data: bytes) -> bytes | None:
        """Write the store marker unless one exists (one conditional PUT: two stores racing for one
        prefix cannot both win); returns the marker that was there, or None."""
        try:
            self.call("write the store marker", obstore.put, self.s3, self.marker_key(), data, mode="create")
            return None
        except ObjectsUnavailable:
            raise
        except Exception as exc:  # AlreadyExistsError (412), however the client names it
            if "exist" not in type(exc).__name__.lower() and "412" not in str(exc):
                raise
        return self.read_marker()

    # -- writing -------------------------------------------------------------------------------
    def batch(self) -> "S3Batch":
        return S3Batch(self)

    def _put(self, d: bytes, data=None, path: str | None = None, size: int = 0, chunks: bytes | None = None) -> None:
        attrs = {CHUNKS_ATTR: chunks.hex()} if chunks is not None else None
        if path is not None:
            self.call(f"upload object {d.hex()}", obstore.put, self.s3, self.key(d), Path(path), attributes=attrs,
                      chunk_size=MULTIPART_PART, max_concurrency=4, use_multipart=size > MULTIPART_PART)
        else:
            self.call(f"upload object {d.hex()}", obstore.put, self.s3, self.key(d), data, attributes=attrs,
                      use_multipart=False)
            size = len(data)
        self.stats["put"] += 1
        self.stats["put_bytes"] += size

    def head_meta(self, d: bytes) -> dict | None:
        """The object's metadata (``size``, ``e_tag``, ...), or None when it does not exist."""
        try:
            meta = self.call(f"look up object {d.hex()}", obstore.head, self.s3, self.key(d))
        except FileNotFoundError:
            return None
        self.stats["head"] += 1
        return meta

    def head(self, d: bytes) -> int | None:
        meta = self.head_meta(d)
        return None if meta is None else meta["size"]

    # -- existence ----------------------------------------------------------------------------
    def has(self, digests: Iterable[bytes]) -> dict[bytes, int]:
        return {d: m["size"] for d, m in self._metas(digests).items()}

    def stamps(self, digests: Iterable[bytes]) -> dict[bytes, str]:
        """Size and ETag: an object rewritten in the bucket has another ETag, so put's stat cache
        reads the source again and the upload heals the object."""
        return {d: f"{m['size']}.{(m.get('e_tag') or '').strip(chr(34))}" for d, m in self._metas(digests).items()}

    def _metas(self, digests: Iterable[bytes]) -> dict[bytes, dict]:
        """Metadata of those of ``digests`` that exist: HEADs for a few, listings for many."""
        ds = sorted(set(digests))
        if not ds:
            return {}
        out: dict[bytes, dict] = {}
        if len(ds) <= HEAD_MAX:
            for d, meta in zip(ds, self.pool().map(self.head_meta, ds)):
                if meta is not None:
                    out[d] = meta
            return out
        groups: dict[str, list[bytes]] = {}
        for d in ds:
            groups.setdefault(d.hex()[:2], []).append(d)
        for part in self.pool().map(self._has_listing, groups.values()):
            out.update(part)
        return out

    def _has_listing(self, ds: list[bytes]) -> dict[bytes, dict]:
        """Digests of one 2-hex prefix (sorted): list from the first, stop after the last; fall back
        to HEADs when the listing would cost more requests than they would."""
        want = {self.key(d): d for d in ds}
        keys = sorted(want)
        out: dict[bytes, dict] = {}
        prefix = keys[0].rsplit("/", 1)[0] + "/"
        found = 0
        listed = 0
        remaining = set(keys)
        stream = self.call("list objects", obstore.list, self.s3, prefix, offset=keys[0][:-1], chunk_size=1000)
        try:
            for page in _safe_iter(self, stream):
                self.stats["list"] += 1
                for meta in page:
                    p = meta["path"]
                    listed += 1
                    if p in remaining:
                        remaining.discard(p)
                        out[want[p]] = meta
                        found += 1
                    if p > keys[-1]:
                        return out
                if not remaining:
                    return out
                if listed > 1000 * len(remaining):
                    break  # sparse among many: HEADs are cheaper from here
            else:
                return out
        finally:
            del stream
        for p in sorted(remaining):
            meta = self.head_meta(want[p])
            if meta is not None:
                out[want[p]] = meta
        return out

    # -- reading ---------------------------------------------------------------------------------
    def open(self, d: bytes) -> "S3Reader":
        return S3Reader(self, d)

    def get(self, digest: bytes) -> bytes:
        """The whole object, verified; a cached copy that went bad is dropped and fetched again."""
        data = self.read(digest, 0, 1 << 62)
        if blake(data) != digest:
            self.cache.drop([digest])
            data = self.read(digest, 0, 1 << 62)
            if blake(data) != digest:
                raise Corrupt(f"corrupt object {digest.hex()}")
        return data

    def verify(self, d: bytes) -> bool:
        """Re-hash the object as the bucket holds it (not the cache)."""
        try:
            res = self.call(f"read object {d.hex()}", obstore.get, self.s3, self.key(d))
        except FileNotFoundError:
            return False
        h = Hasher(res.meta["size"])
        buf = bytearray()
        try:
            for piece in res.stream(min_chunk_size=8 * CHUNK):
                buf += memoryview(piece)
                if len(buf) >= 8 * CHUNK:
                    cut = len(buf) - len(buf) % CHUNK
                    h.update(bytes(buf[:cut]))
                    del buf[:cut]
        except (obstore.exceptions.BaseError, OSError, RuntimeError) as exc:
            raise ObjectsUnavailable(f"the object store {self.where()} failed to read object {d.hex()}: "
                                     f"{_first_line(exc)}") from None
        if buf:
            h.update(bytes(buf))
        self.stats["get"] += 1
        self.stats["get_bytes"] += h.size
        return h.result()[0] == d

    def fetch_range(self, d: bytes, start: int, end: int):
        """GET [start, end) of an object: (bytes, total size, chunk-list digest or None).
        Corrupt when the object is missing."""
        try:
            try:
                res = obstore.get(self.s3, self.key(d), options={"range": (start, end)})
            except obstore.exceptions.BaseError as exc:
                if start == 0 and ("416" in str(exc) or "InvalidRange" in str(exc)):
                    if self.head(d) == 0:  # an empty object has no byte 0
                        return b"", 0, None
                raise
            data = memoryview(res.bytes())  # obstore's buffer, not a copy of it (spans are 8 MiB)
        except FileNotFoundError:
            raise Corrupt(f"missing object {d.hex()}") from None
        except (obstore.exceptions.BaseError, OSError, RuntimeError) as exc:
            raise ObjectsUnavailable(f"the object store {self.where()} failed to read object {d.hex()}: "
                                     f"{_first_line(exc)}") from None
        self.stats["get"] += 1
        self.stats["get_bytes"] += len(data)
        ch = res.attributes.get(CHUNKS_ATTR)
        try:
            chunks = bytes.fromhex(ch) if ch else None
        except ValueError:
            chunks = None
        if chunks is not None and len(chunks) != fmt.DIGEST_LEN:
            chunks = None
        return data, res.meta["size"], chunks

    def fetch_whole_to_file(self, d: bytes, size_hint: int) -> tuple[str, int, int]:
        """Stream a whole object into a cache temporary, verified against its digest:
        (temporary path, open descriptor, size)."""
        tmp, fd = self.cache.new_tmp()
        ok = False
        try:
            try:
                res = self.call(f"read object {d.hex()}", obstore.get, self.s3, self.key(d))
            except FileNotFoundError:
                raise Corrupt(f"missing object {d.hex()}") from None
            h = Hasher(res.meta["size"])
            buf = bytearray()
            off = 0
            try:
                for piece in res.stream(min_chunk_size=8 * CHUNK):
                    buf += memoryview(piece)
                    if len(buf) >= 8 * CHUNK:
                        cut = len(buf) - len(buf) % CHUNK
                        block = bytes(buf[:cut])
                        del buf[:cut]
                        h.update(block)
                        os.pwrite(fd, block, off)
                        off += len(block)
            except (obstore.exceptions.BaseError, RuntimeError) as exc:
                raise ObjectsUnavailable(f"the object store {self.where()} failed to read object {d.hex()}: "
                                         f"{_first_line(exc)}") from None
            if buf:
                block = bytes(buf)
                h.update(block)
                os.pwrite(fd, block, off)
                off += len(block)
            self.stats["get"] += 1
            self.stats["get_bytes"] += off
            if h.result()[0] != d:
                raise Corrupt(f"corrupt object {d.hex()} (its bytes in the object store miss its name)")
            ok = True
            return tmp, fd, off
        finally:
            if not ok:
                os.close(fd)
                _unlink(tmp)

    # -- gc, fsck ----------------------------------------------------------------------------------
    def list(self) -> Iterator[bytes]:
        prefix = self._objects_prefix()
        sizes = {}
        stream = self.call("list objects", obstore.list, self.s3, prefix, chunk_size=1000)
        for page in _safe_iter(self, stream):
            self.stats["list"] += 1
            for meta in page:
                rest = meta["path"][len(prefix):]
                a, _, b = rest.partition("/")
                if len(a) != 2 or "/" in b:
                    continue
                try:
                    d = bytes.fromhex(a + b)
                except ValueError:
                    continue
                if len(d) == fmt.DIGEST_LEN:
                    sizes[d] = meta["size"]
                    yield d
        self._sizes = sizes

    def delete(self, digests: Iterable[bytes]) -> int:
        ds = list(digests)
        freed = 0
        for i in range(0, len(ds), 1000):
            part = ds[i:i + 1000]
            if self.before_delete is not None:
                self.before_delete()  # gc still holds its lease (else writers may be running)
            self.call("delete objects", obstore.delete, self.s3, [self.key(d) for d in part])
            for d in part:
                freed += self._sizes.get(d, 0)
            self.cache.drop(part)
        return freed

    def clean_temporaries(self) -> int:
        return self.cache.clean_tmp()


def _safe_iter(store: S3ObjectStore, stream):
    it = iter(stream)
    while True:
        try:
            page = next(it)
        except StopIteration:
            return
        except (obstore.exceptions.BaseError, OSError, RuntimeError) as exc:
            raise ObjectsUnavailable(f"the object store {store.where()} failed to list objects: "
                                     f"{_first_line(exc)}") from None
        yield page


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class S3Batch(Batch):
    """Uploads in parallel; ``close`` waits for all of them (visible then), ``abort`` for none."""

    def __init__(self, store: S3ObjectStore):
        self.store = store
        self.futures: list[Future] = []
        self.names: set[bytes] = set()
        self.spools: list[str] = []
        self.lock = threading.Lock()
        self.failed: BaseException | None = None

    def _submit(self, fn, *args) -> None:
        s = self.store
        pool = s.pool()
        s._slots.acquire()

        def run():
            try:
                fn(*args)
            except BaseException as exc:
                with self.lock:
                    if self.failed is None:
                        self.failed = exc
                raise
            finally:
                s._slots.release()

        fut = pool.submit(run)
        with self.lock:
            self.futures.append(fut)

    def _check(self) -> None:
        if self.failed is not None:
            raise self.failed

    def put_bytes(self, data: bytes, cache: bool = True) -> bytes:
        self._check()
        d = blake(data)
        with self.lock:
            if d in self.names:
                return d
            self.names.add(d)
        data = bytes(data)
        store = self.store

        def up():
            store._put(d, data)
            if cache and len(data) > 0:
                store.cache.put_whole(d, data)  # trees and chunk lists are read back soon

        self._submit(up)
        return d

    def put_fd(self, fd: int, size: int | None = None) -> tuple[bytes, int, bytes | None]:
        self._check()
        if size is None:
            size = os.fstat(fd).st_size
        if size <= CHUNK:
            data = _pread_all(fd, size)
            if len(data) <= CHUNK:
                return self.put_bytes(data, cache=False), len(data), None
        s = self.store
        try:
            tmp, tfd = s.cache.new_tmp()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left for a temporary copy in {s.cache.tmp_dir}") from None
            raise
        with self.lock:
            self.spools.append(tmp)
        try:
            try:
                copy_fd(fd, tfd, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(f"no space left for a temporary copy in {s.cache.tmp_dir}") from None
                raise
            d, n, chunks = hash_own(tfd)
        finally:
            os.close(tfd)
        chunks_d = self.put_bytes(chunks) if chunks is not None else None
        with self.lock:
            dup = d in self.names
            self.names.add(d)
        if dup:
            _unlink(tmp)
            return d, n, chunks_d

        def up():
            try:
                have = s.head_meta(d)
                # already there, and its ETag does not say otherwise: sending it again would change
                # nothing (a mismatch is an object rewritten in the bucket: this upload heals it)
                if have is not None and have["size"] == n and _same_bytes(have.get("e_tag"), tmp, n) is not False:
                    s.stats["skipped"] += 1
                else:
                    s._put(d, path=tmp, size=n, chunks=chunks_d)
            finally:
                _unlink(tmp)

        self._submit(up)
        return d, n, chunks_d

    def _wait(self) -> None:
        with self.lock:
            futs = list(self.futures)
        wait(futs)

    def close(self) -> None:
        self._wait()
        for tmp in self.spools:
            _unlink(tmp)
        for f in self.futures:
            exc = f.exception()
            if exc is not None:
                raise exc
        self.futures.clear()

    def abort(self) -> None:
        with self.lock:
            futs = list(self.futures)
        for f in futs:
            f.cancel()
        self._wait()
        for tmp in self.spools:
            _unlink(tmp)
        self.futures.clear()


def _same_bytes(etag: str | None, path: str, size: int) -> bool | None:
    """Whether an object whose S3 ETag is ``etag`` holds the bytes of the file ``path``: an
    ETag is the MD5 of the bytes (one PUT) or of the parts' MD5s with their count (multipart).
    None when it cannot tell (parts of another size, an encrypted object's opaque ETag)."""
    import hashlib
    import re

    m = re.fullmatch(r"([0-9a-f]{32})(?:-(\d+))?", (etag or "").strip('"'))
    if m is None:
        return None
    part = size or 1  # one PUT: the whole file is one "part"
    if m.group(2) is not None:
        if size <= MULTIPART_PART or int(m.group(2)) != -(-size // MULTIPART_PART):
            return None
        part = MULTIPART_PART
    digests = []
    with open(path, "rb") as f:
        while True:
            h, left = hashlib.md5(), part
            while left:
                b = f.read(min(left, 1 << 20))
                if not b:
                    break
                h.update(b)
                left -= len(b)
            digests.append(h.digest())
            if left or f.tell() >= size:
                break
    if m.group(2) is None:
        return digests[0].hex() == m.group(1)
    return hashlib.md5(b"".join(digests)).hexdigest() == m.group(1)


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


class S3Reader:
    """Raw range reads of one object through the cache (fetched lazily, verified on fill)."""

    def __init__(self, store: S3ObjectStore, d: bytes):
        self.s = store
        self.d = d
        self._lock = threading.Lock()
        self._mode: str | None = None  # "mem" | "fd" | "spans"
        self._data: bytes | None = None
        self._fd = -1
        self._size = 0
        self._chunks: bytes | None = None  # chunk-list digest (spans)
        self._pieces: list | None = None
        self._spans: OrderedDict[int, object] = OrderedDict()  # span -> fd (int) or its bytes
        self._ahead: dict[int, Future] = {}  # spans being fetched ahead of a sequential reader
        self._last = -2
        self._retired: list[int] = []  # descriptors on copies refetched: another thread may still read one
        self._info_from_index = False  # size and chunk list as this machine's cache index remembers them

    # -- setup ---------------------------------------------------------------------------
    def _init(self) -> None:
        if self._mode is not None:
            return
        with self._lock:
            if self._mode is not None:
                return
            c = self.s.cache
            fd = c.whole_fd(self.d)
            if fd is not None:
                self._fd, self._size, self._mode = fd, os.fstat(fd).st_size, "fd"
                return
            info = c.info(self.d)
            if info is not None:
                self._size, self._chunks = info
                self._info_from_index = True
                self._mode = "spans"
                return
            self._fetch_first()

    def _ask_again(self) -> bool:
        """A read missed the size or chunk list this machine's cache index remembers: ask the
        bucket once.  When the index was wrong (a stray write, a bug), forget it and the spans
        cached under it and start over from the bucket's answer (True: read again); else the
        fault is elsewhere (False)."""
        with self._lock:
            if not self._info_from_index:
                return False
            self._info_from_index = False
            _, size, chunks = self.s.fetch_range(self.d, 0, 1)
            if (size, chunks) == (self._size, self._chunks):
                return False
            for x in self._spans.values():
                if isinstance(x, int):
                    os.close(x)
            self._spans.clear()
            self._ahead.clear()  # fetches under way finish into the cache (verified, or not at all)
            for i in range((max(size, self._size) + SPAN - 1) // SPAN):
                self.s.cache.drop_span(self.d, i)
            self._pieces, self._mode, self._last = None, None, -2
            self._fetch_first()  # the row again, from the bucket
            return True

    def _fetch_first(self) -> None:
        """Fetch the object (or its first span) from the bucket, verified, and settle how it is
        read (under the lock; ``_mode`` is set after what it needs: ``_init`` reads it without)."""
        c = self.s.cache
        data, size, chunks = self.s.fetch_range(self.d, 0, SPAN)
        if size <= SPAN:
            if len(data) != size or blake(data) != self.d:
                raise Corrupt(f"corrupt object {self.d.hex()} (its bytes in the object store miss its name)")
            c.put_whole(self.d, data)
            self._data, self._size, self._mode = data, size, "mem"
            return
        if chunks is None:
            # a big object without a chunk list (a huge tree): fetched and verified whole
            tmp, fd, n = self.s.fetch_whole_to_file(self.d, size)
            if c.put_whole_file(self.d, tmp, n):
                self._fd = fd
            else:
                _unlink(tmp)  # too big for the cache: private to this reader
                self._fd = fd
            self._size, self._mode = n, "fd"
            return
        self._size, self._chunks, self._pieces, self._mode = size, chunks, None, "spans"
        c.set_info(self.d, size, chunks)
        first = self._verify_span(0, data)
        self._spans[0] = first
        self._last = 0
        self._keep(0, first)

    @property
    def size(self) -> int:
        self._init()
        return self._size

    # -- spans ---------------------------------------------------------------------------
    def _expected(self) -> list:
        if self._pieces is None:
            self._pieces = fmt.decode_chunks(self.s.get(self._chunks), self._size)
        return self._pieces

    def _span_len(self, i: int) -> int:
        return min(SPAN, self._size - i * SPAN)

    def _verify_span(self, i: int, data: bytes) -> bytes:
        want = self._span_len(i)
        if len(data) != want:
            raise Corrupt(f"object {self.d.hex()} is shorter in the object store than its size (corrupt)")
        pieces = self._expected()
        base = i * SPAN // CHUNK
        view = memoryview(data)  # pieces hashed in place, not copied out
        for k in range(0, want, CHUNK):
            if blake(view[k:k + CHUNK]) != pieces[base + k // CHUNK]:
                raise Corrupt(f"corrupt object {self.d.hex()} (a piece in the object store misses its chunk list)")
        return data

    def _fetch_verified(self, i: int) -> bytes:
        start = i * SPAN
        data, _, _ = self.s.fetch_range(self.d, start, start + self._span_len(i))
        return self._verify_span(i, data)

    def _keep(self, i: int, data: bytes) -> None:
        """Put a verified span in the cache, off the reader's path (a disk write may be slow)."""
        def job():
            try:
                self.s.cache.put_span(self.d, i, data)
            except Exception:
                pass  # the cache is an optimisation: the next reader fetches it again

        self.s.fetch_pool().submit(job)

    def _fetch_ahead(self, j: int, fut: Future) -> None:
        try:
            data = self._fetch_verified(j)
        except BaseException as exc:
            fut.set_exception(exc)  # the reader that needs the span fetches it again and hears why
            return
        fut.set_result(data)
        try:
            self.s.cache.put_span(self.d, j, data)
        except Exception:
            pass

    def _prefetch(self, i: int) -> None:
        """Sequential reads: fetch the next spans meanwhile (each a GET of its own, in parallel)."""
        nspans = (self._size + SPAN - 1) // SPAN
        c = self.s.cache
        for j in range(i + 1, min(nspans, i + 1 + READ_AHEAD)):
            with self._lock:
                if j in self._spans or j in self._ahead:
                    continue
                fut = Future()
                self._ahead[j] = fut
            if os.path.exists(c.span_path(self.d, j)):
                fut.set_result(None)  # cached already: read from the cache when it is needed
                continue
            self.s.fetch_pool().submit(self._fetch_ahead, j, fut)

    def _span(self, i: int):
        """Span i: its verified bytes, or an open descriptor on its cached copy."""
        with self._lock:
            got = self._spans.get(i)
            if got is not None:
                self._spans.move_to_end(i)
                return got
            sequential = i == self._last + 1
            self._last = i
            fut = self._ahead.pop(i, None)
            for j in [j for j in self._ahead if j < i]:  # the reader jumped past them
                del self._ahead[j]
        if sequential:
            self._prefetch(i)
        got = None
        if fut is not None:
            try:
                got = fut.result()
            except Exception:
                got = None  # fetched again below, and this time its failure is the reader's
        if got is None:
            got = self.s.cache.span_fd(self.d, i)
        if got is None:
            got = self._fetch_verified(i)
            self._keep(i, got)
        with self._lock:
            old = self._spans.get(i)
            if old is not None:  # another thread kept it meanwhile: one descriptor per span
                if isinstance(got, int):
                    os.close(got)
                return old
            self._spans[i] = got
            self._trim()
            return got

    def _trim(self) -> None:
        """Keep two spans (under the lock: a pread reads only a descriptor still kept)."""
        while len(self._spans) > 2:
            _, x = self._spans.popitem(last=False)
            if isinstance(x, int):
                os.close(x)

    def _heal_span(self, i: int) -> bytes:
        """Span i's cached copy went bad on this disk: forget it, fetch the span again from the
        bucket (verified), cache and hold the new bytes."""
        with self._lock:
            old = self._spans.pop(i, None)
            if isinstance(old, int):
                os.close(old)
            self._ahead.pop(i, None)
        self.s.cache.drop_span(self.d, i)
        data = self._fetch_verified(i)
        self._keep(i, data)
        with self._lock:
            self._spans[i] = data
            self._spans.move_to_end(i)
            self._trim()
        return data

    # -- reads ---------------------------------------------------------------------------
    def pread(self, offset: int, size: int) -> bytes:
        return self._pread(offset, size)[0]

    def pread_verified(self, offset: int, size: int, chunks: bytes | None, total: int) -> tuple[bytes, bool]:
        """``pread``, and whether every byte came from memory this reader verified: against the
        object's digest (a small object), or against the chunk list ``chunks`` (a span fetched
        from the bucket; a span read from this machine's cache was not).  The caller, which
        checks the same pieces against the same digests, need not hash them again -- if it
        expects the object's size (``total``): a caller that expects fewer bytes would take a
        verified piece's prefix for the whole of its own last piece."""
        data, verified_by = self._pread(offset, size)
        if total != self._size:
            return data, False
        return data, verified_by == "object" or (verified_by == "chunks" and chunks == self._chunks)

    def _pread(self, offset: int, size: int) -> tuple[bytes, str | None]:
        """(bytes, what verified them all in memory: "object", "chunks" or None)."""
        try:
            return self._pread_once(offset, size)
        except Corrupt:
            if not self._ask_again():
                raise
            return self._pread_once(offset, size)

    def _pread_once(self, offset: int, size: int) -> tuple[bytes, str | None]:
        self._init()
        if offset >= self._size or size <= 0:
            return b"", None
        size = min(size, self._size - offset)
        if self._mode == "mem":
            return bytes(self._data[offset:offset + size]), "object"
        if self._mode == "fd":
            return os.pread(self._fd, size, offset), None
        verified_by = "chunks"
        parts = []
        while size > 0:
            i = offset // SPAN
            within = offset - i * SPAN
            n = min(size, self._span_len(i) - within)
            got = self._span(i)
            if isinstance(got, int):
                with self._lock:  # another thread's eviction closes descriptors: read only a kept one
                    if self._spans.get(i) != got:
                        continue  # evicted meanwhile (its number may name another file now): ask again
                    try:
                        b = os.pread(got, n, within)
                    except OSError:
                        b = b""
                if len(b) != n:  # a truncated or unreadable cache file: fetch the span again
                    b = self._heal_span(i)[within:within + n]
                else:
                    verified_by = None  # read from the cache's file: the caller checks it
            else:
                b = got[within:within + n]
            parts.append(b)
            offset += n
            size -= n
        return b"".join(parts), verified_by

    def refetch(self, offset: int, size: int) -> bool:
        """Bytes read at [offset, offset + size) missed what they should be (the caller verifies):
        drop this machine's cached copy of them and fetch them again from the bucket, verified,
        for the next pread.  False when they did not come from the cache (nothing fresher to
        offer).  Corrupt when the bucket's copy is bad too.  Call it once per failed read: a
        copy that still misses is the bucket's."""
        self._init()
        if self._ask_again():
            return True
        if self._mode == "mem":
            # fetched from the bucket and verified whole; unless another thread just did so in
            # place of a bad cached copy (which the failed read may have read), nothing fresher
            return bool(self._retired)
        if self._mode == "fd":
            bad = self._fd
            with self._lock:
                if self._mode == "fd" and self._fd == bad:  # (else another thread refetched it)
                    # the old descriptor stays open until close(): another thread may be reading it
                    self._retired.append(self._fd)
                    self.s.cache.drop([self.d])
                    self._fetch_first()
            return True
        if size > 0 and offset < self._size:
            for i in range(offset // SPAN, (min(offset + size, self._size) - 1) // SPAN + 1):
                with self._lock:
                    held = self._spans.get(i)
                if not isinstance(held, bytes):  # bytes held are the bucket's, verified already
                    self._heal_span(i)
        return True  # (another thread may have healed it meanwhile: read again either way)

    def close(self) -> None:
        with self._lock:
            for fd in set(self._retired + [self._fd]):
                if fd >= 0:
                    os.close(fd)
            self._fd = -1
            self._retired.clear()
            for x in self._spans.values():
                if isinstance(x, int):
                    os.close(x)
            self._spans.clear()
            self._ahead.clear()  # fetches under way finish into the cache
            self._data = None
