"""A full disk under the store: every failure is ENOSPC (or a one-line "no space left in the
store" from the CLI), nothing is half done, and once space is freed everything works.

The store lives on a small tmpfs (8 MiB) that the test fills with a filler file of its own
on the same tmpfs; removing the filler frees the space again.  Needs root (mount).
"""
from __future__ import annotations

import errno
import os
import random
import subprocess

import pytest
from mounts import Mounted, artfs, force_unmount, is_mounted, needs_fuse

NAME = "ds"


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MiB tmpfs, always unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tmpfs"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(d)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield str(d)
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)
        assert not is_mounted(str(d))


def rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_tree(root: str, spec: dict) -> str:
    for rel, data in spec.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return root


def fill(path: str, leave: int = 0) -> int:
    """Write ``path`` (on the store's tmpfs) until the file system is full, then give back
    ``leave`` bytes; returns the filler's size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 4096, 1):  # tmpfs allocates pages: the last page too
            buf = b"\0" * chunk
            while True:
                try:
                    os.write(fd, buf)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        size = os.fstat(fd).st_size
        if leave:
            os.ftruncate(fd, max(0, size - leave))
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fsck_ok(store: str) -> None:
    p = artfs(store, "fsck", check=False)
    assert p.returncode == 0, f"fsck: {p.stdout}{p.stderr}"


def cat(store: str, ref: str, path: str) -> bytes:
    from mounts import ARTFS

    p = subprocess.run([*ARTFS, "--store", store, "cat", ref, path], capture_output=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def one_line_naming_the_store(p: subprocess.CompletedProcess, store: str, src: str | None = None) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{p.stderr}"
    line = lines[0]
    assert "Traceback" not in p.stderr
    assert store in line, f"the message does not name the store {store}: {line}"
    assert "space" in line.lower() or "full" in line.lower(), f"the message does not say the store is full: {line}"
    if src is not None:
        assert src not in line, f"the message blames the source: {line}"
    return line


# -- put ------------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_put_larger_than_the_free_space(tmpfs, tmp_path):
    store = os.path.join(tmpfs, "store")
    artfs(store, "init")
    src = make_tree(str(tmp_path / "src"), {f"part{i}.bin": rnd(i, 1_500_000) for i in range(4)}
                    | {"small.txt": b"small\n", "sub/s.txt": b"sub\n"})
    filler = os.path.join(tmpfs, "filler")
    fill(filler, leave=3 << 20)  # 3 MiB free, 6 MiB to store
    assert free_bytes(tmpfs) < 6_000_000

    p = artfs(store, "put", NAME, src, check=False)
    assert p.returncode != 0
    one_line_naming_the_store(p, store, src)
    assert os.listdir(os.path.join(store, "tmp")) == [], "partial files left in the store's tmp/"
    assert artfs(store, "log", NAME, check=False).returncode != 0  # no version
    fsck_ok(store)

    os.unlink(filler)
    assert artfs(store, "put", NAME, src).stdout.strip() == f"{NAME}:v0"
    fsck_ok(store)
    assert cat(store, f"{NAME}:v0", "part3.bin") == rnd(3, 1_500_000)
    assert cat(store, f"{NAME}:v0", "sub/s.txt") == b"sub\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["put", "gc", "log", "mount"])
def test_commands_on_a_completely_full_store_name_the_full_disk(tmpfs, tmp_path, command):
    """A command on a completely full store works (reading needs no space) or fails with one
    line naming the store as full (a put must) -- never "not an artfs metadata database"."""
    store = os.path.join(tmpfs, "store")
    artfs(store, "init")
    src = make_tree(str(tmp_path / "src"), {"a.txt": b"a\n", "b.bin": rnd(1, 100_000)})
    artfs(store, "put", NAME, src)
    fill(os.path.join(tmpfs, "filler"))
    if command == "mount":
        mnt = str(tmp_path / "mnt")
        os.makedirs(mnt)
        p = artfs(store, "mount", f"{NAME}:v0", mnt, check=False, timeout=60)
        try:
            if p.returncode == 0:
                with open(os.path.join(mnt, "a.txt"), "rb") as f:
                    assert f.read() == b"a\n"
                return
        finally:
            force_unmount(mnt)
        one_line_naming_the_store(p, store)
        return
    args = {"put": ["put", NAME, str(tmp_path / "src2")], "gc": ["gc"], "log": ["log", NAME]}[command]
    make_tree(str(tmp_path / "src2"), {"c.bin": rnd(2, 500_000)})
    p = artfs(store, *args, check=False)
    assert "not an artfs metadata database" not in p.stderr, p.stderr
    if command == "put" or p.returncode != 0:
        assert p.returncode != 0
        one_line_naming_the_store(p, store, str(tmp_path / "src2") if command == "put" else None)
    os.unlink(os.path.join(tmpfs, "filler"))
    fsck_ok(store)


# -- a draft mount on a full store ------------------------------------------------------------

def try_(fn) -> int | None:
    """Run ``fn``; the errno it failed with, or None."""
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes, off: int) -> None:
    """pwrite until all is written (a full disk may first give a short count, then ENOSPC)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def commit(m: Mounted, message: bytes = b"msg") -> tuple[int | None, str]:
    ctl = m.path(".artfs", "commit")
    fd = os.open(ctl, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, message)
    except OSError as exc:
        return exc.errno, ""
    finally:
        os.close(fd)
    with open(ctl) as f:
        return None, f.read().strip()


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(180)
def test_draft_mount_on_a_full_store(tmpfs, tmp_path):
    store = os.path.join(tmpfs, "store")
    artfs(store, "init")
    big = rnd(1, 1 << 20)
    src = make_tree(str(tmp_path / "src"), {"big.bin": big, "a.txt": b"a\n", "sub/s.txt": b"s\n"})
    assert artfs(store, "put", NAME, src).stdout.strip() == f"{NAME}:v0"
    mnt = str(tmp_path / "mnt")
    keep = rnd(2, 200_000)
    filler = os.path.join(tmpfs, "filler")
    with Mounted(store, f"{NAME}:draft", mnt) as m:
        write_new(m.path("keep.txt"), keep)
        held = os.open(m.path("held.txt"), os.O_RDWR | os.O_CREAT, 0o644)  # open through the failures
        try:
            os.write(held, b"held open\n")
            os.fsync(held)
            before = set(m.status())
            assert before == {"A held.txt", "A keep.txt"}
            fill(filler)

            # writing a file: ENOSPC to the writer (at the create, or at the write)
            e = try_(lambda: write_new(m.path("new.bin"), rnd(3, 300_000)))
            assert e == errno.ENOSPC, f"writing a new file on a full store: errno {e}"
            e = try_(lambda: pwrite_all(held, rnd(4, 300_000), 10))
            assert e == errno.ENOSPC, f"writing into an open file on a full store: errno {e}"
            now = set(m.status())
            assert now - before <= {"A new.bin"}, now  # a create that worked before its write failed
            if "A new.bin" in now:
                assert os.path.getsize(m.path("new.bin")) < 300_000
                e = try_(lambda: os.unlink(m.path("new.bin")))
                assert e in (None, errno.ENOSPC), e
            before = set(m.status())

            # metadata-only changes: done, or ENOSPC and nothing changed (never EIO)
            e = try_(lambda: os.unlink(m.path("big.bin")))
            assert e in (None, errno.ENOSPC), f"rm on a full store: errno {e}"
            want = before | {"D big.bin"} if e is None else before
            assert set(m.status()) == want
            before = want
            e = try_(lambda: open(m.path("touched"), "w").close())
            assert e in (None, errno.ENOSPC), f"touch on a full store: errno {e}"
            want = before | {"A touched"} if e is None else before
            assert set(m.status()) == want
            before = want

            # SQLite itself runs out of space: many small changes until the database must grow
            made = []
            for i in range(3000):
                e = try_(lambda i=i: open(m.path(f"t{i:04d}"), "w").close())
                if e is not None:
                    break
                made.append(f"A t{i:04d}")
            assert e == errno.ENOSPC, f"the database out of space: errno {e} (after {len(made)} files)"
            before |= set(made)
            assert set(m.status()) == before

            # a commit: ENOSPC, the draft as it was, the open file still the same
            e, _ = commit(m)
            assert e == errno.ENOSPC, f"commit on a full store: errno {e}"
            assert set(m.status()) == before
            assert os.pread(held, 10, 0) == b"held open\n"  # (its tail: what the short write took)
            with open(m.path("keep.txt"), "rb") as f:
                assert f.read() == keep

            # space again: everything works
            os.unlink(filler)
            os.ftruncate(held, 10)
            os.pwrite(held, b"written after\n", 10)
            os.fsync(held)
            write_new(m.path("after.txt"), b"after\n")
            e, outcome = commit(m)
            assert e is None and outcome == f"{NAME}:v1", (e, outcome)
        finally:
            os.close(held)
        assert m.status() == []
    fsck_ok(store)
    assert cat(store, f"{NAME}:v1", "held.txt") == b"held open\nwritten after\n"
    assert cat(store, f"{NAME}:v1", "keep.txt") == keep
    assert cat(store, f"{NAME}:v1", "after.txt") == b"after\n"
    ls = artfs(store, "ls", f"{NAME}:v1").stdout
    assert ("big.bin" in ls) == ("D big.bin" not in before)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_draft_unchanged_across_a_remount_after_failures(tmpfs, tmp_path):
    """What the failures on a full disk left is what a new mount shows (the database, not
    memory, holds the draft)."""
    store = os.path.join(tmpfs, "store")
    artfs(store, "init")
    src = make_tree(str(tmp_path / "src"), {"big.bin": rnd(1, 1 << 20), "a.txt": b"a\n"})
    artfs(store, "put", NAME, src)
    mnt = str(tmp_path / "mnt")
    filler = os.path.join(tmpfs, "filler")
    with Mounted(store, f"{NAME}:draft", mnt) as m:
        write_new(m.path("keep.txt"), rnd(2, 100_000))
        fill(filler)
        for fn in (lambda: os.unlink(m.path("big.bin")), lambda: open(m.path("t"), "w").close(),
                   lambda: os.rename(m.path("a.txt"), m.path("b.txt")), lambda: os.mkdir(m.path("d"))):
            e = try_(fn)
            assert e in (None, errno.ENOSPC), e
        assert commit(m)[0] == errno.ENOSPC
        seen = m.status()
    os.unlink(filler)  # a mount needs a little space (see the full-store command test)
    with Mounted(store, f"{NAME}:draft", mnt) as m:
        assert m.status() == seen
        assert "A keep.txt" in seen
    fsck_ok(store)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_fsync_on_a_full_store_is_not_eio(tmpfs, tmp_path):
    store = os.path.join(tmpfs, "store")
    artfs(store, "init")
    src = make_tree(str(tmp_path / "src"), {"a.txt": b"a\n"})
    artfs(store, "put", NAME, src)
    mnt = str(tmp_path / "mnt")
    with Mounted(store, f"{NAME}:draft", mnt) as m:
        fd = os.open(m.path("f.txt"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.fsync(fd)  # a checkpoint: the database holds everything so far
            os.mkdir(m.path("many"))
            for i in range(150):  # new rows in the WAL (fewer than an automatic checkpoint takes), which
                # the next checkpoint copies into pages past the database's end
                open(m.path(f"many/file-with-a-longish-name-{i:04d}.txt"), "w").close()
            fill(os.path.join(tmpfs, "filler"))
            e = try_(lambda: os.fsync(fd))
        finally:
            os.close(fd)
        assert e in (None, errno.ENOSPC), f"fsync on a full store: {os.strerror(e)}"
        dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            e = try_(lambda: os.fsync(dfd))
        finally:
            os.close(dfd)
        assert e in (None, errno.ENOSPC), f"fsyncdir on a full store: {os.strerror(e)}"
