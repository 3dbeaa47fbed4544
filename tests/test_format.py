"""The on-disk formats (artfs/storage/format.py): golden vectors, round trips, identity,
strict decoding of hostile input, draft records, link tables, root entries, paths.

Object names are BLAKE3 digests of these bytes, so the golden vectors below
freeze the encoding: if one of them fails, the format changed and every
existing store would read differently.  Change the format only with a new
format byte (format.FORMAT) and new vectors.  Format 1 (artfs 0.1) is still
decoded, never written: its vectors are decode-only.
"""
from __future__ import annotations

import datetime
import os

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artfs.errors import BadInput, Corrupt
from artfs.storage import format as t
from artfs.storage.format import BLK, CHR, DIR, FIFO, FILE, NS, REF, SOCK, SYMLINK, Entry

H = blake3.blake3(b"hello").digest()
D32 = bytes(range(32))
C32 = bytes(range(32, 64))
L16 = bytes(range(16))
EMPTY_FILE = blake3.blake3(b"").digest()
T2300 = 10_413_792_000 * NS + 5  # 2300-01-01T00:00:00.000000005Z: beyond an int64 of nanoseconds
T1600 = -11_676_096_000 * NS  # 1600-01-01T00:00:00Z: before it


# -- golden vectors, format 2 ------------------------------------------------------------

def golden_entries():
    x = ((b"user.a", b"1"), (b"user.b", b""))
    return [
        Entry(b"file.txt", FILE, 0o644, 1000, 1000, 5, 1_700_000_000_123_456_789, 1_700_000_001_000_000_007,
              digest=H),
        Entry(b"big.bin", FILE, 0o755, 0, 0, 3 << 20, 0, 0, digest=D32, chunks=C32, xattrs=x, hlid=L16),
        Entry(b"big2.bin", FILE, 0o755, 0, 0, 3 << 20, 0, 0, digest=D32, chunks=C32, xattrs=x, hlid=L16),
        Entry(b"sub", DIR, 0o755, 0, 0, 5, 1_600_000_000_000_000_000, 1_600_000_000_000_000_000,
              digest=t.EMPTY_TREE_DIGEST, ident=t.EMPTY_IDENT, nfiles=1, xattrs=((b"user.dir", b"x"),)),
        Entry(b"link", SYMLINK, 0o777, 0, 0, 8, -1, -1, target=b"file.txt"),
        Entry(b"ref.bin", REF, 0o644, 0, 0, 2**40, 0, 0, digest=D32, uri="file:///data/big.bin", chunks=C32),
        Entry(b"fifo", FIFO, 0o600, 5, 6, 0, 1, 2),
        Entry(b"sock", SOCK, 0o755, 0, 0, 0, 0, 0),
        Entry(b"null", CHR, 0o666, 0, 0, 0, 0, 0, rdev=os.makedev(1, 3)),
        Entry(b"sda", BLK, 0o660, 0, 6, 0, 0, 0, rdev=os.makedev(8, 0)),
        Entry(b"far", FILE, 0o4755, 0, 0, 0, T2300, T1600, digest=EMPTY_FILE),
    ]


GOLDEN2_HEX = (
    "029b9dc4076269672e62696e01cd01ed0000ce003000000000000092c420000102030405060708090a0b0c0d0e0f1011"
    "12131415161718191a1b1c1d1e1fc420202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "9292c406757365722e61c4013192c406757365722e62c400c410000102030405060708090a0b0c0d0e0f9dc408626967"
    "322e62696e01cd01ed0000ce003000000000000092c420000102030405060708090a0b0c0d0e0f101112131415161718"
    "191a1b1c1d1e1fc420202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f9292c406757365"
    "722e61c4013192c406757365722e62c400c410000102030405060708090a0b0c0d0e0f9dc40366617201cd09ed000000"
    "cf000000026cb5db0005d3fffffffd480cea000092c420af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc"
    "9a93cae41f3262c090c09dc4046669666f05cd018005060000010002c090c09dc40866696c652e74787401cd01a4cd03"
    "e8cd03e805ce6553f100ce075bcd15ce6553f1010792c420ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86"
    "e908c5624a67200fc090c09dc4046c696e6b03cd01ff000008ffce3b9ac9ffffce3b9ac9ffc40866696c652e74787490"
    "c09dc4046e756c6c06cd01b600000000000000cd010390c09dc4077265662e62696e04cd01a40000cf00000100000000"
    "000000000093c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fb466696c653a2f2f"
    "2f646174612f6269672e62696ec420202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f90"
    "c09dc40373646107cd01b000060000000000cd080090c09dc404736f636b08cd01ed00000000000000c090c09dc40373"
    "756202cd01ed000005ce5f5e100000ce5f5e10000093c420fbf0c955ef410e90113223a9e4913f204065a618a67a3b3f"
    "5b266c9852768045c420d2528b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c9561019192c40875"
    "7365722e646972c40178c0"
)
GOLDEN2_DIGEST = "71068b13d5861102eea3016947bcd10eb89c86c184fe58202f5421959731ae69"
GOLDEN2_IDENT = "bfa10dc0dfe6d8fe3cd29e29bbcfd63bedb8eacd4e6c46d010648f2ebad8c8db"
EMPTY2_DIGEST = "fbf0c955ef410e90113223a9e4913f204065a618a67a3b3f5b266c9852768045"
EMPTY_IDENT = "d2528b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c9561"  # same in format 1


def test_golden_empty_tree():
    assert t.EMPTY_TREE == bytes.fromhex("0290")
    assert t.encode_tree([]) == t.EMPTY_TREE
    assert t.EMPTY_TREE_DIGEST.hex() == EMPTY2_DIGEST == blake3.blake3(t.EMPTY_TREE).hexdigest()
    assert t.EMPTY_IDENT.hex() == EMPTY_IDENT
    assert t.decode_tree(t.EMPTY_TREE) == []


def test_golden_tree_of_every_kind():
    data = t.encode_tree(golden_entries())
    assert data.hex() == GOLDEN2_HEX
    assert blake3.blake3(data).hexdigest() == GOLDEN2_DIGEST
    assert t.tree_identity(golden_entries()).hex() == GOLDEN2_IDENT
    assert t.decode_tree(bytes.fromhex(GOLDEN2_HEX)) == sorted(golden_entries(), key=lambda e: e.name)


def test_golden_bytes_follow_the_documented_layout():
    """The vector checked against format.py's docstring by hand: the format byte, then rows
    [name, kind, mode, uid, gid, size, mtime_s, mtime_ns, atime_s, atime_ns, payload, xattrs, hlid]
    sorted by name, written out literally here (not through the encoder)."""
    data = bytes.fromhex(GOLDEN2_HEX)
    assert data[:1] == b"\x02"
    x = [[b"user.a", b"1"], [b"user.b", b""]]
    rows = [
        [b"big.bin", 1, 0o755, 0, 0, 3 << 20, 0, 0, 0, 0, [D32, C32], x, L16],
        [b"big2.bin", 1, 0o755, 0, 0, 3 << 20, 0, 0, 0, 0, [D32, C32], x, L16],
        [b"far", 1, 0o4755, 0, 0, 0, 10_413_792_000, 5, -11_676_096_000, 0, [EMPTY_FILE, None], [], None],
        [b"fifo", 5, 0o600, 5, 6, 0, 0, 1, 0, 2, None, [], None],
        [b"file.txt", 1, 0o644, 1000, 1000, 5, 1_700_000_000, 123_456_789, 1_700_000_001, 7, [H, None], [], None],
        [b"link", 3, 0o777, 0, 0, 8, -1, 999_999_999, -1, 999_999_999, b"file.txt", [], None],
        [b"null", 6, 0o666, 0, 0, 0, 0, 0, 0, 0, 259, [], None],
        [b"ref.bin", 4, 0o644, 0, 0, 2**40, 0, 0, 0, 0, [D32, "file:///data/big.bin", C32], [], None],
        [b"sda", 7, 0o660, 0, 6, 0, 0, 0, 0, 0, 2048, [], None],
        [b"sock", 8, 0o755, 0, 0, 0, 0, 0, 0, 0, None, [], None],
        [b"sub", 2, 0o755, 0, 0, 5, 1_600_000_000, 0, 1_600_000_000, 0, [t.EMPTY_TREE_DIGEST, t.EMPTY_IDENT, 1],
         [[b"user.dir", b"x"]], None],
    ]
    assert msgpack.unpackb(data[1:], raw=False) == rows
    assert data == b"\x02" + msgpack.packb(rows, use_bin_type=True)  # shortest msgpack forms, nothing else
    # the kind numbers are part of the format
    assert (FILE, DIR, SYMLINK, REF, FIFO, CHR, BLK, SOCK) == (1, 2, 3, 4, 5, 6, 7, 8)


def test_golden_file_digest_is_plain_blake3():
    # a file's recorded digest is b3sum of its bytes (DESIGN.md §5)
    assert H.hex() == "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"


def test_golden_times_are_what_they_say():
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    assert epoch + datetime.timedelta(seconds=T2300 // NS) == datetime.datetime(2300, 1, 1, tzinfo=datetime.timezone.utc)
    assert epoch + datetime.timedelta(seconds=T1600 // NS) == datetime.datetime(1600, 1, 1, tzinfo=datetime.timezone.utc)
    assert T2300 > 2**63 - 1 and T1600 < -(2**63)  # neither fits an int64 of nanoseconds


GOLDEN_ROOT_HEX = (
    "9dc40002cd03ff010207ce6553f10001ce6553f1000293c420fbf0c955ef410e90113223a9e4913f204065a618a67a3b"
    "3f5b266c9852768045c420d2528b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c9561039192c406"
    "757365722e72c40176c0"
)


def golden_root():
    return Entry(b"", DIR, 0o1777, 1, 2, 7, 1_700_000_000_000_000_001, 1_700_000_000_000_000_002,
                 digest=t.EMPTY_TREE_DIGEST, ident=t.EMPTY_IDENT, nfiles=3, xattrs=((b"user.r", b"v"),))


def test_golden_root_entry():
    data = t.encode_root(golden_root())
    assert data.hex() == GOLDEN_ROOT_HEX
    # a format-2 row with an empty name
    assert msgpack.unpackb(data, raw=False) == [
        b"", 2, 0o1777, 1, 2, 7, 1_700_000_000, 1, 1_700_000_000, 2, [t.EMPTY_TREE_DIGEST, t.EMPTY_IDENT, 3],
        [[b"user.r", b"v"]], None]
    # the version row's own tree, identity and counts win over what the entry carried
    back = t.decode_root(data, D32, C32, 9, 10)
    assert back == golden_root().with_(digest=D32, ident=C32, nfiles=9, size=10)


GOLDEN_LINKS_HEX = (
    "61727466732d6c696e6b732d31009292c410000000000000000000000000000000009292c40164c4017891c4017992c410"
    "000102030405060708090a0b0c0d0e0f9291c4076269672e62696e91c408626967322e62696e"
)


def test_golden_link_table():
    groups = {L16: [(b"big2.bin",), (b"big.bin",)], bytes(16): [(b"d", b"x"), (b"y",)]}
    data = t.encode_links(groups)
    assert data.hex() == GOLDEN_LINKS_HEX
    assert data.startswith(b"artfs-links-1\0")
    assert t.decode_links(data) == {L16: [(b"big.bin",), (b"big2.bin",)], bytes(16): [(b"d", b"x"), (b"y",)]}
    # canonical: the order groups and paths are given in does not matter
    assert t.encode_links(dict(reversed(list(groups.items())))) == data


# -- format 1 (artfs 0.1): decode-only vectors -------------------------------------------

GOLDEN1_HEX = (
    "019498c4076269672e62696e04cd01ed0000cf00000100000000000092c420000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1fb466696c653a2f2f2f646174612f6269672e62696e98c40866696c652e7478"
    "7401cd01a4cd03e8cd03e805cf17979cfe3d85cd15c420ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86"
    "e908c5624a67200f98c4046c696e6b03cd01ff000008ffc40866696c652e74787498c40373756202cd01ed000005cf"
    "16345785d8a0000093c42085cd8da4c88732acfda2c871c1e3ffef0f24015bfd43c7a7b86d292e8f201f60c420d252"
    "8b089869227fa51d4c6c68d1a6e63abe9774ed0a075854079c6dad2c956101"
)
GOLDEN1_DIGEST = "0b75553c729b88cf6ca7933740a9d504457ac12d2fb0ec6afb24720cb6e58a4c"
GOLDEN1_IDENT = "1c2cb83d003949d6fff81e4f5c8d70c64e46639b14bbd922515ac8477bee6ba6"
EMPTY1_DIGEST = "85cd8da4c88732acfda2c871c1e3ffef0f24015bfd43c7a7b86d292e8f201f60"


def golden1_entries():
    """What artfs 0.1's golden tree means now: format 1 had no atime (it reads as the mtime),
    no xattrs, hard links or chunk lists."""
    return [
        Entry(b"big.bin", REF, 0o755, 0, 0, 2**40, 0, 0, digest=D32, uri="file:///data/big.bin"),
        Entry(b"file.txt", FILE, 0o644, 1000, 1000, 5, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789, digest=H),
        Entry(b"link", SYMLINK, 0o777, 0, 0, 8, -1, -1, target=b"file.txt"),
        Entry(b"sub", DIR, 0o755, 0, 0, 5, 1_600_000_000_000_000_000, 1_600_000_000_000_000_000,
              digest=bytes.fromhex(EMPTY1_DIGEST), ident=t.EMPTY_IDENT, nfiles=1),
    ]


def test_format1_golden_vectors_still_decode():
    data = bytes.fromhex(GOLDEN1_HEX)
    assert blake3.blake3(data).hexdigest() == GOLDEN1_DIGEST  # the vector itself is untouched
    assert t.decode_tree(data) == golden1_entries()
    assert t.decode_tree(bytes.fromhex("0190")) == []
    assert blake3.blake3(bytes.fromhex("0190")).hexdigest() == EMPTY1_DIGEST
    # identity did not change with the format: a 0.1 version and the same content put
    # again now are "unchanged"
    assert t.tree_identity(golden1_entries()).hex() == GOLDEN1_IDENT
    assert t.tree_identity([]).hex() == EMPTY_IDENT


def test_format1_is_never_written():
    data = t.encode_tree(golden1_entries())
    assert data[:1] == b"\x02" and data != bytes.fromhex(GOLDEN1_HEX)
    assert t.decode_tree(data) == golden1_entries()


def test_format1_knows_only_its_own_rows():
    f1 = [b"a", FILE, 0o644, 0, 0, 5, 0, H]
    assert t.decode_tree(b"\x01" + msgpack.packb([f1], use_bin_type=True)) == [
        Entry(b"a", FILE, 0o644, 0, 0, 5, 0, 0, digest=H)]
    f2 = [b"a", FILE, 0o644, 0, 0, 5, 0, 0, 0, 0, [H, None], [], None]
    for bad in (b"\x01" + msgpack.packb([f2], use_bin_type=True),  # a format-2 row under format byte 1
                b"\x02" + msgpack.packb([f1], use_bin_type=True),  # and the other way round
                b"\x01" + msgpack.packb([[b"a", FIFO, 0o644, 0, 0, 0, 0, None]], use_bin_type=True)):  # 0.1 had 4 kinds
        with pytest.raises(Corrupt):
            t.decode_tree(bad)


# -- strategies ------------------------------------------------------------------------

names = (st.binary(min_size=1, max_size=40) | st.just(b"n" * t.MAX_NAME)).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
digests = st.binary(min_size=32, max_size=32)
times = st.integers(-(2**63) * NS, (2**63 - 1) * NS + NS - 1)  # the whole range of 64-bit seconds
xattr_sets = st.dictionaries(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b), st.binary(max_size=60), max_size=4
).map(t.xattr_tuple)
common = dict(
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**63 - 1),
    mtime_ns=times,
    atime_ns=times,
    xattrs=xattr_sets,
    hlid=st.none() | st.binary(min_size=16, max_size=16),
)
uris = st.text(max_size=100).map(lambda s: "file:///" + s).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


def _entry(name, kind, payload, **kw):
    if kind == FILE:
        return Entry(name, FILE, digest=payload[0], chunks=payload[1], **kw)
    if kind == DIR:
        return Entry(name, DIR, digest=payload[0], ident=payload[1], nfiles=payload[2], **kw)
    if kind == SYMLINK:
        return Entry(name, SYMLINK, target=payload, **kw)
    if kind == REF:
        return Entry(name, REF, digest=payload[0], uri=payload[1], chunks=payload[2], **kw)
    if kind in (CHR, BLK):
        return Entry(name, kind, rdev=payload, **kw)
    return Entry(name, kind, **kw)


payloads = {
    FILE: st.tuples(digests, st.none() | digests),
    DIR: st.tuples(digests, digests, st.integers(0, 2**63 - 1)),
    SYMLINK: st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b),  # MAX_TARGET: see MALFORMED
    REF: st.tuples(digests, uris, st.none() | digests),
    FIFO: st.none(),
    SOCK: st.none(),
    CHR: st.integers(0, 2**64 - 1),
    BLK: st.integers(0, 2**64 - 1),
}


@st.composite
def entries(draw, name=names):
    kind = draw(st.sampled_from(t.KINDS))
    return _entry(draw(name), kind, draw(payloads[kind]), **{k: draw(v) for k, v in common.items()})


trees = st.lists(entries(), max_size=8, unique_by=lambda e: e.name)


# -- round trips ------------------------------------------------------------------------

@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(trees, st.randoms(use_true_random=False))
def test_roundtrip_and_order_independence(ents, rnd):
    data = t.encode_tree(ents)
    assert data[:1] == t.FORMAT_BYTE
    back = t.decode_tree(data)
    assert back == sorted(ents, key=lambda e: e.name)
    assert t.encode_tree(back) == data
    shuffled = list(ents)
    rnd.shuffle(shuffled)
    assert t.encode_tree(shuffled) == data
    assert t.tree_identity(shuffled) == t.tree_identity(ents)


def test_times_outside_1678_to_2262_round_trip():
    """Seconds plus nanoseconds: the kernel's whole range, not an int64 of nanoseconds."""
    f = Entry(b"f", FILE, 0o644, mtime_ns=T2300, atime_ns=T1600, digest=H)
    old = Entry(b"o", FILE, 0o644, mtime_ns=-1, atime_ns=-NS - 1, digest=H)  # just before 1970, negative seconds
    assert t.decode_tree(t.encode_tree([f, old])) == [f, old]
    assert t.decode_rec(t.encode_rec(f), b"f") == f
    assert t.decode_rec(t.encode_rec(old.with_(ctime_ns=T1600)), b"o") == old.with_(ctime_ns=T1600)
    root = golden_root().with_(mtime_ns=T1600, atime_ns=T2300)
    assert t.decode_root(t.encode_root(root), root.digest, root.ident, 3, 7) == root
    # the very ends of 64-bit seconds, and one past them
    lo, hi = -(2**63) * NS, (2**63 - 1) * NS + NS - 1
    edge = f.with_(mtime_ns=lo, atime_ns=hi)
    assert t.decode_tree(t.encode_tree([edge])) == [edge]
    for bad in (hi + 1, lo - 1):
        with pytest.raises(BadInput):
            t.encode_tree([f.with_(mtime_ns=bad)])
        with pytest.raises(BadInput):
            t.encode_tree([f.with_(atime_ns=bad)])


def test_duplicate_names_rejected_on_encode():
    e = Entry(b"a", FILE, 0o644, digest=H)
    with pytest.raises(BadInput):
        t.encode_tree([e, e.with_(mode=0o600)])


@pytest.mark.parametrize("bad", [
    Entry(b"a/b", FILE, 0o644, digest=H),
    Entry(b"..", FILE, 0o644, digest=H),
    Entry(b".", FILE, 0o644, digest=H),
    Entry(b"", FILE, 0o644, digest=H),
    Entry(b"x" * 256, FILE, 0o644, digest=H),
    Entry(b"a", FILE, 0o644, digest=H[:31]),
    Entry(b"a", FILE, 0o644, digest=None),
    Entry(b"a", FILE, 0o644, digest=H, chunks=H[:31]),
    Entry(b"a", FILE, 0o100644, digest=H),
    Entry(b"a", FILE, 0o644, uid=-1, digest=H),
    Entry(b"a", FILE, 0o644, gid=2**32, digest=H),
    Entry(b"a", FILE, 0o644, size=2**63, digest=H),
    Entry(b"a", FILE, 0o644, size=-1, digest=H),
    Entry(b"a", 9, 0o644, digest=H),
    Entry(b"a", 0, 0o644, digest=H),
    Entry(b"a", DIR, 0o755, digest=H, ident=None),
    Entry(b"a", DIR, 0o755, digest=H, ident=H, nfiles=-1),
    Entry(b"a", SYMLINK, 0o777, target=b""),
    Entry(b"a", SYMLINK, 0o777, target=None),
    Entry(b"a", SYMLINK, 0o777, target=b"x\0y"),
    Entry(b"a", SYMLINK, 0o777, target=b"x" * (t.MAX_TARGET + 1)),
    Entry(b"a", REF, 0o644, digest=H, uri=None),
    Entry(b"a", REF, 0o644, digest=H, uri="file:///\udcff"),
    Entry(b"a", REF, 0o644, digest=H, uri="file:///" + "x" * t.MAX_URI),
    Entry(b"a", CHR, 0o644, rdev=-1),
    Entry(b"a", BLK, 0o644, rdev=2**64),
    Entry(b"a", FILE, 0o644, digest=H, xattrs=((b"user.b", b""), (b"user.a", b""))),  # unsorted
    Entry(b"a", FILE, 0o644, digest=H, xattrs=((b"user.a", b""), (b"user.a", b"2"))),  # duplicate
    Entry(b"a", FILE, 0o644, digest=H, xattrs=((b"", b"v"),)),
    Entry(b"a", FILE, 0o644, digest=H, xattrs=((b"user.\0", b"v"),)),
    Entry(b"a", FILE, 0o644, digest=H, xattrs=((b"user.a", b"v" * (t.MAX_XATTR_VALUE + 1)),)),
    Entry(b"a", FILE, 0o644, digest=H, hlid=bytes(15)),
    Entry(b"a", FILE, 0o644, digest=H, hlid=bytes(32)),
    # a draft's own fields never reach a tree
    Entry(b"a", FILE, 0o644, scratch="abc"),
    Entry(b"a", DIR, 0o755, dir_id=5),
    Entry(b"a", FILE, 0o644, digest=H, link=17),
])
def test_encode_refuses_what_decode_would_reject(bad):
    # nothing undecodable may ever be written into the store
    with pytest.raises(BadInput):
        t.encode_tree([bad])


def test_xattr_tuple_sorts_and_checks():
    assert t.xattr_tuple({b"user.b": b"2", b"user.a": b"1"}) == ((b"user.a", b"1"), (b"user.b", b"2"))
    assert t.xattr_tuple([(bytearray(b"user.a"), memoryview(b"x"))]) == ((b"user.a", b"x"),)
    for bad in ([(b"user.a", b"1"), (b"user.a", b"2")], [(b"", b"v")], [(b"a\0b", b"")],
                [(b"n" * 256, b"")], [(b"user.a", b"v" * (t.MAX_XATTR_VALUE + 1))],
                [(b"user.%d" % i, b"") for i in range(t.MAX_XATTRS + 1)]):
        with pytest.raises(BadInput):
            t.xattr_tuple(bad)


# -- identity ---------------------------------------------------------------------------

def _ident(*ents):
    return t.tree_identity(list(ents))


def test_identity_ignores_metadata_but_not_content():
    f = Entry(b"f", FILE, 0o644, 1, 2, 5, 10, 11, digest=H)
    base = _ident(f)
    # times, owner, non-exec mode bits, xattrs, hard-link group, chunk list: same identity
    assert _ident(f.with_(mtime_ns=99)) == base
    assert _ident(f.with_(atime_ns=T2300)) == base
    assert _ident(f.with_(uid=7, gid=8)) == base
    assert _ident(f.with_(mode=0o600)) == base
    assert _ident(f.with_(mode=0o4644)) == base
    assert _ident(f.with_(xattrs=((b"user.k", b"v"),))) == base
    assert _ident(f.with_(hlid=L16)) == base
    assert _ident(f.with_(chunks=C32)) == base  # derived from the content, which is the digest
    assert _ident(f.with_(size=6)) == base  # the digest says what the content is
    # ...while the tree bytes do change (so they are recorded faithfully)
    for other in (f.with_(mtime_ns=99), f.with_(atime_ns=99), f.with_(xattrs=((b"user.k", b"v"),)),
                  f.with_(hlid=L16), f.with_(chunks=C32)):
        assert t.encode_tree([other]) != t.encode_tree([f])
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
    assert _ident(d) == _ident(d.with_(digest=bytes(32), mode=0o700, mtime_ns=5, xattrs=((b"user.x", b""),)))
    assert _ident(d) != _ident(d.with_(ident=bytes(32)))
    # exec bits of dirs and symlinks are not content
    assert _ident(d) == _ident(d.with_(mode=0o644))
    s = Entry(b"s", SYMLINK, 0o777, target=b"x")
    assert _ident(s) == _ident(s.with_(mode=0o755, hlid=L16))
    assert _ident(s) != _ident(s.with_(target=b"y"))
    r = Entry(b"r", REF, 0o644, digest=H, uri="file:///a")
    assert _ident(r) != _ident(r.with_(uri="file:///b"))
    assert _ident(r) != _ident(r.with_(digest=bytes(32)))
    assert _ident(r) != _ident(r.with_(mode=0o744))
    assert _ident(r) == _ident(r.with_(chunks=C32))
    # an empty dir is not the same as no dir, a file is not a symlink with the same bytes
    assert _ident(d) != _ident()
    assert _ident(Entry(b"x", FILE, 0o644, digest=H)) != _ident(Entry(b"x", SYMLINK, 0o644, target=H))


def test_identity_of_special_files():
    fifo = Entry(b"p", FIFO, 0o644)
    assert _ident(fifo) == _ident(fifo.with_(mode=0o755, uid=3, mtime_ns=5, xattrs=((b"user.a", b""),), hlid=L16))
    assert _ident(fifo) != _ident(fifo.with_(kind=SOCK))
    assert _ident(fifo) != _ident(Entry(b"p", FILE, 0o644, digest=EMPTY_FILE))  # not an empty file
    assert _ident(fifo) != _ident()
    null = Entry(b"c", CHR, 0o666, rdev=os.makedev(1, 3))
    assert _ident(null) == _ident(null.with_(mode=0o600, gid=5))
    assert _ident(null) != _ident(null.with_(rdev=os.makedev(1, 5)))
    assert _ident(null) != _ident(null.with_(kind=BLK))  # same numbers, other kind
    assert _ident(Entry(b"c", CHR, rdev=0)) != _ident(Entry(b"c", FIFO))


def test_content_key_is_the_one_rule():
    f = Entry(b"f", FILE, 0o644, digest=H)
    assert t.content_key(None) is None
    assert t.same_content(None, None) and not t.same_content(f, None)
    assert t.same_content(f, f.with_(name=b"other", mtime_ns=5, xattrs=((b"user.a", b""),), hlid=L16, chunks=C32))
    assert not t.same_content(f, f.with_(mode=0o700))
    assert t.content_key(f) == (FILE, False, H)
    # a draft's changed file has no content id until it is hashed
    with pytest.raises(BadInput):
        t.content_key(Entry(b"f", FILE, 0o644, scratch="abc"))


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(trees, st.data())
def test_identity_ignores_metadata_property(ents, data):
    def scramble(e):
        mode = (e.mode & 0o111) | (data.draw(st.integers(0, 0o7777)) & ~0o111) if e.kind in (FILE, REF) \
            else data.draw(st.integers(0, 0o7777))
        kw = dict(mode=mode, uid=data.draw(common["uid"]), gid=data.draw(common["gid"]),
                  mtime_ns=data.draw(times), atime_ns=data.draw(times), xattrs=data.draw(xattr_sets),
                  hlid=data.draw(common["hlid"]))
        if e.kind in (FILE, REF):
            kw["chunks"] = data.draw(st.none() | digests)
        return e.with_(**kw)

    assert t.tree_identity([scramble(e) for e in ents]) == t.tree_identity(ents)


# -- strict decoding of malformed and hostile input --------------------------------------

ROW = [b"a", FILE, 0o644, 0, 0, 5, 0, 0, 0, 0, [H, None], [], None]
IDX = {"name": 0, "kind": 1, "mode": 2, "uid": 3, "gid": 4, "size": 5, "mtime_s": 6, "mtime_ns": 7,
       "atime_s": 8, "atime_ns": 9, "payload": 10, "xattrs": 11, "hlid": 12}
ROW1 = [b"a", FILE, 0o644, 0, 0, 5, 0, H]  # format 1


def enc(rows, fmt=t.FORMAT_BYTE):
    return fmt + msgpack.packb(rows, use_bin_type=True)


def enc1(rows):
    return enc(rows, b"\x01")


def test_valid_reference_rows_decode():
    assert t.decode_tree(enc([ROW])) == [Entry(b"a", FILE, 0o644, 0, 0, 5, 0, 0, digest=H)]
    assert t.decode_tree(enc1([ROW1])) == [Entry(b"a", FILE, 0o644, 0, 0, 5, 0, 0, digest=H)]


def _row(**kw):
    r = list(ROW)
    for k, v in kw.items():
        r[IDX[k]] = v
    return r


def _row1(**kw):
    idx = {"name": 0, "kind": 1, "mode": 2, "uid": 3, "gid": 4, "size": 5, "mtime": 6, "payload": 7}
    r = list(ROW1)
    for k, v in kw.items():
        r[idx[k]] = v
    return r


MALFORMED = {
    "empty": b"",
    "format byte 0": enc([ROW], b"\x00"),
    "format byte 3": enc([ROW], b"\x03"),
    "format byte 1 with a format-2 row": enc([ROW], b"\x01"),
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
    "digest 31 bytes": enc([_row(payload=[H[:31], None])]),
    "digest 33 bytes": enc([_row(payload=[H + b"\0", None])]),
    "digest as str": enc([_row(payload=["x" * 32, None])]),
    "file payload bin (format 1 style)": enc([_row(payload=H)]),
    "file payload short": enc([_row(payload=[H])]),
    "file payload long": enc([_row(payload=[H, None, None])]),
    "chunk list 31 bytes": enc([_row(payload=[H, H[:31]])]),
    "chunk list as str": enc([_row(payload=[H, "x" * 32])]),
    "kind 0": enc([_row(kind=0)]),
    "kind 9": enc([_row(kind=9)]),
    "kind bool": enc([_row(kind=True)]),
    "kind float": enc([_row(kind=1.0)]),
    "mode too big": enc([_row(mode=0o10000)]),
    "mode negative": enc([_row(mode=-1)]),
    "mode nil": enc([_row(mode=None)]),
    "uid too big": enc([_row(uid=2**32)]),
    "gid negative": enc([_row(gid=-1)]),
    "size negative": enc([_row(size=-1)]),
    "size 2**63": enc([_row(size=2**63)]),
    "mtime seconds 2**64-1": enc([_row(mtime_s=2**64 - 1)]),
    "mtime float": enc([_row(mtime_s=1.5)]),
    "mtime ns 10**9": enc([_row(mtime_ns=NS)]),
    "mtime ns negative": enc([_row(mtime_ns=-1)]),
    "atime ns 10**9": enc([_row(atime_ns=NS)]),
    "atime seconds nil": enc([_row(atime_s=None)]),
    "atime seconds bool": enc([_row(atime_s=False)]),
    "extra field": enc([ROW + [0]]),
    "missing field": enc([ROW[:12]]),
    "entry as map": enc([{b"name": b"a"}]),
    "top as map": t.FORMAT_BYTE + msgpack.packb({b"a": ROW}, use_bin_type=True),
    "top as bin": t.FORMAT_BYTE + msgpack.packb(b"abc", use_bin_type=True),
    "top as int": t.FORMAT_BYTE + msgpack.packb(1),
    "entry as bin": enc([b"x" * 13]),
    "dir payload short": enc([_row(kind=DIR, payload=[H, H])]),
    "dir payload long": enc([_row(kind=DIR, payload=[H, H, 0, 0])]),
    "dir payload bin": enc([_row(kind=DIR, payload=H)]),
    "dir nfiles negative": enc([_row(kind=DIR, payload=[H, H, -1])]),
    "dir ident short": enc([_row(kind=DIR, payload=[H, b"x", 0])]),
    "symlink empty": enc([_row(kind=SYMLINK, payload=b"")]),
    "symlink NUL": enc([_row(kind=SYMLINK, payload=b"a\0b")]),
    "symlink str": enc([_row(kind=SYMLINK, payload="abc")]),
    "symlink too long": enc([_row(kind=SYMLINK, payload=b"x" * (t.MAX_TARGET + 1))]),
    "ref payload bin uri": enc([_row(kind=REF, payload=[H, b"file:///x", None])]),
    "ref payload short (format 1 style)": enc([_row(kind=REF, payload=[H, "file:///x"])]),
    "ref uri too long": enc([_row(kind=REF, payload=[H, "file:///" + "x" * t.MAX_URI, None])]),
    "fifo with payload": enc([_row(kind=FIFO, payload=0)]),
    "socket with payload": enc([_row(kind=SOCK, payload=[H, None])]),
    "chardev without rdev": enc([_row(kind=CHR, payload=None)]),
    "blockdev rdev negative": enc([_row(kind=BLK, payload=-1)]),
    "blockdev rdev float": enc([_row(kind=BLK, payload=1.0)]),
    "chardev rdev as bin": enc([_row(kind=CHR, payload=b"\x01\x03")]),
    "xattrs nil": enc([_row(xattrs=None)]),
    "xattrs as map-like pairs": enc([_row(xattrs=[[b"user.a"]])]),
    "xattr name str": enc([_row(xattrs=[["user.a", b"v"]])]),
    "xattr value str": enc([_row(xattrs=[[b"user.a", "v"]])]),
    "xattr name empty": enc([_row(xattrs=[[b"", b"v"]])]),
    "xattr name NUL": enc([_row(xattrs=[[b"a\0", b"v"]])]),
    "xattrs unsorted": enc([_row(xattrs=[[b"user.b", b""], [b"user.a", b""]])]),
    "xattrs duplicate": enc([_row(xattrs=[[b"user.a", b""], [b"user.a", b""]])]),
    "xattr value too long": enc([_row(xattrs=[[b"user.a", b"v" * (t.MAX_XATTR_VALUE + 1)]])]),
    "hlid 15 bytes": enc([_row(hlid=bytes(15))]),
    "hlid str": enc([_row(hlid="x" * 16)]),
    "hlid int": enc([_row(hlid=0)]),
    "ext type": enc([_row(payload=[msgpack.ExtType(1, b"x" * 32), None])]),
    "non-utf8 str": enc([_row(kind=REF, payload=[H, "file:///x", None])]).replace(b"\xa9file:///x",
                                                                                  b"\xa9file:///\xff"),
    # huge declared lengths with no data behind them
    "array32 huge": t.FORMAT_BYTE + b"\xdd\xff\xff\xff\xff",
    "array16 short": t.FORMAT_BYTE + b"\xdc\xff\xff" + b"\x90",
    "bin32 huge": t.FORMAT_BYTE + b"\x91\x9d\xc6\xff\xff\xff\xff",
    "str32 huge": t.FORMAT_BYTE + b"\x91\x9d\xdb\xff\xff\xff\xff",
    "map32 huge": t.FORMAT_BYTE + b"\xdf\xff\xff\xff\xff",
    "deep nesting": t.FORMAT_BYTE + b"\x91" * 100_000 + b"\x90",
    # canonical form: the same entry with a wider int encoding (other bytes, other digest)
    "non-minimal int": enc([ROW]).replace(b"\xcd\x01\xa4", b"\xd1\x01\xa4"),
    "str8 where fixstr fits": enc([_row(kind=REF, payload=[H, "file:///x", None])]).replace(
        b"\xa9file", b"\xd9\x09file"),
    "bin16 where bin8 fits": enc([ROW]).replace(b"\xc4\x01a", b"\xc5\x00\x01a"),
    # format 1 (artfs 0.1): decoded just as strictly
    "f1 unsorted": enc1([_row1(name=b"b"), _row1(name=b"a")]),
    "f1 duplicate": enc1([ROW1, ROW1]),
    "f1 name with slash": enc1([_row1(name=b"a/b")]),
    "f1 name dotdot": enc1([_row1(name=b"..")]),
    "f1 digest 31 bytes": enc1([_row1(payload=H[:31])]),
    "f1 digest as list (format 2 style)": enc1([_row1(payload=[H, None])]),
    "f1 kind 5": enc1([_row1(kind=5, payload=None)]),
    "f1 kind 0": enc1([_row1(kind=0)]),
    "f1 mode too big": enc1([_row1(mode=0o10000)]),
    "f1 mtime 2**64-1": enc1([_row1(mtime=2**64 - 1)]),
    "f1 mtime float": enc1([_row1(mtime=1.5)]),
    "f1 extra field": enc1([ROW1 + [0]]),
    "f1 missing field": enc1([ROW1[:7]]),
    "f1 ref short": enc1([_row1(kind=REF, payload=[H])]),
    "f1 ref with chunk list (format 2 style)": enc1([_row1(kind=REF, payload=[H, "file:///x", None])]),
    "f1 dir payload short": enc1([_row1(kind=DIR, payload=[H, H])]),
    "f1 symlink empty": enc1([_row1(kind=SYMLINK, payload=b"")]),
    "f1 trailing bytes": enc1([ROW1]) + b"\x00",
    "f1 non-minimal int": enc1([ROW1]).replace(b"\xcd\x01\xa4", b"\xd1\x01\xa4"),
    "f1 truncated": bytes.fromhex(GOLDEN1_HEX)[:-1],
}


def test_malformed_vectors_are_distinct_and_differ_from_valid():
    valid = {enc([ROW]), enc1([ROW1])}
    assert not valid & set(MALFORMED.values())


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
    again = t.encode_tree(ents)
    if data[:1] == t.FORMAT_BYTE:
        # whatever decodes is canonical: it re-encodes to the very same bytes
        assert again == data
    else:
        # format 1 decodes into entries that format 2 writes and reads back unchanged
        assert data[:1] == b"\x01" and t.decode_tree(again) == ents


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _decode_only_corrupt(data)
    _decode_only_corrupt(t.FORMAT_BYTE + data)
    _decode_only_corrupt(b"\x01" + data)


def _mutate(b: bytearray, data) -> bytes:
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(b) - 1)) if b else 0
        if op == "flip" and b:
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del b[i:]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    return bytes(b)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(trees.filter(bool), st.data())
def test_fuzz_mutated_valid_trees(ents, data):
    _decode_only_corrupt(_mutate(bytearray(t.encode_tree(ents)), data))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from([GOLDEN1_HEX, GOLDEN2_HEX]), st.data())
def test_fuzz_mutated_golden_vectors(hexdata, data):
    _decode_only_corrupt(_mutate(bytearray(bytes.fromhex(hexdata)), data))


# -- root entries -------------------------------------------------------------------------

def test_root_entry_of_a_version_made_by_0_1():
    e = t.decode_root(None, D32, C32, 4, 100)
    assert (e.name, e.kind, e.mode, e.uid, e.gid, e.digest, e.ident, e.nfiles, e.size, e.xattrs) == (
        b"", DIR, 0o755, 0, 0, D32, C32, 4, 100, ())


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",
    msgpack.packb(1),
    msgpack.packb([]),
    bytes.fromhex(GOLDEN_ROOT_HEX)[:-1],
    bytes.fromhex(GOLDEN_ROOT_HEX) + b"\x00",
    # a name: the root has none
    msgpack.packb([b"x"] + msgpack.unpackb(bytes.fromhex(GOLDEN_ROOT_HEX))[1:], use_bin_type=True),
    # not a directory row: a mode out of range, a 12-element row, a bad time
    bytes.fromhex(GOLDEN_ROOT_HEX).replace(b"\xcd\x03\xff", b"\xcd\xff\xff"),
    msgpack.packb(msgpack.unpackb(bytes.fromhex(GOLDEN_ROOT_HEX))[:12], use_bin_type=True),
    msgpack.packb(msgpack.unpackb(bytes.fromhex(GOLDEN_ROOT_HEX))[:7] + [NS]
                  + msgpack.unpackb(bytes.fromhex(GOLDEN_ROOT_HEX))[8:], use_bin_type=True),
])
def test_damaged_root_entries_are_corrupt(data):
    with pytest.raises(Corrupt):
        t.decode_root(data, D32, C32, 0, 0)


def test_encode_root_refuses_what_it_could_not_read():
    with pytest.raises(BadInput):
        t.encode_root(golden_root().with_(mode=0o17777))
    with pytest.raises(BadInput):
        t.encode_root(golden_root().with_(xattrs=((b"b", b""), (b"a", b""))))
    with pytest.raises(BadInput):
        t.encode_root(golden_root().with_(digest=None))  # the root must be a stored tree


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_root_entries(data):
    try:
        e = t.decode_root(data, D32, C32, 1, 2)
    except Corrupt:
        return
    assert e.kind == DIR and e.name == b""
    assert t.encode_root(e) == data


# -- link tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"",
    b"artfs-links-1",  # the prefix without its NUL
    b"artfs-links-2\0" + msgpack.packb([]),
    msgpack.packb([[L16, [[b"a"]]]], use_bin_type=True),  # no prefix
    t.LINKS_PREFIX + b"\xc1",
    t.LINKS_PREFIX + msgpack.packb(5),
    t.LINKS_PREFIX + msgpack.packb([[bytes(15), [[b"a"]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([["x" * 16, [[b"a"]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16, [[b".."]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16, [[b"a/b"]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16, [[b""]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16, [["a"]]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16, [b"ab"]]], use_bin_type=True),
    t.LINKS_PREFIX + msgpack.packb([[L16]], use_bin_type=True),
    bytes.fromhex(GOLDEN_LINKS_HEX)[:-1],
])
def test_damaged_link_tables_are_corrupt(data):
    with pytest.raises(Corrupt):
        t.decode_links(data)


@pytest.mark.parametrize("paths", [[[]], [[b"a"], []]])
def test_link_table_paths_name_something(paths):
    with pytest.raises(Corrupt):
        t.decode_links(t.LINKS_PREFIX + msgpack.packb([[L16, paths]], use_bin_type=True))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.binary(min_size=16, max_size=16),
                       st.lists(st.lists(names, min_size=1, max_size=3).map(tuple), min_size=2, max_size=4,
                                unique=True),
                       max_size=4))
def test_link_tables_round_trip(groups):
    data = t.encode_links(groups)
    assert t.decode_links(data) == {h: sorted(ps) for h, ps in groups.items()}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_link_tables(data):
    for d in (data, t.LINKS_PREFIX + data):
        try:
            t.decode_links(d)
        except Corrupt:
            pass


# -- chunk lists ---------------------------------------------------------------------------

def test_chunk_lists():
    assert [t.chunk_count(n) for n in (0, 1, t.CHUNK, t.CHUNK + 1, 3 * t.CHUNK)] == [0, 1, 1, 2, 3]
    assert t.decode_chunks(D32 + C32, 2 * t.CHUNK) == [D32, C32]
    for data, size in ((D32, 2 * t.CHUNK), (D32 + C32 + b"x", 2 * t.CHUNK), (D32 + C32, t.CHUNK)):
        with pytest.raises(Corrupt):
            t.decode_chunks(data, size)


# -- draft records -------------------------------------------------------------------------

draft_extra = dict(
    ctime_ns=times,
    nlink=st.integers(1, 2**31),
)


@st.composite
def draft_entries(draw):
    """What a draft records: a stored entry, a changed file (scratch), a materialized
    directory (dir_id), or a name of a hard-linked inode (link)."""
    e = draw(entries()).with_(**{k: draw(v) for k, v in draft_extra.items()})
    how = draw(st.sampled_from(["stored", "scratch", "dir", "link"]))
    if how == "scratch":
        e = e.with_(kind=FILE, digest=None, chunks=None, uri=None, target=None, ident=None, nfiles=0, rdev=0,
                    scratch=draw(st.text("0123456789abcdef", min_size=32, max_size=32)))
    elif how == "dir":
        e = e.with_(kind=DIR, digest=None, ident=None, nfiles=0, chunks=None, uri=None, target=None, rdev=0,
                    dir_id=draw(st.integers(1, 2**62)))
    elif how == "link":
        e = Entry(e.name, e.kind, link=draw(st.integers(16, 2**62)))
    return e


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(draft_entries())
def test_draft_records_round_trip(e):
    assert t.decode_rec(t.encode_rec(e), e.name) == e


def test_whiteout_record():
    assert t.encode_rec(None) == t.WHITEOUT
    assert t.decode_rec(t.WHITEOUT, b"x") is None


GOLDEN_REC_HEX = "89a16b01a16dcd01a4a17501a16702a17303a26d74920004a26174920005a26374920006a27363a3616263"


def test_draft_record_vector():
    """Drafts outlive upgrades (they sit in the database): records written now keep decoding."""
    e = Entry(b"n", FILE, 0o644, 1, 2, 3, 4, 5, scratch="abc", ctime_ns=6)
    assert t.encode_rec(e).hex() == GOLDEN_REC_HEX
    assert t.decode_rec(bytes.fromhex(GOLDEN_REC_HEX), b"n") == e


def _rec(**kw):
    d = {"k": FILE, "m": 0o644, "u": 0, "g": 0, "s": 5, "mt": [0, 0], "at": [0, 0], "ct": [0, 0], "d": H}
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return msgpack.packb(d, use_bin_type=True)


DAMAGED_RECS = {
    "empty": b"",
    "truncated": _rec()[:-1],
    "trailing bytes": _rec() + b"\x00",
    "not msgpack": b"\xc1",
    "a list": msgpack.packb([FILE, 0o644]),
    "an int": msgpack.packb(7),
    "0.1 whiteout": msgpack.packb([0]),
    "0.1 record": msgpack.packb([FILE, 0o644, 0, 0, 5, 0, "h", H], use_bin_type=True),
    "no kind": _rec(k=...),
    "no mode": _rec(m=...),
    "no times": _rec(mt=...),
    "kind 0": _rec(k=0),
    "kind 9": _rec(k=9),
    "kind str": _rec(k="1"),
    "mode too big": _rec(m=0o10000),
    "mode str": _rec(m="644"),
    "mtime one number": _rec(mt=5),
    "mtime three numbers": _rec(mt=[0, 0, 0]),
    "mtime ns 10**9": _rec(mt=[0, NS]),
    "atime ns negative": _rec(at=[0, -1]),
    "ctime float": _rec(ct=[0.5, 0]),
    "digest 31 bytes": _rec(d=H[:31]),
    "digest str": _rec(d="x" * 32),
    "chunks 31 bytes": _rec(ch=H[:31]),
    "hlid 15 bytes": _rec(hl=bytes(15)),
    "scratch bytes": _rec(d=..., sc=b"abc"),
    "dir id str": _rec(k=DIR, d=..., dir="1"),
    "link str": _rec(ln="5"),
    "file with neither digest nor scratch": _rec(d=...),
    "file with digest and scratch": _rec(sc="abc"),
    "dir with neither tree nor dir id": _rec(k=DIR, d=...),
    "dir with tree and dir id": _rec(k=DIR, dir=5),
    "xattrs not pairs": _rec(x=[b"user.a"]),
    "uri bytes": _rec(k=REF, uri=b"file:///x"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED_RECS))
def test_damaged_draft_records_are_corrupt(name):
    with pytest.raises(Corrupt):
        t.decode_rec(DAMAGED_RECS[name], b"x")


# records that decode into entries nothing else can use: they pass decode_rec and fail later
# with a TypeError/AttributeError (status, getattr) or BadInput at commit instead of Corrupt
# here, and fsck (which only decodes records) calls the draft sound.  See the report.
ACCEPTED_DAMAGED_RECS = {
    "uid str": _rec(u="x"),
    "size negative": _rec(s=-1),
    "gid beyond 32 bits": _rec(g=2**40),
    "file count str": _rec(k=DIR, d=..., dir=5, nf="x"),
    "rdev str": _rec(k=CHR, d=..., rd="q"),
    "nlink str": _rec(nl="x"),
    "xattr pair of ints": _rec(x=[[1, 2]]),
    "kind true": _rec(k=True),
    "symlink without target": _rec(k=SYMLINK, d=...),
    "reference without uri": _rec(k=REF),
    "stored dir without identity": _rec(k=DIR, d=H),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_DAMAGED_RECS))
def test_ill_typed_draft_records_are_corrupt(name):
    with pytest.raises(Corrupt):
        t.decode_rec(ACCEPTED_DAMAGED_RECS[name], b"x")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_draft_records_never_crash(data):
    try:
        t.decode_rec(data, b"x")
    except Corrupt:
        pass


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(draft_entries(), st.data())
def test_fuzz_mutated_draft_records_never_crash(e, data):
    try:
        t.decode_rec(_mutate(bytearray(t.encode_rec(e)), data), e.name)
    except Corrupt:
        pass


# -- path helpers ---------------------------------------------------------------------

def test_split_path():
    assert t.split_path("a/b/c") == (b"a", b"b", b"c")
    assert t.split_path(b"a/b") == (b"a", b"b")
    assert t.split_path("/a/b") == (b"a", b"b")  # relative to a version's root
    assert t.split_path("") == () == t.split_path("/") == t.split_path("//")
    assert t.split_path("caf\u00e9/\udcff") == ("caf\u00e9".encode(), b"\xff")  # surrogateescape round trip
    assert t.join_path((b"a", b"b")) == "a/b"
    assert t.join_path((b"\xff",)) == "\udcff"
    for bad in ("a/../b", "./a", "a/.", "..", ".", "a/\0", "a\0", "x" * 256, "a//b", "a/b//", "/a//", "//a//b"):
        with pytest.raises(BadInput):
            t.split_path(bad)
    with pytest.raises(BadInput):
        t.split_path("", allow_root=False)
    with pytest.raises(BadInput):
        t.split_path("/", allow_root=False)
    with pytest.raises(BadInput):
        t.split_path(5)


def test_trailing_slash_names_a_directory():
    assert t.split_path("a/b/") == (b"a", b"b")
    assert t.split_path(b"a/") == (b"a",)
    assert t.names_dir("a/b/") and t.names_dir(b"a/")
    assert not t.names_dir("a/b") and not t.names_dir(b"a")
    # the root is not "a name with a trailing slash"
    assert not t.names_dir("/") and not t.names_dir("") and not t.names_dir(b"//")


def test_check_name():
    assert t.check_name(b"a") == b"a"
    assert t.check_name(b"x" * 255) == b"x" * 255
    assert t.check_name(b"...") == b"..."
    for bad in (b"", b".", b"..", b"a/b", b"a\0", b"x" * 256, "a"):
        with pytest.raises(BadInput):
            t.check_name(bad)
