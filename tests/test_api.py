"""The Python API (W&B-style names) on a real store: the example from the issue,
incremental drafts, references, aliases, downloads."""
from __future__ import annotations

import os
import stat

import blake3
import pytest

import artfs
import artfs.storage.hashing
from artfs.storage import format as fmt
from artfs import repo
from artfs.errors import BadInput, NotFound, ReferenceChanged
from artfs.storage.local_objects import LocalBatch, LocalObjectStore
from artfs.storage.store import Store


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def write(path, data: bytes, mode: int | None = None):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory with the example's local files; cwd is it."""
    w = tmp_path / "work"
    write(w / "x.png", b"\x89PNG x")
    write(w / "y.png", b"\x89PNG y")
    write(w / "old.txt", b"old text\n")
    write(w / "imgs" / "a.png", b"\x89PNG a")
    write(w / "imgs" / "sub" / "b.png", b"\x89PNG b")
    write(tmp_path / "abs" / "big.bin", os.urandom(1 << 16))
    monkeypatch.chdir(w)
    return w


def test_the_example_from_the_issue(store, work, tmp_path):
    S = store
    big_uri = "file://" + str(tmp_path / "abs" / "big.bin")
    a = artfs.Artifact("mnist", type="dataset", description="d", metadata={"k": 1}, store=S)
    a.add_file("x.png", name="images/x.png")
    a.add_dir("imgs/", name="imgs")
    a.add_reference(big_uri)
    a.add_file("old.txt")
    v = a.save()
    assert (v.ref, v.version, v.unchanged, v.name, v.type) == ("mnist:v0", "v0", False, "mnist", "dataset")
    assert v.metadata == {"k": 1} and S.meta.artifact("mnist")["description"] == "d"
    assert v.files() == ["big.bin", "images/x.png", "imgs/a.png", "imgs/sub/b.png", "old.txt"]

    d = artfs.use_artifact("mnist:latest", store=S).new_draft()
    d.remove("imgs/")
    d.add_file("y.png")
    d.remove("old.txt")
    d.add_file("old.txt")
    assert d.status() == [("D", "imgs"), ("D", "imgs/a.png"), ("D", "imgs/sub"), ("D", "imgs/sub/b.png"),
                          ("A", "y.png")]
    v1 = d.save()
    assert (v1.ref, v1.unchanged) == ("mnist:v1", False)
    assert v1.metadata == {}  # a draft's metadata is its own

    # identical content: no new version, the existing one comes back
    d2 = artfs.use_artifact("mnist:latest", store=S).new_draft()
    d2.remove("old.txt")
    d2.add_file("old.txt")
    v2 = d2.save()
    assert v2.unchanged is True and v2.ref == "mnist:v1" and v2 == v1
    # ...also when the same Artifact object saves again
    d.remove("y.png")
    d.add_file("y.png")
    assert d.save().ref == "mnist:v1"
    # ...and when a brand-new Artifact logs the same content again (W&B semantics)
    again = artfs.Artifact("mnist", store=S)
    again.add_file("x.png", name="images/x.png")
    again.add_reference(big_uri)
    again.add_file("old.txt")
    again.add_file("y.png")
    assert again.save().ref == "mnist:v1"
    assert [r["num"] for r in S.meta.versions("mnist")] == [1, 0]

    w = artfs.use_artifact("mnist:v1", store=S)
    assert w.files() == ["big.bin", "images/x.png", "old.txt", "y.png"]
    assert w.open("images/x.png").read() == b"\x89PNG x"
    assert w.open("big.bin").read() == (tmp_path / "abs" / "big.bin").read_bytes()
    out = w.download("out/")
    assert out == "out/"
    got = {os.path.relpath(os.path.join(dp, f), "out"): open(os.path.join(dp, f), "rb").read()
           for dp, _, fs in os.walk("out") for f in fs}
    assert got == {"big.bin": (tmp_path / "abs" / "big.bin").read_bytes(), "images/x.png": b"\x89PNG x",
                   "old.txt": b"old text\n", "y.png": b"\x89PNG y"}
    assert S.meta.drafts() == []  # saved Artifacts leave no draft behind


def test_version_attributes_and_aliases(store, work):
    a = artfs.Artifact("m", type="model", metadata={"acc": 0.9}, store=store)
    a.add_file("x.png")
    v = a.save("first model")
    assert (v.name, v.type, v.version, v.message, v.file_count, v.size) == ("m", "model", "v0", "first model", 1, 6)
    assert v.metadata == {"acc": 0.9}
    assert v.digest == repo.resolve(store, "m:v0").ident.hex()
    assert v.created_at > 0
    assert v.aliases == ["latest"]
    v.set_alias("production")
    assert sorted(v.aliases) == ["latest", "production"]
    a.add_file("y.png")
    v1 = a.save()
    assert v1.ref == "m:v1" and v1.aliases == ["latest"]
    assert artfs.use_artifact("m:production", store=store) == v
    v1.set_alias("production")  # moves it
    assert artfs.use_artifact("m:production", store=store) == v1 and v.aliases == []
    for bad in ("latest", "draft", "v3", "a b"):
        with pytest.raises(BadInput):
            v.set_alias(bad)
    assert repo.resolve(store, "m:v1").parent == 0 and repo.resolve(store, "m:v1").how == "incremental"
    with pytest.raises(BadInput, match="is a model, not a dataset"):
        artfs.Artifact("m", type="dataset", store=store)
    assert hash(v) != hash(v1) and v != v1 and repr(v) == "<Version m:v0>"


def test_incremental_draft_records_only_the_changes(store_path, store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    big = os.urandom(3 << 20)
    write(src / "data" / "big.bin", big)
    for i in range(5):
        write(src / "data" / "shards" / f"s{i}", f"shard {i}".encode())
    write(src / "a.txt", b"a")
    write(src / "b.txt", b"b")
    a = artfs.Artifact("ds", store=store)
    a.add_dir(str(src))
    v0 = a.save()
    assert v0.files() == ["a.txt", "b.txt", "data/big.bin"] + [f"data/shards/s{i}" for i in range(5)]

    s = Store.open(store_path)  # a fresh process's view: nothing cached
    touched: list = []
    for cls, meth in ((LocalObjectStore, "read"), (LocalObjectStore, "open"), (LocalObjectStore, "verify"),
                      (LocalObjectStore, "has"), (LocalBatch, "put_fd"), (LocalBatch, "put_bytes")):
        real = getattr(cls, meth)
        monkeypatch.setattr(cls, meth,
                            (lambda real, meth: lambda self, *a, **k: touched.append((meth, a[0])) or real(self, *a, **k))(real, meth))
    hashed = []
    from artfs.repo import content as content_mod, drafts as drafts_mod
    from artfs.storage import hashing as hashing_mod, local_objects as lo_mod

    for mod in (hashing_mod, lo_mod, content_mod, drafts_mod):
        for fn in ("hash_fd", "hash_own"):  # every module that imported the name has its own copy
            if hasattr(mod, fn):
                real_hash = getattr(mod, fn)
                monkeypatch.setattr(mod, fn, (lambda r: lambda *a: hashed.append(a) or r(*a))(real_hash))

    d = artfs.use_artifact("ds:v0", store=s).new_draft()
    write(tmp_path / "new.txt", b"new")
    write(tmp_path / "b2.txt", b"b changed")
    d.add_file(str(tmp_path / "new.txt"), name="new.txt")
    d.add_file(str(tmp_path / "b2.txt"), name="b.txt")
    d.remove("a.txt")
    assert d.status() == [("D", "a.txt"), ("M", "b.txt"), ("A", "new.txt")]
    v1 = d.save()
    assert (v1.ref, v1.unchanged) == ("ds:v1", False)

    put_files = [p for m, p in touched if m == "put_fd"]
    assert len(put_files) == 2  # only the new content is read
    assert hashed == []  # nothing re-hashed
    big_d = bytes.fromhex(b3(big))
    assert not any(arg == big_d for _, arg in touched)  # the unchanged big file is never opened
    reads = {arg for m, arg in touched if m in ("read", "open")}
    assert len(reads) == 1  # only v0's root tree is read; "data" is shared without being opened
    v0i, v1i = repo.resolve(s, "ds:v0"), repo.resolve(s, "ds:v1")
    assert repo.lookup(s, v0i, "data").digest == repo.lookup(s, v1i, "data").digest
    assert v1.files() == ["b.txt", "data/big.bin"] + [f"data/shards/s{i}" for i in range(5)] + ["new.txt"]
    assert v1.open("b.txt").read() == b"b changed"
    assert v1.open("data/big.bin").read() == big


def test_add_dir_merges_and_keeps_metadata(store, tmp_path):
    src = tmp_path / "src"
    write(src / "run.sh", b"#!/bin/sh\n", 0o755)
    write(src / "sub" / "f", b"f")
    os.symlink("run.sh", src / "link")
    os.utime(src / "sub" / "f", ns=(1_500_000_000_000_000_001,) * 2)
    other = tmp_path / "other"
    write(other / "sub" / "g", b"g")
    a = artfs.Artifact("ds", store=store)
    a.add_dir(str(src), name="pkg")
    a.add_dir(str(other), name="pkg")  # merges into the existing directory
    a.add_dir(str(other))  # at the root
    assert a.files() == ["pkg/run.sh", "pkg/sub/f", "pkg/sub/g", "sub/g"]
    v = a.save()
    e = v.entry("pkg/run.sh")
    assert e.executable and stat.S_IMODE(e.mode) == 0o755
    assert v.entry("pkg/sub/f").mtime_ns == 1_500_000_000_000_000_001
    assert v.entry("pkg/link").target == b"run.sh"
    assert v.files() == ["pkg/run.sh", "pkg/sub/f", "pkg/sub/g", "sub/g"]


def test_references_are_recorded_not_copied(store, tmp_path):
    target = write(tmp_path / "ext" / "weights.bin", os.urandom(1 << 20 | 123), 0o640)
    before = set(store.objects.list())
    a = artfs.Artifact("m", type="model", store=store)
    a.add_reference("file://" + target)
    a.add_reference("file://" + target, name="copies/w.bin")
    v = a.save()
    data = open(target, "rb").read()
    e = v.entry("weights.bin")
    assert (e.kind, e.size, e.digest.hex(), e.uri) == (fmt.REF, len(data), b3(data), "file://" + target)
    assert stat.S_IMODE(e.mode) == 0o640
    assert bytes.fromhex(b3(data)) not in set(store.objects.list())
    added = set(store.objects.list()) - before
    # trees, and the chunk list that lets every read be verified -- not the content
    assert all(h == e.chunks or fmt.decode_tree(store.objects.get(h)) is not None for h in added)
    assert len(store.objects.get(e.chunks)) == 32 * 2
    assert (v.file_count, v.size) == (2, 2 * len(data))
    assert v.open("copies/w.bin").read() == data
    # the referenced file changes: reads fail loudly, never with silent wrong bytes
    with open(target, "r+b") as f:
        f.write(b"X")
    with pytest.raises(ReferenceChanged, match="changed since it was recorded"):
        v.open("weights.bin").read()  # a streaming file object: each piece is verified as it is read
    with pytest.raises(ReferenceChanged):
        v.download(str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "weights.bin")  # no wrong bytes left behind
    os.unlink(target)
    with pytest.raises(ReferenceChanged, match="unreadable"):
        v.open("weights.bin")
    os.mkdir(target)  # now a directory: opening works, reading does not
    with pytest.raises(ReferenceChanged, match="unreadable"):
        v.open("weights.bin")


@pytest.mark.parametrize("uri, match", [
    ("http://example.com/x", "only file:///"),
    ("s3://bucket/x", "only file:///"),
    ("file://relative/x", "absolute"),
    ("file:///does/not/exist", "cannot read"),
])
def test_bad_references(store, uri, match):
    a = artfs.Artifact("m", store=store)
    with pytest.raises(BadInput, match=match):
        a.add_reference(uri)
    a.discard()


def test_bad_names_and_paths(store, work):
    with pytest.raises(BadInput):
        artfs.Artifact("bad name", store=store)
    a = artfs.Artifact("ds", store=store)
    for bad in ("../x", "a/../b", ".artfs", ".artfs/x", "./x", "", "/", "a\0b", "x" * 256):
        with pytest.raises(BadInput):
            a.add_file("x.png", name=bad)
    with pytest.raises(BadInput, match="not a file"):
        a.add_file("imgs")
    with pytest.raises(BadInput, match="not a file"):
        a.add_file("missing.png")
    with pytest.raises(BadInput, match="not a directory"):
        a.add_dir("x.png")
    with pytest.raises(NotFound, match="no nope.txt in this draft of ds"):
        a.remove("nope.txt")
    a.add_file("x.png", name="f")
    with pytest.raises(BadInput):
        a.add_file("y.png", name="f/under-a-file")  # a file is not a directory
    assert a.files() == ["f"]
    a.discard()
    assert store.meta.drafts() == []
    with pytest.raises(NotFound, match="no artifact 'ds'"):
        artfs.use_artifact("ds", store=store)
    with pytest.raises(BadInput):
        artfs.use_artifact("ds:draft", store=store)


def test_empty_artifact_and_empty_draft(store):
    v = artfs.Artifact("empty", store=store).save()
    assert (v.ref, v.files(), v.file_count, v.size) == ("empty:v0", [], 0, 0)
    assert v.new_draft().save() == v and artfs.Artifact("empty", store=store).save().unchanged
    assert store.meta.drafts() == []


def test_api_creates_a_store_on_first_use(tmp_path, work, fsck_clean):
    path = str(tmp_path / "api-store")
    a = artfs.Artifact("ds", store=path)
    a.add_file("x.png")
    v = a.save()
    assert artfs.use_artifact("ds:v0", store=path).open("x.png").read() == b"\x89PNG x"
    assert v.ref == "ds:v0"
    fsck_clean(Store.open(path))
    # ...but never inside a directory that holds other things
    busy = tmp_path / "project"
    write(busy / "notes.txt", b"mine")
    with pytest.raises(artfs.StoreMissing, match="not an artfs store and not empty"):
        artfs.Artifact("ds", store=str(busy))
    assert os.listdir(busy) == ["notes.txt"]
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    artfs.Artifact("ds", store=str(empty))
    assert os.path.exists(empty / "artfs-store")


def test_staged_files_are_stored_as_they_are_added(store, work):
    # the source may change or vanish after add_file: the draft already has the bytes
    a = artfs.Artifact("ds", store=store)
    a.add_file("x.png")
    os.unlink("x.png")
    assert a.save().open("x.png").read() == b"\x89PNG x"
