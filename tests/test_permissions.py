"""A real second user on an ``allow_other`` draft mount (issue 11 fault 12, DESIGN.md §4).

A draft is mounted by root with ``-o allow_other``; the kernel checks modes
(``default_permissions``), so an unprivileged user must meet exactly what it
meets on ext4.  The same tree is made (as root) in a plain ext4 directory and
in the draft, and each scenario runs, as the system user ``artfs-test``
(conftest's ``test_user``: ``scripts/test`` creates it; the tests skip, saying
why, without it), a list of operations in a child process on both; every
outcome (a result or an errno name) must be the expected one on both sides.

Refused: reading a 0600 root file, writing a 0444 or a 0644 root file,
chmod/chown/utime of root's file, creating or removing in a 0555 directory,
listing or entering a 0700 directory, reading another user's xattrs where
the file cannot be read, setting them where it cannot be written, seeing
``trusted.*``, deleting or renaming root's file in a sticky 1777 directory,
and (on the draft only) reading ``.artfs/status`` or ``.artfs/ref`` and
writing ``.artfs/commit`` -- the control files follow the mount owner's
permissions.  Allowed: reading 0644, writing a 0666 file and touching it to
now, creating files, directories, symlinks and FIFOs in a 0777 directory
(owned by the user and its group), chmod of its own files, deleting its own
file in a sticky directory; files and directories made in a setgid directory
take its group (directories keep the setgid bit).
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import sys
import tempfile

import pytest

from mounts import Mounted, artfs, needs_fuse  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.mount]

GROUP_GID = 65534  # nogroup: the setgid directory's group, not the user's

# Run as the user: a list of [op, *args] in argv[1] (JSON), one [status, value] per op on stdout.
SCRIPT = r"""
import errno, json, os, stat, sys

def read(p):
    with open(p, "rb") as f:
        return f.read().decode("latin-1")

def write(p, text):
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        return os.write(fd, text.encode())
    finally:
        os.close(fd)

def create(p):
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

def owner(p):
    st = os.lstat(p)
    return [st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))]

OPS = {
    "read": read, "write": write, "create": create, "owner": owner,
    "mkdir": lambda p: os.mkdir(p, 0o755), "rmdir": os.rmdir, "unlink": os.unlink,
    "rename": os.rename, "listdir": lambda p: sorted(os.listdir(p)),
    "symlink": lambda p, to: os.symlink(to, p), "mkfifo": lambda p: os.mkfifo(p, 0o644),
    "chmod": os.chmod, "chown": os.chown,
    "touch": lambda p: os.utime(p, None), "utime": lambda p, t: os.utime(p, (t, t)),
    "getxattr": lambda p, n: os.getxattr(p, n).decode("latin-1"),
    "setxattr": lambda p, n, v: os.setxattr(p, n, v.encode()),
    "listxattr": lambda p: sorted(os.listxattr(p)), "link": os.link, "truncate": os.truncate,
}

def run(op, *args):
    try:
        r = OPS[op](*args)
        return ["ok", r]
    except OSError as e:
        return ["err", errno.errorcode.get(e.errno, str(e.errno))]

root = sys.argv[1]
ops = json.loads(sys.argv[2])
print(json.dumps([run(op, *[os.path.join(root, a) if i < n else a for i, a in enumerate(args)])
                  for op, n, *args in ops]))
"""


# how many leading arguments of each op are paths (joined to the root)
PATH_ARGS = {"rename": 2, "link": 2}


def as_user(user, root: str, ops: list) -> list:
    """Run ops ([op, *args]) as user (conftest's User) with paths relative to root; their outcomes."""
    spec = [[op, PATH_ARGS.get(op, 1), *args] for op, *args in ops]
    p = user.run([sys.executable, "-c", SCRIPT, root, json.dumps(spec)], capture_output=True, text=True,
                 timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    return [tuple(x) for x in json.loads(p.stdout)]


def build_tree(root: str) -> None:
    """The tree every scenario works in (made as root); see the module docstring."""
    j = lambda *p: os.path.join(root, *p)  # noqa: E731

    def f(rel, text, mode, xattrs=()):
        with open(j(rel), "w") as fh:
            fh.write(text)
        for n, v in xattrs:
            os.setxattr(j(rel), n, v)
        os.chmod(j(rel), mode)

    os.chmod(root, 0o755)
    for d, mode in (("closed", 0o555), ("private", 0o700), ("open", 0o777), ("sticky", 0o1777), ("sgid", 0o2777)):
        os.mkdir(j(d))
        if d == "closed":
            f("closed/f", "in a closed dir\n", 0o666)
        if d == "private":
            f("private/x", "private\n", 0o644)
        if d == "sticky":
            f("sticky/roots", "root's, in a sticky dir\n", 0o666)
        os.chmod(j(d), mode)
    os.chown(j("sgid"), 0, GROUP_GID)
    os.chmod(j("sgid"), 0o2777)  # chown clears set-id bits: set them again
    f("secret", "secret\n", 0o600, [("user.s", b"secret xattr")])
    f("readonly", "read only\n", 0o444)
    f("public", "public\n", 0o644, [("user.p", b"public xattr"), ("trusted.t", b"root only")])
    f("shared", "shared\n", 0o666)
    f("suid", "set-id bits\n", 0o6777)
    f("trunc", "to be truncated\n", 0o666)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """{"ext4": root, "draft": root}: the same tree in a plain directory and in an allow_other draft mount.

    Both live under a fresh 0755 directory in /tmp (pytest's own temp dirs are 0700: the user
    could not reach them).
    """
    base = tempfile.mkdtemp(prefix="artfs-perm-", dir="/tmp")
    os.chmod(base, 0o755)
    store = str(tmp_path_factory.mktemp("perm") / "store")
    artfs(store, "init")
    empty = os.path.join(base, "empty")
    os.mkdir(empty)
    artfs(store, "put", "perm", empty)
    plain = os.path.join(base, "ext4")
    os.mkdir(plain)
    build_tree(plain)
    m = Mounted(store, "perm:draft", os.path.join(base, "draft"), "-o", "allow_other")
    try:
        m.__enter__()
        build_tree(m.mnt)
        yield {"ext4": plain, "draft": m.mnt, "mount": m}
    finally:
        m.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


OK = ("ok", None)


def scenarios(uid: int, gid: int) -> dict:
    """name -> (ops as the user, their expected outcomes), the same on ext4 and in the draft."""
    return {
        "read_0600_root_file": ([["read", "secret"]], [("err", "EACCES")]),
        "write_0444_and_0644_root_files": ([["write", "readonly", "x"], ["write", "public", "x"]],
                                           [("err", "EACCES")] * 2),
        "chmod_chown_utime_roots_file": (
            [["chmod", "public", 0o666], ["chown", "public", uid, gid], ["utime", "shared", 1_000_000_000],
             ["owner", "public"]],
            [("err", "EPERM")] * 3 + [("ok", [0, 0, "0o644"])]),
        "create_and_remove_in_0555_dir": (
            [["create", "closed/new"], ["mkdir", "closed/d"], ["unlink", "closed/f"], ["rename", "closed/f", "open/f"],
             ["listdir", "closed"]],
            [("err", "EACCES")] * 4 + [("ok", ["f"])]),
        "list_0700_dir": ([["listdir", "private"], ["read", "private/x"], ["create", "private/y"]],
                          [("err", "EACCES")] * 3),
        "xattrs_follow_modes": (
            [["getxattr", "secret", "user.s"], ["setxattr", "public", "user.q", "v"],
             ["getxattr", "public", "user.p"], ["getxattr", "public", "trusted.t"],
             ["setxattr", "open", "trusted.u", "v"]],
            [("err", "EACCES"), ("err", "EACCES"), ("ok", "public xattr"), ("err", "ENODATA"), ("err", "EPERM")]),
        "listxattr_hides_trusted": ([["listxattr", "public"]], [("ok", ["user.p"])]),
        "write_kills_setid_bits": ([["write", "suid", "x"], ["owner", "suid"]], [("ok", 1), ("ok", [0, 0, "0o777"])]),
        "chmod_g+s_needs_the_group": (
            [["create", "sgid/h"], ["chmod", "sgid/h", 0o2755], ["owner", "sgid/h"], ["chmod", "open", 0o1777]],
            [OK, OK, ("ok", [uid, GROUP_GID, "0o755"]), ("err", "EPERM")]),
        "protected_hardlinks_and_truncate": (
            [["link", "secret", "open/stolen"], ["truncate", "trunc", 3], ["read", "trunc"], ["touch", "public"]],
            [("err", "EPERM"), OK, ("ok", "to "), ("err", "EACCES")]),
        "read_0644_write_0666": (
            [["read", "public"], ["write", "shared", "more\n"], ["touch", "shared"], ["read", "shared"]],
            [("ok", "public\n"), ("ok", 5), OK, ("ok", "shared\nmore\n")]),
        "own_files_in_0777_dir": (
            [["create", "open/mine"], ["mkdir", "open/mydir"], ["symlink", "open/mylink", "mine"],
             ["mkfifo", "open/myfifo"], ["chmod", "open/mine", 0o600],
             ["owner", "open/mine"], ["owner", "open/mydir"], ["owner", "open/mylink"], ["owner", "open/myfifo"],
             ["chown", "open/mine", 0, -1], ["read", "open/mine"], ["unlink", "open/mine"], ["rmdir", "open/mydir"]],
            [OK] * 5 + [("ok", [uid, gid, "0o600"]), ("ok", [uid, gid, "0o755"]), ("ok", [uid, gid, "0o777"]),
                        ("ok", [uid, gid, "0o644"]), ("err", "EPERM"), ("ok", ""), OK, OK]),
        "sticky_dir": (
            [["unlink", "sticky/roots"], ["rename", "sticky/roots", "sticky/moved"], ["write", "sticky/roots", "x\n"],
             ["create", "sticky/mine"], ["rename", "sticky/mine", "sticky/mine2"], ["unlink", "sticky/mine2"],
             ["create", "sticky/kept"], ["listdir", "sticky"]],
            [("err", "EPERM"), ("err", "EPERM"), ("ok", 2), OK, OK, OK, OK, ("ok", ["kept", "roots"])]),
        "setgid_dir": (
            [["create", "sgid/f"], ["mkdir", "sgid/d"], ["owner", "sgid/f"], ["owner", "sgid/d"],
             ["create", "sgid/d/g"], ["owner", "sgid/d/g"]],
            [OK, OK, ("ok", [uid, GROUP_GID, "0o644"]), ("ok", [uid, GROUP_GID, "0o2755"]), OK,
             ("ok", [uid, GROUP_GID, "0o644"])]),
    }


# scenario (or "control_files") -> reason, for the draft side of checks that fail because of an artfs bug
KNOWN_BUGS: dict[str, str] = {}  # scenario -> reason, strict xfail for a known artfs bug; none open
NAMES = list(scenarios(0, 0))


def _params():
    out = []
    for name in NAMES:
        for where in ("ext4", "draft"):
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] \
                if where == "draft" and name in KNOWN_BUGS else []
            out.append(pytest.param(name, where, marks=marks, id=f"{name}-{where}"))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, where", _params())
def test_second_user(test_user, sides, name, where):
    """The scenario's outcomes as artfs-test, on ext4 (the reference) and in the draft."""
    ops, want = scenarios(test_user.uid, test_user.gid)[name]
    assert as_user(test_user, sides[where], ops) == want


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["control_files"])
def test_control_files_follow_mount_owner(test_user, sides, what):
    """The second user can neither read .artfs/status or .artfs/ref nor commit; root (the owner) can."""
    got = as_user(test_user, sides["draft"], [["read", ".artfs/status"], ["read", ".artfs/ref"],
                                              ["write", ".artfs/commit", "x"], ["listdir", ".artfs"]])
    assert got == [("err", "EACCES")] * 4
    m = sides["mount"]
    assert m.status()  # root reads it: the tree built by build_tree is there
    with open(m.path(".artfs", "ref")) as f:
        assert f.read().startswith("perm:draft")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["ext4", "draft"])
def test_root_removes_users_file_in_sticky_dir(test_user, sides, where):
    """Root (the owner of the sticky directory) may delete the user's file there."""
    root = sides[where]
    assert as_user(test_user, root, [["create", "sticky/users"]]) == [OK]
    st_ = os.lstat(os.path.join(root, "sticky", "users"))
    assert (st_.st_uid, st_.st_gid) == (test_user.uid, test_user.gid)
    os.unlink(os.path.join(root, "sticky", "users"))
    assert not os.path.lexists(os.path.join(root, "sticky", "users"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["ext4", "draft"])
def test_mode_bits_as_root_sees_them(test_user, sides, where):
    """What the user made carries the right owner and group for root too (not only in the user's own stat)."""
    root = sides[where]
    assert as_user(test_user, root, [["create", "open/by-user"], ["create", "sgid/by-user"]]) == [OK, OK]
    a = os.lstat(os.path.join(root, "open", "by-user"))
    b = os.lstat(os.path.join(root, "sgid", "by-user"))
    assert (a.st_uid, a.st_gid) == (test_user.uid, test_user.gid)
    assert (b.st_uid, b.st_gid) == (test_user.uid, GROUP_GID)
    assert stat.S_IMODE(os.lstat(os.path.join(root, "sgid")).st_mode) == 0o2777
    assert grp.getgrgid(GROUP_GID)
