"""Regression tests for the store faults of issue 9, and the schema checks.

Each test says in a comment what artfs 0.1 (``git show 87a57ff:artfs/...``) did,
which is why the test failed there; each passes on the rebuilt core.  No FUSE:
what a mount does to a draft is done here through the same ``Draft`` calls
(``new_scratch``, ``plan_*`` + ``commit``, the ``ScratchFile`` it writes through).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import blake3
import msgpack
import pytest

import artfs
from artfs import repo
from artfs.errors import Conflict, NotFound, SchemaMismatch
from artfs.repo import put as put_mod
from artfs.repo.integrity import GcRefused
from artfs.storage import format as fmt
from artfs.storage.format import DIR, FILE, SYMLINK
from artfs.storage.store import Store

ORIG = b"the original bytes of new.txt\n"


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def P(path: str) -> tuple:
    return fmt.split_path(path)


def put(store, name, src, **kw):
    return repo.put_dir(store, name, str(src), **kw)


def read(store, v, path) -> bytes:
    return repo.read_all(store, repo.lookup(store, v, path))


def objects(store) -> set[bytes]:
    return set(store.objects.list())


def object_inodes(store) -> dict[int, bytes]:
    return {os.stat(store.objects.path(d)).st_ino: d for d in store.objects.list()}


def write_scratch(d, path: str, data: bytes):
    """A new file in a draft, as a mount makes it; returns the open ScratchFile."""
    name, sf = d.new_scratch()
    sf.pwrite(data, 0)
    d.commit(d.plan_create(P(path), FILE, 0o644, os.getuid(), os.getgid(), scratch=name, size=len(data)))
    return sf


def run_cli(store_path, *args, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARTFS_STORE", "ARTFS_PROGRESS", "ARTFS_DEBUG", "ARTFS_GROUP", "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "artfs.cli", "--store", str(store_path), *map(str, args)],
                          capture_output=True, timeout=120, env=env)


# -- 1. draft files never share an inode with an object -----------------------------------
#
# 0.1's commit hard-linked every scratch file into objects/ under its digest (draft._link_in)
# *before* the version transaction.  A file a mount still had open after the commit -- or the
# scratch file of a draft whose commit then failed -- was the object's inode: writing to it
# rewrote the object behind its digest (fsck: corrupt object).  And putting the original bytes
# again did not help: ObjectStore.put_bytes/_install skipped an object that already existed.

@pytest.mark.parametrize("how", ["repo", "api", "repo, failed", "api, failed"])
def test_draft_files_never_share_an_inode_with_an_object(store, mktree, tmp_path, how):
    big = os.urandom(fmt.CHUNK + 12345)  # more than one piece: the other copy path
    failed = how.endswith("failed")
    if failed:
        # a new artifact's draft (a dataset), while someone else makes it a model meanwhile
        name = "y"
        if how.startswith("api"):
            art = artfs.Artifact(name, type="dataset", store=store)
            d = art.draft
        else:
            d = repo.open_draft(store, name)
        assert d.type == "dataset" and d.parent is None
    else:
        name = "x"
        put(store, name, mktree(tmp_path / "v0", {"a": b"a"}))
        if how.startswith("api"):
            art = artfs.use_artifact(f"{name}:v0", store=store).new_draft()
            d = art.draft
        else:
            d = repo.open_draft(store, name)
    sf = write_scratch(d, "new.txt", ORIG)
    sf_big = write_scratch(d, "big.bin", big)

    if failed:
        put(store, name, mktree(tmp_path / "meanwhile", {"m": b"m"}), type_="model")
        with pytest.raises(Conflict, match="is a model, not a dataset"):
            if how.startswith("api"):
                art.save()
            else:
                repo.commit_draft(store, d)
        # the draft is as it was: the scratch files are still its own and still named
        assert d.lookup(P("new.txt")).scratch == sf.name
        assert sorted(os.listdir(d.scratch_dir)) == sorted([sf.name, sf_big.name])
        assert sf.fstat().st_nlink == 1 and sf_big.fstat().st_nlink == 1
    elif how.startswith("api"):
        v = art.save()
        assert v.open("new.txt").read() == ORIG
    else:
        r = repo.commit_draft(store, d)
        repo.finish_commit(d, r)

    by_inode = object_inodes(store)
    for f in (sf, sf_big):
        assert f.fstat().st_ino not in by_inode
    # the mount (or the failed draft) keeps writing through its open scratch files
    sf.pwrite(b"SCRIBBLED OVER", 0)
    sf.truncate(5)
    sf_big.pwrite(b"\0" * 4096, len(big) - 4096)
    for data in (ORIG, big):  # the commit's copies (after a failed commit: garbage, but sound)
        assert b3(data) in by_inode.values() and store.objects.verify(b3(data))
    assert repo.fsck(Store.open(store.path)) == []
    # putting the original bytes again yields the original content
    v, _ = put(store, name, mktree(tmp_path / "again", {"new.txt": ORIG, "big.bin": big}),
               type_="model" if failed else None)
    assert read(store, v, "new.txt") == ORIG and read(store, v, "big.bin") == big
    if not failed:
        committed = repo.resolve(store, f"{name}:v1")
        assert read(store, committed, "new.txt") == ORIG and read(store, committed, "big.bin") == big
    sf.close()
    sf_big.close()
    if failed:
        d.discard()
    assert repo.fsck(Store.open(store.path)) == []


@pytest.mark.parametrize("source", ["stored", "scratch"])
def test_copy_up_gives_a_file_of_its_own(store, mktree, tmp_path, source):
    """A draft's copy of a file (a mount's first write to it) is a new inode with the content,
    never the object's inode: writing to it leaves the object and every version as they were."""
    small, big = b"small stored bytes\n", os.urandom(fmt.CHUNK + 777)
    put(store, "x", mktree(tmp_path / "v0", {"s": small, "b": big}))
    d = repo.open_draft(store, "x")
    by_inode = object_inodes(store)
    for rel, data in (("s", small), ("b", big)):
        e = d.lookup(P(rel))
        if source == "scratch":  # a file changed before: copied from its scratch file
            name, first = d.copy_up(e)
            first.close()
            d.commit(d.plan_setattr(P(rel), scratch=name))
            e = d.lookup(P(rel))
        name, sf = d.copy_up(e)
        try:
            assert sf.fstat().st_ino not in by_inode
            assert sf.pread(0, len(data) + 1) == data
            sf.pwrite(b"SCRIBBLED", 0)
            sf.truncate(3)
        finally:
            sf.close()
        assert store.objects.verify(b3(data))
    fresh = Store.open(store.path)  # no verified piece cached in this process
    v0 = repo.resolve(fresh, "x:v0")
    assert read(fresh, v0, "s") == small and read(fresh, v0, "b") == big
    d.discard()


# -- 2. a put heals a damaged object --------------------------------------------------------
#
# 0.1's ObjectStore.put_bytes returned early when an object of that name existed and
# _install unlinked the new copy instead of renaming it over: a truncated object stayed
# truncated however often its content was put again.

@pytest.mark.parametrize("size", [100, 3 << 20])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_put_heals_a_damaged_object(store, mktree, tmp_path, size, damage):
    data = os.urandom(size)
    src = mktree(tmp_path / "src", {"f": data})
    v, _ = put(store, "ds", src)
    p = store.objects.path(b3(data))
    if damage == "truncate":
        os.truncate(p, size // 2)
    else:  # same size, one byte off
        with open(p, "r+b") as f:
            f.seek(size - 1)
            f.write(bytes([data[-1] ^ 0x40]))
    assert repo.fsck(Store.open(store.path)) != []
    v2, unchanged = put(store, "ds", mktree(tmp_path / "again", {"f": data}))
    assert unchanged and v2.num == v.num
    assert store.objects.verify(b3(data))
    assert os.path.getsize(p) == size
    assert read(store, v, "f") == data
    assert repo.fsck(Store.open(store.path)) == []


def test_a_put_heals_a_damaged_object_the_stat_cache_knows(store, mktree, tmp_path, monkeypatch):
    data = b"content the stat cache remembers"
    src = mktree(tmp_path / "src", {"f": data})
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)  # files older than the cache's margin
    put(store, "ds", src)
    p = store.objects.path(b3(data))
    with open(p, "r+b") as f:
        f.write(b"X")  # damaged in place: same size
    problems = repo.fsck(Store.open(store.path))
    assert len(problems) == 1 and "corrupt object" in problems[0]
    try:
        put(store, "ds", src)  # what a user does after fsck names the corrupt file
        assert store.objects.verify(b3(data))
    finally:
        with open(p, "r+b") as f:  # the fixture's fsck
            f.write(data[:1])


# -- 5. gc with an unreadable tree deletes nothing ------------------------------------------
#
# 0.1's mark() caught Corrupt for a tree it could not read and went on (only fsck recorded it);
# gc then deleted every object it had not marked -- including everything below the
# unreadable tree, which a version still named.

@pytest.mark.parametrize("damage", ["corrupt tree", "missing tree", "undecodable tree", "damaged version row"])
def test_gc_refuses_to_sweep_past_an_unreadable_tree(store, mktree, tmp_path, damage):
    src = mktree(tmp_path / "src", {"a": b"top", "d/b": b"below the damaged tree", "d/e/c": b"deeper"})
    v, _ = put(store, "ds", src)
    with store.writing(), store.objects.batch() as b:
        junk = b.put_bytes(b"garbage gc would collect")
    d_tree = repo.lookup(store, v, "d").digest
    p = store.objects.path(d_tree)
    saved = open(p, "rb").read()
    undo = None
    if damage == "corrupt tree":
        with open(p, "r+b") as f:
            f.write(b"\xff")
    elif damage == "missing tree":
        os.unlink(p)
    elif damage == "undecodable tree":
        # intact (its bytes match its name), present, but not a tree: named by a version
        with store.writing(), store.objects.batch() as b:
            bogus = b.put_bytes(fmt.FORMAT_BYTE + b"\x91\x93not a tree")
        store.meta.create_version("bad", None, root=bogus.hex(), ident="00" * 32, root_meta=None, links=None,
                                  expected=None, parent=None, message=None, metadata=None, file_count=0,
                                  total_bytes=0, how="single")
        p, saved = store.objects.path(bogus), None
    else:
        store.meta.db.execute("UPDATE versions SET root='not hex' WHERE num=0")
        undo = v.root.hex()
    before = {d: open(store.objects.path(d), "rb").read() for d in objects(store)}
    with pytest.raises(GcRefused, match="nothing deleted"):
        repo.gc(Store.open(store.path))
    after = {d: open(store.objects.path(d), "rb").read() for d in objects(store)}
    assert after == before  # not even the garbage
    assert junk in after
    # repaired, gc goes ahead and takes only the garbage
    if damage == "undecodable tree":
        store.meta.db.execute("DELETE FROM aliases WHERE artifact_id=(SELECT id FROM artifacts WHERE name='bad')")
        store.meta.db.execute("DELETE FROM versions WHERE artifact_id=(SELECT id FROM artifacts WHERE name='bad')")
        assert repo.gc(Store.open(store.path))[0] == 2  # the junk and the bogus tree
    else:
        if undo is not None:
            store.meta.db.execute("UPDATE versions SET root=? WHERE num=0", (undo,))
        else:
            with open(p, "wb") as f:
                f.write(saved)
        assert repo.gc(Store.open(store.path)) == (1, len(b"garbage gc would collect"))
    assert read(Store.open(store.path), v, "d/e/c") == b"deeper"


# -- 6. draft ids are never reused ----------------------------------------------------------
#
# 0.1's drafts.id was an INTEGER PRIMARY KEY without AUTOINCREMENT, so SQLite gave a new
# draft the id of the newest one discarded, and scratch files lived in drafts/<id>/.  An old
# handle of the discarded draft (another process, a mount being torn down) that discarded
# "its" draft deleted the new draft's row and rmtree'd the new draft's scratch files.

def test_draft_ids_are_never_reused(store_path, store, mktree, tmp_path):
    put(store, "x", mktree(tmp_path / "src", {"a": b"1"}))
    old = repo.open_draft(store, "x")
    stale = repo.find_draft(store, "draft:x")  # the same draft, seen by someone else
    write_scratch(old, "f", b"old draft").close()
    old.discard()
    store.meta.close()
    s = Store.open(store_path)  # a fresh connection: nothing cached
    new = repo.open_draft(s, "x")
    assert new.id > old.id
    assert new.scratch_uuid != old.scratch_uuid and new.scratch_dir != old.scratch_dir
    assert s.draft_lock_path(new.scratch_uuid) != s.draft_lock_path(old.scratch_uuid)
    sf = write_scratch(new, "f", b"new draft")
    with repo.lock_draft(s, new):
        pass  # a lock file of the new draft, as a mount leaves it
    stale.discard()  # the old handle drops "its" draft
    assert s.meta.draft_by_id(new.id) is not None
    assert os.listdir(new.scratch_dir) == [sf.name]
    assert os.path.exists(s.draft_lock_path(new.scratch_uuid))
    new.reload()
    r = repo.commit_draft(s, new)
    repo.finish_commit(new, r)
    assert read(s, repo.resolve(s, f"x:v{r.num}"), "f") == b"new draft"
    sf.close()
    # ids keep growing whatever is discarded, also the newest
    ids = [new.id]
    for i in range(3):
        d = repo.open_draft(s, "x", key=f"api:{i}")
        ids.append(d.id)
        d.discard()
    assert ids == sorted(set(ids))
    new.discard()
    assert repo.open_draft(s, "x").id > max(ids)


# -- 7. lost update ---------------------------------------------------------------------------
#
# 0.1 committed a draft by inserting its whole tree as the next version (meta.commit_version
# with the draft's parent), whatever latest was meanwhile: v2 silently brought back b.txt
# that v1 had removed, and a draft that changed b.txt was committed over v1's removal.

def test_a_draft_behind_latest_never_undoes_newer_versions(store, tmp_path):
    for n, data in (("a.txt", b"a"), ("b.txt", b"b"), ("mine.txt", b"mine"), ("b2.txt", b"b changed")):
        (tmp_path / n).write_bytes(data)
    first = artfs.Artifact("x", store=store)
    first.add_file(str(tmp_path / "a.txt"))
    first.add_file(str(tmp_path / "b.txt"))
    assert first.save().ref == "x:v0"
    mine = artfs.use_artifact("x:v0", store=store).new_draft()
    mine.add_file(str(tmp_path / "mine.txt"))
    changer = artfs.use_artifact("x:v0", store=store).new_draft()
    changer.add_file(str(tmp_path / "b2.txt"), name="b.txt")
    # meanwhile: artfs rm x b.txt
    rm = artfs.use_artifact("x:latest", store=store).new_draft()
    rm.remove("b.txt")
    assert rm.save().ref == "x:v1"

    v2 = mine.save()
    assert v2.ref == "x:v2" and not v2.unchanged
    assert v2.files() == ["a.txt", "mine.txt"]  # WITHOUT b.txt, WITH mine.txt
    assert v2._info.parent == 1

    before = (changer.status(), store.meta.draft_state(changer.draft.id), store.meta.draft(changer.draft.key))
    for _ in range(2):  # refused, and refused again: nothing moved
        with pytest.raises(artfs.Conflict, match="b.txt"):
            changer.save()
        assert (changer.status(), store.meta.draft_state(changer.draft.id),
                store.meta.draft(changer.draft.key)) == before
    assert changer.status() == [("M", "b.txt")]
    assert [r["num"] for r in store.meta.versions("x")] == [2, 1, 0]
    assert artfs.use_artifact("x:latest", store=store).files() == ["a.txt", "mine.txt"]
    changer.discard()


def test_a_refused_commit_leaves_a_mounted_draft_as_it_was(store, mktree, tmp_path):
    """The same rule for a draft whose change is a scratch file (a mount's): refused, and the
    scratch file, its records and the draft's parent are untouched."""
    put(store, "x", mktree(tmp_path / "v0", {"a.txt": b"a", "b.txt": b"b"}))
    d = repo.open_draft(store, "x")
    name, sf = d.copy_up(d.lookup(P("b.txt")))
    sf.pwrite(b"B changed in the mount", 0)
    d.commit(d.plan_setattr(P("b.txt"), scratch=name))
    rm = artfs.use_artifact("x:latest", store=store).new_draft()
    rm.remove("b.txt")
    rm.save()
    before = (store.meta.draft_state(d.id), store.meta.draft_by_id(d.id), os.listdir(d.scratch_dir),
              sf.fstat().st_mtime_ns)
    with pytest.raises(Conflict, match="b.txt"):
        repo.commit_draft(store, d)
    assert (store.meta.draft_state(d.id), store.meta.draft_by_id(d.id), os.listdir(d.scratch_dir),
            sf.fstat().st_mtime_ns) == before
    assert d.parent == 0 and sf.pread(0, 100) == b"B changed in the mount"
    sf.close()
    d.discard()


# -- 8. cat of a corrupt object writes nothing ---------------------------------------------------
#
# 0.1's iter_content yielded every piece as it read it and compared the digest only after
# the last one: `artfs cat` wrote the whole 3 MiB of a file corrupted in its last MiB to
# stdout, then failed.

def test_cat_of_an_object_corrupt_in_its_last_mib_writes_nothing(store, mktree, tmp_path):
    data = os.urandom(3 << 20)
    put(store, "x", mktree(tmp_path / "src", {"big.bin": data}))
    ok = run_cli(store.path, "cat", "x:v0", "big.bin", home=tmp_path)
    assert ok.returncode == 0 and ok.stdout == data  # the command line itself is right
    p = store.objects.path(b3(data))
    off = len(data) - 100  # in the last MiB
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(bytes([data[off] ^ 1]))
    r = run_cli(store.path, "cat", "x:v0", "big.bin", home=tmp_path)
    assert r.returncode == 1, r
    assert r.stdout == b""
    err = r.stderr.decode()
    assert err.startswith("artfs: ") and err.count("\n") == 1 and "corrupt" in err and "Traceback" not in err
    with open(p, "r+b") as f:  # repair, for the fixture's fsck
        f.seek(off)
        f.write(data[off:off + 1])


# -- 9. read-only commands do not change a draft --------------------------------------------------
#
# 0.1's Draft() constructor, which `artfs drafts`, `fsck` and discard's change count all ran
# on every draft, "repaired" it (Draft._repair_scratch): a scratch file with another link was
# replaced by a copy (new inode, new mtime) behind the back of the mount using it, and
# Draft.open created scratch directories.  Now only a draft's owner changes it.

def _snapshot(store) -> tuple:
    files = []
    for sub in ("drafts", "locks"):
        top = os.path.join(getattr(store, "state_dir", store.path), sub)
        for dirpath, dirnames, filenames in os.walk(top):
            for n in [""] + sorted(dirnames + filenames):
                p = os.path.join(dirpath, n) if n else dirpath
                st = os.lstat(p)
                files.append((os.path.relpath(p, getattr(store, "state_dir", store.path)), st.st_ino, st.st_mode, st.st_nlink, st.st_size,
                              st.st_mtime_ns, st.st_ctime_ns))
    db = sqlite3.connect(os.path.join(store.path, "meta.sqlite"))
    try:
        rows = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall()
                for t in ("drafts", "draft_dirs", "draft_entries", "draft_inodes", "draft_pins")}
    finally:
        db.close()
    return sorted(files), rows


def test_read_only_commands_do_not_change_a_draft(store, mktree, tmp_path):
    src = mktree(tmp_path / "src", {"a": b"a", "d/b": b"b"})
    os.link(os.path.join(src, "a"), os.path.join(src, "d", "a2"))  # a parent with a hard-link group
    put(store, "x", src)
    untouched = repo.open_draft(store, "x", key="api:untouched")  # nobody adopted its parent's groups yet
    assert not untouched.links_adopted
    d = repo.open_draft(store, "x")
    (tmp_path / "f").write_bytes(b"stored")
    with store.writing(), store.objects.batch() as b:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        digest, n, _ = b.put_fd(fd)
        os.close(fd)
        d.put(P("d/stored"), fmt.Entry(b"stored", FILE, 0o644, size=n, digest=digest))
    sf = write_scratch(d, "changed", b"a mount's file")
    os.link(d.scratch_path(sf.name), tmp_path / "another-name")  # a scratch file with two links
    _, leftover = d.new_scratch()  # a crash leftover: unreferenced
    leftover.pwrite(b"unreferenced", 0)
    leftover.close()
    with repo.lock_draft(store, d):
        pass  # the lock file a mount left
    api = artfs.Artifact("y", store=store)
    api.add_file(str(tmp_path / "f"))
    before = _snapshot(store)
    seen = {row[0] for row in before[0]}  # the snapshot covers what matters
    assert os.path.relpath(d.scratch_path(sf.name), getattr(store, "state_dir", store.path)) in seen
    assert os.path.relpath(store.draft_lock_path(d.scratch_uuid), getattr(store, "state_dir", store.path)) in seen
    assert len(before[1]["draft_entries"]) >= 4 and len(before[1]["drafts"]) == 3

    listed = run_cli(store.path, "drafts", home=tmp_path)
    assert listed.returncode == 0 and b"x:draft" in listed.stdout, listed
    as_json = run_cli(store.path, "drafts", "--json", home=tmp_path)
    assert as_json.returncode == 0 and {r["key"] for r in json.loads(as_json.stdout)} == {
        "draft:x", "api:untouched", api.draft.key}
    checked = run_cli(store.path, "fsck", home=tmp_path)
    # a crash leftover is garbage (a note; gc removes it), not damage: fsck exits 0
    assert checked.returncode == 0 and b"note: 1 unreferenced scratch file(s) in draft x:draft" in checked.stdout, \
        checked
    s = Store.open(store.path)
    rows = {r["key"]: r for r in repo.drafts(s)}
    assert rows["draft:x"]["changes"] == 2 and not rows["draft:x"]["mounted"]
    assert rows["api:untouched"]["changes"] == 0
    assert repo.fsck(s) == [] and any("unreferenced" in p for p in repo.garbage(s))
    assert _snapshot(store) == before

    os.unlink(tmp_path / "another-name")
    sf.close()
    d.discard()
    untouched.discard()
    api.discard()


# -- 11. finishing a pending version that does not exist --------------------------------------------
#
# 0.1's Artifact.finish upserted when no pending version existed, so a mistyped id with no
# files of its own made a draft and an empty pending version, and sealed it as a new, empty
# version of the artifact.

@pytest.mark.parametrize("existing", [False, True])
def test_finish_of_a_mistyped_id_creates_nothing(store, mktree, tmp_path, existing):
    if existing:
        put(store, "x", mktree(tmp_path / "src", {"a": b"a"}))
    before = (store.meta.versions("x"), store.meta.artifacts())
    with pytest.raises(NotFound, match="typo"):
        artfs.Artifact("x", store=store).finish("typo")
    assert (store.meta.versions("x"), store.meta.artifacts()) == before
    assert store.meta.drafts() == []
    assert store.meta.pendings() == []
    assert os.listdir(os.path.join(getattr(store, "state_dir", store.path), "drafts")) == []


# -- schema checks ------------------------------------------------------------------------------
#
# 0.1's Store.open never looked at info.schema: a store of a newer artfs was opened and
# written to by code that did not know its tables, and a 0.1 store was used as it was.

@pytest.mark.parametrize("schema", ["99", "0", None])
def test_a_store_of_another_schema_is_refused(store_path, store, schema):
    store.meta.db.execute("DELETE FROM info WHERE key='schema'")
    if schema is not None:
        store.meta.db.execute("INSERT INTO info VALUES('schema', ?)", (schema,))
    store.meta.close()
    with pytest.raises(SchemaMismatch, match="newer artfs" if schema == "99" else "unknown schema"):
        Store.open(store_path)
    fresh = Store(store_path)
    fresh.meta.db.execute("INSERT OR REPLACE INTO info VALUES('schema', '2')")  # the fixture's fsck
    fresh.meta.close()


def test_a_file_that_is_not_a_database_is_refused(store_path, store):
    store.meta.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(store_path + "/meta.sqlite" + suffix):
            os.unlink(store_path + "/meta.sqlite" + suffix)
    os.rename(store_path + "/meta.sqlite", store_path + "/meta.saved")
    with open(store_path + "/meta.sqlite", "wb") as f:
        f.write(b"this is not an SQLite database at all" * 100)
    try:
        with pytest.raises(SchemaMismatch, match="not an artfs metadata database"):
            Store.open(store_path)
    finally:
        os.replace(store_path + "/meta.saved", store_path + "/meta.sqlite")


# The schema of artfs 0.1 (git show 87a57ff:artfs/meta.py, meta_pending.py, meta_runs.py).
SCHEMA_0_1 = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS artifacts(
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, type TEXT NOT NULL,
    description TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
    artifact_id INTEGER NOT NULL, num INTEGER NOT NULL, root TEXT NOT NULL,
    ident TEXT NOT NULL, parent INTEGER, created REAL NOT NULL, message TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', file_count INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL, how TEXT NOT NULL,
    PRIMARY KEY(artifact_id, num));
CREATE TABLE IF NOT EXISTS aliases(
    artifact_id INTEGER NOT NULL, alias TEXT NOT NULL, num INTEGER NOT NULL,
    PRIMARY KEY(artifact_id, alias));
CREATE TABLE IF NOT EXISTS drafts(
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, artifact TEXT NOT NULL,
    type TEXT NOT NULL, parent INTEGER, base_root TEXT, created REAL NOT NULL,
    next_id INTEGER NOT NULL DEFAULT 1, outcome TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS draft_dirs(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, base TEXT,
    PRIMARY KEY(draft_id, dir_id));
CREATE TABLE IF NOT EXISTS draft_entries(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, name BLOB NOT NULL,
    rec BLOB NOT NULL, PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS filecache(
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT);
CREATE TABLE IF NOT EXISTS pending(
    id INTEGER PRIMARY KEY, artifact TEXT NOT NULL, type TEXT NOT NULL,
    distributed_id TEXT NOT NULL, parent INTEGER, base_root TEXT,
    created REAL NOT NULL, finished INTEGER,
    UNIQUE(artifact, distributed_id));
CREATE TABLE IF NOT EXISTS pending_rows(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, path BLOB NOT NULL,
    rec BLOB NOT NULL, PRIMARY KEY(pending_id, writer, path));
CREATE INDEX IF NOT EXISTS pending_rows_path ON pending_rows(pending_id, path);
CREATE TABLE IF NOT EXISTS pending_writers(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, label TEXT, updated REAL NOT NULL,
    PRIMARY KEY(pending_id, writer));
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, name TEXT, job_type TEXT, grp TEXT, config TEXT NOT NULL DEFAULT '{}',
    command TEXT, cwd TEXT, host TEXT, user TEXT, pid INTEGER, started REAL NOT NULL, ended REAL,
    outcome TEXT NOT NULL DEFAULT 'running', exit_status INTEGER);
CREATE TABLE IF NOT EXISTS run_inputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_inputs_v ON run_inputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_outputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num INTEGER NOT NULL, how TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_outputs_v ON run_outputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_upserts(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, distributed_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, distributed_id));
"""

T0 = 1_650_000_000_000_000_000
BIG_0_1 = bytes(range(256)) * (6 * 1024)  # 1.5 MiB: 0.1 had no chunk lists


def make_store_0_1(path: str, busy: str | None = None) -> dict:
    """A store as artfs 0.1 left it: format-1 trees, schema 1, two versions of "ds" and an alias.
    ``busy``: "draft" or "pending" adds an unfinished one of those."""
    os.makedirs(path, mode=0o700)
    for d in ("objects", "tmp", "drafts", "logs"):
        os.makedirs(os.path.join(path, d), mode=0o700)
    with open(os.path.join(path, "artfs-store"), "w") as f:
        f.write("artfs store 1\n")

    def obj(data: bytes) -> bytes:
        d = b3(data)
        p = os.path.join(path, "objects", d.hex()[:2], d.hex()[2:])
        os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, 0o600)
        return d

    def tree1(rows) -> tuple[bytes, bytes, int, int]:
        """A format-1 tree: (digest, identity, files below, bytes below)."""
        rows = sorted(rows)
        data = b"\x01" + msgpack.packb(rows, use_bin_type=True)
        ents = fmt.decode_tree(data)
        nfiles = sum(r[7][2] if r[1] == DIR else int(r[1] == FILE) for r in rows)
        nbytes = sum(r[5] for r in rows if r[1] in (DIR, FILE))
        return obj(data), fmt.tree_identity(ents), nfiles, nbytes

    obj(b"\x01\x90")  # 0.1's Store.init wrote its empty tree
    files = {"a.txt": b"alpha\n", "d/b.bin": BIG_0_1, "d/e/c.txt": b"deep\n", "exe.sh": b"#!/bin/sh\n"}
    for data in files.values():
        obj(data)
    e_tree, e_id, e_n, e_b = tree1([[b"c.txt", FILE, 0o644, 0, 0, 5, T0, b3(b"deep\n")]])
    d_tree, d_id, d_n, d_b = tree1([[b"b.bin", FILE, 0o600, 0, 0, len(BIG_0_1), T0, b3(BIG_0_1)],
                                    [b"e", DIR, 0o755, 0, 0, e_b, T0, [e_tree, e_id, e_n]]])
    base = [[b"a.txt", FILE, 0o644, 1000, 1000, 6, T0 + 1, b3(b"alpha\n")],
            [b"d", DIR, 0o750, 0, 0, d_b, T0, [d_tree, d_id, d_n]],
            [b"link", SYMLINK, 0o777, 0, 0, 5, T0, b"a.txt"]]
    v0 = tree1(base)
    v1 = tree1(base + [[b"exe.sh", FILE, 0o755, 0, 0, 10, T0, b3(b"#!/bin/sh\n")]])
    db = sqlite3.connect(os.path.join(path, "meta.sqlite"))
    db.executescript(SCHEMA_0_1)
    db.execute("INSERT INTO info VALUES('schema', '1')")
    db.execute("INSERT INTO artifacts VALUES(1, 'ds', 'dataset', 'made by 0.1', 1650000000.0)")
    for num, (root, ident, n, nb) in enumerate((v0, v1)):
        db.execute("INSERT INTO versions VALUES(1, ?, ?, ?, ?, ?, ?, '{\"k\": 1}', ?, ?, 'single')",
                   (num, root.hex(), ident.hex(), num - 1 if num else None, 1650000000.0 + num, f"v{num} by 0.1", n,
                    nb))
    db.execute("INSERT INTO aliases VALUES(1, 'latest', 1)")
    db.execute("INSERT INTO aliases VALUES(1, 'prod', 0)")
    db.execute("INSERT INTO filecache VALUES('/old/path', 1, 2, 3, 4, 5, ?)", (b3(b"alpha\n").hex(),))
    if busy == "draft":
        db.execute("INSERT INTO drafts(key, artifact, type, parent, base_root, created) "
                   "VALUES('draft:ds', 'ds', 'dataset', 1, ?, 1650000001.0)", (v1[0].hex(),))
        db.execute("INSERT INTO draft_dirs VALUES(1, 0, ?)", (v1[0].hex(),))
    elif busy == "pending":
        db.execute("INSERT INTO pending(artifact, type, distributed_id, parent, base_root, created) "
                   "VALUES('ds', 'dataset', 'group-1', 1, ?, 1650000001.0)", (v1[0].hex(),))
    db.commit()
    db.close()
    return {"files": files, "v1_root": v1[0], "v1_ident": v1[1]}


def test_a_store_made_by_0_1_is_migrated_on_open(tmp_path, mktree):
    path = str(tmp_path / "old-store")
    made = make_store_0_1(path)
    s = Store.open(path)
    assert s.meta.db.execute("SELECT value FROM info WHERE key='schema'").fetchone()[0] == "2"
    v1 = repo.resolve(s, "ds")
    assert (v1.num, v1.parent, v1.root, v1.message, v1.metadata) == (1, 0, made["v1_root"], "v1 by 0.1", {"k": 1})
    assert repo.resolve(s, "ds:prod").num == 0
    assert s.meta.artifact("ds")["description"] == "made by 0.1"
    for rel, data in made["files"].items():
        assert read(s, v1, rel) == data
    assert repo.lookup(s, v1, "link").target == b"a.txt"
    a = repo.lookup(s, v1, "a.txt")
    assert (a.uid, a.mtime_ns, a.atime_ns, a.xattrs, a.hlid, a.chunks) == (1000, T0 + 1, T0 + 1, (), None, None)
    root = v1.root_entry()  # 0.1 kept no metadata of the root
    assert (root.kind, root.mode, root.nfiles, root.size) == (DIR, 0o755, v1.file_count, v1.total_bytes)
    for d, where in repo.mark(s, []).items():  # every object a version names is there and sound
        if d != fmt.EMPTY_TREE_DIGEST:  # see the next test
            assert s.objects.verify(d), where
    # the same content put again is unchanged: identity did not change with the format
    src = mktree(tmp_path / "src", {k: v for k, v in made["files"].items()} | {"link": ("symlink", "a.txt")})
    os.chmod(os.path.join(src, "exe.sh"), 0o755)
    v, unchanged = put(s, "ds", src)
    assert unchanged and v.num == 1
    # a draft of a 0.1 version commits the next number, sharing the untouched 0.1 trees
    d = repo.open_draft(s, "ds")
    write_scratch(d, "new.txt", b"written after the upgrade").close()
    r = repo.commit_draft(s, d)
    repo.finish_commit(d, r)
    v2 = repo.resolve(s, "ds")
    assert (v2.num, v2.parent) == (2, 1)
    assert repo.lookup(s, v2, "d").digest == repo.lookup(s, v1, "d").digest  # still format 1, still shared
    assert s.objects.get(v2.root)[:1] == b"\x02" and s.objects.get(repo.lookup(s, v2, "d").digest)[:1] == b"\x01"
    d.discard()
    assert repo.export(s, v1, str(tmp_path / "out")) == 4
    assert (tmp_path / "out" / "d" / "b.bin").read_bytes() == BIG_0_1


def test_a_store_migrated_from_0_1_passes_fsck_and_gc(tmp_path, fsck_clean):
    path = str(tmp_path / "old-store")
    made = make_store_0_1(path)
    s = Store.open(path)
    try:
        fsck_clean(s)
        removed, _ = repo.gc(s)
        assert removed <= 1  # at most 0.1's own empty tree, which nothing names
    finally:
        s = Store.open(path)
        for rel, data in made["files"].items():  # whatever happened, every version is whole
            assert read(s, repo.resolve(s, "ds"), rel) == data


@pytest.mark.parametrize("busy", ["draft", "pending"])
def test_a_store_made_by_0_1_with_work_in_progress_is_refused(tmp_path, busy):
    path = str(tmp_path / "old-store")
    make_store_0_1(path, busy=busy)
    db_file = os.path.join(path, "meta.sqlite")
    with pytest.raises(SchemaMismatch) as exc:
        Store.open(path)
    msg = str(exc.value)
    assert "artfs 0.1" in msg and "drafts or pending versions" in msg and "commit or discard" in msg
    # nothing was migrated: the store is still 0.1's, for 0.1 to finish the work
    db = sqlite3.connect(db_file)
    try:
        assert db.execute("SELECT value FROM info WHERE key='schema'").fetchone()[0] == "1"
        assert "root_meta" not in [r[1] for r in db.execute("PRAGMA table_info(versions)")]
        assert db.execute(f"SELECT COUNT(*) FROM {'drafts' if busy == 'draft' else 'pending'}").fetchone()[0] == 1
    finally:
        db.close()
    with pytest.raises(SchemaMismatch):
        Store.open(path)  # and again: refused every time, never half-migrated
    # once 0.1 finished the work, the store migrates
    db = sqlite3.connect(db_file)
    db.execute("DELETE FROM drafts" if busy == "draft" else "UPDATE pending SET finished=1")
    db.commit()
    db.close()
    s = Store.open(path)
    assert repo.resolve(s, "ds").num == 1
