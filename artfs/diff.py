"""A/M/D between two directory views (versions or a draft), skipping equal subtrees.

A view is a ``children(handle) -> {name: item}`` function.  An item is a
tuple ``(kind, executable, key, handle)`` where ``key`` is the content
identity (a file's digest, a symlink's target, a directory's identity) or
None when unknown (a changed directory of a draft: look inside), and
``handle`` is what ``children`` takes for a directory.  Two directories with
the same known identity are skipped without being read.
"""
from __future__ import annotations

from .treefmt import DIR, REF, SYMLINK, join_path


def tree_children(store):
    def children(handle):
        _, digest = handle
        if digest is None:
            return {}
        out = {}
        for e in store.tree(digest):
            if e.kind == DIR:
                out[e.name] = (DIR, False, e.ident, ("t", e.digest))
            else:
                out[e.name] = (e.kind, e.executable, e.content_id(), None)
        return out

    return children


def draft_children(draft):
    def children(d):
        out = {}
        for name, e in draft.children(d).items():
            if e.kind == DIR:
                out[name] = (DIR, False, e.ident if e.dir_id is None else None, e)
            elif e.kind == SYMLINK:
                out[name] = (e.kind, False, e.target, None)
            elif e.kind == REF:
                out[name] = (e.kind, e.executable, e.digest + e.uri.encode(), None)
            else:
                out[name] = (e.kind, e.executable, draft.file_digest(e), None)
        return out

    return children


def _all(children, handle, prefix, code, out):
    for name, (kind, _, _, h) in sorted(children(handle).items()):
        p = prefix + (name,)
        out.append((code, join_path(p)))
        if kind == DIR:
            _all(children, h, p, code, out)


def diff_items(ca, ha, cb, hb) -> list[tuple[str, str]]:
    """Sorted (code, path) lines: A (only in b), D (only in a), M (content differs)."""
    out: list[tuple[str, str]] = []

    def walk(ha, hb, prefix):
        a, b = ca(ha), cb(hb)
        for name in sorted(a.keys() | b.keys()):
            p = prefix + (name,)
            x, y = a.get(name), b.get(name)
            if x is None:
                out.append(("A", join_path(p)))
                if y[0] == DIR:
                    _all(cb, y[3], p, "A", out)
            elif y is None:
                out.append(("D", join_path(p)))
                if x[0] == DIR:
                    _all(ca, x[3], p, "D", out)
            elif x[0] == DIR and y[0] == DIR:
                if x[2] is None or y[2] is None or x[2] != y[2]:
                    walk(x[3], y[3], p)
            elif x[0] == DIR or y[0] == DIR:
                out.append(("D", join_path(p)))
                if x[0] == DIR:
                    _all(ca, x[3], p, "D", out)
                out.append(("A", join_path(p)))
                if y[0] == DIR:
                    _all(cb, y[3], p, "A", out)
            elif x[:3] != y[:3]:
                out.append(("M", join_path(p)))

    walk(ha, hb, ())
    out.sort(key=lambda r: (r[1], r[0]))
    return out
