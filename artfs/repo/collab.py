"""Collaborative versions: many writers upsert into one pending version, one finish seals it.

DESIGN.md §6.  A writer is one draft (an ``Artifact`` object, a draft mount,
or one ``artfs put --distributed-id`` of one directory).  Its contribution is
its draft's changes against the draft's parent, flattened to paths:

* a file, symlink, special file or reference that is new or changed: its entry;
* an empty new directory: the directory;
* a removed path (only the topmost removed one): a whiteout.

Conflicts (DESIGN.md §6): another writer already set the same path to other
content (the one "same content" rule of format.py), or one writer's path lies
inside another writer's file, removal or non-directory.  The check and the
replacement of the writer's earlier rows are one durable transaction.

Write ordering is the usual one: every object a contribution names is durable
before its rows are recorded, under ``store.writing()`` so gc cannot collect
them in between.  An upsert only *copies* the draft's scratch files, so a
failed upsert leaves the draft exactly as it was.
"""
from __future__ import annotations

import os
import re
import time

from ..errors import Busy

import msgpack

from ..errors import BadInput, NotFound
from ..names import quote
from ..storage import format as fmt
from ..storage.format import DIR, Entry
from . import versions as V
from ..storage.meta import ANY
from .commit import collect_links, create_version

FINISH_WAIT = 900.0  # seconds an upsert or finish waits for another process's finish to end
from .diff import diff_items, tree_children

DID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,255}")


def distributed_id(did: str | None) -> str:
    """The collaborative version's id: the argument, else $ARTFS_GROUP; the name grammar
    (plus ``:@+=``) so it can never carry control characters into output."""
    if did is None:
        did = os.environ.get("ARTFS_GROUP")
    if not did:
        raise BadInput("no distributed id: pass --distributed-id (distributed_id=) or set ARTFS_GROUP")
    if not isinstance(did, str) or not DID_RE.fullmatch(did):
        raise BadInput(f"bad distributed id {quote(did if isinstance(did, str) else str(did))}: use letters, digits"
                       " and . _ : @ + = -, starting with a letter or digit, at most 256")
    return did


def content_bytes(e: Entry | None) -> bytes | None:
    """The conflict-check key of a row (None for a removal; every directory alike)."""
    if e is None:
        return None
    if e.kind == DIR:
        return b"dir"
    return msgpack.packb(list(fmt.content_key(e)), use_bin_type=True)


def contribution(store, base_root: bytes | None, root: Entry) -> dict[bytes, tuple]:
    """{path: (rec, content key, is_dir)} of a built draft against its base."""
    ch = tree_children(store)
    rows: dict[bytes, tuple] = {}
    removed: list[bytes] = []
    for code, path in diff_items(ch, base_root, ch, root.digest):
        p = b"/".join(path)
        if code == "D":
            if not any(p.startswith(r + b"/") for r in removed):
                removed.append(p)
                rows.setdefault(p, (fmt.WHITEOUT, None, False))
            continue
        e = _lookup(store, root, path)
        if e.kind == DIR and e.digest != fmt.EMPTY_TREE_DIGEST:
            continue  # a directory with content: its files are rows of their own
        rows[p] = (fmt.encode_rec(e), content_bytes(e), e.kind == DIR)
    return rows


def _lookup(store, root: Entry, path: tuple) -> Entry:
    e = root
    for comp in path:
        e = store.tree_map(e.digest)[comp]
    return e


def upsert(store, draft, did: str, writer: str, label: str) -> tuple[dict, dict]:
    """Merge this writer's changes into the pending version (replacing its earlier ones).
    Returns (the pending version's summary, the scratch files copied: pass them to
    ``draft.settle`` once this returned)."""
    did = distributed_id(did)
    with store.writing():
        with store.objects.batch() as b:
            root, _, done = draft.build(b)
        rows = contribution(store, draft.base_root, root)
        p = _waiting(store, lambda: store.meta.upsert_rows(draft.artifact, draft.type, did, draft.parent,
                                                    draft.base_root.hex() if draft.base_root else None, writer,
                                                    label, rows))
    p["contributed"] = len(rows)
    return p, done


def _waiting(store, fn):
    """Run ``fn``; while another process finishes the pending version, wait for it to end (then
    an upsert learns "already finished as NAME:vN", or goes ahead if that finish failed).  A
    finish on this machine that died (killed, or before a power cut) gives its lease up at once."""
    from ..storage.sqlite_pending import holder_is_gone

    deadline = time.monotonic() + FINISH_WAIT
    delay = 0.01
    while True:
        try:
            return fn()
        except Busy as exc:
            if exc.pending_id is not None and holder_is_gone(exc.holder):
                store.meta.end_finish(exc.pending_id, holder=exc.holder)
                continue
            if time.monotonic() > deadline:
                raise
            # the other finish is in another process: the metadata store is the only place to look
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def apply_rows(store, batch, base: Entry | None, rows) -> Entry:
    """The tree of ``base`` (a DIR entry or None) with every row applied: whiteouts remove,
    entries set.  Iterative over a trie of the rows' paths."""
    trie: dict = {}
    for _, path, rec in rows:
        node = trie
        for comp in path.split(b"/"):
            node = node.setdefault(comp, {})
        if "\0e" not in node:  # the first row of a path wins (they agree: conflicts were refused)
            node["\0e"] = fmt.decode_rec(rec, path.rsplit(b"/", 1)[-1])
    now = time.time_ns()
    implicit = Entry(b"", DIR, 0o755, os.getuid(), os.getgid(), 0, now, now)
    # frames: (trie node, base dir entry or None, own meta, name, state)
    stack = [(trie, base, base or implicit, b"", None)]
    results: list[Entry] = []
    while stack:
        node, b, meta, name, state = stack.pop()
        if state is None:
            entries = dict(store.tree_map(b.digest)) if b is not None and b.kind == DIR else {}
            subs = []
            for comp, child in node.items():
                if comp == "\0e":
                    continue
                cur = entries.get(comp)
                if not any(k != "\0e" for k in child):  # a row here and nothing below
                    e = child["\0e"]
                    if e is None:
                        entries.pop(comp, None)
                    elif not (e.kind == DIR and cur is not None and cur.kind == DIR):
                        entries[comp] = e.with_(name=comp)
                    continue
                sub_base = cur if cur is not None and cur.kind == DIR else None
                if sub_base is None and all(_only_removals(child)):
                    continue  # removals under something that is not there
                own = child.get("\0e")
                subs.append((comp, child, sub_base, own if own is not None and own.kind == DIR else (sub_base or implicit)))
            stack.append((node, b, meta, name, (entries, [s[0] for s in subs])))
            for comp, child, sb, sm in reversed(subs):
                stack.append((child, sb, sm, comp, None))
            continue
        entries, subnames = state
        if subnames:
            done = results[len(results) - len(subnames):]
            del results[len(results) - len(subnames):]
            for comp, r in zip(subnames, done):
                entries[comp] = r
        results.append(store.write_dir(batch, meta.with_(name=name), [e.with_(name=n) for n, e in entries.items()]))
    return results[-1]


def _only_removals(node: dict):
    stack = [node]
    while stack:
        n = stack.pop()
        for k, v in n.items():
            if k == "\0e":
                yield v is None
            else:
                stack.append(v)


def finish(store, artifact: str, did: str, message: str | None = None, metadata: dict | None = None) -> tuple[int, bool]:
    """Seal the pending version as the next version (merged onto latest if latest moved since it
    began); later upserts/finishes with ``did`` fail with "already finished"."""
    did = distributed_id(did)
    p = _waiting(store, lambda: store.meta.begin_finish(artifact, did))
    try:
        base = V.version(store, artifact, p["parent"]) if p["parent"] is not None else None
        with store.writing():
            with store.objects.batch() as b:
                root = apply_rows(store, b, base.root_entry() if base else None, p["rows"])
            links = collect_links(store, root) if any(fmt.decode_rec(r) and fmt.decode_rec(r).hlid
                                                      for _, _, r in p["rows"]) or (base and base.links) else {}
            # a pending version from scratch (fresh Artifacts, W&B style) is the whole new version,
            # like put; one made from a parent version is merged onto newer versions
            num, unchanged, _ = create_version(
                store, artifact, p["type"], root, links, base=base,
                expected=p["parent"] if p["parent"] is not None else ANY, message=message,
                metadata=metadata, how="collaborative", seal={"pending_id": p["id"], "generation": p["generation"]})
    except BaseException:
        store.meta.end_finish(p["id"])
        raise
    return num, unchanged


def pending(store, artifact: str, did: str) -> dict | None:
    return store.meta.pending(artifact, did)


def pendings(store, artifact: str | None = None) -> list[dict]:
    return store.meta.pendings(artifact)


def discard_pending(store, artifact: str, did: str) -> str:
    p = store.meta.pending(artifact, did)
    if p is None:
        raise NotFound(f"{artifact} has no pending version {quote(did)}")
    if p["finished"] is not None:
        raise BadInput(f"{quote(did)} was already finished as {artifact}:v{p['finished']}")
    store.meta.discard_pending(artifact, did)
    return f"discarded pending {quote(did)} of {artifact}"


def pending_files(store, artifact: str, did: str) -> list[tuple[bytes, str, str]]:
    """(path, what, writer label) of a pending version's rows."""
    p = store.meta.pending(artifact, did)
    if p is None:
        raise NotFound(f"{artifact} has no pending version {quote(did)}")
    labels = {}
    for pd in store.meta.pendings(artifact):
        if pd["id"] == p["id"]:
            labels = {w["writer"]: w["label"] for w in pd["writers"]}
    out = []
    for writer, path, rec in store.meta.pending_rows(p["id"]):
        d = fmt.decode_rec(rec)
        what = "removed" if d is None else fmt.KIND_NAMES[d.kind]
        out.append((path, what, labels.get(writer, writer)))
    return out
