"""Bugs a hostile review of the scale-out back end found (each test failed because of one).

Run with ``--backend scaleout``; fixtures as in test_scaleout.py.
"""
from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import pytest

from artfs import repo
from artfs.errors import Corrupt
from artfs.repo import content
from artfs.storage.format import CHUNK
from artfs.storage.store import Store
from test_scaleout import Machine, machines, put_tree, so, srv  # noqa: F401  (fixtures)

MiB = 1 << 20


def test_init_with_a_hostless_url_dsn_writes_a_usable_description(srv, tmp_path, machines):
    """``artfs init --meta postgresql:///artfs?host=...`` (the usual libpq URL for a Unix socket or a
    host given as a parameter) succeeds, but the description file it writes holds
    ``postgresql:/artfs?...`` (the ``//`` is lost when the password is stripped), which libpq cannot
    parse: every later command on every machine fails with "bad PostgreSQL DSN"."""
    a = machines("a")
    dsn, url, endpoint = srv.new_store_args()
    u = urlsplit(dsn)  # postgresql://artfs@127.0.0.1:PORT/DB?options=...
    user, hostport = u.netloc.rsplit("@", 1)
    host, port = hostport.rsplit(":", 1)
    hostless = f"postgresql://{u.path}?host={host}&port={port}&user={user}&{u.query}"
    path = str(tmp_path / "s.artfs")
    a.cli(path, "init", "--meta", hostless, "--objects", url, "--endpoint", endpoint)
    try:
        out = a.cli(path, "artifacts", check=False)
        assert out.returncode == 0, (json.load(open(path))["meta"], out.stderr)
    finally:
        _drop_schema(srv, url)


def _drop_schema(srv, url: str) -> None:
    """Drop a test store's schema by its tag (the description may be unusable)."""
    tag = url.rsplit("/", 1)[1]
    srv.psql(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')


def test_init_keeps_every_secret_of_the_dsn_out_of_the_description(srv, tmp_path, machines):
    """The README promises the description file holds "the DSN without password" (it is copied to
    every machine); but a DSN's other secret, libpq's ``sslpassword`` (the passphrase of the client
    key), is written into it verbatim."""
    a = machines("a")
    dsn, url, endpoint = srv.new_store_args()
    path = str(tmp_path / "s.artfs")
    a.cli(path, "init", "--meta", dsn + "&sslpassword=hunter2", "--objects", url, "--endpoint", endpoint)
    try:
        assert "hunter2" not in open(path).read()
    finally:
        _drop_schema(srv, url)


def test_a_re_put_heals_a_damaged_big_object(so, tmp_path):
    """DESIGN.md §5 invariant 2: "a put of content whose object is missing or damaged writes it
    again (a re-put heals the store)".  A big file whose object went bad in the bucket (same size:
    bit rot, a bad copy) is not healed by putting the same content again: the upload is skipped
    because an object of that size exists, so ``artfs cat`` keeps failing with EIO / Corrupt after
    the user did what the design says repairs it."""
    import obstore

    path, s = so
    data = os.urandom((2 << 20) + 123)
    v, _ = repo.put_dir(s, "ds", put_tree(tmp_path, "src", {"big.bin": data}))
    e = repo.lookup(s, v, "big.bin")
    key = s.objects.key(e.digest)
    bad = bytearray(data)
    bad[5] ^= 0xFF
    obstore.put(s.objects.s3, key, bytes(bad), attributes={"artfs-chunks": e.chunks.hex()})
    try:
        assert not s.objects.verify(e.digest)
        repo.put_dir(s, "ds2", put_tree(tmp_path, "again", {"big.bin": data}))  # the same content, re-put
        assert s.objects.verify(e.digest), "the re-put left the damaged object in place"
    finally:  # the fixture's fsck at the end: the bucket as it should have been
        obstore.put(s.objects.s3, key, data, attributes={"artfs-chunks": e.chunks.hex()})


def test_a_re_put_of_the_same_directory_heals_a_damaged_object(so, tmp_path, monkeypatch):
    """The same, through put's stat cache: put.py trusts a remembered digest "only while its
    object is the very file the cache saw (a damaged object -- rewritten, truncated -- has another
    stamp: the source is read again and the object healed)".  The S3 store's stamp is the size
    alone, so an object rewritten in place with other bytes of the same size keeps its stamp, and
    ``artfs put ds DIR`` again (the documented repair) reads nothing and heals nothing."""
    import obstore

    path, s = so
    import time as real_time
    import types

    from artfs.repo import put as put_mod

    src = put_tree(tmp_path, "src", {"f.txt": b"precious bytes"})
    # put caches the digests of files older than its start minus 2 s: start "later" (no sleeping)
    monkeypatch.setattr(put_mod, "time", types.SimpleNamespace(time=lambda: real_time.time() + 10))
    v, _ = repo.put_dir(s, "ds", src)
    assert s.meta.filecache_get([os.fsencode(os.path.realpath(os.path.join(src, "f.txt")))])
    e = repo.lookup(s, v, "f.txt")
    key = s.objects.key(e.digest)
    obstore.put(s.objects.s3, key, b"PRECIOUS BYTES")
    try:
        repo.put_dir(s, "ds", src)  # the same directory again
        assert s.objects.verify(e.digest), "the re-put left the damaged object in place"
    finally:
        obstore.put(s.objects.s3, key, b"precious bytes")


def test_init_refuses_a_second_objects_prefix_for_one_metadata_store(srv, tmp_path, machines):
    """``artfs init`` of a new description with the DSN of an existing store but another
    ``--objects`` prefix (a typo, a moved bucket) succeeds and gives the same store id; the two
    descriptions then share the metadata but not the objects: a version put through one is
    "missing object" (EIO, fsck errors) for every machine using the other.  init should refuse,
    as it does for one prefix claimed by two metadata stores."""
    a = machines("a")
    dsn, url, endpoint = srv.new_store_args()
    one, two = str(tmp_path / "one.artfs"), str(tmp_path / "two.artfs")
    a.cli(one, "init", "--meta", dsn, "--objects", url, "--endpoint", endpoint)
    try:
        p = a.cli(two, "init", "--meta", dsn, "--objects", url + "-typo", "--endpoint", endpoint, check=False)
        if p.returncode == 0:  # accepted: show what a user then meets
            a.cli(two, "put", "ds", put_tree(tmp_path, "src", {"f.txt": b"hello"}))
            got = a.cli(one, "cat", "ds", "f.txt", check=False)
            assert got.returncode == 0 and got.stdout == "hello", \
                f"init accepted a second prefix for one store; through the first description: {got.stderr}"
        assert p.returncode == 2, p.stderr
    finally:
        _drop_schema(srv, url)


def test_an_unreachable_metadata_server_is_exit_status_2(tmp_path):
    """README: "Errors are one line on stderr with exit status 2 (1 for corruption)".  A description
    naming a metadata server that is down gives one clear line, but exit status 1, so a script
    takes an unreachable server for a corrupt store (the same holds for an unreachable object
    store, and for a DSN libpq cannot parse)."""
    import subprocess

    import servers as srv_mod
    from mounts import ARTFS

    port = srv_mod.free_port()  # nothing listens there
    path = tmp_path / "down.artfs"
    path.write_text(json.dumps({"format": "artfs scale-out store 1", "id": "11111111-2222-3333-4444-555555555555",
                                "meta": f"postgresql://artfs@127.0.0.1:{port}/artfs", "objects": "s3://artfs/x",
                                "endpoint": f"http://127.0.0.1:{port}", "region": None, "cache_size": 1 << 20}))
    env = dict(os.environ, ARTFS_META_RETRY="1", **srv_mod.machine_env(str(tmp_path / "m")))
    p = subprocess.run(ARTFS + ["--store", str(path), "log", "ds"], capture_output=True, text=True, env=env,
                       timeout=120)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "metadata store" in lines[0], p.stderr
    assert p.returncode == 2, p.stderr


@pytest.mark.parametrize("size,how", [(5000, "flip"), ((3 << 20) + 7, "truncate"), ((20 << 20) + 7, "flip")])
def test_a_damaged_cached_copy_is_fetched_again_not_eio_forever(so, tmp_path, machines, size, how):
    """A file's bytes in this machine's object cache go bad after they were cached (a bad disk
    block, a stray write): the bucket is fine and ``artfs fsck`` says so (it reads the bucket), yet
    every later ``artfs cat`` / read through a mount on this machine fails with "corrupt object" /
    EIO until the entry happens to be evicted.  The cache should drop the bad copy and fetch the
    object again, as it already does for trees (test_cache_is_verified_on_fill_and_heals)."""
    path, s = so
    data = os.urandom(size)
    a = machines("a")
    a.cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data}))
    assert a.cli(path, "cat", "ds", "f.bin", text=False).stdout == data  # fills this machine's cache
    sid = json.load(open(path))["id"]
    damaged = 0
    for d, _, files in os.walk(os.path.join(a.cache_dir(sid), "spans" if size > (8 << 20) else "objects")):
        for f in files:
            p = os.path.join(d, f)
            if os.path.getsize(p) > 1000:  # the file's content (or a span of it), not a tree
                with open(p, "r+b") as fh:
                    if how == "truncate":  # (a truncated span is fetched again; a whole object is not)
                        fh.truncate(os.path.getsize(p) - 1)
                    else:
                        b = fh.read(1)
                        fh.seek(0)
                        fh.write(bytes([b[0] ^ 0xFF]))
                damaged += 1
    assert damaged
    assert a.cli(path, "fsck").returncode == 0  # the store is sound
    got = a.cli(path, "cat", "ds", "f.bin", text=False, check=False)
    assert got.returncode == 0 and got.stdout == data, got.stderr


@pytest.mark.parametrize("size", [5000, (20 << 20) + 7])
def test_a_bad_cached_copy_of_an_object_bad_in_the_bucket_too_is_corrupt_not_wrong_bytes(so, tmp_path, machines,
                                                                                          size):
    """The other side of the refetch above: when the bucket's copy went bad as well, the one
    fetch again finds it out and the read fails as corrupt (exit 1, nothing on stdout), on
    this machine and on a machine with an empty cache: never the bad bytes, never a loop."""
    import obstore

    path, s = so
    data = os.urandom(size)
    a = machines("a")
    a.cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data}))
    assert a.cli(path, "cat", "ds", "f.bin", text=False).stdout == data  # fills a's cache
    sid = json.load(open(path))["id"]
    for d, _, files in os.walk(os.path.join(a.cache_dir(sid), "spans" if size > (8 << 20) else "objects")):
        for f in files:
            p = os.path.join(d, f)
            if os.path.getsize(p) > 1000:
                with open(p, "r+b") as fh:
                    fh.write(b"\xff" * 16)
    e = repo.lookup(s, repo.resolve(s, "ds"), "f.bin")
    bad = bytearray(data)
    bad[:16] = b"\xff" * 16
    attrs = {"artfs-chunks": e.chunks.hex()} if e.chunks else {}
    obstore.put(s.objects.s3, s.objects.key(e.digest), bytes(bad), attributes=attrs)
    try:
        for m in (a, machines("b")):
            got = m.cli(path, "cat", "ds", "f.bin", text=False, check=False)
            assert got.returncode == 1 and got.stdout == b"" and b"corrupt" in got.stderr, got.stderr
    finally:  # the fixture's fsck at the end: the bucket as it was
        obstore.put(s.objects.s3, s.objects.key(e.digest), data, attributes=attrs)


def test_bad_bytes_with_a_chunk_list_forged_to_match_them_are_corrupt_not_served(so, tmp_path, machines):
    """The scale-out reader verifies the spans it fetches against the chunk list the bucket
    names (its attribute), and the content reader then trusts those spans without hashing them
    again -- but only when that chunk list is the one the version's tree names.  Bad bytes
    uploaded with a chunk list forged to match them (an object whose attribute was rewritten)
    are checked against the tree's list and fail as corrupt; never served."""
    import blake3
    import obstore

    path, s = so
    data = os.urandom((20 << 20) + 7)
    a = machines("a")
    a.cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data}))
    e = repo.lookup(s, repo.resolve(s, "ds"), "f.bin")
    assert e.chunks is not None
    bad = bytearray(data)
    bad[CHUNK + 5] ^= 0xFF  # in the second piece of the first span
    bad = bytes(bad)
    forged = b"".join(blake3.blake3(bad[i:i + CHUNK]).digest() for i in range(0, len(bad), CHUNK))
    forged_digest = blake3.blake3(forged).digest()
    obstore.put(s.objects.s3, s.objects.key(forged_digest), forged)
    obstore.put(s.objects.s3, s.objects.key(e.digest), bad, attributes={"artfs-chunks": forged_digest.hex()})
    try:
        got = machines("b").cli(path, "cat", "ds", "f.bin", text=False, check=False)  # an empty cache
        assert got.returncode == 1 and b"corrupt" in got.stderr, got.stderr
        assert bad[:2 * CHUNK] not in got.stdout
    finally:  # the fixture's fsck at the end: the bucket as it was
        obstore.put(s.objects.s3, s.objects.key(e.digest), data, attributes={"artfs-chunks": e.chunks.hex()})


def _forget_pieces():
    """The cache of verified pieces and chunk lists is per process: empty it (a cold reader)."""
    content._pieces.items.clear()
    content._pieces.used = 0
    content._chunk_lists.clear()


@pytest.mark.parametrize("size,cut", [(3 * MiB + 100, 50), (2 * MiB, CHUNK - 10), (20 * MiB + 100, 50),
                                      (20 * MiB, 5)])
def test_an_entry_that_understates_its_size_is_corrupt_not_served_short(so, tmp_path, machines, monkeypatch,
                                                                         size, cut):
    """An entry whose size is less than its object's (same digest and chunk list: a tree made
    through the library can say so): its last piece, a prefix of a piece the scale-out reader
    verified, misses its digest.  Found by a break-it review: the reader's "verified" let it
    through, served short, and cached short for the true entry too.  Objects read whole (≤ 8 MiB)
    and in spans alike."""
    path, s = so
    data = os.urandom(size)
    machines("a").cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data}))
    sb = machines("b").open(path, monkeypatch)  # an empty cache
    try:
        e = repo.lookup(sb, repo.resolve(sb, "ds"), "f.bin")
        _forget_pieces()
        with content.ContentReader(sb, e.with_(size=size - cut)) as r, pytest.raises(Corrupt):
            r.read(0, size)
        with content.ContentReader(sb, e) as r:  # the true entry, in the same process
            assert r.read(0, size) == data
    finally:
        sb.meta.close()
        _forget_pieces()


def test_a_version_whose_entry_understates_its_size_fails_to_read_as_corrupt(so, tmp_path, machines):
    """The same end to end: a version made through the library (fsck has no objection), read with
    `artfs cat` on a machine with an empty cache: corrupt, exit 1, not 50 bytes short."""
    path, s = so
    data = os.urandom(3 * MiB + 100)
    a = machines("a")
    a.cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data}))
    e = repo.lookup(s, repo.resolve(s, "ds"), "f.bin")
    d = repo.open_draft(s, "ds")
    d.put((b"g.bin",), e.with_(size=e.size - 50))
    repo.finish_commit(d, repo.commit_draft(s, d, "misstated"))
    got = machines("b").cli(path, "cat", "ds", "g.bin", text=False, check=False)
    assert got.returncode == 1 and b"corrupt" in got.stderr, (got.returncode, len(got.stdout), got.stderr)


@pytest.mark.parametrize("how", ["smaller", "larger", "other chunk list"])
def test_a_wrong_size_or_chunk_list_in_the_cache_index_is_asked_again_not_corrupt_forever(so, tmp_path, machines,
                                                                                        how):
    """This machine's cache remembers a big object's size and chunk list (its index's bigobj
    row).  When that row goes bad (a stray write, a bug), every read of the object on this
    machine failed as corrupt although the bucket was sound (found by a break-it review):
    the reader now asks the bucket once, forgets the row and the spans cached under it, and
    reads right; the row is right again afterwards."""
    import sqlite3

    path, s = so
    data = os.urandom((20 << 20) + 7)
    other = os.urandom((12 << 20) + 3)
    a = machines("a")
    a.cli(path, "put", "ds", put_tree(tmp_path, "src", {"f.bin": data, "g.bin": other}))
    assert a.cli(path, "cat", "ds", "f.bin", text=False).stdout == data  # fills a's cache and its row
    assert a.cli(path, "cat", "ds", "g.bin", text=False).stdout == other
    e = repo.lookup(s, repo.resolve(s, "ds"), "f.bin")
    g = repo.lookup(s, repo.resolve(s, "ds"), "g.bin")
    sid = json.load(open(path))["id"]
    db = sqlite3.connect(os.path.join(a.cache_dir(sid), "index.sqlite"))
    with db:
        if how == "other chunk list":
            db.execute("UPDATE bigobj SET chunks=? WHERE digest=?", (g.chunks.hex(), e.digest.hex()))
        else:
            db.execute("UPDATE bigobj SET size=size+? WHERE digest=?", (-60 if how == "smaller" else 60,
                                                                         e.digest.hex()))
    db.close()

    def cat_is_right():
        got = a.cli(path, "cat", "ds", "f.bin", text=False, check=False)
        assert got.returncode == 0 and got.stdout == data, (got.returncode, len(got.stdout), got.stderr)

    cat_is_right()  # with the spans cached (the row may stay as it is while they serve)
    spans = os.path.join(a.cache_dir(sid), "spans", e.digest.hex()[:2])
    for name in os.listdir(spans):  # evicted: now the spans come from the bucket, checked by the row
        if name.startswith(e.digest.hex()[2:]):
            os.unlink(os.path.join(spans, name))
    cat_is_right()
    cat_is_right()
    db = sqlite3.connect(os.path.join(a.cache_dir(sid), "index.sqlite"))
    assert db.execute("SELECT size, chunks FROM bigobj WHERE digest=?", (e.digest.hex(),)).fetchone() == \
        (len(data), e.chunks.hex())
    db.close()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs FUSE")
def test_a_commit_message_with_a_nul_byte_is_refused_clearly(so, tmp_path):
    """``printf 'fix\\0typo' > MNT/.artfs/commit`` in a draft mount: PostgreSQL's text type cannot
    keep a NUL (a local store can).  It was EIO and "internal error: DataError"; now the commit
    is refused with one line that says why, nothing is made, and the draft keeps its changes, so
    the same commit with a plain message goes through."""
    import errno

    from mounts import Mounted

    path, s = so
    repo.put_dir(s, "ds", put_tree(tmp_path, "src", {"a.txt": b"one"}))
    with Mounted(path, "ds:draft", str(tmp_path / "mnt")) as m:
        with open(m.path("b.txt"), "wb") as f:
            f.write(b"two")
        with pytest.raises(OSError) as ei:
            with open(m.path(".artfs", "commit"), "wb") as f:
                f.write(b"fix\0typo\n")
        assert ei.value.errno == errno.EINVAL
        with open(m.path(".artfs", "commit")) as f:
            outcome = f.read().strip()
        assert "NUL" in outcome and "internal error" not in outcome, outcome
        assert [v["num"] for v in s.meta.versions("ds")] == [0]
        with open(m.path(".artfs", "commit"), "wb") as f:
            f.write(b"fix typo\n")
    assert sorted(v["num"] for v in s.meta.versions("ds")) == [0, 1]
    assert repo.read_all(s, repo.lookup(s, repo.resolve(s, "ds:v1"), "b.txt")) == b"two"


def test_push_refuses_a_version_of_another_type(so, tmp_path):
    """``artfs push mnist:v0 team.artfs`` where the team store's ``mnist`` is a *model* and the local
    one a *dataset*: ``artfs put mnist DIR --type dataset`` into the team store is refused ("mnist
    is a model, not a dataset"), but push (and pull) copy the dataset version into the model
    artifact without a word (transfer passes no type when the artifact exists)."""
    from artfs.errors import Conflict
    from artfs.repo import transfer

    path, s = so
    repo.put_dir(s, "mnist", put_tree(tmp_path, "weights", {"w.bin": b"weights"}), type_="model")
    lo = Store.init(str(tmp_path / "local"))
    repo.put_dir(lo, "mnist", put_tree(tmp_path, "data", {"d.csv": b"1,2,3"}), type_="dataset")
    with pytest.raises(Conflict):
        repo.put_dir(s, "mnist", put_tree(tmp_path, "data2", {"d.csv": b"1,2,3"}), type_="dataset")
    with pytest.raises(Conflict):
        transfer.copy(lo, s, "mnist:v0")


@pytest.mark.parametrize("cache_size", ['"20G"', "1e999", "[1]"])
def test_a_bad_cache_size_in_the_description_is_named_clearly(tmp_path, cache_size):
    """A description whose ``cache_size`` was edited by hand: ``"20G"`` (the syntax --cache-size
    takes) fails with "ARTFS_CACHE_SIZE: invalid literal for int()..." although that variable is
    not set; ``1e999`` or a list give "internal error: OverflowError/TypeError" (exit 3).
    load_description does not check the field; the message should name the description."""
    import subprocess

    import servers as srv_mod
    from mounts import ARTFS

    port = srv_mod.free_port()
    path = tmp_path / "s.artfs"
    path.write_text('{"format": "artfs scale-out store 1", "id": "11111111-2222-3333-4444-555555555555", '
                    f'"meta": "postgresql://artfs@127.0.0.1:{port}/artfs", "objects": "s3://artfs/x", '
                    f'"cache_size": {cache_size}}}')
    env = {k: v for k, v in os.environ.items() if k != "ARTFS_CACHE_SIZE"}
    env.update(ARTFS_META_RETRY="0", **srv_mod.machine_env(str(tmp_path / "m")))
    p = subprocess.run(ARTFS + ["--store", str(path), "log", "ds"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert "internal error" not in p.stderr and "ARTFS_CACHE_SIZE" not in p.stderr, p.stderr


@pytest.mark.parametrize("dsn", ["postgresql://artfs:hunter2%zz@127.0.0.1:{port}/artfs",  # a raw % in it
                                 "host=127.0.0.1 port={port} user=artfs password=hunter2"])
def test_a_bad_dsn_is_reported_without_its_password(tmp_path, dsn):
    """The README keeps passwords out of the description; they leak into error messages instead.
    A generated password holding a ``%`` that was not percent-encoded gives
    ``artfs: bad PostgreSQL DSN: invalid percent-encoded token: "hunter2%zz"\\n`` (libpq's
    message, with a literal backslash-n), also when the DSN comes from ARTFS_META_DSN (CI logs);
    a key=value DSN gives ``bad --meta 'host=... password=hunter2': expected postgresql://...``."""
    import subprocess

    import servers as srv_mod
    from mounts import ARTFS

    port = srv_mod.free_port()
    env = dict(os.environ, ARTFS_META_RETRY="0", **srv_mod.machine_env(str(tmp_path / "m")))
    p = subprocess.run(ARTFS + ["--store", str(tmp_path / "s.artfs"), "init", "--meta", dsn.format(port=port),
                                "--objects", "s3://artfs/x", "--endpoint", f"http://127.0.0.1:{port}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0
    assert "hunter2" not in p.stderr, p.stderr


def test_open_refuses_a_description_whose_objects_belong_to_another_store(srv, tmp_path, machines):
    """A description whose ``objects`` names another store's prefix (hand-edited, copied from the
    wrong team) opens without complaint: open checks the metadata's store id but never the bucket's
    ``artfs-store`` marker.  Puts through it upload into the other store's prefix, whose gc then
    deletes them as unreferenced: the versions made through the description lose their data
    ("missing object") without any error at the time."""
    a = machines("a")
    one, two = str(tmp_path / "one.artfs"), str(tmp_path / "two.artfs")
    dsn1, url1, endpoint = srv.new_store_args()
    dsn2, url2, _ = srv.new_store_args()
    a.cli(one, "init", "--meta", dsn1, "--objects", url1, "--endpoint", endpoint)
    a.cli(two, "init", "--meta", dsn2, "--objects", url2, "--endpoint", endpoint)
    mixed = str(tmp_path / "mixed.artfs")
    desc = json.load(open(one))
    desc["objects"] = url2  # store one's metadata, store two's objects
    with open(mixed, "w") as f:
        json.dump(desc, f)
    try:
        p = a.cli(mixed, "put", "ds", put_tree(tmp_path, "src", {"f.txt": b"hello"}), check=False)
        if p.returncode == 0:  # accepted: store two's gc now collects what the put uploaded
            a.cli(two, "gc")
            got = a.cli(mixed, "cat", "ds", "f.txt", check=False)
            assert got.returncode == 0 and got.stdout == "hello", \
                f"opened with another store's objects; after that store's gc: {got.stderr}"
        assert p.returncode == 2 and "another" in p.stderr, p.stderr
    finally:
        _drop_schema(srv, url1)
        _drop_schema(srv, url2)


def test_same_bytes_reads_both_kinds_of_etag_and_admits_what_it_cannot_tell(tmp_path, monkeypatch):
    """The batch's check of an existing object: an ETag of one PUT (MD5 of the bytes) or of a
    multipart upload (MD5 of the parts' MD5s, "-N") says yes or no; parts of another size or an
    opaque ETag say nothing (the size is trusted then, as before)."""
    import hashlib

    from artfs.storage import s3_objects

    monkeypatch.setattr(s3_objects, "MULTIPART_PART", 1000)
    data = os.urandom(2500)
    f = tmp_path / "f"
    f.write_bytes(data)
    parts = [hashlib.md5(data[i:i + 1000]).digest() for i in range(0, 2500, 1000)]
    multipart = hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    same = s3_objects._same_bytes
    assert same(f'"{multipart}"', str(f), 2500) is True
    assert same(f'"{hashlib.md5(data).hexdigest()}"', str(f), 2500) is True  # one PUT of a big file
    assert same(f'"{hashlib.md5(data[:-1] + b"x").hexdigest()}"', str(f), 2500) is False
    assert same(f'"{hashlib.md5(b"".join(parts[::-1])).hexdigest()}-3"', str(f), 2500) is False
    assert same(f'"{hashlib.md5(b"").hexdigest()}-2"', str(f), 2500) is None  # parts of another size
    assert same('"opaque-kms-etag"', str(f), 2500) is None
    assert same(None, str(f), 2500) is None
