"""Power cuts at chosen points, each where a durability step of DESIGN §5 matters.

Each test runs the store in this process on crashfs (tests/crashfs.py: a FUSE layer that drops
what was not fsynced when the power is cut), cuts at one point and checks the dump with artfs'
own fsck -- deterministic, unlike the sweeps of test_powerloss.py.  Each was written against a
mutation the sweeps did not catch (named in its comment): delete that step and the test fails.
The first checks the other barrier path: on a local disk a barrier is one syncfs(2) (crashfs,
being FUSE, takes the per-file fsync path everywhere else).
"""
from __future__ import annotations

import os

import pytest
from crashfs import CrashFS
from mounts import needs_fuse

from artfs import repo
from artfs.repo import staging
from artfs.storage import durable
from artfs.storage import format as fmt
from artfs.storage.format import FILE
from artfs.storage.hashing import digest as blake
from artfs.storage.store import Store


def _write(path: str, data: bytes, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _dir_fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsck_of_dump(dump_store: str) -> list[str]:
    s = Store.open(dump_store)
    try:
        return repo.fsck(s)
    finally:
        s.meta.close()


# -- the syncfs path of a barrier does nothing ------------------------------------------
#
# Every test store on the local disk (ext4 here) takes the syncfs path; the power-loss tests run
# on crashfs, a FUSE file system, hence on the fsync path.  Nothing checked that the syncfs path
# syncs anything.

def test_barriers_on_the_syncfs_path_call_syncfs_on_the_store(tmp_path, monkeypatch):
    real = durable._libc
    calls: list[str] = []

    class Spy:
        def syncfs(self, fd):
            calls.append(os.readlink(f"/proc/self/fd/{fd}"))
            return real.syncfs(fd)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(durable, "_libc", Spy())
    monkeypatch.setenv("ARTFS_DURABILITY", "syncfs")
    path = str(tmp_path / "store")
    s = Store.init(path)
    try:
        assert s.objects.durability.mode == "syncfs"
        calls.clear()
        src = tmp_path / "src"
        src.mkdir()
        (src / "small").write_bytes(b"small\n")
        (src / "big").write_bytes(os.urandom(fmt.CHUNK + 1000))
        v, _ = repo.put_dir(s, "ds", str(src))
        # a batch with new objects: one barrier for their bytes, one for their names
        assert len(calls) >= 2, f"put made {len(calls)} syncfs calls on the syncfs path"
        assert all(c == path or c.startswith(path + os.sep) for c in calls), calls
    finally:
        s.meta.close()


# -- a replaced scratch file is deleted before the change that replaced it is durable --
#
# What a draft mount does: `rm f` (a change, not durable yet: f's scratch file is dead), then a
# program fsyncs another new file -- the fsync handler syncs the scratch directory first, then
# the metadata.  A power cut between the two must not leave the durable draft naming a scratch
# file whose unlink was made durable.

@needs_fuse
@pytest.mark.timeout(120)
def test_a_replaced_scratch_file_is_kept_until_its_change_is_durable(tmp_path):
    with CrashFS(tmp_path / "cfs") as fs:
        path = os.path.join(fs.path, "store")
        s = Store.init(path)
        try:
            d = repo.open_draft(s, "ds")
            name, sf = d.new_scratch()
            sf.pwrite(b"durable bytes\n", 0)
            d.commit(d.plan_create((b"f",), FILE, 0o644, os.getuid(), os.getgid(), scratch=name, size=14))
            sf.close()
            fs.sync()  # the draft naming f's scratch file is durable, and so is the file
            d.commit(d.plan_remove((b"f",), "any"))  # not durable yet
            d.sync_scratch_dir()  # a mount's fsync of another new file: this step comes first ...
            fs.crash()  # ... and the power goes before the metadata is synced
            dump = fs.dump(tmp_path / "dump")
        finally:
            s.meta.close()
    problems = _fsck_of_dump(os.path.join(dump, "store"))
    assert not [p for p in problems if "missing" in p], problems


# -- a batch that reuses another writer's object does not sync that object's directory -
#
# Another writer renamed the object into place and was killed before its directory barrier; this
# put finds the object sound, reuses it and reports success.  After a power cut the version must
# still have the object.

def _reused_object_scenario(tmp_path, subdir_durable: bool) -> list[str]:
    data = b"small content two writers store\n"
    with CrashFS(tmp_path / "cfs") as fs:
        path = os.path.join(fs.path, "store")
        s = Store.init(path)
        try:
            p = s.objects.path(blake(data))
            # every other objects/XX directory exists (a store in use): this put's own new objects
            # land in directories that exist, so nothing else syncs objects/ itself
            for i in range(256):
                sub = os.path.join(s.objects.obj_dir, f"{i:02x}")
                if sub != os.path.dirname(p) or subdir_durable:
                    os.makedirs(sub, mode=0o700, exist_ok=True)
            fs.sync()  # the empty store is durable (and the object's subdirectory, if made)
            # the other writer: bytes fsynced, renamed into place, killed before the directory barrier
            os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
            tmp = os.path.join(path, "tmp", "other-writer")
            _write(tmp, data, fsync=True)
            os.rename(tmp, p)
            src = tmp_path / "src"
            src.mkdir()
            (src / "f.txt").write_bytes(data)
            v, _ = repo.put_dir(s, "ds", str(src))  # returned: ds:v0 is promised
            assert v.num == 0
            fs.crash()
            dump = fs.dump(tmp_path / "dump")
        finally:
            s.meta.close()
    dumped = os.path.join(dump, "store")
    s2 = Store.open(dumped)
    try:
        assert repo.latest(s2, "ds") is not None, "put returned ds:v0; after the power cut it is gone"
    finally:
        s2.meta.close()
    return _fsck_of_dump(dumped)


@needs_fuse
@pytest.mark.timeout(120)
def test_a_put_that_reuses_an_object_makes_its_name_durable(tmp_path):
    problems = _reused_object_scenario(tmp_path, subdir_durable=True)
    assert problems == [], problems


@needs_fuse
@pytest.mark.timeout(120)
def test_a_put_that_reuses_an_object_in_a_new_subdirectory_makes_its_name_durable(tmp_path):
    """The same when the other writer also created the object's objects/XX directory: that
    directory's own name in objects/ must be durable too."""
    problems = _reused_object_scenario(tmp_path, subdir_durable=False)
    assert problems == [], problems


# -- gc deletes what the durable metadata still names ------------------------------------
#
# A draft names object X durably; a later change drops it (not durable yet); gc runs and deletes X.
# Then another writer's batch syncs X's objects/XX directory (its own new object lives there),
# which makes X's unlink durable, and the power goes.  gc must have made the metadata it followed
# durable first, else the draft after the cut names a missing X.

@needs_fuse
@pytest.mark.timeout(120)
def test_gc_makes_the_metadata_it_follows_durable_before_deleting(tmp_path):
    x = b"only the draft names this\n"
    sub = blake(x)[:1]
    y = next(c for c in (b"neighbour %d\n" % i for i in range(100000)) if blake(c)[:1] == sub)
    srcfile = tmp_path / "x.txt"
    srcfile.write_bytes(x)
    with CrashFS(tmp_path / "cfs") as fs:
        path = os.path.join(fs.path, "store")
        s = Store.init(path)
        try:
            d = repo.open_draft(s, "ds")
            staging.add_file(s, d, (b"x.txt",), str(srcfile))
            fs.sync()  # the draft naming X is durable
            d.remove((b"x.txt",))  # not durable yet
            repo.gc(s)
            assert not os.path.exists(s.objects.path(blake(x)))
            with s.writing(), s.objects.batch() as b:  # another writer: Y lands next to X
                b.put_bytes(y)
            fs.crash()
            dump = fs.dump(tmp_path / "dump")
        finally:
            s.meta.close()
    problems = _fsck_of_dump(os.path.join(dump, "store"))
    assert not [p for p in problems if "missing" in p], problems


# -- upsert_rows' transaction is not durable on its own ---------------------------------
#
# (Every caller today follows it with meta.durable() before reporting, so the mutant is
# equivalent end to end; this pins the MetaStore contract "the upsert is durable when it returns".)

@needs_fuse
@pytest.mark.timeout(120)
def test_upsert_rows_is_durable_when_it_returns(tmp_path):
    with CrashFS(tmp_path / "cfs") as fs:
        path = os.path.join(fs.path, "store")
        s = Store.init(path)
        try:
            fs.sync()
            rec = fmt.encode_rec(fmt.Entry(b"a", fmt.SYMLINK, 0o777, target=b"t"))
            s.meta.upsert_rows("ds", "dataset", "g1", None, None, "w1", "writer one", {b"a": (rec, b"k", False)})
            fs.crash()
            dump = fs.dump(tmp_path / "dump")
        finally:
            s.meta.close()
    s2 = Store.open(os.path.join(dump, "store"))
    try:
        assert s2.meta.pending("ds", "g1") is not None, "upsert_rows returned; after the power cut it is gone"
    finally:
        s2.meta.close()
