"""Many machines, simulated: worker processes that share only the PostgreSQL DSN and the S3
endpoint, each with its own HOME and XDG directories (its own object cache, scratch area and
logs) and its own mounts.

16 writers upsert into one distributed id through ``artfs run --group`` (each a draft mount of
its own) while gc runs over and over on another machine and readers mount an earlier version
and read it; then one machine finishes the version.  Nothing is lost, the one deliberate
conflict is reported, and fsck is clean on every machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading


import servers as srv_mod
from artfs import repo
from artfs.storage.store import Store
from mounts import ARTFS, force_unmount, needs_fuse

WRITERS = 16
DID = "eval-42"

WRITER = r"""
import os, sys
out, i = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(out, f"w{i}"), exist_ok=True)
for k in range(4):
    with open(os.path.join(out, f"w{i}", f"part-{k}.txt"), "w") as f:
        f.write(f"writer {i} part {k}\n" * (k + 1))
os.makedirs(os.path.join(out, "common"), exist_ok=True)
with open(os.path.join(out, "common", "readme.txt"), "w") as f:
    f.write("the same for everyone\n")          # the same content: not a conflict
if i in (0, 1):
    with open(os.path.join(out, "clash.txt"), "w") as f:
        f.write(f"only one of us wins: {i}\n")     # other content at one path: a conflict
"""


@needs_fuse
def test_sixteen_machines_upsert_while_gc_runs_and_readers_mount(tmp_path):
    srv = srv_mod.scaleout_or_skip()
    homes = tmp_path / "machines"

    def env_of(name: str) -> dict:
        return dict(os.environ, **srv_mod.machine_env(str(homes / name)))

    def cli(name: str, *args, check=True, timeout=300):
        p = subprocess.run(ARTFS + ["--store", path, *map(str, args)], capture_output=True, text=True,
                           env=env_of(name), timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"[{name}] artfs {' '.join(map(str, args))}: {p.returncode} {p.stderr}")
        return p

    path = str(tmp_path / "shared.artfs")
    srv.new_store(path).meta.close()
    try:
        base = tmp_path / "base"
        (base / "data").mkdir(parents=True)
        expected_v0 = {f"data/x{i}.txt": f"base {i}\n" * 50 for i in range(30)}
        for rel, text in expected_v0.items():
            (base / rel).write_text(text)
        cli("origin", "put", "ds", str(base))
        writer_py = tmp_path / "writer.py"
        writer_py.write_text(WRITER)

        stop = threading.Event()
        gc_runs, gc_errors, read_errors, reads = [], [], [], []

        def gc_loop():
            while not stop.is_set():
                p = cli("janitor", "gc", check=False)
                (gc_runs if p.returncode == 0 else gc_errors).append(p.stderr)

        def reader(n: int):
            name = f"reader{n}"
            mnt = tmp_path / f"ro{n}"
            mnt.mkdir()
            try:
                cli(name, "mount", "ds:v0", str(mnt))
                while True:
                    for rel, text in expected_v0.items():
                        with open(mnt / rel) as f:
                            if f.read() != text:
                                read_errors.append(f"{name}: {rel} differs")
                    reads.append(n)
                    if stop.is_set():
                        break
            except Exception as exc:  # reported below, never swallowed
                read_errors.append(f"{name}: {exc}")
            finally:
                p = cli(name, "umount", str(mnt), check=False)
                if p.returncode != 0:
                    force_unmount(str(mnt))

        threads = [threading.Thread(target=gc_loop)] + [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        writers = []
        try:
            for i in range(WRITERS):
                out = tmp_path / f"out{i}"
                writers.append(subprocess.Popen(
                    ARTFS + ["--store", path, "run", "--group", DID, "--out", f"{out}=ds", "--",
                             sys.executable, str(writer_py), str(out), str(i)],
                    env=env_of(f"writer{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            results = [(i, *w.communicate(timeout=600), w.returncode) for i, w in enumerate(writers)]
        finally:
            stop.set()
            for w in writers:
                if w.poll() is None:
                    w.kill()
            for t in threads:
                t.join(600)
        failed = [(i, err) for i, out, err, rc in results if rc != 0]
        assert len(failed) == 1, f"exactly one of the clashing writers loses: {failed}"
        loser, err = failed[0]
        assert loser in (0, 1) and "conflicting upsert" in err and "clash.txt" in err, err
        winner = 1 - loser
        assert gc_runs and not gc_errors, gc_errors
        assert reads and not read_errors, read_errors

        fin = cli("finisher", "finish", "ds", "--distributed-id", DID)
        assert "ds:v1" in fin.stdout
        s = Store.open(path)
        v1 = repo.resolve(s, "ds:v1")
        got = {"/".join(p.decode() for p in path_): e for path_, e in repo.walk(s, v1.root) if e.kind != 2}
        want = dict(expected_v0)
        for i in range(WRITERS):
            if i == loser:
                continue
            for k in range(4):
                want[f"w{i}/part-{k}.txt"] = f"writer {i} part {k}\n" * (k + 1)
        want["common/readme.txt"] = "the same for everyone\n"
        want["clash.txt"] = f"only one of us wins: {winner}\n"
        assert sorted(got) == sorted(want)
        for rel, text in want.items():
            assert repo.read_all(s, got[rel]).decode() == text, rel
        # nothing lost: the loser's run keeps its files in its draft, on its machine
        drafts = json.loads(cli(f"writer{loser}", "drafts", "--json").stdout)
        assert [d["artifact"] for d in drafts] == ["ds"]
        assert repo.fsck(s) == []
        for name in ("origin", "janitor", f"writer{loser}", f"writer{winner}", "reader0"):
            p = cli(name, "fsck", check=False)
            assert p.returncode == 0, f"fsck on {name}: {p.stdout} {p.stderr}"
        again = cli("finisher", "finish", "ds", "--distributed-id", DID, check=False)
        assert again.returncode != 0 and "already finished as ds:v1" in again.stderr
        s.meta.close()
    finally:
        srv.drop_store(path)
