"""Repository semantics on a real store: put, identity, dedup, drafts, aliases,
export, diff, fsck and gc (DESIGN.md §1, §5, §8).  No FUSE, no CLI.

Drafts are driven the way the API and the FUSE layer drive them: stored
entries with ``Draft.put``, changed files as scratch files recorded with
``plan_*`` + ``commit`` (persist, then apply), versions with
``repo.commit_draft`` + ``repo.finish_commit``.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import textwrap

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import artfs
from artfs import repo
from artfs.errors import BadInput, Conflict, Corrupt, NoSpace, NotFound, StoreMissing
from artfs.repo import put as put_mod
from artfs.repo.drafts import PinMap
from artfs.repo.integrity import GcRefused
from artfs.storage import format as fmt
from artfs.storage import hashing
from artfs.storage.format import CHR, DIR, FIFO, FILE, SOCK, SYMLINK, Entry
from artfs.storage.local_objects import LocalBatch, LocalObjectStore
from artfs.storage.store import Store

T0 = 1_600_000_000_123_456_789  # an mtime with nanoseconds


# -- helpers --------------------------------------------------------------------------

def put(store, name, src, **kw):
    return repo.put_dir(store, name, str(src), **kw)


def objects(store) -> set[bytes]:
    return set(store.objects.list())


def tree_objects(store) -> set[bytes]:
    out = set()
    for h in objects(store):
        try:
            fmt.decode_tree(store.objects.get(h))
        except Corrupt:
            continue
        out.add(h)
    return out


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def chunk_list(data: bytes) -> bytes:
    return b"".join(b3(data[i:i + fmt.CHUNK]) for i in range(0, len(data), fmt.CHUNK))


def read(store, v, path) -> bytes:
    return repo.read_all(store, repo.lookup(store, v, path))


def paths(items) -> list:
    """[(code, path tuple)] -> [(code, "a/b")]."""
    return [(code, fmt.join_path(p)) for code, p in items]


def status(d) -> list:
    return paths(d.status())


def diff(store, a, b) -> list:
    return paths(repo.diff_versions(store, a, b))


def P(path: str) -> tuple:
    return fmt.split_path(path)


def add_file(store, d, path: str, src) -> Entry:
    """What the API's add_file does: copy the file into the store, then put the stored entry."""
    src = str(src)
    st = os.stat(src)
    fd = os.open(src, os.O_RDONLY)
    try:
        with store.writing():
            with store.objects.batch() as b:
                digest, n, chunks = b.put_fd(fd)
            e = Entry(P(path)[-1], FILE, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, n, st.st_mtime_ns,
                      st.st_atime_ns, digest=digest, chunks=chunks)
            return d.put(P(path), e)
    finally:
        os.close(fd)


def write_scratch(d, path: str, data: bytes, mode: int = 0o644):
    """What a mount does for a new file: a scratch file, recorded by a planned change.
    Returns the open ScratchFile (the caller closes it)."""
    name, sf = d.new_scratch()
    sf.pwrite(data, 0)
    d.commit(d.plan_create(P(path), FILE, mode, os.getuid(), os.getgid(), scratch=name, size=len(data)))
    return sf


def remove(d, path: str) -> Entry:
    return d.commit(d.plan_remove(P(path), "any"))


def commit(store, d, message=None, **kw) -> repo.CommitResult:
    r = repo.commit_draft(store, d, message, **kw)
    repo.finish_commit(d, r)
    return r


def spy_hashing(monkeypatch) -> list:
    """Record every whole-file hash (hashing.hash_fd / hash_own), wherever the name was imported."""
    calls: list = []
    for fn_name in ("hash_fd", "hash_own"):
        real = getattr(hashing, fn_name)

        def spy(*a, _real=real, _n=fn_name, **k):
            calls.append(_n)
            return _real(*a, **k)

        for mod in [m for n, m in sys.modules.items() if n == "artfs" or n.startswith("artfs.")]:
            if getattr(mod, fn_name, None) is real:
                monkeypatch.setattr(mod, fn_name, spy)
    return calls


def spy_put_fd(monkeypatch) -> list:
    """Paths of the files LocalBatch.put_fd copies (what put used to call put_file with)."""
    calls: list = []
    real = LocalBatch.put_fd

    def spy(self, fd, *a, **k):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(self, fd, *a, **k)

    monkeypatch.setattr(LocalBatch, "put_fd", spy)
    return calls


def spy_reads(monkeypatch) -> list:
    """Digests of the objects read whole (trees, link tables, chunk lists: ObjectStore.get)."""
    reads: list = []
    real = LocalObjectStore.read
    monkeypatch.setattr(LocalObjectStore, "read", lambda self, d, *a: reads.append(d) or real(self, d, *a))
    return reads


# -- put and identity ---------------------------------------------------------------

def test_put_records_content_and_metadata(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a.txt": b"alpha", "d/b.bin": b"\0" * 10, "d/e/": None,
                                    "l": ("symlink", "a.txt")})
    os.chmod(src + "/d/b.bin", 0o750)
    os.utime(src + "/a.txt", ns=(T0 + 7, T0))
    os.chmod(src, 0o751)
    os.utime(src, ns=(T0 + 1, T0 + 2))
    v, unchanged = put(store, "ds", src, message="first", metadata={"k": [1, 2]})
    assert not unchanged
    assert (v.ref, v.num, v.parent, v.how, v.message, v.metadata) == ("ds:v0", 0, None, "single", "first", {"k": [1, 2]})
    assert v.file_count == 2 and v.total_bytes == 15
    a = repo.lookup(store, v, "a.txt")
    assert (a.kind, a.size, a.mtime_ns, a.atime_ns, a.digest) == (FILE, 5, T0, T0 + 7, b3(b"alpha"))
    assert a.chunks is None and a.hlid is None  # one piece; no hard link
    assert repo.lookup(store, v, "d/b.bin").mode == 0o750
    assert repo.lookup(store, v, "d/e").kind == DIR
    link = repo.lookup(store, v, "l")
    assert (link.kind, link.target) == (SYMLINK, b"a.txt")
    assert read(store, v, "d/b.bin") == b"\0" * 10
    assert [fmt.join_path(p) for p, _ in repo.walk(store, v.root)] == ["a.txt", "d", "d/b.bin", "d/e", "l"]
    # the root directory's own metadata is recorded beside the version
    root = v.root_entry()
    assert (root.kind, root.mode, root.mtime_ns) == (DIR, 0o751, T0 + 2)
    assert (root.digest, root.nfiles, root.size) == (v.root, 2, 15)
    assert repo.lookup(store, v, "") == root == repo.lookup(store, v, "/")
    assert repo.resolve(store, "ds") == v == repo.resolve(store, "ds:v0") == repo.resolve(store, "ds:latest")
    with pytest.raises(NotFound, match="no d/nope in ds:v0"):
        repo.lookup(store, v, "d/nope")
    with pytest.raises(NotFound, match="not a directory"):
        repo.lookup(store, v, "a.txt/x")
    with pytest.raises(BadInput):  # a trailing slash names a directory
        repo.lookup(store, v, "a.txt/")
    assert repo.lookup(store, v, "d/").kind == DIR


def test_put_twice_is_unchanged(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"})
    v0, u0 = put(store, "ds", src)
    v1, u1 = put(store, "ds", src)
    assert (u0, u1) == (False, True)
    assert v1.ref == v0.ref == "ds:v0"
    assert len(store.meta.versions("ds")) == 1


def test_metadata_only_changes_are_unchanged(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"}, mtime_ns=T0)
    v0, _ = put(store, "ds", src)
    for p in ("a", "d/b", "d", "."):
        os.utime(os.path.join(src, p), ns=(T0 + 10**9, T0 + 10**9))
    os.chown(os.path.join(src, "a"), os.getuid(), os.getgid())  # ctime moves too
    os.chmod(os.path.join(src, "a"), 0o600)  # a non-exec mode bit is not content either
    os.setxattr(os.path.join(src, "d/b"), "user.note", b"xattrs are metadata")
    os.setxattr(os.path.join(src, "d"), "user.note", b"on a directory too")
    os.link(os.path.join(src, "a"), os.path.join(tmp_path, "outside"))  # nlink 2, but no group inside
    v1, unchanged = put(store, "ds", src)
    assert unchanged and v1.num == 0
    # identity is content: the version keeps what was recorded when it was made
    assert repo.lookup(store, v1, "a").mtime_ns == T0
    assert repo.lookup(store, v1, "d/b").xattrs == ()
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
    os.mkfifo(os.path.join(src, "pipe"))
    v5, u = put(store, "ds", src)
    assert not u and v5.num == 5  # so is a special file
    assert repo.resolve(store, "ds").num == 5
    assert store.meta.alias("ds", "latest") == 5
    assert diff(store, v0, v1) == [("M", "a")]
    assert diff(store, v2, v3) == [("D", "d/b"), ("A", "d/c")]
    assert diff(store, v3, v4) == [("A", "empty")]
    assert diff(store, v4, v5) == [("A", "pipe")]


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
    big = os.urandom(3 << 20)  # more than one piece: a chunk list, the copy_file_range path
    small = b"small file"
    src = mktree(tmp_path / "src", {"x/big": big, "y/big-copy": big, "s1": small, "z/s2": small})
    before = objects(store)
    v0, _ = put(store, "ds", src)
    new = objects(store) - before
    blobs = new - tree_objects(store)
    assert blobs == {b3(big), b3(small), b3(chunk_list(big))}
    e = repo.lookup(store, v0, "x/big")
    assert (e.digest, e.chunks, e.size) == (b3(big), b3(chunk_list(big)), len(big))
    assert os.stat(store.objects.path(b3(big))).st_size == len(big)
    assert store.objects.get(e.chunks) == chunk_list(big)
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
        p = store.objects.path(h)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode) == 0o700
        assert os.stat(p).st_nlink == 1  # nothing else names an object's inode
    assert os.listdir(store.objects.tmp_dir) == []
    state = getattr(store, "state_dir", store.path)
    for d in (store.path, os.path.join(store.path, "objects"), os.path.join(store.path, "tmp"),
              os.path.join(state, "drafts"), os.path.join(state, "locks"), os.path.join(state, "logs")):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_put_cache_skips_unchanged_files(store, mktree, tmp_path, monkeypatch):
    src = mktree(tmp_path / "src", {f"f{i}": f"content {i}".encode() for i in range(20)})
    # pretend the files are old enough to be trusted by the (dev, ino, size, mtime, ctime) cache
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    put(store, "ds", src)
    calls = spy_put_fd(monkeypatch)
    v, u = put(store, "ds", src)
    assert u and calls == []
    with open(os.path.join(src, "f3"), "wb") as f:
        f.write(b"changed")
    v, u = put(store, "ds", src)
    assert not u and calls == [os.path.join(os.path.realpath(src), "f3")]
    assert read(store, v, "f3") == b"changed"


def test_put_cache_read_as_a_range_knows_exactly_the_same(store, mktree, tmp_path, monkeypatch):
    """Many paths: the local store reads the stat cache's rows under the source as one range;
    the answer is the same as path by path -- nothing of a sibling whose name merely starts the
    same (src-other), nothing the caller did not ask for."""
    if not hasattr(store.meta, "nowait"):
        pytest.skip("the local store's range read")
    from artfs.storage import sqlite_meta

    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2", "d/e/c": b"3"})
    other = mktree(tmp_path / "src-other", {"a": b"other"})
    put(store, "ds", src)
    put(store, "other", other)
    root = os.fsencode(os.path.realpath(src))
    asked = [os.path.join(root, b"a"), os.path.join(root, b"d", b"b"), os.path.join(root, b"nope"),
             root + b"\0dir", os.path.join(root, b"d") + b"\0dir"]
    one_by_one = store.meta.filecache_get(asked)
    monkeypatch.setattr(sqlite_meta, "FILECACHE_RANGE_MIN", 0)
    as_range = store.meta.filecache_get(asked, under=root)
    assert as_range == one_by_one and len(as_range) == 4
    calls = spy_put_fd(monkeypatch)
    v, unchanged = put(store, "ds", src)
    assert unchanged and calls == []


def test_put_cache_is_not_trusted_for_fresh_files(store, mktree, tmp_path, monkeypatch):
    # a file modified within the clock's granularity of the put may change again unseen: re-read it
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "ds", src)
    calls = spy_put_fd(monkeypatch)
    put(store, "ds", src)
    assert calls == [os.path.join(os.path.realpath(src), "a")]


def test_put_cache_survives_gc_of_its_object(store, mktree, tmp_path, monkeypatch):
    src = mktree(tmp_path / "src", {"a": b"will be collected"})
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    put(store, "tmp", src)
    # the only version goes away (no API for that: forget it the hard way), gc removes the blob
    store.meta.db.execute("DELETE FROM versions")
    store.meta.db.execute("DELETE FROM aliases")
    repo.gc(store)
    assert b3(b"will be collected") not in objects(store)
    calls = spy_put_fd(monkeypatch)
    v, _ = put(store, "ds", src)  # the cache says "known" but the object is gone: must re-store it
    assert len(calls) == 1
    assert read(store, v, "a") == b"will be collected"


def spy_write_tree(monkeypatch) -> list:
    """The trees put encodes, each as the sorted names in it."""
    calls: list = []
    real = Store.write_tree

    def spy(batch, entries):
        ents = list(entries)
        calls.append(sorted(e.name for e in ents))
        return real(batch, ents)

    monkeypatch.setattr(Store, "write_tree", staticmethod(spy))
    return calls


@pytest.mark.local_only
def test_put_trusts_stat_only_on_file_systems_whose_ctime_the_kernel_keeps(store, mktree, tmp_path, monkeypatch):
    """On a source whose file system may show an unchanged stat for other bytes or xattrs (FUSE:
    artfs's own read-only mounts give a name the same inode and times in every version) put
    reads every file and encodes every tree each time, and remembers nothing."""
    src = mktree(tmp_path / "src", REUSE_TREE)
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    monkeypatch.setattr(put_mod, "CTIME_TRUSTED", frozenset({0x65735546}))  # FUSE's f_type only
    _walk_all(src)
    put(store, "ds", src)
    root = os.fsencode(os.path.realpath(src))
    assert store.meta.filecache_get([os.path.join(root, b"a"), root + b"\0dir"]) == {}
    calls, trees = spy_put_fd(monkeypatch), spy_write_tree(monkeypatch)
    v, unchanged = put(store, "ds", src)
    assert unchanged and len(calls) == 4 and len(trees) == 4  # every file and every directory


def _walk_all(root: str) -> None:
    """List every directory and read every symlink, so that relatime has moved the atimes put's
    listing and readlink move before two puts compare what they saw."""
    for d, dirs, names in os.walk(root):
        for n in dirs + names:  # a symlink to a directory is among dirs
            if os.path.islink(os.path.join(d, n)):
                os.readlink(os.path.join(d, n))


REUSE_TREE = {"a": b"top", "d/b": b"in d", "d/e/c": b"in d/e", "f/g": b"in f", "l": ("symlink", "a")}


def test_put_reuses_the_trees_of_unchanged_directories(store, mktree, tmp_path, monkeypatch):
    """A second put encodes only the trees on the path to what changed (the rest is named by
    its directory's record in the stat cache)."""
    src = mktree(tmp_path / "src", REUSE_TREE)
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)  # old enough to be trusted
    _walk_all(src)  # else the first put's listing moves the atimes of d/e and f: d's tree changes
    v0, _ = put(store, "ds", src)
    trees = spy_write_tree(monkeypatch)
    v, unchanged = put(store, "ds", src)
    assert unchanged and trees == []
    with open(os.path.join(src, "d", "e", "c"), "wb") as f:
        f.write(b"changed")
    v, unchanged = put(store, "ds", src)
    assert not unchanged
    assert trees == [[b"c"], [b"b", b"e"], [b"a", b"d", b"f", b"l"]]  # d/e, d and the root; not f
    assert read(store, v, "d/e/c") == b"changed" and read(store, v, "f/g") == b"in f"


def tree_of(store, src) -> tuple:
    """(root entry, hard-link table) put would make of ``src`` now (its objects stored)."""
    with store.writing(), store.objects.batch() as b:
        return put_mod.build_tree_from_dir(store, b, str(src))


@pytest.mark.parametrize("change", [
    "chmod a file", "chown a file", "xattr on a file", "xattr on a directory", "chmod a directory",
    "read a file (atime)", "utime back", "same size, same mtime", "retarget a symlink", "rename",
    "hard link", "empty directory", "fifo",
])
def test_a_reused_tree_is_the_tree_a_fresh_put_makes(store, mktree, tmp_path, monkeypatch, change):
    """After any change that stat can see, the tree the next put makes is exactly the tree a put
    into an empty store makes of the same directory: no reused tree hides a change."""
    src = mktree(tmp_path / "src", REUSE_TREE)
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    b, e, g = (os.path.join(src, *p.split("/")) for p in ("d/b", "d/e", "f/g"))
    st = os.stat(b)
    os.utime(b, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))  # relatime moves an atime before mtime on a read
    put(store, "ds", src)
    put(store, "ds", src)  # the directories' records now exist
    _walk_all(src)
    before = tree_of(store, src)
    if change == "chmod a file":
        os.chmod(b, 0o600)
    elif change == "chown a file":
        os.chown(b, 4321, 4321)
    elif change == "xattr on a file":
        os.setxattr(b, "user.k", b"v")
    elif change == "xattr on a directory":
        os.setxattr(e, "user.k", b"v")
    elif change == "chmod a directory":
        os.chmod(e, 0o711)
    elif change == "read a file (atime)":  # moves the atime alone, not the ctime
        with open(b, "rb") as f:
            f.read()
    elif change == "utime back":
        st = os.stat(b)
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    elif change == "same size, same mtime":
        st = os.stat(b)
        with open(b, "r+b") as f:
            f.write(b"IN D")
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "retarget a symlink":
        os.unlink(os.path.join(src, "l"))
        os.symlink("d", os.path.join(src, "l"))
    elif change == "rename":
        os.rename(b, b + "2")
    elif change == "hard link":
        os.link(b, os.path.join(src, "f", "h"))
    elif change == "empty directory":
        os.mkdir(os.path.join(e, "new"))
    elif change == "fifo":
        os.mkfifo(os.path.join(e, "p"))
    _walk_all(src)
    after, fresh = tree_of(store, src), tree_of(Store.init(str(tmp_path / "fresh")), src)
    assert after == fresh
    if change == "read a file (atime)" and os.stat(b).st_atime_ns == os.stat(b).st_mtime_ns - 10**9:
        return  # a noatime mount: the read moved nothing
    assert after != before


def damage_in_place(store, d: bytes) -> None:
    """Flip the first byte of object ``d`` where it lies (a file of the local store, the S3 object
    of the scale-out one): same size, other bytes."""
    if hasattr(store.objects, "s3"):
        import obstore

        key = store.objects.key(d)
        data = bytearray(bytes(obstore.get(store.objects.s3, key).bytes()))
        data[0] ^= 1
        obstore.put(store.objects.s3, key, bytes(data))
        return
    with open(store.objects.path(d), "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))


def test_a_damaged_tree_of_an_unchanged_directory_is_written_again(store, mktree, tmp_path, monkeypatch):
    """Invariant 2 for trees: a directory's record names its tree only while the tree object is
    the very file put wrote; one damaged in place is encoded and written again (healed)."""
    src = mktree(tmp_path / "src", REUSE_TREE)
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)
    _walk_all(src)
    v, _ = put(store, "ds", src)
    tree_f = repo.lookup(store, v, "f").digest
    damage_in_place(store, tree_f)
    assert not store.objects.verify(tree_f)
    trees = spy_write_tree(monkeypatch)
    put(store, "ds", src)
    assert trees == [[b"g"]]  # f alone: its record's stamp no longer matches the object
    assert store.objects.verify(tree_f)


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
    os.mkdir(os.path.join(src, "d"))
    os.mkdir(os.path.join(src, "d", ".artfs"))  # reserved at the root only
    assert store.meta.versions("ds") == []
    v, _ = put(store, "ds", src)
    assert repo.lookup(store, v, "d/.artfs").kind == DIR


def test_put_of_unreadable_file_fails_cleanly(mktree, unprivileged):
    """As a user who cannot read one file (root runs this as the unprivileged test user): one
    line naming the file, exit 2, no version, nothing half-made."""
    import subprocess
    import sys

    home = unprivileged.home
    src = mktree(os.path.join(home, "src"), {"a": b"1", "secret": b"2"})
    for dirpath, dirs, files in os.walk(home):
        for n in dirs + files:
            os.lchown(os.path.join(dirpath, n), unprivileged.uid, unprivileged.gid)
    os.chmod(os.path.join(src, "secret"), 0)
    s = os.path.join(home, "S")
    code = ("import sys; from artfs.storage.store import Store; from artfs import repo\n"
            "s = Store.init(sys.argv[1])\n"
            "try:\n    repo.put_dir(s, 'ds', sys.argv[2])\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc); sys.exit(2)\n")
    p = unprivileged.run([sys.executable, "-c", code, s, src], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(repo.__file__)))))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout.startswith("BadInput cannot read") and "secret" in p.stdout and "Permission denied" in p.stdout
    assert Store.open(s).meta.versions("ds") == []


def test_put_type_mismatch(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1"})
    put(store, "m", src, type_="model")
    assert repo.resolve(store, "m").type == "model"
    with pytest.raises(Conflict, match="is a model, not a dataset"):
        put(store, "m", src, type_="dataset")
    assert [r["num"] for r in store.meta.versions("m")] == [0]


# -- special files, hard links, xattrs (0.1 refused them; now they are recorded) ------------

def _special_tree(mktree, root):
    src = mktree(root, {"a": b"linked twice", "sub/other": b"plain", "solo": b"solo"})
    os.link(os.path.join(src, "a"), os.path.join(src, "sub", "b"))
    os.mkfifo(os.path.join(src, "fifo"), 0o640)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(src, "sock"))
    s.close()
    if os.geteuid() == 0:
        os.mknod(os.path.join(src, "null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(os.path.join(src, "solo"), "user.k", b"v\0binary")
    os.setxattr(os.path.join(src, "sub"), "user.dir", b"d")
    os.setxattr(src, "user.root", b"r")
    return src


def test_put_records_special_files_hard_links_and_xattrs(store, mktree, tmp_path):
    src = _special_tree(mktree, tmp_path / "src")
    v, _ = put(store, "ds", src)
    assert repo.lookup(store, v, "fifo").kind == FIFO
    assert repo.lookup(store, v, "fifo").mode == 0o640
    assert repo.lookup(store, v, "sock").kind == SOCK
    if os.geteuid() == 0:
        null = repo.lookup(store, v, "null")
        assert (null.kind, null.rdev) == (CHR, os.makedev(1, 3))
    assert repo.lookup(store, v, "solo").xattrs == ((b"user.k", b"v\0binary"),)
    assert repo.lookup(store, v, "sub").xattrs == ((b"user.dir", b"d"),)
    assert v.root_entry().xattrs == ((b"user.root", b"r"),)
    a, b = repo.lookup(store, v, "a"), repo.lookup(store, v, "sub/b")
    assert a.hlid is not None and a.hlid == b.hlid and a.digest == b.digest
    assert repo.lookup(store, v, "solo").hlid is None
    assert v.links is not None
    assert repo.link_table(store, v.links) == {a.hlid: [(b"a",), (b"sub", b"b")]}
    assert v.file_count == 4  # a, solo, sub/b, sub/other: each name of a linked file counts
    # the same tree put again is unchanged; dropping the link is not content either
    assert put(store, "ds", src)[1]
    os.unlink(os.path.join(src, "sub", "b"))
    with open(os.path.join(src, "sub", "b"), "wb") as f:
        f.write(b"linked twice")
    v2, unchanged = put(store, "ds", src)
    assert unchanged and v2.num == 0


def test_put_records_the_roots_atime_from_before_it_read_it(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"})
    os.utime(os.path.join(src, "d"), ns=(T0, T0))
    os.utime(src, ns=(T0, T0))  # an old atime: relatime moves it on the next read
    v, _ = put(store, "ds", src)
    if os.stat(src).st_atime_ns == T0:
        pytest.skip("reading a directory does not move its atime here (noatime)")
    assert repo.lookup(store, v, "d").atime_ns == T0  # a subdirectory: stat before it is read
    assert v.root_entry().atime_ns == T0  # the root: stat after it was read


def test_export_round_trip(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {
        "plain": b"plain", "exec.sh": b"#!/bin/sh\n", "ro": b"read only", "d/deep/f": b"deep",
        "d/empty/": None, "big": os.urandom(2 << 20), "link": ("symlink", "d/deep/f"),
        "dangling": ("symlink", "/nowhere/at/all"), "d/private/": None, "zero": b"",
    })
    _special_tree(mktree, src)
    os.chmod(src + "/exec.sh", 0o755)
    os.chmod(src + "/ro", 0o444)
    os.chmod(src + "/d/private", 0o700)
    os.chmod(src + "/d/empty", 0o1777 if os.geteuid() == 0 else 0o775)
    os.chmod(src, 0o750)
    t = T0
    for dirpath, dirnames, filenames in sorted(os.walk(src), reverse=True):  # deepest first
        for n in filenames + dirnames:
            t += 1_000_001
            os.utime(os.path.join(dirpath, n), ns=(t + 5, t), follow_symlinks=False)
    os.utime(src, ns=(T0 - 3, T0 - 4))
    v, _ = put(store, "ds", src)
    out = tmp_path / "out"
    assert repo.export(store, v, str(out)) == 9  # regular files written, hard links not counted

    def names(root):
        """Every path below root, without following symlinks (os.walk's is_dir() does, and
        resolving a symlink moves its atime)."""
        stack, out = [root], []
        while stack:
            with os.scandir(stack.pop()) as it:
                for ent in it:
                    out.append(ent.path)
                    if ent.is_dir(follow_symlinks=False):
                        stack.append(ent.path)
        return out

    def listing(root):
        rows = {}
        for p in names(str(root)):
            st = os.lstat(p)
            # a directory's or symlink's atime in the source moved when put read it (the
            # version has the time from before): compared for everything else
            atime = None if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) else st.st_atime_ns
            rows[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, atime, st.st_nlink,
                                              st.st_rdev, tuple(sorted(
                                                  (x, os.getxattr(p, x, follow_symlinks=False))
                                                  for x in os.listxattr(p, follow_symlinks=False))))
        for rel, row in list(rows.items()):  # content last: reading moves atimes
            p = os.path.join(root, rel)
            st = os.lstat(p)
            content = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
            rows[rel] = row + (content,)
        st = os.stat(root)
        rows["."] = (st.st_mode, st.st_mtime_ns, os.getxattr(root, "user.root"))
        return rows

    for rel in ("d/empty", "link", "dangling"):  # before anything reads them
        assert os.lstat(out / rel).st_atime_ns == repo.lookup(store, v, rel).atime_ns
    assert listing(out) == listing(src)
    assert os.stat(out / "a").st_ino == os.stat(out / "sub" / "b").st_ino  # one inode again
    with pytest.raises(BadInput, match="not an empty directory"):
        repo.export(store, v, str(out))


def test_export_of_corrupt_object_fails(store, mktree, tmp_path):
    v, _ = put(store, "ds", mktree(tmp_path / "src", {"a": b"good bytes"}))
    p = store.objects.path(b3(b"good bytes"))
    with open(p, "r+b") as f:
        f.write(b"B")
    with pytest.raises(Corrupt):
        repo.export(store, v, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "a")  # no wrong bytes left behind
    with pytest.raises(Corrupt):
        read(store, v, "a")
    with open(p, "r+b") as f:
        f.write(b"g")  # repair, for the fixture's fsck


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


# -- drafts --------------------------------------------------------------------------------

def test_draft_cost_follows_the_change(store_path, store, mktree, tmp_path, monkeypatch):
    spec = {f"d{i}/sub/f{j}": f"{i}-{j}".encode() for i in range(10) for j in range(10)}
    v0, _ = put(store, "ds", mktree(tmp_path / "src", spec))
    s = Store.open(store_path)  # no tree cache
    reads = spy_reads(monkeypatch)
    d = repo.open_draft(s, "ds")
    assert reads == []  # opening a draft reads nothing
    new = tmp_path / "new.txt"
    new.write_bytes(b"new")
    add_file(s, d, "d3/sub/new.txt", new)
    assert len(reads) <= 3  # root, d3, d3/sub: the path, not the artifact
    writes = []
    real_write = Store.write_dir
    monkeypatch.setattr(Store, "write_dir", staticmethod(
        lambda batch, meta, ents: writes.append(meta.name) or real_write(batch, meta, ents)))
    hashed = spy_hashing(monkeypatch)
    put_fds = spy_put_fd(monkeypatch)
    r = commit(s, d, "one more")
    assert (r.num, r.unchanged, r.rebased_from) == (1, False, None)
    assert sorted(writes) == [b"", b"d3", b"sub"]  # the three changed directories only
    assert hashed == [] and put_fds == []  # no file was read, copied or re-hashed
    v1 = repo.resolve(s, "ds:v1")
    assert (v1.parent, v1.how, v1.file_count, v1.message) == (0, "incremental", 101, "one more")
    # untouched subtrees are shared by digest
    for i in (0, 5, 9):
        assert repo.lookup(s, v0, f"d{i}").digest == repo.lookup(s, v1, f"d{i}").digest
    assert repo.lookup(s, v0, "d3").digest != repo.lookup(s, v1, "d3").digest
    reads.clear()
    assert diff(s, v0, v1) == [("A", "d3/sub/new.txt")]
    assert len(reads) <= 3  # at most the new trees of v1 (v0's path is cached); no equal subtree
    s2 = Store.open(store_path)
    reads.clear()
    assert diff(s2, v0, v1) == [("A", "d3/sub/new.txt")]
    assert len(reads) <= 6  # both roots, both d3, both d3/sub: no equal subtree is read


def test_draft_status_commit_and_unchanged(store, mktree, tmp_path):
    v0, _ = put(store, "ds", mktree(tmp_path / "src", {"a": b"1", "d/b": b"2", "d/c": b"3"}))
    d = repo.open_draft(store, "ds")
    assert d.status() == [] and d.parent == 0 and d.base_root == v0.root
    f = tmp_path / "f"
    f.write_bytes(b"2")
    add_file(store, d, "d/b", f)  # same content written back: not M
    assert d.status() == []
    f.write_bytes(b"new")
    add_file(store, d, "d/c", f)
    add_file(store, d, "n/x", f)  # parents are made
    remove(d, "a")
    sf = write_scratch(d, "d/s", b"scratch")
    assert status(d) == [("D", "a"), ("M", "d/c"), ("A", "d/s"), ("A", "n"), ("A", "n/x")]
    r = commit(store, d)
    assert (r.num, r.unchanged) == (1, False)
    assert d.status() == [] and d.parent == 1 and d.outcome == "ds:v1"
    v1 = repo.resolve(store, "ds:v1")
    assert diff(store, v0, v1) == [("D", "a"), ("M", "d/c"), ("A", "d/s"), ("A", "n"), ("A", "n/x")]
    assert read(store, v1, "d/s") == b"scratch"
    assert os.listdir(d.scratch_dir) == []  # committed scratch files are gone (their copies live on)
    sf.close()
    # identical content: no new version, the outcome says so
    remove(d, "n/x")
    add_file(store, d, "n/x", f)
    r = commit(store, d)
    assert (r.num, r.unchanged) == (1, True)
    assert d.outcome == "ds:v1 (unchanged)"
    assert [x["num"] for x in store.meta.versions("ds")] == [1, 0]
    d.discard()
    assert store.meta.drafts() == [] and not os.path.exists(d.scratch_dir)


def test_draft_persists_across_store_objects_and_processes(store_path, store, mktree, tmp_path):
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"from the parent process")
    add_file(store, d, "dir/f", f)
    remove(d, "a")
    write_scratch(d, "s", b"scratch of the parent").close()
    del d
    store.meta.close()
    again = repo.open_draft(Store.open(store_path), "ds")
    expected = [("D", "a"), ("A", "dir"), ("A", "dir/f"), ("A", "s")]
    assert status(again) == expected
    code = textwrap.dedent(f"""
        import os
        from artfs import repo
        from artfs.storage.format import FILE, Entry
        from artfs.storage.store import Store
        s = Store.open({store_path!r})
        d = repo.open_draft(s, "ds")
        got = [(c, b"/".join(p).decode()) for c, p in d.status()]
        assert got == {expected!r}, got
        name, sf = d.new_scratch()
        sf.pwrite(b"from a child process", 0)
        sf.close()
        d.commit(d.plan_create((b"g",), FILE, 0o644, os.getuid(), os.getgid(), scratch=name, size=20))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    again.reload()
    assert status(again) == sorted(expected + [("A", "g")], key=lambda r: r[1])
    r = commit(again.store, again)
    v = repo.resolve(store, f"ds:v{r.num}")
    assert read(store, v, "g") == b"from a child process"
    assert read(store, v, "dir/f") == b"from the parent process"
    assert read(store, v, "s") == b"scratch of the parent"
    again.discard()


def test_new_artifact_draft_starts_empty_and_commits_v0(store, tmp_path):
    d = repo.open_draft(store, "fresh")
    assert d.parent is None and d.status() == [] and d.base_root is None
    f = tmp_path / "f"
    f.write_bytes(b"x")
    add_file(store, d, "x", f)
    r = commit(store, d)
    assert (r.num, r.unchanged) == (0, False)
    v = repo.resolve(store, "fresh")
    assert (v.num, v.parent, v.how, v.file_count, v.total_bytes) == (0, None, "single", 1, 1)
    d.discard()


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from(["set", "pop", "get"]), hs.integers(1, 4),
                          hs.sampled_from([b"a", b"b", b"c"]), hs.integers(16, 10**6))))
def test_pin_map_is_a_mapping_of_directory_and_name(script):
    """The draft's pins are held per directory (PinMap); to the draft they are a dict keyed by
    (dir_id, name).  The same operations on both leave the same contents."""
    pins, model = PinMap(), {}
    for op, d, name, ino in script:
        key = (d, name)
        if op == "set":
            pins[key] = model[key] = ino
        elif op == "pop":
            assert pins.pop(key, None) == model.pop(key, None)
        else:
            assert pins.get(key) == model.get(key)
            assert (key in pins) == (key in model)
        assert len(pins) == len(model)
        assert dict(pins) == model == dict(pins.items())
        assert all(pins.by_dir.values()), "a directory without pins keeps no dict"
    assert dict(PinMap(model.items())) == model


def test_a_failed_change_leaves_the_draft_as_it_was(store, mktree, tmp_path, monkeypatch):
    """plan -> persist -> apply: when the transaction fails nothing changed, in the database,
    in memory or on disk (the new scratch file is removed)."""
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"}))
    d = repo.open_draft(store, "ds")
    write_scratch(d, "kept", b"kept").close()
    state = store.meta.draft_state(d.id)
    before = (status(d), d.next_ino, dict(d.bases), {k: dict(v) for k, v in d.overlay.items()}, dict(d.pins))
    scratch_before = sorted(os.listdir(d.scratch_dir))

    def full(*a, **k):
        raise NoSpace("no space left (simulated)")

    monkeypatch.setattr(store.meta, "draft_apply", full)
    name, sf = d.new_scratch()
    sf.pwrite(b"new bytes", 0)
    sf.close()
    ch = d.plan_create(P("d/new"), FILE, 0o644, 0, 0, scratch=name, size=9)
    assert status(d) == before[0]  # planning changes nothing
    with pytest.raises(NoSpace):
        d.commit(ch)
    with pytest.raises(NoSpace):
        d.commit(d.plan_remove(P("a"), "any"))
    monkeypatch.undo()
    assert (status(d), d.next_ino, dict(d.bases), {k: dict(v) for k, v in d.overlay.items()}, dict(d.pins)) == before
    assert store.meta.draft_state(d.id) == state
    assert sorted(os.listdir(d.scratch_dir)) == scratch_before  # the failed change's scratch file is gone
    assert d.lookup(P("d/new")) is None and d.lookup(P("a")) is not None
    d.discard()


def test_a_draft_behind_latest_is_merged_onto_it(store, mktree, tmp_path):
    """The lost-update rule: a draft made from v0 never undoes v1; its changes are merged."""
    v0, _ = put(store, "ds", mktree(tmp_path / "src", {"a": b"1", "d/b": b"2", "d/c": b"3", "e": b"4"}))
    mine = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"changed by me")
    add_file(store, mine, "d/b", f)
    write_scratch(mine, "d/new", b"new of mine").close()
    f.write_bytes(b"the same change on both sides")
    same = add_file(store, mine, "e", f)
    # meanwhile another draft makes v1
    theirs = repo.open_draft(store, "ds", key="api:theirs")
    remove(theirs, "a")
    f2 = tmp_path / "f2"
    f2.write_bytes(b"changed by them")
    add_file(store, theirs, "d/c", f2)
    theirs.put(P("e"), same)  # the very same entry: not a conflict
    assert commit(store, theirs).num == 1
    theirs.discard()
    r = commit(store, mine)
    assert (r.num, r.unchanged, r.rebased_from) == (2, False, 0)
    v1, v2 = repo.resolve(store, "ds:v1"), repo.resolve(store, "ds:v2")
    assert v2.parent == 1
    assert diff(store, v1, v2) == [("M", "d/b"), ("A", "d/new")]  # nothing of v1 undone
    assert read(store, v2, "d/c") == b"changed by them" and read(store, v2, "d/new") == b"new of mine"
    assert mine.parent == 2 and mine.status() == []
    mine.discard()


def test_a_draft_behind_latest_that_conflicts_is_refused(store, mktree, tmp_path):
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1", "d/b": b"2"}))
    mine = repo.open_draft(store, "ds")
    remove(mine, "d/b")
    sf = write_scratch(mine, "d/b", b"mine")
    theirs = repo.open_draft(store, "ds", key="api:theirs")
    f = tmp_path / "f"
    f.write_bytes(b"theirs")
    add_file(store, theirs, "d/b", f)
    commit(store, theirs)
    theirs.discard()
    before = (status(mine), store.meta.draft_state(mine.id), sorted(os.listdir(mine.scratch_dir)))
    with pytest.raises(Conflict, match="d/b"):
        commit(store, mine)
    assert (status(mine), store.meta.draft_state(mine.id), sorted(os.listdir(mine.scratch_dir))) == before
    assert mine.parent == 0 and [x["num"] for x in store.meta.versions("ds")] == [1, 0]
    sf.close()
    mine.discard()


def test_the_same_content_on_both_sides_is_not_a_conflict(store, mktree, tmp_path):
    """format.py: content_key is "the one rule ... used by trees, drafts, diff and collaborative
    conflicts alike"; collaborative upserts accept the same content from two writers, and a
    commit of it is "unchanged".  The lost-update merge refuses it."""
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    mine = repo.open_draft(store, "ds")
    theirs = repo.open_draft(store, "ds", key="api:theirs")
    write_scratch(theirs, "new", b"the same bytes").close()
    commit(store, theirs)
    theirs.discard()
    write_scratch(mine, "new", b"the same bytes").close()  # made a moment later: another mtime
    r = commit(store, mine)  # Conflict: "changed on both sides: new"
    assert (r.num, r.unchanged) == (1, True)
    mine.discard()


def test_commit_copies_scratch_files_into_the_store(store, mktree, tmp_path, monkeypatch):
    """0.1 hard-linked a scratch file into the store; now the commit copies it, so the two
    never share an inode (the object cannot change through the draft)."""
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    d = repo.open_draft(store, "ds")
    data = os.urandom(fmt.CHUNK + 5)
    sf = write_scratch(d, "big", data)
    ino = sf.fstat().st_ino
    copied = spy_put_fd(monkeypatch)
    r = repo.commit_draft(store, d)
    monkeypatch.undo()
    assert copied == [d.scratch_path(sf.name)]
    obj = store.objects.path(b3(data))
    assert os.stat(obj).st_ino != ino and os.stat(obj).st_nlink == 1
    assert sf.fstat().st_nlink == 1  # the scratch file is still the draft's alone
    repo.finish_commit(d, r)
    sf.pwrite(b"after the commit", 0)
    assert store.objects.verify(b3(data))
    assert read(store, repo.resolve(store, "ds:v1"), "big") == data
    sf.close()
    d.discard()


def test_hard_links_in_a_draft(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"shared", "other": b"x"})
    os.mkdir(os.path.join(src, "sub"))
    os.link(os.path.join(src, "a"), os.path.join(src, "sub", "b"))
    v0, _ = put(store, "ds", src)
    d = repo.open_draft(store, "ds")
    assert not d.links_adopted
    d.prepare_for_writing()  # the owner adopts the parent's groups before anything moves
    a, b = d.lookup(P("a")), d.lookup(P("sub/b"))
    assert a.link is not None and a.link == b.link and a.nlink == 2
    # the adoption is recorded: the draft opened again (a remount) does not adopt twice
    again = repo.open_draft(store, "ds")
    assert again.links_adopted
    again.prepare_for_writing()
    assert again.lookup(P("a")).link == again.lookup(P("sub/b")).link == a.link
    assert d.ino_of(1, b"a", a) == a.link  # one inode number for both names
    # changing the content through one name changes it under the other
    name, sf = d.copy_up(a, truncate=True)
    sf.pwrite(b"written through a", 0)
    d.commit(d.plan_setattr(P("a"), scratch=name))
    assert d.lookup(P("sub/b")).scratch == name
    # a new link, and a name dropped from the group
    d.commit(d.plan_link(P("other"), P("sub/other2")))
    r = commit(store, d)
    v1 = repo.resolve(store, f"ds:v{r.num}")
    assert read(store, v1, "sub/b") == b"written through a" == read(store, v1, "a")
    groups = repo.link_table(store, v1.links)
    assert sorted(sorted(ps) for ps in groups.values()) == [[(b"a",), (b"sub", b"b")],
                                                             [(b"other",), (b"sub", b"other2")]]
    assert repo.lookup(store, v1, "a").hlid == repo.lookup(store, v1, "sub/b").hlid
    sf.close()
    # removing one of two names leaves a plain file
    d.prepare_for_writing()
    remove(d, "sub/other2")
    r = commit(store, d)
    v2 = repo.resolve(store, f"ds:v{r.num}")
    assert repo.lookup(store, v2, "other").hlid is None
    assert [sorted(ps) for ps in repo.link_table(store, v2.links).values()] == [[(b"a",), (b"sub", b"b")]]
    out = tmp_path / "out"
    repo.export(store, v2, str(out))
    assert os.stat(out / "a").st_ino == os.stat(out / "sub" / "b").st_ino
    d.discard()


def test_special_files_and_xattrs_in_a_draft(store, tmp_path):
    d = repo.open_draft(store, "sp")
    d.commit(d.plan_create(P("fifo"), FIFO, 0o640, 0, 0))
    d.commit(d.plan_create(P("null"), CHR, 0o666, 0, 0, rdev=os.makedev(1, 3)))
    d.mkdir(P("dir"))
    write_scratch(d, "dir/f", b"content").close()
    d.commit(d.plan_setattr(P("dir/f"), xattrs=fmt.xattr_tuple({b"user.a": b"1"})))
    d.commit(d.plan_setattr((), mode=0o700, xattrs=((b"user.root", b"r"),)))
    r = commit(store, d)
    v = repo.resolve(store, f"sp:v{r.num}")
    assert repo.lookup(store, v, "fifo").kind == FIFO
    assert repo.lookup(store, v, "null").rdev == os.makedev(1, 3)
    assert repo.lookup(store, v, "dir/f").xattrs == ((b"user.a", b"1"),)
    assert (v.root_entry().mode, v.root_entry().xattrs) == (0o700, ((b"user.root", b"r"),))
    # an xattr change alone is not a new version (but the draft keeps it)
    d.commit(d.plan_setattr(P("dir/f"), xattrs=()))
    r2 = commit(store, d)
    assert (r2.num, r2.unchanged) == (r.num, True)
    assert d.lookup(P("dir/f")).xattrs == ()
    d.discard()


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
    os.mkfifo(tmp_path / "b" / "same2")
    os.unlink(tmp_path / "b" / "same")
    os.mkfifo(tmp_path / "b" / "same")  # a file that became a FIFO
    e = put(store, "ds", tmp_path / "b")[0]
    assert diff(store, a, b) == [
        ("A", "d2x"), ("D", "d2x"), ("D", "d2x/y"), ("A", "dir/z"), ("D", "gone"), ("M", "ln"), ("M", "mod"),
        ("A", "new"), ("A", "newdir"), ("A", "newdir/a"), ("A", "newdir/a/b"),
        ("D", "olddir"), ("D", "olddir/a"), ("D", "olddir/a/b"), ("A", "x2d"), ("D", "x2d"), ("A", "x2d/in"),
    ]
    assert diff(store, b, c) == [("M", "exe")]
    assert diff(store, c, c) == []
    assert diff(store, c, e) == [("M", "same"), ("A", "same2")]
    assert [(k, p) for k, p in diff(store, b, a) if p == "same"] == []


# -- fsck and gc -------------------------------------------------------------------------

def test_fsck_finds_flipped_byte_and_missing_objects(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"content of a", "d/b": b"content of b"})
    v, _ = put(store, "ds", src)
    assert repo.fsck(store) == []
    blob = store.objects.path(b3(b"content of a"))
    data = open(blob, "rb").read()
    with open(blob, "r+b") as f:
        f.write(bytes([data[0] ^ 1]))
    problems = repo.fsck(Store.open(store.path))
    assert problems == [f"corrupt object {b3(b'content of a').hex()} (used by ds:v0 a)"]  # says where it is used
    with open(blob, "wb") as f:
        f.write(data)
    # a missing blob
    blob_b = store.objects.path(b3(b"content of b"))
    os.rename(blob_b, tmp_path / "away")
    problems = repo.fsck(Store.open(store.path))
    assert problems == [f"missing object {b3(b'content of b').hex()} (used by ds:v0 d/b)"]
    os.rename(tmp_path / "away", blob_b)
    # a missing tree (the subdirectory's): named, and the walk goes on without a traceback
    d_tree = repo.lookup(store, v, "d").digest.hex()
    p = store.objects.path(bytes.fromhex(d_tree))
    os.rename(p, tmp_path / "away")
    problems = repo.fsck(Store.open(store.path))
    assert f"missing object {d_tree} (used by ds:v0 d)" in problems
    assert problems and all(d_tree in x for x in problems)
    # a corrupt tree (bytes match no digest)
    os.rename(tmp_path / "away", p)
    tdata = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(tdata[:-1])
    problems = repo.fsck(Store.open(store.path))
    assert f"corrupt object {d_tree} (used by ds:v0 d)" in problems
    assert problems and all(d_tree in x for x in problems)
    with open(p, "wb") as f:
        f.write(tdata)
    assert repo.fsck(Store.open(store.path)) == []


def test_fsck_finds_an_intact_but_undecodable_tree(store):
    with store.writing(), store.objects.batch() as b:
        junk = b.put_bytes(b"\x02not a tree at all")
    store.meta.create_version("bad", None, root=junk.hex(), ident="00" * 32, root_meta=None, links=None,
                              expected=None, parent=None, message=None, metadata=None, file_count=0,
                              total_bytes=0, how="single")
    problems = repo.fsck(Store.open(store.path))
    assert len(problems) == 1 and "malformed tree" in problems[0] and junk.hex() in problems[0]
    assert "bad:v0" in problems[0]
    with pytest.raises(Corrupt):
        repo.export(Store.open(store.path), repo.resolve(store, "bad"), str(store.path) + "-out")
    with pytest.raises(GcRefused):
        repo.gc(store)
    store.meta.db.execute("DELETE FROM versions")  # leave a clean store for the fixture's fsck
    store.meta.db.execute("DELETE FROM aliases")


def test_fsck_finds_missing_scratch_file(store, tmp_path):
    d = repo.open_draft(store, "ds")
    sf = write_scratch(d, "s", b"scratch")
    sf.close()
    assert repo.fsck(store) == []
    os.unlink(d.scratch_path(sf.name))
    problems = repo.fsck(store)
    assert len(problems) == 1 and sf.name in problems[0] and "missing scratch file" in problems[0]
    d.discard()


def test_gc_keeps_everything_reachable_and_only_that(store_path, store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"in v0 only", "keep/b": b"in every version"})
    v0, _ = put(store, "ds", src)
    os.unlink(src + "/a")
    v1, _ = put(store, "ds", src)
    # a draft with a stored file of its own, a changed file (scratch) and a leftover scratch file
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"only in a draft")
    add_file(store, d, "keep/drafted", f)
    write_scratch(d, "keep/scratch", b"a changed file").close()
    _, orphan = d.new_scratch()
    orphan.pwrite(b"crash leftover", 0)
    orphan.close()
    # garbage: an object nothing names, a writer's leftover temporary, a dead draft's directory
    with store.writing(), store.objects.batch() as b:
        junk = b.put_bytes(b"nobody references me")
    with open(os.path.join(store.objects.tmp_dir, "leftover"), "wb") as fh:
        fh.write(b"tmp")
    state = getattr(store, "state_dir", store.path)  # drafts/ and locks/ live in this machine's state
    os.makedirs(os.path.join(state, "drafts", "999"))
    before = objects(store)
    removed, freed = repo.gc(store)
    after = objects(store)
    assert before - after == {junk}
    assert (removed, freed) == (1, len(b"nobody references me") + len(b"crash leftover"))
    assert os.listdir(store.objects.tmp_dir) == []
    assert not os.path.exists(os.path.join(state, "drafts", "999"))
    assert os.listdir(d.scratch_dir) == [d.lookup(P("keep/scratch")).scratch]
    s = Store.open(store_path)
    assert read(s, repo.resolve(s, "ds:v0"), "a") == b"in v0 only"
    assert status(d) == [("A", "keep/drafted"), ("A", "keep/scratch")]
    assert commit(store, d).num == 2
    v2 = repo.resolve(s, "ds:v2")
    assert read(s, v2, "keep/drafted") == b"only in a draft"
    assert read(s, v2, "keep/scratch") == b"a changed file"
    assert repo.gc(store) == (0, 0)
    d.discard()


def test_gc_collects_what_only_a_discarded_draft_used(store, mktree, tmp_path):
    put(store, "ds", mktree(tmp_path / "src", {"a": b"1"}))
    d = repo.open_draft(store, "ds")
    f = tmp_path / "f"
    f.write_bytes(b"draft only, then discarded")
    add_file(store, d, "x", f)
    repo.gc(store)
    assert b3(b"draft only, then discarded") in objects(store)
    d.discard()
    repo.gc(store)
    assert b3(b"draft only, then discarded") not in objects(store)


def test_store_init_is_idempotent_and_open_requires_a_store(store_path, store, tmp_path):
    Store.init(store_path)
    Store.init(store_path)
    with pytest.raises(StoreMissing, match="artfs --store"):
        Store.open(str(tmp_path / "nothing-here"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "important.txt").write_bytes(b"not a store")
    with pytest.raises(StoreMissing, match="not an artfs store"):
        Store.init(str(foreign))
    assert os.listdir(foreign) == ["important.txt"]


def test_gc_spares_a_draft_created_while_it_runs(store, tmp_path, monkeypatch):
    # drafts are created without the gc lock: one that appears while gc looks for
    # orphaned scratch directories must keep its directory (and its files)
    created = []
    real = type(store.meta).drafts

    def drafts_racing(meta):
        rows = real(meta)
        if not created:
            d = repo.open_draft(store, "racer")
            write_scratch(d, "s", b"scratch bytes").close()
            created.append(d)
        return rows

    monkeypatch.setattr(type(store.meta), "drafts", drafts_racing)
    repo.gc(store)
    monkeypatch.undo()
    d = created[0]
    assert os.path.isdir(d.scratch_dir) and len(os.listdir(d.scratch_dir)) == 1
    r = commit(store, d)
    assert (r.num, r.unchanged) == (0, False)
    v = repo.resolve(store, "racer")
    assert read(store, v, "s") == b"scratch bytes"
    d.discard()


def test_big_file_copy_falls_back_midway_without_corruption(store, tmp_path, monkeypatch):
    # copy_file_range may copy a part and then refuse (EXDEV, EINVAL...): the rest must
    # land at the right offset, or the object silently holds other bytes than the source
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
    assert repo.lookup(store, v, "big").digest == b3(data)
    assert read(store, v, "big") == data


def test_damaged_draft_record_is_named_not_a_crash(store, tmp_path):
    """A damaged draft row: fsck names it, gc refuses to sweep (it might name live objects)."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    a = artfs.Artifact("dmg", store=store)
    a.add_file(str(f))
    where = "draft_id=? AND dir_id != 0 AND name=?", (a.draft.id, b"f")
    good = store.meta.db.execute(f"SELECT rec FROM draft_entries WHERE {where[0]}", where[1]).fetchone()[0]
    store.meta.db.execute(f"UPDATE draft_entries SET rec=x'c1ff' WHERE {where[0]}", where[1])
    problems = repo.fsck(Store.open(store.path))
    assert problems and all("damaged draft record" in p for p in problems)
    assert any(a.draft.key in p for p in problems)  # which draft
    with pytest.raises(GcRefused):
        repo.gc(Store.open(store.path))
    assert b3(b"x") in objects(store)  # nothing was swept
    listed = repo.drafts(store)  # a listing reports the damage, it does not fail
    assert len(listed) == 1 and "damaged draft record" in listed[0]["problem"]
    store.meta.db.execute(f"UPDATE draft_entries SET rec=? WHERE {where[0]}", (good,) + where[1])
    assert repo.fsck(store) == []


def test_drafts_are_listed_and_discarded_by_key(store, tmp_path):
    """Drafts a crashed program left behind can be found and dropped (and their objects then collected)."""
    f = tmp_path / "f"
    f.write_bytes(b"left behind")
    a = artfs.Artifact("lost", store=store)
    a.add_file(str(f))
    key = a.draft.key
    rows = {r["key"]: r for r in repo.drafts(store)}
    assert rows[key]["changes"] == 1 and rows[key]["parent"] is None and not rows[key]["mounted"]
    assert repo.find_draft(store, key).id == a.draft.id
    with repo.lock_draft(store, a.draft):  # in use: refused
        with pytest.raises(Conflict, match="in use"):
            repo.discard_draft(store, key)
    assert repo.discard_draft(store, key) == f"discarded {key} (1 change)"
    assert repo.drafts(store) == []
    with pytest.raises(NotFound, match="no draft"):
        repo.discard_draft(store, key)
    removed, _ = repo.gc(store)
    assert removed >= 1  # the file's object was only the draft's
    assert b3(b"left behind") not in objects(store)
