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
import time

import pytest

from mounts import Mounted, artfs, is_mounted, needs_fuse

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


def assert_fsck(store: str) -> None:
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
path, seed, blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = random.Random(seed).randbytes(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(blocks):
    buf = struct.pack("<QQ", seed, i) + base[16:]
    off = 0
    while off < len(buf):
        off += os.write(fd, buf[off:])
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
            w = subprocess.Popen([sys.executable, "-c", WRITER, m.path(name_b), str(seed_b), str(BIG_BLOCKS)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            bigs[name_b] = (seed_b, False)
            deadline = time.monotonic() + 60
            while True:
                try:
                    seen[name_b] = os.stat(m.path(name_b)).st_size
                    if seen[name_b] >= threshold:
                        break
                except FileNotFoundError:
                    pass
                assert w.poll() is None, f"writer ended before the kill: {w.stderr.read()!r}"
                assert time.monotonic() < deadline, "writer too slow"
                time.sleep(0.002)
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


@pytest.mark.timeout(300)
def test_kill_during_commit(fenv):
    store, mnt = fenv.store, fenv.mnt
    src = os.path.join(fenv.base, "c_src")
    for i in range(5):
        write_file(os.path.join(src, "keep", f"k{i}.txt"), f"keep {i}\n".encode())
    assert artfs(store, "put", "cm", src).stdout.strip() == "cm:v0"
    committed = {"keep": None, **{f"keep/k{i}.txt": f"keep {i}\n".encode() for i in range(5)}}
    draft = dict(committed)  # what the draft holds
    rng = random.Random(SEED + 1)
    outcomes = []
    duration = None
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
            t0 = time.monotonic()
            w = subprocess.Popen(["sh", "-c", f"printf 'trial {k}' > {commit_path}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if duration is None:
                # trial 0 calibrates: an undisturbed commit, to know how long one takes
                assert wait_dead(w, 60) == 0, w.stderr.read()
                duration = time.monotonic() - t0
                delay = None
            else:
                delay = rng.uniform(0, 1.3 * duration) if k == ndelays else duration * (k - 1) / (ndelays - 2)
                time.sleep(delay)
                m.kill()
                wait_dead(w)
                assert not is_mounted(mnt), "a killed daemon left its mount"
        assert not is_mounted(mnt)
        assert_fsck(store)
        after = versions(store, "cm")
        assert len(after) in (len(vs), len(vs) + 1), "more than one version from one commit"
        if delay is not None and w.returncode == 0:
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
            outcomes.append((k, delay, "committed"))
        else:
            assert after == vs
            outcomes.append((k, delay, "not committed"))
        k += 1
    print("kill-during-commit outcomes (trial, delay s, result):", outcomes, f"commit took {duration:.3f}s")
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
