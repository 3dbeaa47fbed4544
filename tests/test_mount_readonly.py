"""Read-only mounts of committed versions, through a real FUSE mount (DESIGN.md §4, §5, §8).

One store and one mount of ``ds:v0`` serve most of the module: a table of
write attempts that must all fail with EROFS and change nothing, then reads
that must behave like a local disk (find, stat, checksums, tar, cp -a, mmap).
Separate short mounts cover ``ds`` (latest), an alias resolved at mount time,
a corrupt object (EIO, fsck) and the mount command's errors.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import random
import stat
import subprocess

import pytest

from mounts import Mounted, artfs, is_mounted, mstore, needs_fuse, sh, tree_snapshot  # noqa: F401 (mstore: fixture)

pytestmark = [needs_fuse, pytest.mark.mount]

BASE_NS = 1_600_000_000_123_456_789
OWNER = (1234, 2345)


# -- the source tree -----------------------------------------------------------------

def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


SPEC = {
    # path: (content, mode)  |  ("symlink", target)  |  None for a directory (mode given in DIR_MODES)
    "a.txt": (b"alpha alpha alpha\n", 0o644),
    "run.sh": (b"#!/bin/sh\necho run\n", 0o755),
    "secret.key": (b"do not look\n", 0o600),
    "owned.dat": (b"owned by someone else\n", 0o640),
    "empty.txt": (b"", 0o644),
    "big.bin": (_rand(1, 4 * 1024 * 1024 + 123), 0o644),
    "mid.bin": (_rand(2, 300 * 1024), 0o644),
    "exact128k.bin": (_rand(3, 128 * 1024), 0o444),
    "name with spaces.txt": (b"spaces\n", 0o644),
    "ünïcode.txt": ("ünïcode\n".encode(), 0o644),
    "sub/one.txt": (b"one\n", 0o644),
    "sub/deep/er/leaf.txt": (b"leaf\n" * 1000, 0o664),
    "sub/deep/er/link_up": ("symlink", "../../one.txt"),
    "sub/tool": (_rand(4, 70_000), 0o755),
    "private/note.txt": (b"note\n", 0o600),
    "emptydir": None,
    "link": ("symlink", "a.txt"),
    "dangling": ("symlink", "nowhere/at/all"),
    "abs": ("symlink", "/etc/hostname"),
}
DIR_MODES = {"private": 0o700, "sub/deep": 0o750}


def build_tree(root: str, spec: dict = SPEC, base_ns: int = BASE_NS) -> str:
    os.makedirs(root)
    for rel, what in spec.items():
        p = os.path.join(root, rel)
        if what is None:
            os.makedirs(p, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if what[0] == "symlink":
            os.symlink(what[1], p)
        else:
            with open(p, "wb") as f:
                f.write(what[0])
            os.chmod(p, what[1])
    os.chown(os.path.join(root, "owned.dat"), *OWNER)
    os.lchown(os.path.join(root, "link"), *OWNER)
    for rel, mode in DIR_MODES.items():
        os.chmod(os.path.join(root, rel), mode)
    # distinct nanosecond mtimes, deepest first so a directory's own time sticks
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            paths.append(os.path.join(dirpath, name))
    paths.sort(key=lambda p: (-p.count(os.sep), p))
    for i, p in enumerate(paths):
        t = base_ns + i * 1_000_000_007
        os.utime(p, ns=(t, t), follow_symlinks=False)
    return root


def rel_paths(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def ls_json(store: str, ref: str, path: str = "") -> list[dict]:
    args = ["ls", "--json", ref] + ([path] if path else [])
    return json.loads(artfs(store, *args).stdout)


def ls_recursive(store: str, ref: str) -> dict:
    """path -> ls --json record, for every entry of a version (through the CLI)."""
    out, todo = {}, [""]
    while todo:
        d = todo.pop()
        for rec in ls_json(store, ref, d):
            p = f"{d}/{rec['name']}" if d else rec["name"]
            out[p] = rec
            if rec["kind"] == "dir":
                todo.append(p)
    return out


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A store with ds:v0 (SPEC), ds:v1 (SPEC changed), alias ``best`` -> v0; ds:v0 mounted."""
    e = Env()
    base = tmp_path_factory.mktemp("ro")
    e.tmp = str(base)
    e.store = str(base / "store")
    e.src = build_tree(str(base / "src"))
    spec1 = dict(SPEC)
    spec1["a.txt"] = (b"alpha v1\n", 0o644)
    spec1["added_in_v1.txt"] = (b"new in v1\n", 0o644)
    del spec1["mid.bin"]
    e.src1 = build_tree(str(base / "src1"), spec1, BASE_NS + 17)
    artfs(e.store, "init")
    assert artfs(e.store, "put", "ds", e.src, "-m", "first").stdout.strip() == "ds:v0"
    assert artfs(e.store, "put", "ds", e.src1, "-m", "second").stdout.strip() == "ds:v1"
    artfs(e.store, "alias", "ds:v0", "best")
    # material for write attempts from outside the mount
    e.extra = str(base / "extra")
    os.makedirs(os.path.join(e.extra, "newdir"))
    with open(os.path.join(e.extra, "newdir", "f.txt"), "w") as f:
        f.write("from outside\n")
    with open(os.path.join(e.extra, "a.txt"), "w") as f:
        f.write("replacement\n")
    e.tar = str(base / "new.tar")
    sh(f"tar -C {e.extra} -cf {e.tar} .")
    e.out = str(base / "out")
    os.makedirs(e.out)
    e.mnt = str(base / "mnt")
    e.mount = Mounted(e.store, "ds:v0", e.mnt)
    e.mount.__enter__()
    try:
        e.baseline = tree_snapshot(e.mnt, times=True)
        e.ls_root = artfs(e.store, "ls", "--json", "ds:v0").stdout
        e.log = artfs(e.store, "log", "--json", "ds").stdout
        yield e
    finally:
        e.mount.__exit__(None, None, None)
        assert not is_mounted(e.mnt)
        p = artfs(e.store, "fsck", check=False)
        assert p.returncode == 0, f"fsck after module: {p.stdout}{p.stderr}"


# -- (a) every write fails with EROFS and changes nothing ---------------------------------

SHELL_WRITES = {
    "touch_new": "touch {m}/new.txt",
    "touch_existing": "touch {m}/a.txt",
    "touch_dir": "touch {m}/sub",
    "touch_h_symlink": "touch -h {m}/link",
    "redirect_existing": "echo hi > {m}/a.txt",
    "redirect_new": "echo hi > {m}/sub/new.txt",
    "append": "echo hi >> {m}/a.txt",
    "tee": "echo hi | tee {m}/tee.txt",
    "rm_file": "rm {m}/a.txt",
    "rm_f_symlink": "rm -f {m}/link",
    "rm_r_dir": "rm -r {m}/sub",
    "rmdir_empty": "rmdir {m}/emptydir",
    "mkdir": "mkdir {m}/newdir",
    "mkdir_p": "mkdir -p {m}/sub/x/y",
    "mv_file": "mv {m}/a.txt {m}/b.txt",
    "mv_dir": "mv {m}/sub {m}/sub2",
    "mv_into_subdir": "mv {m}/a.txt {m}/sub/",
    "mv_out_of_mount": "mv {m}/run.sh {tmp}/stolen.sh",
    "chmod": "chmod 600 {m}/a.txt",
    "chmod_dir": "chmod 700 {m}/sub",
    "chown": "chown 1:1 {m}/a.txt",
    "chgrp": "chgrp 1 {m}/a.txt",
    "truncate_0": "truncate -s 0 {m}/big.bin",
    "truncate_100": "truncate -s 100 {m}/a.txt",
    "ln_hard": "ln {m}/a.txt {m}/hard",
    "ln_s": "ln -s a.txt {m}/sym2",
    "setfattr": "setfattr -n user.x -v 1 {m}/a.txt",
    "setfattr_remove": "setfattr -x user.x {m}/a.txt",
    "mknod": "mknod {m}/null c 1 3",
    "mkfifo": "mkfifo {m}/fifo",
    "cp_into": "cp {src}/a.txt {m}/copy.txt",
    "cp_over": "cp {extra}/a.txt {m}/a.txt",
    "cp_r_into": "cp -r {extra}/newdir {m}/",
    "dd_new": "dd if=/dev/zero of={m}/zeros bs=1k count=1",
    "dd_notrunc": "dd if=/dev/zero of={m}/big.bin bs=1k count=1 conv=notrunc",
    "sed_i": "sed -i s/alpha/beta/ {m}/a.txt",
    "install": "install -m 644 {src}/a.txt {m}/inst.txt",
    "rsync_into": "rsync -r {extra}/ {m}/",
    "tar_x_into": "tar -xf {tar} -C {m}",
    "ctl_commit": "echo msg > {m}/.artfs/commit",
    "ctl_mkdir": "mkdir {m}/.artfs/x",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(SHELL_WRITES))
def test_shell_write_fails_erofs(env, case):
    cmd = SHELL_WRITES[case].format(m=env.mnt, src=env.src, extra=env.extra, tar=env.tar, tmp=env.tmp)
    p = sh(cmd, check=False, timeout=60)
    assert p.returncode != 0, f"{cmd!r} succeeded on a read-only mount"
    assert "Read-only file system" in p.stderr, f"{cmd!r}: {p.stderr!r}"
    _assert_unchanged(env)


def _p(e, *parts):
    return os.path.join(e.mnt, *parts)


def _open_close(path, flags, mode=0o644):
    os.close(os.open(path, flags, mode))


def _write_ctl(e):
    with open(_p(e, ".artfs", "commit"), "w") as f:
        f.write("msg")


def _append(e):
    with open(_p(e, "a.txt"), "a") as f:
        f.write("x")


SYSCALL_WRITES = {
    "open_wronly": lambda e: _open_close(_p(e, "a.txt"), os.O_WRONLY),
    "open_rdwr": lambda e: _open_close(_p(e, "big.bin"), os.O_RDWR),
    "open_wronly_trunc": lambda e: _open_close(_p(e, "mid.bin"), os.O_WRONLY | os.O_TRUNC),
    "open_creat_new": lambda e: _open_close(_p(e, "new.txt"), os.O_WRONLY | os.O_CREAT),
    "open_creat_excl": lambda e: _open_close(_p(e, "sub", "new.txt"), os.O_RDWR | os.O_CREAT | os.O_EXCL),
    "open_rdonly_creat_new": lambda e: _open_close(_p(e, "ro_new.txt"), os.O_RDONLY | os.O_CREAT),
    "open_append_mode": _append,
    "write_ctl_commit": _write_ctl,
    "utime": lambda e: os.utime(_p(e, "a.txt"), ns=(1, 1)),
    "utime_now": lambda e: os.utime(_p(e, "a.txt")),
    "utime_dir": lambda e: os.utime(_p(e, "sub"), ns=(1, 1)),
    "rename": lambda e: os.rename(_p(e, "a.txt"), _p(e, "z.txt")),
    "replace_existing": lambda e: os.replace(_p(e, "a.txt"), _p(e, "run.sh")),
    "rename_dir": lambda e: os.rename(_p(e, "sub"), _p(e, "private", "sub")),
    "link": lambda e: os.link(_p(e, "a.txt"), _p(e, "hard")),
    "symlink": lambda e: os.symlink("a.txt", _p(e, "sym")),
    "mkdir": lambda e: os.mkdir(_p(e, "newdir")),
    "rmdir": lambda e: os.rmdir(_p(e, "emptydir")),
    "unlink": lambda e: os.unlink(_p(e, "a.txt")),
    "unlink_symlink": lambda e: os.unlink(_p(e, "dangling")),
    "truncate": lambda e: os.truncate(_p(e, "a.txt"), 0),
    "truncate_grow": lambda e: os.truncate(_p(e, "empty.txt"), 1 << 20),
    "chmod": lambda e: os.chmod(_p(e, "a.txt"), 0o600),
    "chown": lambda e: os.chown(_p(e, "a.txt"), 1, 1),
    "lchown_symlink": lambda e: os.lchown(_p(e, "link"), 1, 1),
    "mkfifo": lambda e: os.mkfifo(_p(e, "fifo")),
    "mknod": lambda e: os.mknod(_p(e, "node"), stat.S_IFREG | 0o644),
    "setxattr": lambda e: os.setxattr(_p(e, "a.txt"), "user.x", b"1"),
    "removexattr": lambda e: os.removexattr(_p(e, "a.txt"), "user.x"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(SYSCALL_WRITES))
def test_syscall_write_fails_erofs(env, case):
    with pytest.raises(OSError) as ei:
        SYSCALL_WRITES[case](env)
    assert ei.value.errno == errno.EROFS, f"{case}: {ei.value!r}"
    _assert_unchanged(env)


def _assert_unchanged(e):
    assert tree_snapshot(e.mnt, times=True) == e.baseline
    assert artfs(e.store, "ls", "--json", "ds:v0").stdout == e.ls_root


@pytest.mark.timeout(120)
def test_store_unchanged_after_write_attempts(env):
    """After the table above: the version, its listing and the log are exactly as put made them."""
    assert artfs(env.store, "log", "--json", "ds").stdout == env.log
    assert tree_snapshot(env.mnt, times=True) == tree_snapshot(env.src, times=True)
    recs = ls_recursive(env.store, "ds:v0")
    assert sorted(recs) == rel_paths(env.src)
    assert not [ln for ln in artfs(env.store, "status", env.mnt, check=False).stdout.splitlines() if ln.strip()]


# -- (b) reads behave like a local disk ----------------------------------------------------

@pytest.mark.timeout(120)
def test_find_equals_source(env):
    cmd = "find . -mindepth 1 -printf '%P %y %l\\n' | LC_ALL=C sort"
    assert sh(cmd, cwd=env.mnt).stdout == sh(cmd, cwd=env.src).stdout
    # find never sees the control directory, but it is reachable by name
    assert ".artfs" not in sh("find .", cwd=env.mnt).stdout
    assert ".artfs" not in os.listdir(env.mnt)
    assert os.path.isdir(_p(env, ".artfs"))
    with open(_p(env, ".artfs", "ref")) as f:
        assert f.read().strip() == "ds:v0"


@pytest.mark.timeout(120)
def test_stat_equals_source(env):
    checked = 0
    for rel in rel_paths(env.src):
        a, b = os.lstat(os.path.join(env.src, rel)), os.lstat(_p(env, rel))
        want = {"mode": a.st_mode, "mtime_ns": a.st_mtime_ns, "uid": a.st_uid, "gid": a.st_gid}
        got = {"mode": b.st_mode, "mtime_ns": b.st_mtime_ns, "uid": b.st_uid, "gid": b.st_gid}
        if not stat.S_ISDIR(a.st_mode):
            want["size"], got["size"] = a.st_size, b.st_size
        assert got == want, rel
        checked += 1
    assert checked == len(rel_paths(env.src)) > 20
    # the shell's stat agrees on what matters to programs
    fmt = "%A %s %u %g %Y %n"
    names = "a.txt run.sh secret.key owned.dat empty.txt big.bin link private sub/deep"
    assert sh(f"stat -c '{fmt}' {names}", cwd=env.mnt).stdout == sh(f"stat -c '{fmt}' {names}", cwd=env.src).stdout
    assert os.access(_p(env, "run.sh"), os.X_OK)
    assert sh("./run.sh", cwd=env.mnt).stdout == "run\n"


@pytest.mark.timeout(120)
def test_checksums_equal_source(env):
    cmd = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum"
    out = sh(cmd, cwd=env.mnt).stdout
    assert out == sh(cmd, cwd=env.src).stdout
    assert len(out.splitlines()) == sum(1 for v in SPEC.values() if v and v[0] != "symlink")


@pytest.mark.timeout(120)
def test_b3sum_matches_ls_digest(env):
    recs = ls_recursive(env.store, "ds:v0")
    files = sorted(p for p, r in recs.items() if r["kind"] == "file")
    assert files and all("digest" in recs[p] for p in files), "ls --json exposes file digests"
    out = sh("b3sum --no-names " + " ".join(f"'{p}'" for p in files), cwd=env.mnt).stdout.split()
    assert out == [recs[p]["digest"] for p in files]
    assert recs["big.bin"]["size"] == len(SPEC["big.bin"][0])


@pytest.mark.timeout(120)
def test_tar_roundtrip(env):
    dst = os.path.join(env.out, "untar")
    os.makedirs(dst)
    sh(f"tar --format=posix -C {env.mnt} -cf {env.out}/m.tar . && tar -xpf {env.out}/m.tar -C {dst}")
    assert tree_snapshot(dst, times=True) == tree_snapshot(env.src, times=True)
    for rel in rel_paths(env.src):
        a, b = os.lstat(os.path.join(env.src, rel)), os.lstat(os.path.join(dst, rel))
        assert (b.st_uid, b.st_gid) == (a.st_uid, a.st_gid), rel


@pytest.mark.timeout(120)
def test_cp_a_roundtrip(env):
    dst = os.path.join(env.out, "cpa")
    sh(f"cp -a {env.mnt} {dst}")
    assert tree_snapshot(dst, times=True) == tree_snapshot(env.src, times=True)
    assert not os.path.exists(os.path.join(dst, ".artfs"))
    for rel in rel_paths(env.src):
        a, b = os.lstat(os.path.join(env.src, rel)), os.lstat(os.path.join(dst, rel))
        assert (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns) == (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns), rel


@pytest.mark.timeout(120)
def test_mmap_and_random_reads(env):
    for rel in ("big.bin", "mid.bin", "exact128k.bin", "a.txt", "sub/tool"):
        want = SPEC[rel][0]
        with open(_p(env, rel), "rb") as f:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                assert len(mm) == len(want)
                assert mm[:] == want, rel
                assert mm[len(want) // 2: len(want) // 2 + 10] == want[len(want) // 2: len(want) // 2 + 10]
    want = SPEC["big.bin"][0]
    rnd = random.Random(7)
    fd = os.open(_p(env, "big.bin"), os.O_RDONLY)
    try:
        for _ in range(50):
            off = rnd.randrange(0, len(want) + 10)
            n = rnd.choice([1, 100, 4096, 65536, 1 << 20, 3 << 20])
            assert os.pread(fd, n, off) == want[off: off + n]
    finally:
        os.close(fd)
    with open(_p(env, "empty.txt"), "rb") as f:
        assert f.read() == b""
    assert os.readlink(_p(env, "sub/deep/er/link_up")) == "../../one.txt"
    with open(_p(env, "sub/deep/er/link_up"), "rb") as f:
        assert f.read() == b"one\n"
    assert os.readlink(_p(env, "dangling")) == "nowhere/at/all"
    assert not os.path.exists(_p(env, "dangling"))


@pytest.mark.timeout(120)
def test_control_files_read_only_version(env):
    assert sorted(os.listdir(_p(env, ".artfs"))) == ["commit", "pid", "ref", "status"]
    with open(_p(env, ".artfs", "status")) as f:
        assert f.read() == ""
    p = artfs(env.store, "commit", env.mnt, "-m", "nope", check=False)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


# -- (c) latest and aliases resolve at mount time -------------------------------------------

@pytest.mark.timeout(120)
def test_latest_and_alias_resolve_at_mount_time(env):
    m_latest, m_alias, m_alias2 = (os.path.join(env.tmp, n) for n in ("m_latest", "m_alias", "m_alias2"))
    with Mounted(env.store, "ds", m_latest):
        with open(os.path.join(m_latest, ".artfs", "ref")) as f:
            assert f.read().strip() == "ds:v1"
        assert tree_snapshot(m_latest, times=True) == tree_snapshot(env.src1, times=True)
    try:
        with Mounted(env.store, "ds:best", m_alias):
            with open(os.path.join(m_alias, ".artfs", "ref")) as f:
                assert f.read().strip() == "ds:v0"
            assert tree_snapshot(m_alias, times=True) == env.baseline
            artfs(env.store, "alias", "ds:v1", "best")  # moved while mounted
            # the mount keeps the version the alias named when it was mounted
            assert tree_snapshot(m_alias, times=True) == env.baseline
            with open(os.path.join(m_alias, "a.txt"), "rb") as f:
                assert f.read() == SPEC["a.txt"][0]
            assert not os.path.exists(os.path.join(m_alias, "added_in_v1.txt"))
            with Mounted(env.store, "ds:best", m_alias2):
                with open(os.path.join(m_alias2, ".artfs", "ref")) as f:
                    assert f.read().strip() == "ds:v1"
                assert tree_snapshot(m_alias2, times=True) == tree_snapshot(env.src1, times=True)
    finally:
        artfs(env.store, "alias", "ds:v0", "best")
    for m in (m_latest, m_alias, m_alias2):
        assert not is_mounted(m)


# -- (e) mount errors --------------------------------------------------------------------------

def _one_line_error(p, code=None):
    assert p.returncode != 0, p.stdout
    if code is not None:
        assert p.returncode == code, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ref,needle", [
    ("ds:v9", "v9"),
    ("nosuch", "nosuch"),
    ("nosuch:v0", "nosuch"),
    ("ds:nosuchalias", "nosuchalias"),
    ("bad name!", "bad name"),
    ("ds:v-1", "v-1"),
])
def test_mount_unknown_ref(env, ref, needle):
    mnt = os.path.join(env.tmp, "m_err")
    os.makedirs(mnt, exist_ok=True)
    p = artfs(env.store, "mount", ref, mnt, check=False, timeout=60)
    line = _one_line_error(p, code=2)
    assert needle in line, line
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []


@pytest.mark.timeout(120)
def test_mount_bad_mountpoints(env):
    missing = os.path.join(env.tmp, "does", "not", "exist")
    _one_line_error(artfs(env.store, "mount", "ds:v0", missing, check=False, timeout=60))
    assert not os.path.exists(missing)

    full = os.path.join(env.tmp, "m_full")
    os.makedirs(full, exist_ok=True)
    with open(os.path.join(full, "keep.txt"), "w") as f:
        f.write("mine\n")
    _one_line_error(artfs(env.store, "mount", "ds:v0", full, check=False, timeout=60))
    assert not is_mounted(full) and os.listdir(full) == ["keep.txt"]

    afile = os.path.join(env.tmp, "m_file")
    with open(afile, "w") as f:
        f.write("x")
    _one_line_error(artfs(env.store, "mount", "ds:v0", afile, check=False, timeout=60))
    assert not is_mounted(afile)

    # already mounted: the module's mount stays as it was
    _one_line_error(artfs(env.store, "mount", "ds:v1", env.mnt, check=False, timeout=60))
    assert is_mounted(env.mnt)
    with open(_p(env, ".artfs", "ref")) as f:
        assert f.read().strip() == "ds:v0"
    with open("/proc/mounts") as f:
        assert sum(1 for ln in f if ln.split()[1] == os.path.realpath(env.mnt)) == 1


# -- (d) a corrupt object: EIO, never wrong bytes; fsck names it -----------------------------------

def _object_path(store: str, data: bytes) -> str:
    import blake3

    h = blake3.blake3(data).hexdigest()
    return os.path.join(store, "objects", h[:2], h[2:])


CORRUPT = {"small.txt": b"small but precious\n" * 50, "big.bin": _rand(9, 3 * 1024 * 1024 + 5)}


@pytest.fixture
def corrupt_store(mstore, tmp_path):
    """ds:v0 of CORRUPT, then one byte flipped in each file's object; restored at teardown."""
    src = tmp_path / "csrc"
    src.mkdir()
    for name, data in CORRUPT.items():
        (src / name).write_bytes(data)
    artfs(mstore, "put", "ds", str(src))
    flipped = []
    try:
        for name, data in CORRUPT.items():
            obj = _object_path(mstore, data)
            assert os.path.getsize(obj) == len(data)
            off = len(data) * 2 // 3
            with open(obj, "r+b") as f:
                f.seek(off)
                f.write(bytes([data[off] ^ 0x5A]))
            flipped.append((obj, off, data[off:off + 1]))
        yield mstore
    finally:
        for obj, off, orig in flipped:
            with open(obj, "r+b") as f:
                f.seek(off)
                f.write(orig)


@pytest.mark.timeout(120)
def test_corrupt_object_fsck_names_it(corrupt_store):
    p = artfs(corrupt_store, "fsck", check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    out = p.stdout + p.stderr
    import blake3

    for name, data in CORRUPT.items():
        assert blake3.blake3(data).hexdigest() in out, out
        assert name in out, out
    assert "Traceback" not in out


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.timeout(120)
def test_corrupt_object_read_fails_eio(corrupt_store, tmp_path):
    mnt = str(tmp_path / "m")
    with Mounted(corrupt_store, "ds:v0", mnt):
        # shell: cat must fail with EIO rather than print wrong bytes with status 0
        p = subprocess.run(["cat", os.path.join(mnt, "big.bin")], capture_output=True)
        assert p.returncode != 0 and b"Input/output error" in p.stderr, (p.returncode, p.stderr[-200:])
        for name, data in CORRUPT.items():
            # python: every fresh read of the whole file raises EIO, never returns wrong bytes
            for attempt in range(2):
                try:
                    got = _read_all(os.path.join(mnt, name))
                except OSError as exc:
                    assert exc.errno == errno.EIO, (name, attempt, exc)
                else:
                    assert got == data, f"{name} (read {attempt}): wrong bytes returned without an error"
                    pytest.fail(f"{name}: a corrupt object read without error")


def test_put_of_a_directory_in_a_mount_reads_every_file_every_time(env, tmp_path, monkeypatch):
    """A FUSE file system (an artfs read-only mount here) shows a name the same inode number and
    times in every version it mounts: put's stat cache never trusts one (put.CTIME_TRUSTED), so a
    second put of the same directory reads every file again and remembers nothing."""
    from artfs import repo
    from artfs.repo import put as put_mod
    from artfs.storage.local_objects import LocalBatch
    from artfs.storage.store import Store

    st = Store.init(str(tmp_path / "copy-store"))
    src = os.path.join(env.mnt, "sub")
    real_time = put_mod.time.time
    monkeypatch.setattr(put_mod.time, "time", lambda: real_time() + 100)  # old enough to be cached, elsewhere
    try:
        repo.put_dir(st, "copy", src)
        calls = []
        real = LocalBatch.put_fd
        monkeypatch.setattr(LocalBatch, "put_fd", lambda self, fd, *a, **k: calls.append(fd) or real(self, fd, *a, **k))
        v, unchanged = repo.put_dir(st, "copy", src)
        files = [n for d, _, names in os.walk(src) for n in names if stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode)]
        assert unchanged and files and len(calls) == len(files)
        assert st.meta.filecache_get([os.fsencode(os.path.join(src, "one.txt"))]) == {}
    finally:
        st.meta.close()
