"""Collaborative versions: many writers upsert into one pending version, one finish seals it.

DESIGN.md §6.  A writer is one draft (an ``Artifact`` object, a draft mount,
or one ``artfs put --distributed-id`` of one directory).  Its contribution is
its draft's changes against the draft's parent, flattened to paths:

* a file, symlink or reference that is new or changed: its entry;
* an empty new directory: the directory;
* a removed path (only the topmost removed one): a whiteout.

Conflicts (DESIGN.md §6): another writer already set the same path to other
content (kind, exec bit or digest differ), or one writer's path lies inside
another writer's file, removal or non-directory.  The check and the
replacement of the writer's earlier rows are one transaction (meta_pending).

Write ordering is the usual one: every object a contribution names is
durable (``objects.sync``) before its rows are recorded, under
``store.writing()`` so gc cannot collect them in between.
"""
from __future__ import annotations

import os
import time

import msgpack

from . import treefmt
from .diff import diff_items, tree_children
from .draft import WHITEOUT_REC, DEntry, Draft
from .errors import BadInput
from .treefmt import DIR, Entry


def distributed_id(did: str | None) -> str:
    did = did or os.environ.get("ARTFS_GROUP")
    if not did:
        raise BadInput("no distributed id: pass --distributed-id (distributed_id=) or set ARTFS_GROUP")
    if len(did) > 256 or "\0" in did or "\n" in did:
        raise BadInput(f"bad distributed id {did!r}")
    return did


def _kind(rec: bytes) -> int:
    return msgpack.unpackb(rec)[0]


def same_content(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    x, y = DEntry.decode(a), DEntry.decode(b)
    if x is None or y is None:
        return x is None and y is None
    if x.kind != y.kind or x.executable != y.executable:
        return False
    if x.kind == DIR:
        return True
    return (x.digest, x.target, x.uri) == (y.digest, y.target, y.uri)


def is_dir(rec: bytes) -> bool:
    return _kind(rec) == DIR


def contribution(store, draft: Draft) -> tuple[dict[bytes, bytes], dict]:
    """Build the draft's objects; return ({path: rec}, scratch files built).  Caller holds writing()."""
    root, done = draft.build()
    store.objects.sync()
    ch = tree_children(store)
    base = ("t", draft.base_root)
    rows: dict[bytes, bytes] = {}
    removed: list[bytes] = []
    for code, path in diff_items(ch, base, ch, ("t", root.digest)):
        p = path.encode("utf-8", "surrogateescape")
        if code == "D":
            if not any(p.startswith(r + b"/") for r in removed):
                removed.append(p)
                rows.setdefault(p, WHITEOUT_REC)
            continue
        e = _lookup(store, root, p)
        if e.kind == DIR:
            if e.digest == treefmt.EMPTY_TREE_DIGEST:
                rows[p] = DEntry.of(e).encode()
        else:
            rows[p] = DEntry.of(e).encode()
    return rows, done


def _lookup(store, root: Entry, path: bytes) -> Entry:
    e = root
    for comp in path.split(b"/"):
        e = store.tree_map(e.digest)[comp]
    return e


def upsert(store, draft: Draft, did: str, writer: str, label: str) -> dict:
    """Merge this writer's changes into the pending version (replacing its earlier ones)."""
    did = distributed_id(did)
    with store.writing():
        rows, done = contribution(store, draft)
        try:
            p = store.meta.upsert_rows(draft.artifact, draft.type, did, draft.parent,
                                       draft.base_root.hex() if draft.base_root else None,
                                       writer, label, rows, same_content, is_dir)
        except BaseException:
            draft.unshare()  # scratch files hard-linked by build() must not stay shared with objects
            raise
    draft.settle(done)
    p["contributed"] = len(rows)
    return p


def apply_rows(store, base_root: bytes | None, rows) -> Entry:
    """The tree of ``base_root`` with every row applied (whiteouts remove, entries set)."""
    changes: dict[tuple, DEntry | None] = {}
    for _, path, rec in rows:
        changes.setdefault(tuple(path.split(b"/")), DEntry.decode(rec))
    now = time.time_ns()

    def build(base: bytes | None, ch: dict[tuple, DEntry | None], name: bytes, meta: Entry | None) -> Entry:
        entries = dict(store.tree_map(base)) if base else {}
        below: dict[bytes, dict] = {}
        for path, d in ch.items():
            if len(path) == 1:
                if d is None:
                    entries.pop(path[0], None)
                elif d.kind != DIR or path[0] not in entries or entries[path[0]].kind != DIR:
                    entries[path[0]] = _entry(path[0], d)
            else:
                below.setdefault(path[0], {})[path[1:]] = d
        for first, sub in below.items():
            cur = entries.get(first)
            if all(d is None for d in sub.values()) and (cur is None or cur.kind != DIR):
                continue  # removals under something that is not there
            entries[first] = build(cur.digest if cur is not None and cur.kind == DIR else None, sub, first,
                                   cur if cur is not None and cur.kind == DIR else None)
        mode, uid, gid, mtime = (meta.mode, meta.uid, meta.gid, meta.mtime_ns) if meta else (0o755, os.getuid(), os.getgid(), now)
        return store.write_dir(name, entries.values(), mode, uid, gid, mtime)

    return build(base_root, changes, b"", None)


def _entry(name: bytes, d: DEntry) -> Entry:
    if d.kind == DIR:
        return Entry(name, DIR, d.mode, d.uid, d.gid, 0, d.mtime_ns, digest=treefmt.EMPTY_TREE_DIGEST,
                     ident=treefmt.EMPTY_IDENT, nfiles=0)
    return Entry(name, d.kind, d.mode, d.uid, d.gid, d.size, d.mtime_ns, digest=d.digest, target=d.target, uri=d.uri)


def finish(store, artifact: str, did: str, message: str | None = None, metadata: dict | None = None) -> tuple[int, bool]:
    """Seal the pending version as the next version; later upserts/finishes with ``did`` fail."""
    did = distributed_id(did)

    def build(rows, parent, base_root):
        root = apply_rows(store, bytes.fromhex(base_root) if base_root else None, rows)
        store.objects.sync()
        return root.digest.hex(), root.ident.hex(), root.nfiles, root.size

    with store.writing():
        return store.meta.seal_pending(artifact, did, build, message=message, metadata=metadata)


def pending_files(store, artifact: str, did: str) -> list[tuple[str, str, str]]:
    """(path, what, writer label) of a pending version's rows."""
    p = store.meta.pending(artifact, did)
    if p is None:
        from .errors import NotFound

        raise NotFound(f"{artifact} has no pending version {did!r}")
    labels = {}
    for pd in store.meta.pendings(artifact):
        if pd["id"] == p["id"]:
            labels = {w["writer"]: w["label"] for w in pd["writers"]}
    out = []
    for writer, path, rec in store.meta.pending_rows(p["id"]):
        d = DEntry.decode(rec)
        what = "removed" if d is None else treefmt.KIND_NAMES[d.kind]
        out.append((path.decode("utf-8", "surrogateescape"), what, labels.get(writer, writer)))
    return out
