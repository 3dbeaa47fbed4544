"""Many processes writing one store at once (DESIGN.md §1, §5).

Each worker is a fresh interpreter (``python -c``), so they share nothing but
the store on disk, as separate programs would.  They say they are ready on a
pipe and wait on a shared start pipe, so that their writes really overlap.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


from artfs import repo
from artfs.storage.store import Store
from mounts import read_pipe

WORKERS = 6
EACH = 4

PRELUDE = textwrap.dedent("""
    import json, os, sys
    import artfs, artfs.repo
    store_path, wid, n, ready_fd, go_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    os.write(ready_fd, b"ready")  # started, artfs imported
    os.close(ready_fd)
    os.read(go_fd, 1)  # the start line: EOF once the parent lets everyone go
    os.close(go_fd)
    out = []
""")


def run_workers(code: str, store_path: str, tmp_path, n: int | None = None, workers: int | None = None) -> list[list]:
    """Start ``workers`` processes running PRELUDE+code, release them together, return what each printed.

    Each worker says it is ready on a pipe of its own (EOF if it dies first) and waits on one
    shared start pipe, which the parent closes to release them all at once."""
    n = EACH if n is None else n
    workers = WORKERS if workers is None else workers
    go_r, go_w = os.pipe()
    procs, ready = [], []
    try:
        for w in range(workers):
            r, wr = os.pipe()
            try:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", PRELUDE + textwrap.dedent(code), store_path, str(w), str(n), str(wr),
                     str(go_r)], pass_fds=(wr, go_r), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=str(tmp_path)))
            finally:
                os.close(wr)
            ready.append(r)
        os.close(go_r)
        go_r = -1
        for w, r in enumerate(ready):  # every worker has started and imported artfs
            if not read_pipe(r, f"worker {w} ready", timeout=60):
                break  # it died: release the others; its error is reported below
    finally:
        for fd in ready + [go_r]:
            if fd >= 0:
                os.close(fd)
        os.close(go_w)  # go
    results = []
    failures = []
    for w, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            failures.append(f"worker {w} timed out: {err.decode()[-2000:]}")
            continue
        if p.returncode != 0 or err.strip():
            failures.append(f"worker {w} exit {p.returncode}: {err.decode()[-2000:]}")
        else:
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert not any("database is locked" in f for f in failures), "\n".join(failures)
    assert not failures, "\n".join(failures)
    return results


def check_dense(store: Store, name: str, expect: int) -> list[dict]:
    rows = store.meta.versions(name)
    assert sorted(r["num"] for r in rows) == list(range(expect))
    assert store.meta.alias(name, "latest") == expect - 1
    return rows


PUT_WORKER = """
from artfs import repo
from artfs.storage.store import Store
s = Store.open(store_path)
for i in range(n):
    src = os.path.join(os.getcwd(), f"src-{wid}-{i}")
    os.makedirs(os.path.join(src, "shared"))
    with open(os.path.join(src, f"w{wid}-i{i}.txt"), "w") as f:
        f.write(f"worker {wid} iteration {i}\\n")
    with open(os.path.join(src, "shared", "common.bin"), "wb") as f:
        f.write(b"the same bytes in every version" * 1000)
    v, unchanged = repo.put_dir(s, "shared-art", src, message=f"{wid}/{i}")
    assert not unchanged
    out.append([v.num, v.message])
print(json.dumps(out))
"""


def test_concurrent_puts_get_dense_distinct_numbers(store_path, store, tmp_path):
    results = run_workers(PUT_WORKER, store_path, tmp_path)
    nums = [num for r in results for num, _ in r]
    assert len(nums) == WORKERS * EACH and len(set(nums)) == len(nums)
    rows = check_dense(store, "shared-art", WORKERS * EACH)
    # every process's versions exist, with the content it put
    by_num = {r["num"]: r for r in rows}
    for w, r in enumerate(results):
        for i, (num, msg) in enumerate(r):
            assert msg == f"{w}/{i}" and by_num[num]["message"] == msg
            v = repo.resolve(store, f"shared-art:v{num}")
            e = repo.lookup(store, v, f"w{w}-i{i}.txt")
            assert b"".join(repo.iter_content(store, e)) == f"worker {w} iteration {i}\n".encode()
    # each worker's own versions are in the order it made them
    for r in results:
        assert [num for num, _ in r] == sorted(num for num, _ in r)


API_WORKER = """
import artfs
conflicts = []
for i in range(n):
    name = f"f-{wid}-{i}.txt"
    with open(name, "w") as f:
        f.write(f"{wid}:{i}")
    while True:
        if i == 0:
            a = artfs.Artifact("api-art", store=store_path, metadata={"w": wid})
            a.add_file(name)
        else:
            # an incremental draft from whatever is latest right now
            a = artfs.use_artifact("api-art:latest", store=store_path).new_draft()
            a.add_file(name, name=f"w{wid}/{name}")
        try:
            v = a.save()
            break
        except artfs.Conflict:
            # a whole new version (i == 0 of another worker) removed what this draft changes:
            # the lost-update rule refuses; start again from the new latest
            a.discard()
            conflicts.append(i)
    out.append([v.version, v.unchanged])
print(json.dumps(out))
"""


def test_concurrent_api_saves(store_path, store, tmp_path):
    results = run_workers(API_WORKER, store_path, tmp_path)
    versions = [ver for r in results for ver, unchanged in r]
    assert not any(unchanged for r in results for _, unchanged in r)
    assert len(set(versions)) == WORKERS * EACH
    check_dense(store, "api-art", WORKERS * EACH)
    assert store.meta.drafts() == []
    for w, r in enumerate(results):
        for i, (ver, _) in enumerate(r):
            v = repo.resolve(store, f"api-art:{ver}")
            path = f"f-{w}-{i}.txt" if i == 0 else f"w{w}/f-{w}-{i}.txt"
            assert b"".join(repo.iter_content(store, repo.lookup(store, v, path))) == f"{w}:{i}".encode()


SAME_WORKER = """
from artfs import repo
from artfs.storage.store import Store
s = Store.open(store_path)
src = os.path.join(os.getcwd(), f"copy-{wid}")  # its own copy: same content, other mtimes and inodes
os.makedirs(os.path.join(src, "d"))
for rel, data in (("a.txt", b"identical"), ("d/b.bin", b"also identical" * 100)):
    with open(os.path.join(src, rel), "wb") as f:
        f.write(data)
    os.utime(os.path.join(src, rel), ns=(wid * 10**9, wid * 10**9))
v, unchanged = repo.put_dir(s, "same", src)
out.append([v.num, unchanged])
print(json.dumps(out))
"""


def test_concurrent_identical_puts_make_one_version(store_path, store, tmp_path):
    results = run_workers(SAME_WORKER, store_path, tmp_path, n=1)
    outcomes = [tuple(r[0]) for r in results]
    assert sorted(outcomes) == [(0, False)] + [(0, True)] * (WORKERS - 1)
    check_dense(store, "same", 1)


INIT_WORKER = """
from artfs import repo
from artfs.storage.store import Store
s = Store.init(store_path)  # every worker creates the store at once
src = os.path.join(os.getcwd(), f"init-{wid}")
os.makedirs(src)
with open(os.path.join(src, "f"), "w") as f:
    f.write(str(wid))
v, unchanged = repo.put_dir(s, "born-together", src)
out.append([v.num, unchanged])
print(json.dumps(out))
"""


def test_concurrent_store_creation(tmp_path, fsck_clean):
    path = str(tmp_path / "new-store")
    results = run_workers(INIT_WORKER, path, tmp_path, n=1)
    assert sorted(r[0][0] for r in results) == list(range(WORKERS))
    s = Store.open(path)
    check_dense(s, "born-together", WORKERS)
    fsck_clean(s)


GC_WORKER = """
from artfs import repo
from artfs.storage.store import Store
s = Store.open(store_path)
if wid == 0:
    # the collector: runs while the others write; must never delete what they are about to use
    writers = [os.path.join(os.getcwd(), f"writer-{w}-done") for w in range(1, @WORKERS@)]
    runs = 0
    while not all(os.path.exists(p) for p in writers) and runs < 400:
        repo.gc(s)
        runs += 1
    out.append(runs)
else:
    for i in range(n):
        src = os.path.join(os.getcwd(), f"gcsrc-{wid}-{i}")
        os.makedirs(src)
        with open(os.path.join(src, "f"), "w") as f:
            f.write(f"{wid}/{i}")
        # garbage for the collector: an unchanged put leaves unreferenced trees behind
        v, _ = repo.put_dir(s, f"gc-{wid}", src)
        os.utime(os.path.join(src, "f"), ns=(i, i))
        repo.put_dir(s, f"gc-{wid}", src)
        a = __import__("artfs").Artifact(f"gcapi-{wid}", store=s)
        a.add_file(os.path.join(src, "f"))
        a.save()
        out.append(v.num)
    open(os.path.join(os.getcwd(), f"writer-{wid}-done"), "w").close()
print(json.dumps(out))
"""


def test_gc_while_writing(store_path, store, tmp_path):
    # the collector collects until every writer has made its done file (gc itself is the loop's
    # pace: no thread, no sleep)
    results = run_workers(GC_WORKER.replace("@WORKERS@", str(WORKERS)), store_path, tmp_path, n=3)
    assert results[0][0] >= 1  # the collector really ran alongside the writers
    for w in range(1, WORKERS):
        check_dense(store, f"gc-{w}", 3)
        for i in range(3):
            v = repo.resolve(store, f"gc-{w}:v{i}")
            assert b"".join(repo.iter_content(store, repo.lookup(store, v, "f"))) == f"{w}/{i}".encode()
        v = repo.resolve(store, f"gcapi-{w}")
        assert b"".join(repo.iter_content(store, repo.lookup(store, v, "f")))


# -- the races above, made deterministic ---------------------------------------------------------------
# Released together through a pipe, the workers above meet these races in most runs; here each is
# forced by running the other party at the exact point where it interleaves.

def test_store_init_interleaved_with_another_init(tmp_path, monkeypatch, fsck_clean):
    path = str(tmp_path / "s")
    real_rename = os.rename
    other = []

    def rename(src, dst, *a, **k):
        if os.path.basename(dst) == "artfs-store" and not other:
            other.append(None)
            other[0] = Store.init(path)  # another process finishes creating the store right now
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    s = Store.init(path)
    monkeypatch.undo()
    assert other, "the other init did not run where it should have"
    fsck_clean(Store.open(path))
    assert s.path == other[0].path


def test_gc_while_a_draft_is_discarded(store, tmp_path):
    import artfs

    src = tmp_path / "f.txt"
    src.write_text("x")
    a = artfs.Artifact("racer", store=store)
    a.add_file(str(src))
    assert any(r["key"].startswith("api:") for r in store.meta.drafts())
    real = store.meta.drafts

    def drafts():
        rows = real()
        a.discard()  # the writer drops its draft right after gc listed the drafts
        store.meta.drafts = real
        return rows

    store.meta.drafts = drafts
    try:
        repo.gc(store)
    finally:
        store.meta.drafts = real
    assert store.meta.drafts() == []
