"""Model-based test of a draft mount (DESIGN.md §4, §5): the same random
operations go to ``artfs mount NAME:draft`` and to a plain directory on the
local disk, and the two trees must stay equal after every step.

``DraftModel`` is a hypothesis state machine.  Each example puts a small seed
tree as a new artifact (a fresh name per example, one store for the whole
run), mounts its draft, copies the seed to the model directory, then applies
file operations on a pool of five names at depth <= 3 so that they collide
often.  Every operation runs on the model first, then on the mount; an
``OSError`` on one side must be the same errno on the other.  After every
step both trees are compared by ``tree_snapshot`` (kinds, modes, sizes,
content, symlink targets) plus the mtimes of files whose mtime was last set
explicitly (seed files, ``os.utime``): those are all before ``CUTOFF``, and a
write moves a file's mtime to now on both sides.  ``.artfs/status`` must
list what the model says changed against the parent version's identity.

``commit`` writes ``.artfs/commit``, checks the outcome against the model (a
new ``vN`` exactly when the identity -- names, kinds, executable bits,
content -- changed, else ``vK (unchanged)``) and mounts that version
read-only elsewhere to compare it with the model as it was when the version
was made.  ``remount`` unmounts the draft and mounts ``NAME:draft`` again: the
draft must persist.

Hypothesis draws the number of steps, a seed and every operation's
arguments (bytes, offsets, sizes, modes, times); the operation (by weight,
``STEPS``) and its paths (an existing path of the wanted kind most of the
time, else a pool name in an existing directory, else any pool path) come
from a ``random.Random`` with that seed: hypothesis' own rule choice (swarm
testing) left whole operations out of most of so few examples.  Every
operation is logged and a failure prints the log of its example as the
reproduction.  The run fails if some operation never succeeded (or
``rename``/``rmdir`` never met ``ENOTEMPTY``), so the machine cannot quietly
degrade into making only errors.  Default: 40 examples of up to 30 steps,
derandomized (the same run every time), about 45 s.

The focused tests at the end cover what a state machine does poorly:
editors' atomic saves, identical rewrites, open-unlinked files, two
descriptors on one file, renaming a parent directory over an empty one, many
open files; each runs its scenario on a plain directory too and compares.
The last four are regressions for bugs this file found (fixed in ccf8cf8).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import os
import random
import re
import shutil
import stat
import subprocess
import time

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from mounts import Mounted, artfs, force_unmount, is_mounted, mstore, needs_fuse, tree_snapshot  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.mount]

NAMES = ["a", "b", "c", "d1", "d2"]
SEED_MTIME = 1_050_000_000_123_456_789  # 2003
UTIME_MIN = 1_100_000_000_000_000_000  # 2004
CUTOFF = 1_300_000_000_000_000_000  # 2011: any mtime before this was set explicitly

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


def snapshot(root: str) -> dict:
    """tree_snapshot plus the mtime of every regular file whose mtime was set explicitly."""
    snap = tree_snapshot(root, content=True)
    for rel, rec in snap.items():
        if rec[0] == "f":
            m = os.lstat(os.path.join(root, rel)).st_mtime_ns
            if m < CUTOFF:
                snap[rel] = rec + (m,)
    return snap


def identity(snap: dict) -> dict:
    """What makes a version (DESIGN.md §5): names, kinds, executable bits, content."""
    out = {}
    for rel, rec in snap.items():
        if rec[0] == "f":
            out[rel] = ("f", bool(rec[1] & 0o111), rec[3])
        elif rec[0] == "d":
            out[rel] = ("d",)
        else:
            out[rel] = rec
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


def snap_diff(a: dict, b: dict, names=("model", "mount")) -> str:
    return "\n".join(f"  {k}: {names[0]}={a.get(k)} {names[1]}={b.get(k)}"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


def write_file(path: str, data: bytes, flags: int = 0, mode: int = 0o644) -> int:
    """Create or replace a file's content (what `>` in a shell does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def pwrite(path: str, off: int, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def append(path: str, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def symlink(path: str, to: str) -> None:
    os.symlink(to, path)


def chmod(path: str, fmode: int, dmode: int) -> None:
    os.chmod(path, dmode if os.path.isdir(path) else fmode)


def short(data: bytes) -> str:
    return repr(data) if len(data) <= 16 else f"<{len(data)} bytes {data[:8]!r}...>"


# -- the state machine -------------------------------------------------------------------------

payload = st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000))
offsets = st.one_of(st.integers(0, 64), st.integers(0, 6000), st.integers(100_000, 300_000))
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o700])
dir_modes = st.sampled_from([0o755, 0o700, 0o555, 0o750])
mtimes = st.integers(UTIME_MIN, CUTOFF - 1)
link_targets = st.sampled_from(NAMES + ["d1/a", "d1/d2/c", "d2/b", "nowhere"])

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
    "change_mode": (1, {"fmode": file_modes, "dmode": dir_modes}),
    "utime": (2, {"mtime": mtimes, "atime": mtimes}),
    "commit": (2, {"message": st.sampled_from(["", "model step", "ünïcode"])}),
    "remount": (1, {}),
}
OPS = ["write_file", "pwrite", "append", "truncate", "rename", "unlink", "mkdir", "rmdir", "symlink", "chmod", "utime"]
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
        seed = make_seed(os.path.join(base, "seed"))
        out = artfs(self.store, "put", self.name, seed).stdout.strip()
        assert out == f"{self.name}:v0", out
        shutil.copytree(seed, self.model, symlinks=True)
        self.versions = {0: snapshot(self.model)}  # version number -> the model when it was made
        self.last = 0  # the draft's parent version
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
        """Paths in the model (want: 'f', 'd', 'l' or None for any)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.model):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                mode = os.lstat(full).st_mode
                kind = "l" if stat.S_ISLNK(mode) else "d" if stat.S_ISDIR(mode) else "f"
                if want is None or kind == want:
                    out.append(os.path.relpath(full, self.model))
        return sorted(out)

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

    # -- running one operation on both sides ---------------------------------------------
    def both(self, fn, *rels, **kw):
        """fn(*absolute paths, **kw) on the model, then on the mount; results or errnos must match."""
        res = [outcome(lambda: fn(*(os.path.join(root, r) for r in rels), **kw)) for root in (self.model, self.mnt)]
        args = " ".join(rels) + "".join(f" {k}={short(v) if isinstance(v, bytes) else oct(v) if 'mode' in k else v}"
                                        for k, v in kw.items())
        self.log.append(f"{fn.__name__} {args} -> {res[0][1] if res[0][0] == 'err' else 'ok'}")
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

    def rename_file(self, over_existing):
        src = self.pick("f", 0.9)
        dst = self.pick(None, 0.9) if over_existing else self.fresh()
        self.both(os.rename, src, dst)

    def rename_dir(self, over_dir):  # seed dirs come from the parent version; over a dir, into a dir
        src = self.pick("d", 0.9)
        dst = self.pick("d", 0.9) if over_dir else self.fresh()
        self.both(os.rename, src, dst)

    def unlink(self):
        self.both(os.unlink, self.pick())

    def mkdir(self, mode):
        self.both(os.mkdir, self.pick("d", 0.2, 0.8), mode=mode)

    def rmdir(self):  # non-empty: ENOTEMPTY on both sides
        self.both(os.rmdir, self.pick("d", 0.9))

    def make_symlink(self, to):
        self.both(symlink, self.pick(None, 0.2, 0.8), to=to)

    def change_mode(self, fmode, dmode):
        self.both(chmod, self.pick(), fmode=fmode, dmode=dmode)

    def utime(self, mtime, atime):
        self.both(os.utime, self.pick("f"), ns=(atime, mtime))

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
        want = expected_status(identity(self.versions[self.last]), identity(a))
        got = self.draft.status()
        assert got == want, self.fail(f".artfs/status is {got}, the model says {want}")


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
    a, b = snapshot(m.plain), snapshot(m.mnt)
    assert a == b, snap_diff(a, b, ("plain", "mount"))
    return got


def committed_matches(m: Mounted, expect: str) -> None:
    """Commit, check the outcome, mount it read-only and compare with the plain copy."""
    assert m.commit("focused") == expect
    assert m.status() == []
    ro = Mounted(m.store, expect.split()[0], str(m.tmp / "ro"))
    ro.__enter__()
    try:
        a, b = snapshot(m.plain), snapshot(ro.mnt)
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
    a, b = snapshot(fdraft.plain), snapshot(fdraft.mnt)
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
    a, b = snapshot(fdraft.plain), snapshot(fdraft.mnt)
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
