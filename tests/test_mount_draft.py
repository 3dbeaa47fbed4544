"""A draft mount behaves like a local disk for programs that know nothing of artfs.

Each program's result is checked independently of artfs (its own integrity
check, a checksum, or a comparison with a plain directory), then committed
and read back through a read-only mount of the new version.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess

import pytest

from mounts import Mounted, artfs, mstore, needs_fuse, sh, tree_snapshot  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.mount, pytest.mark.timeout(300)]


def make_seed(root) -> str:
    root = str(root)
    os.makedirs(os.path.join(root, "data", "sub"))
    os.makedirs(os.path.join(root, "empty"))
    with open(os.path.join(root, "data", "a.txt"), "w") as f:
        f.write("alpha\n" * 100)
    with open(os.path.join(root, "data", "sub", "b.bin"), "wb") as f:
        f.write(os.urandom(300_000))
    with open(os.path.join(root, "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(root, "run.sh"), 0o755)
    os.symlink("data/a.txt", os.path.join(root, "link"))
    return root


@pytest.fixture
def draft(mstore, tmp_path):
    seed = make_seed(tmp_path / "seed")
    artfs(mstore, "put", "ds", seed)
    with Mounted(mstore, "ds:draft", tmp_path / "d") as m:
        m.seed = seed
        m.tmp = tmp_path
        m.store = mstore
        yield m


def committed_equals(m, ref: str, expected_dir: str) -> None:
    """Mount ``ref`` read-only and compare it with a plain directory."""
    with Mounted(m.store, ref, m.tmp / f"ro-{ref.replace(':', '-')}") as ro:
        assert tree_snapshot(ro.mnt) == tree_snapshot(expected_dir)


def test_control_dir_hidden_and_reserved(draft):
    assert ".artfs" not in os.listdir(draft.mnt)
    assert open(draft.path(".artfs", "ref")).read().strip() == "ds:draft (parent ds:v0)"
    assert draft.status() == []
    for fn in (lambda: os.mkdir(draft.path(".artfs")), lambda: os.rename(draft.path("run.sh"), draft.path(".artfs")),
               lambda: os.rmdir(draft.path(".artfs")), lambda: open(draft.path(".artfs", "new"), "w")):
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno in (errno.EPERM, errno.EACCES, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR)
    assert "run.sh" in os.listdir(draft.mnt)


def test_shell_edits_status_commit(draft):
    d = draft.path
    sh(f"echo more >> {d('data/a.txt')}")
    sh(f"rm {d('data/sub/b.bin')}")
    sh(f"echo new > {d('new.txt')}")
    sh(f"cp {d('run.sh')} {d('run2.sh')}")
    assert draft.status() == ["M data/a.txt", "D data/sub/b.bin", "A new.txt", "A run2.sh"]
    out = draft.commit("edits")
    assert out == "ds:v1"
    assert draft.status() == []
    assert open(d(".artfs", "ref")).read().strip() == "ds:draft (parent ds:v1)"
    # identical content again: no new version
    sh(f"echo new > {d('new.txt')}")
    assert draft.status() == []
    assert draft.commit() == "ds:v1 (unchanged)"
    # the mount goes on: more edits, another commit, through the CLI wrappers
    sh(f"echo again >> {d('new.txt')}")
    assert artfs(draft.store, "status", draft.mnt).stdout == "M new.txt\n"
    assert artfs(draft.store, "commit", draft.mnt, "-m", "third").stdout.strip() == "ds:v2"
    log = artfs(draft.store, "log", "ds").stdout
    assert "third" in log and "edits" in log
    committed_equals(draft, "ds:v2", draft.mnt)


def test_cp_a_rsync_tar_roundtrip(draft, tmp_path):
    src = make_seed(tmp_path / "src2")
    # old, distinct times: rsync skips setting a time that is within the same second as "now"
    for i, (dirpath, dirs, files) in enumerate(sorted(os.walk(src), reverse=True)):
        for j, name in enumerate(files):
            t = 1_600_000_000_123_456_789 + i * 1_000_000_007 + j
            os.utime(os.path.join(dirpath, name), ns=(t, t))
        t = 1_500_000_000_987_654_321 + i * 1_000_000_007
        os.utime(dirpath, ns=(t, t))
    sh(f"cp -a {src} {draft.path('cpa')}")
    assert tree_snapshot(draft.path("cpa"), times=True) == tree_snapshot(src, times=True)
    sh(f"rsync -a {src}/ {draft.path('rs')}/")
    out = tmp_path / "rsync-out"
    sh(f"rsync -a -c {draft.path('rs')}/ {out}/")
    assert tree_snapshot(str(out), times=True) == tree_snapshot(src, times=True)
    sh(f"tar --format=posix -C {src} -cf {tmp_path}/a.tar . && mkdir {draft.path('tx')} && tar -C {draft.path('tx')} -xpf {tmp_path}/a.tar")
    sh(f"tar --format=posix -C {draft.path('tx')} -cf {tmp_path}/b.tar . && mkdir {tmp_path}/tx2 && tar -C {tmp_path}/tx2 -xpf {tmp_path}/b.tar")
    assert tree_snapshot(str(tmp_path / "tx2"), times=True) == tree_snapshot(src, times=True)
    assert draft.commit() == "ds:v1"
    with Mounted(draft.store, "ds:v1", tmp_path / "ro") as ro:
        assert tree_snapshot(ro.path("cpa"), times=True) == tree_snapshot(src, times=True)
        assert tree_snapshot(ro.path("tx"), times=True) == tree_snapshot(src, times=True)


def test_git_repository(draft):
    repo = draft.path("proj")
    os.mkdir(repo)
    sh("git init -q && git config user.email t@e && git config user.name t && "
       "for i in $(seq 1 20); do echo line $i > f$i.txt; done && git add -A && git commit -qm one && "
       "sed -i s/line/LINE/ f3.txt && git commit -qam two && git gc -q && git fsck --strict", cwd=repo)
    assert sh("git log --oneline | wc -l", cwd=repo).stdout.strip() == "2"
    assert draft.commit() == "ds:v1"
    with Mounted(draft.store, "ds:v1", draft.tmp / "ro") as ro:
        sh(f"git clone -q {ro.path('proj')} {draft.tmp}/clone && cd {draft.tmp}/clone && git fsck --strict")


def test_sqlite_wal_integrity(draft):
    db = draft.path("db.sqlite")
    sql = ("PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER PRIMARY KEY, y TEXT);"
           " WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<5000)"
           " INSERT INTO t(y) SELECT hex(randomblob(50)) FROM c;"
           " DELETE FROM t WHERE x % 3 = 0; PRAGMA wal_checkpoint(TRUNCATE);")
    sh(f"sqlite3 {db} '{sql}'")
    assert sh(f"sqlite3 {db} 'PRAGMA integrity_check; SELECT count(*) FROM t;'").stdout.split() == ["ok", "3334"]
    assert draft.commit() == "ds:v1"
    with Mounted(draft.store, "ds:v1", draft.tmp / "ro") as ro:
        shutil.copy(ro.path("db.sqlite"), draft.tmp / "copy.sqlite")
        assert sh(f"sqlite3 {draft.tmp}/copy.sqlite 'PRAGMA integrity_check'").stdout.strip() == "ok"


def test_atomic_saves_sed_appends_sparse(draft):
    p = draft.path("data", "a.txt")
    for i in range(50):  # an editor's save: temp file, fsync, rename over
        tmp = draft.path("data", f".a.txt.swp{i}")
        with open(tmp, "w") as f:
            f.write(f"version {i}\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, p)
    assert open(p).read() == "version 49\n"
    assert draft.status() == ["M data/a.txt"]
    sh(f"sed -i s/version/release/ {p}")
    assert open(p).read() == "release 49\n"
    for i in range(100):
        sh(f"echo {i} >> {draft.path('log.txt')}") if i % 25 == 0 else open(draft.path("log.txt"), "a").write(f"{i}\n")
    assert open(draft.path("log.txt")).read() == "".join(f"{i}\n" for i in range(100))
    sh(f"dd if=/dev/zero of={draft.path('sparse')} bs=4096 count=1 seek=1000 status=none")
    st = os.stat(draft.path("sparse"))
    assert st.st_size == 1001 * 4096
    with open(draft.path("sparse"), "rb") as f:
        f.seek(500 * 4096)
        assert f.read(4096) == b"\0" * 4096
    sh(f"dd if=/dev/urandom of={draft.path('data/sub/b.bin')} bs=1000 count=1 seek=10 conv=notrunc status=none")
    assert os.stat(draft.path("data/sub/b.bin")).st_size == 300_000
    assert draft.commit() == "ds:v1"
    committed_equals(draft, "ds:v1", draft.mnt)


def test_mv_dirs_rm_rf_chmod_utime_symlinks(draft):
    d = draft.path
    os.rename(d("data"), d("moved"))  # a directory from the parent version
    os.rename(d("empty"), d("moved", "sub", "empty2"))
    os.mkdir(d("x"))
    os.rename(d("moved", "sub"), d("x", "sub"))
    os.chmod(d("run.sh"), 0o700)
    os.utime(d("moved", "a.txt"), ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    os.symlink("../run.sh", d("x", "ln"))
    assert os.readlink(d("x", "ln")) == "../run.sh"
    assert open(d("x", "ln")).read().startswith("#!/bin/sh")
    assert os.stat(d("moved", "a.txt")).st_mtime_ns == 1_500_000_000_000_000_001
    assert stat.S_IMODE(os.stat(d("run.sh")).st_mode) == 0o700
    status = draft.status()
    assert "A x/sub/b.bin" in status and "D data/sub/b.bin" in status
    assert draft.commit("moves") == "ds:v1"
    sh(f"rm -rf {d('x')} {d('moved')}")
    assert sorted(os.listdir(draft.mnt)) == ["link", "run.sh"]
    assert draft.commit() == "ds:v2"
    committed_equals(draft, "ds:v2", draft.mnt)
    with Mounted(draft.store, "ds:v1", draft.tmp / "v1") as ro:
        assert os.stat(ro.path("moved", "a.txt")).st_mtime_ns == 1_500_000_000_000_000_001
        assert stat.S_IMODE(os.stat(ro.path("run.sh")).st_mode) == 0o700


def test_draft_persists_across_remount_with_hardlinks_and_xattrs(mstore, tmp_path):
    seed = make_seed(tmp_path / "seed")
    artfs(mstore, "put", "ds", seed)
    with Mounted(mstore, "ds:draft", tmp_path / "d") as m:
        with open(m.path("kept.txt"), "w") as f:
            f.write("kept")
        os.remove(m.path("run.sh"))
        os.link(m.path("kept.txt"), m.path("hard"))
        os.setxattr(m.path("kept.txt"), "user.k", b"v")
        ino = os.stat(m.path("kept.txt")).st_ino
        assert os.stat(m.path("hard")).st_ino == ino and os.stat(m.path("hard")).st_nlink == 2
        big = os.urandom(3_000_000)
        with open(m.path("big"), "wb") as f:
            f.write(big)
    with Mounted(mstore, "ds:draft", tmp_path / "d") as m:
        assert open(m.path("kept.txt")).read() == "kept"
        assert open(m.path("big"), "rb").read() == big
        assert m.status() == ["A big", "A hard", "A kept.txt", "D run.sh"]
        # one inode, the same number after a remount, with its xattr
        assert os.stat(m.path("kept.txt")).st_ino == os.stat(m.path("hard")).st_ino == ino
        assert os.getxattr(m.path("hard"), "user.k") == b"v"
        listed = {r["draft"]: r for r in __import__("json").loads(artfs(mstore, "drafts", "--json").stdout)}
        assert listed["ds:draft"]["mounted"] and listed["ds:draft"]["changes"] == 4
        refused = artfs(mstore, "discard", "ds:draft", check=False)
        assert refused.returncode == 2 and "in use" in refused.stderr
        os.statvfs(m.mnt)
        assert m.commit() == "ds:v1"


def test_more_files_than_the_daemon_may_open_descriptors(mstore, tmp_path):
    """The kernel keeps the inode of every file a `cp -r` made; the daemon must not keep a
    descriptor per file for them, or creates fail with EMFILE after RLIMIT_NOFILE files (it did:
    a 100k-file draft stopped at 20k).  The daemon here may open 256 descriptors; 1,000 files are
    created, written, committed and read back."""
    from mounts import ARTFS, daemon_pid, force_unmount, is_mounted

    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    subprocess.run(["prlimit", "--nofile=256:256", *ARTFS, "--store", mstore, "mount", "many:draft", mnt],
                   check=True, capture_output=True, timeout=60)
    pid = daemon_pid(mnt)
    try:
        assert is_mounted(mnt)
        for i in range(1000):
            with open(os.path.join(mnt, f"f{i:04d}"), "wb") as f:
                f.write(b"%d\n" % i)
        with open(os.path.join(mnt, ".artfs", "commit"), "w") as f:
            f.write("many")
        with open(os.path.join(mnt, ".artfs", "commit")) as f:
            assert f.read().strip() == "many:v0"
    finally:
        force_unmount(mnt, pid)
    out = artfs(mstore, "ls", "many:v0").stdout.splitlines()
    assert len(out) == 1000
    assert artfs(mstore, "cat", "many:v0", "f0999").stdout == "999\n"
