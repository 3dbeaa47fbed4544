"""The command line, run as a subprocess (DESIGN.md §2, §3, §8).

Every test gets its own store; every test that writes one ends with
``artfs fsck`` exiting 0 (the ``cli`` fixture's teardown).
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import blake3
import pytest
from click.testing import CliRunner

from artfs.storage.store import Store
from clihelp import Cli, Result, cli_env

T0 = 1_600_000_000_123_456_789  # mtimes (ns) given to the source tree


@pytest.fixture
def bare(tmp_path):
    """A CLI whose store does not exist yet; fsck'ed at the end if a test created it."""
    c = Cli(tmp_path / "store", home=tmp_path)
    yield c
    if c.has_store():
        c.fsck_ok()


@pytest.fixture
def cli(bare):
    assert bare.ok("init") == bare.store + "\n"
    return bare


def make_tree(root) -> str:
    """A small tree with known modes, mtimes, a symlink, an empty file and an empty directory."""
    root = str(root)
    files = {
        "a.txt": (b"hello\n", 0o644),
        "bin/run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "data/blob.bin": (bytes(range(256)) * 4, 0o600),
        "data/empty": (b"", 0o644),
    }
    for d in ("", "bin", "data", "emptydir"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, (rel, (data, mode)) in enumerate(sorted(files.items())):
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.utime(p, ns=(T0 + i, T0 + i))
    os.symlink("a.txt", os.path.join(root, "link"))
    os.symlink("../a.txt", os.path.join(root, "data", "uplink"))
    for i, rel in enumerate(("link", "data/uplink")):
        os.utime(os.path.join(root, rel), ns=(T0 + 100 + i, T0 + 100 + i), follow_symlinks=False)
    for i, (d, mode) in enumerate((("bin", 0o755), ("data", 0o755), ("emptydir", 0o750), ("", 0o755))):
        p = os.path.join(root, d)
        os.chmod(p, mode)
        os.utime(p, ns=(T0 + 200 + i, T0 + 200 + i))
    return root


def snapshot(root) -> dict:
    """path -> (mode, mtime_ns, uid, gid, content or link target) of everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = ("file", f.read())
            else:
                body = ("dir", None)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, st.st_uid, st.st_gid, body)
    return out


def object_path(store: str, data: bytes) -> str:
    h = blake3.blake3(data).hexdigest()
    return os.path.join(store, "objects", h[:2], h[2:])


@pytest.fixture
def mnist(cli, tmp_path):
    """A store with mnist:v0 (the tree of make_tree) and mnist:v1 (a.txt changed, c.txt added, data/empty gone)."""
    src = make_tree(tmp_path / "src")
    assert cli.ok("put", "mnist", src, "-m", "first") == "mnist:v0\n"
    with open(os.path.join(src, "a.txt"), "ab") as f:
        f.write(b"more\n")
    with open(os.path.join(src, "c.txt"), "wb") as f:
        f.write(b"c\n")
    os.unlink(os.path.join(src, "data", "empty"))
    assert cli.ok("put", "mnist", src, "-m", "second\nmore text") == "mnist:v1\n"
    cli.src = src
    return cli


# -- init and the store ------------------------------------------------------------------

def test_the_cli_does_not_import_the_wandb_api_it_does_not_use():
    """Every `artfs` command imports the package; the W&B-style API comes in on first use."""
    code = ("import sys, artfs.cli\n"
            "assert 'artfs.api' not in sys.modules, 'artfs.cli imported artfs.api'\n"
            "import artfs\n"
            "from artfs import init, Artifact\n"
            "assert artfs.run is None and artfs.Artifact is Artifact and 'artfs.api' in sys.modules\n"
            "assert {'init', 'Api', 'run'} <= set(dir(artfs))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    # the submodule is an attribute of the package before anything imported it, as it was
    subprocess.run([sys.executable, "-c", "import artfs; assert artfs.api.Version is artfs.Version"], check=True)


def test_init_is_idempotent_and_prints_the_path(bare):
    assert bare.ok("init") == bare.store + "\n"
    assert os.path.exists(os.path.join(bare.store, "artfs-store"))
    assert bare.ok("init") == bare.store + "\n"


def test_store_from_env_then_default(bare, tmp_path):
    env_store = tmp_path / "envstore"
    assert bare.ok("init", store=False, env={"ARTFS_STORE": env_store}) == f"{env_store}\n"
    assert bare.ok("fsck", store=False, env={"ARTFS_STORE": env_store}).startswith("ok: ")
    # --store wins over $ARTFS_STORE
    msg = bare.fail("fsck", env={"ARTFS_STORE": env_store})
    assert msg == f"no artfs store at {bare.store}; create it with: artfs --store {bare.store} init"
    # neither: ~/.local/share/artfs (HOME is tmp_path here)
    default = tmp_path / ".local" / "share" / "artfs"
    assert bare.ok("init", store=False) == f"{default}\n"
    assert bare.ok("fsck", store=False).startswith("ok: ")


def test_missing_store_says_how_to_create_it(bare, tmp_path):
    src = make_tree(tmp_path / "src")
    hint = f"no artfs store at {bare.store}; create it with: artfs --store {bare.store} init"
    for args in (("put", "mnist", src), ("log", "mnist"), ("ls", "mnist"), ("cat", "mnist", "a.txt"),
                 ("diff", "mnist:v0", "mnist:v1"), ("alias", "mnist", "best"), ("alias", "--delete", "mnist:best"),
                 ("export", "mnist", tmp_path / "out"), ("fsck",), ("gc",)):
        assert bare.fail(*args) == hint, args
    assert not os.path.exists(bare.store)
    assert not os.path.exists(tmp_path / "out")


def test_init_on_a_file_is_one_line(bare, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    c = Cli(f, home=tmp_path)
    msg = c.fail("init")
    assert str(f) in msg


def test_usage_errors_stay_clicks(cli):
    r = cli.run("put", "mnist")
    assert r.code == 2 and "Usage: artfs put" in r.err and "Missing argument 'DIR'" in r.err
    r = cli.run("frobnicate")
    assert r.code == 2 and "No such command 'frobnicate'" in r.err
    r = cli.run("alias", "mnist")
    assert r.code == 2 and "missing argument 'ALIAS'" in r.err
    r = cli.run("alias", "--delete", "mnist:best", "extra")
    assert r.code == 2 and "with --delete, give one argument" in r.err
    out = cli.ok("--help")
    for cmd in ("init", "put", "log", "ls", "cat", "diff", "alias", "export", "fsck", "gc"):
        assert f"\n  {cmd} " in out, cmd
    assert cli.ok("--version") == "artfs, version 0.2.0\n"


# -- put ---------------------------------------------------------------------------------

def test_put_new_unchanged_and_next(cli, tmp_path):
    src = make_tree(tmp_path / "src")
    assert cli.ok("put", "mnist", src) == "mnist:v0\n"
    assert cli.ok("put", "mnist", src) == "mnist:v0 (unchanged)\n"
    # an mtime is not content: still unchanged
    os.utime(os.path.join(src, "a.txt"), ns=(T0 + 5000, T0 + 5000))
    assert cli.ok("put", "mnist", src, "-m", "touched") == "mnist:v0 (unchanged)\n"
    # an executable bit is
    os.chmod(os.path.join(src, "a.txt"), 0o755)
    assert cli.ok("put", "mnist", src) == "mnist:v1\n"
    # a relative DIR works too
    rel = Cli(cli.store, home=tmp_path, cwd=tmp_path)
    assert rel.ok("put", "other", "src") == "other:v0\n"


def test_put_type(cli, tmp_path):
    src = make_tree(tmp_path / "src")
    assert cli.ok("put", "net", src, "--type", "model") == "net:v0\n"
    assert json.loads(cli.ok("log", "net", "--json"))[0]["type"] == "model"
    assert cli.fail("put", "net", src, "--type", "dataset") == "net is a model, not a dataset"
    assert cli.ok("put", "net", src) == "net:v0 (unchanged)\n"


def test_put_errors(cli, tmp_path):
    src = make_tree(tmp_path / "src")
    missing = tmp_path / "nope"
    assert cli.fail("put", "mnist", missing) == f"not a directory: {missing}"
    afile = os.path.join(src, "a.txt")
    assert cli.fail("put", "mnist", afile) == f"{afile} is not a directory"
    assert cli.fail("put", "bad name", src).startswith("bad artifact name 'bad name'")
    assert cli.fail("put", "../x", src).startswith("bad artifact name '../x'")
    assert cli.fail("put", "mnist:v1", src).startswith("bad artifact name 'mnist:v1'")
    # the control directory's name is reserved at the root
    ctl = tmp_path / "ctl"
    (ctl / ".artfs").mkdir(parents=True)
    (ctl / "x").write_text("x")
    assert cli.fail("put", "mnist", ctl) == f"{ctl}/.artfs: the name .artfs is reserved"
    # nothing was made
    assert cli.fail("log", "mnist") == "no artifact 'mnist'; the store has no artifacts yet"
    # a FIFO is recorded as a FIFO, never opened (DESIGN.md §4)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "p")
    assert cli.ok("put", "mnist", fifo) == "mnist:v0\n"
    assert cli.ok("ls", "mnist").startswith("prw-r--r--")


class UserCli(Cli):
    """A ``Cli`` whose commands run as ``user`` (conftest ``User``): as root, the unprivileged
    test user, for whom a chmod 000 file really is unreadable."""

    def __init__(self, user, store, home):
        super().__init__(store, home)
        self.user = user

    def run(self, *args, store: bool = True, env: dict | None = None, input: bytes | None = None,
            timeout: float = 60) -> Result:
        cmd = [sys.executable, "-m", "artfs.cli"] + (["--store", self.store] if store else [])
        p = self.user.run(cmd + [str(a) for a in args], input=input, capture_output=True, timeout=timeout,
                          cwd=self.cwd, env=cli_env(self.home, **(env or {})))
        return Result(p.returncode, p.stdout, p.stderr)


def test_put_unreadable_file(unprivileged):
    home = unprivileged.home
    cli = UserCli(unprivileged, os.path.join(home, "store"), home)
    assert cli.ok("init") == cli.store + "\n"
    src = make_tree(os.path.join(home, "src"))
    unprivileged.own(src)  # the user's own tree; one file of it unreadable
    secret = os.path.join(src, "data", "blob.bin")
    os.chmod(secret, 0)
    try:
        assert cli.fail("put", "mnist", src) == f"cannot read {secret}: Permission denied"
    finally:
        os.chmod(secret, 0o600)
    cli.fsck_ok()


# -- log ---------------------------------------------------------------------------------

def test_log_text(mnist):
    mnist.ok("alias", "mnist:v0", "best")
    lines = mnist.ok("log", "mnist").splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("mnist:v1 (latest)  ")
    assert lines[0].endswith("  4 files  1055 bytes  single  second")
    assert lines[1].startswith("mnist:v0 (best)    ")
    assert lines[1].endswith("  4 files  1048 bytes  single  first")


def test_log_json(mnist):
    mnist.ok("alias", "mnist:v0", "best")
    mnist.ok("alias", "mnist:v0", "production")
    rows = json.loads(mnist.ok("log", "mnist", "--json"))
    assert [r["version"] for r in rows] == [1, 0]
    assert [r["ref"] for r in rows] == ["mnist:v1", "mnist:v0"]
    assert rows[0]["aliases"] == ["latest"] and rows[1]["aliases"] == ["best", "production"]
    assert rows[0]["message"] == "second\nmore text" and rows[1]["message"] == "first"
    assert (rows[1]["file_count"], rows[1]["total_bytes"]) == (4, 1048)
    assert (rows[0]["file_count"], rows[0]["total_bytes"]) == (4, 1055)
    assert all(r["how"] == "single" and r["type"] == "dataset" for r in rows)
    assert rows[0]["created"] >= rows[1]["created"] > 1.6e9
    assert all(len(r["digest"]) == 64 for r in rows)


def test_log_errors(mnist):
    assert mnist.fail("log", "nope") == "no artifact 'nope'; artifacts: mnist"
    assert mnist.fail("log", "bad name").startswith("bad artifact name 'bad name'")


# -- ls ----------------------------------------------------------------------------------

def test_ls_text(mnist):
    assert mnist.ok("ls", "mnist:v0") == (
        "-rw-r--r--     6  a.txt\n"
        "drwxr-xr-x    18  bin\n"
        "drwxr-xr-x  1024  data\n"
        "drwxr-x---     0  emptydir\n"
        "lrwxrwxrwx     5  link -> a.txt\n"
    )
    assert mnist.ok("ls", "mnist:v0", "data") == (
        "-rw-------  1024  blob.bin\n"
        "-rw-r--r--     0  empty\n"
        "lrwxrwxrwx     8  uplink -> ../a.txt\n"
    )
    assert mnist.ok("ls", "mnist", "/bin/run.sh") == "-rwxr-xr-x  18  run.sh\n"
    assert mnist.ok("ls", "mnist", "emptydir") == ""
    # default ref is latest; v1 has c.txt
    assert "-rw-r--r--     2  c.txt\n" in mnist.ok("ls", "mnist")
    digest = blake3.blake3(b"hello\n").hexdigest()
    assert f"  {digest}  a.txt\n" in mnist.ok("ls", "-l", "mnist:v0")


def test_ls_json(mnist):
    rows = {r["name"]: r for r in json.loads(mnist.ok("ls", "mnist:v0", "--json"))}
    assert sorted(rows) == ["a.txt", "bin", "data", "emptydir", "link"]
    a = rows["a.txt"]
    assert a["kind"] == "file" and a["mode"] == "-rw-r--r--" and a["perm"] == 0o644 and a["size"] == 6
    assert a["digest"] == blake3.blake3(b"hello\n").hexdigest()  # b3sum of the file matches
    assert a["mtime_ns"] == T0
    assert rows["link"]["kind"] == "symlink" and rows["link"]["target"] == "a.txt"
    assert rows["data"]["kind"] == "dir" and rows["data"]["files"] == 2 and rows["data"]["size"] == 1024
    one = json.loads(mnist.ok("ls", "mnist:v0", "data/blob.bin", "--json"))
    assert len(one) == 1 and one[0]["name"] == "blob.bin" and one[0]["perm"] == 0o600


def test_ls_missing_path(mnist):
    assert mnist.fail("ls", "mnist:v0", "nope") == "no nope in mnist:v0"
    assert mnist.fail("ls", "mnist:v0", "a.txt/x") == "not a directory in mnist:v0: a.txt"
    assert mnist.fail("ls", "mnist:v0", "../etc").startswith("name is '..'")


BAD_REFS = [
    ("mnist:", "bad reference 'mnist:': nothing after ':' (expected vN, an alias or draft)"),
    ("bad name", "bad reference 'bad name': artifact names are "),
    ("../x", "bad reference '../x': artifact names are "),
    ("a:b:c", "bad reference 'a:b:c': expected NAME, NAME:vN, NAME:ALIAS or NAME:draft"),
    ("mnist:v01", "bad reference 'mnist:v01': version numbers have no leading zeros"),
    ("mnist:v99", "mnist has no v99; newest: v1, v0"),
    ("nope", "no artifact 'nope'; artifacts: mnist"),
    ("mnist:best", "mnist has no alias 'best'; aliases: latest"),
    ("mnist:draft", "mnist:draft is a draft, not a version"),
]


@pytest.mark.parametrize("cmd", ["ls", "cat", "diff", "export", "alias"])
def test_bad_references(mnist, tmp_path, cmd):
    for ref, want in BAD_REFS:
        args = {"ls": ("ls", ref), "cat": ("cat", ref, "a.txt"), "diff": ("diff", "mnist:v0", ref),
                "export": ("export", ref, tmp_path / "out"), "alias": ("alias", ref, "prod")}[cmd]
        assert mnist.fail(*args).startswith(want), (cmd, ref)
    assert not os.path.exists(tmp_path / "out")


# -- cat ---------------------------------------------------------------------------------

def test_cat(mnist):
    assert mnist.run("cat", "mnist:v0", "data/blob.bin").outb == bytes(range(256)) * 4
    assert mnist.ok("cat", "mnist:v0", "a.txt") == "hello\n"
    assert mnist.ok("cat", "mnist", "a.txt") == "hello\nmore\n"
    assert mnist.ok("cat", "mnist:latest", "/c.txt") == "c\n"
    assert mnist.ok("cat", "mnist:v0", "data/empty") == ""
    # symlinks inside the version are followed
    assert mnist.ok("cat", "mnist:v0", "link") == "hello\n"
    assert mnist.ok("cat", "mnist:v0", "data/uplink") == "hello\n"
    mnist.ok("alias", "mnist:v0", "best")
    assert mnist.ok("cat", "mnist:best", "a.txt") == "hello\n"


def test_cat_errors(mnist, tmp_path):
    assert mnist.fail("cat", "mnist:v0", "data") == "data is a directory in mnist:v0"
    assert mnist.fail("cat", "mnist:v0", "") == " is a directory in mnist:v0"
    assert mnist.fail("cat", "mnist:v0", "nope.txt") == "no nope.txt in mnist:v0"
    assert mnist.fail("cat", "mnist:v1", "data/empty") == "no data/empty in mnist:v1"
    src = tmp_path / "links"
    src.mkdir()
    os.symlink("/etc/passwd", src / "abs")
    os.symlink("../../x", src / "out")
    os.symlink("loop", src / "loop")
    assert mnist.ok("put", "links", src) == "links:v0\n"
    assert mnist.fail("cat", "links", "abs") == "abs in links:v0 is a symlink to /etc/passwd, outside the version"
    assert mnist.fail("cat", "links", "out") == "out in links:v0 is a symlink to ../../x, outside the version"
    assert mnist.fail("cat", "links", "loop") == "loop in links:v0: too many levels of symbolic links"


def test_cat_into_a_closed_pipe_is_quiet(cli, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(4 << 20))
    cli.ok("put", "big", src)
    p = subprocess.Popen([sys.executable, "-m", "artfs.cli", "--store", cli.store, "cat", "big", "f"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(cli.home))
    assert len(p.stdout.read(1000)) == 1000
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=30) == 1
    assert err == b""


# -- diff --------------------------------------------------------------------------------

def test_diff(mnist):
    assert mnist.ok("diff", "mnist:v0", "mnist:v1") == "M a.txt\nA c.txt\nD data/empty\n"
    assert mnist.ok("diff", "mnist:v1", "mnist:v0") == "M a.txt\nD c.txt\nA data/empty\n"
    assert mnist.ok("diff", "mnist:v0", "mnist:v0") == ""
    assert json.loads(mnist.ok("diff", "mnist:v0", "mnist", "--json")) == [
        {"status": "M", "path": "a.txt"}, {"status": "A", "path": "c.txt"}, {"status": "D", "path": "data/empty"},
    ]


def test_diff_directories_and_odd_names(cli, tmp_path):
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_text("1")
    (src / "keep").write_text("k")
    assert cli.ok("put", "x", src) == "x:v0\n"
    (src / "d" / "e" / "f").unlink()
    (src / "d" / "e").rmdir()
    (src / "d" / "e").write_text("now a file")
    (src / "new\nline").write_text("n")
    assert cli.ok("put", "x", src) == "x:v1\n"
    assert cli.ok("diff", "x:v0", "x:v1") == 'A d/e\nD d/e\nD d/e/f\nA "new\\nline"\n'
    assert json.loads(cli.ok("diff", "x:v0", "x:v1", "--json"))[-1] == {"status": "A", "path": "new\nline"}
    assert '  "new\\nline"\n' in cli.ok("ls", "x")


# -- alias -------------------------------------------------------------------------------

def test_alias_set_move_delete(mnist):
    assert mnist.ok("alias", "mnist:v0", "best") == "mnist:best -> mnist:v0\n"
    assert mnist.ok("cat", "mnist:best", "a.txt") == "hello\n"
    assert mnist.ok("alias", "mnist", "best") == "mnist:best -> mnist:v1\n"  # moved to latest
    assert mnist.ok("log", "mnist").splitlines()[0].startswith("mnist:v1 (best, latest)  ")
    assert mnist.ok("alias", "mnist:best", "prod") == "mnist:prod -> mnist:v1\n"
    assert mnist.ok("alias", "--delete", "mnist:best") == "deleted mnist:best\n"
    assert mnist.fail("alias", "--delete", "mnist:best") == "mnist has no alias 'best'"
    assert mnist.fail("ls", "mnist:best") == "mnist has no alias 'best'; aliases: latest, prod"
    assert mnist.ok("alias", "-d", "mnist:prod") == "deleted mnist:prod\n"


def test_alias_errors(mnist):
    assert mnist.fail("alias", "mnist:v0", "latest") == "'latest' is reserved and cannot be an alias"
    assert mnist.fail("alias", "mnist:v0", "draft") == "'draft' is reserved and cannot be an alias"
    assert mnist.fail("alias", "mnist:v0", "v3") == "'v3' is reserved and cannot be an alias"
    assert mnist.fail("alias", "mnist:v0", "v03") == "'v03' looks like a version number and cannot be an alias"
    assert mnist.fail("alias", "mnist:v0", "bad alias").startswith("bad alias 'bad alias'")
    assert mnist.fail("alias", "--delete", "mnist").startswith("expected NAME:ALIAS, got 'mnist'")
    assert mnist.fail("alias", "--delete", "mnist:latest") == "'latest' is reserved and cannot be an alias"
    assert mnist.fail("alias", "--delete", "nope:best") == "no artifact 'nope'; artifacts: mnist"
    # the latest alias was not touched
    assert mnist.ok("log", "mnist").startswith("mnist:v1 (latest)  ")


# -- export ------------------------------------------------------------------------------

def test_export_round_trip(mnist, tmp_path):
    src = make_tree(tmp_path / "fresh")
    out = tmp_path / "out"
    assert mnist.ok("export", "mnist:v0", out) == f"mnist:v0 -> {out} (4 files)\n"
    want, got = snapshot(src), snapshot(out)
    assert sorted(got) == sorted(want)
    for p in want:
        assert got[p] == want[p], p  # mode, mtime (ns), owner, content / link target
    # a new directory below a missing parent is made; v1 differs as diff says
    out1 = tmp_path / "deep" / "er" / "out1"
    assert mnist.ok("export", "mnist", out1) == f"mnist:v1 -> {out1} (4 files)\n"
    assert (out1 / "a.txt").read_bytes() == b"hello\nmore\n"
    assert not os.path.exists(out1 / "data" / "empty")


def test_export_errors(mnist, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    assert mnist.fail("export", "mnist", out) == f"{out} exists and is not an empty directory"
    afile = out / "x"
    assert mnist.fail("export", "mnist", afile) == f"{afile} exists and is not an empty directory"
    # an OSError from the user's path is one line too
    assert mnist.fail("export", "mnist", afile / "sub") == f"cannot write {afile}/sub: Not a directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mnist.ok("export", "mnist", empty) == f"mnist:v1 -> {empty} (4 files)\n"


# -- fsck and gc ---------------------------------------------------------------------------

def test_fsck_ok(mnist):
    # 6 blobs (a.txt twice, run.sh, blob.bin, empty, c.txt) + 6 trees (2 roots, bin, data twice, emptydir)
    assert mnist.fsck_ok() == "ok: 12 objects, 2 versions\n"


def test_fsck_finds_a_flipped_byte(mnist):
    blob = bytes(range(256)) * 4
    obj = object_path(mnist.store, blob)
    hexd = blake3.blake3(blob).hexdigest()
    with open(obj, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x01]))
    r = mnist.run("fsck")
    assert r.code == 1, str(r)
    assert r.out == f"corrupt object {hexd} (used by mnist:v0 data/blob.bin)\n"
    assert r.err == "artfs: fsck found 1 problem\n"
    # reading it fails with exit 1, never silently
    assert mnist.fail("cat", "mnist:v1", "data/blob.bin", code=1, stdout=True) == f"object {hexd} is corrupt"
    out = mnist.run("export", "mnist:v0", mnist.home + "/out")
    assert out.code == 1 and out.err == f"artfs: object {hexd} is corrupt\n"
    # repair: fsck is ok again (the fixture checks it)
    with open(obj, "r+b") as f:
        f.seek(100)
        f.write(b)


def test_fsck_finds_a_missing_object(mnist):
    obj = object_path(mnist.store, b"c\n")
    hexd = blake3.blake3(b"c\n").hexdigest()
    with open(obj, "rb") as f:
        saved = f.read()
    os.unlink(obj)
    r = mnist.run("fsck")
    assert r.code == 1 and r.out == f"missing object {hexd} (used by mnist:v1 c.txt)\n", str(r)
    assert mnist.fail("cat", "mnist", "c.txt", code=1) == f"missing object {hexd}"
    with open(obj, "wb") as f:
        f.write(saved)


def test_gc_keeps_reachable_and_removes_garbage(mnist, tmp_path):
    before = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(mnist.store, "objects")) for f in fs)
    planted = object_path(mnist.store, b"garbage nobody uses")
    os.makedirs(os.path.dirname(planted), exist_ok=True)
    with open(planted, "wb") as f:
        f.write(b"garbage nobody uses")
    assert mnist.ok("gc") == "removed 1 object (19 bytes)\n"
    assert not os.path.exists(planted)
    after = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(mnist.store, "objects")) for f in fs)
    assert after == before
    assert mnist.ok("gc") == "removed 0 objects (0 bytes)\n"
    mnist.fsck_ok()
    for ref in ("mnist:v0", "mnist:v1"):
        out = tmp_path / ref.replace(":", "-")
        mnist.ok("export", ref, out)
    assert snapshot(tmp_path / "mnist-v0") == snapshot(make_tree(tmp_path / "again"))


# -- in-process: interrupts, bugs, commands from other modules, progress ----------------------

@pytest.fixture
def inproc(tmp_path, monkeypatch):
    import artfs.cli as cli_mod

    for k in ("ARTFS_STORE", "ARTFS_DEBUG", "ARTFS_PROGRESS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(cli_mod.cli, "plugin_errors", None)  # load plugins afresh in each test,
    # into a copy of the group holding only cli.py's own commands (other tests in this process may
    # have loaded the plugins already)
    monkeypatch.setattr(cli_mod.cli, "commands", {k: c for k, c in cli_mod.cli.commands.items()
                                                  if getattr(c.callback, "__module__", "") == "artfs.cli"})
    store = str(tmp_path / "store")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli_mod.cli, ["--store", store, *map(str, args)], prog_name="artfs")

    Store.init(store).meta.close()  # not through the CLI: plugins load on the test's first command
    yield cli_mod, run
    monkeypatch.setattr(cli_mod.cli, "plugin_errors", None)
    assert run("fsck").exit_code == 0


def test_interrupt_exits_130(inproc, monkeypatch):
    cli_mod, run = inproc

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_mod.repo, "gc", boom)
    r = run("gc")
    assert r.exit_code == 130 and r.stderr == "artfs: interrupted\n" and r.stdout == ""


def test_internal_error_is_one_line(inproc, monkeypatch):
    cli_mod, run = inproc

    def bug(*a, **k):
        raise TypeError("oops")

    monkeypatch.setattr(cli_mod.repo, "gc", bug)
    r = run("gc")
    assert r.exit_code == 3
    assert r.stderr == "artfs: internal error: TypeError: oops (run with ARTFS_DEBUG=1 for details)\n"
    monkeypatch.setenv("ARTFS_DEBUG", "1")
    r = run("gc")
    assert isinstance(r.exception, TypeError)


def test_commands_from_other_modules(inproc, monkeypatch, tmp_path):
    cli_mod, run = inproc
    (tmp_path / "plug_ok.py").write_text(
        "import click\n"
        "from artfs.cli import pass_env\n"
        "from artfs.errors import NotFound\n"
        "def register(group):\n"
        "    @group.command()\n"
        "    @click.argument('mountpoint')\n"
        "    @pass_env\n"
        "    def status(env, mountpoint):\n"
        "        env.store()\n"
        "        raise NotFound(f'{mountpoint} is not an artfs mount')\n"
    )
    (tmp_path / "plug_broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_mod, "PLUGINS", ("artfs.no_such_module", "plug_ok", "plug_broken"))
    monkeypatch.setattr(cli_mod, "PLUGIN_COMMANDS", {"plug_broken": ("mount", "umount")})
    r = run("status", "/mnt/x")
    assert r.exit_code == 2 and r.stderr == "artfs: /mnt/x is not an artfs mount\n"
    r = run("mount", "mnist", "/mnt/x")
    assert r.exit_code == 2
    assert r.stderr == "artfs: mount is unavailable: No module named 'no_such_dependency_xyz'\n"
    assert "\n  status\n" in run("--help").stdout  # (the test plugin's command has no help text)


def test_progress_reporter():
    from rich.console import Console

    from artfs.progress import NullProgress, reporter

    with reporter("put x", show=False) as p:
        assert isinstance(p, NullProgress)
        p.total(3, 30)
        p.advance(1, 10)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with reporter("put x", console=console) as p:
        p.total(3, 3000)
        for _ in range(3):
            p.advance(1, 1000)
        p.advance(1, 0)  # more work than announced is fine
    assert "put x" in buf.getvalue()
