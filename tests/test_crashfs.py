"""crashfs itself: its durability model (what survives a simulated power loss),
its crash control, and that it carries what artfs does (SQLite WAL, locks, mmap).

Each model test has a twin that differs only by the fsync that makes the change
durable, so a model that kept too much or too little fails one of the pair.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys

import pytest

from crashfs import BLOCK, CrashFS, CrashFSError, Data, is_mounted, read_blocks, send

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or subprocess.run(["which", "fusermount3"], capture_output=True).returncode != 0,
    reason="needs /dev/fuse and fusermount3",
)
pytestmark = [pytest.mark.mount, needs_fuse, pytest.mark.timeout(120)]

CRASHFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crashfs.py")


@pytest.fixture
def fs(tmp_path):
    with CrashFS(tmp_path / "cfs") as f:
        yield f
        assert f.errors() == 0, "crashfs logged internal errors: see " + f.log_path
    assert not is_mounted(f.path)
    assert f.proc.returncode is not None


def put(path, data: bytes, *, fsync: bool = False, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def after_crash(fs: CrashFS, tmp_path) -> str:
    """Crash now and return a real directory holding what survived."""
    fs.crash()
    return fs.dump(tmp_path / "after")


def listing(root) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


# -- the durability model -----------------------------------------------------------------

def test_write_without_fsync_is_lost(fs, tmp_path):
    m = fs.path
    put(f"{m}/old", b"version 1", fsync=True)
    fsync_dir(m)
    put(f"{m}/old", b"version 2, never fsynced")  # O_TRUNC + write, live only
    put(f"{m}/new", b"never fsynced, never named durably")
    assert read(f"{m}/old") == b"version 2, never fsynced"  # live state is what processes see
    out = after_crash(fs, tmp_path)
    assert listing(out) == ["old"]
    assert read(f"{out}/old") == b"version 1"


def test_fsynced_file_without_dir_fsync_loses_its_name(fs, tmp_path):
    os.mkdir(f"{fs.path}/d")
    fsync_dir(fs.path)
    put(f"{fs.path}/d/f", b"data", fsync=True)
    put(f"{fs.path}/g", b"data", fsync=True)
    out = after_crash(fs, tmp_path)
    assert listing(out) == ["d"]


def test_fsynced_file_and_dir_survive(fs, tmp_path):
    blob = random.Random(1).randbytes(3 * BLOCK + 123)  # crosses copy-on-write blocks
    put(f"{fs.path}/f", blob, fsync=True)
    fsync_dir(fs.path)
    out = after_crash(fs, tmp_path)
    assert read(f"{out}/f") == blob


def test_dir_fsync_without_file_fsync_leaves_an_empty_file(fs, tmp_path):
    put(f"{fs.path}/obj", b"the bytes were never fsynced", mode=0o600)
    fsync_dir(fs.path)
    out = after_crash(fs, tmp_path)
    st = os.stat(f"{out}/obj")
    assert st.st_size == 0
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_fsync_makes_a_snapshot_not_a_promise(fs, tmp_path):
    m = fs.path
    put(f"{m}/f", b"A" * 100_000, fsync=True)
    with open(f"{m}/f", "r+b") as f:
        f.seek(50_000)
        f.write(b"B" * 10)  # after the fsync: not durable...
    put(f"{m}/other", b"x", fsync=True)  # ...and another file's fsync does not change that
    fsync_dir(m)
    out = after_crash(fs, tmp_path)
    assert read(f"{out}/f") == b"A" * 100_000


def test_rename_without_dir_fsync_keeps_the_old_name(fs, tmp_path):
    m = fs.path
    put(f"{m}/a", b"old", fsync=True)
    fsync_dir(m)
    put(f"{m}/tmp", b"new", fsync=True)
    os.rename(f"{m}/tmp", f"{m}/a")
    assert read(f"{m}/a") == b"new"
    out = after_crash(fs, tmp_path)
    assert listing(out) == ["a"]
    assert read(f"{out}/a") == b"old"


def test_rename_with_dir_fsync_has_the_new_name(fs, tmp_path):
    m = fs.path
    put(f"{m}/a", b"old", fsync=True)
    fsync_dir(m)
    put(f"{m}/tmp", b"new", fsync=True)
    os.rename(f"{m}/tmp", f"{m}/a")
    fsync_dir(m)
    out = after_crash(fs, tmp_path)
    assert listing(out) == ["a"]
    assert read(f"{out}/a") == b"new"


@pytest.mark.parametrize("synced", [["d2"], ["d1", "d2"]])
def test_cross_directory_rename_needs_both_parents(fs, tmp_path, synced):
    m = fs.path
    os.mkdir(f"{m}/d1")
    os.mkdir(f"{m}/d2")
    put(f"{m}/d1/f", b"payload", fsync=True)
    fsync_dir(f"{m}/d1")
    fsync_dir(m)
    os.rename(f"{m}/d1/f", f"{m}/d2/f")
    for d in synced:
        fsync_dir(f"{m}/{d}")
    out = after_crash(fs, tmp_path)
    if synced == ["d2"]:  # the old name was never removed durably: one inode, two names
        assert listing(out) == ["d1", "d1/f", "d2", "d2/f"]
        assert os.stat(f"{out}/d1/f").st_ino == os.stat(f"{out}/d2/f").st_ino
    else:
        assert listing(out) == ["d1", "d2", "d2/f"]
    assert read(f"{out}/d2/f") == b"payload"


@pytest.mark.parametrize("dir_fsync", [False, True])
def test_unlink_needs_dir_fsync(fs, tmp_path, dir_fsync):
    put(f"{fs.path}/f", b"keep?", fsync=True)
    fsync_dir(fs.path)
    os.unlink(f"{fs.path}/f")
    if dir_fsync:
        fsync_dir(fs.path)
    out = after_crash(fs, tmp_path)
    assert listing(out) == ([] if dir_fsync else ["f"])
    if not dir_fsync:
        assert read(f"{out}/f") == b"keep?"


@pytest.mark.parametrize("root_fsync", [False, True])
def test_new_directory_needs_its_parent_fsynced(fs, tmp_path, root_fsync):
    m = fs.path
    os.makedirs(f"{m}/d")
    put(f"{m}/d/f", b"inside", fsync=True)
    fsync_dir(f"{m}/d")
    if root_fsync:
        fsync_dir(m)
    out = after_crash(fs, tmp_path)
    assert listing(out) == (["d", "d/f"] if root_fsync else [])


@pytest.mark.parametrize("dir_fsync", [False, True])
def test_hard_link(fs, tmp_path, dir_fsync):
    m = fs.path
    put(f"{m}/a", b"shared bytes", fsync=True)
    fsync_dir(m)
    os.link(f"{m}/a", f"{m}/b")
    assert os.stat(f"{m}/a").st_nlink == 2
    assert os.stat(f"{m}/a").st_ino == os.stat(f"{m}/b").st_ino
    if dir_fsync:
        fsync_dir(m)
    out = after_crash(fs, tmp_path)
    if not dir_fsync:
        assert listing(out) == ["a"]
        return
    assert listing(out) == ["a", "b"]
    a, b = os.stat(f"{out}/a"), os.stat(f"{out}/b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2  # dumped as a hard link, not a copy
    assert read(f"{out}/b") == b"shared bytes"


def test_dump_preserves_kinds_and_modes(fs, tmp_path):
    m = fs.path
    os.mkdir(f"{m}/ro", 0o500)
    os.chmod(f"{m}/ro", 0o750)  # chmod of a directory is durable with its fsync
    put(f"{m}/ro/inner", b"i", fsync=True, mode=0o400)
    fsync_dir(f"{m}/ro")
    put(f"{m}/exe", b"#!/bin/sh\n", fsync=True, mode=0o755)
    put(f"{m}/secret", b"s", fsync=True, mode=0o600)
    put(f"{m}/changed", b"c", fsync=True, mode=0o644)
    os.chmod(f"{m}/changed", 0o600)  # after its fsync: the old mode is what survives
    os.symlink("exe", f"{m}/link")
    os.utime(f"{m}/exe", ns=(1_000_000_000, 1_500_000_000_000_000_000))
    fsync_file(f"{m}/exe")
    fsync_dir(m)
    out = after_crash(fs, tmp_path)
    modes = {p: stat.S_IMODE(os.lstat(f"{out}/{p}").st_mode) for p in listing(out) if p != "link"}
    assert modes == {"ro": 0o750, "ro/inner": 0o400, "exe": 0o755, "secret": 0o600, "changed": 0o644}
    assert os.readlink(f"{out}/link") == "exe"
    assert os.stat(f"{out}/exe").st_mtime_ns == 1_500_000_000_000_000_000


def test_sync_command_makes_everything_durable(fs, tmp_path):
    m = fs.path
    os.makedirs(f"{m}/a/b")
    put(f"{m}/a/b/f", b"no fsync anywhere")
    os.symlink("a/b/f", f"{m}/l")
    fs.sync()
    put(f"{m}/a/b/f", b"after the sync")
    out = after_crash(fs, tmp_path)
    assert listing(out) == ["a", "a/b", "a/b/f", "l"]
    assert read(f"{out}/a/b/f") == b"no fsync anywhere"


def test_sparse_files_and_truncation(fs, tmp_path):
    m = fs.path
    fd = os.open(f"{m}/s", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"tail", 5 * BLOCK + 7)
        os.ftruncate(fd, 2 * BLOCK + 3)  # shrink into a hole
        os.ftruncate(fd, 3 * BLOCK)  # grow again: zeros, not old bytes
        os.pwrite(fd, b"x" * 10, BLOCK - 5)  # across a block boundary
        os.fsync(fd)
        expect = bytearray(3 * BLOCK)
        expect[BLOCK - 5:BLOCK + 5] = b"x" * 10
        assert os.pread(fd, 4 * BLOCK, 0) == expect
    finally:
        os.close(fd)
    fsync_dir(m)
    out = after_crash(fs, tmp_path)
    assert read(f"{out}/s") == expect


def test_data_blocks_match_a_plain_bytearray():
    """The copy-on-write block store against a reference, snapshots included."""
    rnd = random.Random(7)
    d, ref, snaps = Data(), bytearray(), []
    for step in range(3000):
        r = rnd.random()
        if r < 0.6:
            off = rnd.randrange(0, 4 * BLOCK)
            buf = rnd.randbytes(rnd.choice([1, 100, BLOCK, BLOCK + 17, 3 * BLOCK]))
            d.write(off, buf)
            if len(ref) < off:
                ref.extend(bytes(off - len(ref)))
            ref[off:off + len(buf)] = buf
        elif r < 0.8:
            size = rnd.randrange(0, 5 * BLOCK)
            d.truncate(size)
            ref = ref[:size] + bytes(max(0, size - len(ref)))
        else:
            snaps.append((d.snapshot(), bytes(ref)))
        assert d.size == len(ref)
        off = rnd.randrange(0, len(ref) + 1)
        assert d.read(off, 2 * BLOCK) == bytes(ref[off:off + 2 * BLOCK]), step
    for (size, blocks), want in snaps:  # later writes never leaked into an earlier snapshot
        assert size == len(want)
        assert read_blocks(blocks, size, 0, size) == want


# -- crash control ----------------------------------------------------------------------------

def steps(m):
    """Five syscalls, each exactly one mutating request, with reads in between."""
    box = {}
    return [
        lambda: os.mkdir(f"{m}/d"),
        lambda: box.__setitem__("fd", os.open(f"{m}/d/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
        lambda: os.write(box["fd"], b"x"),
        lambda: os.fsync(box["fd"]),
        lambda: os.rename(f"{m}/d/f", f"{m}/d/g"),
    ], box


def test_ops_counts_mutating_requests_only(fs):
    base = fs.ops()
    todo, box = steps(fs.path)
    for i, step in enumerate(todo, 1):
        step()
        os.stat(f"{fs.path}/d")
        os.listdir(f"{fs.path}/d")
        assert fs.ops() == base + i
    os.close(box["fd"])
    assert fs.ops() == base + 5  # close is not a mutation
    with open(f"{fs.path}/d/g", "rb") as f:
        assert f.read() == b"x"
    assert fs.ops() == base + 5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_arm_fails_exactly_the_nth_mutating_request(fs, n):
    base = fs.ops()
    fs.arm(n)
    todo, box = steps(fs.path)
    try:
        for i, step in enumerate(todo, 1):
            if i < n:
                step()
                os.listdir(fs.path)  # reads are not counted
                assert fs.state() == "live"
            elif i == n:
                with pytest.raises(OSError) as exc:
                    step()
                assert exc.value.errno == errno.EIO
                break
    finally:
        if "fd" in box:
            os.close(box["fd"])
    assert fs.state() == "crashed"
    assert fs.ops() == base + n
    for later in (lambda: os.stat(f"{fs.path}/d"), lambda: os.mkdir(f"{fs.path}/e")):
        with pytest.raises(OSError) as exc:
            later()
        assert exc.value.errno == errno.EIO
    assert fs.ops() == base + n  # a dead disk counts nothing


def test_after_a_crash_everything_fails_with_eio(fs, tmp_path):
    m = fs.path
    os.mkdir(f"{m}/d")
    put(f"{m}/d/f", b"data", fsync=True)
    held = os.open(f"{m}/d/f", os.O_RDWR)
    try:
        assert os.stat(f"{m}/d/f").st_size == 4  # cached attributes, before the crash
        fs.crash()
        assert fs.state() == "crashed"
        attempts = {
            "stat": lambda: os.stat(f"{m}/d/f"),
            "listdir": lambda: os.listdir(f"{m}/d"),
            "open": lambda: os.open(f"{m}/d/f", os.O_RDONLY),
            "create": lambda: os.open(f"{m}/new", os.O_WRONLY | os.O_CREAT, 0o644),
            "mkdir": lambda: os.mkdir(f"{m}/e"),
            "write": lambda: os.pwrite(held, b"more", 0),
            "fsync": lambda: os.fsync(held),
            "ftruncate": lambda: os.ftruncate(held, 0),
            "rename": lambda: os.rename(f"{m}/d/f", f"{m}/d/g"),
            "unlink": lambda: os.unlink(f"{m}/d/f"),
            "statvfs": lambda: os.statvfs(m),
        }
        for name, attempt in attempts.items():
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno == errno.EIO, name
    finally:
        os.close(held)  # close still works on a dead disk
    with pytest.raises(CrashFSError):
        fs.arm(1)
    with pytest.raises(CrashFSError):
        fs.sync()
    assert listing(fs.dump(tmp_path / "after")) == []  # nothing was ever fsynced in the root


def test_dump_refuses_a_directory_on_the_mount_or_a_full_one(fs, tmp_path):
    with pytest.raises(CrashFSError):
        fs.dump(os.path.join(fs.path, "inside"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(CrashFSError):
        fs.dump(tmp_path / "full")
    with pytest.raises(CrashFSError):
        fs.command("frobnicate")
    assert fs.state() == "live"


# -- SQLite in WAL mode: the model must keep exactly what SQLite made durable -------------

def sqlite_run(db: str, synchronous: str, fs: CrashFS) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    assert c.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    c.execute(f"PRAGMA synchronous={synchronous}")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    for i in range(20):  # separate commits
        c.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(3000)))
    c.execute("BEGIN")
    c.execute("INSERT INTO t VALUES (1000, 'never committed')")
    fs.crash()
    with pytest.raises(sqlite3.OperationalError):  # the disk died under SQLite
        c.execute("COMMIT")
    c.close()


def test_sqlite_wal_synchronous_full_keeps_committed_rows(fs, tmp_path):
    sqlite_run(os.path.join(fs.path, "t.db"), "FULL", fs)
    out = fs.dump(tmp_path / "after")
    c = sqlite3.connect(os.path.join(out, "t.db"))
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in c.execute("SELECT id FROM t ORDER BY id")] == list(range(20))
    finally:
        c.close()


def test_sqlite_wal_synchronous_off_loses_rows(fs, tmp_path):
    sqlite_run(os.path.join(fs.path, "t.db"), "OFF", fs)
    out = fs.dump(tmp_path / "after")
    db = os.path.join(out, "t.db")
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        return
    c = sqlite3.connect(db)
    try:
        try:
            rows = c.execute("SELECT count(*) FROM t").fetchone()[0]
        except sqlite3.OperationalError as exc:
            assert "no such table" in str(exc)
        else:
            assert rows == 0
    finally:
        c.close()


# -- what artfs does on it ------------------------------------------------------------------------

def test_locks_mmap_copy_and_metadata(fs, tmp_path):
    m = fs.path
    put(f"{m}/lock", b"")
    a, b = os.open(f"{m}/lock", os.O_RDWR), os.open(f"{m}/lock", os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)  # flock: per open file, left to the kernel
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)  # byte-range lock (what SQLite uses)
    finally:
        os.close(a)
        os.close(b)

    # MAP_SHARED writes (SQLite's -shm) reach the file and other readers
    fd = os.open(f"{m}/shm", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 32768)
        mp = mmap.mmap(fd, 32768, mmap.MAP_SHARED)
        mp[5000:5005] = b"hello"
        mp.flush()
        assert os.pread(fd, 5, 5000) == b"hello"
        mp.close()
    finally:
        os.close(fd)
    assert read(f"{m}/shm")[5000:5005] == b"hello"

    # copy_file_range inside the mount and out of it; the kernel either copies
    # through read/write itself or refuses, and then sendfile (artfs' fallback) works
    blob = os.urandom(3 * (1 << 20) + 5)
    put(f"{m}/src", blob)
    for dst in (f"{m}/dst", str(tmp_path / "outside")):
        s, d = os.open(f"{m}/src", os.O_RDONLY), os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            off = 0
            while off < len(blob):
                try:
                    n = os.copy_file_range(s, d, len(blob) - off, off, off)
                except OSError as exc:
                    assert exc.errno in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
                    os.lseek(d, off, os.SEEK_SET)
                    n = os.sendfile(d, s, off, len(blob) - off)
                assert n > 0
                off += n
        finally:
            os.close(s)
            os.close(d)
        assert read(dst) == blob

    # O_EXCL, utime, chmod, listdir, rmdir, symlinks
    with pytest.raises(FileExistsError):
        os.open(f"{m}/src", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.utime(f"{m}/src", ns=(5, 123456789))
    assert os.stat(f"{m}/src").st_mtime_ns == 123456789
    os.chmod(f"{m}/src", 0o600)
    assert stat.S_IMODE(os.stat(f"{m}/src").st_mode) == 0o600
    os.makedirs(f"{m}/x/y/z")
    with pytest.raises(OSError) as exc:
        os.rmdir(f"{m}/x")
    assert exc.value.errno == errno.ENOTEMPTY
    os.symlink("../src", f"{m}/x/l")
    assert read(f"{m}/x/l") == blob
    assert sorted(os.listdir(m)) == ["dst", "lock", "shm", "src", "x"]
    os.rename(f"{m}/x/y", f"{m}/y")
    assert os.listdir(f"{m}/y") == ["z"]
    assert os.stat(f"{m}/x").st_nlink == 2 and os.stat(m).st_nlink == 4


def test_many_small_files_and_large_ones(fs, tmp_path):
    m = fs.path
    rnd = random.Random(3)
    want = {}
    os.makedirs(f"{m}/objects")
    for i in range(2000):  # artfs' object pattern: tmp file, fsync, rename, one dir fsync per batch
        sub = f"objects/{i % 64:02x}"
        os.makedirs(f"{m}/{sub}", exist_ok=True)
        data = rnd.randbytes(rnd.randrange(0, 4000))
        put(f"{m}/tmp.{i}", data, fsync=True)
        os.rename(f"{m}/tmp.{i}", f"{m}/{sub}/{i}")
        want[f"{sub}/{i}"] = hashlib.sha256(data).hexdigest()
    big = rnd.randbytes(1 << 20)
    with open(f"{m}/big", "wb") as f:
        for _ in range(64):  # 64 MiB in 1 MiB writes
            f.write(big)
        os.fsync(f.fileno())
    with open(f"{m}/big", "rb") as f:
        for _ in range(64):
            assert f.read(1 << 20) == big
    for d in sorted({os.path.dirname(p) for p in want}):
        fsync_dir(f"{m}/{d}")
    fsync_dir(f"{m}/objects")
    fsync_dir(m)
    out = after_crash(fs, tmp_path)
    got = {}
    for d, _, files in os.walk(f"{out}/objects"):
        for n in files:
            got[os.path.relpath(os.path.join(d, n), out)] = hashlib.sha256(read(os.path.join(d, n))).hexdigest()
    assert got == want
    assert os.path.getsize(f"{out}/big") == 64 << 20
    with open(f"{out}/big", "rb") as f:
        assert f.read(1 << 20) == big


# -- the helper and the daemon ------------------------------------------------------------------------

def test_exit_unmounts_even_when_the_test_failed_and_the_mount_is_busy(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with CrashFS(tmp_path / "cfs") as fs:
            busy = os.open(os.path.join(fs.path, "held"), os.O_WRONLY | os.O_CREAT, 0o644)
            1 / 0
    try:
        assert not is_mounted(fs.path)
        assert fs.proc.returncode is not None
    finally:
        try:
            os.close(busy)
        except OSError:  # its file system is gone
            pass


def test_a_daemon_that_cannot_start_fails_fast(tmp_path):
    fs = CrashFS(tmp_path / "cfs", control=str(tmp_path / "no-such-dir" / "ctl"))
    with pytest.raises(CrashFSError, match="before it was ready"):
        fs.__enter__()
    assert not is_mounted(fs.path)
    assert fs.proc.returncode not in (None, 0)


def test_daemon_mode_detaches_and_quits(tmp_path):
    mnt, ctl = tmp_path / "mnt", str(tmp_path / "ctl")
    mnt.mkdir()
    p = subprocess.run([sys.executable, CRASHFS, str(mnt), "--control", ctl, "--log", str(tmp_path / "log")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    pidfd = os.pidfd_open(int(p.stdout))  # not our child: a pidfd is how to wait for it, and kill only it
    try:
        assert is_mounted(str(mnt))
        assert send(ctl, "state") == "live"
        assert send(ctl, "quit") == ""
        assert select.select([pidfd], [], [], 30)[0], "daemon still running after quit"
        assert not is_mounted(str(mnt))
    finally:
        if is_mounted(str(mnt)):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if not select.select([pidfd], [], [], 0)[0]:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
