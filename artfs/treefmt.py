"""The on-disk format of trees: the only module that knows their bytes.

A tree object is one directory of a version::

    b"\\x01" + msgpack([entry, ...])        entries sorted by name (bytes), unique
    entry = [name: bin, kind: int, mode: int, uid: int, gid: int,
             size: int, mtime_ns: int, payload]
    payload:  FILE     bin32  BLAKE3 of the content (the blob's object name)
              DIR      [bin32 tree digest, bin32 identity digest, int files below]
                       (a DIR entry's size is the total bytes of the files below it,
                       so a version's counts follow from its root in O(1))
              SYMLINK  bin    link target
              REF      [bin32 content digest, str uri]   (not copied into the store)

The tree's object name is the BLAKE3 of exactly these bytes, so the encoding
is frozen by golden-vector tests (tests/test_treefmt.py): change it only with
a new format byte.

A directory's *identity* is what decides "same content" between versions:
names, kinds, executable bits and content digests, not mtimes, owners or
other mode bits.  It is stored beside the tree digest in the parent's entry
(and for the root in the version row) so that checking a commit for "no
change" costs nothing extra.

Write ordering (restic's rule, kept by repo.py): blobs durable -> trees
durable -> version row.  A tree is written only after every object it names.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, replace

import blake3
import msgpack

from .errors import BadInput, Corrupt

FORMAT = 1
FORMAT_BYTE = bytes([FORMAT])
IDENT_PREFIX = b"artfs-ident-1\0"

FILE, DIR, SYMLINK, REF = 1, 2, 3, 4
KINDS = (FILE, DIR, SYMLINK, REF)
KIND_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", REF: "reference"}

DIGEST_LEN = 32
MAX_NAME = 255
MAX_TARGET = 4096
MAX_TREE_BYTES = 512 * 1024 * 1024
MAX_ENTRIES = 16 * 1024 * 1024
MAX_URI = 4096
_U32 = 2**32 - 1
_I64 = 2**63 - 1


def check_name(name: bytes) -> bytes:
    """Validate one path component; raise BadInput with the reason."""
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


def split_path(path: str | bytes) -> tuple[bytes, ...]:
    """'a/b/c' -> (b'a', b'b', b'c'); leading/trailing slashes ignored; each part validated."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    if b"\0" in path:
        raise BadInput(f"path contains NUL: {path!r}")
    parts = tuple(p for p in path.split(b"/") if p)
    for p in parts:
        check_name(p)
    return parts


def join_path(parts) -> str:
    return b"/".join(parts).decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory of a version (immutable)."""

    name: bytes
    kind: int
    mode: int  # permission bits only (07777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    digest: bytes | None = None  # FILE/REF: content; DIR: tree object
    ident: bytes | None = None  # DIR: identity of the subtree
    target: bytes | None = None  # SYMLINK
    uri: str | None = None  # REF
    nfiles: int = 0  # DIR: files (and references) below

    def with_(self, **kw) -> "Entry":
        return replace(self, **kw)

    @property
    def executable(self) -> bool:
        return self.kind in (FILE, REF) and bool(self.mode & 0o111)

    @property
    def st_mode(self) -> int:
        fmt = {FILE: stat.S_IFREG, REF: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}[self.kind]
        return fmt | self.mode

    def content_id(self) -> bytes:
        """What identity compares for this entry (see module doc)."""
        if self.kind == DIR:
            return self.ident
        if self.kind == SYMLINK:
            return self.target
        if self.kind == REF:
            return self.digest + self.uri.encode()
        return self.digest

    def same_content(self, other: "Entry | None") -> bool:
        return (
            other is not None
            and other.kind == self.kind
            and other.executable == self.executable
            and other.content_id() == self.content_id()
        )


def _payload(e: Entry):
    if e.kind == FILE:
        return e.digest
    if e.kind == DIR:
        return [e.digest, e.ident, e.nfiles]
    if e.kind == SYMLINK:
        return e.target
    return [e.digest, e.uri]


def encode_tree(entries) -> bytes:
    """Canonical bytes of a directory.  ``entries`` in any order; names must be unique.

    Every entry is checked with the same rules as :func:`decode_tree` (BadInput
    on a violation), so nothing undecodable is ever written into a store.
    """
    ents = sorted(entries, key=lambda e: e.name)
    for a, b in zip(ents, ents[1:]):
        if a.name == b.name:
            raise BadInput(f"duplicate name in tree: {a.name!r}")
    rows = [[e.name, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns, _payload(e)] for e in ents]
    for row in rows:
        _check_row(row, _refuse)
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


def _digest(v, what, fail=_bad):
    if type(v) is not bytes or len(v) != DIGEST_LEN:
        fail(f"{what} is not a {DIGEST_LEN}-byte digest")
    return v


def _check_row(row, fail) -> None:
    """Validate one ``[name, kind, mode, uid, gid, size, mtime, payload]`` row; ``fail(why)`` raises."""
    if type(row) is not list or len(row) != 8:
        fail("entry is not an 8-element array")
    name, kind, mode, uid, gid, size, mtime, payload = row
    if not (type(name) is bytes and 0 < len(name) <= MAX_NAME and b"/" not in name and b"\0" not in name
            and name != b"." and name != b".."):  # fast path; check_name says why
        if type(name) is not bytes:
            fail("name is not binary")
        try:
            check_name(name)
        except BadInput as exc:
            fail(str(exc))
    if type(kind) is not int or kind not in KINDS:
        fail(f"unknown kind {kind!r}")
    if not (type(mode) is int and type(uid) is int and type(gid) is int and type(size) is int and type(mtime) is int
            and 0 <= mode <= 0o7777 and 0 <= uid <= _U32 and 0 <= gid <= _U32 and 0 <= size <= _I64
            and -_I64 - 1 <= mtime <= _I64):  # fast path; the checks below say which
        _int(mode, 0, 0o7777, "mode", fail)
        _int(uid, 0, _U32, "uid", fail)
        _int(gid, 0, _U32, "gid", fail)
        _int(size, 0, _I64, "size", fail)
        _int(mtime, -_I64 - 1, _I64, "mtime", fail)
    if kind == FILE:
        if type(payload) is not bytes or len(payload) != DIGEST_LEN:
            _digest(payload, "file digest", fail)
    elif kind == DIR:
        if type(payload) is not list or len(payload) != 3:
            fail("dir payload")
        _digest(payload[0], "tree digest", fail)
        _digest(payload[1], "identity digest", fail)
        _int(payload[2], 0, _I64, "file count", fail)
    elif kind == SYMLINK:
        if type(payload) is not bytes or not payload or b"\0" in payload or len(payload) > MAX_TARGET:
            fail("symlink target")
    else:
        if type(payload) is not list or len(payload) != 2 or type(payload[1]) is not str:
            fail("reference payload")
        _digest(payload[0], "reference digest", fail)
        try:
            if len(payload[1].encode("utf-8")) > MAX_URI:
                fail("reference uri too long")
        except UnicodeEncodeError:
            fail("reference uri is not UTF-8")


def _entry_of(row) -> Entry:
    """The Entry of a row that passed :func:`_check_row`."""
    name, kind, mode, uid, gid, size, mtime, p = row
    if kind == FILE:
        return Entry(name, kind, mode, uid, gid, size, mtime, digest=p)
    if kind == DIR:
        return Entry(name, kind, mode, uid, gid, size, mtime, digest=p[0], ident=p[1], nfiles=p[2])
    if kind == SYMLINK:
        return Entry(name, kind, mode, uid, gid, size, mtime, target=p)
    return Entry(name, kind, mode, uid, gid, size, mtime, digest=p[0], uri=p[1])


def decode_tree(data: bytes) -> list[Entry]:
    """Strictly decode a tree object; any deviation from canonical form is Corrupt."""
    if len(data) > MAX_TREE_BYTES:
        _bad("too large")
    if not data or data[:1] != FORMAT_BYTE:
        _bad(f"unknown format byte {data[:1]!r}")
    body = data[1:]
    try:
        rows = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_URI,
            max_bin_len=MAX_TARGET,
            max_array_len=min(MAX_ENTRIES, len(body)),  # every element takes at least one byte
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for hostile input
        raise Corrupt(f"malformed tree: {type(exc).__name__}: {exc}") from None
    if type(rows) is not list:
        _bad("not an array")
    out: list[Entry] = []
    prev = None
    for row in rows:
        _check_row(row, _bad)
        if prev is not None and row[0] <= prev:
            _bad(f"entries not sorted/unique at {row[0]!r}")
        prev = row[0]
        out.append(_entry_of(row))
    # one content, one byte string: a wider int or str header than msgpack's
    # shortest form would decode the same but name a different object
    if msgpack.packb(rows, use_bin_type=True) != body:
        _bad("not in canonical form")
    return out


EMPTY_TREE = encode_tree([])
EMPTY_TREE_DIGEST = blake3.blake3(EMPTY_TREE).digest()
EMPTY_IDENT = tree_identity([])
