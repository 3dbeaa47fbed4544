"""Read-ahead (``artfs.fuse.readahead``) through the ``Operations`` layer, without a kernel.

What must hold: files read ahead are served from memory without a worker-thread
trip and are byte for byte the stored ones; a damaged object is never served
because it was read ahead (its own open is still EIO); a big file is read
ahead only while it is read sequentially; and nothing is read ahead of a
reference.  The pace of read-ahead is a benchmark matter (``scripts/bench``,
section mount-read), not asserted here.
"""
from __future__ import annotations

import errno
import os
import types

import pyfuse3
import pytest
import trio
import trio.testing

from artfs import repo
from artfs.fuse import readahead as ra_mod
from artfs.fuse.ops import Operations
from artfs.fuse.vfs import ROOT_INO, VersionVFS
from artfs.repo import content
from artfs.storage.format import CHUNK
from artfs.storage.hashing import digest as blake

CTX = types.SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)
NFILES = 100


@pytest.fixture(autouse=True)
def empty_piece_cache():
    """The cache of verified pieces is per process: start and end each test with it empty."""
    content._pieces.items.clear()
    content._pieces.used = 0
    yield
    content._pieces.items.clear()
    content._pieces.used = 0


@pytest.fixture
def local_only(backend):
    if backend != "local":
        pytest.skip("damages an object file of the local store")


def small_files() -> dict[str, bytes]:
    return {f"d/f{i:03d}": os.urandom(100 + 37 * i) for i in range(NFILES)}


def run(afn):
    """Run ``afn(nursery)`` under trio's autojump clock with read-ahead started in ``nursery``."""

    async def body():
        async with trio.open_nursery() as nursery:
            await afn(nursery)

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def version_ops(store, ref: str, nursery) -> Operations:
    ops = Operations(VersionVFS(store, repo.resolve(store, ref)))
    ops.readahead.start(nursery)
    return ops


async def settled(ops: Operations) -> None:
    """Until every read-ahead under way has finished."""
    while ops.readahead.inflight:
        await next(iter(ops.readahead.inflight.values())).wait()


async def ino_of(ops: Operations, *path: bytes) -> int:
    ino = ROOT_INO
    for name in path:
        ino = (await ops.lookup(ino, name, CTX)).st_ino
    return ino


async def read_whole(ops: Operations, ino: int, step: int = 1 << 20) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        parts, off = [], 0
        while True:
            b = bytes(await ops.read(fi.fh, off, step))
            if not b:
                return b"".join(parts)
            parts.append(b)
            off += len(b)
    finally:
        await ops.release(fi.fh)


def cached(store, ref: str, path: str) -> bool:
    e = repo.lookup(store, repo.resolve(store, ref), path)
    return content.read_cached(e, 0, e.size) is not None


def test_opening_a_file_reads_the_next_small_files_of_its_directory_ahead(store, tmp_path, mktree, monkeypatch):
    files = small_files()
    repo.put_dir(store, "ds", mktree(tmp_path / "src", files))

    async def main(nursery):
        ops = version_ops(store, "ds:v0", nursery)
        assert await read_whole(ops, await ino_of(ops, b"d", b"f000")) == files["d/f000"]
        await settled(ops)
        ahead = [cached(store, "ds:v0", f"d/f{i:03d}") for i in range(NFILES)]
        window = ra_mod.FILE_WINDOW
        assert ahead[1:1 + window] == [True] * window, "the next FILE_WINDOW files were read ahead"
        assert not any(ahead[1 + window:]), "and no more than that"

        # what was read ahead is served without a worker-thread trip, and is the stored bytes
        def no_thread(*a):
            raise AssertionError("a file read ahead went to a worker thread")

        monkeypatch.setattr(ops.vfs, "open_stored_blocking", no_thread)
        for i in range(1, 1 + window):
            assert await read_whole(ops, await ino_of(ops, b"d", f"f{i:03d}".encode())) == files[f"d/f{i:03d}"]
        monkeypatch.undo()
        # reading on keeps the window moving: every file comes back right
        for i in range(1 + window, NFILES):
            assert await read_whole(ops, await ino_of(ops, b"d", f"f{i:03d}".encode())) == files[f"d/f{i:03d}"]
        await settled(ops)

    run(main)


def test_a_damaged_object_is_not_served_because_it_was_read_ahead(store, tmp_path, mktree, local_only, caplog):
    files = small_files()
    repo.put_dir(store, "ds", mktree(tmp_path / "src", files))
    victim = store.objects.path(blake(files["d/f005"]))
    os.chmod(victim, 0o600)
    with open(victim, "r+b") as f:
        f.write(b"\xff" if files["d/f005"][:1] != b"\xff" else b"\x00")

    async def main(nursery):
        ops = version_ops(store, "ds:v0", nursery)
        assert await read_whole(ops, await ino_of(ops, b"d", b"f000")) == files["d/f000"]
        await settled(ops)
        assert not cached(store, "ds:v0", "d/f005"), "a piece that misses its digest never enters the cache"
        assert cached(store, "ds:v0", "d/f006")
        ino = await ino_of(ops, b"d", b"f005")
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.open(ino, os.O_RDONLY, CTX)
        assert ei.value.errno == errno.EIO
        for i in (4, 6):
            assert await read_whole(ops, await ino_of(ops, b"d", f"f{i:03d}".encode())) == files[f"d/f{i:03d}"]

    run(main)
    os.chmod(victim, 0o600)
    with open(victim, "r+b") as f:  # mend it, for the store fixture's fsck
        f.write(files["d/f005"][:1])


def test_a_big_file_is_read_ahead_only_while_it_is_read_in_order(store, tmp_path, mktree):
    big = os.urandom(9 * CHUNK + 12345)
    repo.put_dir(store, "big", mktree(tmp_path / "src", {"big.bin": big}))

    async def main(nursery):
        ops = version_ops(store, "big:v0", nursery)
        ra = ops.readahead
        ino = await ino_of(ops, b"big.bin")
        e = repo.lookup(store, repo.resolve(store, "big:v0"), "big.bin")

        # jumping around: nothing is read ahead
        fi = await ops.open(ino, os.O_RDONLY, CTX)
        for off in (8 * CHUNK, CHUNK + 7, 6 * CHUNK):  # further apart than SEQ_SLACK
            assert bytes(await ops.read(fi.fh, off, 4096)) == big[off:off + 4096]
            assert not ra.inflight
        await ops.release(fi.fh)
        assert [content.read_cached(e, i * CHUNK, 1) is not None for i in range(10)] == \
            [False, True, False, False, False, False, True, False, True, False], "only the pieces read"

        # in order: the pieces after the one read are read ahead, and the bytes are right
        fi = await ops.open(ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 128 << 10)) == big[:128 << 10]
        await settled(ops)
        assert [content.read_cached(e, i * CHUNK, 1) is not None for i in range(10)] == \
            [True] * 5 + [False, True, False, True, False], "pieces 1..PIECE_WINDOW after piece 0 were read ahead"
        got, off = [big[:128 << 10]], 128 << 10
        while off < len(big):
            b = bytes(await ops.read(fi.fh, off, 128 << 10))
            got.append(b)
            off += len(b)
        await ops.release(fi.fh)
        assert b"".join(got) == big
        await settled(ops)

    run(main)


def test_reads_that_straddle_pieces_give_the_stored_bytes(store, tmp_path, mktree):
    """A read that spans pieces (the kernel's read-ahead is not aligned to them) is put together
    from views of the pieces: from the reader and from the cache of verified pieces alike, the
    bytes are the stored ones at every offset and size around a boundary."""
    big = os.urandom(3 * CHUNK + 999)
    repo.put_dir(store, "big", mktree(tmp_path / "src", {"big.bin": big}))
    e = repo.lookup(store, repo.resolve(store, "big:v0"), "big.bin")
    cases = [(off, size) for base in (0, CHUNK, 2 * CHUNK, 3 * CHUNK) for off in (base - 7, base, base + 3)
             for size in (1, 10, CHUNK, CHUNK + 20, 2 * CHUNK + 1, 4 * CHUNK) if off >= 0]
    assert all(content.read_cached(e, off, size) is None for off, size in cases if size > 0)  # nothing cached yet
    with content.ContentReader(store, e) as r:
        for off, size in cases:
            got = r.read(off, size)
            assert type(got) is bytes and got == big[off:off + size], (off, size)
    for off, size in cases:  # every piece is in the cache now
        got = content.read_cached(e, off, size)
        assert type(got) is bytes and got == big[off:off + size], (off, size)


def test_a_cached_piece_shorter_than_the_entry_expects_is_not_served(store, tmp_path, mktree):
    """Pieces are cached by (content digest, index); an entry that understates its size would
    cache a short last piece under the key a true entry of that content uses.  A hit of the
    wrong length is read again, not served."""
    big = os.urandom(2 * CHUNK + 500)
    repo.put_dir(store, "big", mktree(tmp_path / "src", {"big.bin": big}))
    e = repo.lookup(store, repo.resolve(store, "big:v0"), "big.bin")
    content._pieces.put((e.digest, 2), big[2 * CHUNK:2 * CHUNK + 100])  # as a misstated entry would
    assert content.read_cached(e, 2 * CHUNK, 500) is None
    with content.ContentReader(store, e) as r:
        assert r.read(0, len(big)) == big


def test_without_start_nothing_is_read_ahead(store, tmp_path, mktree):
    """The ``Operations`` of tests (and of anything that does not start it) read only what is asked."""
    files = small_files()
    repo.put_dir(store, "ds", mktree(tmp_path / "src", files))

    async def main(nursery):
        ops = Operations(VersionVFS(store, repo.resolve(store, "ds:v0")))
        assert await read_whole(ops, await ino_of(ops, b"d", b"f000")) == files["d/f000"]
        assert not ops.readahead.inflight
        assert not cached(store, "ds:v0", "d/f001")

    run(main)


def test_a_second_walk_of_a_directory_is_read_ahead_again(store, tmp_path, mktree, monkeypatch):
    """Once the cache has dropped them, walking the directory again (a second tar, rsync) reads
    ahead again: read-ahead follows the walk, not what it scheduled once."""
    files = small_files()
    repo.put_dir(store, "ds", mktree(tmp_path / "src", files))

    async def main(nursery):
        ops = version_ops(store, "ds:v0", nursery)
        for i in range(NFILES):
            assert await read_whole(ops, await ino_of(ops, b"d", f"f{i:03d}".encode())) == files[f"d/f{i:03d}"]
        await settled(ops)
        content._pieces.items.clear()  # evicted meanwhile
        content._pieces.used = 0
        assert await read_whole(ops, await ino_of(ops, b"d", b"f000")) == files["d/f000"]
        await settled(ops)
        assert all(cached(store, "ds:v0", f"d/f{i:03d}") for i in range(1, 1 + ra_mod.FILE_WINDOW))

    run(main)


def test_read_ahead_that_cannot_run_is_dropped_not_fatal(store, tmp_path, mktree, monkeypatch):
    """A background task's exception would end the mount: read-ahead that fails in any way (no
    thread to be had, say) is dropped, and the program's own reads go on."""
    files = small_files()
    repo.put_dir(store, "ds", mktree(tmp_path / "src", files))

    async def main(nursery):
        ops = version_ops(store, "ds:v0", nursery)

        def no_thread(pieces):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(ops.readahead, "_read_blocking", no_thread)
        for i in range(NFILES):
            assert await read_whole(ops, await ino_of(ops, b"d", f"f{i:03d}".encode())) == files[f"d/f{i:03d}"]
        await settled(ops)

    run(main)


def test_no_piece_read_ahead_where_the_store_reads_ahead_itself(store, tmp_path, mktree, monkeypatch):
    """The scale-out store's reader fetches the spans after a sequential reader's; a reader per
    piece here would fetch each span again (a cold 1 GiB read took 2.5× as long)."""
    big = os.urandom(6 * CHUNK)
    repo.put_dir(store, "big", mktree(tmp_path / "src", {"big.bin": big}))
    monkeypatch.setattr(type(store.objects), "reads_ahead", True, raising=False)

    async def main(nursery):
        ops = version_ops(store, "big:v0", nursery)
        ino = await ino_of(ops, b"big.bin")
        fi = await ops.open(ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 128 << 10)) == big[:128 << 10]
        await settled(ops)
        e = repo.lookup(store, repo.resolve(store, "big:v0"), "big.bin")
        assert [content.read_cached(e, i * CHUNK, 1) is not None for i in range(6)] == [True] + [False] * 5
        await ops.release(fi.fh)

    run(main)
