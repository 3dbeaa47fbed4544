"""Legacy programs round-trip a hostile reference tree through artfs (issue 11, DESIGN.md §4).

A reference tree on the local disk (ext4) holds what real trees hold and
naive file systems lose: a group of three hard links across two
directories, a FIFO, a Unix socket left by ``bind``, character and block
devices, xattrs (``user.*`` text, binary and a 3000-byte value on files and
a directory, ``trusted.*`` and ``security.*``), POSIX access and default
ACLs, atimes set apart from mtimes, a name that is not UTF-8, a name with a
newline, mtimes in 2300 and before 1970, symlinks (one owned by nobody), an
empty directory, setuid/setgid/sticky modes and owners other than root.

Each legacy tool -- ``cp -a``, ``rsync -aHAX``, ``tar --xattrs --acls -p``
(create, then extract) -- copies it

* from ext4 to ext4: the *baseline*, what the tool itself keeps (``tar``
  skips sockets, ``rsync -a`` does not keep atimes, ...);
* into a draft mount (``draft``), which is then committed; the new version
  is mounted read-only (``version``), copied out of that mount by the same
  tool to ext4 (``out``), and written by ``artfs export`` (``export``).

Every stage is compared with the baseline, field by field, in groups so that
one lost field does not hide the others: names (as bytes), kind (type, mode,
owner, size, symlink target, rdev), content, mtime, atime, xattrs (ACLs
included), links (``st_nlink`` and which names share an inode).  A time is
compared only where the baseline kept the reference's value (else it is the
time of the copy).  Also ``rsync -aHAXn --delete --itemize-changes`` between
the draft and the version mount prints nothing, the draft is the same before
and after its commit, and ``artfs put`` of the reference tree, then
``export`` and a read-only mount, give back the reference itself (every
field, atimes and the root's own metadata included).
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess

import pytest

from mounts import Mounted, artfs, force_unmount, needs_fuse  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.mount]

NS = 1_000_000_000
MTIME = 1_600_000_000_123_456_789  # 2020, plus a distinct offset per entry
# Atimes lie in the future (2096): ext4's relatime never moves an atime that is newer
# than mtime, ctime and now - 24 h, so reading the reference tree leaves it as it is.
ATIME = 4_000_000_000_987_654_321
Y2300 = 10_413_792_000 * NS + 5  # 2300-01-01T00:00:00.000000005Z
BEFORE_1970 = -1_234_567_890 * NS + 500_000_000  # 1930-11-18
NOBODY, NOGROUP = 65534, 65534
BIG_XATTR = bytes((i * 7 + 3) % 256 for i in range(3000))
BINARY_XATTR = b"\x00\x01\xff\xfe binary\x00value\n"


def _sh(*cmd, cwd=None, check=True):
    p = subprocess.run(list(cmd), cwd=cwd, capture_output=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return p


def _write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def build_reference(root: str) -> str:
    """The hostile reference tree (see the module docstring); returns root."""
    r = os.fsencode(root)
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    os.mkdir(r)
    for d in (b"d1", b"d2", b"empty", b"sgid", b"sticky", b"owned", b"dacl", b"dev", b"d2/deep"):
        os.mkdir(j(d))
    _write(j(b"plain.txt"), b"plain text\n" * 100)
    _write(j(b"random.bin"), os.urandom(300_000), 0o600)
    _write(j(b"exec.sh"), b"#!/bin/sh\necho hi\n", 0o755)
    _write(j(b"setuid"), b"suid\n", 0o4755)
    _write(j(b"caf\xe9.txt"), b"latin-1 name\n")
    _write(j(b"d2", b"new\nline"), b"newline in the name\n")
    _write(j(b"future"), b"mtime in 2300\n")
    _write(j(b"past"), b"mtime before 1970\n")
    _write(j(b"d1", b"h1"), b"three names, one inode\n", 0o640)
    os.link(j(b"d1", b"h1"), j(b"d1", b"h2"))
    os.link(j(b"d1", b"h1"), j(b"d2", b"h3"))
    os.mkfifo(j(b"fifo"), 0o640)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(j(b"d1", b"sock"))
    finally:
        s.close()
    os.mknod(j(b"dev", b"null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(j(b"dev", b"loop"), 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.symlink(b"plain.txt", j(b"link"))
    os.symlink(b"../caf\xe9.txt", j(b"d1", b"link-latin1"))
    os.symlink(b"/nowhere/dangling", j(b"owned", b"dangling"))
    # xattrs on files (one of them a hard-linked inode) and directories
    for p in (j(b"plain.txt"), j(b"d1"), j(b"d1", b"h1"), j(b"caf\xe9.txt")):
        os.setxattr(p, b"user.text", b"some text")
        os.setxattr(p, b"user.binary", BINARY_XATTR)
        os.setxattr(p, b"user.big", BIG_XATTR)
    os.setxattr(j(b"random.bin"), b"trusted.artfs", b"trusted value")
    os.setxattr(j(b"d2"), b"trusted.dir", b"\x00")
    os.setxattr(j(b"exec.sh"), b"security.artfs", b"security value")
    os.setxattr(r, b"user.root", b"the root's own")
    _write(j(b"acl.txt"), b"has an access ACL\n", 0o640)
    _sh("setfacl", "-m", "u:nobody:r", j(b"acl.txt"))
    _sh("setfacl", "-d", "-m", "u:nobody:rx", j(b"dacl"))
    _write(j(b"dacl", b"inherited"), b"inherits the default ACL\n")
    os.chmod(j(b"sgid"), 0o2775)
    _write(j(b"sgid", b"f"), b"in a setgid dir\n")
    os.chmod(j(b"sticky"), 0o1777)
    os.chmod(j(b"empty"), 0o700)
    _write(j(b"owned", b"mine"), b"nobody's\n", 0o600)
    os.chown(j(b"owned", b"mine"), NOBODY, NOGROUP)
    os.chown(j(b"owned"), NOBODY, NOGROUP)
    os.lchown(j(b"owned", b"dangling"), NOBODY, NOGROUP)
    os.chmod(r, 0o750)
    # times last, children before their directory
    special = {b"future": (Y2300 + 86400 * NS, Y2300), b"past": (ATIME, BEFORE_1970)}
    entries = []
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            entries.append(os.path.join(dirpath, name))
        entries.append(dirpath)
    for i, p in enumerate(entries):
        rel = os.path.relpath(p, r)
        at, mt = special.get(rel, (ATIME + i * 1001, MTIME + i * 1_000_001))
        os.utime(p, ns=(at, mt), follow_symlinks=False)
    return root


# -- scanning and comparing ------------------------------------------------------------------

FIELDS = {
    "kind": ("type", "mode", "uid", "gid", "size", "target", "rdev"),
    "content": ("digest",),
    "mtime": ("mtime",),
    "atime": ("atime",),
    "xattrs": ("xattrs",),
    "links": ("nlink", "group"),
}
GROUPS = ["names"] + list(FIELDS)


def _xattrs(p: bytes) -> dict:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as exc:
        return {"<listxattr>": exc.strerror}
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(p, n, follow_symlinks=False)
        except OSError as exc:
            out[n] = f"<{exc.strerror}>"
    return out


def _digest(p: bytes) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def scan(root: str) -> dict:
    """relative path (bytes, the root is b".") -> its fields."""
    r = os.fsencode(root)
    out, inodes = {}, {}
    stack = [b"."]
    while stack:
        rel = stack.pop()
        p = os.path.normpath(os.path.join(r, rel))
        st = os.lstat(p)
        kind = stat.S_IFMT(st.st_mode)
        rec = {"type": stat.filemode(st.st_mode)[0], "mode": oct(stat.S_IMODE(st.st_mode)),
               "uid": st.st_uid, "gid": st.st_gid, "size": None if kind == stat.S_IFDIR else st.st_size,
               "target": os.readlink(p) if kind == stat.S_IFLNK else None,
               "rdev": (os.major(st.st_rdev) * 1000 + os.minor(st.st_rdev)
                        if kind in (stat.S_IFCHR, stat.S_IFBLK) else None),
               "digest": _digest(p) if kind == stat.S_IFREG else None,
               "mtime": st.st_mtime_ns, "atime": st.st_atime_ns, "xattrs": _xattrs(p),
               "nlink": st.st_nlink}
        if kind != stat.S_IFDIR:
            inodes.setdefault(st.st_ino, []).append(rel)
        rec["_ino"] = st.st_ino
        out[rel] = rec
        if kind == stat.S_IFDIR:
            for e in os.scandir(p):
                stack.append(e.name if rel == b"." else os.path.join(rel, e.name))
    for rel, rec in out.items():
        rec["group"] = tuple(sorted(inodes.get(rec["_ino"], [])))
    return out


def differences(group: str, want: dict, got: dict, source: dict | None = None) -> list[str]:
    """Differences of one field group between want (the baseline) and got.

    Times are compared only where want kept source's value (source None: always).
    """
    if group == "names":
        return [f"{'only in the baseline' if p in want else 'not in the baseline'}: {p!r}"
                for p in sorted(set(want) ^ set(got))]
    out = []
    for p in sorted(set(want) & set(got)):
        for f in FIELDS[group]:
            a, b = want[p][f], got[p][f]
            if f in ("mtime", "atime") and source is not None and (p not in source or source[p][f] != a):
                continue
            if a != b and f == "xattrs":
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k):
                        out.append(f"{p!r} xattr {k}: want {_short(a.get(k))}, got {_short(b.get(k))}")
            elif a != b:
                out.append(f"{p!r} {f}: want {_short(a)}, got {_short(b)}")
    return out


def _short(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in sorted(v.items())) + "}"
    r = repr(v)
    return r if len(r) <= 60 else f"{r[:40]}...<{len(v) if hasattr(v, '__len__') else '?'}>"


# -- the tools ---------------------------------------------------------------------------------

def copy_with(tool: str, src: str, dst: str, work: str) -> subprocess.CompletedProcess:
    """Copy the tree src into the existing directory dst (its root's metadata too) with tool."""
    if tool == "cp":
        cmd = f"cp -a {src}/. {dst}/"
    elif tool == "rsync":
        cmd = f"rsync -aHAX {src}/ {dst}/"
    else:  # tar restores only user.* xattrs unless told otherwise: ask for all of them
        archive = os.path.join(work, f"{os.path.basename(dst)}.tar")
        cmd = (f"tar --xattrs --acls -C {src} -cf {archive} . && "
               f"tar --xattrs --xattrs-include='*' --acls -p -C {dst} -xf {archive}")
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, errors="replace", timeout=300)


TOOLS = ["cp", "rsync", "tar"]
# What the tools themselves change between two ext4 directories (checked by test_baseline).
TOOL_OWN = {
    "cp": set(),
    "rsync": {("atime", "*")},  # -a does not include -U/--atimes
    "tar": {("names", b"d1/sock"), ("atime", "*")},  # "socket ignored"; extraction does not restore atimes
}


# -- the routes ----------------------------------------------------------------------------------

class Route:
    """What one tool did: the baseline, and the scans of each artfs stage (or the error that stopped it)."""

    def __init__(self, tool: str):
        self.tool = tool
        self.baseline: dict = {}
        self.stages: dict[str, dict] = {}
        self.errors: dict[str, str] = {}  # stage -> why it has no scan
        self.runs: dict[str, tuple[int, str]] = {}  # baseline / into draft / out of version -> (rc, stderr)
        self.itemize: str | None = None
        self.commit: str | None = None  # the commit's outcome
        self.status: bytes | None = None  # .artfs/status of the draft before the commit
        self.inodes: dict[str, tuple[dict, dict]] = {}  # stage -> (st_ino by path, the same after drop_caches)

    def stage(self, name: str) -> dict:
        if name not in self.stages:
            pytest.fail(f"{self.tool}: no {name} stage: {self.errors.get(name) or self.errors}")
        return self.stages[name]


def _scan_into(route: Route, stage: str, root: str, inodes: bool = False) -> None:
    """Scan root as route.stages[stage]; with inodes, also record its inode numbers before and after
    the kernel forgets its inodes (drop_caches) as route.inodes[stage]."""
    try:
        route.stages[stage] = scan(root)
        if inodes:
            before = {p: rec["_ino"] for p, rec in route.stages[stage].items()}
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("2\n")
            route.inodes[stage] = (before, {p: rec["_ino"] for p, rec in scan(root).items()})
    except OSError as exc:
        route.errors[stage] = f"scanning {root}: {exc!r}"


def run_route(r: Route, reference: str, store: str, work: str) -> None:
    """Fill r: the baseline, then draft, commit, version mount, out of it, export (see the module docstring)."""
    tool = r.tool
    os.makedirs(work)
    base = os.path.join(work, "baseline")
    os.mkdir(base)
    p = copy_with(tool, reference, base, work)
    r.runs["baseline"] = (p.returncode, p.stderr)
    r.baseline = scan(base)

    name = f"legacy-{tool}"
    empty = os.path.join(work, "empty")
    os.mkdir(empty)
    artfs(store, "put", name, empty)
    mnt, ro, out = (os.path.join(work, d) for d in ("draft", "version", "out"))
    with Mounted(store, f"{name}:draft", mnt) as d:
        p = copy_with(tool, reference, mnt, work)
        r.runs["into draft"] = (p.returncode, p.stderr)
        _scan_into(r, "draft", mnt, inodes=True)
        try:
            with open(os.path.join(mnt, ".artfs", "status"), "rb") as f:
                r.status = f.read()
        except OSError as exc:
            r.errors["status"] = f".artfs/status: {exc!r}"
        try:
            outcome = d.commit("legacy round trip")
        except OSError as exc:
            r.errors["commit"] = f"commit: {exc!r}"
            return
        r.commit = outcome
        _scan_into(r, "draft after commit", mnt)
        version = outcome.split()[0]
        with Mounted(store, version, ro):
            _scan_into(r, "version", ro, inodes=True)
            p = subprocess.run(["rsync", "-aHAXn", "--delete", "--itemize-changes", mnt + "/", ro + "/"],
                               capture_output=True, text=True, errors="replace", timeout=300)
            r.itemize = p.stdout + p.stderr + ("" if p.returncode == 0 else f"(exit {p.returncode})")
            os.mkdir(out)
            p = copy_with(tool, ro, out, work)
            r.runs["out of version"] = (p.returncode, p.stderr)
            _scan_into(r, "out", out)
    exp = os.path.join(work, "export")
    p = artfs(store, "export", version, exp, check=False)
    if p.returncode != 0:
        r.errors["export"] = f"artfs export {version}: {p.stderr.strip()}"
    else:
        _scan_into(r, "export", exp)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """(work dir, reference tree, its scan, a store) for the whole module."""
    work = tmp_path_factory.mktemp("legacy")
    reference = build_reference(str(work / "reference"))
    store = str(work / "store")
    artfs(store, "init")
    return str(work), reference, scan(reference), store


ROUTES: dict[str, Route] = {}


def get_route(tool: str, legacy) -> Route:
    """The route of tool, run once per module."""
    if tool not in ROUTES:
        work, reference, _, store = legacy
        r = ROUTES[tool] = Route(tool)
        try:
            run_route(r, reference, store, os.path.join(work, tool))
        except Exception as exc:  # the stages that ran are still checked; the others fail with this
            r.errors["route"] = repr(exc)
    return ROUTES[tool]


@pytest.fixture
def route(request, legacy):
    return get_route(request.param, legacy)


def _fail_on(diffs: list[str], what: str) -> None:
    assert not diffs, f"{what}: {len(diffs)} differences\n  " + "\n  ".join(diffs[:40])


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_reference_tree_is_hostile(legacy):
    """The reference tree really holds what the routes must carry (a guard against a silently tame tree)."""
    _, _, ref, _ = legacy
    types = {rec["type"] for rec in ref.values()}
    assert types == {"d", "-", "l", "p", "s", "c", "b"}
    assert ref[b"d1/h1"]["group"] == (b"d1/h1", b"d1/h2", b"d2/h3") and ref[b"d2/h3"]["nlink"] == 3
    assert ref[b"dev/null"]["rdev"] == 1003
    assert ref[b"d1"]["xattrs"]["user.big"] == BIG_XATTR and ref[b"d1/h2"]["xattrs"]["user.binary"] == BINARY_XATTR
    assert "system.posix_acl_access" in ref[b"acl.txt"]["xattrs"]
    assert "system.posix_acl_default" in ref[b"dacl"]["xattrs"]
    assert "system.posix_acl_access" in ref[b"dacl/inherited"]["xattrs"]
    assert "trusted.artfs" in ref[b"random.bin"]["xattrs"] and "security.artfs" in ref[b"exec.sh"]["xattrs"]
    assert ref[b"future"]["mtime"] == Y2300 and ref[b"past"]["mtime"] == BEFORE_1970
    assert all(rec["atime"] != rec["mtime"] for rec in ref.values())
    assert b"caf\xe9.txt" in ref and b"d2/new\nline" in ref
    assert (ref[b"owned/mine"]["uid"], ref[b"owned/dangling"]["uid"]) == (NOBODY, NOBODY)
    assert (ref[b"setuid"]["mode"], ref[b"sgid"]["mode"], ref[b"sticky"]["mode"]) == ("0o4755", "0o2775", "0o1777")
    top_dirs = [p for p, rec in ref.items() if rec["type"] == "d" and p != b"." and b"/" not in p]
    assert ref[b"."]["nlink"] == 2 + len(top_dirs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route", TOOLS, indirect=True)
def test_baseline(route, legacy):
    """Between two ext4 directories each tool changes only what TOOL_OWN says (the tools' own differences)."""
    _, _, ref, _ = legacy
    assert route.runs["baseline"][0] == 0, route.runs["baseline"]
    got = {("names", p) for p in set(ref) ^ set(route.baseline)}
    got |= {(group, "*") for group in FIELDS if differences(group, ref, route.baseline)}
    assert got == TOOL_OWN[route.tool], "\n".join(sum((differences(g, ref, route.baseline) for g in GROUPS), []))


STAGES = ["draft", "version", "out", "export"]
# test id -> reason, for checks that fail because of a known artfs bug (strict xfail); none open now.
# (NLINK after commit was one: fixed when the draft adopts the new parent's link groups at commit.)
KNOWN_BUGS: dict[str, str] = {}


def _params(*axes):
    """pytest params for every combination of axes, id "a-b-c", xfail when the id is in KNOWN_BUGS."""
    import itertools

    out = []
    for combo in itertools.product(*axes):
        tid = "-".join(c.replace(" ", "_") for c in combo)
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[tid])] if tid in KNOWN_BUGS else []
        out.append(pytest.param(*combo, marks=marks, id=tid))
    return out


def _messages(err: str, tree: dict | None = None) -> list[str]:
    """A tool's stderr lines, sorted, without numbers (tar says how far in the future a time stamp is);
    with tree, only the lines about paths in it (tar's "./d1/sock: socket ignored" needs a socket)."""
    import re

    out = []
    for line in err.splitlines():
        m = re.match(r"tar: \./(.*?): ", line)
        if tree is None or not m or os.fsencode(m.group(1)) in tree:
            out.append(re.sub(r"[0-9]+", "#", line))
    return sorted(out)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route, where", _params(TOOLS, ["into draft", "out of version"]), indirect=["route"])
def test_tool_succeeds(route, where):
    """The tool exits as it does between two ext4 directories and says the same (about what its input holds)."""
    rc, err = route.runs.get(where, (None, str(route.errors)))
    base_rc, base_err = route.runs["baseline"]
    tree = route.stages.get("version") if where == "out of version" else None
    assert (rc, _messages(err)) == (base_rc, _messages(base_err, tree)), err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route, stage, group", _params(TOOLS, STAGES, GROUPS), indirect=["route"])
def test_stage_matches_baseline(route, stage, group, legacy):
    """Each artfs stage equals what the tool gives between two ext4 directories, one field group at a time."""
    got = route.stage(stage)
    _fail_on(differences(group, route.baseline, got, source=legacy[2]), f"{route.tool} {stage} vs baseline, {group}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route, stage, group", _params(TOOLS, ["draft after commit", "version"], GROUPS),
                         indirect=["route"])
def test_commit_keeps_the_draft(route, stage, group):
    """A commit changes nothing a program sees: the draft after it, and the version, equal the draft before
    it in every field (atimes included, also those the tool set to the time of the copy)."""
    _fail_on(differences(group, route.stage("draft"), route.stage(stage)), f"{route.tool} {stage} vs draft, {group}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route", _params(TOOLS), indirect=True)
def test_rsync_sees_no_difference_between_draft_and_version(route):
    """`rsync -aHAXn --delete --itemize-changes DRAFT/ VERSION/` prints nothing."""
    if route.itemize is None:
        pytest.fail(f"{route.tool}: no version mount: {route.errors}")
    assert route.itemize == ""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route, stage", _params(TOOLS, ["draft", "version"]), indirect=["route"])
def test_inode_numbers_survive_drop_caches(route, stage):
    """Every name keeps its st_ino when the kernel forgets the mount's inodes (DESIGN.md §4)."""
    if stage not in route.inodes:
        pytest.fail(f"{route.tool}: no {stage} stage: {route.errors}")
    before, after = route.inodes[stage]
    _fail_on([f"{p!r}: {before[p]} became {after.get(p)}" for p in sorted(before) if after.get(p) != before[p]],
             f"{route.tool} {stage}: inode numbers")


def unquote(name: bytes) -> bytes:
    """A path as git quotes it (DESIGN.md §4: "caf\\351.txt", "a\\nb"), back to its bytes."""
    if not name.startswith(b'"'):
        return name
    assert name.endswith(b'"') and len(name) >= 2, name
    out, i, body = bytearray(), 0, name[1:-1]
    simple = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11,
              ord("\\"): 92, ord('"'): 34}
    while i < len(body):
        c = body[i]
        if c != 92:
            out.append(c)
            i += 1
        elif body[i + 1] in simple:
            out.append(simple[body[i + 1]])
            i += 2
        else:
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
    return bytes(out)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("route", _params(TOOLS), indirect=True)
def test_status_names_every_path_once(route):
    """`.artfs/status` of the filled draft: one `A` line per path, names quoted so that a newline or a
    byte that is not UTF-8 neither splits a line nor gets lost (DESIGN.md §4)."""
    if route.status is None:
        pytest.fail(f"{route.tool}: no status: {route.errors}")
    lines = route.status.decode("ascii").splitlines()  # quoted: plain ASCII
    assert all(line.startswith("A ") for line in lines), lines
    got = [unquote(line[2:].encode()) for line in lines]
    assert got == sorted(p for p in route.stage("draft") if p != b".")


# -- put and export --------------------------------------------------------------------------------

PUT: dict[str, object] = {}


@pytest.fixture
def put_route(legacy):
    """`artfs put` of the reference tree, then `export` and a read-only mount of the version: their scans."""
    work, reference, _, store = legacy
    if not PUT:
        try:
            ref = artfs(store, "put", "legacy-put", reference).stdout.strip()
            PUT["ref"] = ref
            exp = os.path.join(work, "put-export")
            p = artfs(store, "export", ref, exp, check=False)
            PUT["export"] = scan(exp) if p.returncode == 0 else f"artfs export {ref}: {p.stderr.strip()}"
            with Mounted(store, ref, os.path.join(work, "put-version")) as v:
                PUT["version"] = scan(v.mnt)
        except Exception as exc:
            PUT.setdefault("error", repr(exc))
    return PUT


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage, group", _params(["export", "version"], GROUPS))
def test_put_round_trip(put_route, stage, group, legacy):
    """put + export, put + read-only mount: the reference tree itself, every field (the root's own too)."""
    got = put_route.get(stage)
    if not isinstance(got, dict):
        pytest.fail(f"put {stage}: {got or put_route.get('error')}")
    _fail_on(differences(group, legacy[2], got), f"put {stage} vs the reference, {group}")


@pytest.mark.timeout(60)
def test_reference_unchanged(legacy):
    """Reading the reference tree (every route) left it as it was: the comparisons above were fair."""
    _, reference, ref, _ = legacy
    now = scan(reference)
    _fail_on(sum((differences(g, ref, now) for g in GROUPS), []), "the reference tree changed")


@pytest.mark.timeout(300)
def test_store_fsck_after_the_routes(legacy):
    """After every route (a hostile tree committed three times and put once) fsck finds nothing."""
    for tool in TOOLS:  # every route ran, also when this test runs alone
        get_route(tool, legacy)
    p = artfs(legacy[3], "fsck", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
