"""The scale-out store: description, per-machine state, cache, S3 objects, gc leases, drafts
across machines, push/pull.  PostgreSQL and SeaweedFS are started by tests/servers.py; every
"machine" here is a set of XDG directories of its own (``machine_env``).

(The rest of the suite runs against this back end too: ``--backend scaleout|both``.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

import servers as srv_mod
from artfs import repo
from artfs.errors import Conflict, Corrupt, SchemaMismatch, StoreMissing
from artfs.repo import transfer
from artfs.storage import format as fmt
from artfs.storage.hashing import digest as b3
from artfs.storage.store import Store
from mounts import ARTFS, needs_fuse


@pytest.fixture
def srv():
    return srv_mod.scaleout_or_skip()


class Machine:
    """One simulated machine: its own HOME and XDG directories; ``env`` for subprocesses,
    ``use()`` to make this process one while opening stores."""

    def __init__(self, root: str, name: str):
        self.name = name
        self.env = srv_mod.machine_env(os.path.join(root, name))
        self.home = self.env["HOME"]

    def cli(self, store: str, *args, check: bool = True, timeout: float = 180, text: bool = True):
        p = subprocess.run(ARTFS + ["--store", store, *map(str, args)], capture_output=True, text=text,
                           env=dict(os.environ, **self.env), timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"[{self.name}] artfs {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
        return p

    def open(self, path: str, monkeypatch) -> Store:
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)
        return Store.open(path)

    def cache_dir(self, store_id: str) -> str:
        return os.path.join(self.env["XDG_CACHE_HOME"], "artfs", store_id)


@pytest.fixture
def machines(tmp_path):
    return lambda name: Machine(str(tmp_path / "machines"), name)


@pytest.fixture
def so(srv, tmp_path, monkeypatch, machines):
    """A fresh scale-out store made on machine ``a``; yields (path, Store)."""
    a = machines("a")
    for k, v in a.env.items():
        monkeypatch.setenv(k, v)
    path = str(tmp_path / "store.artfs")
    s = srv.new_store(path)
    yield path, s
    s2 = Store.open(path)
    try:
        assert repo.fsck(s2) == []
    finally:
        s2.meta.close()
        srv.drop_store(path)


def put_tree(tmp_path, name: str, files: dict) -> str:
    root = tmp_path / name
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return str(root)


def cached_digests(cache_dir: str) -> tuple[set[bytes], set[bytes]]:
    """(whole objects, objects with spans) in a machine's cache."""
    whole, spans = set(), set()
    for sub, into in (("objects", whole), ("spans", spans)):
        top = os.path.join(cache_dir, sub)
        for d, _, files in os.walk(top):
            for f in files:
                into.add(bytes.fromhex(os.path.basename(d) + f.split(".")[0]))
    return whole, spans


# -- the description and opening ------------------------------------------------------------

def test_init_writes_a_description_without_credentials(srv, tmp_path, machines):
    a = machines("a")
    path = str(tmp_path / "s.artfs")
    dsn, url, endpoint = srv.new_store_args()
    secret_dsn = dsn.replace("postgresql://artfs@", "postgresql://artfs:hunter2@")
    out = a.cli(path, "init", "--meta", secret_dsn, "--objects", url, "--endpoint", endpoint, "--cache-size", "64M")
    assert out.stdout.strip() == path
    text = open(path).read()
    desc = json.loads(text)
    assert "hunter2" not in text and os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert desc["objects"] == url and desc["endpoint"] == endpoint and desc["cache_size"] == 64 << 20
    assert a.cli(path, "init", "--meta", secret_dsn, "--objects", url, "--endpoint", endpoint).stdout.strip() == path
    assert json.loads(open(path).read())["id"] == desc["id"]  # idempotent: the same store
    a.cli(path, "init")  # plain init of an existing description: fine
    # another description of the same store (a second machine running init) gets the same id
    other = str(tmp_path / "copy.artfs")
    a.cli(other, "init", "--meta", dsn, "--objects", url, "--endpoint", endpoint)
    assert json.loads(open(other).read())["id"] == desc["id"]
    # another store may not take the same prefix
    dsn2, _, _ = srv.new_store_args()
    bad = a.cli(str(tmp_path / "x.artfs"), "init", "--meta", dsn2, "--objects", url, "--endpoint", endpoint,
                check=False)
    assert bad.returncode == 2 and "already holds another artfs store" in bad.stderr
    half = a.cli(str(tmp_path / "y.artfs"), "init", "--meta", dsn2, check=False)
    assert half.returncode == 2 and "needs both" in half.stderr
    srv.drop_store(path)
    srv.drop_store(str(tmp_path / "x.artfs"))


def test_a_copy_of_the_description_is_all_another_machine_needs(so, tmp_path, machines):
    path, s = so
    big = os.urandom(3 << 20)
    src = put_tree(tmp_path, "src", {"a.txt": b"alpha", "d/b.bin": big})
    a, b = machines("a"), machines("b")
    a.cli(path, "put", "ds", src)
    copy = str(tmp_path / "elsewhere.artfs")
    with open(path, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    out = b.cli(copy, "cat", "ds", "a.txt")
    assert out.stdout == "alpha"
    assert b.cli(copy, "cat", "ds", "d/b.bin", text=False).stdout == big
    # each machine has a cache and state of its own, keyed by the store's id
    sid = json.load(open(path))["id"]
    assert os.path.isdir(b.cache_dir(sid)) and os.path.isdir(a.cache_dir(sid))
    assert os.path.isdir(os.path.join(b.env["XDG_DATA_HOME"], "artfs-scaleout", sid))


def test_open_checks_schema_and_store_id(so, srv, tmp_path):
    path, s = so
    schema = s.meta.schema
    srv.psql("UPDATE info SET value='99' WHERE key='schema'", schema)
    with pytest.raises(SchemaMismatch, match="newer artfs"):
        Store.open(path)
    srv.psql("UPDATE info SET value='1' WHERE key='schema'", schema)
    desc = json.load(open(path))
    other = dict(desc, id="00000000-0000-0000-0000-000000000000")
    bad = tmp_path / "other.artfs"
    bad.write_text(json.dumps(other))
    with pytest.raises(StoreMissing, match="was the database replaced"):
        Store.open(str(bad))
    junk = tmp_path / "junk.artfs"
    junk.write_text("not json")
    with pytest.raises(StoreMissing, match="not an artfs store description"):
        Store.open(str(junk))
    assert Store.open(path).kind == "scaleout"


def test_a_newer_artfs_migrates_the_schema_once(so, srv, monkeypatch):
    path, s = so
    from artfs.storage import pg_meta

    monkeypatch.setattr(pg_meta, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(pg_meta, "MIGRATIONS", {2: ["ALTER TABLE versions ADD COLUMN later TEXT"]})
    Store.open(path).meta.close()
    Store.open(path).meta.close()  # once: the second open finds schema 2
    rows = srv.psql("SELECT version, note FROM migrations ORDER BY version", s.meta.schema)
    assert rows == [(1, "created"), (2, "migrated")]
    assert srv.psql("SELECT count(later) FROM versions", s.meta.schema) == [(0,)]
    monkeypatch.setattr(pg_meta, "SCHEMA_VERSION", 1)  # the fixture's own check at the end: this artfs
    srv.psql("UPDATE info SET value='1' WHERE key='schema'", s.meta.schema)


# -- objects and the cache -------------------------------------------------------------------

def test_has_is_batched_not_one_head_per_object(so):
    path, s = so
    with s.writing(), s.objects.batch() as b:
        ds = [b.put_bytes(f"object {i}".encode()) for i in range(600)]
    absent = [b3(f"absent {i}".encode()) for i in range(300)]
    s.objects.stats.update(head=0, list=0)
    have = s.objects.has(ds + absent)
    assert set(have) == set(ds) and all(have[d] == len(f"object {i}".encode()) for i, d in enumerate(ds))
    assert s.objects.stats["head"] == 0
    assert s.objects.stats["list"] <= 256  # at most one listing per 2-hex prefix here
    assert s.objects.has(absent[:3]) == {}


def test_big_objects_are_multipart_and_carry_their_chunk_list(so, tmp_path):
    path, s = so
    data = os.urandom(20 << 20)
    f = tmp_path / "big"
    f.write_bytes(data)
    with s.writing(), s.objects.batch() as b, open(f, "rb") as fh:
        d, n, chunks = b.put_fd(fh.fileno())
    assert d == b3(data) and n == len(data) and chunks is not None
    got, size, ch = s.objects.fetch_range(d, 0, 10)
    assert got == data[:10] and size == len(data) and ch == chunks
    assert s.objects.verify(d)
    # putting it again sends nothing (it is there with that size)
    before = s.objects.stats["put"]
    with s.writing(), s.objects.batch() as b, open(f, "rb") as fh:
        b.put_fd(fh.fileno())
    assert s.objects.stats["put"] == before + 1  # the chunk list only (small objects are always sent)
    assert s.objects.stats["skipped"] >= 1


def test_cache_is_verified_on_fill_and_heals(so, tmp_path, monkeypatch, machines):
    path, s = so
    src = put_tree(tmp_path, "src", {"small": b"small content", "big": os.urandom(20 << 20)})
    v, _ = repo.put_dir(s, "ds", src)
    small = repo.lookup(s, v, "small")
    big = repo.lookup(s, v, "big")
    # the bucket's copy of the small file goes bad: a fresh machine refuses to serve or cache it
    import obstore

    key = s.objects.key(small.digest)
    obstore.put(s.objects.s3, key, b"SMALL CONTENT")
    b = machines("b").open(path, monkeypatch)
    with pytest.raises(Corrupt):
        repo.read_all(b, small)
    assert small.digest not in cached_digests(b.objects.cache.root)[0]
    obstore.put(s.objects.s3, key, b"small content")  # healed in the bucket
    assert repo.read_all(b, small) == b"small content"
    # a span of the big file goes bad in the bucket (same size): refused piece by piece
    good = bytes(obstore.get(s.objects.s3, s.objects.key(big.digest)).bytes())
    obstore.put(s.objects.s3, s.objects.key(big.digest), good[:9 << 20] + b"X" + good[(9 << 20) + 1:],
                attributes={"artfs-chunks": big.chunks.hex()})
    c = machines("c").open(path, monkeypatch)
    with repo.ContentReader(c, big) as r:
        assert r.read(0, 100) == good[:100]  # span 0 is fine
        with pytest.raises(Corrupt):
            r.read(9 << 20, 100)
    obstore.put(s.objects.s3, s.objects.key(big.digest), good, attributes={"artfs-chunks": big.chunks.hex()})
    # a cached tree that went bad on this machine's disk is fetched again
    c.tree(v.root)
    tree_file = c.objects.cache.whole_path(v.root)
    assert os.path.exists(tree_file)
    with open(tree_file, "r+b") as fh:
        fh.write(b"\xff")
    c._trees.clear()
    assert [e.name for e in c.tree(v.root)] == [b"big", b"small"]


@needs_fuse
def test_mount_and_find_fetch_no_contents_cat_fetches_one_file(so, tmp_path, machines):
    path, s = so
    files = {f"d{i}/f{j}.bin": os.urandom(1000 + j) for i in range(5) for j in range(20)}
    files["big/one.bin"] = os.urandom(30 << 20)
    files["big/two.bin"] = os.urandom(30 << 20)
    src = put_tree(tmp_path, "src", files)
    a, b = machines("a"), machines("b")
    a.cli(path, "put", "ds", src)
    v = repo.resolve(s, "ds")
    trees = {e.digest for _, e in repo.walk(s, v.root) if e.kind == fmt.DIR} | {v.root}
    sid = json.load(open(path))["id"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env_b = dict(os.environ, **b.env)
    with _mounted_as(b, path, "ds", str(mnt)):
        found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, env=env_b, check=True)
        assert len(found.stdout.split()) == len(files)
        subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True)
        whole, spans = cached_digests(b.cache_dir(sid))
        assert whole <= trees and not spans, "mounting and listing fetched file contents"
        one = subprocess.run(["cat", str(mnt / "big" / "one.bin")], capture_output=True, check=True).stdout
        assert one == files["big/one.bin"]
        small = subprocess.run(["cat", str(mnt / "d1" / "f3.bin")], capture_output=True, check=True).stdout
        assert small == files["d1/f3.bin"]
        one_e = repo.lookup(s, v, "big/one.bin")
        want = {b3(files["d1/f3.bin"]), one_e.chunks}
        # opening d1/f3.bin reads the small files after it in d1 ahead (fuse/readahead.py): those
        # may be fetched too, nothing else
        names = sorted(os.fsencode(n) for n in os.listdir(os.path.join(src, "d1")))
        after = names[names.index(b"f3.bin") + 1:]
        ahead = {b3(files["d1/" + os.fsdecode(n)]) for n in after}
        # the daemon writes fetched spans into the cache behind the reader: wait for them to land
        wait_until(lambda: cached_digests(b.cache_dir(sid))[1] == {one_e.digest}
                   and want <= cached_digests(b.cache_dir(sid))[0] - trees)
        whole, spans = cached_digests(b.cache_dir(sid))
        assert spans == {one_e.digest} and want <= whole - trees <= want | ahead  # that file, nothing else


class _mounted_as:
    """``artfs mount`` as another machine (its XDG directories), always unmounted."""

    def __init__(self, m: Machine, store: str, ref: str, mnt: str):
        self.m, self.store, self.ref, self.mnt = m, store, ref, mnt

    def __enter__(self):
        self.m.cli(self.store, "mount", self.ref, self.mnt)
        return self

    def __exit__(self, *exc):
        from mounts import force_unmount

        p = subprocess.run(ARTFS + ["--store", self.store, "umount", self.mnt], capture_output=True, text=True,
                           env=dict(os.environ, **self.m.env), timeout=120)
        if p.returncode != 0:
            force_unmount(self.mnt)


def test_cache_bound_holds_while_reading_more_than_it(so, tmp_path, monkeypatch, machines):
    path, s = so
    limit = 40 << 20
    files = {f"f{i}": os.urandom(5 << 20) for i in range(8)}  # 40 MiB of files of up to one span
    files["huge"] = os.urandom(40 << 20)  # one file bigger than the whole cache
    src = put_tree(tmp_path, "src", files)
    repo.put_dir(s, "ds", src)
    monkeypatch.setenv("ARTFS_CACHE_SIZE", str(limit))
    b = machines("b").open(path, monkeypatch)
    v = repo.resolve(b, "ds")
    cache = b.objects.cache
    for _ in range(2):
        for name, data in files.items():
            e = repo.lookup(b, v, name)
            got = bytearray()
            with repo.ContentReader(b, e) as r:
                off = 0
                while off < e.size:
                    piece = r.read(off, 1 << 20)
                    got += piece
                    off += len(piece)
                    assert cache.disk_usage() <= limit + (4 << 20) * 8  # the bound, plus fills in flight
            assert bytes(got) == data
            cache.flush()
            assert cache.disk_usage() <= limit and cache.used() <= limit
    assert cache.fills > len(files)


# -- gc across machines ----------------------------------------------------------------------

def test_gc_on_another_machine_waits_for_a_writer_and_loses_nothing(so, tmp_path, machines):
    path, s = so
    b = machines("b")
    entered = threading.Event()
    release = threading.Event()
    result = {}

    def writer():
        with s.writing():
            with s.objects.batch() as bt:
                d = bt.put_bytes(b"uploaded by a writer on machine a")
                root = s.write_dir(bt, fmt.Entry(b"", fmt.DIR, 0o755, 0, 0, 0, 0, 0),
                                   [fmt.Entry(b"f", fmt.FILE, 0o644, 0, 0, 33, 0, 0, digest=d)])
            entered.set()
            release.wait(60)
            result["num"] = repo.commit.create_version(s, "ds", None, root, {}, base=None, expected="any",
                                                       message=None, metadata=None, how="single")[0]

    t = threading.Thread(target=writer)
    t.start()
    assert entered.wait(60)
    gc = subprocess.Popen(ARTFS + ["--store", path, "gc"], env=dict(os.environ, **b.env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        # gc takes the store's gc lease, then waits for the writer's lease to go
        wait_until(lambda: s.meta.gc_state()["holder"] is not None, lambda: gc.poll() is None)
        assert gc.poll() is None
    finally:
        release.set()
        t.join(60)
    out, err = gc.communicate(timeout=120)
    assert gc.returncode == 0, err
    v = repo.resolve(s, f"ds:v{result['num']}")
    assert repo.read_all(s, repo.lookup(s, v, "f")) == b"uploaded by a writer on machine a"


def wait_until(cond, still_ok=lambda: True, timeout: float = 60.0) -> None:
    """Poll the metadata store (another machine's state has no event to wait on) with a deadline."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert still_ok() and time.monotonic() < deadline, "the awaited state never came"
        threading.Event().wait(0.01)


def test_writers_wait_while_gc_holds_the_store(so, monkeypatch):
    path, s = so
    assert s.meta.gc_begin('{"host": "elsewhere"}', 60)
    refused = []
    real = s.meta.gc_writer_enter
    monkeypatch.setattr(s.meta, "gc_writer_enter", lambda *a: refused.append(1) or real(*a))
    done = threading.Event()

    def writer():
        with s.writing():
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: len(refused) >= 2)  # turned away at least once
        assert not done.is_set() and s.meta.gc_writers() == []
    finally:
        s.meta.gc_end('{"host": "elsewhere"}')
    t.join(60)
    assert done.is_set()


def test_a_writer_whose_lease_was_reaped_records_nothing(so, srv, tmp_path):
    path, s = so
    with pytest.raises(Conflict, match="outlived its gc lease"):
        with s.writing():
            with s.objects.batch() as bt:
                d = bt.put_bytes(b"nobody will name this")
                root = s.write_dir(bt, fmt.Entry(b"", fmt.DIR, 0o755, 0, 0, 0, 0, 0),
                                   [fmt.Entry(b"f", fmt.FILE, 0o644, 0, 0, 21, 0, 0, digest=d)])
            srv.psql("DELETE FROM gc_writers", s.meta.schema)  # what gc does to an expired lease
            repo.commit.create_version(s, "ds", None, root, {}, base=None, expected="any", message=None,
                                       metadata=None, how="single")
    assert s.meta.artifact("ds") is None or s.meta.versions("ds") == []
    assert repo.gc(s)[0] >= 2  # what it uploaded is garbage, and goes


def test_leases_of_a_dead_process_are_reaped_at_once(so, tmp_path):
    path, s = so
    code = ("import os, sys\nfrom artfs.storage.store import Store\ns = Store.open(sys.argv[1])\n"
            "w = s.writing(); w.__enter__(); print('in', flush=True); os.kill(os.getpid(), 9)\n")
    p = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "in" and p.returncode == -9
    assert len(s.meta.gc_writers()) == 1
    repo.gc(s)  # does not wait for the dead writer's lease to expire
    assert s.meta.gc_writers() == []


# -- drafts live on the machine of their scratch files ---------------------------------------

def test_a_draft_with_scratch_files_is_refused_on_another_machine(so, tmp_path, monkeypatch, machines):
    path, s = so
    src = put_tree(tmp_path, "src", {"a": b"a"})
    repo.put_dir(s, "ds", src)
    d = repo.open_draft(s, "ds")
    with repo.lock_draft(s, d):
        sf_name, sf = d.new_scratch()
        sf.pwrite(b"changed on machine a", 0)
        sf.close()
        e = d.lookup((b"a",))
        d.commit(d.plan_put((b"a",), e.with_(scratch=sf_name, digest=None, size=20)))
    sb = machines("b").open(path, monkeypatch)
    db = repo.open_draft(sb, "ds")
    with pytest.raises(Conflict, match="keeps its changed files on another machine"):
        repo.lock_draft(sb, db)
    assert repo.fsck(sb) == []  # machine b does not look for a's scratch files
    # in use on machine a: refused on b even without scratch files
    d2 = repo.open_draft(s, "other")
    with repo.lock_draft(s, d2):
        with pytest.raises(Conflict, match="in use on another machine"):
            repo.lock_draft(sb, repo.open_draft(sb, "other"))
    # a draft without scratch files moves to the machine that takes it
    with repo.lock_draft(sb, repo.open_draft(sb, "other")):
        pass
    assert s.meta.draft("draft:other")["machine"] == sb.machine_id
    with repo.lock_draft(s, d):
        d.discard()


# -- push and pull -----------------------------------------------------------------------------

def test_push_and_pull_between_local_and_scaleout(so, tmp_path):
    path, s = so
    local = str(tmp_path / "local")
    lo = Store.init(local)
    src = put_tree(tmp_path, "src", {"a.txt": b"one", "big": os.urandom(5 << 20), "d/e": b"deep"})
    v0, _ = repo.put_dir(lo, "ds", src, message="first")
    with open(os.path.join(src, "a.txt"), "wb") as f:
        f.write(b"two")
    os.link(os.path.join(src, "d", "e"), os.path.join(src, "hard"))
    from artfs.repo import runs

    rid = runs.start(lo, job_type="train")
    v1, _ = repo.put_dir(lo, "ds", src, message="second")
    runs.produced(lo, rid, "ds", v1.num, "logged", v1.created)
    repo.set_alias(lo, f"ds:v{v0.num}", "best")
    r1 = transfer.copy(lo, s, "ds", all_versions=True)
    assert [x["copied"] for x in r1["versions"]] == [True, True]
    assert r1["aliases"] == ["ds:best"]
    r2 = transfer.copy(lo, s, "ds", all_versions=True)
    assert r2["sent"] == 0 and not any(x["copied"] for x in r2["versions"])
    w = repo.resolve(s, "ds")
    assert w.message == "second" and w.links is not None
    assert repo.read_all(s, repo.lookup(s, w, "a.txt")) == b"two"
    assert repo.resolve(s, "ds:best").root == v0.root
    assert [p["run_id"] for p in s.meta.version_producers("ds", w.num)] == [rid]
    # back: a new version made on the scale-out side is pulled into a fresh local store
    with open(os.path.join(src, "a.txt"), "wb") as f:
        f.write(b"three")
    v2, _ = repo.put_dir(s, "ds", src)
    other = Store.init(str(tmp_path / "local2"))
    r3 = transfer.copy(s, other, "ds:latest")
    assert r3["versions"][0]["copied"] and r3["sent"] >= 5
    got = repo.resolve(other, "ds")
    assert got.root == v2.root and repo.read_all(other, repo.lookup(other, got, "big")) == \
        open(os.path.join(src, "big"), "rb").read()
    r4 = transfer.copy(lo, s, "ds:v0")  # already there: found by content, nothing sent
    assert r4["sent"] == 0
    for st in (lo, other):
        assert repo.fsck(st) == []


def test_an_interrupted_push_resumes_sending_only_the_rest(so, tmp_path, monkeypatch):
    path, s = so
    lo = Store.init(str(tmp_path / "local"))
    src = put_tree(tmp_path, "src", {f"f{i}": os.urandom(2000) for i in range(30)})
    repo.put_dir(lo, "ds", src)
    real = transfer._copy_object
    sent = []

    def flaky(src_store, batch, d, size):
        if len(sent) == 12:
            raise KeyboardInterrupt("interrupted")
        sent.append(d)
        return real(src_store, batch, d, size)

    monkeypatch.setattr(transfer, "BATCH_OBJECTS", 5)
    monkeypatch.setattr(transfer, "_copy_object", flaky)
    with pytest.raises(KeyboardInterrupt):
        transfer.copy(lo, s, "ds")
    assert s.meta.artifact("ds") is None  # no version names a half-sent set of objects
    monkeypatch.setattr(transfer, "_copy_object", real)
    r = transfer.copy(lo, s, "ds")
    need = 30 + 1 + 1  # files, root tree ... minus what arrived before the interruption (two batches)
    assert r["versions"][0]["present"] >= 10 and r["sent"] <= need - 10
    assert repo.resolve(s, "ds").root == repo.resolve(lo, "ds").root


def test_push_and_pull_on_the_command_line(so, tmp_path):
    path, s = so
    local = str(tmp_path / "local")
    subprocess.run(ARTFS + ["--store", local, "init"], check=True, capture_output=True)
    src = put_tree(tmp_path, "src", {"x": b"x"})
    subprocess.run(ARTFS + ["--store", local, "put", "ds", src], check=True, capture_output=True)
    p = subprocess.run(ARTFS + ["--store", local, "push", "ds", path], capture_output=True, text=True)
    assert p.returncode == 0 and "ds:v0 ->" in p.stdout and "sent" in p.stdout, p.stderr
    p = subprocess.run(ARTFS + ["--store", local, "push", "ds", path], capture_output=True, text=True)
    assert "(already there)" in p.stdout
    back = str(tmp_path / "back")
    subprocess.run(ARTFS + ["--store", back, "init"], check=True, capture_output=True)
    p = subprocess.run(ARTFS + ["--store", back, "pull", "ds", "--from", path, "--json"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["versions"][0]["target"] == "ds:v0"
    bad = subprocess.run(ARTFS + ["--store", local, "push", "ds:draft", path], capture_output=True, text=True)
    assert bad.returncode == 2 and "draft" in bad.stderr
