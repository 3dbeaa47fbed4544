"""The everyday commands (issue 13), through the command line as users type them.

artifacts, log filters and what log/show print, meta, delete (aliases, numbers never reused,
incremental children stay whole, latest moves back, gc reclaims), ttl, ``--json`` on every
command that reports a result, mounts (live and dead), umount (dead, busy), mount(8) and fstab
through the mount.fuse.artfs helper, init of a non-empty directory, ``rm NAME:vN``, a user
without /dev/fuse, ``--type`` on put and mount, and an ``Example:`` in every ``--help``.

Each check fails without its feature: an unknown option, a missing field, a wrong number or
a silent success all fail it.  Tests that mount always unmount (``force_unmount`` in finally).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import blake3
import pytest
from click.testing import CliRunner

from clihelp import _CLEAN, Cli, Result
from mounts import daemon_pid, force_unmount, is_mounted, needs_fuse, wait_gone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- helpers -----------------------------------------------------------------------------------

def mk(root, files: dict) -> str:
    """Write ``{"a/b.txt": b"..."}`` under ``root`` (made if missing); returns its path."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return root


def object_path(store: str, data: bytes) -> str:
    h = blake3.blake3(data).hexdigest()
    return os.path.join(store, "objects", h[:2], h[2:])


def js(cli: Cli, *args):
    """Run with --json; the parsed output."""
    return json.loads(cli.ok(*args, "--json"))


def refs_in_log(cli: Cli, name: str, *args) -> list[str]:
    return [r["ref"] for r in js(cli, "log", name, *args)]


def one_line_error(r) -> str:
    """stderr of a failed command: exactly one line 'artfs: ...', no traceback; returns the message."""
    assert r.code != 0, str(r)
    assert r.err.startswith("artfs: ") and r.err.count("\n") == 1 and "Traceback" not in r.err, str(r)
    return r.err[len("artfs: "):-1]


class InProcessCli(Cli):
    """The same command line run in this process through click's CliRunner: the same group,
    error handling, exit statuses and separate stdout/stderr, without starting an interpreter
    per command (the tests that mount use ``Cli``, a subprocess per command)."""

    def run(self, *args, store: bool = True, env: dict | None = None, input: bytes | None = None,
            timeout: float = 60) -> Result:
        from artfs.cli import cli as group

        argv = (["--store", self.store] if store else []) + [str(a) for a in args]
        e = {k: None for k in _CLEAN}
        e.update({"HOME": self.home, **(env or {})})
        r = CliRunner().invoke(group, argv, input=input, env=e, prog_name="artfs")
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Result(r.exit_code, r.stdout_bytes, r.stderr_bytes)


def _cli(tmp_path, kind):
    c = kind(tmp_path / "store", home=tmp_path)
    c.ok("init")
    yield c
    if c.has_store():
        r = c.run("fsck", "--json")
        assert r.code == 0 and json.loads(r.out)["ok"] is True, f"fsck after the test: {r}"


@pytest.fixture
def cli(request, tmp_path):
    """The CLI on a fresh store: in this process, or a subprocess per command for tests marked
    ``mount`` (a daemon is started by them); fsck must pass at the end."""
    yield from _cli(tmp_path, Cli if request.node.get_closest_marker("mount") else InProcessCli)


@pytest.fixture
def mnts(tmp_path):
    """Mountpoints to use; whatever is still mounted there at the end is unmounted."""
    made = []

    def make(name: str) -> str:
        p = str(tmp_path / "mnt" / name)
        os.makedirs(p, exist_ok=True)
        made.append(p)
        return p

    yield make
    for p in made:
        force_unmount(p)


# -- artifacts -------------------------------------------------------------------------------

def test_artifacts_lists_type_latest_size_and_versions(cli, tmp_path):
    d = mk(tmp_path / "d", {"a.txt": b"aaa", "sub/b.txt": b"bb"})
    cli.ok("put", "ds", d)
    mk(d, {"c.txt": b"cccc"})
    assert cli.ok("put", "ds", d) == "ds:v1\n"
    cli.ok("put", "clf", mk(tmp_path / "m", {"w.bin": b"w" * 10}), "--type", "model")
    rows = {r["artifact"]: r for r in js(cli, "artifacts")}
    assert rows["ds"]["type"] == "dataset" and rows["ds"]["latest"] == "ds:v1" and rows["ds"]["versions"] == 2
    assert (rows["ds"]["files"], rows["ds"]["bytes"]) == (3, 9)
    assert (rows["clf"]["type"], rows["clf"]["latest"], rows["clf"]["versions"], rows["clf"]["bytes"]) == (
        "model", "clf:v0", 1, 10)
    assert [r["artifact"] for r in js(cli, "artifacts", "--type", "model")] == ["clf"]
    assert [r["artifact"] for r in js(cli, "artifacts", "--type", "dataset")] == ["ds"]
    lines = cli.ok("artifacts").splitlines()
    ds = next(line for line in lines if line.startswith("ds "))
    assert "dataset" in ds.split() and "ds:v1" in ds.split() and "2 versions" in ds and "3 files" in ds
    assert [line.split()[0] for line in cli.ok("artifacts", "--type", "model").splitlines()] == ["clf"]
    r = cli.run("artifacts", "--type", "nosuch")
    assert r.code == 0 and r.out == "" and "no artifacts" in r.err


# -- log and show ------------------------------------------------------------------------------

@pytest.fixture
def three(cli, tmp_path):
    """ds:v0..v2 (v0 aliased production), messages m0..m2."""
    d = tmp_path / "three"
    for i in range(3):
        mk(d, {f"f{i}.txt": b"%d" % i})
        assert cli.ok("put", "ds", d, "-m", f"m{i}") == f"ds:v{i}\n"
    cli.ok("alias", "ds:v0", "production")
    return cli


def test_log_filters_n_alias_since(three):
    cli = three
    assert refs_in_log(cli, "ds") == ["ds:v2", "ds:v1", "ds:v0"]
    assert refs_in_log(cli, "ds", "-n", "2") == ["ds:v2", "ds:v1"]
    lines = cli.ok("log", "ds", "-n", "1").splitlines()
    assert len(lines) == 1 and lines[0].startswith("ds:v2 (latest)") and "m2" in lines[0]
    assert refs_in_log(cli, "ds", "--alias", "production") == ["ds:v0"]
    text = cli.ok("log", "ds", "--alias", "production")
    assert text.startswith("ds:v0 (production)") and text.count("\n") == 1
    assert refs_in_log(cli, "ds", "--alias", "latest") == ["ds:v2"]
    assert refs_in_log(cli, "ds", "--since", "1h") == ["ds:v2", "ds:v1", "ds:v0"]
    assert refs_in_log(cli, "ds", "--since", "2000-01-01") == ["ds:v2", "ds:v1", "ds:v0"]
    assert refs_in_log(cli, "ds", "--since", "2999-01-01 12:00") == []
    assert refs_in_log(cli, "ds", "--since", "0s") == []  # made before now
    r = cli.run("log", "ds", "--since", "2999-01-01")
    assert r.code == 0 and r.out == "" and "no versions matching" in r.err
    assert one_line_error(cli.run("log", "ds", "--since", "yesterday"))
    assert refs_in_log(cli, "ds", "-n", "5", "--alias", "production", "--since", "1d") == ["ds:v0"]


def test_a_bad_since_says_what_since_takes(three):
    msg = one_line_error(three.run("log", "ds", "--since", "yesterday"))
    assert "--since" in msg and "date" in msg and "none" not in msg


def test_log_and_show_name_the_producing_run_metadata_and_description(cli, tmp_path):
    f = mk(tmp_path / "w", {"model.bin": b"\x00weights"})
    code = ("import sys, artfs\n"
            "run = artfs.init(job_type='train', store=sys.argv[1])\n"
            "a = artfs.Artifact('model', 'model', description='first model\\nsecond line',"
            " metadata={'acc': 0.9}, store=sys.argv[1])\n"
            "a.add_file(sys.argv[2])\n"
            "v = run.log_artifact(a)\n"
            "run.finish()\n"
            "print(run.id, v.ref)\n")
    p = subprocess.run([sys.executable, "-c", code, cli.store, os.path.join(f, "model.bin")], capture_output=True,
                       text=True, timeout=60, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    run_id, ref = p.stdout.split()
    assert ref == "model:v0"
    line = cli.ok("log", "model")
    assert f"run {run_id}" in line and '{"acc": 0.9}' in line and "first model" in line
    assert "second line" not in line and line.count("\n") == 1  # one line per version
    [row] = js(cli, "log", "model")
    assert (row["produced_by"], row["metadata"], row["description"]) == ([run_id], {"acc": 0.9},
                                                                         "first model\nsecond line")
    show = cli.ok("show", "model:v0").splitlines()
    assert f'produced_by:  ["{run_id}"]' in show
    assert 'metadata:     {"acc": 0.9}' in show and "type:         model" in show
    assert any(line.startswith("description:") and "first model" in line for line in show)


def test_show_one_version(three):
    cli = three
    d = js(cli, "show", "ds:production")
    assert {"ref", "artifact", "type", "version", "aliases", "created", "created_utc", "message", "description",
            "metadata", "tags", "expires", "file_count", "total_bytes", "how", "parent", "digest",
            "produced_by"} <= set(d)
    assert (d["ref"], d["artifact"], d["type"], d["version"], d["aliases"], d["message"]) == (
        "ds:v0", "ds", "dataset", 0, ["production"], "m0")
    assert (d["file_count"], d["total_bytes"], d["parent"], d["produced_by"], d["expires"]) == (1, 1, None, [], None)
    assert len(d["digest"]) == 64 and d["created_utc"].endswith("Z")
    latest = js(cli, "show", "ds")
    assert latest["ref"] == "ds:v2" and "latest" in latest["aliases"] and latest["parent"] == 1
    text = cli.ok("show", "ds:v1").splitlines()
    fields = dict(line.split(":", 1) for line in text)
    assert fields["ref"].strip() == "ds:v1" and fields["message"].strip() == "m1" and fields["type"].strip() == "dataset"
    assert "no v7" in one_line_error(cli.run("show", "ds:v7"))


def test_meta_sets_metadata_description_and_tags(three):
    cli = three
    before = js(cli, "show", "ds:v1")
    out = cli.ok("meta", "ds:v1", "--set", "acc=0.93", "--set", "note=hello", "--set", 'cfg={"lr": 0.1}')
    assert out.startswith("ds:v1: metadata") and '"acc": 0.93' in out
    cli.ok("meta", "ds:v1", "--description", "clean labels", "--tag", "reviewed", "--tag", "gold")
    d = js(cli, "show", "ds:v1")
    assert d["metadata"] == {"acc": 0.93, "note": "hello", "cfg": {"lr": 0.1}}
    assert (d["description"], d["tags"]) == ("clean labels", ["gold", "reviewed"])
    d = js(cli, "meta", "ds:v1", "--untag", "gold", "--unset", "note")
    assert (d["metadata"], d["tags"], d["description"]) == ({"acc": 0.93, "cfg": {"lr": 0.1}}, ["reviewed"],
                                                            "clean labels")
    # the content (and every other version) is untouched; log shows it
    assert (d["digest"], d["file_count"]) == (before["digest"], before["file_count"])
    assert refs_in_log(cli, "ds") == ["ds:v2", "ds:v1", "ds:v0"] and js(cli, "show", "ds:v2")["metadata"] == {}
    line = next(x for x in cli.ok("log", "ds").splitlines() if x.startswith("ds:v1"))
    assert '"acc": 0.93' in line and "clean labels" in line
    assert "K=V" in one_line_error(cli.run("meta", "ds:v1", "--set", "novalue"))


# -- delete, ttl, gc -------------------------------------------------------------------------------

def test_delete_is_refused_while_a_user_alias_points_at_it(three):
    cli = three
    msg = one_line_error(cli.run("delete", "ds:v0"))
    assert "production" in msg and "--force" in msg
    assert js(cli, "show", "ds:v0")["ref"] == "ds:v0"
    out = js(cli, "delete", "ds:v0", "--force")
    assert out == {"deleted": "ds:v0", "latest": 2, "aliases_removed": ["production"]}
    assert "no v0" in one_line_error(cli.run("show", "ds:v0"))
    assert "production" in one_line_error(cli.run("show", "ds:production"))
    # latest is no user alias: the newest version goes without --force
    assert cli.ok("delete", "ds:v2") == "deleted ds:v2; latest is now ds:v1\n"


def test_delete_never_reuses_numbers_and_moves_latest_back(three, tmp_path):
    cli = three
    assert cli.ok("delete", "ds:v2") == "deleted ds:v2; latest is now ds:v1\n"
    assert js(cli, "show", "ds")["ref"] == "ds:v1" and refs_in_log(cli, "ds") == ["ds:v1", "ds:v0"]
    assert js(cli, "artifacts")[0]["latest"] == "ds:v1"
    assert cli.ok("put", "ds", mk(tmp_path / "new", {"n.txt": b"new"})) == "ds:v3\n"  # not v2 again
    assert cli.ok("delete", "ds:v1") == "deleted ds:v1; latest is now ds:v3\n"
    assert refs_in_log(cli, "ds") == ["ds:v3", "ds:v0"]
    assert js(cli, "show", "ds:v3")["version"] == 3


def test_a_version_made_incrementally_from_a_deleted_one_stays_whole_and_gc_reclaims(cli, tmp_path):
    files = {"a.txt": b"kept a\n", "sub/s.txt": b"kept s\n", "only0.txt": b"only in v0 " + os.urandom(8),
             "big.bin": os.urandom(3 * (1 << 20) + 11)}  # several verified pieces: a chunk list
    src = mk(tmp_path / "src", files)
    assert cli.ok("put", "inc", src) == "inc:v0\n"
    assert cli.ok("rm", "inc", "only0.txt") == "inc:v1\n"  # incremental: records only the removal
    assert js(cli, "show", "inc:v1")["how"] == "incremental" and js(cli, "show", "inc:v1")["parent"] == 0
    only0 = object_path(cli.store, files["only0.txt"])
    assert os.path.exists(only0)
    assert cli.ok("delete", "inc:v0") == "deleted inc:v0; latest is now inc:v1\n"
    gc = js(cli, "gc")
    assert gc["objects_removed"] >= 1 and gc["bytes_freed"] >= len(files["only0.txt"])
    assert not os.path.exists(only0)  # only the deleted version used it
    for name in ("a.txt", "sub/s.txt", "big.bin"):
        assert os.path.exists(object_path(cli.store, files[name]))
        assert cli.run("cat", "inc:v1", name).outb == files[name]
    out = str(tmp_path / "out")
    assert js(cli, "export", "inc:v1", out)["files"] == 3
    for name in ("a.txt", "sub/s.txt", "big.bin"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read() == files[name]
    assert js(cli, "gc") == {"objects_removed": 0, "bytes_freed": 0, "expired_deleted": [], "expired_kept_by_alias": []}
    assert js(cli, "fsck")["ok"] is True


def test_ttl_then_gc_deletes_expired_versions(three, tmp_path):
    cli = three
    created1 = js(cli, "show", "ds:v1")["created"]
    assert js(cli, "ttl", "ds:v1", "0") == {"ref": "ds:v1", "expires": created1}  # already past
    assert js(cli, "ttl", "ds:v1", "1s")["expires"] == pytest.approx(created1 + 1)
    assert js(cli, "ttl", "ds:v1", "7d")["expires"] == pytest.approx(created1 + 7 * 86400)
    assert cli.ok("ttl", "ds:v1", "2w").startswith("ds:v1 expires ")
    assert js(cli, "show", "ds:v1")["expires"] == pytest.approx(created1 + 14 * 86400)
    assert cli.ok("ttl", "ds:v1", "none") == "ds:v1 never expires\n"
    assert js(cli, "show", "ds:v1")["expires"] is None
    assert "bad duration" in one_line_error(cli.run("ttl", "ds:v1", "soon"))
    js(cli, "ttl", "ds:v1", "0")
    js(cli, "ttl", "ds:v0", "0")  # expired too, but the alias production keeps it
    assert refs_in_log(cli, "ds") == ["ds:v2", "ds:v1", "ds:v0"]  # nothing happens before gc
    cli.ok("gc")
    assert refs_in_log(cli, "ds") == ["ds:v2", "ds:v0"]
    assert "no v1" in one_line_error(cli.run("show", "ds:v1"))
    assert os.path.exists(object_path(cli.store, b"1"))  # f1.txt: v2 has it too
    # an expired latest goes too, and latest moves back
    js(cli, "ttl", "ds:v2", "0")
    cli.ok("gc")
    assert js(cli, "show", "ds")["ref"] == "ds:v0" and refs_in_log(cli, "ds") == ["ds:v0"]
    assert not os.path.exists(object_path(cli.store, b"2"))  # f2.txt was only v2's: reclaimed
    assert cli.ok("put", "ds", mk(tmp_path / "after", {"x": b"x"})) == "ds:v3\n"  # numbers never reused


# -- --json on every command that reports a result --------------------------------------------------

def test_json_of_put_finish_alias_export_rm_gc_fsck(cli, tmp_path):
    d = mk(tmp_path / "d", {"a.txt": b"a", "b.txt": b"b"})
    assert js(cli, "put", "ds", d) == {"ref": "ds:v0", "unchanged": False}
    assert js(cli, "put", "ds", d) == {"ref": "ds:v0", "unchanged": True}
    assert js(cli, "put", "ds", mk(tmp_path / "p", {"c.txt": b"c"}), "--patch") == {"ref": "ds:v1", "unchanged": False}
    s1, s2 = mk(tmp_path / "s1", {"p1": b"1"}), mk(tmp_path / "s2", {"p2": b"2"})
    assert js(cli, "put", "res", s1, "--distributed-id", "g1") == {
        "pending": "g1", "artifact": "res", "contributed": 1, "files": 1, "writers": 1}
    assert js(cli, "put", "res", s2, "--distributed-id", "g1") == {
        "pending": "g1", "artifact": "res", "contributed": 1, "files": 2, "writers": 2}
    assert js(cli, "finish", "res", "--distributed-id", "g1") == {"ref": "res:v0", "unchanged": False}
    assert js(cli, "alias", "ds:v0", "best") == {"alias": "ds:best", "ref": "ds:v0"}
    assert js(cli, "alias", "--delete", "ds:best") == {"deleted": "ds:best"}
    out = str(tmp_path / "exported")
    assert js(cli, "export", "ds:v1", out) == {"ref": "ds:v1", "dest": out, "files": 3}
    assert js(cli, "rm", "ds", "a.txt") == {"ref": "ds:v2", "unchanged": False}
    assert js(cli, "delete", "ds:v0") == {"deleted": "ds:v0", "latest": 2, "aliases_removed": []}
    gc = js(cli, "gc")
    assert set(gc) == {"objects_removed", "bytes_freed", "expired_deleted", "expired_kept_by_alias"}
    assert gc["objects_removed"] >= 1
    fsck = js(cli, "fsck")
    assert {"ok", "problems", "objects", "versions"} <= set(fsck)
    assert (fsck["ok"], fsck["problems"], fsck["versions"]) == (True, [], 3) and fsck["objects"] > 0
    # fsck --json of a damaged store: ok false, the problem named, exit 1
    obj = object_path(cli.store, b"b")
    os.chmod(obj, 0o644)
    with open(obj, "wb") as f:
        f.write(b"X")
    try:
        r = cli.run("fsck", "--json")
        assert r.code == 1, str(r)
        report = json.loads(r.out)
        assert report["ok"] is False and any(blake3.blake3(b"b").hexdigest() in p for p in report["problems"])
    finally:
        with open(obj, "wb") as f:
            f.write(b"b")


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_json_of_mount_status_commit(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n", "b.txt": b"b\n"}))
    ro, dr = mnts("ro"), mnts("draft")
    out = js(cli, "mount", "ds:v0", ro)
    assert out == {"ref": "ds:v0", "mountpoint": ro, "pid": daemon_pid(ro)} and isinstance(out["pid"], int)
    out = js(cli, "mount", "ds:draft", dr)
    assert out == {"ref": "ds:draft", "mountpoint": dr, "pid": daemon_pid(dr)}
    with open(os.path.join(dr, "new.txt"), "w") as f:
        f.write("new\n")
    with open(os.path.join(dr, "a.txt"), "a") as f:
        f.write("more\n")
    os.unlink(os.path.join(dr, "b.txt"))
    assert js(cli, "status", dr) == [{"status": "M", "path": "a.txt"}, {"status": "D", "path": "b.txt"},
                                     {"status": "A", "path": "new.txt"}]
    assert js(cli, "commit", dr, "-m", "edit") == {"ref": "ds:v1", "unchanged": False, "outcome": "ds:v1"}
    assert js(cli, "status", dr) == []
    assert js(cli, "commit", dr) == {"ref": "ds:v1", "unchanged": True, "outcome": "ds:v1 (unchanged)"}
    cli.ok("umount", dr)
    cli.ok("umount", ro)
    assert not is_mounted(ro) and not is_mounted(dr)


# -- mounts, umount --------------------------------------------------------------------------------------

def _kill_daemon(mnt: str) -> int:
    pid = daemon_pid(mnt)
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 30), "the daemon did not die"
    return pid


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_mounts_shows_live_and_dead_mounts_and_umount_removes_a_dead_one(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m1, m2 = mnts("one"), mnts("two")
    cli.ok("mount", "ds:v0", m1)
    cli.ok("mount", "ds:draft", m2)
    pid1, pid2 = daemon_pid(m1), daemon_pid(m2)
    rows = {r["mountpoint"]: r for r in js(cli, "mounts")}
    assert set(rows) == {m1, m2}
    assert (rows[m1]["ref"], rows[m1]["pid"], rows[m1]["alive"]) == ("ds:v0", pid1, True)
    assert (rows[m2]["ref"], rows[m2]["pid"], rows[m2]["alive"]) == ("ds:draft", pid2, True)
    assert isinstance(rows[m1]["started"], float) and rows[m1]["started"] <= time.time()
    text = cli.ok("mounts")
    assert f"ds:v0  {m1}  pid {pid1}  since " in text and "dead" not in text
    _kill_daemon(m1)
    rows = {r["mountpoint"]: r for r in js(cli, "mounts")}
    assert rows[m1]["alive"] is False and rows[m2]["alive"] is True
    line1 = next(x for x in cli.ok("mounts").splitlines() if m1 in x)
    assert line1.endswith("(dead: artfs umount it)")
    r = cli.run("umount", m1)
    assert r.code == 0 and r.out == "" and r.err.count("\n") <= 1, str(r)
    assert not is_mounted(m1)
    assert [r["mountpoint"] for r in js(cli, "mounts")] == [m2]
    cli.ok("umount", m2)
    assert js(cli, "mounts") == [] and cli.ok("mounts") == ""


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_umount_after_the_daemon_was_killed_says_so_in_one_line(cli, tmp_path, mnts):
    assert "dead" not in str(tmp_path)  # (umount's message is told apart by the word)
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m = mnts("m")
    cli.ok("mount", "ds:v0", m)
    assert os.listdir(m) == ["a.txt"] and os.stat(m)  # in use, as mounts are, before the daemon dies
    _kill_daemon(m)
    r = cli.run("umount", m)
    assert not is_mounted(m)
    assert r.code == 0 and r.out == "", str(r)
    assert r.err.count("\n") == 1 and "dead" in r.err, str(r)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_mount_over_a_killed_mount_replaces_it(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m = mnts("m")
    cli.ok("mount", "ds:v0", m)
    assert os.listdir(m) == ["a.txt"]
    _kill_daemon(m)
    r = cli.run("mount", "ds:v0", m)
    assert r.code == 0 and r.out == f"mounted ds:v0 at {m}\n", str(r)
    assert os.listdir(m) == ["a.txt"]
    cli.ok("umount", m)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_mounts_forgets_a_dead_mount_once_it_is_removed(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m = mnts("again")
    cli.ok("mount", "ds:v0", m)
    _kill_daemon(m)
    cli.run("umount", m)
    assert not is_mounted(m)
    cli.ok("mount", "ds:v0", m)
    rows = js(cli, "mounts")
    assert [(r["mountpoint"], r["alive"]) for r in rows] == [(m, True)], rows
    cli.ok("umount", m)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_umount_of_a_live_mount_is_quiet_whatever_its_path(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m = mnts("deadline-still")
    cli.ok("mount", "ds:v0", m)
    r = cli.run("umount", m)
    assert not is_mounted(m)
    assert (r.code, r.out, r.err) == (0, "", ""), str(r)


@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_umount_of_a_busy_mount_names_the_process_holding_it(cli, tmp_path, mnts):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a\n"}))
    m = mnts("busy")
    cli.ok("mount", "ds:v0", m)
    holder = subprocess.Popen(["sleep", "60"], cwd=m)
    try:
        msg = cli.fail("umount", m)
        assert msg.startswith(f"{m} is busy") and f"sleep (pid {holder.pid})" in msg
        assert is_mounted(m)
    finally:
        holder.kill()
        holder.wait()
    cli.ok("umount", m)
    assert not is_mounted(m)


# -- mount(8) and fstab --------------------------------------------------------------------------------

@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_mount_t_fuse_artfs_and_an_fstab_line_through_the_helper(cli, tmp_path, mnts):
    if os.geteuid() != 0 or not os.access("/sbin", os.W_OK):
        pytest.skip("installing the mount helper needs a writable /sbin (root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8)")
    helper = "/sbin/mount.fuse.artfs"
    before = None
    if os.path.lexists(helper):
        with open(helper, "rb") as f:
            before = f.read()
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"through mount(8)\n"}))
    m1, m2 = mnts("mount8"), mnts("fstab")
    try:
        assert cli.ok("install-mount-helper", "--dir", "/sbin") == helper + "\n"
        assert os.access(helper, os.X_OK)
        p = subprocess.run(["mount", "-t", "fuse.artfs", "ds:v0", m1, "-o", f"store={cli.store}"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert is_mounted(m1)
        with open(os.path.join(m1, "a.txt"), "rb") as f:
            assert f.read() == b"through mount(8)\n"
        assert [(r["ref"], r["mountpoint"]) for r in js(cli, "mounts")] == [("ds:v0", m1)]
        cli.ok("umount", m1)
        fstab = tmp_path / "fstab"
        fstab.write_text(f"# an /etc/fstab line\nds:v0 {m2} fuse.artfs store={cli.store},noauto 0 0\n")
        p = subprocess.run(["mount", "--fstab", str(fstab), m2], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        with open(os.path.join(m2, "a.txt"), "rb") as f:
            assert f.read() == b"through mount(8)\n"
        with open("/proc/mounts") as f:
            assert any(line.split()[1] == m2 and line.split()[2] == "fuse.artfs" for line in f)
        cli.ok("umount", m2)
    finally:
        force_unmount(m1)
        force_unmount(m2)
        if before is None:
            try:
                os.unlink(helper)
            except FileNotFoundError:
                pass
        else:
            with open(helper, "wb") as f:
                f.write(before)


# -- errors that explain -------------------------------------------------------------------------------

def test_init_refuses_a_non_empty_directory_that_is_not_a_store(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine\n")
    c = Cli(other, home=tmp_path)
    msg = c.fail("init")
    assert str(other) in msg and "not empty" in msg
    assert os.listdir(other) == ["keep.txt"] and not c.has_store()
    empty = tmp_path / "empty"
    empty.mkdir()
    c2 = Cli(empty, home=tmp_path)
    assert c2.ok("init") == f"{empty}\n" and c2.has_store()
    assert c2.ok("init") == f"{empty}\n"  # idempotent on a store
    c3 = Cli(tmp_path / "new" / "store", home=tmp_path)
    assert c3.ok("init") and c3.has_store()


def test_rm_of_a_version_explains_that_rm_takes_an_artifact_name(cli, tmp_path):
    cli.ok("put", "ds", mk(tmp_path / "d", {"a.txt": b"a", "b.txt": b"b"}))
    cli.ok("put", "ds", mk(tmp_path / "d", {"c.txt": b"c"}))
    msg = cli.fail("rm", "ds:v1", "a.txt")
    assert "rm takes an artifact name" in msg and "artfs rm ds " in msg
    assert refs_in_log(cli, "ds") == ["ds:v1", "ds:v0"]  # nothing made
    assert js(cli, "rm", "ds", "a.txt")["ref"] == "ds:v2"


def _user_python(uid: int, gid: int) -> tuple[list, dict] | None:
    """An interpreter (and environment) that the user can run artfs with: this one, or the
    system's python3 of the same version with the repo and this venv's packages on its path
    (a venv made from a python under /root is out of an ordinary user's reach)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    candidates = [([sys.executable], {})]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:
        paths = [REPO, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        candidates.append(([system], {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}))
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cmd, extra in candidates:
        try:
            p = subprocess.run(cmd + ["-c", "import sys, artfs.cli; print('%d.%d' % sys.version_info[:2])"],
                               user=uid, group=gid, extra_groups=[], cwd="/", env=dict(env, **extra),
                               capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if p.returncode == 0 and p.stdout.strip() == want:
            return cmd, dict(env, **extra)
    return None


TEST_USER = "artfs-test"


@pytest.fixture
def plain_user():
    """(uid, gid, home) of the unprivileged system user artfs-test (made if missing, as
    scripts/test does), with a fresh home directory it owns.  Root only."""
    import pwd
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        p = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot create the user {TEST_USER}: {p.stderr.strip()}")
        pw = pwd.getpwnam(TEST_USER)
    home = tempfile.mkdtemp(prefix="artfs-everyday-user-", dir="/tmp")
    os.chown(home, pw.pw_uid, pw.pw_gid)
    try:
        yield pw.pw_uid, pw.pw_gid, home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_user_without_dev_fuse_gets_a_clear_message(plain_user):
    """As the unprivileged ``artfs-test`` user, with a store of its own: mounting says that
    /dev/fuse cannot be opened and what to do, in one line (not 'fuse_session_mount failed')."""
    uid, gid, home = plain_user
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    st = os.stat("/dev/fuse")
    if st.st_mode & 0o006 or (st.st_gid == gid and st.st_mode & 0o060) or st.st_uid == uid:
        pytest.skip(f"/dev/fuse is open to {TEST_USER} here")
    py = _user_python(uid, gid)
    if py is None:
        pytest.skip(f"no python that {TEST_USER} can run artfs with")
    cmd, env = py
    env = dict(env, HOME=home, USER=TEST_USER)
    store = os.path.join(home, "store")

    def as_user(*args):
        return subprocess.run(cmd + ["-m", "artfs.cli", "--store", store, *args], user=uid, group=gid,
                              extra_groups=[], env=env, cwd=home, capture_output=True, text=True, timeout=60)

    src, m = os.path.join(home, "src"), os.path.join(home, "m")
    mk(src, {"a.txt": b"a\n"})
    os.mkdir(m)
    for p in (src, os.path.join(src, "a.txt"), m):
        os.chown(p, uid, gid)
    assert as_user("init").returncode == 0
    p = as_user("put", "ds", src)
    assert p.returncode == 0 and p.stdout == "ds:v0\n", p.stderr
    assert os.stat(store).st_uid == uid  # the user's own store
    for ref in ("ds:v0", "ds:draft"):
        p = as_user("mount", ref, m)
        assert p.returncode == 2 and p.stdout == "", p
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("artfs: "), p.stderr
        assert "/dev/fuse" in p.stderr and "permission denied" in p.stderr.lower(), p.stderr
        assert "fuse_session_mount" not in p.stderr
        assert not is_mounted(m)


# -- --type on put and mount ---------------------------------------------------------------------------

@needs_fuse
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_put_and_mount_take_type_which_may_change_only_while_there_is_no_version(cli, tmp_path, mnts):
    d = mk(tmp_path / "d", {"w.bin": b"weights"})
    assert js(cli, "put", "clf", d, "--type", "model")["ref"] == "clf:v0"
    assert js(cli, "show", "clf")["type"] == "model"
    # a draft of a new artifact mounted with --type model commits a model
    m = mnts("new")
    cli.ok("mount", "newm:draft", m, "--type", "model")
    with open(os.path.join(m, "w.bin"), "wb") as f:
        f.write(b"w")
    assert cli.ok("commit", m) == "newm:v0\n"
    cli.ok("umount", m)
    assert js(cli, "show", "newm:v0")["type"] == "model"
    assert "newm" in [r["artifact"] for r in js(cli, "artifacts", "--type", "model")]
    # no version yet: the type may change (the resumed draft takes the new one)
    cli.ok("mount", "tx:draft", m, "--type", "model")
    with open(os.path.join(m, "c.pt"), "wb") as f:
        f.write(b"c")
    cli.ok("umount", m)
    cli.ok("mount", "tx:draft", m, "--type", "checkpoint")
    assert cli.ok("commit", m) == "tx:v0\n"
    cli.ok("umount", m)
    assert js(cli, "show", "tx")["type"] == "checkpoint"
    # with a version, it may not
    assert "checkpoint" in cli.fail("mount", "tx:draft", m, "--type", "model")
    assert not is_mounted(m)
    assert "tx is a checkpoint, not a model" in cli.fail("put", "tx", d, "--type", "model")
    assert "clf is a model, not a dataset" in cli.fail("put", "clf", mk(tmp_path / "e", {"x": b"x"}), "--type",
                                                       "dataset")
    assert cli.ok("put", "tx", d) == "tx:v1\n"  # no --type: the artifact's own
    # once its versions are gone, it may change again
    cli.ok("delete", "tx:v0")
    cli.ok("delete", "tx:v1")
    assert cli.ok("put", "tx", d, "--type", "model") == "tx:v2\n"
    assert js(cli, "show", "tx")["type"] == "model"


# -- --help: one example each ---------------------------------------------------------------------------

def _commands() -> list[tuple[str, ...]]:
    import click

    from artfs.cli import _load_plugins, cli

    _load_plugins(cli)
    out = []
    for name, cmd in sorted(cli.commands.items()):
        out.append((name,))
        if isinstance(cmd, click.Group):
            out += [(name, sub) for sub in sorted(cmd.commands)]
    return out


# commands whose --help has no example yet (issue 13: "--help of each command has one example")
NO_EXAMPLE_YET: set = set()


@pytest.mark.parametrize("words", [
    pytest.param(w, id=" ".join(w),
                 marks=[pytest.mark.xfail(strict=True, reason=f"BUG: artfs {' '.join(w)} --help has no Example: line")]
                 if w in NO_EXAMPLE_YET else [])
    for w in _commands()])
def test_help_of_every_command_has_an_example(words):
    from artfs.cli import cli

    r = CliRunner().invoke(cli, [*words, "--help"], prog_name="artfs")
    assert r.exit_code == 0, r.output
    examples = [line.strip() for line in r.output.splitlines() if line.strip().startswith("Example:")]
    assert len(examples) == 1, r.output
    assert examples[0].startswith("Example: artfs "), examples
