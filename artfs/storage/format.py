"""The on-disk formats: the only module that knows the bytes of trees, link tables,
chunk lists and draft records, and the one place that defines an entry and when two
entries have the same content.

Tree object (format 2, written by this version)::

    b"\\x02" + msgpack([row, ...])          rows sorted by name (bytes), names unique
    row = [name: bin, kind: int, mode: int, uid: int, gid: int, size: int,
           mtime_s: int, mtime_ns: int, atime_s: int, atime_ns: int,
           payload, xattrs, hlid]
    payload:  FILE     [bin32 content digest, bin32 chunk-list digest | nil]
              DIR      [bin32 tree digest, bin32 identity digest, int files below]
              SYMLINK  bin target
              REF      [bin32 content digest, str uri, bin32 chunk-list digest | nil]
              FIFO, SOCK  nil
              CHR, BLK    int rdev
    xattrs:   [[bin name, bin value], ...] sorted by name, unique ([] when none)
    hlid:     bin16 hard-link group id | nil (entries of one version with the same
              hlid are one inode; the version's link table counts them)

Times are seconds (signed 64-bit) plus nanoseconds, so the kernel's whole range is
covered (a single int64 of nanoseconds ends in 2262).  A DIR entry's size is the total
bytes of the files below it and its payload carries the number of files below, so a
version's counts follow from its root in O(1).

Format 1 (artfs 0.1: 8-element rows without atime, xattrs, hlid and chunk lists) is
still decoded, so stores made by 0.1 stay readable; it is never written.

The tree's object name is the BLAKE3 of exactly these bytes, so the encoding is frozen
by golden-vector tests (tests/test_format.py): change it only with a new format byte.

A directory's *identity* decides "same content" between versions: names, kinds,
executable bits and content (digests, symlink targets, device numbers), not times,
owners, other mode bits, xattrs or hard-link groups.  :func:`content_key` is the one
rule, used by trees, drafts, diff and collaborative conflicts alike.

Chunk list: for a file larger than :data:`CHUNK`, the concatenated BLAKE3 digests of
its CHUNK-sized pieces, stored as an object and named in the entry.  Readers verify
every piece they read against it (the tree authenticates the list, the list each
piece), so no byte is served unverified and no read needs the whole file.

Write ordering (restic's rule, kept by the repo layer): blobs durable -> trees durable
-> version row.  A tree is written only after every object it names is durable.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, replace

import blake3
import msgpack

from ..errors import BadInput, Corrupt

FORMAT = 2
FORMAT_BYTE = bytes([FORMAT])
FORMAT1_BYTE = b"\x01"
IDENT_PREFIX = b"artfs-ident-1\0"
LINKS_PREFIX = b"artfs-links-1\0"

FILE, DIR, SYMLINK, REF, FIFO, CHR, BLK, SOCK = 1, 2, 3, 4, 5, 6, 7, 8
KINDS = (FILE, DIR, SYMLINK, REF, FIFO, CHR, BLK, SOCK)
KIND_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", REF: "reference", FIFO: "fifo", CHR: "chardev",
              BLK: "blockdev", SOCK: "socket"}
SPECIAL = (FIFO, CHR, BLK, SOCK)
FMT_OF = {FILE: stat.S_IFREG, REF: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO,
          CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, SOCK: stat.S_IFSOCK}
KIND_OF_FMT = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO,
               stat.S_IFCHR: CHR, stat.S_IFBLK: BLK, stat.S_IFSOCK: SOCK}

CHUNK = 1 << 20  # bytes per verified piece of a large file
DIGEST_LEN = 32
HLID_LEN = 16
MAX_NAME = 255
MAX_TARGET = 4096
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024
MAX_XATTRS = 1024
MAX_TREE_BYTES = 512 * 1024 * 1024
MAX_ENTRIES = 16 * 1024 * 1024
MAX_URI = 4096
NS = 1_000_000_000
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I64 = 2**63 - 1


# -- names and paths ------------------------------------------------------------------

def check_name(name: bytes) -> bytes:
    """Validate one path component (any bytes but '/' and NUL, 1..255, not . or ..)."""
    if not isinstance(name, bytes):
        raise BadInput(f"name must be bytes, got {type(name).__name__}")
    if not name:
        raise BadInput("empty name")
    if len(name) > MAX_NAME:
        raise BadInput(f"name longer than {MAX_NAME} bytes: {name[:40]!r}...")
    if b"/" in name:
        raise BadInput(f"name contains '/': {name!r}")
    if b"\0" in name:
        raise BadInput(f"name contains NUL: {name!r}")
    if name in (b".", b".."):
        raise BadInput(f"name is {name.decode()!r}")
    return name


def split_path(path: "str | bytes", allow_root: bool = True) -> tuple[bytes, ...]:
    """'a/b/c' -> (b'a', b'b', b'c').  Leading slashes are ignored (paths are relative to a
    version's root) and one trailing slash is allowed (it names a directory: see
    :func:`names_dir`); an empty component, '.' or '..' are refused."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    if not isinstance(path, bytes):
        raise BadInput(f"a path must be text or bytes, got {type(path).__name__}")
    if b"\0" in path:
        raise BadInput(f"path contains NUL: {path!r}")
    body = path.lstrip(b"/")
    if body.endswith(b"/"):
        body = body[:-1]
    if not body:
        if not allow_root:
            raise BadInput(f"empty path {path!r}")
        return ()
    parts = tuple(body.split(b"/"))
    for p in parts:
        check_name(p)
    return parts


def names_dir(path: "str | bytes") -> bool:
    """Whether a path ends with '/' (so it must name a directory, as for the kernel)."""
    return (path.endswith("/") if isinstance(path, str) else path.endswith(b"/")) and bool(path.strip("/" if isinstance(path, str) else b"/"))


def join_path(parts) -> str:
    return b"/".join(parts).decode("utf-8", "surrogateescape")


def ns_split(t: int) -> tuple[int, int]:
    return t // NS, t % NS


# -- the entry ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory of a version or a draft (immutable).

    The fields below the line are a draft's own: they never reach a tree."""

    name: bytes
    kind: int
    mode: int = 0o644  # permission bits only (07777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    digest: bytes | None = None  # FILE/REF: content; DIR: tree object
    chunks: bytes | None = None  # FILE/REF larger than CHUNK: chunk-list object
    ident: bytes | None = None  # DIR: identity of the subtree
    nfiles: int = 0  # DIR: files (and references) below
    target: bytes | None = None  # SYMLINK
    uri: str | None = None  # REF
    rdev: int = 0  # CHR/BLK
    xattrs: tuple = ()  # ((name, value), ...) sorted by name
    hlid: bytes | None = None  # hard-link group within a version
    # -- draft only --
    scratch: str | None = None  # FILE whose bytes are in a scratch file of the draft
    dir_id: int | None = None  # DIR materialized in a draft (its inode number)
    ctime_ns: int = 0  # last change of the inode (drafts keep it; versions show mtime)
    link: int | None = None  # a name of the draft's hard-linked inode ``link``
    nlink: int = 1  # names of a hard-linked inode (drafts)

    def with_(self, **kw) -> "Entry":
        return replace(self, **kw)

    @property
    def executable(self) -> bool:
        return self.kind in (FILE, REF) and bool(self.mode & 0o111)

    @property
    def st_mode(self) -> int:
        return FMT_OF[self.kind] | self.mode

    @property
    def is_file(self) -> bool:
        return self.kind in (FILE, REF)

    def content_id(self) -> bytes:
        """What identity compares for this entry.  A draft's scratch file has none yet:
        resolve it to a digest first (Draft.resolved)."""
        if self.kind == DIR:
            return self.ident
        if self.kind == SYMLINK:
            return self.target
        if self.kind == REF:
            return self.digest + self.uri.encode()
        if self.kind in (CHR, BLK):
            return self.rdev.to_bytes(8, "big")
        if self.kind in (FIFO, SOCK):
            return b""
        if self.digest is None:
            raise BadInput("content of a changed file is not known until it is hashed")
        return self.digest


def content_key(e: "Entry | None"):
    """The one "same content" rule: kind, executable bit and content id."""
    if e is None:
        return None
    return (e.kind, e.executable, e.content_id())


def same_content(a: "Entry | None", b: "Entry | None") -> bool:
    return content_key(a) == content_key(b)


def xattr_tuple(pairs) -> tuple:
    """Sorted, validated ((name, value), ...) from any iterable of pairs or a dict."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out = sorted((bytes(k), bytes(v)) for k, v in items)
    for (a, _), (b, _) in zip(out, out[1:]):
        if a == b:
            raise BadInput(f"duplicate xattr {a!r}")
    for k, v in out:
        if not k or len(k) > MAX_XATTR_NAME or b"\0" in k:
            raise BadInput(f"bad xattr name {k!r}")
        if len(v) > MAX_XATTR_VALUE:
            raise BadInput(f"xattr value longer than {MAX_XATTR_VALUE} bytes: {k!r}")
    if len(out) > MAX_XATTRS:
        raise BadInput("too many xattrs")
    return tuple(out)


# -- trees ----------------------------------------------------------------------------

def _payload(e: Entry):
    k = e.kind
    if k == FILE:
        return [e.digest, e.chunks]
    if k == DIR:
        return [e.digest, e.ident, e.nfiles]
    if k == SYMLINK:
        return e.target
    if k == REF:
        return [e.digest, e.uri, e.chunks]
    if k in (CHR, BLK):
        return e.rdev
    return None


def entry_row(e: Entry) -> list:
    ms, mn = ns_split(e.mtime_ns)
    as_, an = ns_split(e.atime_ns)
    return [e.name, e.kind, e.mode, e.uid, e.gid, e.size, ms, mn, as_, an, _payload(e),
            [[k, v] for k, v in e.xattrs], e.hlid]


def encode_tree(entries) -> bytes:
    """Canonical bytes of a directory.  ``entries`` in any order; names must be unique.

    Every entry is checked with the same rules as :func:`decode_tree` (BadInput on a
    violation), so nothing undecodable is ever written into a store."""
    ents = sorted(entries, key=lambda e: e.name)
    for a, b in zip(ents, ents[1:]):
        if a.name == b.name:
            raise BadInput(f"duplicate name in tree: {a.name!r}")
    rows = []
    for e in ents:
        if e.scratch is not None or e.dir_id is not None or e.link is not None:
            raise BadInput(f"draft entry {e.name!r} cannot be written into a tree")
        row = entry_row(e)
        _check_row(row, _refuse)
        rows.append(row)
    return FORMAT_BYTE + msgpack.packb(rows, use_bin_type=True)


def tree_identity(entries) -> bytes:
    """Identity digest of a directory (names, kinds, exec bits, content ids)."""
    ents = sorted(entries, key=lambda e: e.name)
    rows = [[e.name, e.kind, e.executable, e.content_id()] for e in ents]
    return blake3.blake3(IDENT_PREFIX + msgpack.packb(rows, use_bin_type=True)).digest()


def _bad(why: str):
    raise Corrupt(f"malformed tree: {why}")


def _refuse(why: str):
    raise BadInput(f"cannot encode tree entry: {why}")


def _int(v, lo, hi, what, fail=_bad):
    if type(v) is not int or not lo <= v <= hi:
        fail(f"{what} out of range: {v!r}")
    return v


def _digest(v, what, fail=_bad, optional=False):
    if optional and v is None:
        return v
    if type(v) is not bytes or len(v) != DIGEST_LEN:
        fail(f"{what} is not a {DIGEST_LEN}-byte digest")
    return v


def _check_name_in_row(name, fail) -> None:
    if not (type(name) is bytes and 0 < len(name) <= MAX_NAME and b"/" not in name and b"\0" not in name
            and name != b"." and name != b".."):  # fast path; check_name says why
        if type(name) is not bytes:
            fail("name is not binary")
        try:
            check_name(name)
        except BadInput as exc:
            fail(str(exc))


def _check_common(mode, uid, gid, size, fail) -> None:
    if not (type(mode) is int and type(uid) is int and type(gid) is int and type(size) is int
            and 0 <= mode <= 0o7777 and 0 <= uid <= _U32 and 0 <= gid <= _U32 and 0 <= size <= _I64):
        _int(mode, 0, 0o7777, "mode", fail)
        _int(uid, 0, _U32, "uid", fail)
        _int(gid, 0, _U32, "gid", fail)
        _int(size, 0, _I64, "size", fail)


def _check_payload(kind, payload, fail) -> None:
    if type(kind) is not int or kind not in KINDS:
        fail(f"unknown kind {kind!r}")
    if kind == FILE:
        if type(payload) is not list or len(payload) != 2:
            fail("file payload")
        _digest(payload[0], "file digest", fail)
        _digest(payload[1], "chunk-list digest", fail, optional=True)
    elif kind == DIR:
        if type(payload) is not list or len(payload) != 3:
            fail("dir payload")
        _digest(payload[0], "tree digest", fail)
        _digest(payload[1], "identity digest", fail)
        _int(payload[2], 0, _I64, "file count", fail)
    elif kind == SYMLINK:
        if type(payload) is not bytes or not payload or b"\0" in payload or len(payload) > MAX_TARGET:
            fail("symlink target")
    elif kind == REF:
        if type(payload) is not list or len(payload) != 3 or type(payload[1]) is not str:
            fail("reference payload")
        _digest(payload[0], "reference digest", fail)
        _digest(payload[2], "chunk-list digest", fail, optional=True)
        try:
            if len(payload[1].encode("utf-8")) > MAX_URI:
                fail("reference uri too long")
        except UnicodeEncodeError:
            fail("reference uri is not UTF-8")
    elif kind in (CHR, BLK):
        _int(payload, 0, _U64, "rdev", fail)
    elif payload is not None:
        fail("special file payload")


def _check_row(row, fail) -> None:
    """Validate one format-2 row; ``fail(why)`` raises."""
    if type(row) is not list or len(row) != 13:
        fail("entry is not a 13-element array")
    name, kind, mode, uid, gid, size, ms, mn, as_, an, payload, xattrs, hlid = row
    _check_name_in_row(name, fail)
    _check_common(mode, uid, gid, size, fail)
    for v, what in ((ms, "mtime"), (as_, "atime")):
        _int(v, -_I64 - 1, _I64, what, fail)
    for v, what in ((mn, "mtime ns"), (an, "atime ns")):
        _int(v, 0, NS - 1, what, fail)
    _check_payload(kind, payload, fail)
    if type(xattrs) is not list or len(xattrs) > MAX_XATTRS:
        fail("xattrs")
    prev = None
    for x in xattrs:
        if (type(x) is not list or len(x) != 2 or type(x[0]) is not bytes or type(x[1]) is not bytes
                or not x[0] or len(x[0]) > MAX_XATTR_NAME or b"\0" in x[0] or len(x[1]) > MAX_XATTR_VALUE):
            fail("xattr")
        if prev is not None and x[0] <= prev:
            fail("xattrs not sorted/unique")
        prev = x[0]
    if hlid is not None and (type(hlid) is not bytes or len(hlid) != HLID_LEN):
        fail("hard-link id")


def _entry_of(row) -> Entry:
    """The Entry of a format-2 row that passed :func:`_check_row`."""
    name, kind, mode, uid, gid, size, ms, mn, as_, an, p, xattrs, hlid = row
    base = dict(name=name, kind=kind, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=ms * NS + mn,
                atime_ns=as_ * NS + an, xattrs=tuple((k, v) for k, v in xattrs), hlid=hlid)
    if kind == FILE:
        return Entry(**base, digest=p[0], chunks=p[1])
    if kind == DIR:
        return Entry(**base, digest=p[0], ident=p[1], nfiles=p[2])
    if kind == SYMLINK:
        return Entry(**base, target=p)
    if kind == REF:
        return Entry(**base, digest=p[0], uri=p[1], chunks=p[2])
    if kind in (CHR, BLK):
        return Entry(**base, rdev=p)
    return Entry(**base)


def _check_row1(row, fail) -> None:
    """A format-1 row: [name, kind, mode, uid, gid, size, mtime_ns, payload]."""
    if type(row) is not list or len(row) != 8:
        fail("entry is not an 8-element array")
    name, kind, mode, uid, gid, size, mtime, payload = row
    _check_name_in_row(name, fail)
    _check_common(mode, uid, gid, size, fail)
    _int(mtime, -_I64 - 1, _I64, "mtime", fail)
    if kind == FILE:
        _digest(payload, "file digest", fail)
    elif kind == REF:
        if type(payload) is not list or len(payload) != 2 or type(payload[1]) is not str:
            fail("reference payload")
        _digest(payload[0], "reference digest", fail)
    elif kind in (DIR, SYMLINK):
        _check_payload(kind, payload, fail)
    else:
        fail(f"unknown kind {kind!r}")


def _entry_of1(row) -> Entry:
    name, kind, mode, uid, gid, size, mtime, p = row
    base = dict(name=name, kind=kind, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime, atime_ns=mtime)
    if kind == FILE:
        return Entry(**base, digest=p)
    if kind == DIR:
        return Entry(**base, digest=p[0], ident=p[1], nfiles=p[2])
    if kind == SYMLINK:
        return Entry(**base, target=p)
    return Entry(**base, digest=p[0], uri=p[1])


def _unpack(body: bytes, what: str, max_str=MAX_URI, max_bin=MAX_XATTR_VALUE):
    try:
        return msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=True, max_str_len=max_str, max_bin_len=max_bin,
            max_array_len=min(MAX_ENTRIES, len(body)),  # every element takes at least one byte
            max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for hostile input
        raise Corrupt(f"malformed {what}: {type(exc).__name__}: {exc}") from None


def decode_tree(data: bytes) -> list[Entry]:
    """Strictly decode a tree object; any deviation from canonical form is Corrupt."""
    if len(data) > MAX_TREE_BYTES:
        _bad("too large")
    head = data[:1]
    if head == FORMAT_BYTE:
        check, make = _check_row, _entry_of
    elif head == FORMAT1_BYTE:
        check, make = _check_row1, _entry_of1
    else:
        _bad(f"unknown format byte {head!r}")
    body = data[1:]
    rows = _unpack(body, "tree")
    if type(rows) is not list:
        _bad("not an array")
    out: list[Entry] = []
    prev = None
    for row in rows:
        check(row, _bad)
        if prev is not None and row[0] <= prev:
            _bad(f"entries not sorted/unique at {row[0]!r}")
        prev = row[0]
        out.append(make(row))
    # one content, one byte string: a wider int or str header than msgpack's shortest
    # form would decode the same but name a different object
    if msgpack.packb(rows, use_bin_type=True) != body:
        _bad("not in canonical form")
    return out


EMPTY_TREE = encode_tree([])
EMPTY_TREE_DIGEST = blake3.blake3(EMPTY_TREE).digest()
EMPTY_IDENT = tree_identity([])


# -- a version's root entry (kept in the version row) ----------------------------------

def encode_root(e: Entry) -> bytes:
    """The root directory's own metadata (mode, owner, times, xattrs) as stored beside a
    version: a format-2 row with an empty name."""
    row = entry_row(e.with_(name=b"x", kind=DIR))
    _check_row(row, _refuse)
    row[0] = b""
    return msgpack.packb(row, use_bin_type=True)


def decode_root(data: bytes | None, tree: bytes, ident: bytes, nfiles: int, size: int) -> Entry:
    """The root Entry of a version (``data`` None: a version made by artfs 0.1)."""
    if data is None:
        return Entry(b"", DIR, 0o755, 0, 0, size, 0, 0, digest=tree, ident=ident, nfiles=nfiles)
    row = _unpack(data, "root entry")
    if type(row) is not list or len(row) != 13 or row[0] != b"":
        raise Corrupt("malformed root entry")
    row[0] = b"x"
    _check_row(row, _bad)
    return _entry_of(row).with_(name=b"", digest=tree, ident=ident, nfiles=nfiles, size=size)


# -- link tables ------------------------------------------------------------------------

def encode_links(groups: dict[bytes, list[tuple[bytes, ...]]]) -> bytes:
    """A version's hard-link table: hlid -> the paths of its names (each a tuple of
    components).  Stored as an object named in the version row."""
    rows = [[h, [list(p) for p in sorted(paths)]] for h, paths in sorted(groups.items())]
    return LINKS_PREFIX + msgpack.packb(rows, use_bin_type=True)


def decode_links(data: bytes) -> dict[bytes, list[tuple[bytes, ...]]]:
    if not data.startswith(LINKS_PREFIX):
        raise Corrupt("malformed link table")
    rows = _unpack(data[len(LINKS_PREFIX):], "link table", max_bin=MAX_NAME)
    out: dict[bytes, list[tuple[bytes, ...]]] = {}
    try:
        for h, paths in rows:
            if type(h) is not bytes or len(h) != HLID_LEN:
                raise ValueError("hlid")
            if type(paths) is not list or not paths:
                raise ValueError("a group with no names")
            out[h] = [tuple(check_name(c) for c in p) for p in paths]
            if any(not p for p in out[h]):
                raise ValueError("an empty path")
    except (ValueError, TypeError, BadInput) as exc:
        raise Corrupt(f"malformed link table: {exc}") from None
    return out


# -- chunk lists -----------------------------------------------------------------------

def chunk_count(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


def decode_chunks(data: bytes, size: int) -> list[bytes]:
    n = chunk_count(size)
    if len(data) != n * DIGEST_LEN:
        raise Corrupt(f"chunk list has {len(data)} bytes for {n} chunks")
    return [data[i:i + DIGEST_LEN] for i in range(0, len(data), DIGEST_LEN)]


# -- draft records (rows of the metadata store, not content-addressed) --------------------

WHITEOUT = msgpack.packb({"w": 1})


def _t(ns: int) -> list:
    return list(ns_split(ns))


def encode_rec(e: Entry | None) -> bytes:
    """A draft's record of one name (None: a whiteout hiding a name of the base tree)."""
    if e is None:
        return WHITEOUT
    d = {"k": e.kind, "m": e.mode, "u": e.uid, "g": e.gid, "s": e.size, "mt": _t(e.mtime_ns),
         "at": _t(e.atime_ns), "ct": _t(e.ctime_ns)}
    for key, v in (("d", e.digest), ("ch", e.chunks), ("id", e.ident), ("t", e.target), ("uri", e.uri),
                   ("hl", e.hlid), ("sc", e.scratch), ("dir", e.dir_id), ("ln", e.link)):
        if v is not None:
            d[key] = v
    if e.nfiles:
        d["nf"] = e.nfiles
    if e.rdev:
        d["rd"] = e.rdev
    if e.xattrs:
        d["x"] = [[k, v] for k, v in e.xattrs]
    if e.nlink != 1:
        d["nl"] = e.nlink
    return msgpack.packb(d, use_bin_type=True)


def decode_rec(data: bytes, name: bytes = b"") -> Entry | None:
    """A draft record (None for a whiteout); a damaged record is Corrupt, never a crash."""
    try:
        d = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if type(d) is not dict:
            raise ValueError("not a map")
        if d.get("w") == 1:
            return None

        def tm(key):
            s, n = d[key]
            if type(s) is not int or type(n) is not int or not 0 <= n < NS:
                raise ValueError(key)
            return s * NS + n

        def opt(key, typ, size=None):
            v = d.get(key)
            if v is not None and (type(v) is not typ or (size is not None and len(v) != size)):
                raise ValueError(key)
            return v

        def num(key, lo, hi, default=None):
            v = d.get(key, default)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{key}={v!r}")
            return v

        num("k", 1, 8)
        num("m", 0, 0o7777)
        num("u", 0, _U32)
        num("g", 0, _U32)
        num("s", 0, _I64)
        num("nf", 0, _I64, 0)
        num("rd", 0, _U64, 0)
        num("nl", 0, _U32, 1)
        e = Entry(
            name, d["k"], d["m"], d["u"], d["g"], d["s"], tm("mt"), tm("at"),
            digest=opt("d", bytes, DIGEST_LEN), chunks=opt("ch", bytes, DIGEST_LEN), ident=opt("id", bytes, DIGEST_LEN),
            nfiles=d.get("nf", 0), target=opt("t", bytes), uri=opt("uri", str), rdev=d.get("rd", 0),
            xattrs=tuple((bytes(k), bytes(v)) for k, v in d.get("x", ())), hlid=opt("hl", bytes, HLID_LEN),
            scratch=opt("sc", str), dir_id=opt("dir", int), ctime_ns=tm("ct"), link=opt("ln", int),
            nlink=d.get("nl", 1),
        )
        if e.link is None:  # a name of a hard-linked inode carries nothing else
            if e.kind == DIR and (e.dir_id is None) == (e.digest is None):
                raise ValueError("a directory record needs a tree or a dir id")
            if e.kind == DIR and e.digest is not None and e.ident is None:
                raise ValueError("a stored directory record needs its identity")
            if e.kind == FILE and (e.scratch is None) == (e.digest is None):
                raise ValueError("a file record needs a digest or a scratch file")
            if e.kind == SYMLINK and (not e.target or b"\0" in e.target or len(e.target) > MAX_TARGET):
                raise ValueError("a symlink record needs a target")
            if e.kind == REF and (e.digest is None or not e.uri):
                raise ValueError("a reference record needs a digest and a uri")
        for k, v in e.xattrs:
            if not k or len(k) > MAX_XATTR_NAME or b"\0" in k or len(v) > MAX_XATTR_VALUE:
                raise ValueError("xattr")
    except Corrupt:
        raise
    except Exception as exc:  # msgpack and unpacking raise many types for damaged bytes
        raise Corrupt(f"damaged draft record: {type(exc).__name__}: {exc}") from None
    return e
