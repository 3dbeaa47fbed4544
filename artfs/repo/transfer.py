"""Copying versions between stores (``artfs push`` / ``artfs pull``, DESIGN.md §10).

Between any two stores -- local to scale-out, scale-out to local, or two of a
kind -- by content:

* The objects a version needs (its trees, files, chunk lists and link table)
  are looked up in the target in one batched existence check, and only the
  missing ones are sent.  Every object is verified on the way: what the
  target stores is named by the hash of what it received, and a source object
  whose bytes miss its name stops the copy (Corrupt) before anything names it.
* The usual write order holds in the target: objects durable first (batches
  closed), then one metadata transaction that creates the version, under the
  target's gc rule (``writing()``).
* A version the target already holds -- a version of the same artifact with the
  same root tree -- is not copied again, so a copy is idempotent, and one that
  was interrupted resumes where it stopped: objects already sent are found
  present and skipped.
* Versions keep their message, metadata, description, tags, expiry and how
  they were made; their numbers are the target's (numbers are per store).  A
  version's parent maps to the target version of the source parent when that
  was copied.  User aliases of copied versions are set in the target.
* Lineage: the runs that produced or used a copied version are copied (rows
  the target lacks), with those edges.
"""
from __future__ import annotations

import os
import tempfile

from ..errors import BadInput, Corrupt
from ..refs import parse_ref
from ..storage import format as fmt
from ..storage.format import CHUNK, DIR, FILE, REF
from ..storage.hashing import digest as blake
from ..storage.meta import ANY
from . import versions as V

BATCH_OBJECTS = 2000  # objects per batch (each batch is made durable before the next starts)
BATCH_BYTES = 256 << 20


def _needed(src, v: V.VersionInfo) -> tuple[list[bytes], dict[bytes, int]]:
    """Every object the version needs (order does not matter: batches are durable before the
    version names them) -> the size of a file's content, or -1 for trees, chunk and link tables."""
    objs: dict[bytes, int] = {v.root: -1}
    if v.links is not None:
        objs[v.links] = -1
    stack = [v.root]
    seen_trees = {v.root}
    while stack:
        t = stack.pop()
        for e in src.tree(t):
            if e.kind == DIR:
                if e.digest not in seen_trees:
                    seen_trees.add(e.digest)
                    objs[e.digest] = -1
                    stack.append(e.digest)
            elif e.kind in (FILE, REF):
                if e.kind == FILE and e.digest is not None:
                    objs[e.digest] = e.size
                if e.chunks is not None:
                    objs.setdefault(e.chunks, -1)
    return list(objs), objs


def _copy_object(src, batch, d: bytes, size: int) -> int:
    """Send one object (verified: its bytes must hash to its name); returns its size.
    ``size``: a file's size, or -1 for a tree, chunk list or link table (sent as bytes)."""
    if size <= CHUNK:
        data = src.objects.read(d, 0, CHUNK + 1 if size >= 0 else 1 << 62)
        if size < 0 or len(data) <= CHUNK:
            if blake(data) != d:
                raise Corrupt(f"object {d.hex()} in the source store is corrupt; nothing was copied for it "
                              "(run artfs fsck there)")
            batch.put_bytes(data)
            return len(data)
    r = src.objects.open(d)
    try:
        fd = getattr(r, "fd", None)
        if isinstance(fd, int) and fd >= 0:  # a local object: copied kernel-side, hashed as copied
            got, n, _ = batch.put_fd(fd)
        else:
            with tempfile.TemporaryFile(dir=_spool_dir(src)) as tmp:
                off = 0
                while True:
                    b = r.pread(off, 8 * CHUNK)
                    if not b:
                        break
                    tmp.write(b)
                    off += len(b)
                tmp.flush()
                got, n, _ = batch.put_fd(tmp.fileno(), off)
    finally:
        r.close()
    if got != d:
        raise Corrupt(f"object {d.hex()} in the source store is corrupt; nothing was copied for it "
                      "(run artfs fsck there)")
    return n


def _spool_dir(store) -> str | None:
    d = os.path.join(store.state_dir, "tmp")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d
    except OSError:
        return None


def _find_same(dst, name: str, root_hex: str) -> int | None:
    for r in dst.meta.versions(name):
        if r["root"] == root_hex:
            return r["num"]
    return None


def copy_version(src, dst, v: V.VersionInfo, parent_map: dict[int, int], progress=None) -> dict:
    """Copy one version; returns ``{"source", "target", "sent", "bytes", "present", "copied"}``."""
    out = {"source": v.ref, "target": None, "sent": 0, "bytes": 0, "present": 0, "copied": False}
    same = _find_same(dst, v.artifact, v.root.hex())
    if same is not None:
        out["target"] = f"{v.artifact}:v{same}"
        parent_map[v.num] = same
        return out
    objs, sizes = _needed(src, v)
    if progress:
        progress.phase(f"{v.ref}: checking {len(objs)} objects")
    with dst.writing():
        have = dst.objects.has(objs)
        missing = [d for d in objs if d not in have]
        out["present"] = len(objs) - len(missing)
        if progress:
            progress.phase(f"{v.ref}: sending")
            progress.total(len(missing), sum(max(0, sizes.get(d, 0)) for d in missing))
        i = 0
        while i < len(missing):
            n_bytes = 0
            with dst.objects.batch() as b:
                j = i
                while j < len(missing) and j - i < BATCH_OBJECTS and n_bytes < BATCH_BYTES:
                    n = _copy_object(src, b, missing[j], sizes.get(missing[j], -1))
                    n_bytes += n
                    out["bytes"] += n
                    if progress:
                        progress.advance(1, n)
                    j += 1
            out["sent"] += j - i
            i = j
        parent = parent_map.get(v.parent) if v.parent is not None else None
        # the type always goes along: an artifact of another type refuses it (Conflict), as put does
        num, unchanged = dst.meta.create_version(
            v.artifact, v.type, root=v.root.hex(), ident=v.ident.hex(),
            root_meta=v.root_meta if v.root_meta is not None else fmt.encode_root(v.root_entry()),
            links=v.links.hex() if v.links else None, expected=ANY, parent=parent, message=v.message,
            metadata=v.metadata, file_count=v.file_count, total_bytes=v.total_bytes, how=v.how,
            description=v.description)
    if not unchanged and (v.tags or v.expires is not None):
        dst.meta.update_version(v.artifact, num, tags=v.tags or None, expires=v.expires)
    parent_map[v.num] = num
    out["target"] = f"{v.artifact}:v{num}"
    out["copied"] = not unchanged
    return out


def _copy_aliases(src, dst, name: str, mapping: dict[int, int]) -> list[str]:
    done = []
    for num, names in src.meta.aliases(name).items():
        if num not in mapping:
            continue
        for a in names:
            if a == "latest":
                continue
            if dst.meta.alias(name, a) != mapping[num]:
                dst.meta.set_alias(name, a, mapping[num])
                done.append(f"{name}:{a}")
    return done


def _copy_lineage(src, dst, name: str, mapping: dict[int, int]) -> int:
    """Runs that produced or used the copied versions, and those edges."""
    import json

    edges = 0
    runs_done: set[str] = set()

    def ensure_run(run_id: str) -> bool:
        if run_id in runs_done:
            return True
        if dst.meta.run(run_id) is None:
            r = src.meta.run(run_id)
            if r is None:
                return False
            row = {k: r.get(k) for k in ("id", "name", "job_type", "command", "cwd", "host", "user", "pid",
                                         "started", "ended", "outcome", "exit_status", "entity", "project")}
            row["grp"] = r.get("group")
            row["config"] = r.get("config") or {}
            if r.get("summary"):
                row["summary"] = json.dumps(r["summary"], sort_keys=True, default=str)
            dst.meta.run_start({k: v for k, v in row.items() if v is not None or k in ("id", "started")})
        runs_done.add(run_id)
        return True

    for snum, tnum in mapping.items():
        for p in src.meta.version_producers(name, snum):
            if ensure_run(p["run_id"]):
                # a copied version counts as made during its run: its target row is newer than the run
                if dst.meta.run_produced(p["run_id"], name, tnum, p.get("how") or "logged", float("inf")):
                    edges += 1
        for c in src.meta.version_consumers(name, snum):
            if ensure_run(c["run_id"]):
                dst.meta.run_used(c["run_id"], name, tnum)
                edges += 1
    return edges


def copy(src, dst, ref: str, all_versions: bool = False, progress=None) -> dict:
    """Copy the version ``ref`` names (or, with ``all_versions``, every version of its artifact,
    oldest first) from ``src`` to ``dst``.  Returns a summary."""
    if os.path.realpath(src.path) == os.path.realpath(dst.path):
        raise BadInput("the source and the target are the same store")
    r = parse_ref(ref)
    if r.draft:
        raise BadInput(f"{ref} is a draft: commit it first (only versions are copied)")
    if all_versions:
        if r.version is not None or r.alias not in (None, "latest"):
            raise BadInput("--all copies every version of an artifact: give just its NAME")
        versions = sorted(V.versions(src, r.name), key=lambda v: v.num)
    else:
        versions = [V.resolve(src, r)]
    parent_map: dict[int, int] = {}
    results = []
    for v in versions:
        results.append(copy_version(src, dst, v, parent_map, progress))
    name = versions[0].artifact if versions else r.name
    aliases = _copy_aliases(src, dst, name, parent_map)
    edges = _copy_lineage(src, dst, name, parent_map)
    return {"versions": results, "aliases": aliases, "lineage_edges": edges,
            "sent": sum(x["sent"] for x in results), "bytes": sum(x["bytes"] for x in results)}
