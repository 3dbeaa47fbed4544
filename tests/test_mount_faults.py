"""SIGKILL of the mount daemon in the middle of writes and commits (DESIGN.md §1, §5, §8).

A killed daemon must leave the store consistent (``artfs fsck`` passes), the
draft resumable (``NAME:draft`` mounts again), everything fsynced before the
kill intact, and a commit either wholly done (a version with exactly the
draft's content, and a clean draft) or not done at all (no version, the
draft still holding every change) — never a half version.  Kill points are
drawn from a seeded random generator so a failure can be replayed.
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import pytest

from mounts import (IN_CREATE, IN_DELETE, IN_MODIFY, IN_MOVED_FROM, Inotify, Mounted, artfs, expect_ready,
                    is_mounted, needs_fuse, wait_events)

pytestmark = [needs_fuse, pytest.mark.mount]

SEED = 20240611
MiB = 1024 * 1024


class Env:
    pass


@pytest.fixture(scope="module")
def fenv(tmp_path_factory):
    e = Env()
    base = tmp_path_factory.mktemp("faults")
    e.base = str(base)
    e.store = str(base / "store")
    e.mnt = str(base / "mnt")
    artfs(e.store, "init")
    yield e
    with open("/proc/mounts") as f:
        left = [ln for ln in f if e.base in ln]
    assert not left, f"mounts left behind: {left}"
    p = artfs(e.store, "fsck", check=False)
    assert p.returncode == 0, f"fsck after module: {p.stdout}{p.stderr}"


def versions(store: str, name: str) -> list[dict]:
    return json.loads(artfs(store, "log", "--json", name).stdout)




def assert_fsck(store: str, committed: bool = False) -> None:
    """fsck passes after a kill.  ``committed``: the killed daemon had just made a version."""
    p = artfs(store, "fsck", check=False)
    assert p.returncode == 0, f"fsck after kill: {p.stdout}{p.stderr}"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def wait_dead(proc: subprocess.Popen, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args!r} still running {timeout}s after the daemon was killed")


# -- (a) kill in the middle of a large write --------------------------------------------------

BIG_BLOCKS = 200


def stream_block(seed: int, i: int, _cache: dict = {}) -> bytes:
    """Block i (1 MiB) of the deterministic stream the background writer writes."""
    base = _cache.get(seed)
    if base is None:
        base = _cache[seed] = random.Random(seed).randbytes(MiB)
    return struct.pack("<QQ", seed, i) + base[16:]


WRITER = r"""
import os, random, struct, sys
path, seed, blocks, threshold, say = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
base = random.Random(seed).randbytes(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
written = 0
for i in range(blocks):
    buf = struct.pack("<QQ", seed, i) + base[16:]
    off = 0
    while off < len(buf):
        n = os.write(fd, buf[off:])
        off += n
        written += n
        if say >= 0 and written >= threshold:  # tell the test (it kills the daemon now), write on
            os.write(say, b"%d\n" % written)
            os.close(say)
            say = -1
os.close(fd)
"""


def assert_stream_prefix(path: str, seed: int) -> int:
    """The file holds a prefix of the stream: whatever reached it is right, nothing else is there."""
    size = os.path.getsize(path)
    assert size <= BIG_BLOCKS * MiB
    with open(path, "rb") as f:
        i = 0
        while True:
            got = f.read(MiB)
            if not got:
                break
            want = stream_block(seed, i)[: len(got)]
            assert got == want, f"{path}: block {i} differs from what was written"
            i += 1
    return size


@pytest.mark.timeout(240)
def test_kill_during_large_write(fenv):
    store, mnt = fenv.store, fenv.mnt
    src = os.path.join(fenv.base, "w_src")
    write_file(os.path.join(src, "base.txt"), b"base\n")
    assert artfs(store, "put", "wr", src).stdout.strip() == "wr:v0"
    before = versions(store, "wr")
    rng = random.Random(SEED)
    fsynced: dict[str, bytes] = {}
    bigs: dict[str, tuple[int, bool]] = {}  # name -> (stream seed, writer succeeded)
    seen: dict[str, int] = {}  # name -> size observed through the mount just before the kill
    trials = 3
    for k in range(trials + 1):
        with Mounted(store, "wr:draft", mnt) as m:
            # everything fsynced before an earlier kill is here, exactly
            for name, data in fsynced.items():
                assert read(m.path(name)) == data, f"trial {k}: fsynced {name} lost or changed"
            for name, (seed, finished) in bigs.items():
                size = assert_stream_prefix(m.path(name), seed)
                assert size == BIG_BLOCKS * MiB or not finished, f"{name}: the writer succeeded, the file is short"
                # a daemon crash loses no acknowledged write: the size seen before the kill is still there
                assert size >= seen[name], f"{name}: {size} bytes after the kill, {seen[name]} seen before it"
            status = m.status()
            assert sorted(f"A {n}" for n in list(fsynced) + list(bigs)) == sorted(status)
            with open(m.path(".artfs", "ref")) as f:
                assert f.read().strip() == "wr:draft (parent wr:v0)"
            if k == trials:
                break

            # file A: written fully and fsynced
            name_a = f"fsynced_{k}.bin"
            data_a = random.Random(SEED + k).randbytes(2 * MiB + 1000 * k + 1)
            fd = os.open(m.path(name_a), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data_a)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            fsynced[name_a] = data_a

            # file B: a large write, killed part way through
            name_b, seed_b = f"big_{k}.bin", SEED * 10 + k
            threshold = rng.randrange(1, 120) * MiB + rng.randrange(MiB)  # >= 80 MiB before the end
            say_r, say_w = os.pipe()  # the writer says on it when `threshold` bytes were written
            try:
                w = subprocess.Popen([sys.executable, "-c", WRITER, m.path(name_b), str(seed_b), str(BIG_BLOCKS),
                                      str(threshold), str(say_w)], pass_fds=(say_w,),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                os.close(say_w)
                bigs[name_b] = (seed_b, False)
                expect_ready(say_r, f"trial {k}: writer past {threshold} bytes", w, timeout=120)
            finally:
                os.close(say_r)
            seen[name_b] = os.stat(m.path(name_b)).st_size
            assert seen[name_b] >= threshold
            m.kill()
            rc = wait_dead(w)
            bigs[name_b] = (seed_b, rc == 0)  # rc 0: it finished before the kill (the margin makes this rare)
            assert not is_mounted(mnt), "a killed daemon left its mount"
        # after the kill: a consistent store, and no version made by anybody
        assert not is_mounted(mnt)
        assert_fsck(store)
        assert versions(store, "wr") == before


# -- (b) kill in the middle of a commit ----------------------------------------------------------

NFILES = 200
FILE_SIZE = 256 * 1024


def trial_content(k: int) -> dict[str, bytes | None]:
    """Trial k's changes: 200 files under d/ (new in trial 0, modified after) and trial.txt."""
    out: dict[str, bytes | None] = {"d": None}
    rnd = random.Random(SEED * 100 + k)
    for i in range(NFILES):
        out[f"d/f{i:03d}"] = rnd.randbytes(FILE_SIZE)
    out["trial.txt"] = f"trial {k}\n".encode()
    return out


def tree_content(root: str) -> dict[str, bytes | None]:
    """path -> bytes (files) or None (directories), without the control directory."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out[os.path.normpath(os.path.join(rel, n))] = None
        for n in filenames:
            out[os.path.normpath(os.path.join(rel, n))] = read(os.path.join(dirpath, n))
    return out


def expected_status(parent: dict, draft: dict) -> list[str]:
    lines = []
    for p in set(parent) | set(draft):
        if p not in parent:
            lines.append(f"A {p}")
        elif p not in draft:
            lines.append(f"D {p}")
        elif parent[p] != draft[p]:
            lines.append(f"M {p}")
    return sorted(lines)


def nfiles(content: dict) -> int:
    return sum(1 for v in content.values() if v is not None)


def commit_watch(store: str) -> Inotify:
    """Watches what a commit does, step by step: objects written (tmp/: created, then renamed
    into objects/), the database (meta.sqlite*), the draft's scratch files deleted after it."""
    ino = Inotify()
    ino.watch(os.path.join(store, "tmp"), IN_CREATE | IN_MOVED_FROM)
    ino.watch(store, IN_MODIFY)
    drafts = os.path.join(store, "drafts")
    for name in os.listdir(drafts):
        ino.watch(os.path.join(drafts, name), IN_DELETE)
    return ino


@pytest.mark.timeout(300)
def test_kill_during_commit(fenv):
    """Kill points are points in the commit's progress, not in time: after the n-th step (object
    file created or renamed, database write, scratch file deleted) of the commit, counted by
    inotify.  Trial 0 counts the steps of an undisturbed commit; later trials kill at 0, 1/3
    and 2/3 of that count, at the first scratch file the commit deletes (its record is durable,
    its cleanup begun), and at a seeded random point up to 1.3 times the count (past the end:
    after the commit)."""
    store, mnt = fenv.store, fenv.mnt
    src = os.path.join(fenv.base, "c_src")
    for i in range(5):
        write_file(os.path.join(src, "keep", f"k{i}.txt"), f"keep {i}\n".encode())
    assert artfs(store, "put", "cm", src).stdout.strip() == "cm:v0"
    committed = {"keep": None, **{f"keep/k{i}.txt": f"keep {i}\n".encode() for i in range(5)}}
    draft = dict(committed)  # what the draft holds
    rng = random.Random(SEED + 1)
    outcomes = []
    steps = None  # how many steps an undisturbed commit took (trial 0)
    ndelays = 5
    k = 0
    while True:
        with Mounted(store, "cm:draft", mnt) as m:
            vs = versions(store, "cm")
            with open(m.path(".artfs", "ref")) as f:
                assert f.read().strip() == f"cm:draft (parent cm:v{vs[0]['version']})"
            # the draft holds exactly what it should: all changes, or none after a commit
            assert m.status() == expected_status(committed, draft)
            assert tree_content(mnt) == draft
            if k > ndelays:
                break

            new = trial_content(k)
            for p, data in new.items():
                if data is not None:
                    write_file(m.path(p), data)
            draft.update(new)
            assert m.status() == expected_status(committed, draft)

            commit_path = m.path(".artfs", "commit")
            with commit_watch(store) as watch:
                w = subprocess.Popen(["sh", "-c", f"printf 'trial {k}' > {commit_path}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if steps is None:
                    # trial 0 calibrates: an undisturbed commit, to know how many steps one takes
                    seen = wait_events(watch, 1 << 30, "calibration", procs=[w], timeout=120)
                    assert wait_dead(w, 60) == 0, w.stderr.read()
                    steps = len(seen + watch.events())
                    assert steps > NFILES, f"an undisturbed commit made only {steps} steps"
                    point = None
                elif k == ndelays - 1:
                    # at the first scratch file deleted: the version is durable, the cleanup has begun
                    point = "first deletion"
                    while True:
                        got = wait_events(watch, 1, f"trial {k}: kill point", procs=[w], timeout=120)
                        if not got or any(mask & IN_DELETE for _, _, mask in got):
                            break
                    m.kill()
                else:
                    point = (rng.randrange(0, int(1.3 * steps) + 1) if k == ndelays
                             else steps * (k - 1) // (ndelays - 2))
                    wait_events(watch, point, f"trial {k}: kill point", procs=[w], timeout=120)
                    m.kill()
                    wait_dead(w)
                    assert not is_mounted(mnt), "a killed daemon left its mount"
        assert not is_mounted(mnt)
        after = versions(store, "cm")
        assert_fsck(store, committed=len(after) == len(vs) + 1)
        assert len(after) in (len(vs), len(vs) + 1), "more than one version from one commit"
        if point is not None and w.returncode == 0:
            assert len(after) == len(vs) + 1, "the commit write succeeded but no version exists"
        if len(after) == len(vs) + 1:
            v = after[0]
            assert v["version"] == vs[0]["version"] + 1
            assert v["message"] == f"trial {k}"
            assert v["file_count"] == nfiles(draft), "a half version"
            assert v["total_bytes"] == sum(len(x) for x in draft.values() if x is not None)
            out = os.path.join(fenv.base, f"export_{k}")
            artfs(store, "export", f"cm:v{v['version']}", out)
            assert tree_content(out) == draft, "the version differs from the draft it was made from"
            committed = dict(draft)
            outcomes.append((k, point, "committed"))
        else:
            assert after == vs
            outcomes.append((k, point, "not committed"))
        k += 1
    print("kill-during-commit outcomes (trial, kill point, result):", outcomes, f"an undisturbed commit: {steps} steps")
    assert outcomes[0][2] == "committed"


# -- (c) -----------------------------------------------------------------------------------

def test_no_mount_left(fenv):
    """After all the kills above, nothing of ours is mounted and no daemon of ours runs."""
    with open("/proc/mounts") as f:
        assert not [ln for ln in f if fenv.base in ln]
    assert not is_mounted(fenv.mnt)
    assert os.listdir(fenv.mnt) == []
    daemons = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"artfs.fuse.daemon" in cmd and fenv.store.encode() in cmd:
            daemons.append(pid)
    assert not daemons, f"mount daemons still running: {daemons}"
