"""The on-disk tree format: golden vectors, round trips, identity, strict decoding.

Object names are BLAKE3 digests of these bytes, so the golden vectors below
freeze the encoding: if one of them fails, the format changed and every
existing store would read differently.  Change the format only with a new
format byte (treefmt.FORMAT) and new vectors.
"""
from __future__ import annotations

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artfs.storage import format as t
from artfs.errors import BadInput, Corrupt
from artfs.storage.format import DIR, FILE, REF, SYMLINK, Entry

H = blake3.blake3(b"hello").digest()


def golden_entries():
    return [
        Entry(b"file.txt", FILE, 0o644, 1000, 1000, 5, 1_700_000_000_123_456_789, digest=H),
        Entry(b"sub", DIR, 0o755, 0, 0, 5, 1_600_000_000_000_000_000, digest=t.EMPTY_TREE_DIGEST,
              ident=t.EMPTY_IDENT, nfiles=1),
        Entry(b"link", SYMLINK, 0o777, 0, 0, 8, -1, target=b"file.txt"),
        Entry(b"big.bin", REF, 0o755, 0, 0, 2**40, 0, digest=bytes(range(32)), uri="file:///data/big.bin"),
    ]


# -- golden vectors ------------------------------------------------------------------

def test_golden_empty_tree():
    assert t.EMPTY_TREE == bytes.fromhex("0190")
    assert t.encode_tree([]) == t.EMPTY_TREE
    assert t.EMPTY_TREE_DIGEST.hex() == "85cd8da4c88732acfda2c871c1e3ffef0f24015bfd43c7a7b86d292e8f201f60"
    assert blake3.blake3(t.EMPTY_TREE).hexdigest() == t.EMPTY_TREE_DIGEST.hex()
    assert t.EMPTY_IDENT.hex() == "d2528b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c9561"
    assert t.decode_tree(t.EMPTY_TREE) == []


GOLDEN_HEX = (
    "019498c4076269672e62696e04cd01ed0000cf00000100000000000092c420000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1fb466696c653a2f2f2f646174612f6269672e62696e98c40866696c652e7478"
    "7401cd01a4cd03e8cd03e805cf17979cfe3d85cd15c420ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86"
    "e908c5624a67200f98c4046c696e6b03cd01ff000008ffc40866696c652e74787498c40373756202cd01ed000005cf"
    "16345785d8a0000093c42085cd8da4c88732acfda2c871c1e3ffef0f24015bfd43c7a7b86d292e8f201f60c420d252"
    "8b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c956101"
)
GOLDEN_DIGEST = "0b75553c729b88cf6ca7933740a9d504457ac12d2fb0ec6afb24720cb6e58a4c"
GOLDEN_IDENT = "1c2cb83d003949d6fff81e4f5c8d70c64e46639b14bbd922515ac8477bee6ba6"


def test_golden_tree_of_every_kind():
    data = t.encode_tree(golden_entries())
    assert data.hex() == GOLDEN_HEX
    assert blake3.blake3(data).hexdigest() == GOLDEN_DIGEST
    assert t.tree_identity(golden_entries()).hex() == GOLDEN_IDENT
    assert t.decode_tree(bytes.fromhex(GOLDEN_HEX)) == sorted(golden_entries(), key=lambda e: e.name)


def test_golden_file_digest_is_plain_blake3():
    # a file's recorded digest is b3sum of its bytes (DESIGN.md §5)
    assert H.hex() == "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"


# -- strategies ------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=t.MAX_NAME).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
digests = st.binary(min_size=32, max_size=32)
common = dict(
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**63 - 1),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
)


def _entry(name, kind, payload, **kw):
    if kind == FILE:
        return Entry(name, FILE, digest=payload, **kw)
    if kind == DIR:
        return Entry(name, DIR, digest=payload[0], ident=payload[1], nfiles=payload[2], **kw)
    if kind == SYMLINK:
        return Entry(name, SYMLINK, target=payload, **kw)
    return Entry(name, REF, digest=payload[0], uri=payload[1], **kw)


payloads = {
    FILE: digests,
    DIR: st.tuples(digests, digests, st.integers(0, 2**63 - 1)),
    SYMLINK: st.binary(min_size=1, max_size=t.MAX_TARGET).filter(lambda b: b"\0" not in b),
    REF: st.tuples(digests, st.text(max_size=200).map(lambda s: "file:///" + s).filter(
        lambda s: len(s.encode("utf-8", "surrogatepass")) <= t.MAX_URI and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))),
}


@st.composite
def entries(draw, name=names):
    kind = draw(st.sampled_from(t.KINDS))
    return _entry(draw(name), kind, draw(payloads[kind]), **{k: draw(v) for k, v in common.items()})


trees = st.lists(entries(), max_size=12, unique_by=lambda e: e.name)


# -- round trips ------------------------------------------------------------------------

@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.randoms(use_true_random=False))
def test_roundtrip_and_order_independence(ents, rnd):
    data = t.encode_tree(ents)
    back = t.decode_tree(data)
    assert back == sorted(ents, key=lambda e: e.name)
    assert t.encode_tree(back) == data
    shuffled = list(ents)
    rnd.shuffle(shuffled)
    assert t.encode_tree(shuffled) == data
    assert t.tree_identity(shuffled) == t.tree_identity(ents)


def test_duplicate_names_rejected_on_encode():
    e = Entry(b"a", FILE, 0o644, digest=H)
    with pytest.raises(BadInput):
        t.encode_tree([e, e.with_(mode=0o600)])


@pytest.mark.parametrize("bad", [
    Entry(b"a/b", FILE, 0o644, digest=H),
    Entry(b"..", FILE, 0o644, digest=H),
    Entry(b"", FILE, 0o644, digest=H),
    Entry(b"x" * 256, FILE, 0o644, digest=H),
    Entry(b"a", FILE, 0o644, digest=H[:31]),
    Entry(b"a", FILE, 0o644, digest=None),
    Entry(b"a", FILE, 0o100644, digest=H),
    Entry(b"a", FILE, 0o644, uid=-1, digest=H),
    Entry(b"a", FILE, 0o644, size=2**63, digest=H),
    Entry(b"a", 9, 0o644, digest=H),
    Entry(b"a", DIR, 0o755, digest=H, ident=None),
    Entry(b"a", SYMLINK, 0o777, target=b""),
    Entry(b"a", SYMLINK, 0o777, target=b"x\0y"),
    Entry(b"a", REF, 0o644, digest=H, uri=None),
    Entry(b"a", REF, 0o644, digest=H, uri="file:///\udcff"),
])
def test_encode_refuses_what_decode_would_reject(bad):
    # nothing undecodable may ever be written into the store
    with pytest.raises(BadInput):
        t.encode_tree([bad])


# -- identity ---------------------------------------------------------------------------

def _ident(*ents):
    return t.tree_identity(list(ents))


def test_identity_ignores_metadata_but_not_content():
    f = Entry(b"f", FILE, 0o644, 1, 2, 5, 10, digest=H)
    base = _ident(f)
    # mtime, owner, non-exec mode bits, recorded size: same identity
    assert _ident(f.with_(mtime_ns=99)) == base
    assert _ident(f.with_(uid=7, gid=8)) == base
    assert _ident(f.with_(mode=0o600)) == base
    assert _ident(f.with_(mode=0o4644)) == base
    # ...while the tree bytes do change (so they are recorded faithfully)
    assert t.encode_tree([f.with_(mtime_ns=99)]) != t.encode_tree([f])
    # name, kind, exec bit and content change it
    assert _ident(f.with_(name=b"g")) != base
    assert _ident(f.with_(mode=0o755)) != base
    assert _ident(f.with_(mode=0o645)) != base  # any x bit counts
    assert _ident(f.with_(digest=bytes(32))) != base
    assert _ident(Entry(b"f", REF, 0o644, digest=H, uri="file:///f")) != base
    assert _ident(f, Entry(b"g", FILE, 0o644, digest=H)) != base


def test_identity_of_dirs_symlinks_refs():
    d = Entry(b"d", DIR, 0o755, digest=t.EMPTY_TREE_DIGEST, ident=t.EMPTY_IDENT)
    # a dir's identity is its subtree identity, not its tree digest (which carries mtimes)
    assert _ident(d) == _ident(d.with_(digest=bytes(32), mode=0o700, mtime_ns=5))
    assert _ident(d) != _ident(d.with_(ident=bytes(32)))
    # exec bits of dirs and symlinks are not content
    assert _ident(d) == _ident(d.with_(mode=0o644))
    s = Entry(b"s", SYMLINK, 0o777, target=b"x")
    assert _ident(s) == _ident(s.with_(mode=0o755))
    assert _ident(s) != _ident(s.with_(target=b"y"))
    r = Entry(b"r", REF, 0o644, digest=H, uri="file:///a")
    assert _ident(r) != _ident(r.with_(uri="file:///b"))
    assert _ident(r) != _ident(r.with_(digest=bytes(32)))
    assert _ident(r) != _ident(r.with_(mode=0o744))
    # an empty dir is not the same as no dir, a file is not a symlink with the same bytes
    assert _ident(d) != _ident()
    assert _ident(Entry(b"x", FILE, 0o644, digest=H)) != _ident(Entry(b"x", SYMLINK, 0o644, target=H))


@settings(max_examples=100)
@given(trees, st.data())
def test_identity_ignores_metadata_property(ents, data):
    def scramble(e):
        mode = (e.mode & 0o111) | (data.draw(st.integers(0, 0o7777)) & ~0o111) if e.kind in (FILE, REF) \
            else data.draw(st.integers(0, 0o7777))
        return e.with_(mode=mode, uid=data.draw(common["uid"]), gid=data.draw(common["gid"]),
                       mtime_ns=data.draw(common["mtime_ns"]))

    assert t.tree_identity([scramble(e) for e in ents]) == t.tree_identity(ents)


# -- strict decoding of malformed and hostile input --------------------------------------

ROW = [b"a", FILE, 0o644, 0, 0, 5, 0, H]


def enc(rows, fmt=t.FORMAT_BYTE):
    return fmt + msgpack.packb(rows, use_bin_type=True)


def test_valid_reference_row_decodes():
    assert t.decode_tree(enc([ROW])) == [Entry(b"a", FILE, 0o644, 0, 0, 5, 0, digest=H)]


def _row(**kw):
    idx = {"name": 0, "kind": 1, "mode": 2, "uid": 3, "gid": 4, "size": 5, "mtime": 6, "payload": 7}
    r = list(ROW)
    for k, v in kw.items():
        r[idx[k]] = v
    return r


MALFORMED = {
    "empty": b"",
    "format byte 0": enc([ROW], b"\x00"),
    "format byte 2": enc([ROW], b"\x02"),
    "no format byte": msgpack.packb([ROW], use_bin_type=True),
    "truncated": enc([ROW])[:-1],
    "only format byte": t.FORMAT_BYTE,
    "trailing bytes": enc([ROW]) + b"\x00",
    "two objects": enc([ROW]) + msgpack.packb([], use_bin_type=True),
    "unsorted": enc([_row(name=b"b"), _row(name=b"a")]),
    "duplicate": enc([ROW, ROW]),
    "name with slash": enc([_row(name=b"a/b")]),
    "name with NUL": enc([_row(name=b"a\0b")]),
    "name dot": enc([_row(name=b".")]),
    "name dotdot": enc([_row(name=b"..")]),
    "empty name": enc([_row(name=b"")]),
    "name 256 bytes": enc([_row(name=b"n" * 256)]),
    "name as str": enc([_row(name="a")]),
    "digest 31 bytes": enc([_row(payload=H[:31])]),
    "digest 33 bytes": enc([_row(payload=H + b"\0")]),
    "digest as str": enc([_row(payload="x" * 32)]),
    "kind 0": enc([_row(kind=0)]),
    "kind 5": enc([_row(kind=5)]),
    "kind bool": enc([_row(kind=True)]),
    "kind float": enc([_row(kind=1.0)]),
    "mode too big": enc([_row(mode=0o10000)]),
    "mode negative": enc([_row(mode=-1)]),
    "uid too big": enc([_row(uid=2**32)]),
    "gid negative": enc([_row(gid=-1)]),
    "size negative": enc([_row(size=-1)]),
    "size 2**63": enc([_row(size=2**63)]),
    "mtime 2**64-1": enc([_row(mtime=2**64 - 1)]),
    "mtime float": enc([_row(mtime=1.5)]),
    "mode nil": enc([_row(mode=None)]),
    "extra field": enc([ROW + [0]]),
    "missing field": enc([ROW[:7]]),
    "entry as map": enc([{b"name": b"a"}]),
    "top as map": t.FORMAT_BYTE + msgpack.packb({b"a": ROW}, use_bin_type=True),
    "top as bin": t.FORMAT_BYTE + msgpack.packb(b"abc", use_bin_type=True),
    "top as int": t.FORMAT_BYTE + msgpack.packb(1),
    "entry as tuple of bin": enc([b"x" * 8]),
    "dir payload short": enc([_row(kind=DIR, payload=[H, H])]),
    "dir payload long": enc([_row(kind=DIR, payload=[H, H, 0, 0])]),
    "dir payload bin": enc([_row(kind=DIR, payload=H)]),
    "dir nfiles negative": enc([_row(kind=DIR, payload=[H, H, -1])]),
    "dir ident short": enc([_row(kind=DIR, payload=[H, b"x", 0])]),
    "symlink empty": enc([_row(kind=SYMLINK, payload=b"")]),
    "symlink NUL": enc([_row(kind=SYMLINK, payload=b"a\0b")]),
    "symlink str": enc([_row(kind=SYMLINK, payload="abc")]),
    "symlink too long": enc([_row(kind=SYMLINK, payload=b"x" * (t.MAX_TARGET + 1))]),
    "ref payload bin uri": enc([_row(kind=REF, payload=[H, b"file:///x"])]),
    "ref payload short": enc([_row(kind=REF, payload=[H])]),
    "ref uri too long": enc([_row(kind=REF, payload=[H, "file:///" + "x" * t.MAX_URI])]),
    "ext type": enc([_row(payload=msgpack.ExtType(1, b"x" * 32))]),
    "non-utf8 str": t.FORMAT_BYTE + bytes.fromhex("9198c40161") + b"\x01" + bytes.fromhex("cd01a4000005") + b"\x00"
    + b"\xa2\xff\xfe",
    # huge declared lengths with no data behind them
    "array32 huge": t.FORMAT_BYTE + b"\xdd\xff\xff\xff\xff",
    "array16 short": t.FORMAT_BYTE + b"\xdc\xff\xff" + b"\x90",
    "bin32 huge": t.FORMAT_BYTE + b"\x91\x98\xc6\xff\xff\xff\xff",
    "str32 huge": t.FORMAT_BYTE + b"\x91\x98\xdb\xff\xff\xff\xff",
    "map32 huge": t.FORMAT_BYTE + b"\xdf\xff\xff\xff\xff",
    "deep nesting": t.FORMAT_BYTE + b"\x91" * 100_000 + b"\x90",
    # canonical form: the same entry with a wider int encoding (other bytes, other digest)
    "non-minimal int": t.FORMAT_BYTE + b"\x91\x98\xc4\x01a\xd3" + (1).to_bytes(8, "big")
    + bytes.fromhex("cd01a4000005") + b"\x00" + b"\xc4\x20" + H,
    "str8 where fixstr fits": enc([_row(kind=REF, payload=[H, "file:///x"])]).replace(b"\xa9file", b"\xd9\x09file"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_trees_are_corrupt(name):
    with pytest.raises(Corrupt):
        t.decode_tree(MALFORMED[name])


def test_oversized_tree_rejected_without_parsing(monkeypatch):
    monkeypatch.setattr(t, "MAX_TREE_BYTES", 10)
    with pytest.raises(Corrupt, match="too large"):
        t.decode_tree(enc([ROW]))


def _decode_only_corrupt(data: bytes):
    try:
        ents = t.decode_tree(data)
    except Corrupt:
        return
    # whatever decodes is canonical: it re-encodes to the very same bytes
    assert t.encode_tree(ents) == data


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _decode_only_corrupt(data)
    _decode_only_corrupt(t.FORMAT_BYTE + data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(trees.filter(bool), st.data())
def test_fuzz_mutated_valid_trees(ents, data):
    b = bytearray(t.encode_tree(ents))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(b) - 1)) if b else 0
        if op == "flip" and b:
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del b[i:]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    _decode_only_corrupt(bytes(b))


# -- path helpers ---------------------------------------------------------------------

def test_split_path():
    assert t.split_path("a/b/c") == (b"a", b"b", b"c")
    assert t.split_path("/a//b/") == (b"a", b"b")
    assert t.split_path("") == ()
    assert t.join_path((b"a", b"b")) == "a/b"
    for bad in ("a/../b", "./a", "a/\0", "x" * 256):
        with pytest.raises(BadInput):
            t.split_path(bad)
