"""Bad input from a careless user or an attacker: one clear line, the right error, nothing left behind.

A hypothesis fuzz drives the CLI (in-process, through click's runner, with
arguments that may be empty, over-long, full of control characters or not
UTF-8 at all) and the Python API (with references, paths and values of the
wrong type or shape).  Every call must end with exit status 2 (or 1 for
corruption) and one line on stderr, or an ``ArtfsError``; never a traceback,
an internal error, or a half-made draft, object or version.  Then the
specific cases of issue 10: deep paths, terminal injection, store modes.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import artfs
from artfs import repo
from artfs.cli import cli
from artfs.storage.store import Store

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _surrogates(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


# arguments: plausible words, names with every awkward byte, and raw bytes as a shell would pass them
words = st.sampled_from(["ds", "ds:v0", "ds:v9", "ds:latest", "ds:draft", "ds:best", "nope", "a.txt", "sub/",
                         "sub/b.bin", "/", "", ".", "..", "../x", "-", "--json", "v0", "x:y:z", "ds:v01"])
raw = st.binary(max_size=40).map(_surrogates)
texty = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
args = st.one_of(words, raw, texty)
COMMANDS = ["log", "ls", "cat", "diff", "alias", "export", "rm", "put", "finish", "discard", "drafts", "runs",
            "lineage", "commit", "status", "umount", "mount"]


def store_state(path: str) -> tuple:
    """What a failed command must not change: rows of every table, files of the store."""
    import sqlite3

    db = sqlite3.connect(os.path.join(path, "meta.sqlite"))
    try:
        rows = tuple(tuple(db.execute(f"SELECT * FROM {t}").fetchall())
                     for t in ("artifacts", "versions", "aliases", "drafts", "draft_entries", "pending", "runs"))
    finally:
        db.close()
    files = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
                   if not f.startswith("meta.sqlite") and not d.endswith("logs"))
    return rows, tuple(files)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    s = str(base / "S")
    Store.init(s)
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01" * 100)
    r = CliRunner().invoke(cli, ["--store", s, "put", "ds", str(src)])
    assert r.exit_code == 0, r.output
    return s, str(base)


@FUZZ
@given(cmd=st.sampled_from(COMMANDS), argv=st.lists(args, max_size=4))
def test_cli_fuzz_one_line_no_traceback(fuzz_store, cmd, argv):
    s, base = fuzz_store
    before = store_state(s)
    # relative paths land in a scratch cwd, so nothing outside the test is touched
    cwd = os.getcwd()
    os.chdir(base)
    try:
        r = CliRunner().invoke(cli, ["--store", s, cmd, *argv])
    finally:
        os.chdir(cwd)
    err = r.stderr if hasattr(r, "stderr") else ""
    assert r.exit_code != 3, f"internal error: {err}"
    assert "Traceback" not in r.output + err
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        assert r.exit_code in (1, 2), (r.exit_code, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        usage = any(ln.startswith(("Usage:", "Try ")) for ln in lines)  # click's own usage errors
        assert usage or len(lines) == 1, err
        assert all(ch.isprintable() for ln in lines for ch in ln), err  # no escape sequences reach a terminal
        assert store_state(s) == before, f"artfs {cmd} {argv} failed but changed the store"


# -- the API -----------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.integers(), st.binary(max_size=20), raw, texty, words,
                 st.lists(st.integers(), max_size=2), st.just("file:///dev/zero"), st.just("file:///etc/../etc/hosts\0"),
                 st.just("/etc/passwd"), st.just("../x"), st.just("a/"), st.just(""), st.just("/"))


@FUZZ
@given(op=st.sampled_from(["artifact", "add_file", "add_dir", "add_reference", "remove", "use", "entry",
                           "download", "upsert", "finish", "open"]),
       a=junk, b=junk)
def test_api_fuzz_raises_artfs_errors_only(fuzz_store, tmp_path_factory, op, a, b):
    s, base = fuzz_store
    store = Store.open(s)
    before = store_state(s)
    good = os.path.join(base, "src", "a.txt")
    try:
        if op == "artifact":
            artfs.Artifact(a, type=b if b is not None else "dataset", store=store)
        elif op == "add_file":
            artfs.Artifact("fz", store=store).add_file(a if isinstance(a, str) and os.path.isfile(a) else good, name=b)
        elif op == "add_dir":
            artfs.Artifact("fz", store=store).add_dir(os.path.join(base, "src"), name=b)
        elif op == "add_reference":
            artfs.Artifact("fz", store=store).add_reference(a, name=b)
        elif op == "remove":
            artfs.use_artifact("ds", store=store).new_draft().remove(a)
        elif op == "use":
            artfs.use_artifact(a, store=store)
        elif op == "entry":
            artfs.use_artifact("ds", store=store).entry(a)
        elif op == "open":
            artfs.use_artifact("ds", store=store).open(a).read()
        elif op == "download":
            artfs.use_artifact("ds", store=store).download(a)
        elif op == "upsert":
            artfs.Artifact("fz", store=store).upsert(a)
        elif op == "finish":
            artfs.Artifact("fz", store=store).finish(a)
    except artfs.ArtfsError as exc:
        assert "\n" not in str(exc)
        assert store_state(s) == before, f"{op}({a!r}, {b!r}) failed but left something in the store"
        return
    # it worked: whatever it staged is dropped again (the fuzz is about failures)
    for d in repo.drafts(store):
        if d["key"].startswith("api:"):
            repo.discard_draft(store, d["key"])


def test_rejected_calls_leave_no_draft(tmp_path):
    store = Store.init(str(tmp_path / "S"))
    f = tmp_path / "f"
    f.write_text("x")
    a = artfs.Artifact("z", store=store)
    for bad in ("../x", "/etc/passwd", "x/../../y", "a\0b", "", "/", "dir/"):
        with pytest.raises(artfs.BadInput):
            a.add_file(str(f), name=bad)
    with pytest.raises(artfs.ArtfsError):
        a.add_reference("file:///dev/zero")
    assert repo.drafts(store) == []
    v = artfs.Artifact("z", store=store)
    v.add_file(str(f), name="f.txt")
    ver = v.save()
    for bad in ("", "/", "f.txt/"):
        with pytest.raises(artfs.ArtfsError):
            ver.entry(bad)
    assert repo.drafts(store) == []


# -- deep paths: every walk is iterative ------------------------------------------------------------

def test_two_thousand_levels_through_api_and_cli(tmp_path):
    store = Store.init(str(tmp_path / "S"))
    f = tmp_path / "f"
    f.write_text("deep\n")
    name = "/".join(["d"] * 2000) + "/f"
    a = artfs.Artifact("deep", store=store)
    a.add_file(str(f), name=name)
    v = a.save()
    assert v.open(name).read() == b"deep\n"
    d = v.new_draft()
    d.remove(name)
    d.save()
    left = artfs.Artifact("deep", store=store)
    left.add_file(str(f), name=name + "x")  # a draft left behind, holding the deep path
    for cmd in (["fsck"], ["drafts"], ["ls", "deep:v0"], ["gc"], ["diff", "deep:v0", "deep:v1"],
                ["discard", f"api:{left.writer_id}"], ["fsck"]):
        r = subprocess.run([sys.executable, "-m", "artfs.cli", "--store", store.path, *cmd],
                           capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    assert repo.drafts(Store.open(store.path)) == []


# -- other users -------------------------------------------------------------------------------------

def test_store_in_an_existing_directory_is_made_private(tmp_path):
    s = tmp_path / "S"
    s.mkdir(mode=0o755)
    os.chmod(s, 0o755)
    store = Store.init(str(s))
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret-name.txt").write_text("x")
    repo.put_dir(store, "ds", str(src))
    assert stat.S_IMODE(os.stat(s).st_mode) == 0o700
    for dirpath, dirs, files in os.walk(s):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) & 0o077 == 0, d
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) & 0o077 == 0, name


def test_control_characters_never_reach_the_terminal(tmp_path):
    s = str(tmp_path / "S")
    Store.init(s)
    src = tmp_path / "src"
    src.mkdir()
    (src / "x\nD keep.csv").write_text("x")
    (src / "\x1b[31mred").write_text("x")
    (src / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    run = lambda *a: subprocess.run([sys.executable, "-m", "artfs.cli", "--store", s, *a],  # noqa: E731
                                    capture_output=True)
    assert run("put", "ds", str(src), "-m", "msg\x1b[2J\nsecond line").returncode == 0
    for cmd in (["ls", "ds"], ["log", "ds"], ["diff", "ds:v0", "ds:v0"]):
        out = run(*cmd).stdout
        assert b"\x1b" not in out and b"\xe9" not in out, (cmd, out)
    ls = run("ls", "ds").stdout.decode()
    assert '"x\\nD keep.csv"' in ls and '"caf\\351.txt"' in ls
    assert len(run("log", "ds").stdout.decode().splitlines()) == 1
    bad = run("put", "ds", str(src), "--distributed-id", "run\x1b[31m")
    assert bad.returncode == 2 and b"\x1b" not in bad.stderr and len(bad.stderr.splitlines()) == 1
