"""W&B's artifact examples run unchanged apart from the import (DESIGN.md §11).

``tests/wandb_examples/`` holds the programs of W&B's artifact docs (single run,
distributed runs 1-3, incremental inside and outside a run) and a "putting it
all together" program using the wider API, each with ``import wandb`` replaced
by ``import artfs as wandb`` and nothing else.  Each runs in a fresh process
with ``ARTFS_STORE`` set, in a directory holding the files it adds; the tests
check the versions, runs and lineage they leave.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import artfs
from artfs import repo

EXAMPLES = os.path.join(os.path.dirname(__file__), "wandb_examples")


def write(root, files: dict) -> str:
    for rel, data in files.items():
        p = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
    return str(root)


def example(name: str, store_path: str, cwd: str) -> str:
    env = dict(os.environ, ARTFS_STORE=store_path, PYTHONPATH=os.path.dirname(os.path.dirname(artfs.__file__)))
    env.pop("ARTFS_RUN_ID", None)
    env.pop("ARTFS_GROUP", None)
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"{name} failed:\n{p.stderr}"
    return p.stdout


def content(v: artfs.Version) -> dict:
    return {p: v.open(p).read() for p in v.files()}


@pytest.fixture
def work(tmp_path):
    return write(tmp_path / "work", {"image1.png": b"\x89PNG one", "image2.png": b"\x89PNG two",
                                     "image3.png": b"\x89PNG three", "file_to_add.txt": "added\n",
                                     "modified_file.txt": "modified\n", "extra.png": b"\x89PNG extra",
                                     "images/a.png": b"\x89PNG a", "images/b.png": b"\x89PNG b"})


def test_single_run(store, store_path, work):
    example("single_run.py", store_path, work)
    v = artfs.use_artifact("artifact_name:latest", store=store)
    assert v.ref == "artifact_name:v0" and v.type == "artifact_type"
    assert content(v) == {"image1.png": b"\x89PNG one"}
    assert v.logged_by() is not None and v.logged_by().outcome == "finished"


def test_distributed_runs(store, store_path, work):
    example("distributed_1.py", store_path, work)
    example("distributed_2.py", store_path, work)
    assert repo.latest(store, "artifact_name") is None  # upserted, not a version yet
    example("distributed_3.py", store_path, work)
    v = artfs.use_artifact("artifact_name:latest", store=store)
    assert v.ref == "artifact_name:v0"
    assert content(v) == {"image1.png": b"\x89PNG one", "image2.png": b"\x89PNG two", "image3.png": b"\x89PNG three"}


def test_incremental_inside_a_run(store, store_path, work, tmp_path):
    repo.put_dir(store, "my_artifact", write(tmp_path / "seed", {
        "keep.txt": "keep\n", "dir_to_remove/a.txt": "a\n", "dir_to_remove/sub/b.txt": "b\n"}))
    example("incremental_in_run.py", store_path, work)
    v1 = artfs.use_artifact("my_artifact:latest", store=store)
    assert v1.ref == "my_artifact:v1"
    assert content(v1) == {"keep.txt": b"keep\n", "file_to_add.txt": b"added\n"}
    run = v1.logged_by()
    assert run.job_type == "modify dataset"
    assert [v.ref for v in run.used_artifacts()] == ["my_artifact:v0"]


def test_incremental_outside_a_run(store, store_path, work, tmp_path):
    repo.put_dir(store, "my_artifact", write(tmp_path / "seed", {
        "keep.txt": "keep\n", "deleted_file.txt": "old\n", "modified_file.txt": "before\n"}))
    example("incremental_outside_run.py", store_path, work)
    v1 = artfs.use_artifact("my_artifact:latest", store=store)
    assert v1.ref == "my_artifact:v1" and v1.logged_by() is None
    assert content(v1) == {"keep.txt": b"keep\n", "modified_file.txt": b"modified\n"}


def test_putting_it_all_together(store, store_path, work):
    out = example("all_together.py", store_path, work)
    ds = artfs.use_artifact("my-dataset:latest", store=store)
    assert ds.ref == "my-dataset:v1"
    assert sorted(ds.files()) == ["a.png", "b.png", "extra.png"]
    v0 = artfs.use_artifact("my-dataset:baseline", store=store)
    assert v0.ref == "my-dataset:v0" and v0.description == "raw images" and v0.metadata == {"source": "camera"}
    model = artfs.use_artifact("my-model:best", store=store)
    assert model.type == "model" and model.metadata == {"accuracy": 0.93} and model.description == "first model"
    assert model.open("model.pt").read().startswith(b"model trained on ['a.png', 'b.png'] with lr=0.01")
    assert out.strip() == "artifacts-example/my-model:v0 v0 ['best', 'latest']"
    train = model.logged_by()
    assert train.job_type == "train" and train.summary == {"loss": 0.5} and train.config == {"lr": 0.01}
    assert train.project == "artifacts-example"
    assert [v.ref for v in train.used_artifacts()] == ["my-dataset:v0"]
    # the training program's download sits in its cwd and a second download reuses it
    d = os.path.join(work, "artifacts", "my-dataset-v0")
    assert sorted(os.listdir(d)) == ["a.png", "b.png"]
    assert v0.download(d) == d and sorted(os.listdir(d)) == ["a.png", "b.png"]
