"""Repository semantics on a real store: put, identity, dedup, drafts, aliases,
export, diff, fsck and gc (DESIGN.md §1, §5, §8).  No FUSE, no CLI."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import blake3
import pytest

from artfs import repo
from artfs.storage import format as treefmt
from artfs.errors import BadInput, Corrupt, NotFound
from artfs.objects import ObjectStore
from artfs.storage.store import Store
from artfs.storage.format import DIR, FILE, SYMLINK

T0 = 1_600_000_000_123_456_789  # an mtime with nanoseconds


def put(store, name, src, **kw):
    return repo.put_dir(store, name, str(src), **kw)


def objects(store) -> set[str]:
    return set(store.objects.iter_all())


def tree_objects(store) -> set[str]:
    out = set()
    for h in objects(store):
        try:
            treefmt.decode_tree(store.objects.get_bytes(h))
        except Corrupt:
            continue
        out.add(h)
    return out


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def read(store, v, path) -> bytes:
    return b"".join(repo.iter_content(store, repo.lookup(store, v, path)))


# -- put and identity ---------------------------------------------------------------

def test_put_records_content_and_metadata(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a.txt": b"alpha", "d/b.bin": b"\0" * 10, "d/e/": None,
                                    "l": ("symlink", "a.txt")})
    os.chmod(src + "/d/b.bin", 0o750)
    os.utime(src + "/a.txt", ns=(T0, T0))
    v, unchanged = put(store, "ds", src, message="first", metadata={"k": [1, 2]})
    assert not unchanged
    assert (v.ref, v.num, v.parent, v.how, v.message, v.metadata) == ("ds:v0", 0, None, "single", "first", {"k": [1, 2]})
    assert v.file_count == 2 and v.total_bytes == 15
    a = repo.lookup(store, v, "a.txt")
    assert (a.kind, a.size, a.mtime_ns, a.digest.hex()) == (FILE, 5, T0, b3(b"alpha"))
    assert repo.lookup(store, v, "d/b.bin").mode == 0o750
    assert repo.lookup(store, v, "d/e").kind == DIR
    link = repo.lookup(store, v, "l")
    assert (link.kind, link.target) == (SYMLINK, b"a.txt")
    assert read(store, v, "d/b.bin") == b"\0" * 10
    assert [repo.treefmt.join_path(p) for p, _ in repo.walk(store, v.root)] == ["a.txt", "d", "d/b.bin", "d/e", "l"]
    assert repo.resolve(store, "ds") == v == repo.resolve(store, "ds:v0") == repo.resolve(store, "ds:latest")
    with pytest.raises(NotFound, match="no d/nope in ds:v0"):
        repo.lookup(store, v, "d/nope")
    with pytest.raises(NotFound, match="not a directory"):
        repo.lookup(store, v, "a.txt/x")


def test_put_twice_is_unchanged(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"})
    v0, u0 = put(store, "ds", src)
    v1, u1 = put(store, "ds", src)
    assert (u0, u1) == (False, True)
    assert v1.ref == v0.ref == "ds:v0"
    assert len(store.meta.versions("ds")) == 1


def test_mtime_only_change_is_unchanged(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"}, mtime_ns=T0)
    v0, _ = put(store, "ds", src)
    for p in ("a", "d/b", "d"):
        os.utime(os.path.join(src, p), ns=(T0 + 10**9, T0 + 10**9))
    os.chown(os.path.join(src, "a"), os.getuid(), os.getgid())  # ctime moves too
    os.chmod(os.path.join(src, "a"), 0o600)  # a non-exec mode bit is not content either
    v1, unchanged = put(store, "ds", src)
    assert unchanged and v1.num == 0
    # identity is content: the version keeps what was recorded when it was made
    assert repo.lookup(store, v1, "a").mtime_ns == T0
    assert len(store.meta.versions("ds")) == 1


def test_exec_bit_content_and_name_changes_make_versions(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"})
    v0, _ = put(store, "ds", src)
    os.chmod(os.path.join(src, "a"), 0o755)
    v1, u = put(store, "ds", src)
    assert not u and v1.ref == "ds:v1" and v1.parent == 0
    assert repo.lookup(store, v1, "a").executable
    with open(os.path.join(src, "d/b"), "wb") as f:
        f.write(b"3")
    v2, u = put(store, "ds", src)
    assert not u and v2.num == 2
    os.rename(os.path.join(src, "d/b"), os.path.join(src, "d/c"))
    v3, u = put(store, "ds", src)
    assert not u and v3.num == 3
    os.mkdir(os.path.join(src, "empty"))
    v4, u = put(store, "ds", src)
    assert not u and v4.num == 4  # an empty directory is content
    assert repo.resolve(store, "ds").num == 4
    assert store.meta.alias("ds", "latest") == 4
    assert repo.diff_versions(store, v0, v1) == [("M", "a")]
    assert repo.diff_versions(store, v2, v3) == [("D", "d/b"), ("A", "d/c")]
    assert repo.diff_versions(store, v3, v4) == [("A", "empty")]


def test_put_back_to_an_older_content_is_a_new_version(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "ds", src)
    mktree(src, {"a": b"2"})
    put(store, "ds", src)
    mktree(src, {"a": b"1"})
    v, u = put(store, "ds", src)  # equal to v0, but not to latest: history moves on
    assert not u and v.num == 2
    assert v.ident == repo.resolve(store, "ds:v0").ident


def test_dedup_same_content_stored_once(store, mktree, tmp_path):
    big = os.urandom(3 << 20)  # above MMAP_MIN: the copy_file_range path
    small = b"small file"
    src = mktree(tmp_path / "src", {"x/big": big, "y/big-copy": big, "s1": small, "z/s2": small})
    before = objects(store)
    v0, _ = put(store, "ds", src)
    new = objects(store) - before
    blobs = new - tree_objects(store)
    assert blobs == {b3(big), b3(small)}
    assert os.stat(store.objects.local_path(b3(big))).st_size == len(big)
    # the same content under another artifact and another path adds no blob
    src2 = mktree(tmp_path / "src2", {"elsewhere/b": big, "t": small})
    before = objects(store)
    put(store, "other", src2)
    assert all(h in tree_objects(store) for h in objects(store) - before)
    assert read(store, v0, "y/big-copy") == big


def test_object_files_are_private(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"x" * 10, "b": os.urandom(2 << 20)})
    os.chmod(src + "/a", 0o644)
    put(store, "ds", src)
    for h in objects(store):
        assert stat.S_IMODE(os.stat(store.objects.local_path(h)).st_mode) == 0o600
    assert os.listdir(store.objects.tmp_dir) == []


def test_put_cache_skips_unchanged_files(store, mktree, tmp_path, monkeypatch):
    src = mktree(tmp_path / "src", {f"f{i}": f"content {i}".encode() for i in range(20)})
    # pretend the files are old enough to be trusted by the (dev, ino, size, mtime, ctime) cache
    real_time = repo.time.time
    monkeypatch.setattr(repo.time, "time", lambda: real_time() + 100)
    put(store, "ds", src)
    calls = []
    real_put_file = ObjectStore.put_file
    monkeypatch.setattr(ObjectStore, "put_file", lambda self, p: calls.append(p) or real_put_file(self, p))
    v, u = put(store, "ds", src)
    assert u and calls == []
    with open(os.path.join(src, "f3"), "wb") as f:
        f.write(b"changed")
    v, u = put(store, "ds", src)
    assert not u and calls == [os.path.join(src, "f3")]
    assert read(store, v, "f3") == b"changed"


def test_put_cache_is_not_trusted_for_fresh_files(store, mktree, tmp_path, monkeypatch):
    # a file modified within the clock's granularity of the put may change again unseen: re-read it
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "ds", src)
    calls = []
    real_put_file = ObjectStore.put_file
    monkeypatch.setattr(ObjectStore, "put_file", lambda self, p: calls.append(p) or real_put_file(self, p))
    put(store, "ds", src)
    assert calls == [os.path.join(src, "a")]


def test_put_cache_survives_gc_of_its_object(store, mktree, tmp_path, monkeypatch):
    src = mktree(tmp_path / "src", {"a": b"will be collected"})
    real_time = repo.time.time
    monkeypatch.setattr(repo.time, "time", lambda: real_time() + 100)
    put(store, "tmp", src)
    # the only version goes away (no API for that: forget it the hard way), gc removes the blob
    store.meta.db.execute("DELETE FROM versions")
    store.meta.db.execute("DELETE FROM aliases")
    repo.gc(store)
    assert b3(b"will be collected") not in objects(store)
    v, _ = put(store, "ds", src)  # the cache says "known" but the object is gone: must re-store it
    assert read(store, v, "a") == b"will be collected"


def test_put_rejects_bad_input(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1"})
    with pytest.raises(BadInput):
        put(store, "bad name", src)
    with pytest.raises(BadInput, match="not a directory"):
        put(store, "ds", tmp_path / "nope")
    with pytest.raises(BadInput, match="not a directory"):
        put(store, "ds", os.path.join(src, "a"))
    os.mkdir(os.path.join(src, ".artfs"))
    with pytest.raises(BadInput, match="reserved"):
        put(store, "ds", src)
    os.rmdir(os.path.join(src, ".artfs"))
    os.mkfifo(os.path.join(src, "fifo"))
    with pytest.raises(BadInput, match="unsupported file type"):
        put(store, "ds", src)
    assert store.meta.versions("ds") == []


def test_put_of_unreadable_file_fails_cleanly(store, mktree, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    src = mktree(tmp_path / "src", {"a": b"1", "secret": b"2"})
    os.chmod(os.path.join(src, "secret"), 0)
    with pytest.raises(BadInput, match="cannot read"):
        put(store, "ds", src)
    assert store.meta.versions("ds") == []


def test_put_type_mismatch(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "m", src, type_="model")
    assert repo.resolve(store, "m").type == "model"
    with pytest.raises(Exception, match="is a model, not a dataset"):
        put(store, "m", src, type_="dataset")


# -- resolving references ------------------------------------------------------------

def test_resolve_errors_name_what_exists(store, mktree, tmp_path):
    with pytest.raises(NotFound, match="no artifact 'ds'; the store has no artifacts yet"):
        repo.resolve(store, "ds")
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "ds", src)
    mktree(src, {"a": b"2"})
    put(store, "ds", src)
    with pytest.raises(NotFound, match="no artifact 'nope'; artifacts: ds"):
        repo.resolve(store, "nope:v0")
    with pytest.raises(NotFound, match="ds has no v7; newest: v1, v0"):
        repo.resolve(store, "ds:v7")
    with pytest.raises(NotFound, match="no alias 'prod'; aliases: latest"):
        repo.resolve(store, "ds:prod")
    with pytest.raises(BadInput, match="draft"):
        repo.resolve(store, "ds:draft")
    with pytest.raises(BadInput):
        repo.resolve(store, "ds:")


# -- aliases -----------------------------------------------------------------------------

def test_aliases(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1"})
    v0, _ = put(store, "ds", src)
    assert store.meta.aliases("ds") == {0: ["latest"]}
    repo.set_alias(store, "ds:v0", "production")
    assert repo.resolve(store, "ds:production").num == 0
    mktree(src, {"a": b"2"})
    v1, _ = put(store, "ds", src)
    # latest moves with every new version; a user alias stays until moved
    assert store.meta.aliases("ds") == {0: ["production"], 1: ["latest"]}
    repo.set_alias(store, "ds:latest", "production")  # move it
    repo.set_alias(store, "ds:v0", "best")
    assert store.meta.aliases("ds") == {0: ["best"], 1: ["latest", "production"]}
    repo.delete_alias(store, "ds:production")
    assert store.meta.aliases("ds") == {0: ["best"], 1: ["latest"]}
    with pytest.raises(NotFound):
        repo.delete_alias(store, "ds:production")
    with pytest.raises(NotFound):
        repo.resolve(store, "ds:production")
    for reserved in ("latest", "draft", "v0", "v3", "v01"):
        with pytest.raises(BadInput):
            repo.set_alias(store, "ds:v0", reserved)
        with pytest.raises(BadInput):
            repo.delete_alias(store, f"ds:{reserved}")
    for bad in ("a b", "", "x:y", ".x"):
        with pytest.raises(BadInput):
            repo.set_alias(store, "ds:v0", bad)
    with pytest.raises(BadInput):
        repo.delete_alias(store, "ds")
    with pytest.raises(NotFound):
        repo.set_alias(store, "ds:v9", "best")
    with pytest.raises(NotFound):
        repo.delete_alias(store, "nope:best")
    assert repo.resolve(store, "ds").num == 1  # latest untouched by all of that


# -- drafts (through repo.open_draft) -------------------------------------------------------

def _tree_reads(store, monkeypatch):
    reads = []
    real = ObjectStore.get_bytes
    monkeypatch.setattr(ObjectStore, "get_bytes", lambda self, h, verify=True: reads.append(h) or real(self, h, verify))
    return reads


def test_draft_cost_follows_the_change(store_path, store, mktree, tmp_path, monkeypatch):
    spec = {f"d{i}/sub/f{j}": f"{i}-{j}".encode() for i in range(10) for j in range(10)}
    v0, _ = put(store, "ds", mktree(tmp_path / "src", spec))
    s = Store.open(store_path)  # no tree cache
    reads = _tree_reads(s, monkeypatch)
    d = repo.open_draft(s, "ds")
    assert reads == []  # opening a draft reads nothing
    new = tmp_path / "new.txt"
    new.write_bytes(b"new")
    d.add_file((b"d3", b"sub", b"new.txt"), str(new))
    assert len(reads) <= 3  # root, d3, d3/sub: the path, not the artifact
    writes = []
    real_write = Store.write_tree
    monkeypatch.setattr(Store, "write_tree", lambda self, ents: writes.append(len(ents)) or real_write(self, ents))
    hashed = []
    import artfs.objects
    real_hash = artfs.objects.hash_file
    monkeypatch.setattr(artfs.objects, "hash_file", lambda p: hashed.append(p) or real_hash(p))
    num, unchanged = d.commit("one more")
    assert (num, unchanged) == (1, False)
    assert len(writes) == 3  # the three changed directories only
    assert hashed == []  # no file was re-hashed
    v1 = repo.resolve(s, "ds:v1")
    assert (v1.parent, v1.how, v1.file_count) == (0, "incremental", 101)
    # untouched subtrees are shared by digest
    for i in (0, 5, 9):
        assert repo.lookup(s, v0, f"d{i}").digest == repo.lookup(s, v1, f"d{i}").digest
    assert repo.lookup(s, v0, "d3").digest != repo.lookup(s, v1, "d3").digest
    reads.clear()
    assert repo.diff_versions(s, v0, v1) == [("A", "d3/sub/new.txt")]
    assert len(reads) <= 3  # at most the new trees of v1 (v0's path is cached); no equal subtree
    s2 = Store.open(store_path)
    reads = _tree_reads(s2, monkeypatch)
    assert repo.diff_versions(s2, v0, v1) == [("A", "d3/sub/new.txt")]
    assert len(reads) <= 6  # both roots, both d3, both d3/sub: no equal subtree is read


def test_draft_status_commit_and_unchanged(store, mktree, tmp_path):
    v0, _ = put(store, "ds", mktree(tmp_path / "src", {"a": b"1", "d/b": b"2", "d/c": b"3"}))
    d = repo.open_draft(store, "ds")
    assert d.status() == []
    f = tmp_path / "f"
    f.write_bytes(b"2")
    d.add_file((b"d", b"b"), str(f))  # same content written back: not M
    assert d.status() == []
    f.write_bytes(b"new")
    d.add_file((b"d", b"c"), str(f))
    d.add_file((b"n", b"x"), str(f))
    d.remove((b"a",))
    assert d.status() == [("D", "a"), ("M", "d/c"), ("A", "n"), ("A", "n/x")]
    num, unchanged = d.commit()
    assert (num, unchanged) == (1, False)
    assert d.status() == [] and d.parent == 1 and d.outcome == "ds:v1"
    v1 = repo.resolve(store, "ds:v1")
    assert repo.diff_versions(store, v0, v1) == [("D", "a"), ("M", "d/c"), ("A", "n"), ("A", "n/x")]
    # identical content: no new version, the outcome says so
    d.remove((b"n", b"x"))
    d.add_file((b"n", b"x"), str(f))
    assert d.commit() == (1, True)
    assert d.outcome == "ds:v1 (unchanged)"
    assert [r["num"] for r in store.meta.versions("ds")] == [1, 0]
    d.discard()


def test_draft_persists_across_store_objects_and_processes(store_path, store, mktree, tmp_path):
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"from the parent process")
    d.add_file((b"dir", b"f"), str(f))
    d.remove((b"a",))
    del d
    store.meta.close()
    again = repo.open_draft(Store.open(store_path), "ds")
    assert again.status() == [("D", "a"), ("A", "dir"), ("A", "dir/f")]
    code = textwrap.dedent(f"""
        import sys
        from artfs import repo
        from artfs.store import Store
        s = Store.open({store_path!r})
        d = repo.open_draft(s, "ds")
        assert d.status() == [("D", "a"), ("A", "dir"), ("A", "dir/f")], d.status()
        with open({str(tmp_path / "g")!r}, "wb") as f:
            f.write(b"from a child process")
        d.add_file((b"g",), {str(tmp_path / "g")!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    again.reload()
    assert again.status() == [("D", "a"), ("A", "dir"), ("A", "dir/f"), ("A", "g")]
    num, _ = again.commit()
    v = repo.resolve(store, f"ds:v{num}")
    assert read(store, v, "g") == b"from a child process"
    assert read(store, v, "dir/f") == b"from the parent process"
    again.discard()


def test_new_artifact_draft_starts_empty_and_commits_v0(store, tmp_path):
    d = repo.open_draft(store, "fresh")
    assert d.parent is None and d.status() == []
    f = tmp_path / "f"
    f.write_bytes(b"x")
    d.add_file((b"x",), str(f))
    assert d.commit() == (0, False)
    v = repo.resolve(store, "fresh")
    assert (v.num, v.parent, v.how, v.file_count, v.total_bytes) == (0, None, "single", 1, 1)
    d.discard()


# -- export ----------------------------------------------------------------------------

def test_export_round_trip(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {
        "plain": b"plain", "exec.sh": b"#!/bin/sh\n", "ro": b"read only", "d/deep/f": b"deep",
        "d/empty/": None, "big": os.urandom(2 << 20), "link": ("symlink", "d/deep/f"),
        "dangling": ("symlink", "/nowhere/at/all"), "d/private/": None, "zero": b"",
    })
    os.chmod(src + "/exec.sh", 0o755)
    os.chmod(src + "/ro", 0o444)
    os.chmod(src + "/d/private", 0o700)
    os.chmod(src + "/d/empty", 0o1777 if os.geteuid() == 0 else 0o775)
    t = T0
    for dirpath, dirnames, filenames in sorted(os.walk(src), reverse=True):  # deepest first
        for n in filenames + dirnames:
            t += 1_000_001
            os.utime(os.path.join(dirpath, n), ns=(t, t), follow_symlinks=False)
    v, _ = put(store, "ds", src)
    out = tmp_path / "out"
    assert repo.export(store, v, str(out)) == 6

    def listing(root):
        rows = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                rel = os.path.relpath(p, root)
                content = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                    open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
                rows[rel] = (st.st_mode, st.st_mtime_ns, content)
        return rows

    assert listing(out) == listing(src)
    with pytest.raises(BadInput, match="not an empty directory"):
        repo.export(store, v, str(out))


def test_export_of_corrupt_object_fails(store, mktree, tmp_path):
    v, _ = put(store, "ds", mktree(tmp_path / "src", {"a": b"good bytes"}))
    p = store.objects.local_path(b3(b"good bytes"))
    os.chmod(p, 0o600)
    with open(p, "r+b") as f:
        f.write(b"B")
    with pytest.raises(Corrupt):
        repo.export(store, v, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "a")  # no wrong bytes left behind
    with pytest.raises(Corrupt):
        read(store, v, "a")
    with open(p, "r+b") as f:
        f.write(b"g")  # repair, for the fixture's fsck


# -- diff --------------------------------------------------------------------------------

def test_diff_kinds(store, mktree, tmp_path):
    a = put(store, "ds", mktree(tmp_path / "a", {
        "same": b"s", "mod": b"1", "gone": b"g", "dir/x": b"x", "x2d": b"file", "d2x/y": b"y",
        "ln": ("symlink", "t1"), "exe": b"e", "olddir/a/b": b"b"}))[0]
    b = put(store, "ds", mktree(tmp_path / "b", {
        "same": b"s", "mod": b"2", "new": b"n", "dir/x": b"x", "dir/z": b"z", "x2d/in": b"i", "d2x": b"now a file",
        "ln": ("symlink", "t2"), "exe": b"e", "newdir/a/b": b"b"}))[0]
    os.chmod(tmp_path / "b" / "exe", 0o755)
    c = put(store, "ds", tmp_path / "b")[0]
    assert repo.diff_versions(store, a, b) == [
        ("A", "d2x"), ("D", "d2x"), ("D", "d2x/y"), ("A", "dir/z"), ("D", "gone"), ("M", "ln"), ("M", "mod"),
        ("A", "new"), ("A", "newdir"), ("A", "newdir/a"), ("A", "newdir/a/b"),
        ("D", "olddir"), ("D", "olddir/a"), ("D", "olddir/a/b"), ("A", "x2d"), ("D", "x2d"), ("A", "x2d/in"),
    ]
    assert repo.diff_versions(store, b, c) == [("M", "exe")]
    assert repo.diff_versions(store, c, c) == []
    assert [(k, p) for k, p in repo.diff_versions(store, b, a) if p == "same"] == []


# -- fsck and gc -------------------------------------------------------------------------

def test_fsck_finds_flipped_byte_and_missing_objects(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"content of a", "d/b": b"content of b"})
    v, _ = put(store, "ds", src)
    assert repo.fsck(store) == []
    blob = store.objects.local_path(b3(b"content of a"))
    data = open(blob, "rb").read()
    with open(blob, "r+b") as f:
        f.write(bytes([data[0] ^ 1]))
    problems = repo.fsck(Store.open(store.path))
    assert len(problems) == 1 and b3(b"content of a") in problems[0] and "corrupt" in problems[0]
    assert "ds:v0 a" in problems[0]  # says where it is used
    with open(blob, "wb") as f:
        f.write(data)
    # a missing blob
    blob_b = store.objects.local_path(b3(b"content of b"))
    os.rename(blob_b, tmp_path / "away")
    problems = repo.fsck(Store.open(store.path))
    assert problems == [f"missing object {b3(b'content of b')} (used by ds:v0 d/b)"]
    os.rename(tmp_path / "away", blob_b)
    # a missing tree (the subdirectory's): named, and the walk goes on without a traceback
    d_tree = repo.lookup(store, v, "d").digest.hex()
    p = store.objects.local_path(d_tree)
    os.rename(p, tmp_path / "away")
    problems = repo.fsck(Store.open(store.path))
    assert problems == [f"missing object {d_tree} (used by ds:v0 d)"]
    # a corrupt tree (bytes match no digest)
    os.rename(tmp_path / "away", p)
    tdata = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(tdata[:-1])
    problems = repo.fsck(Store.open(store.path))
    assert problems == [f"corrupt object {d_tree} (used by ds:v0 d)"]
    with open(p, "wb") as f:
        f.write(tdata)
    assert repo.fsck(Store.open(store.path)) == []


def test_fsck_finds_an_intact_but_undecodable_tree(store):
    junk = store.objects.put_bytes(b"\x01not a tree at all")
    store.meta.commit_version("bad", None, junk, "00" * 32, None, "latest", None, None, 0, 0, "single")
    problems = repo.fsck(Store.open(store.path))
    assert len(problems) == 1 and "malformed tree" in problems[0] and junk in problems[0] and "bad:v0" in problems[0]
    with pytest.raises(Corrupt):
        repo.export(Store.open(store.path), repo.resolve(store, "bad"), str(store.path) + "-out")
    store.meta.db.execute("DELETE FROM versions")  # leave a clean store for the fixture's fsck
    store.meta.db.execute("DELETE FROM aliases")


def test_fsck_finds_missing_scratch_file(store, tmp_path):
    d = repo.open_draft(store, "ds")
    name, path = d.new_scratch()
    with open(path, "wb") as f:
        f.write(b"scratch")
    from artfs.draft import DEntry
    d.put((b"s",), DEntry(FILE, 0o644, size=7, scratch=name))
    assert repo.fsck(store) == []
    os.unlink(path)
    problems = repo.fsck(store)
    assert len(problems) == 1 and name in problems[0]
    d.discard()


def test_gc_keeps_everything_reachable_and_only_that(store_path, store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"in v0 only", "keep/b": b"in every version"})
    v0, _ = put(store, "ds", src)
    os.unlink(src + "/a")
    v1, _ = put(store, "ds", src)
    # a draft with a stored file of its own and an unchanged-but-materialized dir
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"only in a draft")
    d.add_file((b"keep", b"drafted"), str(f))
    # garbage: an object nothing names, and a writer's leftover temporary
    junk = store.objects.put_bytes(b"nobody references me")
    with open(os.path.join(store.objects.tmp_dir, "leftover"), "wb") as fh:
        fh.write(b"tmp")
    os.makedirs(os.path.join(store.path, "drafts", "999"))
    before = objects(store)
    removed, freed = repo.gc(store)
    after = objects(store)
    assert before - after == {junk}
    assert (removed, freed) == (1, len(b"nobody references me"))
    assert os.listdir(store.objects.tmp_dir) == []
    assert not os.path.exists(os.path.join(store.path, "drafts", "999"))
    assert os.path.isdir(store.draft_dir(d.id))
    s = Store.open(store_path)
    assert read(s, repo.resolve(s, "ds:v0"), "a") == b"in v0 only"
    assert d.status() == [("A", "keep/drafted")]
    assert d.commit()[0] == 2
    assert read(s, repo.resolve(s, "ds:v2"), "keep/drafted") == b"only in a draft"
    assert repo.gc(store) == (0, 0)
    d.discard()


def test_gc_collects_what_only_a_discarded_draft_used(store, mktree, tmp_path):
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"draft only, then discarded")
    d.add_file((b"x",), str(f))
    repo.gc(store)
    assert b3(b"draft only, then discarded") in objects(store)
    d.discard()
    repo.gc(store)
    assert b3(b"draft only, then discarded") not in objects(store)


def test_store_init_is_idempotent_and_open_requires_a_store(store_path, store, tmp_path):
    from artfs.errors import StoreMissing
    Store.init(store_path)
    Store.init(store_path)
    with pytest.raises(StoreMissing, match="artfs --store"):
        Store.open(str(tmp_path / "nothing-here"))


def test_gc_spares_a_draft_created_while_it_runs(store, tmp_path, monkeypatch):
    # drafts are created without the gc lock: one that appears while gc looks for
    # orphaned scratch directories must keep its directory (and its files)
    created = []
    real = type(store.meta).drafts

    def drafts_racing(meta):
        rows = real(meta)
        if not created:
            d = repo.open_draft(store, "racer")
            name, path = d.new_scratch()
            with open(path, "wb") as f:
                f.write(b"scratch bytes")
            from artfs.draft import DEntry
            d.put((b"s",), DEntry(FILE, 0o644, size=13, scratch=name))
            created.append(d)
        return rows

    monkeypatch.setattr(type(store.meta), "drafts", drafts_racing)
    repo.gc(store)
    monkeypatch.undo()
    d = created[0]
    assert os.path.isdir(d.scratch_dir)
    assert d.commit() == (0, False)
    v = repo.resolve(store, "racer")
    assert read(store, v, "s") == b"scratch bytes"
    d.discard()


def test_big_file_copy_falls_back_midway_without_corruption(store, tmp_path, monkeypatch):
    # copy_file_range may copy a part and then refuse (EXDEV, EINVAL...): the rest must
    # land at the right offset, or the object silently holds other bytes than the source
    import errno

    real = os.copy_file_range
    calls = []

    def flaky(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) == 1:
            return real(src, dst, min(count, 1 << 20), offset_src, offset_dst)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", flaky)
    data = os.urandom(3 << 20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(data)
    v, _ = put(store, "ds", src)
    assert len(calls) >= 2
    assert repo.lookup(store, v, "big").digest.hex() == b3(data)
    assert read(store, v, "big") == data


def test_damaged_draft_record_is_named_not_a_crash(store, tmp_path):
    """A damaged draft row: fsck names it, gc refuses to sweep (it might name live objects)."""
    import artfs
    from artfs.errors import Corrupt

    f = tmp_path / "f"
    f.write_bytes(b"x")
    a = artfs.Artifact("dmg", store=store)
    a.add_file(str(f))
    good = store.meta.db.execute("SELECT rec FROM draft_entries").fetchone()[0]
    store.meta.db.execute("UPDATE draft_entries SET rec=x'c1ff'")
    problems = repo.fsck(store)
    assert len(problems) == 1 and "damaged draft record" in problems[0]
    with pytest.raises(Corrupt):
        repo.gc(store)
    store.meta.db.execute("UPDATE draft_entries SET rec=?", (good,))  # the fixture's fsck must pass
    assert repo.fsck(store) == []


def test_drafts_are_listed_and_discarded_by_key(store, tmp_path):
    """Drafts a crashed program left behind can be found and dropped (and their objects then collected)."""
    import artfs

    f = tmp_path / "f"
    f.write_bytes(b"left behind")
    a = artfs.Artifact("lost", store=store)
    a.add_file(str(f))
    key = a.draft.key
    rows = {r["key"]: r for r in repo.drafts(store)}
    assert rows[key]["changes"] == 1 and rows[key]["parent"] is None and not rows[key]["mounted"]
    assert repo.discard_draft(store, key) == f"discarded {key} (1 change)"
    assert repo.drafts(store) == []
    assert repo.discard_draft(store, key) == f"no draft {key}"
    removed, _ = repo.gc(store)
    assert removed >= 1  # the file's object was only the draft's
