"""The FUSE ``Operations`` layer, driven directly under trio's test clock: no kernel, no mount.

borg's habit (errno mapping tested without a mount) and S3QL's t3 tier (the
file system API called directly): every handler is an ``async`` method, so a
test calls it as the kernel would, with pyfuse3's own value objects, over a
real temporary store.  Where a behaviour must be forced -- a commit that
blocks until the test lets it go, a commit or a metadata transaction that
fails -- the repo service is replaced by a fake that waits on a trio event or
raises.  Ordering is forced with trio events and ``wait_all_tasks_blocked``;
there are no sleeps and no wall-clock timing (``MockClock`` jumps whenever
every task waits, so a ``fail_after`` around code that must not block turns
a deadlock into an immediate failure).

``pyfuse3.readdir_reply`` needs a kernel token, so a fake records the
entries and accepts or refuses them as the test says; the kernel
invalidation calls are recorded instead of sent.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import types

import pyfuse3
import pytest
import trio
import trio.testing

from artfs import errors, repo
from artfs.fuse import ops as ops_mod
from artfs.fuse.draft_vfs import DraftVFS
from artfs.fuse.ops import CTL_DIR, CTL_FILES, Gate, Operations, errno_of, fuse_handler
from artfs.fuse.vfs import ROOT_INO, VersionVFS
from artfs.storage.store import Store

CTX = types.SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)
COMMIT, STATUS, REF = CTL_FILES[b"commit"], CTL_FILES[b"status"], CTL_FILES[b"ref"]


_MOUNTED: list = []  # every Operations draft_ops made in the current run


def run(afn, *args):
    """Run one test body under trio with an autojump clock (virtual time, no real waiting);
    then end every draft "mount" it made as the daemon does when it unmounts."""

    async def body():
        try:
            return await afn(*args)
        finally:
            mounted, _MOUNTED[:] = list(_MOUNTED), []
            for ops in mounted:
                await unmount(ops)

    return trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


async def unmount(ops) -> None:
    """What the kernel and the daemon do at unmount: release every handle, make the last
    changes durable, delete the scratch files they replaced (daemon.serve's final sync)."""
    for fh in list(ops.vfs.handles):
        await ops.release(fh)
    d = ops.vfs.draft
    await trio.to_thread.run_sync(ops.vfs.store.meta.durable)
    await trio.to_thread.run_sync(d.flush_dead)


def fields(**kw) -> types.SimpleNamespace:
    """A SetattrFields look-alike (pyfuse3's own cannot be set from Python)."""
    base = dict(update_size=False, update_mode=False, update_uid=False, update_gid=False, update_mtime=False,
                update_atime=False, update_ctime=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


def attrs(**kw) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    for k, v in kw.items():
        setattr(a, k, v)
    return a


class Replies:
    """A fake ``pyfuse3.readdir_reply``: accepts ``budget`` entries, then refuses (returns False)."""

    def __init__(self, budget: int = 1 << 30):
        self.budget = budget
        self.accepted: list[tuple[bytes, int, int]] = []  # (name, st_ino, next_id)
        self.refused: list[bytes] = []

    def __call__(self, token, name, attr, next_id):
        assert token == "TOKEN"
        if self.budget <= 0:
            self.refused.append(bytes(name))
            return False
        self.budget -= 1
        self.accepted.append((bytes(name), attr.st_ino, next_id))
        return True


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    """Nothing here may reach a kernel: readdir replies and invalidations are faked."""
    sent = []

    def refuse(*a, **k):
        raise AssertionError("readdir_reply called without a fake (use the `replies` fixture)")

    monkeypatch.setattr(pyfuse3, "readdir_reply", refuse)
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", lambda *a, **k: sent.append(("entry", a)))
    monkeypatch.setattr(pyfuse3, "invalidate_entry", lambda *a, **k: sent.append(("entry", a)))
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda *a, **k: sent.append(("inode", a)))
    return sent


@pytest.fixture
def replies(monkeypatch):
    r = Replies()
    monkeypatch.setattr(pyfuse3, "readdir_reply", r)
    return r


SEED = {"b": b"bee\n", "d/c": b"sea\n", "e/": None, "f": b"old\n", "g": b"gee\n"}


@pytest.fixture
def seeded(store, tmp_path, mktree):
    """A store with ds:v0 = SEED."""
    repo.put_dir(store, "ds", mktree(tmp_path / "seed", SEED))
    return store


def draft_ops(store, name: str = "ds") -> Operations:
    """What the mount daemon builds for NAME:draft (call inside trio)."""
    d = repo.open_draft(store, name)
    d.prepare_for_writing()
    ops = Operations(DraftVFS(store, d))
    _MOUNTED.append(ops)
    return ops


async def fuse_errno(coro) -> int:
    with pytest.raises(pyfuse3.FUSEError) as ei:
        await coro
    return ei.value.errno


async def read_ctl(ops: Operations, ino: int) -> str:
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        return (await ops.read(fi.fh, 0, 1 << 16)).decode()
    finally:
        await ops.release(fi.fh)


async def write_ctl(ops: Operations, ino: int, text: bytes) -> int:
    fi = await ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
    try:
        assert fi.direct_io, "a control file is written with direct_io, so its errno reaches the writer"
        await ops.setattr(ino, attrs(st_size=0), fields(update_size=True), fi.fh, CTX)  # `>` truncates first
        return await ops.write(fi.fh, 0, text)
    finally:
        await ops.release(fi.fh)


async def read_file(ops: Operations, ino: int) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(fi.fh, 0, 1 << 20)
    finally:
        await ops.release(fi.fh)


def version_bytes(store, ref: str, path: str) -> bytes:
    return repo.read_all(store, repo.lookup(store, repo.resolve(store, ref), path))


def version_paths(store, ref: str) -> list[str]:
    return [b"/".join(p).decode() for p, _ in repo.walk(store, repo.resolve(store, ref).root)]


def status(ops: Operations) -> list[str]:
    return [f"{code} {b'/'.join(p).decode()}" for code, p in ops.vfs.draft.status()]


# -- errno mapping ---------------------------------------------------------------------------------------

EXPECTED_ERRNO = {
    errors.ArtfsError: errno.EIO,
    errors.BadInput: errno.EINVAL,
    errors.NotFound: errno.ENOENT,
    errors.StoreMissing: errno.EIO,
    errors.ReadOnly: errno.EROFS,
    errors.NotPermitted: errno.EPERM,
    errors.Exists: errno.EEXIST,
    errors.NotEmpty: errno.ENOTEMPTY,
    errors.NotADirectory: errno.ENOTDIR,
    errors.IsADirectory: errno.EISDIR,
    errors.NoSpace: errno.ENOSPC,
    errors.Conflict: errno.EBUSY,
    errors.Busy: errno.EBUSY,
    errors.Finished: errno.EBUSY,
    errors.Stale: errno.EBUSY,
    errors.Corrupt: errno.EIO,
    errors.ReferenceChanged: errno.EIO,
    errors.SchemaMismatch: errno.EIO,
}


def test_every_domain_error_class_has_an_expected_errno():
    """A new error class in artfs.errors must be given its errno here (and in ops._ERRNO)."""
    classes = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.ArtfsError)}
    assert classes == set(EXPECTED_ERRNO)


@pytest.mark.parametrize("cls", sorted(EXPECTED_ERRNO, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_errno_of_domain_errors(cls):
    assert errno_of(cls("why")) == EXPECTED_ERRNO[cls]


def test_errno_of_other_exceptions():
    assert errno_of(OSError(errno.EACCES, "denied")) == errno.EACCES
    assert errno_of(PermissionError(errno.EPERM, "no")) == errno.EPERM
    assert errno_of(OSError("no errno")) == errno.EIO
    assert errno_of(RuntimeError("bug")) == errno.EIO
    assert errno_of(KeyError("bug")) == errno.EIO


class _Handlers:
    """Something with a ``@fuse_handler`` method that raises what it is given."""

    @fuse_handler
    async def handle(self, inode, name, exc):
        if exc is None:
            await trio.sleep_forever()
        raise exc


@pytest.mark.parametrize("exc, want, logged", [
    (errors.NotFound("gone"), errno.ENOENT, False),
    (errors.Exists("there"), errno.EEXIST, False),
    (errors.NotEmpty("full"), errno.ENOTEMPTY, False),
    (errors.NotADirectory("file"), errno.ENOTDIR, False),
    (errors.IsADirectory("dir"), errno.EISDIR, False),
    (errors.NotPermitted("no"), errno.EPERM, False),
    (errors.ReadOnly("ro"), errno.EROFS, False),
    (errors.NoSpace("full disk"), errno.ENOSPC, True),
    (errors.Corrupt("bad object"), errno.EIO, True),
    (errors.Conflict("both changed"), errno.EBUSY, False),
    (errors.BadInput("bad"), errno.EINVAL, False),
    (OSError(errno.EACCES, "denied"), errno.EACCES, False),
    (OSError(errno.EIO, "disk"), errno.EIO, True),
    (OSError(errno.ENOSPC, "disk full"), errno.ENOSPC, True),
], ids=lambda x: type(x).__name__ if isinstance(x, BaseException) else str(x))
def test_fuse_handler_turns_errors_into_errnos(caplog, exc, want, logged):
    caplog.set_level(logging.DEBUG, logger="artfs.fuse")

    async def main():
        return await fuse_errno(_Handlers().handle(7, b"name", exc))

    assert run(main) == want
    errs = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errs) == logged, [r.getMessage() for r in caplog.records]
    if logged:
        assert str(exc) in errs[0].getMessage() and "handle" in errs[0].getMessage()


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyError("k"), ZeroDivisionError(), AssertionError("x")],
                         ids=lambda x: type(x).__name__)
def test_fuse_handler_turns_unexpected_exceptions_into_eio_and_logs_them(caplog, exc):
    async def main():
        return await fuse_errno(_Handlers().handle(7, b"name", exc))

    assert run(main) == errno.EIO
    [rec] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "unexpected error in handle" in rec.getMessage()
    assert rec.exc_info and rec.exc_info[1] is exc  # with its traceback


def test_fuse_handler_passes_fuse_errors_and_cancellation_through():
    async def main():
        err = pyfuse3.FUSEError(errno.ENODATA)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await _Handlers().handle(1, b"x", err)
        assert ei.value is err
        # trio's Cancelled is a BaseException: a cancelled handler is cancelled, not EIO
        with trio.move_on_after(1) as scope:
            await _Handlers().handle(1, b"x", None)
        assert scope.cancelled_caught

    run(main)


def test_errnos_of_a_draft(seeded, caplog):
    async def main():
        ops = draft_ops(seeded)
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        e = (await ops.lookup(ROOT_INO, b"e", CTX)).st_ino
        d = (await ops.lookup(ROOT_INO, b"d", CTX)).st_ino
        assert await fuse_errno(ops.lookup(ROOT_INO, b"nope", CTX)) == errno.ENOENT
        assert await fuse_errno(ops.lookup(b, b"x", CTX)) == errno.ENOTDIR
        assert await fuse_errno(ops.mkdir(ROOT_INO, b"e", 0o755, CTX)) == errno.EEXIST
        assert await fuse_errno(ops.create(ROOT_INO, b"b", 0o644, os.O_WRONLY, CTX)) == errno.EEXIST
        assert await fuse_errno(ops.rmdir(ROOT_INO, b"d", CTX)) == errno.ENOTEMPTY
        assert await fuse_errno(ops.rmdir(ROOT_INO, b"b", CTX)) == errno.ENOTDIR
        assert await fuse_errno(ops.unlink(ROOT_INO, b"e", CTX)) == errno.EISDIR
        assert await fuse_errno(ops.unlink(ROOT_INO, b"nope", CTX)) == errno.ENOENT
        assert await fuse_errno(ops.open(e, os.O_RDONLY, CTX)) == errno.EISDIR
        assert await fuse_errno(ops.link(d, ROOT_INO, b"dlink", CTX)) == errno.EPERM
        assert await fuse_errno(ops.readlink(b, CTX)) == errno.EINVAL
        assert await fuse_errno(ops.getxattr(b, b"user.none", CTX)) == errno.ENODATA
        assert await fuse_errno(ops.lookup(ROOT_INO, b"x" * 256, CTX)) == errno.ENAMETOOLONG
        assert await fuse_errno(ops.mkdir(ROOT_INO, b"x" * 256, 0o755, CTX)) == errno.ENAMETOOLONG
        assert await fuse_errno(ops.getattr(12345678, CTX)) == errno.ENOENT  # a stale inode
        assert await fuse_errno(ops.rename(ROOT_INO, b"b", ROOT_INO, b"e", 0, CTX)) in (errno.EISDIR, errno.EEXIST)
        # the control directory is reserved
        assert await fuse_errno(ops.mkdir(ROOT_INO, b".artfs", 0o755, CTX)) == errno.EPERM
        assert await fuse_errno(ops.create(CTL_DIR, b"x", 0o644, os.O_WRONLY, CTX)) == errno.EPERM
        assert await fuse_errno(ops.rename(ROOT_INO, b"b", ROOT_INO, b".artfs", 0, CTX)) == errno.EPERM
        assert await fuse_errno(ops.unlink(CTL_DIR, b"commit", CTX)) == errno.EPERM
        assert await fuse_errno(ops.setxattr(COMMIT, b"user.x", b"1", CTX)) == errno.EPERM
        assert await fuse_errno(ops.lookup(CTL_DIR, b"finish", CTX)) == errno.ENOENT  # no collaborative id
        assert await fuse_errno(ops.open(STATUS, os.O_WRONLY, CTX)) == errno.EACCES
        assert await fuse_errno(ops.open(CTL_DIR, os.O_RDONLY, CTX)) == errno.EISDIR
        # nothing above changed the draft
        assert status(ops) == []

    run(main)
    # none of these is unexpected: nothing was logged as an error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unexpected_error_in_a_real_handler_is_eio_and_logged(seeded, caplog, monkeypatch):
    async def main():
        ops = draft_ops(seeded)

        def broken(*a):
            raise RuntimeError("a bug in the model")

        monkeypatch.setattr(ops.vfs, "listdir", broken)
        dh = await ops.opendir(ROOT_INO, CTX)
        assert await fuse_errno(ops.readdir(dh, 0, "TOKEN")) == errno.EIO
        # the mount lives on: other requests still work
        assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_size == 4

    run(main)
    [rec] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "unexpected error in readdir" in rec.getMessage() and rec.exc_info


def test_a_version_is_read_only(seeded):
    """Every write to a committed version is EROFS; reads work."""

    async def main():
        ops = Operations(VersionVFS(seeded, repo.resolve(seeded, "ds:v0")))
        assert ops.ro
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        e = (await ops.lookup(ROOT_INO, b"e", CTX)).st_ino
        assert await read_file(ops, b) == b"bee\n"
        # the model itself refuses with the domain error, which maps to EROFS
        with pytest.raises(errors.ReadOnly) as ei:
            ops.vfs.open(b, True)
        assert errno_of(ei.value) == errno.EROFS
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
            assert await fuse_errno(ops.open(b, flags, CTX)) == errno.EROFS
        attempts = [
            ops.create(ROOT_INO, b"n", 0o644, os.O_WRONLY, CTX),
            ops.mkdir(ROOT_INO, b"n", 0o755, CTX),
            ops.mknod(ROOT_INO, b"n", stat.S_IFIFO | 0o644, 0, CTX),
            ops.symlink(ROOT_INO, b"n", b"b", CTX),
            ops.link(b, ROOT_INO, b"n", CTX),
            ops.unlink(ROOT_INO, b"b", CTX),
            ops.rmdir(ROOT_INO, b"e", CTX),
            ops.rename(ROOT_INO, b"b", ROOT_INO, b"n", 0, CTX),
            ops.setattr(b, attrs(st_mode=stat.S_IFREG | 0o600), fields(update_mode=True), None, CTX),
            ops.setattr(b, attrs(st_size=0), fields(update_size=True), None, CTX),
            ops.setattr(e, attrs(st_mtime_ns=1), fields(update_mtime=True), None, CTX),
            ops.setxattr(b, b"user.x", b"1", CTX),
            ops.removexattr(b, b"user.x", CTX),
            ops.open(COMMIT, os.O_WRONLY, CTX),
        ]
        for coro in attempts:
            assert await fuse_errno(coro) == errno.EROFS, coro
        assert await read_ctl(ops, COMMIT) == ""
        assert await read_ctl(ops, REF) == "ds:v0\n"
        assert await read_file(ops, b) == b"bee\n"

    run(main)


# -- the commit gate -------------------------------------------------------------------------------------

def blocking_commit(monkeypatch):
    """Replace repo.commit_draft by one that says it started and waits for the test's go (in its
    worker thread, as the real one runs), then commits for real."""
    started, release = trio.Event(), trio.Event()
    calls = []
    real = repo.commit_draft

    def commit_draft(store, draft, message=None, **kw):
        calls.append(message)
        trio.from_thread.run_sync(started.set)
        trio.from_thread.run(release.wait)
        return real(store, draft, message, **kw)

    monkeypatch.setattr(repo, "commit_draft", commit_draft)
    return started, release, calls


def test_commit_holds_back_changes_and_writes_but_not_reads(seeded, monkeypatch, replies):
    """A write and a mkdir started while a commit runs wait for it and land wholly after it;
    lookups, reads and listings go on meanwhile."""

    async def main():
        ops = draft_ops(seeded)
        fi, a = await ops.create(ROOT_INO, b"a", 0o100644, os.O_WRONLY, CTX)
        assert await ops.write(fi.fh, 0, b"before") == 6
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        started, release, calls = blocking_commit(monkeypatch)
        done = []

        async def commit():
            done.append(await ops.commit("gated"))

        async def write_more():
            await ops.write(fi.fh, 6, b"+after")
            done.append("write")

        async def mkdir():
            await ops.mkdir(ROOT_INO, b"later", 0o755, CTX)
            done.append("mkdir")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            await started.wait()  # the commit holds the gate and is in its worker thread
            assert ops.gate.closed is not None
            nursery.start_soon(write_more)
            nursery.start_soon(mkdir)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            assert ops.gate.closed.statistics().tasks_waiting == 2  # both wait at the gate

            # reads are not held back: this block never waits (a wait would jump the clock and fail)
            with trio.fail_after(1):
                assert (await ops.lookup(ROOT_INO, b"a", CTX)).st_size == 6
                assert (await ops.getattr(a.st_ino, CTX)).st_size == 6
                assert await read_file(ops, a.st_ino) == b"before"
                assert await ops.read(fi.fh, 0, 100) == b"before"
                dh = await ops.opendir(ROOT_INO, CTX)
                await ops.readdir(dh, 0, "TOKEN")
                await ops.releasedir(dh)
                assert [n for n, _, _ in replies.accepted] == [b".", b"..", b"a", b"b", b"d", b"e", b"f", b"g"]
                assert await read_ctl(ops, REF) != ""
            # a stored file's read goes through a worker thread: it completes while the commit waits
            assert await read_file(ops, b) == b"bee\n"
            assert done == [] and ops.gate.closed.statistics().tasks_waiting == 2
            release.set()

        assert done[0] == "ds:v1"
        assert sorted(done[1:]) == ["mkdir", "write"]
        assert calls == ["gated"]
        # the version has exactly what was there when the commit began
        assert version_bytes(seeded, "ds:v1", "a") == b"before"
        assert "later" not in version_paths(seeded, "ds:v1")
        # ... and the held-back changes are in the draft, on top of it
        assert status(ops) == ["M a", "A later"]
        assert await ops.read(fi.fh, 0, 100) == b"before+after"
        await ops.release(fi.fh)
        assert await write_ctl(ops, COMMIT, b"second\n") == 7
        assert version_bytes(seeded, "ds:v2", "a") == b"before+after"
        assert "later" in version_paths(seeded, "ds:v2")
        assert version_bytes(seeded, "ds:v1", "a") == b"before"  # v1 was not touched by the later write

    run(main)


def test_commit_waits_for_a_change_in_flight(seeded, monkeypatch):
    """A change already being persisted in a worker thread (the database was busy, so not on
    the loop) when a commit starts is wholly in the version."""

    async def main():
        ops = draft_ops(seeded)
        d = ops.vfs.draft
        monkeypatch.setattr(d, "try_persist_now", lambda ch: False)
        persisting, go = trio.Event(), trio.Event()
        real_persist = d.persist

        def slow_persist(ch):
            trio.from_thread.run_sync(persisting.set)
            trio.from_thread.run(go.wait)
            real_persist(ch)

        monkeypatch.setattr(d, "persist", slow_persist)
        calls = []
        real_commit = repo.commit_draft
        monkeypatch.setattr(repo, "commit_draft", lambda *a, **k: calls.append(1) or real_commit(*a, **k))
        out = []

        async def mkdir():
            await ops.mkdir(ROOT_INO, b"early", 0o755, CTX)
            out.append("mkdir")

        async def commit():
            out.append(await ops.commit(None))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mkdir)
            await persisting.wait()
            nursery.start_soon(commit)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == [] and out == []  # the commit waits for the change to drain
            assert ops.gate.closed is not None and ops.gate.active == 1
            monkeypatch.setattr(d, "persist", real_persist)
            go.set()
        assert out == ["mkdir", "ds:v1"]
        assert "early" in version_paths(seeded, "ds:v1")
        assert status(ops) == []

    run(main)


# -- draft changes on the loop ---------------------------------------------------------------------
#
# A local store records a draft change on the trio thread when SQLite can do it without waiting
# (SqliteMeta.nowait), else in a worker thread: the loop never waits for another writer.

def test_a_change_goes_to_a_worker_thread_while_another_writer_holds_the_database(seeded):
    """With the database locked by another writer, a create neither blocks the loop (a lookup
    is answered meanwhile) nor fails: it waits in a worker thread and is recorded once the lock
    is gone, with its scratch file intact."""
    import sqlite3

    async def main():
        ops = draft_ops(seeded)
        other = sqlite3.connect(seeded.meta.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        out = []

        async def create():
            fi, a = await ops.create(ROOT_INO, b"new", 0o100644, os.O_WRONLY, CTX)
            out.append(a.st_ino)
            await ops.write(fi.fh, 0, b"written after the wait")
            await ops.release(fi.fh)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(create)
                await trio.testing.wait_all_tasks_blocked()
                assert out == []  # waiting in a worker thread, not on the loop:
                assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_size == 4  # the loop answers
                other.execute("COMMIT")
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        assert out and status(ops) == ["A new"]
        assert not seeded.meta.db.in_transaction
        await trio.to_thread.run_sync(ops.vfs.store.meta.durable)
        with trio.fail_after(5):
            assert await read_back(ops, b"new") == b"written after the wait"

    run(main)


async def read_back(ops, name: bytes) -> bytes:
    e = await ops.lookup(ROOT_INO, name, CTX)
    fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(fi.fh, 0, 1 << 16)
    finally:
        await ops.release(fi.fh)


def test_a_big_change_is_recorded_in_a_worker_thread(seeded, monkeypatch):
    """Only a small transaction runs on the loop (drafts.INLINE_MAX rows): a bigger one would
    stall every other request meanwhile."""
    import importlib

    drafts_mod = importlib.import_module("artfs.repo.drafts")

    async def main():
        ops = draft_ops(seeded)
        d = ops.vfs.draft
        inline = []
        real = d.try_persist_now
        monkeypatch.setattr(d, "try_persist_now", lambda ch: inline.append(real(ch)) or inline[-1])
        await ops.mkdir(ROOT_INO, b"small", 0o755, CTX)
        monkeypatch.setattr(drafts_mod, "INLINE_MAX", 0)
        await ops.mkdir(ROOT_INO, b"big", 0o755, CTX)
        assert inline == [True, False]
        assert sorted(status(ops)) == ["A big", "A small"]

    run(main)


def test_nowait_never_waits_and_hands_every_nth_transaction_to_a_worker(store):
    """SqliteMeta.nowait: another writer's lock is Busy at once with nothing changed and no
    transaction left open; its connection never checkpoints (a checkpoint writes and syncs the
    database file) -- so every NOWAIT_HANDOFF-th transaction is handed to a worker thread, whose
    connection does; the thread's own connection keeps waiting for locks as before."""
    import sqlite3

    from artfs.storage import sqlite_meta
    from artfs.storage.meta import Busy

    meta = store.meta
    if not hasattr(meta, "nowait"):
        pytest.skip("the scale-out store records drafts in PostgreSQL, off the loop")
    other = sqlite3.connect(meta.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Busy):
            with meta.nowait():
                with meta.tx() as db:
                    db.execute("INSERT OR REPLACE INTO info VALUES('nowait-test', 'x')")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert meta.db.execute("SELECT value FROM info WHERE key='nowait-test'").fetchone() is None
    meta._nowait_count = 0
    handed = []
    for i in range(2 * sqlite_meta.NOWAIT_HANDOFF):
        try:
            with meta.nowait():
                fast = meta.db
                with meta.tx() as db:
                    db.execute("INSERT OR REPLACE INTO info VALUES('nowait-test', ?)", (str(i),))
        except Busy:
            handed.append(i)
    assert handed == [sqlite_meta.NOWAIT_HANDOFF - 1, 2 * sqlite_meta.NOWAIT_HANDOFF - 1]
    assert fast is not meta.db and not fast.in_transaction
    assert fast.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert fast.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert meta.db.execute("PRAGMA busy_timeout").fetchone()[0] == sqlite_meta.BUSY_TIMEOUT_MS
    assert meta.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0


def test_a_big_commit_gives_its_memory_back(seeded, monkeypatch):
    """After a commit of at least TRIM_AFTER files, once the commit's request has returned, the
    daemon collects garbage and trims the C heap (artfs.fuse.heap); a small commit does not."""
    from artfs.fuse import heap

    monkeypatch.setattr(ops_mod, "TRIM_AFTER", 3)
    trims = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1))

    async def main():
        ops = draft_ops(seeded)
        scheduled = []

        async def spy():
            scheduled.append(1)

        real = ops._give_back_memory
        ops._give_back_memory = spy
        async with trio.open_nursery() as nursery:
            ops.start(nursery)
            for name in (b"x1", b"x2", b"x3"):
                fi, _ = await ops.create(ROOT_INO, name, 0o100644, os.O_WRONLY, CTX)
                await ops.write(fi.fh, 0, b"data " + name)
                await ops.release(fi.fh)
            assert await ops.commit(None) == "ds:v1"
            await trio.testing.wait_all_tasks_blocked()
            assert scheduled == [1]
            fi, _ = await ops.create(ROOT_INO, b"y", 0o100644, os.O_WRONLY, CTX)
            await ops.release(fi.fh)
            assert await ops.commit(None) == "ds:v2"
            await trio.testing.wait_all_tasks_blocked()
            assert scheduled == [1]  # one file: nothing to give back
            nursery.cancel_scope.cancel()
        await real()
        assert trims == [1]

    run(main)


def test_inode_numbers_outlive_a_commit_that_does_not_read_them_again(seeded, monkeypatch):
    """A commit keeps the draft's inode numbers (pins) in memory instead of reading every one of
    them back (at 100k names most of what a commit after one edit cost): a name created before
    the commit has the same number after it -- forgotten and looked up again, and in a new
    mount of the draft, which reads them from the store."""
    calls = []
    real_state = seeded.meta.draft_state
    monkeypatch.setattr(seeded.meta, "draft_state", lambda *a, **k: calls.append(k.get("pins", True)) or
                        real_state(*a, **k))

    async def main():
        ops = draft_ops(seeded)
        fi, a = await ops.create(ROOT_INO, b"n", 0o100644, os.O_WRONLY, CTX)
        await ops.release(fi.fh)
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        calls.clear()
        assert await ops.commit(None) == "ds:v1"
        assert calls == [False]
        await ops.forget([(a.st_ino, 1), (b, 1)])
        assert (await ops.lookup(ROOT_INO, b"n", CTX)).st_ino == a.st_ino
        assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino == b
        await unmount(ops)
        _MOUNTED.remove(ops)
        again = draft_ops(seeded)
        assert (await again.lookup(ROOT_INO, b"n", CTX)).st_ino == a.st_ino
        assert (await again.lookup(ROOT_INO, b"b", CTX)).st_ino == b

    run(main)


def test_gate_alone():
    """Gate: many holders at once, or one exclusive closer that waits for them to leave."""

    async def main():
        g = Gate()
        order = []
        with trio.fail_after(1):  # nothing here waits on a thread: a hang fails at once
            await g.enter()
            await g.enter()
            assert g.active == 2

            async def closer(tag):
                await g.close()
                order.append(f"closed {tag}")

            async def late_change():
                async with g():
                    order.append("late change")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(closer, 1)
                await trio.testing.wait_all_tasks_blocked()
                assert order == []  # two holders inside
                g.leave()
                await trio.testing.wait_all_tasks_blocked()
                assert order == []
                nursery.start_soon(late_change)
                nursery.start_soon(closer, 2)
                await trio.testing.wait_all_tasks_blocked()
                assert order == []
                g.leave()
                await trio.testing.wait_all_tasks_blocked()
                assert order == ["closed 1"]  # the second closer and the change wait for it
                g.open()
                await trio.testing.wait_all_tasks_blocked()
                if order[1:] == ["closed 2"]:  # the second closer went first: the change waits for it
                    g.open()
                else:  # the change went first: the second closer closed once it had left
                    assert order[1:] == ["late change", "closed 2"]
                    g.open()
            assert sorted(order) == ["closed 1", "closed 2", "late change"]
            assert g.closed is None and g.active == 0

    run(main)


# -- lookup counts -------------------------------------------------------------------------------------

def test_lookup_and_forget(seeded, caplog, monkeypatch):
    async def main():
        ops = draft_ops(seeded)
        nodes = ops.vfs.nodes
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        assert nodes[b].lookups == 1
        assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino == b
        assert nodes[b].lookups == 2
        await ops.forget([(b, 1)])
        assert nodes[b].lookups == 1
        await ops.forget([(b, 1)])
        assert b not in nodes  # dropped only at zero
        # forget never raises: unknown inodes, the root, control files, too many, a broken model
        await ops.forget([(b, 1), (999, 3), (ROOT_INO, 5), (CTL_DIR, 1), (COMMIT, 2)])
        assert ROOT_INO in nodes
        # the same number when looked up again (derived from the draft, not from a counter)
        assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino == b
        c = (await ops.lookup(nodes[b].parent, b"d", CTX)).st_ino
        assert (await ops.lookup(c, b"c", CTX)).st_ino not in (b, c)
        await ops.forget([(b, 10)])  # more than it had
        assert b not in nodes
        monkeypatch.setattr(ops.vfs, "forget", lambda *a: 1 / 0)
        await ops.forget([(c, 1)])  # logged, not raised

    run(main)
    assert any(r.getMessage() == "forget" and r.exc_info for r in caplog.records)


def test_create_mkdir_symlink_mknod_link_add_one_lookup(seeded):
    async def main():
        ops = draft_ops(seeded)
        nodes = ops.vfs.nodes
        fi, f = await ops.create(ROOT_INO, b"new", 0o100644, os.O_WRONLY, CTX)
        await ops.release(fi.fh)
        d = await ops.mkdir(ROOT_INO, b"dir", 0o755, CTX)
        s = await ops.symlink(ROOT_INO, b"sym", b"new", CTX)
        p = await ops.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o644, 0, CTX)
        for a in (f, d, s, p):
            assert nodes[a.st_ino].lookups == 1
        inos = {a.st_ino for a in (f, d, s, p)}
        assert len(inos) == 4 and ROOT_INO not in inos
        lk = await ops.link(f.st_ino, d.st_ino, b"hard", CTX)
        assert lk.st_ino == f.st_ino and lk.st_nlink == 2
        assert nodes[f.st_ino].lookups == 2
        # a stored file linked for the first time
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        assert (await ops.link(b, ROOT_INO, b"b2", CTX)).st_ino == b
        assert nodes[b].lookups == 2
        # each node goes when the kernel forgets what it was told, not before
        await ops.forget([(f.st_ino, 1)])
        assert nodes[f.st_ino].lookups == 1
        await ops.forget([(a.st_ino, 1) for a in (f, d, s, p)] + [(b, 2)])
        assert set(nodes) == {ROOT_INO}
        # ... and they come back under the same numbers
        for name, a in ((b"new", f), (b"dir", d), (b"sym", s), (b"fifo", p)):
            assert (await ops.lookup(ROOT_INO, name, CTX)).st_ino == a.st_ino
        assert (await ops.lookup(d.st_ino, b"hard", CTX)).st_ino == f.st_ino
        assert (await ops.lookup(ROOT_INO, b"b2", CTX)).st_ino == b

    run(main)


def test_readdir_counts_only_accepted_entries(seeded, replies):
    async def main():
        ops = draft_ops(seeded)
        nodes = ops.vfs.nodes
        g = (await ops.lookup(ROOT_INO, b"g", CTX)).st_ino  # known before the listing
        root_lookups = nodes[ROOT_INO].lookups
        dh = await ops.opendir(ROOT_INO, CTX)
        replies.budget = 4
        await ops.readdir(dh, 0, "TOKEN")
        dot, dotdot, (na, ia, ja), (nb, ib, jb) = replies.accepted
        assert dot == (b".", ROOT_INO, 1) and dotdot == (b"..", ROOT_INO, 2)  # the root is its own parent
        assert nodes[ROOT_INO].lookups == root_lookups  # "." and "..": the kernel counts no lookup
        assert (na, ja, nb, jb) == (b"b", 3, b"d", 4)  # sorted, offsets are the next entry's
        assert replies.refused == [b"e"]
        assert nodes[ia].lookups == 1 and nodes[ib].lookups == 1
        refused = ops.vfs.draft.ino_of(ROOT_INO, b"e", ops.vfs.draft.lookup((b"e",)))
        assert refused not in nodes  # refused: the kernel does not know it, nothing to forget
        # the kernel asks again from where it stopped
        replies.budget = 2
        await ops.readdir(dh, 4, "TOKEN")
        assert [n for n, _, _ in replies.accepted[4:]] == [b"e", b"f"]
        assert replies.refused == [b"e", b"g"]
        assert nodes[g].lookups == 1  # refused, but known from its lookup: kept, not counted
        replies.budget = 10
        await ops.readdir(dh, 6, "TOKEN")
        assert replies.accepted[-1] == (b"g", g, 7)
        assert nodes[g].lookups == 2
        await ops.readdir(dh, 7, "TOKEN")  # past the end: nothing
        assert len(replies.accepted) == 7
        await ops.releasedir(dh)
        # every counted entry is forgotten by its count
        await ops.forget([(i, 1) for n, i, _ in replies.accepted if n not in (b".", b"..")] + [(g, 1)])
        assert set(nodes) == {ROOT_INO}
        # rewinding (offset 0) lists the directory as it is now
        dh = await ops.opendir(ROOT_INO, CTX)
        replies.budget, replies.accepted = 3, []
        await ops.readdir(dh, 0, "TOKEN")
        await ops.unlink(ROOT_INO, b"b", CTX)
        replies.budget = 10
        await ops.readdir(dh, 0, "TOKEN")
        assert [n for n, _, _ in replies.accepted] == [b".", b"..", b"b", b".", b"..", b"d", b"e", b"f", b"g"]
        await ops.releasedir(dh)
        # a subdirectory's ".." is its parent
        d = (await ops.lookup(ROOT_INO, b"d", CTX)).st_ino
        dh = await ops.opendir(d, CTX)
        replies.budget, replies.accepted = 10, []
        await ops.readdir(dh, 0, "TOKEN")
        assert replies.accepted[:2] == [(b".", d, 1), (b"..", ROOT_INO, 2)]
        await ops.releasedir(dh)
        # the control directory is listed without counting
        dh = await ops.opendir(CTL_DIR, CTX)
        replies.budget, replies.accepted = 10, []
        await ops.readdir(dh, 0, "TOKEN")
        assert replies.accepted == [(b".", CTL_DIR, 1), (b"..", ROOT_INO, 2), (b"commit", COMMIT, 3),
                                    (b"pid", CTL_FILES[b"pid"], 4), (b"ref", REF, 5), (b"status", STATUS, 6)]

    run(main)


def test_inode_numbers_are_stable(seeded):
    """The same number after forget + lookup, a rename, a commit and a remount."""

    async def main():
        ops = draft_ops(seeded)
        fi, a = await ops.create(ROOT_INO, b"a", 0o100644, os.O_WRONLY, CTX)
        await ops.write(fi.fh, 0, b"x")
        await ops.release(fi.fh)
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        d = (await ops.lookup(ROOT_INO, b"d", CTX)).st_ino
        c = (await ops.lookup(d, b"c", CTX)).st_ino
        await ops.forget([(a.st_ino, 1), (b, 1), (c, 1)])
        assert {a.st_ino, b, c}.isdisjoint(ops.vfs.nodes)
        assert (await ops.lookup(ROOT_INO, b"a", CTX)).st_ino == a.st_ino
        assert (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino == b
        assert (await ops.lookup(d, b"c", CTX)).st_ino == c
        await ops.rename(ROOT_INO, b"b", d, b"b-moved", 0, CTX)
        assert (await ops.lookup(d, b"b-moved", CTX)).st_ino == b
        assert await write_ctl(ops, COMMIT, b"v1\n")
        assert (await ops.lookup(ROOT_INO, b"a", CTX)).st_ino == a.st_ino
        assert (await ops.lookup(d, b"b-moved", CTX)).st_ino == b
        # a new mount of the same draft
        ops2 = draft_ops(seeded)
        d2 = (await ops2.lookup(ROOT_INO, b"d", CTX)).st_ino
        assert d2 == d
        assert (await ops2.lookup(ROOT_INO, b"a", CTX)).st_ino == a.st_ino
        assert (await ops2.lookup(d2, b"b-moved", CTX)).st_ino == b
        assert (await ops2.lookup(d2, b"c", CTX)).st_ino == c

    run(main)


def test_a_node_with_open_handles_survives_forget(seeded):
    async def main():
        ops = draft_ops(seeded)
        nodes = ops.vfs.nodes
        fi, a = await ops.create(ROOT_INO, b"a", 0o100644, os.O_RDWR, CTX)
        await ops.forget([(a.st_ino, 1)])
        assert nodes[a.st_ino].lookups == 0  # known to nobody but its open handle
        assert await ops.write(fi.fh, 0, b"still here") == 10
        assert await ops.read(fi.fh, 0, 100) == b"still here"
        assert (await ops.getattr(a.st_ino, CTX)).st_size == 10
        await ops.release(fi.fh)
        assert a.st_ino not in nodes
        assert (await ops.lookup(ROOT_INO, b"a", CTX)).st_ino == a.st_ino
        assert await read_file(ops, a.st_ino) == b"still here"

        # unlinked while open: readable and writable until the last release, then gone
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        fb = await ops.open(b, os.O_RDWR, CTX)
        await ops.unlink(ROOT_INO, b"b", CTX)
        await ops.forget([(b, 1)])
        assert b in nodes and (await ops.getattr(b, CTX)).st_nlink == 0
        assert await ops.read(fb.fh, 0, 100) == b"bee\n"
        await ops.write(fb.fh, 4, b"more")
        assert await ops.read(fb.fh, 0, 100) == b"bee\nmore"
        assert await fuse_errno(ops.lookup(ROOT_INO, b"b", CTX)) == errno.ENOENT
        await ops.release(fb.fh)
        assert b not in nodes
        assert await fuse_errno(ops.getattr(b, CTX)) == errno.ENOENT
        assert status(ops) == ["A a", "D b"]

    run(main)


# -- handles across commits -------------------------------------------------------------------------------

def test_failed_commit_leaves_handles_on_their_scratch_file(seeded, monkeypatch):
    """A commit that fails: writes through an open handle go on into the same scratch file,
    the draft is as it was, and the next commit has them.  After a commit that succeeds,
    the handle reads the committed bytes from the store."""

    async def main():
        ops = draft_ops(seeded)
        d = ops.vfs.draft
        f = (await ops.lookup(ROOT_INO, b"f", CTX)).st_ino
        fi = await ops.open(f, os.O_RDWR | os.O_TRUNC, CTX)
        assert await ops.write(fi.fh, 0, b"one") == 3
        node = ops.vfs.nodes[f]
        sf = node.scratch
        before = (status(ops), d.outcome, d.parent, d.base_root, sf.name)

        real = repo.commit_draft

        def refuse(store, draft, message=None, **kw):
            raise errors.Conflict("cannot commit to ds: f changed on both sides")

        monkeypatch.setattr(repo, "commit_draft", refuse)
        assert await fuse_errno(write_ctl(ops, COMMIT, b"refused\n")) == errno.EBUSY
        assert await read_ctl(ops, COMMIT) == "error: cannot commit to ds: f changed on both sides\n"
        assert ops.gate.closed is None and not ops.mutex.locked()

        # the same handle, the same scratch file
        assert await ops.write(fi.fh, 3, b"two") == 3
        assert node.scratch is sf and sf.fd >= 0
        with open(d.scratch_path(sf.name), "rb") as fh:
            assert fh.read() == b"onetwo"
        assert (status(ops), d.outcome, d.parent, d.base_root, node.scratch.name) == before
        assert repo.latest(seeded, "ds").num == 0

        monkeypatch.setattr(repo, "commit_draft", real)
        assert await write_ctl(ops, COMMIT, b"accepted\n") == 9
        assert await read_ctl(ops, COMMIT) == "ds:v1\n"
        assert version_bytes(seeded, "ds:v1", "f") == b"onetwo"
        assert status(ops) == []
        # the handle now reads the committed bytes from the store; the scratch file is gone
        h = ops.vfs.handle(fi.fh)
        assert node.scratch is None and h.data == b"onetwo"
        assert d.scratch_stat(sf.name) is None
        assert await ops.read(fi.fh, 0, 100) == b"onetwo"
        # a later write copies again: the committed object never changes
        assert await ops.write(fi.fh, 6, b"three") == 5
        assert node.scratch is not None and node.scratch.name != sf.name
        assert await ops.read(fi.fh, 0, 100) == b"onetwothree"
        assert version_bytes(seeded, "ds:v1", "f") == b"onetwo"
        await ops.release(fi.fh)
        assert status(ops) == ["M f"]

    run(main)


def test_commit_refused_by_the_store_keeps_writes_out_of_stored_objects(store, tmp_path, mktree):
    """Issue 9, fault 1, below the mount: a commit that the store refuses (the artifact was
    created meanwhile with another type) leaves the open file on its scratch file, and later
    writes never reach the object the failed commit stored."""

    async def main():
        ops = draft_ops(store, "fresh")  # a draft of an artifact with no version yet: a dataset
        fi, a = await ops.create(ROOT_INO, b"f", 0o100644, os.O_WRONLY, CTX)
        await ops.write(fi.fh, 0, b"draft bytes")
        sf = ops.vfs.nodes[a.st_ino].scratch
        repo.put_dir(store, "fresh", mktree(tmp_path / "other", {"o": b"other\n"}), type_="model")
        assert await fuse_errno(write_ctl(ops, COMMIT, b"\n")) == errno.EBUSY
        reason = await read_ctl(ops, COMMIT)
        assert reason.startswith("error: ") and "model" in reason and reason.count("\n") == 1
        assert await ops.write(fi.fh, 11, b" and more") == 9
        assert ops.vfs.nodes[a.st_ino].scratch is sf
        assert status(ops) == ["A f"]
        await ops.release(fi.fh)
        # the failed commit stored "draft bytes"; a put of those bytes dedups onto that object
        v, _ = repo.put_dir(store, "y", mktree(tmp_path / "y", {"f": b"draft bytes"}))
        assert version_bytes(store, v.ref, "f") == b"draft bytes"
        assert await read_file(ops, a.st_ino) == b"draft bytes and more"

    run(main)


def test_commit_after_a_merge_invalidates_what_changed(seeded, tmp_path, mktree, no_kernel):
    """A commit merged onto a newer latest tells the kernel to forget the entries that
    changed underneath (recorded here instead of sent)."""

    async def main():
        ops = draft_ops(seeded)
        fi, _ = await ops.create(ROOT_INO, b"mine", 0o100644, os.O_WRONLY, CTX)
        await ops.release(fi.fh)
        b = (await ops.lookup(ROOT_INO, b"b", CTX)).st_ino
        g = (await ops.lookup(ROOT_INO, b"g", CTX)).st_ino
        # meanwhile someone else changes b (v1); the draft is behind
        src = mktree(tmp_path / "v1", {k: v for k, v in SEED.items()})
        with open(os.path.join(src, "b"), "wb") as f:
            f.write(b"theirs\n")
        repo.put_dir(seeded, "ds", src)
        assert await write_ctl(ops, COMMIT, b"\n")
        assert await read_ctl(ops, COMMIT) == "ds:v2\n"
        assert version_bytes(seeded, "ds:v2", "b") == b"theirs\n"
        assert "mine" in version_paths(seeded, "ds:v2")
        assert ("entry", (ROOT_INO, b"b")) in no_kernel
        assert ("inode", (b,)) in no_kernel
        assert ("inode", (g,)) not in no_kernel and ("entry", (ROOT_INO, b"g")) not in no_kernel  # unchanged
        assert await read_file(ops, b) == b"theirs\n"

    run(main)


def test_fsck_after_a_crash_between_commit_and_scratch_deletion(tmp_path, mktree):
    """The commit order is: version and draft reset durable, then delete the replaced scratch
    files.  A crash in between leaves garbage that gc and the next mount remove, as a failed
    commit leaves unreferenced objects; fsck should pass, as it does for those objects (the
    mount fault tests require fsck to pass after any kill)."""
    path = str(tmp_path / "crash-store")  # not the `store` fixture: its teardown fsck would error
    store = Store.init(path)
    repo.put_dir(store, "ds", mktree(tmp_path / "seed", SEED))

    async def main():
        ops = draft_ops(store)
        fi, _ = await ops.create(ROOT_INO, b"new", 0o100644, os.O_WRONLY, CTX)
        await ops.write(fi.fh, 0, b"bytes")
        await ops.release(fi.fh)
        ops.vfs.draft.flush_dead = lambda: 0  # the daemon dies right after the commit's record
        assert await write_ctl(ops, COMMIT, b"\n") == 1
        assert await read_ctl(ops, COMMIT) == "ds:v1\n"

    run(main)
    assert version_bytes(store, "ds:v1", "new") == b"bytes"  # the commit itself is whole
    assert repo.fsck(Store.open(path)) == []


# -- a change whose persist fails --------------------------------------------------------------------------

def draft_snapshot(ops: Operations):
    """Everything a failed change must leave as it was: the draft in memory, in the database
    and on disk, the nodes and handles of the mount."""
    d = ops.vfs.draft
    memory = (dict(d.bases), {k: dict(v) for k, v in d.overlay.items()}, dict(d.inodes), dict(d.pins), d.root,
              d.next_ino, list(d.dead), d.links_adopted, d.parent, d.base_root, d.outcome)
    nodes = {ino: (n.parent, n.name, n.lookups, n.orphan, len(n.handles), n.scratch.name if n.scratch else None)
             for ino, n in ops.vfs.nodes.items()}
    st = d.meta.draft_state(d.id)
    db = (st["dirs"], sorted(st["entries"]), st["inodes"], st["pins"])
    files = sorted(os.listdir(d.scratch_dir)) if os.path.isdir(d.scratch_dir) else []
    return memory, nodes, db, files, sorted(ops.vfs.handles), status(ops)


async def _create(ops, i):
    fi, _ = await ops.create(ROOT_INO, b"new", 0o100644, os.O_WRONLY, CTX)
    await ops.release(fi.fh)


async def _open_for_writing(ops, i):  # a stored file's first write: copy-up, recorded by a change
    fi = await ops.open(i["b"], os.O_WRONLY, CTX)
    await ops.release(fi.fh)


async def _truncate(ops, i):
    await ops.setattr(i["b"], attrs(st_size=1), fields(update_size=True), None, CTX)


ACL_RW_R_R = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000400ffffffff")

CHANGES = {
    "create": _create,
    "mknod": lambda ops, i: ops.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o644, 0, CTX),
    "mkdir": lambda ops, i: ops.mkdir(ROOT_INO, b"dir", 0o755, CTX),
    "symlink": lambda ops, i: ops.symlink(ROOT_INO, b"sym", b"b", CTX),
    "link": lambda ops, i: ops.link(i["b"], ROOT_INO, b"hard", CTX),
    "unlink": lambda ops, i: ops.unlink(ROOT_INO, b"b", CTX),
    "rmdir": lambda ops, i: ops.rmdir(ROOT_INO, b"e", CTX),
    "rename": lambda ops, i: ops.rename(ROOT_INO, b"b", i["d"], b"moved", 0, CTX),
    "rename-over": lambda ops, i: ops.rename(ROOT_INO, b"b", ROOT_INO, b"g", 0, CTX),
    "chmod": lambda ops, i: ops.setattr(i["b"], attrs(st_mode=stat.S_IFREG | 0o600), fields(update_mode=True),
                                        None, CTX),
    "utimens": lambda ops, i: ops.setattr(i["b"], attrs(st_mtime_ns=10**18, st_atime_ns=10**18),
                                          fields(update_mtime=True, update_atime=True), None, CTX),
    "truncate": _truncate,
    "open-for-writing": _open_for_writing,
    "setxattr": lambda ops, i: ops.setxattr(i["b"], b"user.k", b"v", CTX),
    "removexattr": lambda ops, i: ops.removexattr(i["f"], b"user.old", CTX),
    "set-acl": lambda ops, i: ops.setxattr(i["b"], b"system.posix_acl_access", ACL_RW_R_R, CTX),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_whose_persist_fails_changes_nothing(seeded, monkeypatch, caplog, change):
    """The metadata transaction of a change fails (a full disk): ENOSPC to the caller, and the
    draft -- memory, database, scratch files -- and the mount's nodes are exactly as before.
    With space back, the same change goes through."""

    async def main():
        ops = draft_ops(seeded)
        d = ops.vfs.draft
        i = {n: (await ops.lookup(ROOT_INO, n.encode(), CTX)).st_ino for n in ("b", "d", "e", "f", "g")}
        await ops.setxattr(i["f"], b"user.old", b"1", CTX)
        fh = (await ops.open(i["g"], os.O_RDWR, CTX)).fh  # a file open for writing, changed
        await ops.write(fh, 0, b"G")
        before = draft_snapshot(ops)
        real = d.meta.draft_apply

        def full(*a, **k):
            raise errors.NoSpace("no space left in the store (test)")

        monkeypatch.setattr(d.meta, "draft_apply", full)
        assert await fuse_errno(CHANGES[change](ops, i)) == errno.ENOSPC
        assert draft_snapshot(ops) == before
        assert ops.gate.closed is None and ops.gate.active == 0 and not ops.mutex.locked()
        # the open file is unaffected
        assert await ops.read(fh, 0, 10) == b"Gee\n"
        monkeypatch.setattr(d.meta, "draft_apply", real)
        await CHANGES[change](ops, i)
        assert draft_snapshot(ops) != before
        await ops.release(fh)

    run(main)
    assert any(r.levelno == logging.ERROR and "no space left" in r.getMessage() for r in caplog.records)


def test_a_failed_persist_fake_draft_persist(seeded, monkeypatch):
    """The same with Draft.persist itself replaced by a fake that raises NoSpace."""

    async def main():
        ops = draft_ops(seeded)
        d = ops.vfs.draft
        before = draft_snapshot(ops)

        def full(ch):
            raise errors.NoSpace("disk full")

        monkeypatch.setattr(d, "persist", full)
        assert await fuse_errno(ops.mkdir(ROOT_INO, b"x", 0o755, CTX)) == errno.ENOSPC
        assert await fuse_errno(ops.rename(ROOT_INO, b"b", ROOT_INO, b"x", 0, CTX)) == errno.ENOSPC
        assert await fuse_errno(ops.unlink(ROOT_INO, b"g", CTX)) == errno.ENOSPC
        assert draft_snapshot(ops) == before
        assert await fuse_errno(ops.lookup(ROOT_INO, b"x", CTX)) == errno.ENOENT
        assert (await ops.lookup(ROOT_INO, b"g", CTX)).st_size == 4

    run(main)


# -- the control files ------------------------------------------------------------------------------------

def test_commit_control_file(seeded, monkeypatch, caplog):
    """Writing .artfs/commit commits (the text is the message); reading it says what happened."""

    async def main():
        ops = draft_ops(seeded)
        assert await read_ctl(ops, COMMIT) == ""
        assert await read_ctl(ops, REF) == "ds:draft (parent ds:v0)\n"
        assert (await ops.getattr(COMMIT, CTX)).st_mode == stat.S_IFREG | 0o600
        assert (await ops.getattr(STATUS, CTX)).st_mode == stat.S_IFREG | 0o400
        await ops.mkdir(ROOT_INO, b"x", 0o755, CTX)
        assert await read_ctl(ops, STATUS) == "A x\n"
        assert await write_ctl(ops, COMMIT, b"first commit\n") == 13
        assert await read_ctl(ops, COMMIT) == "ds:v1\n"
        assert repo.resolve(seeded, "ds:v1").message == "first commit"
        assert await read_ctl(ops, STATUS) == ""
        assert await read_ctl(ops, REF) == "ds:draft (parent ds:v1)\n"

        # a failed commit: its errno to the writer, its reason to the reader
        def refuse(store, draft, message=None, **kw):
            raise errors.NoSpace("no space left in the store at /x")

        monkeypatch.setattr(repo, "commit_draft", refuse)
        await ops.mkdir(ROOT_INO, b"y", 0o755, CTX)
        assert await fuse_errno(write_ctl(ops, COMMIT, b"second\n")) == errno.ENOSPC
        assert await read_ctl(ops, COMMIT) == "error: no space left in the store at /x\n"
        monkeypatch.undo()
        assert await write_ctl(ops, COMMIT, b"\n") == 1  # an empty message
        assert await read_ctl(ops, COMMIT) == "ds:v2\n"  # the error is gone with the next success
        assert repo.resolve(seeded, "ds:v2").message is None
        assert await write_ctl(ops, COMMIT, b"nothing changed\n")
        assert await read_ctl(ops, COMMIT) == "ds:v2 (unchanged)\n"

    run(main)
    assert any(r.levelno == logging.ERROR and "commit failed" in r.getMessage() for r in caplog.records)


def test_commit_control_file_after_an_unexpected_failure(seeded, monkeypatch):
    async def main():
        ops = draft_ops(seeded)
        await ops.mkdir(ROOT_INO, b"x", 0o755, CTX)
        assert await write_ctl(ops, COMMIT, b"\n")
        assert await read_ctl(ops, COMMIT) == "ds:v1\n"
        await ops.mkdir(ROOT_INO, b"y", 0o755, CTX)

        def broken(store, draft, message=None, **kw):
            raise RuntimeError("a bug")

        monkeypatch.setattr(repo, "commit_draft", broken)
        assert await fuse_errno(write_ctl(ops, COMMIT, b"\n")) == errno.EIO
        assert await read_ctl(ops, COMMIT) != "ds:v1\n"  # not the last commit's outcome
        assert (await read_ctl(ops, COMMIT)).startswith("error: ")

    run(main)


def test_status_waits_for_a_commit_in_progress(seeded, monkeypatch):
    """.artfs/status is a snapshot taken with every change held back, so it waits for a commit."""

    async def main():
        ops = draft_ops(seeded)
        await ops.mkdir(ROOT_INO, b"x", 0o755, CTX)
        started, release, _ = blocking_commit(monkeypatch)
        seen = []

        async def read_status():
            seen.append(await read_ctl(ops, STATUS))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ops.commit, None)
            await started.wait()
            nursery.start_soon(read_status)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []
            release.set()
        assert seen == [""]  # taken after the commit: nothing left to report

    run(main)


def test_ops_module_has_the_documented_control_inodes():
    """Control inodes are 2..15, below the first number a draft or a version gives out."""
    assert CTL_DIR == 2 and set(CTL_FILES.values()) <= set(range(3, 16))
    from artfs.fuse.vfs import FIRST_INO

    assert FIRST_INO == 16 and all(Operations._is_ctl(i) for i in range(2, 16))
    assert not Operations._is_ctl(ROOT_INO) and not Operations._is_ctl(FIRST_INO)
    assert ops_mod.errno_of is errno_of
