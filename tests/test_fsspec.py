"""``artfs://``: the store as an fsspec file system (artfs/fsspec.py), without a mount.

Reading (ls, info, glob, find, open, cat_file: every byte verified, seekable), writing into
drafts that only ``commit()`` turns into versions, pandas both ways, and the registration
through the ``fsspec.specs`` entry point.
"""
from __future__ import annotations

import errno
import importlib.metadata
import io
import os
import pickle
import subprocess
import sys

import blake3
import pytest

fsspec = pytest.importorskip("fsspec")
pd = pytest.importorskip("pandas")

import artfs  # noqa: E402
from artfs import repo  # noqa: E402
from artfs.fsspec import ArtfsFileSystem  # noqa: E402
from artfs.storage.store import Store  # noqa: E402

LABELS = b"file,label\ntrain/0.png,0\ntrain/1.png,1\ntrain/2.png,7\n"
BIG = os.urandom(3 * (1 << 20) + 5)  # larger than a verified piece (1 MiB): several pieces


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def object_path(store_path: str, data: bytes) -> str:
    h = b3(data)
    return os.path.join(store_path, "objects", h[:2], h[2:])


@pytest.fixture(autouse=True)
def fresh_instances(monkeypatch):
    """No instance (and no staged draft) leaks from one test into the next; no ambient store."""
    monkeypatch.delenv("ARTFS_STORE", raising=False)
    ArtfsFileSystem.clear_instance_cache()
    yield
    ArtfsFileSystem.clear_instance_cache()


@pytest.fixture
def mnist(store, tmp_path):
    """mnist:v0 (labels.csv, train/0..2.png, big.bin), mnist:v1 (labels.csv changed, notes.txt
    added) with alias production on v0; returns the store's path."""
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "labels.csv").write_bytes(LABELS)
    for i in range(3):
        (src / "train" / f"{i}.png").write_bytes(b"\x89PNG digit %d" % i)
    (src / "big.bin").write_bytes(BIG)
    repo.put_dir(store, "mnist", str(src))
    (src / "labels.csv").write_bytes(LABELS.replace(b",7\n", b",2\n"))
    (src / "notes.txt").write_bytes(b"label of 2.png fixed\n")
    repo.put_dir(store, "mnist", str(src))
    repo.set_alias(store, "mnist:v0", "production")
    return store.path


@pytest.fixture
def fs(mnist):
    return fsspec.filesystem("artfs", store=mnist)


# -- registration --------------------------------------------------------------------------------

def test_registered_through_the_fsspec_specs_entry_point(mnist):
    eps = importlib.metadata.entry_points(group="fsspec.specs")
    assert {ep.name: ep.value for ep in eps}.get("artfs") == "artfs.fsspec:ArtfsFileSystem"
    # a fresh interpreter that never imported artfs finds the protocol by its name
    code = ("import fsspec, sys; fs = fsspec.filesystem('artfs', store=sys.argv[1]);"
            "print(type(fs).__module__, type(fs).__name__, fs.cat_file('mnist:v0/labels.csv').decode())")
    p = subprocess.run([sys.executable, "-c", code, mnist], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "artfs.fsspec ArtfsFileSystem " + LABELS.decode() + "\n"
    fs = fsspec.filesystem("artfs", store=mnist)
    assert isinstance(fs, ArtfsFileSystem) and fs.protocol == "artfs"
    assert fsspec.get_filesystem_class("artfs") is ArtfsFileSystem


def test_store_from_storage_options_or_ARTFS_STORE(mnist, tmp_path, monkeypatch):
    other = Store.init(str(tmp_path / "other"))
    monkeypatch.setenv("ARTFS_STORE", mnist)
    fs = fsspec.filesystem("artfs")
    assert fs.store_path == mnist and fs.ls("", detail=False) == ["mnist"]
    monkeypatch.setenv("ARTFS_STORE", other.path)
    fs2 = fsspec.filesystem("artfs")  # the cache is per store, not per (empty) argument list
    assert fs2 is not fs and fs2.store_path == other.path and fs2.ls("") == []
    assert fsspec.filesystem("artfs", store=mnist) is fs  # one instance per store: it holds the drafts
    assert pickle.loads(pickle.dumps(fs)).store_path == mnist
    with pytest.raises(FileNotFoundError):
        fsspec.filesystem("artfs", store=str(tmp_path / "nowhere")).ls("")


# -- reading -----------------------------------------------------------------------------------

def test_ls_lists_artifacts_then_a_versions_root(fs, mnist):
    assert fs.ls("artfs://") == [{"name": "mnist", "size": repo.resolve(Store.open(mnist), "mnist:v1").total_bytes,
                                   "type": "directory", "artifact_type": "dataset", "ref": "mnist:v1"}]
    assert fs.ls("artfs://mnist:v0", detail=False) == ["mnist:v0/big.bin", "mnist:v0/labels.csv", "mnist:v0/train"]
    assert fs.ls("artfs://mnist", detail=False) == ["mnist/big.bin", "mnist/labels.csv", "mnist/notes.txt",
                                                    "mnist/train"]  # NAME is latest (v1)
    assert fs.ls("mnist:production", detail=False) == [
        "mnist:production/big.bin", "mnist:production/labels.csv", "mnist:production/train"]
    rows = {r["name"]: r for r in fs.ls("artfs://mnist:v0/")}
    assert rows["mnist:v0/labels.csv"]["type"] == "file" and rows["mnist:v0/labels.csv"]["size"] == len(LABELS)
    assert rows["mnist:v0/train"]["type"] == "directory"
    assert rows["mnist:v0/big.bin"]["size"] == len(BIG) and rows["mnist:v0/big.bin"]["digest"] == b3(BIG)
    assert fs.ls("mnist:v0/train", detail=False) == [f"mnist:v0/train/{i}.png" for i in range(3)]
    with pytest.raises(FileNotFoundError):
        fs.ls("mnist:v7")
    with pytest.raises(FileNotFoundError):
        fs.ls("nosuch")


def test_info_exists_isdir(fs):
    i = fs.info("artfs://mnist:v0/labels.csv")
    assert (i["name"], i["size"], i["type"], i["digest"], i["ref"]) == (
        "mnist:v0/labels.csv", len(LABELS), "file", b3(LABELS), "mnist:v0")
    root = fs.info("artfs://mnist:v1")
    assert (root["type"], root["version"], root["artifact"], root["files"]) == ("directory", 1, "mnist", 6)
    assert fs.info("mnist")["ref"] == "mnist:v1" and fs.info("mnist:production")["ref"] == "mnist:v0"
    assert fs.isdir("mnist:v0/train") and not fs.isfile("mnist:v0/train")
    assert fs.isfile("mnist:v0/train/1.png") and fs.exists("mnist:v1/notes.txt")
    assert not fs.exists("mnist:v0/notes.txt") and not fs.exists("mnist:v9") and not fs.exists("bad name!")
    assert not fs.isdir("mnist:v0/nosuch")
    with pytest.raises(FileNotFoundError):
        fs.info("mnist:v0/notes.txt")
    assert fs.size("mnist:v0/big.bin") == len(BIG)
    assert fs.ukey("mnist:v0/labels.csv") == b3(LABELS)


def test_glob_and_find(fs):
    assert fs.glob("artfs://mnist:v0/train/*.png") == [f"mnist:v0/train/{i}.png" for i in range(3)]
    assert fs.glob("artfs://mnist/*.csv") == ["mnist/labels.csv"]
    assert fs.glob("mnist:v1/**/*.txt") == ["mnist:v1/notes.txt"]
    assert fs.glob("mnist:v0/**/1.png") == ["mnist:v0/train/1.png"]
    assert fs.find("mnist:v0") == ["mnist:v0/big.bin", "mnist:v0/labels.csv"] + [
        f"mnist:v0/train/{i}.png" for i in range(3)]
    assert "mnist:v0/train" in fs.find("mnist:v0", withdirs=True)
    assert fs.find("mnist:v0", maxdepth=1) == ["mnist:v0/big.bin", "mnist:v0/labels.csv"]
    assert fs.du("mnist:v0") == len(BIG) + len(LABELS) + sum(len(b"\x89PNG digit %d" % i) for i in range(3))
    files = fsspec.open_files("artfs://mnist:v0/train/*.png", store=fs.store_path)
    assert [f.path for f in files] == [f"mnist:v0/train/{i}.png" for i in range(3)]
    with files[2] as f:
        assert f.read() == b"\x89PNG digit 2"


def test_open_streams_and_seeks(fs, mnist):
    with fsspec.open("artfs://mnist:v0/labels.csv", "rt", store=mnist) as f:
        assert f.read() == LABELS.decode()
    with fs.open("mnist:v0/big.bin", "rb") as f:
        assert f.seekable() and f.readable()
        f.seek(2 * (1 << 20) + 7)  # inside the third piece
        assert f.read(1000) == BIG[2 * (1 << 20) + 7:2 * (1 << 20) + 1007]
        f.seek(-10, io.SEEK_END)
        assert f.read() == BIG[-10:] and f.read() == b""
        f.seek(0)
        assert f.read(5) == BIG[:5] and f.tell() == 5
    assert fs.cat_file("mnist:v0/big.bin") == BIG
    assert fs.cat_file("mnist:v0/big.bin", start=(1 << 20) - 3, end=(1 << 20) + 3) == BIG[(1 << 20) - 3:(1 << 20) + 3]
    assert fs.cat_file("mnist:v0/labels.csv", start=-4) == LABELS[-4:]
    assert fs.cat_file("mnist:v0/labels.csv", 0, -1) == LABELS[:-1]
    assert fs.cat("artfs://mnist:production/train/0.png") == b"\x89PNG digit 0"
    assert fs.read_text("mnist/notes.txt") == "label of 2.png fixed\n"
    with pytest.raises(IsADirectoryError):
        fs.open("mnist:v0/train", "rb")
    with pytest.raises(FileNotFoundError):
        fs.open("mnist:v0/nosuch.csv", "rb")


def test_corrupt_object_is_an_error_never_wrong_bytes(store, tmp_path):
    """One byte flipped in a stored object: reads of it fail (EIO); the intact pieces of a
    large file still read correctly."""
    small = os.urandom(4000)
    big = os.urandom(3 * (1 << 20))
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "small.bin").write_bytes(small)
    (src / "big.bin").write_bytes(big)
    (src / "t.csv").write_bytes(b"a,b\n1,2\n" + os.urandom(8).hex().encode() + b",3\n")
    repo.put_dir(store, "bad", str(src))
    flipped = []
    for data, off in ((small, 1234), (big, (1 << 20) + 99), ((src / "t.csv").read_bytes(), 4)):
        obj = object_path(store.path, data)
        os.chmod(obj, 0o644)
        with open(obj, "r+b") as f:
            f.seek(off)
            f.write(bytes([data[off] ^ 0x5A]))
        flipped.append((obj, off, data[off:off + 1]))
    try:
        fs = fsspec.filesystem("artfs", store=store.path)
        with pytest.raises(OSError) as exc:
            fs.cat_file("bad:v0/small.bin")
        assert exc.value.errno == errno.EIO and "corrupt" in str(exc.value)
        with pytest.raises(OSError):
            with fsspec.open("artfs://bad:v0/small.bin", "rb", store=store.path) as f:
                f.read()
        with fs.open("bad:v0/big.bin", "rb", block_size=4096) as f:
            assert f.read(1000) == big[:1000]  # the first piece is intact
            f.seek(2 * (1 << 20) + 5)
            assert f.read(100) == big[2 * (1 << 20) + 5:2 * (1 << 20) + 105]  # so is the third
            f.seek((1 << 20) + 50)
            with pytest.raises(OSError) as exc:
                f.read(100)  # the second is not: an error, not the flipped byte
            assert exc.value.errno == errno.EIO
        with pytest.raises(OSError):
            fs.cat_file("bad:v0/big.bin")
        with pytest.raises(OSError):
            pd.read_csv("artfs://bad:v0/t.csv", storage_options={"store": store.path})
    finally:
        for obj, off, orig in flipped:
            with open(obj, "r+b") as f:
                f.seek(off)
                f.write(orig)


# -- writing: drafts and commit() ----------------------------------------------------------------

def test_writes_stage_a_draft_that_commit_saves(fs, mnist):
    s = Store.open(mnist)
    with fs.open("artfs://mnist/extra/new.txt", "wb") as f:
        f.write(b"new file\n")
    with fsspec.open("artfs://mnist:draft/labels.csv", "wt", store=mnist) as f:
        f.write("file,label\n")
    fs.rm("artfs://mnist/notes.txt")
    # nothing changed yet: latest is still v1, and reads of NAME are reads of it
    assert repo.latest(s, "mnist").num == 1
    assert fs.cat_file("mnist/labels.csv") == LABELS.replace(b",7\n", b",2\n")
    assert fs.exists("mnist/notes.txt") and not fs.exists("mnist/extra/new.txt")
    # NAME:draft reads what is staged
    assert fs.cat_file("mnist:draft/labels.csv") == b"file,label\n"
    assert fs.cat_file("mnist:draft/extra/new.txt") == b"new file\n"
    assert not fs.exists("mnist:draft/notes.txt")
    assert "mnist:draft/extra" in fs.ls("mnist:draft", detail=False)
    assert fs.staged() == {"mnist": [("A", "extra"), ("A", "extra/new.txt"), ("M", "labels.csv"),
                                     ("D", "notes.txt")]}
    assert fs.commit(message="via fsspec") == ["mnist:v2"]
    v2 = repo.resolve(s, "mnist:v2")
    assert v2.message == "via fsspec" and repo.latest(s, "mnist").num == 2
    assert sorted(artfs.use_artifact("mnist:v2", store=s).files()) == [
        "big.bin", "extra/new.txt", "labels.csv", "train/0.png", "train/1.png", "train/2.png"]
    assert fs.cat_file("mnist/extra/new.txt") == b"new file\n" and not fs.exists("mnist/notes.txt")
    assert fs.cat_file("mnist:v2/big.bin") == BIG  # unchanged files come along, whole
    assert fs.staged() == {} and fs.commit() == []
    # the next write starts from the new latest
    with fs.open("mnist/more.txt", "wb") as f:
        f.write(b"more")
    assert fs.commit("mnist") == ["mnist:v3"]
    assert [c for c, _ in repo.diff_versions(s, v2, repo.resolve(s, "mnist:v3"))] == ["A"]


def test_write_modes_and_refusals(fs, mnist):
    with fs.open("mnist/notes.txt", "ab") as f:
        f.write(b"appended\n")
    assert fs.cat_file("mnist:draft/notes.txt") == b"label of 2.png fixed\nappended\n"
    with pytest.raises(FileExistsError):
        fs.open("mnist/labels.csv", "xb")
    with fs.open("mnist/fresh.txt", "xb") as f:
        f.write(b"x")
    for ref in ("mnist:v1", "mnist:production", "mnist:latest"):
        with pytest.raises(OSError) as exc:
            fs.open(f"{ref}/labels.csv", "wb")
        assert exc.value.errno == errno.EROFS
        with pytest.raises(OSError):
            fs.rm(f"{ref}/labels.csv")
    with pytest.raises(OSError):
        fs.open("mnist/.artfs/x", "wb").close()  # reserved
    with pytest.raises(IsADirectoryError):
        fs.rm("mnist/train")  # a directory needs recursive=True
    fs.rm("mnist/train", recursive=True)
    with pytest.raises(FileNotFoundError):
        fs.rm("mnist/nosuch.txt")
    # an exception while writing stages nothing
    with pytest.raises(RuntimeError):
        with fs.open("mnist/half.txt", "wb") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not fs.exists("mnist:draft/half.txt")
    assert fs.staged()["mnist"] == [("A", "fresh.txt"), ("M", "notes.txt"), ("D", "train"), ("D", "train/0.png"),
                                    ("D", "train/1.png"), ("D", "train/2.png")]
    fs.discard()
    assert fs.staged() == {} and fs.commit() == []
    assert repo.latest(Store.open(mnist), "mnist").num == 1


def test_pipe_put_copy_and_move_stage_too(fs, mnist, tmp_path):
    fs.pipe("artfs://mnist/piped.txt", b"piped")
    local = tmp_path / "local.csv"
    local.write_bytes(b"x,y\n1,2\n")
    fs.put(str(local), "artfs://mnist/uploaded/local.csv")
    fs.cp("artfs://mnist:v0/labels.csv", "artfs://mnist/labels-v0.csv")  # from an older version
    fs.mv("artfs://mnist/notes.txt", "artfs://mnist/docs/notes.txt")
    fs.touch("artfs://mnist/empty.txt")
    with pytest.raises(OSError):
        fs.pipe("artfs://mnist:v1/x.txt", b"x")
    assert fs.commit() == ["mnist:v2"]
    assert fs.cat("mnist/piped.txt") == b"piped" and fs.cat("mnist/uploaded/local.csv") == b"x,y\n1,2\n"
    assert fs.cat("mnist/labels-v0.csv") == LABELS and fs.cat("mnist/empty.txt") == b""
    assert fs.cat("mnist/docs/notes.txt") == b"label of 2.png fixed\n" and not fs.exists("mnist/notes.txt")
    fs.get("artfs://mnist:v2/docs/notes.txt", str(tmp_path / "got.txt"))
    assert (tmp_path / "got.txt").read_bytes() == b"label of 2.png fixed\n"


def test_new_artifact_type_and_unchanged_commit(store):
    fs = fsspec.filesystem("artfs", store=store.path, type="model")
    with fs.open("artfs://clf/weights.bin", "wb") as f:
        f.write(b"\x00\x01" * 100)
    assert not fs.exists("clf")  # no version before commit
    assert fs.commit(message="first") == ["clf:v0"]
    v = repo.resolve(store, "clf:v0")
    assert (v.type, v.file_count) == ("model", 1)
    # the same bytes again: the existing version, no new number
    with fs.open("clf/weights.bin", "wb") as f:
        f.write(b"\x00\x01" * 100)
    assert fs.commit() == ["clf:v0"]
    assert [x.num for x in repo.list_versions(store, "clf")] == [0]
    # a store that does not exist yet is made by the first write (as the API does)
    fs2 = fsspec.filesystem("artfs", store=os.path.join(os.path.dirname(store.path), "made-by-fsspec"))
    with fs2.open("a/x.txt", "wb") as f:
        f.write(b"x")
    assert fs2.commit() == ["a:v0"] and fs2.cat_file("a:v0/x.txt") == b"x"


def test_transaction_commits_on_success_and_discards_on_error(fs, mnist):
    with fs.transaction:
        with fs.open("mnist/t1.txt", "wb") as f:
            f.write(b"t1")
    assert fs.cat_file("mnist:v2/t1.txt") == b"t1"
    with pytest.raises(RuntimeError):
        with fs.transaction:
            with fs.open("mnist/t2.txt", "wb") as f:
                f.write(b"t2")
            raise RuntimeError("boom")
    assert fs.staged() == {} and repo.latest(Store.open(mnist), "mnist").num == 2


# -- pandas --------------------------------------------------------------------------------------

def test_pandas_round_trip_without_a_mount(mnist, monkeypatch):
    monkeypatch.setenv("ARTFS_STORE", mnist)
    df = pd.read_csv("artfs://mnist:v0/labels.csv")  # the line, verbatim
    assert list(df["label"]) == [0, 1, 7]
    df.loc[df["file"] == "train/2.png", "label"] = 2
    df.to_csv("artfs://mnist/labels.csv", index=False)
    assert list(pd.read_csv("artfs://mnist/labels.csv")["label"]) == [0, 1, 2]  # v1 (the fix, by put)
    df["label"] = df["label"] * 10
    df.to_csv("artfs://mnist/labels.csv", index=False)
    assert list(pd.read_csv("artfs://mnist:draft/labels.csv")["label"]) == [0, 10, 20]
    assert list(pd.read_csv("artfs://mnist/labels.csv")["label"]) == [0, 1, 2]  # not committed yet
    assert fsspec.filesystem("artfs").commit(message="x10") == ["mnist:v2"]
    back = pd.read_csv("artfs://mnist:v2/labels.csv")
    assert back.equals(df)
    # other formats go through the same file objects
    df.to_json("artfs://mnist/labels.json", orient="records")
    assert fsspec.filesystem("artfs").commit() == ["mnist:v3"]
    assert pd.read_json("artfs://mnist:v3/labels.json", orient="records").equals(df)
    s = Store.open(mnist)
    assert repo.resolve(s, "mnist:v3").file_count == 7
