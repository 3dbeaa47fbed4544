"""A/M/D between two directory views (versions or a draft), skipping equal subtrees.

A view is a ``children(handle) -> {name: (entry, handle)}`` function, where
``handle`` is what ``children`` takes for a directory (None for others).  Two
entries are compared with the one rule of format.py (:func:`content_key`); two
directories whose identities are known and equal are skipped without being
read (a draft's changed directory has no identity yet: look inside).
The walk is iterative: any depth.
"""
from __future__ import annotations

from ..storage.format import DIR, content_key


def tree_children(store):
    def children(digest):
        if digest is None:
            return {}
        return {e.name: (e, e.digest if e.kind == DIR else None) for e in store.tree(digest)}

    return children


def _dir_key(e):
    return e.ident if e.dir_id is None else None


def _all(children, handle, prefix, code, out) -> None:
    stack = [(handle, prefix)]
    while stack:
        h, pre = stack.pop()
        for name, (e, sub) in children(h).items():
            p = pre + (name,)
            out.append((code, p))
            if e.kind == DIR:
                stack.append((sub, p))


def diff_items(ca, ha, cb, hb) -> list[tuple[str, tuple]]:
    """Sorted (code, path tuple): A (only in b), D (only in a), M (content differs)."""
    out: list[tuple[str, tuple]] = []
    stack = [(ha, hb, ())]
    while stack:
        ha_, hb_, prefix = stack.pop()
        a, b = ca(ha_), cb(hb_)
        for name in a.keys() | b.keys():
            p = prefix + (name,)
            x, y = a.get(name), b.get(name)
            if x is None:
                out.append(("A", p))
                if y[0].kind == DIR:
                    _all(cb, y[1], p, "A", out)
            elif y is None:
                out.append(("D", p))
                if x[0].kind == DIR:
                    _all(ca, x[1], p, "D", out)
            elif x[0].kind == DIR and y[0].kind == DIR:
                kx, ky = _dir_key(x[0]), _dir_key(y[0])
                if kx is None or ky is None or kx != ky:
                    stack.append((x[1], y[1], p))
            elif x[0].kind == DIR or y[0].kind == DIR:
                out.append(("D", p))
                if x[0].kind == DIR:
                    _all(ca, x[1], p, "D", out)
                out.append(("A", p))
                if y[0].kind == DIR:
                    _all(cb, y[1], p, "A", out)
            elif content_key(x[0]) != content_key(y[0]):
                out.append(("M", p))
    out.sort(key=lambda r: (r[1], r[0]))
    return out
