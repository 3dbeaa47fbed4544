"""Scratch files made ahead (``artfs.fuse.scratch_pool``), through the ``Operations`` layer.

What must hold: a file created from a pooled scratch file is indistinguishable
from one whose scratch file was made on the spot (empty, its times now, its
bytes its own); the unused files go at unmount, and after a crash the next
owner of the draft removes them; a create that fails leaves its pooled file
behind nowhere.
"""
from __future__ import annotations

import errno
import os
import time
import types

import pyfuse3
import pytest
import trio

from artfs import repo
from artfs.fuse import scratch_pool as pool_mod
from artfs.fuse.draft_vfs import DraftVFS
from artfs.fuse.ops import Operations
from artfs.fuse.vfs import ROOT_INO

CTX = types.SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


def draft_ops(store, name: str = "ds") -> Operations:
    d = repo.open_draft(store, name)
    d.prepare_for_writing()
    return Operations(DraftVFS(store, d))


async def filled(ops: Operations) -> None:
    """Until the batch being made (if any) is in the pool."""
    while ops.scratch_pool.filling:
        await trio.sleep(0)


async def create(ops: Operations, name: bytes, data: bytes) -> int:
    fi, attr = await ops.create(ROOT_INO, name, 0o644, os.O_WRONLY, CTX)
    try:
        await ops.write(fi.fh, 0, data)
    finally:
        await ops.release(fi.fh)
    return attr.st_ino


async def unmount(ops: Operations) -> None:
    await trio.to_thread.run_sync(ops.vfs.store.meta.durable)
    await trio.to_thread.run_sync(ops.vfs.draft.flush_dead)
    ops.scratch_pool.discard_blocking()


def test_files_created_from_pooled_scratch_files_are_like_any_other(store):
    start_ns = time.time_ns()

    async def main():
        async with trio.open_nursery() as nursery:
            ops = draft_ops(store)
            ops.start(nursery)
            pool = ops.scratch_pool
            await create(ops, b"first", b"made on the spot")  # the pool starts empty ...
            await filled(ops)
            assert len(pool.names) == pool_mod.BATCH  # ... and the first create fills it
            d = ops.vfs.draft
            for name in pool.names:  # made long ago, as far as their times say
                os.utime(d.scratch_path(name), ns=(0, 0))
                assert os.stat(d.scratch_path(name)).st_size == 0
            taken = pool.names[-1]
            ino = await create(ops, b"second", b"from the pool")
            attr = await ops.getattr(ino, CTX)
            assert attr.st_size == len(b"from the pool")
            for t in (attr.st_mtime_ns, attr.st_ctime_ns, attr.st_atime_ns):
                assert t >= start_ns, "a created file has the time of its creation, not of its scratch file's"
            entry = d.lookup((b"second",))
            assert entry.scratch == taken, "the pooled file became the new file's scratch file"
            with open(d.scratch_path(taken), "rb") as f:
                assert f.read() == b"from the pool"

            # many more creates than a batch: every file keeps its own bytes
            for i in range(2 * pool_mod.BATCH):
                await create(ops, f"f{i:04d}".encode(), f"bytes of {i}".encode())
                if i % 50 == 0:
                    await filled(ops)
            await filled(ops)
            unused = list(pool.names)
            assert unused
            await unmount(ops)
            assert not any(os.path.exists(d.scratch_path(n)) for n in unused), "unmount removes the unused ones"
            assert sorted(os.listdir(d.scratch_dir)) == sorted(d.referenced_scratch())
            nursery.cancel_scope.cancel()

    trio.run(main)
    d = repo.open_draft(store, "ds")  # as the next mount sees it
    for i in range(2 * pool_mod.BATCH):
        with open(d.scratch_path(d.lookup((f"f{i:04d}".encode(),)).scratch), "rb") as f:
            assert f.read() == f"bytes of {i}".encode()


def test_the_next_owner_removes_pooled_files_a_crash_left(store):
    d = repo.open_draft(store, "ds")
    d.prepare_for_writing()
    left = d.make_empty_scratch(5)  # a daemon made these, then was killed
    assert all(os.path.exists(d.scratch_path(n)) for n in left)
    again = repo.open_draft(store, "ds")
    again.prepare_for_writing()
    assert not any(os.path.exists(again.scratch_path(n)) for n in left)


def with_a_filled_pool(store, body) -> None:
    """Run ``await body(ops)`` on a draft whose pool was filled by a first create; unmount after."""

    async def main():
        async with trio.open_nursery() as nursery:
            ops = draft_ops(store)
            ops.start(nursery)
            await create(ops, b"first", b"x")
            await filled(ops)
            await body(ops)
            await unmount(ops)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_create_that_fails_leaves_no_pooled_file(store, monkeypatch):
    async def body(ops):
        d = ops.vfs.draft
        taken = ops.scratch_pool.names[-1]

        def broken(*a, **k):
            raise OSError(errno.EIO, "metadata write failed")

        monkeypatch.setattr(d.meta, "draft_apply", broken)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.create(ROOT_INO, b"second", 0o644, os.O_WRONLY, CTX)
        assert ei.value.errno == errno.EIO
        monkeypatch.undo()
        assert not os.path.exists(d.scratch_path(taken)), "the failed create's scratch file is gone"
        assert taken not in ops.scratch_pool.names

    with_a_filled_pool(store, body)


def test_a_create_refused_before_its_file_is_used_gives_it_back(store):
    async def body(ops):
        before = list(ops.scratch_pool.names)
        with pytest.raises(pyfuse3.FUSEError) as ei:  # the name exists: refused while planning
            await ops.create(ROOT_INO, b"first", 0o644, os.O_WRONLY, CTX)
        assert ei.value.errno == errno.EEXIST
        assert sorted(ops.scratch_pool.names) == sorted(before), "the file it took is back in the pool"

    with_a_filled_pool(store, body)
    d = repo.open_draft(store, "ds")
    assert sorted(os.listdir(d.scratch_dir)) == sorted(d.referenced_scratch())


def test_making_files_ahead_that_fails_is_not_fatal(store, monkeypatch):
    """A batch that cannot be made (a full disk, no thread) leaves creates to make their own files."""

    async def main():
        async with trio.open_nursery() as nursery:
            ops = draft_ops(store)
            ops.start(nursery)

            def broken(n):
                raise RuntimeError("can't start new thread")

            monkeypatch.setattr(ops.vfs.draft, "make_empty_scratch", broken)
            for i in range(5):
                await create(ops, f"f{i}".encode(), b"data")
                await filled(ops)
            assert not ops.scratch_pool.names
            d = ops.vfs.draft
            for i in range(5):
                with open(d.scratch_path(d.lookup((f"f{i}".encode(),)).scratch), "rb") as f:
                    assert f.read() == b"data"
            await unmount(ops)
            nursery.cancel_scope.cancel()

    trio.run(main)
