"""Model-based test of a draft mount (DESIGN.md §4, §5): the same random
operations go to ``artfs mount NAME:draft`` and to a plain directory on the
local disk, and the two trees must stay equal after every step.

``DraftModel`` is a hypothesis state machine.  Each example puts a small seed
tree as a new artifact (a fresh name per example, one store for the whole
run), mounts its draft, copies the seed to the model directory (``cp -a``),
then applies file operations on a pool of five names at depth <= 3 so that
they collide often.  Every operation runs on the model first, then on the
mount; an ``OSError`` on one side must be the same errno on the other, and
what an operation returns (an xattr's value, a listing) must be the same.

After every step both trees are compared by ``snapshot``: for every entry
(the root too) its kind, mode (set-id and sticky bits included), owner,
size, content, symlink target, ``st_nlink`` (hard-link counts; 2 +
subdirectories for directories), which names share an inode (hard-link
groups), xattrs, and the mtime and atime where they were set explicitly.
An explicit time lies before ``CUTOFF`` (2011) or after ``FAR`` (2200):
the seed's times and those ``utime`` sets (years 2004-2011, 2300 and before
1970); any other time is "now" on both sides and only its being implicit is
compared (so a directory whose mtime must move, the root's too, is checked).
Reads use ``O_NOATIME`` so that ext4's relatime leaves the model's atimes
alone (artfs has noatime semantics); directories' atimes are not compared
(listing one moves it on ext4).  ``.artfs/status`` must list what the model
says changed against the parent version's identity.

Inode numbers: the first ``st_ino`` seen for each name on each side is
recorded and must stay the same after every later step -- operations,
commits, ``drop_caches`` (``echo 2 > /proc/sys/vm/drop_caches``: the kernel
forgets its inodes and must look them up again) and remounts.  A rename
moves the recorded numbers with the moved names; an unlinked name is
forgotten.  The model (ext4) is tracked the same way, which checks the
tracker itself.

Operations: create/write/append/truncate, rename (files and directories,
over existing targets), unlink, mkdir/rmdir, symlink, hard links (``link``;
unlinking either name later), special files (``mkfifo``, ``mknod`` of FIFOs
and regular files, a Unix socket by ``bind``), chmod (with set-id and sticky
bits), chown, utime with separate atime and mtime, set/get/list/remove of
``user.*`` and ``trusted.*`` xattrs, ``rewinddir`` (libc's
opendir/readdir/rewinddir through ctypes: read all, create a file, rewind,
read again -- the new name must be listed; ``d_ino`` and ``d_type`` must
agree with ``lstat``), ``drop_caches``, commit and remount.  Files are
opened with ``O_NONBLOCK`` so that a FIFO (no reader: ``ENXIO`` on both
sides) never blocks the run.

``commit`` writes ``.artfs/commit``, checks the outcome against the model (a
new ``vN`` exactly when the identity -- names, kinds, executable bits,
content -- changed, else ``vK (unchanged)``) and mounts that version
read-only elsewhere to compare it with the model as it was when the version
was made (every field above).  ``remount`` unmounts the draft and mounts
``NAME:draft`` again: the draft must persist, metadata edits and all.

Hypothesis draws the number of steps, a seed and every operation's
arguments (bytes, offsets, sizes, modes, times, owners, xattrs); the
operation (by weight, ``STEPS``) and its paths (an existing path of the
wanted kind most of the time, else a pool name in an existing directory,
else any pool path) come from a ``random.Random`` with that seed:
hypothesis' own rule choice (swarm testing) left whole operations out of
most of so few examples.  Every operation is logged and a failure prints the
log of its example as the reproduction.  The run fails if some operation
never succeeded (or ``rename``/``rmdir`` never met ``ENOTEMPTY``), so the
machine cannot quietly degrade into making only errors.  Default: 40
examples of up to 30 steps, derandomized (the same run every time).

The focused tests at the end cover what a state machine does poorly:
editors' atomic saves, identical rewrites, open-unlinked files, two
descriptors on one file, renaming a parent directory over an empty one, many
open files, readdir's ``.`` and ``..``, hard links across a commit; each
runs its scenario on a plain directory too and compares.  Four are
regressions for bugs this file found (fixed in ccf8cf8).
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import hashlib
import itertools
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from mounts import Mounted, artfs, force_unmount, is_mounted, mstore, needs_fuse  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.mount]

NAMES = ["a", "b", "c", "d1", "d2"]
NS = 1_000_000_000
SEED_MTIME = 1_050_000_000_123_456_789  # 2003
SEED_ATIME = 1_020_000_000_987_654_321  # 2002
UTIME_MIN = 1_100_000_000_000_000_000  # 2004
CUTOFF = 1_300_000_000_000_000_000  # 2011: any time before this was set explicitly
FAR = 7_258_118_400 * NS  # 2200-01-01: and so was any time after this
Y2300 = 10_413_792_000 * NS  # 2300-01-01
XATTR_NAMES = ["user.a", "user.b", "user.big", "trusted.t"]
OWNERS = [0, 65534, 4242]

# Knobs for deeper runs by hand: ARTFS_MODEL_EXAMPLES=300 ARTFS_MODEL_RANDOM=1 (not derandomized).
# Shrinking costs minutes (steps mount and unmount); ARTFS_MODEL_SHRINK=1 turns it on.
EXAMPLES = int(os.environ.get("ARTFS_MODEL_EXAMPLES", "40"))
RANDOM = os.environ.get("ARTFS_MODEL_RANDOM") == "1"
SHRINK = os.environ.get("ARTFS_MODEL_SHRINK") == "1"


# -- helpers ---------------------------------------------------------------------------------

def _exited(pid: int) -> bool:
    """True once the daemon has finished (gone, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def unmount(m: Mounted) -> None:
    """``fusermount3 -u``, wait for the daemon to finish, then ``force_unmount`` whatever is left.

    The daemon is reparented to PID 1, which in some sandboxes reaps zombies
    only every second or so, and ``force_unmount``'s ``kill(pid, 0)`` wait
    counts a zombie as alive (1.5 s per unmount here); a zombie has closed
    everything, so we stop waiting there.
    """
    pid = m.pid
    if is_mounted(m.mnt):
        subprocess.run(["fusermount3", "-u", m.mnt], capture_output=True)
    deadline = time.monotonic() + 10
    while pid and not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    force_unmount(m.mnt, None if (not pid or _exited(pid)) else pid)


SEED_FILES = {
    "a": (b"hello\n", 0o644),
    "b": (bytes(range(256)) * 5, 0o755),
    "d1/a": (b"", 0o644),
    "d1/b": (b"seed d1/b\n" * 30, 0o600),
    "d1/d2/c": (b"deep\n", 0o644),
}


def make_seed(root: str) -> str:
    """a, b (exec), c -> a, d1/{a (empty), b, c -> ../b, d2/c}, d2/ (empty); file mtimes in 2003."""
    os.makedirs(os.path.join(root, "d1", "d2"))
    os.makedirs(os.path.join(root, "d2"))
    for rel, (data, mode) in SEED_FILES.items():
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.utime(p, ns=(SEED_MTIME, SEED_MTIME))
    os.symlink("a", os.path.join(root, "c"))
    os.symlink("../b", os.path.join(root, "d1", "c"))
    return root


def make_model_seed(root: str) -> str:
    """make_seed plus what the parent version of a draft must carry too: a hard link (b and d1/d2/b),
    a FIFO (d1/d2/d2), xattrs (on a, d1, the root), a file owned by nobody (d1/a), atimes apart
    from mtimes, and explicit mtimes on every directory (the root's too)."""
    make_seed(root)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.link(j("b"), j("d1", "d2", "b"))
    os.mkfifo(j("d1", "d2", "d2"), 0o640)
    os.setxattr(j("a"), "user.a", b"seed value")
    os.setxattr(j("d1"), "user.b", b"\x00seed\xff")
    os.setxattr(j("d1"), "trusted.t", b"trusted")
    os.setxattr(root, "user.a", b"the root's")
    os.chown(j("d1", "a"), 65534, 65534)
    for rel in ("a", "b", "d1/a", "d1/b", "d1/d2/c", "d1/d2/d2", "d1/d2", "d1", "d2", "."):
        os.utime(j(rel), ns=(SEED_ATIME, SEED_MTIME))
    return root


def _explicit(t: int) -> int | None:
    return t if t < CUTOFF or t >= FAR else None


def _digest(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str) -> tuple:
    try:
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                            for n in os.listxattr(path, follow_symlinks=False)))
    except OSError as exc:
        return (("<error>", errno.errorcode.get(exc.errno, exc.errno)),)


KIND = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p", stat.S_IFSOCK: "s",
        stat.S_IFCHR: "c", stat.S_IFBLK: "b"}


def walk(root: str):
    """(relative path, lstat) of root (".") and everything under it, sorted."""
    out = [(".", os.lstat(root))]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, root), os.lstat(full)))
    return sorted(out)


def snapshot(root: str) -> dict:
    """path -> every field the model compares (see the module docstring); the root is "."."""
    entries = walk(root)
    by_ino = collections.defaultdict(list)
    for rel, st_ in entries:
        by_ino[st_.st_ino].append(rel)
    out = {}
    for rel, st_ in entries:
        full = os.path.join(root, rel)
        kind = KIND[stat.S_IFMT(st_.st_mode)]
        rec = {"kind": kind, "mode": oct(stat.S_IMODE(st_.st_mode)), "owner": (st_.st_uid, st_.st_gid),
               "nlink": st_.st_nlink, "links": tuple(by_ino[st_.st_ino]), "xattrs": _xattrs(full)}
        if kind != "d":
            rec["size"] = st_.st_size
        if kind == "f":
            rec["digest"] = _digest(full)
        if kind == "l":
            rec["target"] = os.readlink(full)
        else:
            rec["mtime"] = _explicit(st_.st_mtime_ns)
        if kind not in "dl":
            rec["atime"] = _explicit(st_.st_atime_ns)
        out[rel] = rec
    return out


def identity(snap: dict) -> dict:
    """What makes a version (DESIGN.md §5): names, kinds, executable bits, content."""
    out = {}
    for rel, rec in snap.items():
        if rel == ".":
            continue
        if rec["kind"] == "f":
            out[rel] = ("f", bool(int(rec["mode"], 8) & 0o111), rec["digest"])
        elif rec["kind"] == "l":
            out[rel] = ("l", rec["target"])
        else:
            out[rel] = (rec["kind"],)
    return out


def expected_status(old: dict, new: dict) -> list[str]:
    """`.artfs/status` between two identity maps (DESIGN.md §4): A, D, M (content, kind or exec bit)."""
    out = []
    for p in set(old) | set(new):
        x, y = old.get(p), new.get(p)
        if x is None:
            out.append(("A", p))
        elif y is None:
            out.append(("D", p))
        elif (x[0] == "d") != (y[0] == "d"):
            out += [("D", p), ("A", p)]
        elif x != y:
            out.append(("M", p))
    return [f"{c} {p}" for c, p in sorted(out, key=lambda r: (r[1], r[0]))]


def _short_rec(rec) -> str:
    if rec is None:
        return "None"
    return "{" + ", ".join(f"{k}: {short(v) if isinstance(v, bytes) else _short_xattrs(v) if k == 'xattrs' else v}"
                           for k, v in rec.items()) + "}"


def _short_xattrs(xs) -> str:
    return "(" + ", ".join(f"{n}={short(v) if isinstance(v, bytes) else v}" for n, v in xs) + ")"


def snap_diff(a: dict, b: dict, names=("model", "mount")) -> str:
    lines = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if x is None or y is None:
            lines.append(f"  {k}: {names[0]}={_short_rec(x)} {names[1]}={_short_rec(y)}")
            continue
        for f in sorted(set(x) | set(y)):
            if x.get(f) != y.get(f):
                fx, fy = x.get(f), y.get(f)
                if f == "xattrs":
                    fx, fy = _short_xattrs(fx), _short_xattrs(fy)
                lines.append(f"  {k} {f}: {names[0]}={fx} {names[1]}={fy}")
    return "\n".join(lines)


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


def write_file(path: str, data: bytes, flags: int = 0, mode: int = 0o644) -> int:
    """Create or replace a file's content (what `>` in a shell does); a FIFO gives ENXIO, never blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def pwrite(path: str, off: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def append(path: str, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def symlink(path: str, to: str) -> None:
    os.symlink(to, path)


def chmod(path: str, fmode: int, dmode: int) -> None:
    os.chmod(path, dmode if os.path.isdir(path) else fmode)


def bind_socket(path: str) -> None:
    """A Unix socket file left by bind() (through /proc/self/fd: a socket path holds at most 107 bytes)."""
    parent, name = os.path.split(path)
    fd = os.open(parent, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def getxattr(path: str, name: str) -> bytes:
    return os.getxattr(path, name, follow_symlinks=False)


def listxattr(path: str) -> list:
    return sorted(os.listxattr(path, follow_symlinks=False))


def setxattr(path: str, name: str, value: bytes, flags: int) -> None:
    os.setxattr(path, name, value, flags, follow_symlinks=False)


def removexattr(path: str, name: str) -> None:
    os.removexattr(path, name, follow_symlinks=False)


def chown(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)


class Dirent(ctypes.Structure):  # glibc's struct dirent on 64-bit Linux (= dirent64)
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.opendir.restype, LIBC.opendir.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
LIBC.readdir.restype, LIBC.readdir.argtypes = ctypes.POINTER(Dirent), [ctypes.c_void_p]
LIBC.rewinddir.restype, LIBC.rewinddir.argtypes = None, [ctypes.c_void_p]
LIBC.closedir.restype, LIBC.closedir.argtypes = ctypes.c_int, [ctypes.c_void_p]
DT = {1: "p", 2: "c", 4: "d", 6: "b", 8: "f", 10: "l", 12: "s"}


@contextlib.contextmanager
def opendir(path: str):
    dp = LIBC.opendir(os.fsencode(path))
    if not dp:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    try:
        yield dp
    finally:
        LIBC.closedir(dp)


def readdir_all(dp, path: str) -> list[tuple[str, int, str]]:
    """(name, d_ino, d_type) of every entry until the end, "." and ".." included."""
    out = []
    while True:
        ctypes.set_errno(0)
        ent = LIBC.readdir(dp)
        if not ent:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, os.strerror(e), path)
            return out
        out.append((os.fsdecode(ent.contents.d_name), ent.contents.d_ino, DT.get(ent.contents.d_type, "?")))


def dirent_mismatches(path: str, entries) -> list[str]:
    """Entries whose d_ino or d_type disagree with lstat (DT_UNKNOWN is allowed)."""
    out = []
    for name, ino, kind in entries:
        if name in (".", ".."):
            continue
        try:
            st_ = os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            out.append(f"{name}: listed but gone")
            continue
        if ino != st_.st_ino:
            out.append(f"{name}: d_ino {ino} but st_ino {st_.st_ino}")
        if kind != "?" and kind != KIND[stat.S_IFMT(st_.st_mode)]:
            out.append(f"{name}: d_type {kind} but {KIND[stat.S_IFMT(st_.st_mode)]}")
    return out


def rewind_listing(path: str, create: str) -> tuple:
    """opendir, read all, create a file `create` in it, rewinddir, read all again (the new name must show).

    Returns the two listings (names, without "." and "..": see test_readdir_lists_dot_and_dotdot),
    the creation's outcome and the entries whose d_ino or d_type disagree with lstat.
    """
    with opendir(path) as dp:
        first = readdir_all(dp, path)
        made = outcome(lambda: os.close(os.open(os.path.join(path, create),
                                                os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)))
        LIBC.rewinddir(dp)
        second = readdir_all(dp, path)
    names = lambda ents: sorted(n for n, _, _ in ents if n not in (".", ".."))  # noqa: E731
    return names(first), made[0] if made[0] == "ok" else made[1], names(second), dirent_mismatches(path, second)


def short(data: bytes) -> str:
    return repr(data) if len(data) <= 16 else f"<{len(data)} bytes {data[:8]!r}...>"


class Inodes:
    """The first st_ino seen for each name on one side; it must not change (see the module docstring)."""

    def __init__(self, root: str):
        self.root = root
        self.seen: dict[str, int] = {}

    def moved(self, src: str, dst: str) -> None:
        """After a successful rename(src, dst): dst (and what is under it) has src's numbers."""
        if os.path.lexists(os.path.join(self.root, src)):
            return  # src and dst were links to one inode: rename did nothing
        src, dst = self.real(src), self.real(dst)
        if src is None or dst is None:
            return
        under = lambda k, p: k == p or k.startswith(p + "/")  # noqa: E731
        moving = {k: v for k, v in self.seen.items() if under(k, src)}
        self.seen = {k: v for k, v in self.seen.items() if not under(k, src) and not under(k, dst)}
        self.seen.update({dst + k[len(src):]: v for k, v in moving.items()})

    def real(self, rel: str) -> str | None:
        """rel with its parent's symlinks resolved (a pool path may go through a symlink to a directory)."""
        parent, name = os.path.split(rel)
        out = os.path.relpath(os.path.join(os.path.realpath(os.path.join(self.root, parent)), name),
                              os.path.realpath(self.root))
        return None if out.startswith("..") else out

    def forget(self, rels) -> None:
        for rel in rels:
            self.seen.pop(rel, None)

    def check(self) -> list[str]:
        """Compare every name with its recorded number; record new names, forget gone ones."""
        now = {rel: st_.st_ino for rel, st_ in walk(self.root)}
        bad = [f"{rel}: st_ino {self.seen[rel]} became {ino}" for rel, ino in now.items()
               if rel in self.seen and self.seen[rel] != ino]
        self.seen = {rel: self.seen.get(rel, ino) for rel, ino in now.items()}
        return bad


# -- the state machine -------------------------------------------------------------------------

payload = st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000))
offsets = st.one_of(st.integers(0, 64), st.integers(0, 6000), st.integers(100_000, 300_000))
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o700, 0o4755, 0o2750, 0o6711])
dir_modes = st.sampled_from([0o755, 0o700, 0o555, 0o750, 0o2775, 0o1777, 0o3750])
times = st.one_of(st.integers(UTIME_MIN, CUTOFF - 1), st.integers(Y2300, Y2300 + 10**8 * NS),
                  st.integers(-2_000_000_000 * NS, -1))
link_targets = st.sampled_from(NAMES + ["d1/a", "d1/d2/c", "d2/b", "nowhere"])
xattr_values = st.one_of(st.binary(max_size=32), st.binary(min_size=1000, max_size=3000))

# operation -> (weight, its arguments drawn by hypothesis); paths come from DraftModel.rnd
STEPS = {
    "create_file": (4, {"buf": payload, "excl": st.booleans(), "mode": file_modes}),
    "write_at": (4, {"off": offsets, "buf": payload}),
    "append_to": (2, {"buf": payload}),
    "truncate": (3, {"size": st.one_of(st.just(0), st.integers(0, 64), st.integers(0, 8000))}),
    "rename_file": (3, {"over_existing": st.booleans()}),
    "rename_dir": (3, {"over_dir": st.booleans()}),
    "unlink": (2, {}),
    "mkdir": (2, {"mode": dir_modes}),
    "rmdir": (2, {}),
    "make_symlink": (2, {"to": link_targets}),
    "hard_link": (3, {}),
    "make_node": (2, {"how": st.sampled_from(["mkfifo", "mknod fifo", "mknod file", "bind"]),
                      "mode": st.sampled_from([0o644, 0o600, 0o755])}),
    "change_mode": (2, {"fmode": file_modes, "dmode": dir_modes}),
    "change_owner": (1, {"uid": st.sampled_from(OWNERS + [-1]), "gid": st.sampled_from(OWNERS + [-1])}),
    "utime": (3, {"mtime": times, "atime": times}),
    "set_xattr": (3, {"name": st.sampled_from(XATTR_NAMES), "value": xattr_values,
                      "flags": st.sampled_from([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])}),
    "remove_xattr": (1, {"name": st.sampled_from(XATTR_NAMES)}),
    "read_xattrs": (2, {"name": st.sampled_from(XATTR_NAMES)}),
    "rewind_dir": (1, {}),
    "drop_caches": (1, {}),
    "commit": (2, {"message": st.sampled_from(["", "model step", "ünïcode"])}),
    "remount": (1, {}),
}
OPS = ["write_file", "pwrite", "append", "truncate", "rename", "unlink", "mkdir", "rmdir", "symlink", "chmod",
       "utime", "link", "mkfifo", "mknod", "bind_socket", "chown", "setxattr", "removexattr", "getxattr",
       "listxattr", "rewind_listing", "drop_caches"]
STATS: collections.Counter = collections.Counter()  # (op, "ok" | errno name) over the whole run


class DraftModel(RuleBasedStateMachine):
    """A draft mount and a plain directory, driven in lockstep."""

    store: str = ""
    tmp: str = ""
    counter = itertools.count()

    def __init__(self):
        super().__init__()
        self.name = f"m{next(self.counter)}"
        base = os.path.join(self.tmp, self.name)
        self.model = os.path.join(base, "model")
        self.mnt = os.path.join(base, "mnt")
        self.ro_mnt = os.path.join(base, "ro")
        self.draft: Mounted | None = None
        self.rnd = random.Random(0)
        self.log: list[str] = []
        self.commits = self.remounts = 0
        seed = make_model_seed(os.path.join(base, "seed"))
        out = artfs(self.store, "put", self.name, seed).stdout.strip()
        assert out == f"{self.name}:v0", out
        subprocess.run(["cp", "-a", seed, self.model], check=True)
        self.versions = {0: snapshot(self.model)}  # version number -> the model when it was made
        self.last = 0  # the draft's parent version
        self.inodes = {"model": Inodes(self.model), "mount": Inodes(self.mnt)}
        self._mount_draft()

    def _mount_draft(self) -> None:
        m = Mounted(self.store, f"{self.name}:draft", self.mnt)
        m.__enter__()
        self.draft = m
        with open(m.path(".artfs", "ref")) as f:
            ref = f.read().strip()
        assert ref == f"{self.name}:draft (parent {self.name}:v{self.last})", self.fail(f"ref {ref!r}")

    def teardown(self):
        if self.draft is not None:
            unmount(self.draft)
            self.draft = None
        force_unmount(self.ro_mnt)

    def fail(self, what: str) -> str:
        """An assertion message: what went wrong, after the log of this example."""
        return f"{self.name}: {what}\noperations so far (model side first):\n  " + "\n  ".join(self.log)

    # -- choosing paths ------------------------------------------------------------------
    def existing(self, want=None) -> list[str]:
        """Paths in the model (want: a kind letter of KIND, a string of them, or None for any)."""
        return [rel for rel, st_ in walk(self.model)
                if rel != "." and (want is None or KIND[stat.S_IFMT(st_.st_mode)] in want)]

    def pick(self, want=None, p_existing=0.75, p_unused=0.5) -> str:
        ex = self.existing(want)
        if ex and self.rnd.random() < p_existing:
            return self.rnd.choice(ex)
        return self.fresh(p_unused)

    def fresh(self, p_unused=0.5) -> str:
        """A pool name in an existing directory (depth <= 3), sometimes any pool path."""
        if self.rnd.random() < 0.85:
            parent = self.rnd.choice([""] + [d + "/" for d in self.existing("d") if d.count("/") < 2])
            unused = [n for n in NAMES if not os.path.lexists(os.path.join(self.model, parent + n))]
            if unused and self.rnd.random() < p_unused:
                return parent + self.rnd.choice(unused)
            return parent + self.rnd.choice(NAMES)
        return "/".join(self.rnd.choice(NAMES) for _ in range(self.rnd.randint(1, 3)))

    def linked(self) -> list[str]:
        """Names of inodes that have more than one (hard links)."""
        return [rel for rel, st_ in walk(self.model) if not stat.S_ISDIR(st_.st_mode) and st_.st_nlink > 1]

    # -- running one operation on both sides ---------------------------------------------
    def both(self, fn, *rels, **kw):
        """fn(*absolute paths, **kw) on the model, then on the mount; results or errnos must match."""
        res = [outcome(lambda: fn(*(os.path.join(root, r) for r in rels), **kw)) for root in (self.model, self.mnt)]
        args = " ".join(rels) + "".join(f" {k}={short(v) if isinstance(v, bytes) else oct(v) if 'mode' in k else v}"
                                        for k, v in kw.items())
        shown = res[0][1] if res[0][0] == "err" else "ok" if res[0][1] is None else short_result(res[0][1])
        self.log.append(f"{fn.__name__} {args} -> {shown}")
        assert res[0] == res[1], self.fail(f"{fn.__name__} {args}: model {res[0]} != mount {res[1]}")
        STATS[(fn.__name__, "ok" if res[0][0] == "ok" else res[0][1])] += 1
        return res[0]

    # -- operations -------------------------------------------------------------------------
    @initialize(seed=st.integers(0, 2**32 - 1))
    def choose_seed(self, seed):
        self.rnd = random.Random(seed)

    @rule(data=st.data())
    def step(self, data):
        """One operation, chosen by weight (hypothesis' own choice of rules is too uneven over a few examples)."""
        names = [n for n in STEPS if (n != "commit" or self.commits < 4) and (n != "remount" or self.remounts < 3)]
        name = self.rnd.choices(names, weights=[STEPS[n][0] for n in names])[0]
        getattr(self, name)(**{k: data.draw(v, label=f"{name}.{k}") for k, v in STEPS[name][1].items()})

    def create_file(self, buf, excl, mode):
        self.both(write_file, self.pick("f", 0.4), data=buf, flags=os.O_EXCL if excl else 0, mode=mode)

    def write_at(self, off, buf):  # past EOF makes a sparse file
        self.both(pwrite, self.pick("f"), off=off, data=buf)

    def append_to(self, buf):
        self.both(append, self.pick("f"), data=buf)

    def truncate(self, size):
        self.both(os.truncate, self.pick("f"), length=size)

    def _rename(self, src, dst):
        if self.both(os.rename, src, dst)[0] == "ok":
            for side in self.inodes.values():
                side.moved(src, dst)

    def rename_file(self, over_existing):  # files mostly, also FIFOs, sockets, symlinks and hard links
        src = self.pick(self.rnd.choice(["f", "f", "f", "ps", "l"]), 0.9)
        dst = self.pick(None, 0.9) if over_existing else self.fresh()
        self._rename(src, dst)

    def rename_dir(self, over_dir):  # seed dirs come from the parent version; over a dir, into a dir
        src = self.pick("d", 0.9)
        dst = self.pick("d", 0.9) if over_dir else self.fresh()
        self._rename(src, dst)

    def unlink(self):  # often one name of a hard-linked inode
        linked = self.linked()
        self.both(os.unlink, self.rnd.choice(linked) if linked and self.rnd.random() < 0.4 else self.pick())

    def mkdir(self, mode):
        self.both(os.mkdir, self.pick("d", 0.2, 0.8), mode=mode)

    def rmdir(self):  # an empty directory half the time; non-empty: ENOTEMPTY on both sides
        empty = [d for d in self.existing("d") if not os.listdir(os.path.join(self.model, d))]
        self.both(os.rmdir, self.rnd.choice(empty) if empty and self.rnd.random() < 0.5 else self.pick("d", 0.9))

    def make_symlink(self, to):
        self.both(symlink, self.pick(None, 0.2, 0.8), to=to)

    def hard_link(self):  # of a file mostly (of one already linked, too), also of FIFOs, sockets, symlinks, dirs
        linked = self.linked()
        src = (self.rnd.choice(linked) if linked and self.rnd.random() < 0.3
               else self.pick(self.rnd.choice(["f", "f", "f", "ps", "l", "d"]), 0.9))
        self.both(os.link, src, self.fresh(0.8), follow_symlinks=False)

    def make_node(self, how, mode):
        # each "how" is drawn for one make_node in four: mostly an unused name, so every kind
        # succeeds in a run (an existing name still tries EEXIST now and then)
        path = self.pick(None, 0.08, 0.95)
        if how == "mkfifo":
            self.both(os.mkfifo, path, mode=mode)
        elif how == "bind":
            self.both(bind_socket, path)
        else:
            self.both(os.mknod, path, mode=mode | (stat.S_IFIFO if how == "mknod fifo" else stat.S_IFREG))

    def change_mode(self, fmode, dmode):
        self.both(chmod, self.pick(), fmode=fmode, dmode=dmode)

    def change_owner(self, uid, gid):
        self.both(chown, self.pick(), uid=uid, gid=gid)

    def utime(self, mtime, atime):  # files mostly, also FIFOs and directories (the root too)
        kind = self.rnd.choice(["f", "f", "f", "p", "d", "root"])
        self.both(os.utime, "" if kind == "root" else self.pick(kind), ns=(atime, mtime))

    def _xattr_target(self, having: str | None = None) -> str:
        """Files and directories mostly (user.* on others: EPERM); with having, often a path with that xattr."""
        if having:
            with_it = [rel for rel, st_ in walk(self.model)
                       if having in os.listxattr(os.path.join(self.model, rel), follow_symlinks=False)]
            if with_it and self.rnd.random() < 0.8:
                rel = self.rnd.choice(with_it)
                return "" if rel == "." else rel
        kind = self.rnd.choice(["f", "f", "d", "d", "root", "ps", "l"])
        return "" if kind == "root" else self.pick(kind)

    def set_xattr(self, name, value, flags):
        if name != "user.big":
            value = value[:32]  # all of an inode's xattrs fit in ext4's one block
        self.both(setxattr, self._xattr_target(), name=name, value=value, flags=flags)

    def remove_xattr(self, name):
        self.both(removexattr, self._xattr_target(name), name=name)

    def read_xattrs(self, name):
        path = self._xattr_target(name)
        self.both(listxattr, path)
        self.both(getxattr, path, name=name)

    def rewind_dir(self):
        parent = self.rnd.choice(["", ""] + self.existing("d"))
        self.both(rewind_listing, parent, create=self.fresh(0.8).rsplit("/", 1)[-1])

    def drop_caches(self):
        """The kernel forgets its dentries and inodes: the next lookups must give the same numbers."""
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        self.log.append("drop_caches")
        STATS[("drop_caches", "ok")] += 1

    def commit(self, message):
        self.commits += 1
        snap = snapshot(self.model)
        text = self.draft.commit(message)
        self.log.append(f"commit -> {text}")
        m = re.fullmatch(rf"{re.escape(self.name)}:v(\d+)( \(unchanged\))?", text)
        assert m, self.fail(f"commit outcome {text!r}")
        num, unchanged = int(m.group(1)), bool(m.group(2))
        if identity(snap) == identity(self.versions[self.last]):
            assert (num, unchanged) == (self.last, True), self.fail(f"identical content, yet {text!r}")
        else:
            assert (num, unchanged) == (max(self.versions) + 1, False), self.fail(f"changed content, yet {text!r}")
            self.versions[num] = snap
        self.last = num
        STATS[("commit", "unchanged" if unchanged else "new")] += 1
        assert self.draft.status() == [], self.fail("a draft is clean right after a commit")
        with open(self.draft.path(".artfs", "ref")) as f:
            assert f.read().strip() == f"{self.name}:draft (parent {self.name}:v{num})"
        ro = Mounted(self.store, f"{self.name}:v{num}", self.ro_mnt)
        ro.__enter__()
        try:
            got = snapshot(ro.mnt)
            assert got == self.versions[num], self.fail(
                f"{self.name}:v{num} differs from the model:\n" + snap_diff(self.versions[num], got, ("model", "version")))
            with pytest.raises(OSError) as ei:
                os.mkdir(ro.path("new"))
            assert ei.value.errno == errno.EROFS
        finally:
            unmount(ro)

    def remount(self):
        self.remounts += 1
        self.log.append("remount")
        STATS[("remount", "ok")] += 1
        unmount(self.draft)
        self.draft = None
        self._mount_draft()

    # -- after every step ---------------------------------------------------------------------
    @invariant()
    def same_tree(self):
        if self.draft is None:
            return
        a, b = snapshot(self.model), snapshot(self.mnt)
        assert a == b, self.fail("the mount differs from the model:\n" + snap_diff(a, b))
        for side, inodes in self.inodes.items():
            bad = inodes.check()
            assert not bad, self.fail(f"inode numbers changed on the {side} side:\n  " + "\n  ".join(bad))
        want = expected_status(identity(self.versions[self.last]), identity(a))
        got = self.draft.status()
        assert got == want, self.fail(f".artfs/status is {got}, the model says {want}")


def short_result(v) -> str:
    if isinstance(v, bytes):
        return short(v)
    if isinstance(v, tuple) and len(v) == 4:  # rewind_listing
        return f"{v[0]} / create {v[1]} / {v[2]}" + (f" / {v[3]}" if v[3] else "")
    return repr(v)


@pytest.mark.timeout(600 + 6 * max(0, EXAMPLES - 40))
def test_draft_mount_matches_plain_directory(tmp_path):
    store = str(tmp_path / "store")
    artfs(store, "init")
    DraftModel.store, DraftModel.tmp = store, str(tmp_path)
    STATS.clear()
    try:
        run_state_machine_as_test(DraftModel, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=30, deadline=None, derandomize=not RANDOM, database=None,
            suppress_health_check=list(HealthCheck), print_blob=False,
            phases=[p for p in Phase if p != Phase.shrink or SHRINK]))
    finally:
        with open("/proc/mounts") as f:
            left = [line.split()[1] for line in f if line.split()[1].startswith(str(tmp_path))]
        for mp in left:
            force_unmount(mp)
    print("model run:", ", ".join(f"{op} {res}: {n}" for (op, res), n in sorted(STATS.items())))
    # The run must have exercised every operation (a guard against a machine that only makes errors).
    missing = [op for op in OPS if not STATS[(op, "ok")]]
    missing += [k for k in ("rename",) if not STATS[(k, "ENOTEMPTY")]]
    missing += [k for k in ("rmdir",) if not STATS[(k, "ENOTEMPTY")]]
    missing += [k for k in (("commit", "new"), ("commit", "unchanged"), ("remount", "ok")) if not STATS[k]]
    assert not missing, f"not exercised: {missing}; stats: {sorted(STATS.items())}"
    p = artfs(store, "fsck", check=False)
    assert p.returncode == 0, f"fsck after the model run: {p.stdout}{p.stderr}"


# -- focused tests -------------------------------------------------------------------------------

def snapshot_reads(root: str) -> dict:
    """snapshot without atimes: the scenarios read files, which moves atimes on ext4 (relatime), not in
    artfs (noatime semantics, README)."""
    snap = snapshot(root)
    for rec in snap.values():
        rec.pop("atime", None)
    return snap


@pytest.fixture
def fdraft(mstore, tmp_path):
    """A draft mount of a version made from the seed tree, and a plain copy of the seed (``m.plain``)."""
    seed = make_seed(str(tmp_path / "seed"))
    artfs(mstore, "put", "f", seed)
    plain = str(tmp_path / "plain")
    shutil.copytree(seed, plain, symlinks=True)
    m = Mounted(mstore, "f:draft", str(tmp_path / "mnt"))
    m.__enter__()
    m.store, m.tmp, m.plain = mstore, tmp_path, plain
    try:
        yield m
    finally:
        unmount(m)


def same_on_both(m: Mounted, scenario) -> list:
    """Run scenario(root) on the plain copy, then on the mount; transcripts and trees must match."""
    want = scenario(m.plain)
    got = scenario(m.mnt)
    assert got == want
    a, b = snapshot_reads(m.plain), snapshot_reads(m.mnt)
    assert a == b, snap_diff(a, b, ("plain", "mount"))
    return got


def committed_matches(m: Mounted, expect: str) -> None:
    """Commit, check the outcome, mount it read-only and compare with the plain copy."""
    assert m.commit("focused") == expect
    assert m.status() == []
    ro = Mounted(m.store, expect.split()[0], str(m.tmp / "ro"))
    ro.__enter__()
    try:
        a, b = snapshot_reads(m.plain), snapshot_reads(ro.mnt)
        assert a == b, snap_diff(a, b, ("plain", "version"))
    finally:
        unmount(ro)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_atomic_save_is_a_modification(fdraft):
    """An editor's save (temp file, fsync, rename over), 50 times: one `M`, never D+A."""
    def scenario(root):
        target = os.path.join(root, "d1", "b")
        for i in range(50):
            tmp = os.path.join(root, "d1", f".b.swp{i % 3}")
            with open(tmp, "wb") as f:
                f.write(b"save %d\n" % i * (i + 1))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.rename(tmp, target)
        return read(target), sorted(os.listdir(os.path.join(root, "d1")))

    same_on_both(fdraft, scenario)
    assert fdraft.status() == ["M d1/b"]
    committed_matches(fdraft, "f:v1")


def test_identical_rewrite_is_not_a_change(fdraft):
    """Writing the same bytes back (in place, by atomic save, or edit-then-revert) is not `M`."""
    def scenario(root):
        p = os.path.join(root, "a")
        data = read(p)
        with open(p, "wb") as f:  # in place, O_TRUNC on a file from the parent
            f.write(data)
        b = os.path.join(root, "b")
        tmp = os.path.join(root, ".b.tmp")
        with open(tmp, "wb") as f:  # atomic save with the same bytes and mode
            f.write(read(b))
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        os.rename(tmp, b)
        d = os.path.join(root, "d1", "b")
        orig = read(d)
        fd = os.open(d, os.O_RDWR)
        try:  # edit, grow, then revert
            os.pwrite(fd, b"XXXX", 3)
            os.pwrite(fd, b"tail", len(orig) + 100)
            os.ftruncate(fd, len(orig))
            os.pwrite(fd, orig[3:7], 3)
        finally:
            os.close(fd)
        return read(p), read(b), read(d)

    same_on_both(fdraft, scenario)
    assert fdraft.status() == []
    assert fdraft.commit() == "f:v0 (unchanged)"


def test_open_unlinked_file_stays_usable(fdraft):
    """An unlinked file stays readable and writable (in place) through open descriptors until closed."""
    def scenario(root):
        out = []
        with contextlib.ExitStack() as stack:
            fw = stack.enter_context(open(os.path.join(root, "d1", "b"), "r+b"))  # from the parent, for writing
            fr = stack.enter_context(open(os.path.join(root, "a"), "rb"))  # from the parent, read-only
            for name in ("d1/b", "a"):
                os.unlink(os.path.join(root, name))
            out.append((sorted(os.listdir(root)), sorted(os.listdir(os.path.join(root, "d1")))))
            for f in (fw, fr):
                st_ = os.fstat(f.fileno())
                out.append((f.read(), st_.st_size, st_.st_nlink))
            os.pwrite(fw.fileno(), b"##", 2)
            os.pwrite(fw.fileno(), b"end", 297)
            out.append(os.pread(fw.fileno(), 4096, 0))
            with open(os.path.join(root, "d1", "b"), "wb") as f:  # a new file under the old name
                f.write(b"another file\n")
            out.append((os.pread(fw.fileno(), 4096, 0), read(os.path.join(root, "d1", "b"))))
            out.append(os.pread(fr.fileno(), 4096, 0))
        out.append(sorted(os.listdir(root)))
        return out

    same_on_both(fdraft, scenario)
    assert fdraft.status() == ["D a", "M d1/b"]
    committed_matches(fdraft, "f:v1")


def test_open_unlinked_file_keeps_its_size(fdraft):
    """An open-unlinked file keeps its true size: growth after the unlink is readable.

    Regression (found by this file, fixed in ccf8cf8): stat took a changed
    file's size from its scratch path, gone after the unlink, so a file
    created in the draft read as empty and writes past the old size were
    invisible.
    """
    def scenario(root):
        out = []
        with contextlib.ExitStack() as stack:
            p = os.path.join(root, "x")
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)
            os.write(fd, b"created in the draft\n")
            os.unlink(p)
            out.append((os.pread(fd, 100, 0), os.fstat(fd).st_size))
            os.pwrite(fd, b"sparse", 9000)
            out.append((os.pread(fd, 10000, 0), os.fstat(fd).st_size))
            p = os.path.join(root, "a")
            fd2 = os.open(p, os.O_RDWR)
            stack.callback(os.close, fd2)
            os.unlink(p)
            os.pwrite(fd2, b"more\n", 6)
            out.append((os.pread(fd2, 100, 0), os.fstat(fd2).st_size))
        return out

    same_on_both(fdraft, scenario)


def test_ftruncate_open_unlinked_file(fdraft):
    """ftruncate works on an open-unlinked file (created in the draft, or from the parent).

    Regression (found by this file, fixed in ccf8cf8): it failed with ENOENT,
    truncating the scratch file by its path after the unlink removed it.
    """
    def scenario(root):
        out = []
        with contextlib.ExitStack() as stack:
            fds = []
            for name in ("x", "b"):
                p = os.path.join(root, name)
                fd = os.open(p, os.O_RDWR | os.O_CREAT)
                stack.callback(os.close, fd)
                os.pwrite(fd, b"hello", 0)
                os.unlink(p)
                fds.append(fd)
            for fd in fds:
                out.append(outcome(os.ftruncate, fd, 2))
                out.append((os.pread(fd, 100, 0), os.fstat(fd).st_size))
        return out

    same_on_both(fdraft, scenario)


def test_two_descriptors_see_each_others_writes(fdraft):
    """Writes through one descriptor are seen through another, also one opened before the copy-up."""
    def scenario(root):
        out = []
        p = os.path.join(root, "b")
        r = os.open(p, os.O_RDONLY)  # opened while the file is still the parent's
        out.append(os.pread(r, 16, 0))
        w = os.open(p, os.O_RDWR)
        os.pwrite(w, b"XYZ", 10)
        out.append(os.pread(r, 16, 0))
        a = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(a, b"appended")
        out.append((os.pread(w, 100, 1270), os.pread(r, 100, 1270), os.fstat(r).st_size))
        os.pwrite(w, b"past the end", 5000)  # sparse
        out.append((os.pread(r, 20, 4995), os.fstat(a).st_size))
        os.write(a, b"!")
        out.append((os.pread(r, 20, 5005), os.fstat(r).st_size))
        q = os.path.join(root, "d2", "new")
        c1 = os.open(q, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        c2 = os.open(q, os.O_RDWR)
        for i in range(20):
            os.pwrite(c1 if i % 2 else c2, b"%02d" % i, 2 * i)
            out.append(os.pread(c2 if i % 2 else c1, 64, 0))
        for fd in (r, w, a, c1, c2):
            os.close(fd)
        out.append((read(p)[:16], len(read(p)), read(q)))
        return out

    same_on_both(fdraft, scenario)
    assert fdraft.status() == ["M b", "A d2/new"]
    committed_matches(fdraft, "f:v1")


def test_rename_parent_directory_over_empty_directory(fdraft):
    """Directories from the parent version renamed over empty ones (from the parent, and new)."""
    def scenario(root):
        j = lambda *p: os.path.join(root, *p)  # noqa: E731
        out = [outcome(os.rename, j("d2"), j("d1"))]  # over a non-empty one: ENOTEMPTY
        out.append(outcome(os.rename, j("d1"), j("d2")))  # d2 is an empty dir of the parent version
        out.append(sorted(os.listdir(root)))
        os.mkdir(j("d2", "d2", "e"))
        out.append(outcome(os.rename, j("d2", "d2"), j("x")))
        os.mkdir(j("y"))
        out.append(outcome(os.rename, j("x"), j("y")))  # over a new empty dir
        out.append(outcome(os.rename, j("y"), j("d2", "y")))  # into another dir
        out.append(sorted(os.listdir(j("d2"))))
        out.append(read(j("d2", "y", "c")))
        with open(j("d2", "y", "c"), "ab") as f:
            f.write(b"more\n")
        return out

    same_on_both(fdraft, scenario)
    committed_matches(fdraft, "f:v1")
    unmount(fdraft)
    fdraft.__enter__()  # the draft, clean, on the new version
    a, b = snapshot_reads(fdraft.plain), snapshot_reads(fdraft.mnt)
    assert a == b, snap_diff(a, b, ("plain", "mount"))


def test_many_open_files(fdraft):
    """200 files open at once (new ones written, parent files read) all behave."""
    def scenario(root):
        os.mkdir(os.path.join(root, "many"))
        fds = [os.open(os.path.join(root, "many", f"f{i:03d}"), os.O_RDWR | os.O_CREAT, 0o644) for i in range(200)]
        ros = [os.open(os.path.join(root, "b" if i % 2 else "d1/b"), os.O_RDONLY) for i in range(200)]
        try:
            for i, fd in enumerate(fds):
                os.write(fd, b"file %d\n" % i * (i % 7 + 1))
            out = [os.pread(fd, 4096, 0) for fd in fds]
            out += [os.pread(fd, 32, i) for i, fd in enumerate(ros)]
        finally:
            for fd in fds + ros:
                os.close(fd)
        out.append(sorted(os.listdir(os.path.join(root, "many"))))
        return out

    same_on_both(fdraft, scenario)
    assert fdraft.status() == ["A many"] + [f"A many/f{i:03d}" for i in range(200)]
    committed_matches(fdraft, "f:v1")


def test_open_for_writing_keeps_mtime_of_empty_file(fdraft):
    """Opening a file for writing without writing keeps its mtime, also when it is empty.

    Regression (found by this file, fixed in ccf8cf8): the copy-up set the
    parent's mtime on the scratch file only for non-empty files, so an empty
    file's mtime became the time of the open (seen once the kernel's 10 s
    attribute cache expires, hence the remount).
    """
    def scenario(root):
        for name in ("d1/a", "a"):  # d1/a is empty, a is not; both from the parent with 2003 mtimes
            os.close(os.open(os.path.join(root, name), os.O_WRONLY))
        fd = os.open(os.path.join(root, "d1", "a"), os.O_WRONLY)
        os.pwrite(fd, b"", 10)
        os.close(fd)

    scenario(fdraft.plain)
    scenario(fdraft.mnt)
    unmount(fdraft)  # a fresh mount: no cached attributes
    fdraft.__enter__()
    a, b = snapshot_reads(fdraft.plain), snapshot_reads(fdraft.mnt)
    assert a == b, snap_diff(a, b, ("plain", "mount"))


def test_o_trunc_on_changed_file(fdraft):
    """`echo long > x; echo b > x` leaves "b\\n".

    Regression (found by this file, fixed in ccf8cf8): open(O_TRUNC) only
    truncated while copying a file up, so a file already changed in the draft
    kept its old bytes past the new ones ("short\\ner line\\n").
    """
    def scenario(root):
        p = os.path.join(root, "x")
        with open(p, "w") as f:
            f.write("a longer line\n")
        with open(p, "w") as f:
            f.write("short\n")
        return read(p)

    assert same_on_both(fdraft, scenario) == b"short\n"


# -- focused tests for issue 11 (hard links, inode numbers, readdir) --------------------------------

def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@pytest.fixture
def ldraft(mstore, tmp_path):
    """A draft mount of a version made from the model's seed (hard links b = d1/d2/b, a FIFO, xattrs)."""
    seed = make_model_seed(str(tmp_path / "seed"))
    artfs(mstore, "put", "l", seed)
    m = Mounted(mstore, "l:draft", str(tmp_path / "mnt"))
    m.__enter__()
    m.store, m.tmp, m.seed = mstore, tmp_path, seed
    try:
        yield m
    finally:
        unmount(m)


def inos(root: str, rels=("b", "d1/d2/b", "a", "d1", "d1/d2/d2", "c")) -> dict:
    return {rel: (os.lstat(os.path.join(root, rel)).st_ino, os.lstat(os.path.join(root, rel)).st_nlink)
            for rel in rels if os.path.lexists(os.path.join(root, rel))}


@pytest.mark.timeout(120)
def test_inode_numbers_survive_drop_caches_and_remount(ldraft):
    """Every kind of entry -- from the parent version or new, hard-linked, renamed -- keeps its st_ino
    when the kernel forgets it and across a remount (no commit in between)."""
    m = ldraft
    os.mkdir(m.path("new"))
    with open(m.path("new", "f"), "w") as f:
        f.write("new\n")
    os.link(m.path("new", "f"), m.path("f2"))
    os.mkfifo(m.path("fifo"))
    os.rename(m.path("d1", "b"), m.path("moved"))
    os.rename(m.path("d1", "d2"), m.path("d2", "x"))
    rels = ["b", "d2/x/b", "a", "d1", "d2/x", "d2/x/d2", "c", "new", "new/f", "f2", "fifo", "moved"]
    before = inos(m.mnt, rels)
    assert before["b"] == before["d2/x/b"] and before["new/f"] == before["f2"]
    assert len({ino for ino, _ in before.values()}) == len(rels) - 2
    drop_caches()
    assert inos(m.mnt, rels) == before
    unmount(m)
    m.__enter__()
    assert inos(m.mnt, rels) == before


@pytest.mark.timeout(120)
def test_hard_links_keep_nlink_after_commit(ldraft):
    m = ldraft
    assert inos(m.mnt, ["b", "d1/d2/b"])["b"][1] == 2
    assert m.commit() == "l:v0 (unchanged)"
    drop_caches()
    assert [n for _, n in inos(m.mnt, ["b", "d1/d2/b"]).values()] == [2, 2]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["change", "remount"])
def test_hard_links_keep_inode_numbers_after_commit(ldraft, then):
    m = ldraft
    os.link(m.path("a"), m.path("a2"))  # a group made in the draft, beside the parent's (b, d1/d2/b)
    before = inos(m.mnt, ["b", "d1/d2/b", "a", "a2"])
    assert m.commit() == "l:v1"
    if then == "change":
        with open(m.path("zzz"), "w"):
            pass
        drop_caches()
    else:
        unmount(m)
        m.__enter__()
    assert inos(m.mnt, ["b", "d1/d2/b", "a", "a2"]) == before


@pytest.mark.timeout(120)
def test_rewinddir_sees_new_entries(fdraft):
    """opendir, read all, create, rewinddir, read again: the new name is listed (issue 11 fault 8)."""
    def scenario(root):
        return [rewind_listing(os.path.join(root, d), "new") for d in ("", "d1", "d2")]

    got = same_on_both(fdraft, scenario)
    assert all("new" in second and "new" not in first for first, _, second, _ in got)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["draft", "version"])
def test_readdir_lists_dot_and_dotdot(fdraft, kind):
    """readdir gives "." and ".." like ext4, with the directory's and its parent's inode numbers."""
    def listing(root):
        out = []
        for d in ("", "d1", "d1/d2"):
            path = os.path.join(root, d)
            with opendir(path) as dp:
                ents = {name: ino for name, ino, _ in readdir_all(dp, path)}
            parent = os.path.dirname(os.path.normpath(path)) if d else None
            out.append((ents.get(".") == os.lstat(path).st_ino,
                        ".." in ents and (parent is None or ents[".."] == os.lstat(parent).st_ino)))
        return out

    assert listing(fdraft.plain) == [(True, True)] * 3
    if kind == "draft":
        assert listing(fdraft.mnt) == [(True, True)] * 3
    else:
        with Mounted(fdraft.store, "f:v0", str(fdraft.tmp / "ro")) as ro:
            assert listing(ro.mnt) == [(True, True)] * 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", [
    "from the parent",
    "changed in the draft",
])
def test_o_trunc_of_empty_file_moves_mtime(fdraft, which):
    """`: > f` on an empty file moves its mtime to now, like on ext4 (found by a random run of the model)."""
    def scenario(root):
        p = os.path.join(root, "d1", "a")  # empty, mtime 2003
        if which == "changed in the draft":
            os.close(os.open(p, os.O_WRONLY | os.O_APPEND))
            with open(p, "ab"):
                pass
            os.utime(p, ns=(SEED_MTIME, SEED_MTIME))
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        return os.lstat(p).st_mtime_ns > CUTOFF

    assert same_on_both(fdraft, scenario) is True
