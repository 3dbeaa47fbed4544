"""Runs and lineage (DESIGN.md §9).

* W&B's three artifact programs (single run, distributed runs, incremental
  change) run as written, each run in its own process (``run_programs/``),
  with only ``wandb`` replaced by ``artfs``; their versions, runs and the
  links between them are checked from the outside.
* A prepare -> train -> eval pipeline is made twice, once through the API
  and once with ``artfs run`` around shell commands that know nothing of
  artifacts; ``artfs lineage --json`` must give the same graph, edge by edge.
* ``artfs run`` faults: a failing command, SIGTERM, bad input; patch mode
  (``put --patch``, ``rm``).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import artfs
from artfs.repo import runs
from mounts import ARTFS, Mounted, expect_ready, force_unmount, is_mounted, mstore, needs_fuse  # noqa: F401
from mounts import artfs as cli

PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_programs")


# -- helpers ------------------------------------------------------------------------------

def write(root, files: dict) -> str:
    root = str(root)
    os.makedirs(root, exist_ok=True)
    for rel, text in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode())
    return root


# Runs a program as `python PROGRAM ARGS` would (same sys.argv, run as __main__), after importing
# artfs and saying so on the pipe fd argv[1]: the test knows it has started, without a poll.
READY_BOOT = """
import os, runpy, sys
import artfs
fd, path = int(sys.argv[1]), sys.argv[2]
sys.argv = sys.argv[2:]
os.write(fd, b"ready\\n")
os.close(fd)
runpy.run_path(path, run_name="__main__")
"""


def program(name: str, *args: str, store: str, cwd, env: dict | None = None,
            ready_fd: int | None = None) -> subprocess.Popen:
    """Start one of run_programs/NAME.py as its own process, with ARTFS_STORE set.  With
    ``ready_fd`` (a pipe's write end), it writes a line there once it has imported artfs and is
    about to run the program."""
    e = dict(os.environ, ARTFS_STORE=store, **(env or {}))
    e.pop("ARTFS_GROUP", None)
    path = os.path.join(PROGRAMS, name)
    if ready_fd is None:
        cmd, fds = [sys.executable, path, *args], ()
    else:
        cmd, fds = [sys.executable, "-c", READY_BOOT, str(ready_fd), path, *args], (ready_fd,)
    return subprocess.Popen(cmd, cwd=str(cwd), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=fds)


def result(p: subprocess.Popen, what: str, timeout: float = 60) -> dict:
    """Wait for a program; it must succeed without a word on stderr; returns its last stdout line as JSON."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"{what} timed out: {err[-2000:]}")
    assert p.returncode == 0 and not err.strip(), f"{what} exit {p.returncode}: {err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def run_program(name: str, *args: str, store: str, cwd) -> dict:
    return result(program(name, *args, store=store, cwd=cwd), name)


def content(v: artfs.Version) -> dict[str, bytes]:
    return {p: v.open(p).read() for p in v.files()}


def runs_json(store_path: str) -> list[dict]:
    return json.loads(cli(store_path, "runs", "--json").stdout)


def show(store_path: str, run_id: str) -> dict:
    return json.loads(cli(store_path, "runs", "show", run_id, "--json").stdout)


def lineage(store_path: str, ref: str, *args: str) -> dict:
    return json.loads(cli(store_path, "lineage", ref, *args, "--json").stdout)


def versions(store_path: str, name: str) -> list[str]:
    """NAME's committed versions, newest first ([] for an artifact with only a draft, or none)."""
    p = cli(store_path, "log", name, "--json", check=False)
    if p.returncode != 0:
        assert "no artifact" in p.stderr or "no versions" in p.stderr, p.stderr
        return []
    return [v["ref"] for v in json.loads(p.stdout)]


def edge_set(tree: dict) -> set[tuple[str, str, str]]:
    edges = [(e["from"], e["to"], e["kind"]) for e in tree["edges"]]
    assert len(edges) == len(set(edges)), f"duplicate edges: {edges}"
    return set(edges)


def mounts_under(root) -> list[str]:
    root = os.path.realpath(str(root)) + "/"
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if (line.split()[1] + "/").startswith(root)]


def artfs_run(store_path: str, cwd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``artfs run ARGS`` from ``cwd`` (relative DIRs land there)."""
    return subprocess.run(ARTFS + ["--store", store_path, "run", *args], cwd=str(cwd), capture_output=True,
                          text=True, timeout=timeout)


def read_fifo(path: str, proc, timeout: float) -> str:
    """The first line a process writes into the FIFO ``path`` (waits on the pipe itself; fails
    fast if ``proc`` ends first)."""
    import select

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            assert left > 0, "the command never said it started"
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 100)
                buf += chunk
            assert proc.poll() is None or buf, proc.communicate()
        return buf.decode().strip()
    finally:
        os.close(fd)


def run_id_of(p: subprocess.CompletedProcess) -> str:
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("run "), p.stdout
    return last.split()[1]


def one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, f"exit {p.returncode}, wanted {code}: {p.stdout}{p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artfs: "), p.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def leave_no_mounts(tmp_path):
    """Whatever a test (or a bug in artfs run) left mounted below tmp_path is unmounted at the end."""
    yield
    for mnt in mounts_under(tmp_path):
        force_unmount(mnt)


@pytest.fixture
def work(tmp_path):
    """The working directory of the programs, with W&B's files in it."""
    return write(tmp_path / "work", {"image1.png": b"\x89PNG one", "image2.png": b"\x89PNG two",
                                     "image3.png": b"\x89PNG three", "file_to_add.txt": "added\n"})


# -- 1. W&B's programs, as written ------------------------------------------------------------

def test_single_run_program(store, store_path, work):
    out = run_program("single_run.py", store=store_path, cwd=work)
    assert out["version"] == "artifact_name:v0"
    v = artfs.use_artifact("artifact_name:latest", store=store)
    assert v.type == "artifact_type"
    assert content(v) == {"image1.png": b"\x89PNG one"}

    run = v.logged_by()
    assert isinstance(run, artfs.Run) and run.id == out["run"]
    assert run.job_type == "train" and run.outcome == "finished"
    assert run.logged_artifacts() == [v]
    assert run.used_artifacts() == []
    assert v.used_by() == []

    d = show(store_path, run.id)
    assert d["outcome"] == "finished" and d["exit_status"] == 0
    assert d["job_type"] == "train" and d["produced"] == ["artifact_name:v0"] and d["used"] == []
    assert "single_run.py" in d["command"] and d["cwd"] == os.path.realpath(work)
    assert d["started"] <= d["ended"]


def test_distributed_runs_programs(store, store_path, work):
    go = os.path.join(work, "go")
    procs = []
    for image in ("image1.png", "image2.png"):
        r, w = os.pipe()
        try:
            procs.append(program("distributed_run.py", image, go, store=store_path, cwd=work, ready_fd=w))
        finally:
            os.close(w)
        try:
            expect_ready(r, f"distributed run with {image}", procs[-1])
        finally:
            os.close(r)
    p1, p2 = procs
    open(go, "w").close()  # both started; release them together so that their upserts overlap
    r1 = result(p1, "run 1")["run"]
    r2 = result(p2, "run 2")["run"]

    # both contributions wait in the pending version; nothing is a version yet
    assert store.meta.pending("artifact_name", "my_dist_artifact") is not None
    for rid in (r1, r2):
        d = show(store_path, rid)
        assert d["group"] == "g7" and d["outcome"] == "finished"
        assert d["produced"] == [] and d["pending_upserts"] == ["artifact_name (pending my_dist_artifact)"]

    out = run_program("distributed_finish.py", store=store_path, cwd=work)
    r3 = out["run"]
    assert out["version"] == "artifact_name:v0"
    v = artfs.use_artifact("artifact_name:latest", store=store)
    assert content(v) == {"image1.png": b"\x89PNG one", "image2.png": b"\x89PNG two",
                          "image3.png": b"\x89PNG three"}

    assert v.logged_by().id == r3  # the run that finished it
    producers = {n["run"]: n["how"] for n in lineage(store_path, v.ref, "--up")["produced_by"]}
    assert producers == {r3: "finished", r1: "upserted", r2: "upserted"}
    for rid in (r1, r2, r3):
        assert artfs.Run(store, rid).logged_artifacts() == [v]
        d = show(store_path, rid)
        assert d["produced"] == ["artifact_name:v0"] and d["pending_upserts"] == []
    assert show(store_path, r3)["group"] is None


def test_incremental_program(store, store_path, work, tmp_path):
    cli(store_path, "put", "my_artifact", write(tmp_path / "seed", {
        "keep.txt": "keep\n", "dir_to_remove/a.txt": "a\n", "dir_to_remove/sub/b.txt": "b\n"}))
    v0 = artfs.use_artifact("my_artifact:v0", store=store)
    assert v0.logged_by() is None  # made by `artfs put`, outside any run

    out = run_program("incremental.py", store=store_path, cwd=work)
    assert out == {"run": out["run"], "used": "my_artifact:v0", "version": "my_artifact:v1"}
    v1 = artfs.use_artifact("my_artifact:latest", store=store)
    assert content(v1) == {"keep.txt": b"keep\n", "file_to_add.txt": b"added\n"}

    run = v1.logged_by()
    assert run.id == out["run"] and run.job_type == "modify dataset"
    assert run.used_artifacts() == [v0]
    assert run.logged_artifacts() == [v1]
    assert v0.used_by() == [run]
    assert v1.used_by() == []
    # lineage: v1 was made from v0, and v0 leads to v1; nothing loops back
    assert edge_set(lineage(store_path, "my_artifact:v1", "--up")) == {
        (f"run:{run.id}", "my_artifact:v1", "produced"), ("my_artifact:v0", f"run:{run.id}", "used")}
    assert edge_set(lineage(store_path, "my_artifact:v0", "--down")) == {
        ("my_artifact:v0", f"run:{run.id}", "used"), (f"run:{run.id}", "my_artifact:v1", "produced")}


def test_log_artifact_moves_aliases(store, tmp_path):
    f = write(tmp_path / "f", {"w1": "1", "w2": "2"})
    with artfs.init(job_type="train", store=store) as run:
        a = artfs.Artifact("net", "model", store=store)
        a.add_file(os.path.join(f, "w1"))
        v0 = run.log_artifact(a, aliases=["best"])
    assert sorted(v0.aliases) == ["best", "latest"]
    with artfs.init(job_type="train", store=store) as run2:
        d = v0.new_draft()
        d.add_file(os.path.join(f, "w2"))
        v1 = run2.log_artifact(d, aliases=["best"])
    assert artfs.use_artifact("net:best", store=store) == v1
    assert sorted(v1.aliases) == ["best", "latest"] and v0.aliases == []
    assert v1.logged_by() == run2 and v0.logged_by() == run


def test_run_left_by_exception_is_failed(store, tmp_path):
    f = write(tmp_path / "f", {"x": "x"})
    with pytest.raises(RuntimeError):
        with artfs.init(job_type="train", store=store) as run:
            a = artfs.Artifact("half", store=store)
            a.add_file(os.path.join(f, "x"))
            v = run.log_artifact(a)
            raise RuntimeError("boom")
    assert run.outcome == "failed"
    d = runs.describe(store, run.id)
    assert d["outcome"] == "failed" and d["exit_status"] == 1 and d["ended"] is not None
    assert d["produced"] == ["half:v0"] and v.logged_by() == run  # what it logged before failing stays its

    with pytest.raises(KeyboardInterrupt):
        with artfs.init(store=store) as run2:
            raise KeyboardInterrupt
    assert run2.outcome == "killed"


def test_sigkilled_run_shows_died(store, store_path, work):
    p = program("sleeper.py", store=store_path, cwd=work)
    try:
        run_id = p.stdout.readline().strip()
        assert run_id, p.stderr.read()
        assert [r["outcome"] for r in runs_json(store_path) if r["id"] == run_id] == ["running"]
    finally:
        p.kill()
        p.communicate(timeout=30)
    rows = [r for r in runs_json(store_path) if r["id"] == run_id]
    assert len(rows) == 1 and rows[0]["outcome"] == "died" and rows[0]["ended"] is None
    assert show(store_path, run_id)["outcome"] == "died"
    assert "died" in cli(store_path, "runs").stdout


def test_distributed_id_defaults_to_group(store, tmp_path, monkeypatch):
    monkeypatch.delenv("ARTFS_GROUP", raising=False)
    f = write(tmp_path / "f", {"a": "a", "b": "b", "c": "c"})
    with artfs.init(group="g9", store=store) as r1:
        a = artfs.Artifact("col", store=store)
        a.add_file(os.path.join(f, "a"))
        r1.upsert_artifact(a)
    assert store.meta.pending("col", "g9") is not None
    assert runs.describe(store, r1.id)["pending_upserts"] == ["col (pending g9)"]
    with artfs.init(group="g9", store=store) as r2:
        b = artfs.Artifact("col", store=store)
        b.add_file(os.path.join(f, "b"))
        v = r2.finish_artifact(b)
    assert content(v) == {"a": b"a", "b": b"b"}
    assert r1.logged_artifacts() == [v] and r2.logged_artifacts() == [v]
    # no group, no distributed_id, no $ARTFS_GROUP: a clear error
    with artfs.init(store=store) as r3:
        c = artfs.Artifact("col", store=store)
        c.add_file(os.path.join(f, "c"))
        with pytest.raises(artfs.BadInput, match="no distributed id"):
            r3.upsert_artifact(c)
        c.discard()


def test_lineage_follows_time(store, tmp_path):
    """A version used after a run logged something is not what that thing was made from."""
    f = write(tmp_path / "f", {"x": "x", "y": "y", "z": "z"})
    y = artfs.Artifact("y", store=store)
    y.add_file(os.path.join(f, "y"))
    yv = y.save()
    with artfs.init(store=store) as run:
        x = artfs.Artifact("x", store=store)
        x.add_file(os.path.join(f, "x"))
        xv = run.log_artifact(x)
        run.use_artifact("y:v0")  # only now
        run.use_artifact(xv.ref)  # its own product is not also its input
    assert run.used_artifacts() == [yv]
    assert runs.lineage(store, xv._info, down=False)["produced_by"][0]["inputs"] == []
    assert runs.lineage(store, yv._info, up=False)["used_by"][0]["outputs"] == []
    assert xv.used_by() == []

    # logging content identical to an existing version gives that version, which this run did not make
    with artfs.init(store=store) as again:
        x2 = xv.new_draft()
        x2.add_file(os.path.join(f, "x"))
        same = again.log_artifact(x2)
    assert same == xv and same.unchanged
    assert again.logged_artifacts() == [] and xv.logged_by() == run


def test_type_mismatch(store, tmp_path):
    f = write(tmp_path / "f", {"img": "i"})
    a = artfs.Artifact("mnist", "dataset", store=store)
    a.add_file(os.path.join(f, "img"))
    a.save()
    with pytest.raises(artfs.BadInput, match="^mnist is a dataset, not a model$"):
        artfs.Artifact("mnist", "model", store=store)
    with artfs.init(store=store) as run:
        with pytest.raises(artfs.BadInput, match="mnist is a dataset, not a model"):
            artfs.Artifact("mnist", "model", store=store)
    assert run.outcome == "finished"
    assert artfs.Artifact("mnist", "dataset", store=store).type == "dataset"


# -- 2. a pipeline, through the API and with `artfs run` ----------------------------------------

def check_pipeline(store_path: str, rid: dict[str, str]) -> None:
    """prepare -> ds:v0, train(ds) -> model:v0, eval(ds, model) -> preds:v0, checked edge by edge."""
    P, T, E = (f"run:{rid[s]}" for s in ("prepare", "train", "eval"))

    up = lineage(store_path, "preds:latest", "--up")
    assert up["version"] == "preds:v0" and "used_by" not in up
    assert edge_set(up) == {
        (E, "preds:v0", "produced"), ("ds:v0", E, "used"), ("model:v0", E, "used"),
        (T, "model:v0", "produced"), ("ds:v0", T, "used"),
        (P, "ds:v0", "produced"),
    }
    [ev] = up["produced_by"]
    assert ev["run"] == rid["eval"] and ev["outcome"] == "finished"
    inputs = {i["version"]: i["produced_by"] for i in ev["inputs"]}
    assert set(inputs) == {"ds:v0", "model:v0"}
    [pr] = inputs["ds:v0"]
    assert pr["run"] == rid["prepare"] and pr["inputs"] == []
    [tr] = inputs["model:v0"]
    assert tr["run"] == rid["train"] and [i["version"] for i in tr["inputs"]] == ["ds:v0"]
    assert [n["run"] for n in tr["inputs"][0]["produced_by"]] == [rid["prepare"]]

    down = lineage(store_path, "ds:v0", "--down")
    assert "produced_by" not in down
    assert edge_set(down) == {
        ("ds:v0", T, "used"), (T, "model:v0", "produced"),
        ("model:v0", E, "used"), (E, "preds:v0", "produced"),
        ("ds:v0", E, "used"),
    }
    users = {n["run"]: n for n in down["used_by"]}
    assert set(users) == {rid["train"], rid["eval"]}
    [m] = users[rid["train"]]["outputs"]
    assert m["version"] == "model:v0" and [n["run"] for n in m["used_by"]] == [rid["eval"]]
    assert [o["version"] for o in m["used_by"][0]["outputs"]] == ["preds:v0"]

    # --depth 1: one run away, no further
    up1 = lineage(store_path, "preds:v0", "--up", "--depth", "1")
    assert edge_set(up1) == {(E, "preds:v0", "produced"), ("ds:v0", E, "used"), ("model:v0", E, "used")}
    assert all(i["produced_by"] == [] for i in up1["produced_by"][0]["inputs"])
    down1 = lineage(store_path, "ds:v0", "--down", "--depth", "1")
    assert edge_set(down1) == {("ds:v0", T, "used"), (T, "model:v0", "produced"),
                               ("ds:v0", E, "used"), (E, "preds:v0", "produced")}
    assert all(o["used_by"] == [] for n in down1["used_by"] for o in n["outputs"])
    # both directions at once; and the text view names every run
    both = lineage(store_path, "model:v0")
    assert edge_set(both) == {(T, "model:v0", "produced"), ("ds:v0", T, "used"), (P, "ds:v0", "produced"),
                              ("model:v0", E, "used"), (E, "preds:v0", "produced")}
    text = cli(store_path, "lineage", "preds:v0").stdout
    assert all(r in text for r in rid.values())

    # runs, newest first; each with its command, outcome, inputs and outputs
    listed = runs_json(store_path)
    assert [r["id"] for r in listed] == [rid["eval"], rid["train"], rid["prepare"]]
    want = {"prepare": ([], ["ds:v0"]), "train": (["ds:v0"], ["model:v0"]),
            "eval": (["ds:v0", "model:v0"], ["preds:v0"])}
    for step, (used, produced) in want.items():
        d = show(store_path, rid[step])
        assert [r for r in listed if r["id"] == rid[step]] == [d]
        assert d["outcome"] == "finished" and d["exit_status"] == 0
        assert sorted(d["used"]) == used and d["produced"] == produced
        assert d["command"]
    text = cli(store_path, "runs", "show", rid["train"]).stdout
    assert "ds:v0" in text and "model:v0" in text


def test_pipeline_through_the_api(store, store_path, work):
    rid = {}
    for step in ("prepare", "train", "eval"):
        out = run_program("pipeline_step.py", step, store=store_path, cwd=work)
        rid[step] = out["run"]
    preds = artfs.use_artifact("preds:v0", store=store)
    assert preds.open("preds.txt").read() == b"trained on 2 rows\nx,y\n1,2\n3,4\n"
    check_pipeline(store_path, rid)
    for step in rid:
        d = show(store_path, rid[step])
        assert d["job_type"] == step and d["command"].endswith(f"pipeline_step.py {step}")


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_pipeline_with_artfs_run(mstore, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    steps = {
        "prepare": ["--out", "data=ds", "--", "sh", "-c", "printf 'x,y\\n1,2\\n3,4\\n' > data/train.csv"],
        "train": ["--in", "data=ds:latest", "--out", "model=model", "--job-type", "train", "-m", "fit", "--",
                  "sh", "-c", "echo trained on $(($(wc -l < data/train.csv) - 1)) rows > model/weights.txt"],
        "eval": ["--in", "data=ds", "--in", "model=model", "--out", "preds=preds", "--",
                 "sh", "-c", "cat model/weights.txt data/train.csv > preds/preds.txt"],
    }
    rid = {}
    for step, args in steps.items():
        p = artfs_run(mstore, work, *args)
        assert p.returncode == 0, f"{step}: {p.stderr}"
        rid[step] = run_id_of(p)
        assert os.listdir(work) == [] and mounts_under(tmp_path) == []  # mounts and created DIRs gone
    assert cli(mstore, "cat", "preds:v0", "preds.txt").stdout == "trained on 2 rows\nx,y\n1,2\n3,4\n"
    assert json.loads(cli(mstore, "log", "model", "--json").stdout)[0]["message"] == "fit"
    check_pipeline(mstore, rid)
    for step, args in steps.items():
        d = show(mstore, rid[step])
        assert d["command"] == " ".join(args[args.index("--") + 1:])
        assert d["cwd"] == os.path.realpath(work)
    assert show(mstore, rid["train"])["job_type"] == "train"


# -- 3. a failing command ------------------------------------------------------------------------

@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_failing_command_commits_nothing(mstore, tmp_path):
    cli(mstore, "put", "ds", write(tmp_path / "seed", {"a.txt": "alpha\n"}))
    work = tmp_path / "work"
    work.mkdir()
    p = artfs_run(mstore, work, "--in", "data=ds", "--out", "model=model", "--",
                  "sh", "-c", "cp data/a.txt model/copied.txt && echo partial > model/f.txt && exit 3")
    assert p.returncode == 3, p.stderr
    assert "status 3" in p.stderr and "nothing committed" in p.stderr
    run_id = run_id_of(p)
    assert mounts_under(tmp_path) == [] and os.listdir(work) == []

    assert versions(mstore, "model") == []  # no version
    d = show(mstore, run_id)
    assert d["outcome"] == "failed" and d["exit_status"] == 3
    assert d["used"] == ["ds:v0"] and d["produced"] == []

    # the failed run's draft is kept for inspection, listed, and mountable by its key
    key = f"run:{run_id}:model"
    assert key in [d["draft"] for d in json.loads(cli(mstore, "drafts", "--json").stdout)]
    assert key in p.stderr
    with Mounted(mstore, key, tmp_path / "m") as m:
        assert open(m.path("f.txt")).read() == "partial\n"
        assert open(m.path("copied.txt")).read() == "alpha\n"
        status = m.status()
        assert any(line.endswith("f.txt") for line in status), status

    # ... and never leaks into the next run, which starts from latest (nothing yet)
    p = artfs_run(mstore, work, "--out", "model=model", "--",
                  "sh", "-c", "test ! -e model/f.txt && echo done > model/g.txt")
    assert p.returncode == 0, p.stderr
    files = {e["name"] for e in json.loads(cli(mstore, "ls", "model:v0", "--json").stdout)}
    assert files == {"g.txt"}
    assert show(mstore, run_id_of(p))["produced"] == ["model:v0"]
    assert mounts_under(tmp_path) == []
    # the succeeded run's draft is gone (its changes are in model:v0); the failed one stays
    assert [d["draft"] for d in json.loads(cli(mstore, "drafts", "--json").stdout)] == [key]


# -- 4. SIGTERM while the command runs ----------------------------------------------------------------

SIGTERM_CMDS = {
    # the command dies of the signal
    "sleep": "echo x > out/partial.txt; echo $$ > {ready}; exec sleep 30",
    # the command catches it, notes it and exits 0: still nothing is committed
    "trap": "trap 'kill $! 2>/dev/null; echo term > {got}; exit 0' TERM; echo x > out/partial.txt; "
            "sleep 30 & echo $$ > {ready}; wait",
}


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(SIGTERM_CMDS))
def test_sigterm_stops_run(mstore, tmp_path, kind):
    cli(mstore, "put", "ds", write(tmp_path / "seed", {"a.txt": "alpha\n"}))
    work = tmp_path / "work"
    work.mkdir()
    ready, got = str(tmp_path / "ready"), str(tmp_path / "got")
    os.mkfifo(ready)  # the command says it runs by writing its pid here: the test waits on that event
    script = SIGTERM_CMDS[kind].format(ready=ready, got=got)
    p = subprocess.Popen(ARTFS + ["--store", mstore, "run", "--in", "data=ds", "--out", "out=res", "--",
                                  "sh", "-c", script],
                         cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cmd_pid = int(read_fifo(ready, p, timeout=60))
        assert is_mounted(str(work / "data")) and is_mounted(str(work / "out"))
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)  # a bound for a hung run, not a speed check
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    with pytest.raises(ProcessLookupError):
        os.kill(cmd_pid, 0)  # the command is gone: it got the signal
    if kind == "trap":
        assert open(got).read() == "term\n"
    assert p.returncode != 0, (out, err)
    assert mounts_under(tmp_path) == [] and os.listdir(work) == []
    assert versions(mstore, "res") == []  # nothing committed
    [row] = [r for r in runs_json(mstore) if r["produced"] == [] and r["used"] == ["ds:v0"]]
    assert row["outcome"] == "killed", row
    assert row["exit_status"] == p.returncode
    if kind == "sleep":
        assert p.returncode == 128 + signal.SIGTERM
    # the run's own draft still holds what the command wrote before it was stopped
    with Mounted(mstore, f"run:{row['id']}:res", tmp_path / "m") as m:
        assert open(m.path("partial.txt")).read() == "x\n"


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_signals_during_cleanup_do_not_leave_mounts(mstore, tmp_path):
    """A user pressing Ctrl-C again and again: signals keep coming while artfs run commits nothing,
    unmounts and records the run; none of that may be cut short (no mount left, run not 'died')."""
    cli(mstore, "put", "ds", write(tmp_path / "seed", {"a.txt": "alpha\n"}))
    work = tmp_path / "work"
    work.mkdir()
    for i, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        ready = str(tmp_path / f"ready{i}")
        script = (f"trap 'kill $! 2>/dev/null; exit 0' TERM INT; echo x > out/partial{i}.txt; "
                  f"echo $$ > {ready}; sleep 30 & wait")
        os.mkfifo(ready)  # the command writes its pid here: the test waits on that, not on a poll
        with open(tmp_path / f"err{i}", "w+") as err:
            p = subprocess.Popen(ARTFS + ["--store", mstore, "run", "--in", "data=ds", "--out", "out=res", "--",
                                          "sh", "-c", script],
                                 cwd=str(work), stdout=subprocess.DEVNULL, stderr=err)
            try:
                assert read_fifo(ready, p, timeout=30), open(err.name).read()
                # signals keep coming, one every 2 ms, until artfs run has ended (waited on its pidfd)
                pidfd = os.pidfd_open(p.pid)
                try:
                    deadline = time.monotonic() + 20
                    while True:
                        p.send_signal(sig)
                        if select.select([pidfd], [], [], 0.002)[0]:
                            break
                        assert time.monotonic() < deadline, "artfs run did not stop"
                finally:
                    os.close(pidfd)
            finally:
                if p.poll() is None:
                    p.kill()
                p.wait()
            err.seek(0)
            assert "nothing committed" in err.read()
        # it may end by the signal itself once everything is done, never before
        assert p.returncode in (-sig, 128 + sig)
        assert mounts_under(tmp_path) == [] and os.listdir(work) == []
    assert [r["outcome"] for r in runs_json(mstore)] == ["killed"] * 3
    assert versions(mstore, "res") == []


# -- 5/6. patch mode ------------------------------------------------------------------------------

def test_put_patch_and_rm(store, store_path, tmp_path):
    def ls(ref):
        return sorted(artfs.use_artifact(ref, store=store).files())

    base = write(tmp_path / "base", {"a.txt": "a\n", "sub/b.txt": "b\n", "sub/deep/c.txt": "c\n"})
    patch = write(tmp_path / "patch", {"b.txt": "B!\n", "new.txt": "new\n"})
    assert cli(store_path, "put", "pt", base).stdout.strip() == "pt:v0"

    # --patch --prefix P: add/replace under P, remove nothing
    assert cli(store_path, "put", "pt", patch, "--patch", "--prefix", "sub").stdout.strip() == "pt:v1"
    v1 = artfs.use_artifact("pt:v1", store=store)
    assert content(v1) == {"a.txt": b"a\n", "sub/b.txt": b"B!\n", "sub/deep/c.txt": b"c\n", "sub/new.txt": b"new\n"}
    assert cli(store_path, "put", "pt", patch, "--patch", "--prefix", "sub").stdout.strip() == "pt:v1 (unchanged)"
    # --patch at the root
    assert cli(store_path, "put", "pt", patch, "--patch").stdout.strip() == "pt:v2"
    assert ls("pt:v2") == ["a.txt", "b.txt", "new.txt", "sub/b.txt", "sub/deep/c.txt", "sub/new.txt"]
    assert cli(store_path, "put", "pt", patch, "--patch").stdout.strip() == "pt:v2 (unchanged)"
    # a new prefix that is several levels deep
    assert cli(store_path, "put", "pt", patch, "--patch", "--prefix", "x/y").stdout.strip() == "pt:v3"
    assert {p for p in ls("pt:v3") if p.startswith("x/")} == {"x/y/b.txt", "x/y/new.txt"}

    # rm: a new version without the paths (files and whole directories)
    assert cli(store_path, "rm", "pt", "a.txt", "sub/deep", "x").stdout.strip() == "pt:v4"
    assert ls("pt:v4") == ["b.txt", "new.txt", "sub/b.txt", "sub/new.txt"]
    assert content(artfs.use_artifact("pt:v3", store=store))["a.txt"] == b"a\n"  # old versions stay
    # rm of a missing path: one line, exit 2, no version
    for args in (["a.txt"], ["b.txt", "no/such"]):
        p = cli(store_path, "rm", "pt", *args, check=False)
        line = one_line_error(p, 2)
        assert args[-1] in line
    assert artfs.use_artifact("pt:latest", store=store).ref == "pt:v4"
    assert ls("pt:v4") == ["b.txt", "new.txt", "sub/b.txt", "sub/new.txt"]
    one_line_error(cli(store_path, "rm", "nothere", "a", check=False), 2)
    one_line_error(cli(store_path, "put", "pt", patch, "--prefix", "q", check=False), 2)

    # --patch on a new artifact makes its first version; --type applies
    assert cli(store_path, "put", "fresh", patch, "--patch", "--prefix", "p", "--type", "model").stdout.strip() \
        == "fresh:v0"
    fresh = artfs.use_artifact("fresh:v0", store=store)
    assert fresh.type == "model" and sorted(fresh.files()) == ["p/b.txt", "p/new.txt"]


# -- 7. bad input to `artfs run` ----------------------------------------------------------------------

@needs_fuse
@pytest.mark.timeout(120)
def test_artfs_run_bad_input(mstore, tmp_path):
    cli(mstore, "put", "ds", write(tmp_path / "seed", {"a.txt": "alpha\n"}))
    work = tmp_path / "work"
    write(work / "full", {"x": "x"})
    marker = str(tmp_path / "ran")
    cmd = ["--", "touch", marker]
    cases = {
        "--in without =": (["--in", "data", "--out", "o=res", *cmd], "data"),
        "--out without =": (["--in", "data=ds", "--out", "o", *cmd], "'o'"),
        "unknown artifact": (["--in", "data=nope", "--out", "o=res", *cmd], "nope"),
        "unknown version": (["--in", "data=ds:v7", "--out", "o=res", *cmd], "v7"),
        "input draft": (["--in", "data=ds:draft", *cmd], "draft"),
        "non-empty DIR": (["--in", "data=ds", "--out", "full=res", *cmd], "not empty"),
        "bad output name": (["--in", "data=ds", "--out", "o=no/good", *cmd], "no/good"),
        "same DIR twice": (["--in", "data=ds", "--out", "data=res", *cmd], "twice"),
        "no CMD": (["--in", "data=ds", "--out", "o=res"], "no command"),
        "no CMD after --": (["--in", "data=ds", "--out", "o=res", "--"], "no command"),
    }
    for what, (args, needle) in cases.items():
        p = artfs_run(mstore, work, *args)
        line = one_line_error(p, 2)
        assert needle in line, f"{what}: {line}"
        assert sorted(os.listdir(work)) == ["full"], f"{what}: a DIR was created"
        assert os.listdir(work / "full") == ["x"]
        assert mounts_under(tmp_path) == [], what
        assert not os.path.exists(marker), f"{what}: the command ran"
    assert runs_json(mstore) == []  # no run was even recorded
    assert versions(mstore, "res") == []

    # a command that cannot be started: one line, exit 2, mounts gone
    p = artfs_run(mstore, work, "--in", "data=ds", "--out", "o=res", "--", str(tmp_path / "no-such-program"))
    assert "no-such-program" in one_line_error(p, 2)
    assert sorted(os.listdir(work)) == ["full"] and mounts_under(tmp_path) == []
    [row] = runs_json(mstore)
    assert row["outcome"] == "failed" and row["exit_status"] == 2 and row["produced"] == []

    # unknown runs and versions: one line, exit 2
    assert "nope" in one_line_error(cli(mstore, "runs", "show", "nope", check=False), 2)
    assert "nope" in one_line_error(cli(mstore, "lineage", "nope:v0", check=False), 2)
    p = cli(mstore, "lineage", "ds:v0", "--depth", "0", check=False)  # a usage error: click's own text
    assert p.returncode == 2 and "--depth" in p.stderr
