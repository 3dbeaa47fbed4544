"""Collaborative versions (DESIGN.md §6): many writers upsert into one pending
version keyed by a distributed id, one finish seals it as the next version.

Concurrent writers are separate programs (``collab_worker.py`` through the
API, or ``artfs put --distributed-id`` through the CLI) that share nothing
but the store on disk.  Every resulting version is compared file by file,
bytes included, with the union the writers contributed.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import uuid

import pytest

import artfs
from artfs import repo
from artfs.storage.store import Store
from mounts import (ARTFS, IN_CREATE, IN_DELETE, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO, Inotify, Mounted,  # noqa: F401
                    ReadyFifo, mstore, needs_fuse, wait_events, wait_until)
from mounts import artfs as cli

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "collab_worker.py")


# -- helpers ------------------------------------------------------------------------------

def spawn(tmp_path, store_path: str, name: str, did: str | None, steps: list, tag: str, *,
          parent: str | None = None, go: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start one API writer (collab_worker.py) running ``steps``.  With ``go``, its ready file
    is a FIFO (``p.ready``) that it opens and closes once it has imported artfs and waits for
    ``go``: ``wait_ready`` waits on that, not on a poll."""
    ready = ReadyFifo(tmp_path / f"ready-{tag}") if go else None
    spec = {"store": store_path, "name": name, "did": did, "parent": parent, "steps": steps,
            "scratch": str(tmp_path / f"scratch-{tag}"), "ready": str(tmp_path / f"ready-{tag}"), "go": go}
    path = tmp_path / f"spec-{tag}.json"
    path.write_text(json.dumps(spec))
    p = subprocess.Popen([sys.executable, WORKER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, **(env or {})), cwd=str(tmp_path))
    p.ready = ready
    return p


def wait_ready(procs: list[subprocess.Popen], what: str) -> None:
    """Every worker has imported artfs and waits for its go file (each said so on its FIFO)."""
    for w, p in enumerate(procs):
        try:
            p.ready.wait(f"{what} {w} ready", [p], timeout=60)
        finally:
            p.ready.close()


def outcome(p: subprocess.Popen, what: str, timeout: float = 60) -> list:
    """Wait for a worker; it must succeed silently; returns its JSON outcomes."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"{what} timed out: {err.decode()[-2000:]}")
    assert p.returncode == 0 and not err.strip(), f"{what} exit {p.returncode}: {err.decode()[-3000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


def write_dir(root, files: dict) -> str:
    root = str(root)
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode())
    os.makedirs(root, exist_ok=True)
    return root


def local_file(tmp_path, text, tag: str | None = None) -> str:
    tag = tag or uuid.uuid4().hex
    p = tmp_path / f"local-{tag}"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def content(v: artfs.Version) -> dict[str, bytes]:
    return {p: v.open(p).read() for p in v.files()}


def as_bytes(files: dict) -> dict[str, bytes]:
    return {k: (v if isinstance(v, bytes) else v.encode()) for k, v in files.items()}


def assert_version(v: artfs.Version, expected: dict) -> None:
    exp = as_bytes(expected)
    assert v.files() == sorted(exp), f"{v.ref}: files differ"
    got = content(v)
    bad = [p for p in exp if got[p] != exp[p]]
    assert not bad, f"{v.ref}: wrong bytes at {bad}"
    assert v.file_count == len(exp)


def one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, f"exit {p.returncode} (wanted {code}): {p.stdout} {p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artfs: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def rows_of(store: Store, name: str, did: str) -> list[tuple[str, bytes, bytes]]:
    p = store.meta.pending(name, did)
    return [] if p is None else store.meta.pending_rows(p["id"])


def writer_count(store: Store, name: str) -> int:
    return sum(len(p["writers"]) for p in store.meta.pendings(name) if p["finished"] is None)


def add(a: artfs.Artifact, tmp_path, files: dict) -> None:
    for path, text in files.items():
        a.add_file(local_file(tmp_path, text), path)


@pytest.fixture(autouse=True)
def _no_group(monkeypatch):
    monkeypatch.delenv("ARTFS_GROUP", raising=False)


# -- many processes, several rounds ---------------------------------------------------------------

API_WRITERS = 6
CLI_WRITERS = 2
ROUNDS = 3


def round_plan(r: int):
    """Steps of each API writer, files of each CLI writer, and the union they make."""
    union: dict[str, str] = {}
    api = []
    common = {"common/README": "shared by every writer, identical\n"}
    for w in range(API_WRITERS):
        first = {f"w{w}/a.txt": f"r{r} w{w} a\n", f"w{w}/b.txt": f"r{r} w{w} b\n" * (w + 1),
                 f"shared/w{w}.txt": f"r{r} shared {w}\n", **common}
        steps = [["add", first], ["upsert"]]
        union.update(first)
        if w % 2 == 0:  # more files, upsert again
            more = {f"w{w}/more/c.txt": f"r{r} w{w} c\n", f"w{w}/more/deep/d.bin": f"r{r}-{w}-" * 100}
            steps += [["add", more], ["upsert"]]
            union.update(more)
        if w == 1:  # re-upsert replaces the earlier contribution: b.txt is no longer in it
            steps += [["remove", "w1/b.txt"], ["add", {"w1/late.txt": f"r{r} late\n"}], ["upsert"]]
            del union["w1/b.txt"]
            union["w1/late.txt"] = f"r{r} late\n"
        api.append(steps)
    clis = []
    for c in range(CLI_WRITERS):
        files = {f"c{c}/x.txt": f"r{r} cli {c}\n", f"c{c}/sub/y.txt": f"r{r} cli {c} y\n",
                 f"shared/c{c}.txt": f"r{r} cli shared {c}\n", **common}
        clis.append(files)
        union.update(files)
    # the first CLI writer puts its directory again after changing it: the re-put replaces its rows
    del union["c0/sub/y.txt"]
    union["c0/z.txt"] = f"r{r} cli z\n"
    return api, clis, union


def test_eight_writers_concurrent_rounds(tmp_path, store, store_path):
    for r in range(ROUNDS):
        did = f"round-{r}"
        api, clis, union = round_plan(r)
        go = str(tmp_path / f"go-{r}")
        procs = [(f"api writer {w}", spawn(tmp_path, store_path, "ds", did, steps, f"r{r}w{w}", go=go))
                 for w, steps in enumerate(api)]
        go_r, go_w = os.pipe()  # the CLI writers' start line: EOF when the test closes go_w
        try:
            for c, files in enumerate(clis):
                d = write_dir(tmp_path / f"cli-r{r}-c{c}", files)
                put = shlex.join(ARTFS + ["--store", store_path, "put", "ds", d, "--distributed-id", did])
                script = f"cat <&{go_r} >/dev/null; exec {go_r}<&-; {put}"
                if c == 0:
                    script += (f"; rm -r {shlex.quote(d)}/c0/sub; echo 'r{r} cli z' > {shlex.quote(d)}/c0/z.txt; {put}")
                procs.append((f"cli writer {c}", subprocess.Popen(["bash", "-ec", script], stdout=subprocess.PIPE,
                                                                  stderr=subprocess.PIPE, text=True,
                                                                  pass_fds=(go_r,))))
            os.close(go_r)
            go_r = -1
            # release everyone together once the API writers have imported artfs
            wait_ready([p for _, p in procs[:len(api)]], "api writer")
            open(go, "w").close()
        finally:
            if go_r >= 0:
                os.close(go_r)
            os.close(go_w)
        for (what, p), steps in zip(procs, api):
            res = outcome(p, what)
            assert all("ok" in x for x in res), f"{what}: {res}"
            assert len(res) == sum(1 for s in steps if s[0] == "upsert")
        for what, p in procs[len(api):]:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and not err.strip(), f"{what}: {err}"
            assert out.count("upserted into ds (pending " + did + ")") == out.count("\n") >= 1, out
        # nothing sealed yet; the pending version holds every writer
        pend = store.meta.pending("ds", did)
        assert pend["finished"] is None
        info = [p for p in store.meta.pendings("ds") if p["id"] == pend["id"]][0]
        assert len(info["writers"]) == API_WRITERS + CLI_WRITERS
        assert info["files"] == len(union), sorted({x[1].decode() for x in rows_of(store, "ds", did)} ^ set(union))
        # one finish, alternating how it is done
        if r % 3 == 0:
            out = cli(store_path, "finish", "ds", "--distributed-id", did).stdout.strip()
            assert out == f"ds:v{r}"
            v = artfs.use_artifact(out, store=store)
        elif r % 3 == 1:
            v = artfs.Artifact("ds", store=store).finish(did)
        else:
            d = write_dir(tmp_path / f"finisher-{r}", {"finisher/own.txt": f"r{r} finisher\n"})
            out = cli(store_path, "finish", "ds", "--distributed-id", did, d).stdout.strip()
            union["finisher/own.txt"] = f"r{r} finisher\n"
            v = artfs.use_artifact(out, store=store)
        assert v.ref == f"ds:v{r}"
        assert_version(v, union)
        assert "w1/b.txt" not in v.files() and "c0/sub/y.txt" not in v.files()
        assert store.meta.alias("ds", "latest") == r
    assert sorted(x["num"] for x in store.meta.versions("ds")) == list(range(ROUNDS))
    log = json.loads(cli(store_path, "log", "ds", "--json").stdout)
    assert [x["how"] for x in log if "pending" not in x] == ["collaborative"] * ROUNDS
    assert not any("pending" in x for x in log)


def start_growers(tmp_path, store, store_path, name: str, did: str, n: int = 4, rounds: int = 5000,
                  stop_file: str | None = None) -> list[subprocess.Popen]:
    """``n`` writers that each add a file and upsert, in a loop, until ``did`` is finished,
    ``rounds`` upserts, or ``stop_file`` exists."""
    go = str(tmp_path / f"go-{did}")
    loop = ["grow_loop", None, rounds] + ([stop_file] if stop_file else [])
    writers = [spawn(tmp_path, store_path, name, did, [loop[:1] + [f"w{w}"] + loop[2:]], f"{did}-w{w}", go=go)
               for w in range(n)]
    wait_ready(writers, "writer")
    with Inotify() as changes:
        changes.watch(store_path, IN_MODIFY | IN_CREATE | IN_MOVED_TO)  # the database being written
        open(go, "w").close()
        # all are upserting, each about twice so far: what follows meets a steady stream of upserts
        wait_until(lambda: writer_count(store, name) >= n and len(rows_of(store, name, did)) >= 2 * n,
                   f"{n} writers upserting into {name}", inotify=changes, procs=writers)
    return writers


def test_finish_races_with_upserts_and_another_finish(tmp_path, store, store_path):
    """Writers upsert in a loop while two finishers race: one finish wins, the other is told
    which version it became; every upsert that succeeded is in the version, later ones fail."""
    writers = start_growers(tmp_path, store, store_path, "race", "r", rounds=300)
    fin = [subprocess.Popen(ARTFS + ["--store", store_path, "finish", "race", "--distributed-id", "r"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=60) + (p.returncode,) for p in fin]
    won = [out.strip() for out, err, rc in results if rc == 0]
    lost = [err.strip() for out, err, rc in results if rc != 0]
    assert won == ["race:v0"], results
    assert lost == ["artfs: already finished as race:v0"], results
    expected, lasts = {}, []
    for w, p in enumerate(writers):
        (res,) = outcome(p, f"writer {w}")
        # stopped by the finish, or out of rounds before it (a slow finish: seal_pending builds again
        # whenever an upsert landed meanwhile)
        assert res["stop"] is not None or res["last"] == 299, res
        if res["stop"] is not None:
            assert res["stop"]["error"] == "Finished" and "already finished as race:v0" in res["stop"]["message"]
        assert res["last"] >= 0
        lasts.append(res["last"])
        expected.update({f"w{w}/{i}": f"w{w} {i}\n" for i in range(res["last"] + 1)})
    assert_version(artfs.use_artifact("race:v0", store=store), expected)
    assert sorted(x["num"] for x in store.meta.versions("race")) == [0]
    print("race: last successful upsert of each writer", lasts)


def test_gc_is_not_starved_by_busy_upserters(tmp_path, store, store_path):
    stop = str(tmp_path / "stop")
    writers = start_growers(tmp_path, store, store_path, "busy", "b", stop_file=stop)
    try:
        # not starved: gc gets through while every writer is still upserting (they go on until
        # `stop` appears, which is only after gc; 5000 rounds otherwise).  The timeout bounds a hang.
        gc = subprocess.run(ARTFS + ["--store", store_path, "gc"], capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        stopped = [w for w, p in enumerate(writers) if p.poll() is not None]
        assert not stopped, f"gc got through only after writers {stopped} had stopped: starved by their upserts"
    except subprocess.TimeoutExpired:
        pytest.fail("artfs gc still waiting for the gc lock after 120 s of steady upserts: starved")
    finally:
        open(stop, "w").close()
        for w, p in enumerate(writers):
            outcome(p, f"writer {w}")
    cli(store_path, "gc")  # with the writers gone, gc goes through


# -- conflicts -------------------------------------------------------------------------------------

def test_conflict_different_content_same_path(tmp_path, store, store_path):
    a = artfs.Artifact("cf", store=store)
    add(a, tmp_path, {"d/p.txt": "first content\n", "a-only.txt": "a\n"})
    a.upsert("g")
    b = artfs.Artifact("cf", store=store)
    add(b, tmp_path, {"b-only.txt": "b\n"})
    b.upsert("g")  # b has an earlier contribution that must survive the conflict
    add(b, tmp_path, {"d/p.txt": "second content\n", "b-later.txt": "later\n"})
    before = (b.files(), b.status())
    rows_before = rows_of(store, "cf", "g")
    with pytest.raises(artfs.Conflict) as ei:
        b.upsert("g")
    assert not isinstance(ei.value, artfs.Finished)
    assert "d/p.txt" in str(ei.value) and "\n" not in str(ei.value)
    assert "a-only.txt" not in str(ei.value) and "b-later.txt" not in str(ei.value)
    # nothing already upserted is lost, nothing of the failed upsert went in
    assert rows_of(store, "cf", "g") == rows_before
    # the failing writer's draft is intact for a retry
    assert (b.files(), b.status()) == before
    assert b.files() == ["b-later.txt", "b-only.txt", "d/p.txt"]

    # the CLI: exit 2, one line naming the path; nothing recorded
    d = write_dir(tmp_path / "clidir", {"d/p.txt": "third content\n", "cli.txt": "cli\n"})
    p = cli(store_path, "put", "cf", d, "--distributed-id", "g", check=False)
    assert "d/p.txt" in one_line_error(p)
    assert rows_of(store, "cf", "g") == rows_before
    # ... and the CLI writer retries after renaming its file
    os.rename(os.path.join(d, "d", "p.txt"), os.path.join(d, "d", "p-cli.txt"))
    cli(store_path, "put", "cf", d, "--distributed-id", "g")

    # the API writer retries: drops the path, puts its content elsewhere
    b.remove("d/p.txt")
    add(b, tmp_path, {"d/p-b.txt": "second content\n"})
    assert b.upsert("g")["contributed"] == 3
    v = artfs.Artifact("cf", store=store).finish("g")
    assert_version(v, {"d/p.txt": "first content\n", "a-only.txt": "a\n", "b-only.txt": "b\n",
                       "b-later.txt": "later\n", "d/p-b.txt": "second content\n",
                       "d/p-cli.txt": "third content\n", "cli.txt": "cli\n"})


def test_identical_content_same_path_is_accepted(tmp_path, store, store_path):
    a, b = artfs.Artifact("same", store=store), artfs.Artifact("same", store=store)
    add(a, tmp_path, {"x/same.bin": b"\0\1same bytes" * 1000, "a.txt": "a"})
    add(b, tmp_path, {"x/same.bin": b"\0\1same bytes" * 1000, "b.txt": "b"})
    a.upsert("g")
    b.upsert("g")
    d = write_dir(tmp_path / "d", {"x/same.bin": b"\0\1same bytes" * 1000})
    cli(store_path, "put", "same", d, "--distributed-id", "g")
    out = cli(store_path, "log", "same").stdout
    assert "pending g" in out and "3 files" in out and "3 writer(s)" in out
    v = a.finish("g")
    assert_version(v, {"x/same.bin": b"\0\1same bytes" * 1000, "a.txt": "a", "b.txt": "b"})


@pytest.mark.parametrize("first, second, named", [("x", "x/y", "x/y"), ("x/y", "x", "x")])
def test_file_vs_directory_is_a_conflict(tmp_path, store, store_path, first, second, named):
    a, b = artfs.Artifact("fd", store=store), artfs.Artifact("fd", store=store)
    add(a, tmp_path, {first: "A's\n"})
    add(b, tmp_path, {second: "B's\n", "b-other": "other\n"})
    a.upsert("g")
    with pytest.raises(artfs.Conflict) as ei:
        b.upsert("g")
    assert named in str(ei.value).split(": ", 1)[1].split(" ")
    assert b.files() == sorted([second, "b-other"])
    # the same clash from the CLI
    d = write_dir(tmp_path / "d", {second: "C's\n"})
    assert named in one_line_error(cli(store_path, "put", "fd", d, "--distributed-id", "g", check=False))
    v = a.finish("g")
    assert_version(v, {first: "A's\n"})


def test_symlinks_empty_dirs_and_exec_bits(tmp_path, store, store_path):
    d = write_dir(tmp_path / "cli", {"bin/run.sh": "#!/bin/sh\necho hi\n", "data/f.txt": "f"})
    os.chmod(os.path.join(d, "bin", "run.sh"), 0o755)
    os.symlink("data/f.txt", os.path.join(d, "link"))
    os.makedirs(os.path.join(d, "empty"))
    cli(store_path, "put", "kinds", d, "--distributed-id", "g")
    # same bytes, other exec bit: a conflict
    a = artfs.Artifact("kinds", store=store)
    add(a, tmp_path, {"bin/run.sh": "#!/bin/sh\necho hi\n"})
    with pytest.raises(artfs.Conflict, match="bin/run.sh"):
        a.upsert("g")
    a.remove("bin/run.sh")
    add(a, tmp_path, {"empty/inside.txt": "inside"})  # into the other writer's empty directory
    a.upsert("g")
    v = artfs.Artifact("kinds", store=store).finish("g")
    assert_version(v, {"bin/run.sh": "#!/bin/sh\necho hi\n", "data/f.txt": "f", "empty/inside.txt": "inside"})
    assert v.entry("bin/run.sh").mode & 0o111
    assert v.entry("link").target == b"data/f.txt"
    exported = str(tmp_path / "out")
    cli(store_path, "export", "kinds", exported)
    assert os.readlink(os.path.join(exported, "link")) == "data/f.txt"
    assert os.access(os.path.join(exported, "bin", "run.sh"), os.X_OK)
    assert os.listdir(os.path.join(exported, "empty")) == ["inside.txt"]


# -- after finish ---------------------------------------------------------------------------------

def test_finished_id_is_locked(tmp_path, store, store_path):
    a = artfs.Artifact("lk", store=store)
    add(a, tmp_path, {"one.txt": "1"})
    a.upsert("g")
    v = artfs.Artifact("lk", store=store).finish("g")
    assert v.ref == "lk:v0"
    late = artfs.Artifact("lk", store=store)
    add(late, tmp_path, {"two.txt": "2"})
    for fn in (late.upsert, a.upsert, late.finish, artfs.Artifact("lk", store=store).finish):
        with pytest.raises(artfs.Finished, match=r"already finished as lk:v0"):
            fn("g")
    assert issubclass(artfs.Finished, artfs.Conflict)
    d = write_dir(tmp_path / "d", {"three.txt": "3"})
    for args in (["put", "lk", d, "--distributed-id", "g"], ["finish", "lk", "--distributed-id", "g"],
                 ["finish", "lk", "--distributed-id", "g", d]):
        assert "already finished as lk:v0" in one_line_error(cli(store_path, *args, check=False))
    one_line_error(cli(store_path, "discard", "lk", "--pending", "g", check=False))
    assert sorted(x["num"] for x in store.meta.versions("lk")) == [0]
    assert_version(artfs.use_artifact("lk", store=store), {"one.txt": "1"})
    # another id goes on normally
    add(late, tmp_path, {"two.txt": "2"})
    assert late.finish("g2").ref == "lk:v1"


def test_finish_without_pending_makes_a_version(tmp_path, store, store_path):
    a = artfs.Artifact("solo", store=store)
    add(a, tmp_path, {"f/1.txt": "one", "2.txt": "two"})
    assert store.meta.pending("solo", "alone") is None
    v = a.finish("alone")
    assert v.ref == "solo:v0"
    assert_version(v, {"f/1.txt": "one", "2.txt": "two"})
    # the CLI with a DIR does the same; without one there is nothing to seal
    d = write_dir(tmp_path / "d", {"cli.txt": "cli"})
    assert cli(store_path, "finish", "solo", "--distributed-id", "alone2", d).stdout.strip() == "solo:v1"
    assert_version(artfs.use_artifact("solo:v1", store=store), {"cli.txt": "cli"})
    assert "nothing-here" in one_line_error(cli(store_path, "finish", "solo", "--distributed-id", "nothing-here",
                                                 check=False))
    assert sorted(x["num"] for x in store.meta.versions("solo")) == [0, 1]


# -- incremental collaborative version ---------------------------------------------------------------

def test_incremental_collaborative_version(tmp_path, store, store_path):
    seed = {"keep.txt": "keep", "gone.txt": "gone", "olddir/a": "a", "olddir/b": "b", "sub/x": "x"}
    assert cli(store_path, "put", "inc", write_dir(tmp_path / "seed", seed)).stdout.strip() == "inc:v0"
    d1 = artfs.use_artifact("inc:v0", store=store).new_draft()
    d1.remove("gone.txt")
    d1.remove("olddir")
    d2 = artfs.use_artifact("inc:v0", store=store).new_draft()
    add(d2, tmp_path, {"sub/new.txt": "new", "top.txt": "top"})
    d1.upsert("ig")
    d2.upsert("ig")
    # a path inside another writer's removal conflicts
    d4 = artfs.use_artifact("inc:v0", store=store).new_draft()  # removing what another writer removed: fine
    d4.remove("gone.txt")
    d4.upsert("ig")
    d3 = artfs.use_artifact("inc:v0", store=store).new_draft()
    add(d3, tmp_path, {"olddir/c": "c"})
    with pytest.raises(artfs.Conflict, match="olddir/c"):
        d3.upsert("ig")
    # a writer that starts from another version does not fit this pending version
    scratch = artfs.Artifact("inc", store=store)
    add(scratch, tmp_path, {"other.txt": "o"})
    with pytest.raises(artfs.Conflict, match="v0"):
        scratch.upsert("ig")
    ls = cli(store_path, "ls", "inc", "--pending", "ig").stdout.splitlines()
    assert [line.split()[:2] for line in ls] == [["removed", "gone.txt"], ["removed", "gone.txt"],
                                                  ["removed", "olddir"], ["file", "sub/new.txt"], ["file", "top.txt"]]
    assert store.meta.alias("inc", "latest") == 0
    assert cli(store_path, "finish", "inc", "--distributed-id", "ig").stdout.strip() == "inc:v1"
    v = artfs.use_artifact("inc:v1", store=store)
    assert_version(v, {"keep.txt": "keep", "sub/x": "x", "sub/new.txt": "new", "top.txt": "top"})
    log = {x["ref"]: x for x in json.loads(cli(store_path, "log", "inc", "--json").stdout) if "ref" in x}
    assert log["inc:v1"]["how"] == "collaborative"
    assert log["inc:v1"]["parent"] == 0
    assert log["inc:v1"]["file_count"] == 4
    diff = cli(store_path, "diff", "inc:v0", "inc:v1").stdout.splitlines()
    assert {"A sub/new.txt", "A top.txt", "D gone.txt"} <= set(diff)
    assert not any(line.startswith("M") for line in diff)


# -- pending visibility, discard, gc ------------------------------------------------------------------

def test_pending_visibility_and_discard(tmp_path, store, store_path):
    cli(store_path, "put", "pv", write_dir(tmp_path / "seed", {"base.txt": "base"}))
    a = artfs.Artifact("pv", store=store)
    add(a, tmp_path, {"api/one.txt": "1", "api/two.txt": "2"})
    a.upsert("vis")
    d = write_dir(tmp_path / "cli", {"cli/three.txt": "3"})
    cli(store_path, "put", "pv", d, "--distributed-id", "vis")
    log = cli(store_path, "log", "pv").stdout.splitlines()
    pend = [line for line in log if line.startswith("pending vis")]
    assert len(pend) == 1, log
    assert "2 writer(s)" in pend[0] and "3 files" in pend[0]
    assert any(line.startswith("pv:v0") for line in log)
    js = [x for x in json.loads(cli(store_path, "log", "pv", "--json").stdout) if x.get("pending") == "vis"]
    assert len(js) == 1 and js[0]["files"] == 3 and len(js[0]["writers"]) == 2
    assert sorted(w["files"] for w in js[0]["writers"]) == [1, 2]
    ls = cli(store_path, "ls", "pv", "--pending", "vis").stdout.splitlines()
    assert [line.split()[1] for line in ls] == ["api/one.txt", "api/two.txt", "cli/three.txt"]
    assert all(line.split()[0] == "file" for line in ls)
    lsj = json.loads(cli(store_path, "ls", "pv", "--pending", "vis", "--json").stdout)
    assert sorted(x["path"] for x in lsj) == ["api/one.txt", "api/two.txt", "cli/three.txt"]
    # latest has not moved; the pending files are in no version
    assert store.meta.alias("pv", "latest") == 0
    assert sorted(x["num"] for x in store.meta.versions("pv")) == [0]
    assert artfs.use_artifact("pv", store=store).files() == ["base.txt"]
    assert cli(store_path, "ls", "pv").stdout.split()[-1] == "base.txt"
    # discard drops it
    assert cli(store_path, "discard", "pv", "--pending", "vis").stdout.strip() == "discarded pending vis of pv"
    assert not any(line.startswith("pending") for line in cli(store_path, "log", "pv").stdout.splitlines())
    assert store.meta.pending("pv", "vis") is None
    one_line_error(cli(store_path, "ls", "pv", "--pending", "vis", check=False))
    one_line_error(cli(store_path, "finish", "pv", "--distributed-id", "vis", check=False))
    one_line_error(cli(store_path, "discard", "pv", "--pending", "vis", check=False))
    assert sorted(x["num"] for x in store.meta.versions("pv")) == [0]
    # the id can be used afresh
    b = artfs.Artifact("pv", store=store)
    add(b, tmp_path, {"fresh.txt": "fresh"})
    assert b.finish("vis").ref == "pv:v1"
    assert_version(artfs.use_artifact("pv", store=store), {"fresh.txt": "fresh"})


def test_gc_keeps_objects_of_pending_versions(tmp_path, store, store_path):
    blobs = {f"g/{i}.bin": os.urandom(5000 + i) for i in range(5)}
    a = artfs.Artifact("gcp", store=store)
    add(a, tmp_path, blobs)
    a.upsert("gid")
    a.discard()  # the writer's draft is gone: only the pending version uses these objects
    d = write_dir(tmp_path / "cli", {"c/only-cli.bin": os.urandom(7000)})
    cli(store_path, "put", "gcp", d, "--distributed-id", "gid")  # the CLI discards its draft itself
    with store.objects.batch() as b:
        garbage = b.put_bytes(os.urandom(3000))
    out = cli(store_path, "gc").stdout
    assert out.startswith("removed ") and not out.startswith("removed 0 ")
    assert not store.objects.has([garbage])
    assert cli(store_path, "fsck").returncode == 0
    assert cli(store_path, "finish", "gcp", "--distributed-id", "gid").stdout.strip() == "gcp:v0"
    for path, data in blobs.items():
        got = subprocess.run(ARTFS + ["--store", store_path, "cat", "gcp", path], capture_output=True)
        assert got.returncode == 0 and got.stdout == data, path
    v = artfs.use_artifact("gcp", store=Store.open(store_path))
    assert_version(v, {**blobs, "c/only-cli.bin": open(os.path.join(d, "c", "only-cli.bin"), "rb").read()})
    cli(store_path, "gc")
    assert cli(store_path, "fsck").returncode == 0


# -- the default distributed id ------------------------------------------------------------------------

def test_artfs_group_is_the_default_id(tmp_path, store, store_path, monkeypatch):
    a = artfs.Artifact("grp", store=store)
    add(a, tmp_path, {"a.txt": "a"})
    with pytest.raises(artfs.BadInput, match="distributed id"):
        a.upsert()
    with pytest.raises(artfs.BadInput, match="distributed id"):
        a.finish()
    assert "distributed id" in one_line_error(cli(store_path, "finish", "grp", check=False))
    assert store.meta.pendings("grp") == []
    assert store.meta.versions("grp") == []

    monkeypatch.setenv("ARTFS_GROUP", "team-7")
    a.upsert()
    assert store.meta.pending("grp", "team-7") is not None
    log = cli(store_path, "log", "grp")  # a pending version and no version yet
    assert log.stdout.startswith("pending team-7  from scratch  1 files  1 writer(s)"), log.stdout
    b = spawn(tmp_path, store_path, "grp", None, [["add", {"b.txt": "b"}], ["upsert"]], "b")
    assert outcome(b, "env writer") == [{"ok": 1}]
    assert "b.txt" in cli(store_path, "ls", "grp", "--pending", "team-7").stdout
    assert cli(store_path, "finish", "grp").stdout.strip() == "grp:v0"  # $ARTFS_GROUP from the environment
    assert_version(artfs.use_artifact("grp", store=store), {"a.txt": "a", "b.txt": "b"})
    with pytest.raises(artfs.Finished, match="already finished as grp:v0"):
        a.upsert()
    # an explicit id wins over $ARTFS_GROUP
    c = artfs.Artifact("grp", store=store)
    add(c, tmp_path, {"c.txt": "c"})
    assert c.finish("explicit").ref == "grp:v1"
    assert store.meta.pending("grp", "explicit")["finished"] == 1


# -- from a mount ---------------------------------------------------------------------------------

@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_mount_upsert_and_finish(tmp_path, mstore):
    cli(mstore, "put", "mt", write_dir(tmp_path / "seed", {"base.txt": "base\n", "old/gone.txt": "gone\n"}))
    with Mounted(mstore, "mt:draft", tmp_path / "mnt", "--distributed-id", "mid") as m:
        os.makedirs(m.path("m"))
        for name in ("one", "two"):
            with open(m.path("m", f"{name}.txt"), "w") as f:
                f.write(f"{name} from the mount\n")
        os.unlink(m.path("old", "gone.txt"))
        assert m.commit() == "upserted into mt (pending mid): 3 files"
        # another writer, through the API, from the same parent
        s = Store.open(mstore)
        w = artfs.use_artifact("mt:v0", store=s).new_draft()
        add(w, tmp_path, {"api/x.txt": "from the api\n"})
        w.upsert("mid")
        # and one through the CLI, which adds its DIR's files on top of the pending version's base
        clidir = write_dir(tmp_path / "clidir", {"cli/y.txt": "from the cli\n"})
        cli(mstore, "put", "mt", clidir, "--distributed-id", "mid")
        # the pending version is visible; latest has not moved
        pend = [line for line in cli(mstore, "log", "mt").stdout.splitlines() if line.startswith("pending mid")]
        assert len(pend) == 1 and "3 writer(s)" in pend[0] and "5 files" in pend[0], pend
        assert s.meta.alias("mt", "latest") == 0
        # more from the mount, then finish
        with open(m.path("m", "three.txt"), "w") as f:
            f.write("three\n")
        with open(m.path(".artfs", "finish"), "w") as f:
            f.write("\n")
        with open(m.path(".artfs", "finish")) as f:
            assert f.read().strip() == "mt:v1"
        v = artfs.use_artifact("mt:v1", store=s)
        assert_version(v, {"base.txt": "base\n", "m/one.txt": "one from the mount\n",
                           "m/two.txt": "two from the mount\n", "m/three.txt": "three\n",
                           "api/x.txt": "from the api\n", "cli/y.txt": "from the cli\n"})
        assert v._info.how == "collaborative"
        # the mount goes on, clean, on the new version
        assert m.status() == []
        assert open(m.path("api", "x.txt")).read() == "from the api\n"
        assert sorted(os.listdir(m.mnt)) == ["api", "base.txt", "cli", "m", "old"]
        # the id is sealed: another upsert from the mount fails
        with open(m.path("m", "four.txt"), "w") as f:
            f.write("four\n")
        with pytest.raises(OSError):
            with open(m.path(".artfs", "commit"), "w") as f:
                f.write("\n")
        assert m.status() == ["A m/four.txt"]
    assert sorted(x["num"] for x in Store.open(mstore).meta.versions("mt")) == [0, 1]


# -- SIGKILL in the middle of an upsert ----------------------------------------------------------------

BIG = 2000


def test_sigkill_mid_upsert_is_all_or_nothing(tmp_path, store, store_path):
    did = "kill"
    keep = {}
    for k in range(2):
        a = artfs.Artifact("kl", store=store)
        files = {f"keep{k}/{i}.txt": f"keep {k} {i}\n" for i in range(20)}
        add(a, tmp_path, files)
        a.upsert(did)
        keep.update(files)
    others = rows_of(store, "kl", did)
    assert len(others) == 40
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # kill points in the writer's progress, not in time: after the n-th change the store's directory
    # (its database) and its object temporaries saw since the writer began upserting (0: at once).
    # The first upsert's transaction is some 15 writes from about the 7th on, then the loop upserts
    # every ~10: the points fall before, inside and after it, and in later upserts.
    points = [0, 8, 16, 24] + [rng.randrange(0, 64) for _ in range(2)]
    union = dict(keep)
    states = []
    big_files = {f"{i:04d}.txt": f"{i}\n" for i in range(BIG)}
    for t, point in enumerate(points):
        ready = ReadyFifo(tmp_path / f"upserting-{t}")
        with Inotify() as changes:
            changes.watch(store_path, IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_TO)
            changes.watch(os.path.join(store_path, "tmp"), IN_CREATE | IN_MOVED_FROM)
            p = spawn(tmp_path, store_path, "kl", did,
                      [["add_dir", big_files, f"k{t}"], ["touch", ready.path], ["toggle_loop", f"k{t}/extra"]],
                      f"k{t}")
            try:
                ready.wait("worker ready to upsert", [p])
            finally:
                ready.close()
            changes.events()  # its own draft's writes before this point do not count
            wait_events(changes, point, f"trial {t}: kill point", procs=[p])
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL, f"trial {t}: the writer ended by itself: {err.decode()[-2000:]}"
        rows = rows_of(store, "kl", did)
        mine = {path.decode() for _, path, _ in rows if path.startswith(f"k{t}/".encode())}
        whole = {f"k{t}/{n}" for n in big_files}
        assert mine in (set(), whole, whole | {f"k{t}/extra"}), f"trial {t} (seed {seed}, point {point}):" \
            f" {len(mine)} rows of the killed writer"
        assert len({w for w, path, _ in rows if path.startswith(f"k{t}/".encode())}) <= 1
        states.append(len(mine))
        if mine:
            union.update({f"k{t}/{n}": c for n, c in big_files.items()})
            if f"k{t}/extra" in mine:
                union[f"k{t}/extra"] = "extra"
        # the other writers' rows are untouched
        assert [r for r in rows if r[1].startswith(b"keep")] == others
        assert repo.fsck(Store.open(store_path)) == []
    # the count through the CLI agrees
    ls = cli(store_path, "ls", "kl", "--pending", did).stdout.splitlines()
    assert len(ls) == len(union)
    print(f"kill trial points {points} (seed {seed}), states {states}")
    assert states[0] in (0, BIG, BIG + 1)
    v = artfs.Artifact("kl", store=store).finish(did)
    assert_version(v, union)


def test_upsert_cost_does_not_grow_with_the_pending_version(tmp_path, store):
    """Each upsert's conflict check looks up its own paths (indexed), not every row already there:
    the database work (SQLite VM steps, counted, not timed) of the 8th upsert is that of the first."""
    src = write_dir(tmp_path / "src", {f"d{i % 10}/{i:04d}.txt": f"{i}\n" for i in range(1500)})
    work = []
    for w in range(8):
        a = artfs.Artifact("big", store=store)
        a.add_dir(src, f"w{w}")
        steps = [0]

        def tick():
            steps[0] += 1
            return 0

        store.meta.db.set_progress_handler(tick, 1000)
        try:
            assert a.upsert("g")["contributed"] == 1500
        finally:
            store.meta.db.set_progress_handler(None, 1000)
        work.append(steps[0])
        a.discard()
    assert store.meta.pendings("big")[0]["files"] == 8 * 1500
    assert work[-1] < 2 * work[0] + 50, f"upsert work grew with the pending version: {work}"


