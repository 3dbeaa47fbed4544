"""Sparse files stay sparse (issue 14): ``put``, a draft's ``status``, commit and copy-up,
``export`` and ``refresh`` cost what the data costs, not the holes, and what they write keeps
the holes; the digests are those of the full byte stream, holes read as zeros.

A test file is ``SIZE`` bytes made with ``truncate`` plus a few 4 KiB pieces of data at odd
offsets (one across a CHUNK boundary, one at the very end).  Its expected digest and chunk
list come from :func:`reference`, which builds the byte stream in memory, independently of
artfs' hashing (checked against ``blake3`` of the whole bytes on a small variant).  Sparseness
is asserted through ``st_blocks`` and through the bytes the operations read or write
(syscall spies), never through time.  ``ARTFS_SPARSE_BENCH=1`` adds a 5 GiB measurement
that prints (run with ``-s``), asserting nothing about time.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import blake3
import pytest

from artfs import repo
from artfs.errors import Corrupt
from artfs.repo import materialize
from artfs.storage import hashing
from artfs.storage.format import CHUNK, FILE
from artfs.storage.store import Store

from mounts import Mounted, artfs, mstore, needs_fuse, sh  # noqa: F401

pytestmark = pytest.mark.local_only  # st_blocks of the local store's object files

SIZE = 256 << 20
SPARSE_MAX = 1 << 20  # what a file of SIZE with a few 4 KiB pieces may allocate, at most


def layout(size: int = SIZE) -> list[tuple[int, bytes]]:
    """(offset, data): 4 KiB pieces at odd offsets, one across a CHUNK boundary, one at the end."""
    offs = [12345, CHUNK - 2048, 7 * CHUNK + 4095, size // 2 + 333, size - 4096]
    return [(o, os.urandom(4096)) for o in offs if o + 4096 <= size]


def make_sparse(path, size: int = SIZE, pieces=None) -> list[tuple[int, bytes]]:
    pieces = layout(size) if pieces is None else pieces
    with open(path, "wb"):
        pass
    os.truncate(path, size)
    fd = os.open(path, os.O_WRONLY)
    try:
        for off, data in pieces:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)
    return pieces


def write_pieces(fd: int, size: int, pieces) -> None:
    os.ftruncate(fd, size)
    for off, data in pieces:
        os.pwrite(fd, data, off)


def stream(size: int, pieces, block: int = CHUNK):
    """The file's bytes, ``block`` at a time, built in memory (nothing read from disk)."""
    for start in range(0, size, block):
        buf = bytearray(min(block, size - start))
        for off, data in pieces:
            lo, hi = max(off, start), min(off + len(data), start + len(buf))
            if lo < hi:
                buf[lo - start:hi - start] = data[lo - off:hi - off]
        yield bytes(buf)


def reference(size: int, pieces) -> tuple[bytes, bytes | None]:
    """(BLAKE3 of the whole stream, chunk list or None), computed independently of artfs."""
    h, chunks = blake3.blake3(), []
    for block in stream(size, pieces):
        h.update(block)
        chunks.append(blake3.blake3(block).digest())
    return h.digest(), (b"".join(chunks) if size > CHUNK else None)


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def P(path: str) -> tuple:
    return tuple(path.encode().split(b"/"))


def check_content(store, e, size: int, pieces) -> None:
    """``e`` has the stream's digest and chunk list, its object is sparse, and the data reads back."""
    digest, chunks = reference(size, pieces)
    assert (e.size, e.digest) == (size, digest)
    assert e.chunks is not None and store.objects.get(e.chunks) == chunks
    obj = store.objects.path(e.digest)
    assert os.path.getsize(obj) == size
    assert allocated(obj) < SPARSE_MAX, f"object allocates {allocated(obj)} bytes: the holes were filled"
    with repo.ContentReader(store, e) as r:
        for off, data in pieces:
            assert r.read(off, len(data)) == data
        assert r.read(3 * CHUNK, 4096) == bytes(4096)


class IO:
    """Bytes moved by the syscalls that read or write file data, while ``with`` lasts."""

    def __init__(self):
        self.read = self.written = self.copied = 0
        self.mp = pytest.MonkeyPatch()

    def _count(self, name: str, counter: str, result=lambda r: r):
        real = getattr(os, name)

        def spy(*a, **k):
            r = real(*a, **k)
            setattr(self, counter, getattr(self, counter) + result(r))
            return r

        self.mp.setattr(os, name, spy)

    def __enter__(self):
        self._count("pread", "read", len)
        self._count("preadv", "read")
        self._count("pwrite", "written")
        self._count("write", "written")
        self._count("copy_file_range", "copied")
        self._count("sendfile", "copied")
        return self

    def __exit__(self, *exc):
        self.mp.undo()


# -- the hashing primitives ------------------------------------------------------------------

def test_reference_is_blake3_of_the_whole_bytes():
    size = 3 * CHUNK + 5000
    pieces = layout(size)
    whole = b"".join(stream(size, pieces))
    assert len(whole) == size
    digest, chunks = reference(size, pieces)
    assert digest == blake3.blake3(whole).digest()
    assert chunks == b"".join(blake3.blake3(whole[i:i + CHUNK]).digest() for i in range(0, size, CHUNK))


@pytest.mark.parametrize("size", [CHUNK, CHUNK + 1, 3 * CHUNK + 5000, 40 * CHUNK, SIZE])
def test_hashes_of_a_sparse_file_are_those_of_its_bytes(tmp_path, size):
    p = tmp_path / "f"
    pieces = make_sparse(p, size)
    digest, chunks = reference(size, pieces)
    fd = os.open(p, os.O_RDONLY)
    try:
        with IO() as io:
            assert hashing.hash_fd(fd) == (digest, size, chunks)
        assert io.read < SPARSE_MAX  # the holes were not read
        assert hashing.hash_own(fd) == (digest, size, chunks)  # the mmap path (large files)
        if size <= 40 * CHUNK:  # a limit short of the end
            assert hashing.hash_fd(fd, size - 100)[0] == blake3.blake3(b"".join(stream(size, pieces))[:-100]).digest()
    finally:
        os.close(fd)


def test_hasher_zeros_and_blocks_of_any_length_match_plain_hashing():
    data = bytearray(os.urandom(5 * CHUNK + 321))
    data[CHUNK // 2:3 * CHUNK + 7] = bytes(3 * CHUNK + 7 - CHUNK // 2)
    data = bytes(data)
    want = (blake3.blake3(data).digest(), len(data),
            b"".join(blake3.blake3(data[i:i + CHUNK]).digest() for i in range(0, len(data), CHUNK)))
    h = hashing.Hasher(len(data))
    h.update(data[:CHUNK // 2])
    h.update_zeros(3 * CHUNK + 7 - CHUNK // 2)
    for i in range(3 * CHUNK + 7, len(data), 777_777):
        h.update(data[i:i + 777_777])
    assert h.result() == want
    # the old contract still holds: CHUNK-aligned blocks (the scale-out store feeds those)
    h = hashing.Hasher(len(data))
    for i in range(0, len(data), 2 * CHUNK):
        h.update(data[i:i + 2 * CHUNK])
    assert h.result() == want


def test_copy_fd_copies_only_data_and_keeps_the_length(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    pieces = make_sparse(src)
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(d, b"stale bytes of an earlier life")
        with IO() as io:
            assert hashing.copy_fd(s, d, SIZE) == SIZE
        assert io.copied < SPARSE_MAX
        assert os.fstat(d).st_size == SIZE and allocated(dst) < SPARSE_MAX
        assert hashing.hash_fd(d)[0] == reference(SIZE, pieces)[0]
        # a part, from an offset; a size past the end stops at the end
        off = CHUNK - 1000
        assert hashing.copy_fd(s, d, SIZE, off) == SIZE - off
        assert hashing.hash_fd(d)[0] == blake3.blake3(b"".join(stream(SIZE, pieces, 8 * CHUNK))[off:]).digest()
    finally:
        os.close(s)
        os.close(d)


@pytest.mark.parametrize("where", ["copy_fd", "put", "export", "copy_up"])
def test_a_file_that_ends_in_a_hole_keeps_its_length(store, tmp_path, where):
    """A file whose last bytes are a hole (data, then ``truncate`` to a larger size): no byte is
    written there, so the copy's length comes from ftruncate alone -- without it an object of
    such a file would be short, its digest that of other bytes."""
    size = 4 * CHUNK + 12345
    src = tmp_path / "src"
    src.mkdir()
    pieces = [(100, os.urandom(4096)), (CHUNK + 7, os.urandom(4096))]  # all data well before the end
    make_sparse(src / "f", size, pieces)
    want = reference(size, pieces)[0]
    if where == "copy_fd":
        s = os.open(src / "f", os.O_RDONLY)
        d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert hashing.copy_fd(s, d, size) == size
            assert os.fstat(d).st_size == size and hashing.hash_fd(d)[0] == want
        finally:
            os.close(s)
            os.close(d)
        return
    v, _ = repo.put_dir(store, "ds", str(src))
    e = repo.lookup(store, v, "f")
    assert (e.size, e.digest) == (size, want)
    check_content(store, e, size, pieces)
    if where == "export":
        out = tmp_path / "out"
        repo.export(Store.open(store.path), v, str(out))  # a fresh store object: no piece cached
        fd = os.open(out / "f", os.O_RDONLY)
    elif where == "copy_up":
        d = repo.open_draft(store, "ds")
        name, sf = d.copy_up(d.lookup(P("f")))
        sf.close()
        fd = os.open(d.scratch_path(name), os.O_RDONLY)
    else:
        return
    try:
        assert os.fstat(fd).st_size == size and hashing.hash_fd(fd)[0] == want
    finally:
        os.close(fd)
    if where == "copy_up":
        d.discard()


def test_pread_sparse_equals_pread(tmp_path):
    p = tmp_path / "f"
    size = 5 * CHUNK + 123
    make_sparse(p, size)
    fd = os.open(p, os.O_RDONLY)
    try:
        for off in (0, 12000, CHUNK - 3000, CHUNK, 2 * CHUNK, size - 4000, size - 1, size, size + 5):
            for n in (0, 1, 4096, 10_000, CHUNK, 3 * CHUNK, 10 * CHUNK):
                assert hashing.pread_sparse(fd, n, off) == os.pread(fd, n, off), (off, n)
        assert hashing.pread_sparse(fd, CHUNK, 3 * CHUNK) is hashing.zeros()  # a hole: nothing read
    finally:
        os.close(fd)


def test_without_seek_data_everything_is_data(tmp_path, monkeypatch):
    """A file system that cannot tell holes (lseek SEEK_DATA: EINVAL): the same bytes and
    digests, only not sparse."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 20 * CHUNK + 5
    pieces = make_sparse(src, size)
    want = reference(size, pieces)
    real = os.lseek

    def lseek(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert hashing.hash_fd(s) == (want[0], size, want[1])
        assert hashing.copy_fd(s, d, size) == size
        assert hashing.hash_own(d) == (want[0], size, want[1])
        assert hashing.pread_sparse(s, 3 * CHUNK, CHUNK - 10) == os.pread(s, 3 * CHUNK, CHUNK - 10)
    finally:
        os.close(s)
        os.close(d)


def test_write_sparse_leaves_zero_blocks_out(tmp_path):
    p = tmp_path / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        dense = os.urandom(CHUNK)
        mixed = bytearray(CHUNK)
        mixed[5000:9000] = os.urandom(4000)  # within blocks 1 and 2 (of 4 KiB)
        mixed[-10:] = b"0123456789"
        with IO() as io:
            hashing.write_sparse(fd, bytes(CHUNK), 0)
            hashing.write_sparse(fd, dense, CHUNK)
            hashing.write_sparse(fd, bytes(mixed), 2 * CHUNK)
            hashing.write_sparse(fd, bytes(CHUNK), 3 * CHUNK)
        assert io.written == CHUNK + 3 * 4096
        os.ftruncate(fd, 4 * CHUNK)
        assert os.pread(fd, 4 * CHUNK + 1, 0) == bytes(CHUNK) + dense + bytes(mixed) + bytes(CHUNK)
        assert allocated(p) < CHUNK + 64 * 1024
    finally:
        os.close(fd)


# -- put, draft commit, status, copy-up, export -------------------------------------------------

def test_put_keeps_holes(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pieces = make_sparse(src / "big")
    with IO() as io:
        v, _ = repo.put_dir(store, "ds", str(src))
    assert io.copied < SPARSE_MAX and io.read < SPARSE_MAX
    check_content(store, repo.lookup(store, v, "big"), SIZE, pieces)


def test_draft_status_and_commit_keep_holes(store):
    d = repo.open_draft(store, "ds")
    name, sf = d.new_scratch()
    try:
        pieces = layout()
        write_pieces(sf.fd, SIZE, pieces)
        d.commit(d.plan_create(P("big"), FILE, 0o644, os.getuid(), os.getgid(), scratch=name, size=SIZE))
        with IO() as io:
            assert [(c, p) for c, p in d.status()] == [("A", (b"big",))]
            # status hashed the scratch file: its digest is the stream's, its holes were not read
            assert d.resolved(d.lookup(P("big"))).digest == reference(SIZE, pieces)[0]
        assert io.read < SPARSE_MAX
        with IO() as io:
            r = repo.commit_draft(store, d, "sparse")
            repo.finish_commit(d, r)
        assert io.copied < SPARSE_MAX and io.written < SPARSE_MAX
    finally:
        sf.close()
    v = repo.resolve(store, "ds")
    check_content(store, repo.lookup(store, v, "big"), SIZE, pieces)
    d.discard()


@pytest.mark.parametrize("source", ["stored", "scratch"])
def test_copy_up_keeps_holes(store, tmp_path, source):
    src = tmp_path / "src"
    src.mkdir()
    pieces = make_sparse(src / "big")
    repo.put_dir(store, "ds", str(src))
    d = repo.open_draft(store, "ds")
    e = d.lookup(P("big"))
    if source == "scratch":  # changed before: copied from its scratch file
        name, first = d.copy_up(e)
        first.close()
        d.commit(d.plan_setattr(P("big"), scratch=name))
        e = d.lookup(P("big"))
    with IO() as io:
        name, sf = d.copy_up(e)
    try:
        assert io.read + io.copied < SPARSE_MAX and io.written < SPARSE_MAX
        p = d.scratch_path(name)
        assert os.path.getsize(p) == SIZE and allocated(p) < SPARSE_MAX
        assert hashing.hash_fd(sf.fd)[0] == reference(SIZE, pieces)[0]
        d.commit(d.plan_setattr(P("big"), scratch=name))
    finally:
        sf.close()
    assert d.status() == []  # the same bytes as the parent's
    d.discard()


def test_export_and_refresh_recreate_holes(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pieces = make_sparse(src / "big")
    (src / "small").write_bytes(b"small\n")
    v, _ = repo.put_dir(store, "ds", str(src))
    digest = reference(SIZE, pieces)[0]
    out = tmp_path / "out"
    fresh = Store.open(store.path)  # no verified piece cached
    with IO() as io:
        assert repo.export(fresh, v, str(out)) == 2
    assert io.read < SPARSE_MAX and io.written < SPARSE_MAX
    assert os.path.getsize(out / "big") == SIZE and allocated(out / "big") < SPARSE_MAX
    fd = os.open(out / "big", os.O_RDONLY)
    try:
        assert hashing.hash_fd(fd)[0] == digest
    finally:
        os.close(fd)
    assert (out / "small").read_bytes() == b"small\n"
    # refresh: a wrong file is written anew (sparse), a right one kept
    os.truncate(out / "big", SIZE - 1)
    got = materialize.refresh(fresh, v, str(out))
    assert (got["written"], got["kept"]) == (1, 1)
    assert allocated(out / "big") < SPARSE_MAX
    fd = os.open(out / "big", os.O_RDONLY)
    try:
        assert hashing.hash_fd(fd) == (digest, SIZE, reference(SIZE, pieces)[1])
    finally:
        os.close(fd)
    assert materialize.refresh(fresh, v, str(out))["kept"] == 2
    fresh.meta.close()


def test_a_sparse_object_is_still_verified(store, tmp_path):
    """Data written into a hole of an object, or a hole where data was: the piece fails."""
    src = tmp_path / "src"
    src.mkdir()
    pieces = make_sparse(src / "big")
    v, _ = repo.put_dir(store, "ds", str(src))
    e = repo.lookup(store, v, "big")
    obj = store.objects.path(e.digest)
    off, data = pieces[2]  # 7 * CHUNK + 4095: spans pieces 7 and 8
    fd = os.open(obj, os.O_WRONLY)
    try:
        for where, bad, good in ((50 * CHUNK + 10, b"\1", b"\0"), (off, bytes(len(data)), data)):
            os.pwrite(fd, bad, where)
            fresh = Store.open(store.path)
            with repo.ContentReader(fresh, e) as r, pytest.raises(Corrupt):
                r.read(where, len(bad))
            fresh.meta.close()
            os.pwrite(fd, good, where)  # healed: the store fixture's fsck must pass
    finally:
        os.close(fd)


# -- through a mount -------------------------------------------------------------------------

@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(300)
def test_sparse_file_through_a_draft_mount(mstore, tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "a.txt").write_text("alpha\n")
    artfs(mstore, "put", "ds", seed)
    local = tmp_path / "local"
    writes = "; ".join(f"printf '%s' {tag} | dd of={{f}} bs=1 seek={off} conv=notrunc status=none"
                       for tag, off in (("first", 12345), ("across", CHUNK - 3), ("middle", 700 * CHUNK + 1),
                                        ("last", (1 << 30) - 4)))
    sh(f"truncate -s 1G {local}; " + writes.format(f=local))
    with Mounted(mstore, "ds:draft", tmp_path / "d") as m:
        f = m.path("f")
        sh(f"truncate -s 1G {f}; " + writes.format(f=f))
        assert m.status() == ["A f"]
        assert m.commit("sparse") == "ds:v1"
    s = Store.open(mstore)
    try:
        e = repo.lookup(s, repo.resolve(s, "ds:v1"), "f")
        obj = s.objects.path(e.digest)
        assert os.path.getsize(obj) == 1 << 30 and allocated(obj) < SPARSE_MAX
        fd = os.open(local, os.O_RDONLY)
        try:
            assert hashing.hash_fd(fd)[0] == e.digest
        finally:
            os.close(fd)
    finally:
        s.meta.close()
    with Mounted(mstore, "ds:v1", tmp_path / "ro") as ro:
        sh(f"cmp {ro.path('f')} {local}")
        with open(ro.path("a.txt")) as f:
            assert f.read() == "alpha\n"


# -- measurement (opt-in) ----------------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("ARTFS_SPARSE_BENCH"), reason="set ARTFS_SPARSE_BENCH=1 (prints times)")
@pytest.mark.timeout(1200)
def test_measure_5gib_sparse(store, tmp_path):
    size = 5 << 30
    pieces = layout(size)
    times = {}
    d = repo.open_draft(store, "draft")
    name, sf = d.new_scratch()
    write_pieces(sf.fd, size, pieces)
    d.commit(d.plan_create(P("big"), FILE, 0o644, os.getuid(), os.getgid(), scratch=name, size=size))
    t = time.perf_counter()
    d.status()
    times["status"] = time.perf_counter() - t
    t = time.perf_counter()
    repo.finish_commit(d, repo.commit_draft(store, d, "big"))
    times["commit"] = time.perf_counter() - t
    sf.close()
    d.discard()
    src = tmp_path / "src"
    src.mkdir()
    make_sparse(src / "big", size, pieces)
    env = {k: v for k, v in os.environ.items() if k not in ("ARTFS_STORE", "ARTFS_PROGRESS")}
    cli = [sys.executable, "-m", "artfs.cli", "--store", store.path]
    t = time.perf_counter()
    subprocess.run(cli + ["put", "ds", str(src)], check=True, capture_output=True, env=env)
    times["put (CLI)"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(cli + ["export", "ds", str(tmp_path / "out")], check=True, capture_output=True, env=env)
    times["export (CLI)"] = time.perf_counter() - t
    e = repo.lookup(store, repo.resolve(store, "ds"), "big")
    print(f"\n5 GiB sparse file ({len(pieces)} pieces of 4 KiB): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
          + f"; object allocates {allocated(store.objects.path(e.digest))} B, "
          f"export {allocated(tmp_path / 'out' / 'big')} B")
