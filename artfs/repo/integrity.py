"""fsck and gc: what the store holds against what names it.

``mark`` finds every object something can reach: versions (root trees, link
tables, and through trees every file and chunk list), drafts (base trees,
records, inode records, parents' link tables) and pending collaborative
versions.  Walks are iterative.

gc fails closed (DESIGN.md §5, invariant 6): a tree it cannot read might name
anything, so gc stops and deletes nothing.  fsck reads everything, names
every inconsistency it finds -- corrupt or missing objects, undecodable trees,
damaged version rows, aliases to missing versions, damaged drafts, missing and
unreferenced scratch files -- and never repairs.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from ..errors import ArtfsError, Corrupt
from ..names import quote
from ..storage import format as fmt
from ..storage.format import DIR, FILE, REF
from .drafts import Draft
from .versions import VersionInfo
from .workspace import draft_label, is_locked, lock_draft


class GcRefused(Corrupt):
    """gc found something it cannot read and deleted nothing."""


def _entry_objects(e) -> list[bytes]:
    out = []
    if e.kind in (FILE, REF):
        if e.digest is not None and e.kind == FILE:
            out.append(e.digest)
        if e.chunks is not None:
            out.append(e.chunks)
    return out


def mark(store, problems: list | None = None, progress=None) -> dict[bytes, str]:
    """Every reachable object -> where it is used (first seen).  With ``problems`` None (gc),
    anything unreadable raises GcRefused; otherwise it is recorded and the walk goes on."""
    seen: dict[bytes, str] = {}

    def trouble(msg: str):
        if problems is None:
            raise GcRefused(f"gc stopped, nothing deleted: {msg} (run artfs fsck)")
        problems.append(msg)

    trees: list[tuple[bytes, str, tuple]] = [(fmt.EMPTY_TREE_DIGEST, "the store (empty tree)", ())]
    for row in store.meta.all_versions():
        label = f"{row['artifact']}:v{row['num']}"
        try:
            v = VersionInfo.of(row, "")
        except Corrupt as exc:
            trouble(str(exc))
            continue
        trees.append((v.root, label, ()))
        if v.links is not None:
            seen.setdefault(v.links, f"{label} link table")
            try:
                fmt.decode_links(store.objects.get(v.links))
            except Corrupt as exc:
                trouble(f"{exc} (link table of {label})")
    bases, recs = store.meta.all_draft_recs()
    for did, base in bases:
        if base:
            try:
                trees.append((bytes.fromhex(base), f"draft {did}", ()))
            except ValueError:
                trouble(f"draft {did} has a damaged base {base!r}")
    for did, links in store.meta.draft_links():
        seen.setdefault(bytes.fromhex(links), f"draft {did} parent's link table")
    for label, base in store.meta.all_pending_bases():
        trees.append((bytes.fromhex(base), label, ()))
    labelled = [(f"draft {did}", rec) for did, rec in recs] + store.meta.all_pending_recs()
    for label, rec in labelled:
        try:
            e = fmt.decode_rec(rec)
        except Corrupt as exc:
            trouble(f"{exc} ({label})")
            continue
        if e is None:
            continue
        if e.kind == DIR and e.digest is not None and e.dir_id is None:
            trees.append((e.digest, label, ()))
        for d in _entry_objects(e):
            seen.setdefault(d, label)

    stack = list(reversed(trees))
    while stack:
        digest, label, path = stack.pop()
        if digest in seen:
            continue
        seen[digest] = f"{label} {quote(b'/'.join(path)) if path else '/'}"
        try:
            entries = store.tree(digest)
        except Corrupt as exc:
            trouble(f"{exc} (tree {digest.hex()} of {seen[digest]})")
            continue
        for e in entries:
            p = path + (e.name,)
            if e.kind == DIR:
                stack.append((e.digest, label, p))
            else:
                for d in _entry_objects(e):
                    seen.setdefault(d, f"{label} {quote(b'/'.join(p))}")
        if progress:
            progress.advance(1, 0)
    return seen


def fsck(store, progress=None) -> list[str]:
    """Check everything; returns the problems found (empty: the store is sound)."""
    problems: list[str] = []
    for row in store.meta.all_versions():
        if row.get("metadata_error"):
            problems.append(f"{row['artifact']}:v{row['num']} has damaged metadata: {row['metadata_error']}")
    for art in store.meta.artifacts():
        names = {r["num"] for r in store.meta.versions(art["name"])}
        for num, al in store.meta.aliases(art["name"]).items():
            if num not in names:
                problems.append(f"alias {', '.join(art['name'] + ':' + a for a in al)} points at v{num}, which does not exist")
    used = mark(store, problems, progress)
    present = set(store.objects.list())
    for d, where in sorted(used.items(), key=lambda kv: kv[1]):
        if d not in present:
            problems.append(f"missing object {d.hex()} (used by {where})")
    if progress:
        progress.phase("verifying")
        progress.total(len(present), 0)

    def check(d):
        ok = store.objects.verify(d)
        if progress:
            progress.advance(1, 0)
        return d, ok

    with ThreadPoolExecutor(2) as pool:
        for d, ok in pool.map(check, sorted(present)):
            if not ok:
                problems.append(f"corrupt object {d.hex()} (used by {used.get(d, 'nothing: garbage')})")
    problems += check_drafts(store)
    return problems


def check_drafts(store) -> list[str]:
    problems = []
    for row in store.meta.drafts():
        label = draft_label(row["key"])
        try:
            d = Draft(store, row)
        except (Corrupt, ArtfsError) as exc:
            problems.append(f"draft {label} is damaged: {exc}")
            continue
        if not store.draft_here(row):
            continue  # its scratch files live on another machine (scale-out): checked there
        for name in sorted(d.referenced_scratch()):
            if d.scratch_stat(name) is None:
                problems.append(f"missing scratch file {name} of draft {label}")
    return problems


def garbage(store) -> list[str]:
    """Scratch files gc would remove, described (a crash between a durable record and the deletion
    of what it replaced leaves these; like unreferenced objects, they are not damage)."""
    notes = []
    uuids = set()
    for row in store.meta.drafts():
        uuids.add(row["scratch"])
        try:
            d = Draft(store, row)
        except (Corrupt, ArtfsError):
            continue
        if store.draft_here(row) and not is_locked(store, d):
            extra = d.unreferenced_scratch()
            if extra:
                notes.append(f"{len(extra)} unreferenced scratch file(s) in draft {draft_label(row['key'])}"
                             " (gc removes them)")
    ddir = store.scratch_root()
    for name in sorted(os.listdir(ddir)) if os.path.isdir(ddir) else []:
        if name not in uuids:
            notes.append(f"scratch directory drafts/{name} belongs to no draft (gc removes it)")
    return notes


def expire(store, now: float | None = None) -> tuple[list[str], list[str]]:
    """Delete versions whose TTL ran out; a user alias keeps one.  Returns (deleted, kept)."""
    import time

    from ..errors import Conflict

    gone, kept = [], []
    for name, num in store.meta.expired_versions(time.time() if now is None else now):
        try:
            store.meta.delete_version(name, num)
            gone.append(f"{name}:v{num}")
        except Conflict:
            kept.append(f"{name}:v{num}")
    return gone, kept


def gc(store, progress=None) -> tuple[int, int]:
    """Delete objects nothing reaches, and scratch files no draft uses; returns (objects,
    bytes) removed.  Stops, deleting nothing, when anything is unreadable."""
    removed = freed = 0
    expire(store)
    with store.collecting():
        # list scratch directories before reading the drafts: a draft's row is committed before
        # its directory exists, so a directory listed here whose row is missing is garbage
        ddir = store.scratch_root()
        names = os.listdir(ddir) if os.path.isdir(ddir) else []
        # what gc keeps follows the metadata as it is now; make that durable first, so a power cut
        # cannot bring back an older state that names something gc deleted
        store.meta.durable()
        used = mark(store, None, progress)
        doomed = [d for d in store.objects.list() if d not in used]
        freed += store.objects.delete(doomed)
        removed += len(doomed)
        store.objects.clean_temporaries()
        live = {row["scratch"]: row for row in store.meta.drafts()}
        for name in names:
            if name not in live:
                shutil.rmtree(os.path.join(ddir, name), ignore_errors=True)
        for row in live.values():
            if not store.draft_here(row):
                continue  # another machine's scratch files: its gc cleans them
            try:
                d = Draft(store, row)
            except (Corrupt, ArtfsError):
                continue  # discarded meanwhile, or damaged (fsck names it): nothing to clean
            try:
                with lock_draft(store, d):
                    for name in d.unreferenced_scratch():
                        st = d.scratch_stat(name)
                        freed += st.st_size if st else 0
                        d.drop_scratch_now(name)
            except ArtfsError:
                continue  # in use: its owner cleans it
    return removed, freed


def counts(store) -> tuple[int, int]:
    """(objects, versions) in the store."""
    return sum(1 for _ in store.objects.list()), len(store.meta.all_versions())
