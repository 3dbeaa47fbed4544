"""Commit: a draft becomes the next version, never undoing newer versions.

Order (DESIGN.md §5): the draft's changed files are *copied* into the object
store and its changed directories written, in one batch made durable before
anything names them; then one durable metadata transaction creates the
version against the expected latest (compare-and-set) and resets the draft
onto it; only then may the caller tell anyone, move open files onto the new
objects and delete the scratch files.  A failure at any point leaves the draft
exactly as it was (its scratch files were only read).

The lost-update rule: when ``latest`` is no longer the draft's parent, the
draft's changes are merged onto latest with a three-way tree merge (base =
the draft's parent, ours = the draft, theirs = latest).  A path changed on
both sides (differently) refuses the commit with a Conflict naming the paths;
otherwise the merged tree is committed with latest as its parent.  Merging
skips every subtree that is the same on two sides, so it costs what changed.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Conflict, Stale
from ..names import quote
from ..storage import format as fmt
from ..storage.format import DIR, Entry, content_key
from ..storage.meta import ANY
from . import versions as V

MAX_REBASES = 50


@dataclass
class CommitResult:
    num: int
    unchanged: bool
    done: dict  # scratch name -> (digest, size, chunks, mtime): what the draft's scratch files became
    rebased_from: int | None = None  # the draft's parent, when it was merged onto a newer latest

    def ref(self, artifact: str) -> str:
        return f"{artifact}:v{self.num}" + (" (unchanged)" if self.unchanged else "")


def _meta_only(e: Entry) -> Entry:
    return e.with_(digest=None, ident=None, nfiles=0, size=0, name=b"")


def merge3(store, batch, base: Entry | None, ours: Entry, theirs: Entry, what: str) -> Entry:
    """Three-way merge of directory trees (DIR entries); Conflict names the paths changed on
    both sides.  New trees are written into ``batch``.  Iterative (any depth)."""
    conflicts: list[tuple] = []
    # frame: (base dir entry|None, ours, theirs, path, state); state None -> expand, else -> assemble
    stack = [(base, ours, theirs, (), None)]
    results: list[Entry] = []  # assembled entries, in the order frames finish
    while stack:
        b, o, t, path, state = stack.pop()
        if state is None:
            bm = store.tree_map(b.digest) if b is not None and b.kind == DIR else {}
            om, tm = store.tree_map(o.digest), store.tree_map(t.digest)
            merged: dict[bytes, Entry | None] = {}
            subs = []
            for name in sorted(bm.keys() | om.keys() | tm.keys()):
                x, y, z = bm.get(name), om.get(name), tm.get(name)
                if y == z:
                    merged[name] = y
                elif y == x:
                    merged[name] = z
                elif z == x:
                    merged[name] = y
                elif (y is not None and z is not None and y.kind != DIR and z.kind != DIR
                      and content_key(y) == content_key(z)):
                    merged[name] = y  # the same content on both sides (the one rule): no conflict
                elif y is not None and z is not None and y.kind == DIR and z.kind == DIR and (x is None or x.kind == DIR):
                    subs.append(name)
                    merged[name] = None
                else:
                    conflicts.append(path + (name,))
            stack.append((b, o, t, path, (merged, subs)))
            for name in reversed(subs):
                x = bm.get(name)
                stack.append((x, om[name], tm[name], path + (name,), None))
            continue
        merged, subs = state
        # the sub-merges finished after this frame was pushed: their results are the last len(subs)
        sub_results = results[len(results) - len(subs):] if subs else []
        if subs:
            del results[len(results) - len(subs):]
        for name, r in zip(subs, sub_results):
            merged[name] = r
        meta = o if b is None or _meta_only(o) != _meta_only(b) else t
        ents = [e.with_(name=n) for n, e in merged.items() if e is not None]
        results.append(store.write_dir(batch, meta.with_(name=path[-1] if path else b""), ents))
    if conflicts:
        shown = ", ".join(quote(b"/".join(p)) for p in conflicts[:20]) + (" ..." if len(conflicts) > 20 else "")
        raise Conflict(f"{what}: changed on both sides: {shown}")
    return results[-1]


def root_record(root: Entry) -> bytes:
    """A draft's record of its root directory, from a version's root entry."""
    return fmt.encode_rec(root.with_(digest=None, ident=None, nfiles=0, size=0, dir_id=1, ctime_ns=root.mtime_ns))


def collect_links(store, root: Entry) -> dict[bytes, list]:
    """hlid -> paths of every hard-link group below ``root`` (a full walk: only for trees
    that have hard links)."""
    groups: dict[bytes, list] = {}
    for p, e in V.walk(store, root.digest):
        if e.hlid is not None:
            groups.setdefault(e.hlid, []).append(p)
    return {h: ps for h, ps in groups.items() if len(ps) > 1}


def create_version(store, artifact: str, type_: str | None, root: Entry, links: dict, *, base: V.VersionInfo | None,
                   expected, message: str | None, metadata: dict | None, how: str,
                   description: str | None = None, draft_id: int | None = None, seal: dict | None = None,
                   outcome: str | None = None) -> tuple[int, bool, int | None]:
    """Create a version from a durable ``root``, rebasing onto newer versions as the lost-update
    rule says.  ``base``: the version ``root`` was made from (None: from nothing); ``expected``:
    the latest it was built on (or ANY: replace whatever is latest, as ``put`` does).
    Returns (number, unchanged, the base it was rebased from or None).  Caller holds writing()."""
    had_links = bool(links)
    links_d = None
    if links:
        with store.objects.batch() as b:
            links_d = b.put_bytes(fmt.encode_links(links))
    rebased = None
    mine = root
    for _ in range(MAX_REBASES):
        try:
            num, unchanged = store.meta.create_version(
                artifact, type_, root=mine.digest.hex(), ident=mine.ident.hex(), root_meta=fmt.encode_root(mine),
                links=links_d.hex() if links_d else None, expected=expected, parent=None, message=message,
                metadata=metadata, file_count=mine.nfiles, total_bytes=mine.size, how=how, description=description,
                draft_reset={"id": draft_id, "outcome": outcome, "root_rec": root_record(mine)}
                if draft_id is not None else None, seal=seal)
            return num, unchanged, rebased
        except Stale as exc:
            if expected == ANY:
                raise
            latest = V.latest(store, artifact)
            if latest is None:
                raise
            base_root = base.root_entry() if base is not None else None
            with store.objects.batch() as b:
                mine = merge3(store, b, base_root, root, latest.root_entry(),
                              f"cannot commit to {artifact}: it moved on to {latest.ref} since "
                              f"{base.ref if base else 'this draft began'}")
            rebased = base.num if base is not None else -1
            expected = latest.num
            if had_links or latest.links or (base is not None and base.links):
                new_links = collect_links(store, mine)
                links_d = None
                if new_links:
                    with store.objects.batch() as b:
                        links_d = b.put_bytes(fmt.encode_links(new_links))
            if exc.latest is not None and exc.latest != latest.num:
                continue
    raise Conflict(f"{artifact} keeps moving on; commit again")


def commit_draft(store, draft, message: str | None = None, metadata: dict | None = None,
                 description: str | None = None, progress=None, replace: bool = False) -> CommitResult:
    """The durable half of a commit; changes nothing in the draft's memory (safe in a worker
    thread while others read it).  The caller then calls ``finish_commit``.  ``replace``: the
    draft's content is the whole new version, whatever latest is meanwhile (W&B's new
    ``Artifact``, like ``put``), instead of changes merged onto latest."""
    base = V.version(store, draft.artifact, draft.parent) if draft.parent is not None else None
    if base is not None and draft.base_root is not None and draft.base_root != base.root:
        # an unchanged commit left the draft on its own tree (same content, other metadata)
        from dataclasses import replace

        base = replace(base, root=draft.base_root)
    how = "incremental" if draft.parent is not None else "single"
    with store.writing():
        with store.objects.batch() as b:
            root, links, done = draft.build(b, progress)
        num, unchanged, rebased = create_version(
            store, draft.artifact, draft.type, root, links, base=base, expected=ANY if replace else draft.parent,
            message=message, metadata=metadata, how=how, description=description, draft_id=draft.id)
    return CommitResult(num, unchanged, done, rebased)


def finish_commit(draft, result: CommitResult) -> None:
    """The in-memory half: the draft starts clean on the new version (its hard-link groups
    adopted again); the committed scratch files (now copies in the store, and the reset durable)
    are deleted.  (The FUSE layer does the same in steps: fetch in a thread, install on its loop.)"""
    draft.reload()
    draft.adopt_links_now()
    draft.dead.extend(result.done)
    draft.flush_dead()
