"""Adding content from outside into a draft (the API's ``add_file``/``add_dir``/
``add_reference``, patch mode), and upserting a draft.

Each addition stores its objects durably first (one batch, under the gc rule)
and then records them in the draft in one change, so a failure leaves the
draft as it was.
"""
from __future__ import annotations

import os
import stat

from ..errors import BadInput
from ..storage.format import DIR, FILE, REF, Entry
from . import collab
from .content import hash_reference, open_nofollow
from .drafts import Draft
from .put import build_tree_from_dir, read_xattrs


def add_file(store, draft: Draft, parts: tuple, src: str) -> Entry:
    """Copy the regular file ``src`` in (without following symlinks) and set it at ``parts``."""
    try:
        fd = open_nofollow(src)
    except OSError as exc:
        raise BadInput(f"cannot read {src}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"not a regular file: {src}")
        with store.writing():
            with store.objects.batch() as b:
                d, n, chunks = b.put_fd(fd)
            e = Entry(parts[-1], FILE, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, n, st.st_mtime_ns,
                      st.st_atime_ns, digest=d, chunks=chunks, xattrs=read_xattrs(fd))
            return draft.put(parts, e)
    finally:
        os.close(fd)


def add_dir(store, draft: Draft, src: str, prefix: tuple = ()) -> None:
    """Every file below ``src`` under ``prefix`` (the root by default), merged with what is there."""
    with store.writing():
        with store.objects.batch() as b:
            tree, _ = build_tree_from_dir(store, b, src, reject_control=not prefix)
        stack = [(prefix, tree)] if prefix else [((e.name,), e) for e in store.tree(tree.digest)]
        while stack:
            p, x = stack.pop()
            cur = draft.lookup(p)
            if x.kind == DIR and cur is not None and cur.kind == DIR:
                stack.extend((p + (c.name,), c) for c in store.tree(x.digest))
            else:
                draft.put(p, x.with_(hlid=None))


def add_reference(store, draft: Draft, parts: tuple, uri: str) -> Entry:
    """Record a ``file://`` reference: its digest, size and chunk list, not a copy."""
    d, size, chunks, st = hash_reference(uri)
    with store.writing():
        chunks_d = None
        if chunks is not None:
            with store.objects.batch() as b:
                chunks_d = b.put_bytes(chunks)
        e = Entry(parts[-1], REF, st.st_mode & 0o7777, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_atime_ns,
                  digest=d, chunks=chunks_d, uri=uri)
        return draft.put(parts, e)


def upsert(store, draft: Draft, did: str, writer: str, label: str) -> dict:
    """Upsert a draft's changes, then point its records at the copies (durably) and retire its
    scratch files; the draft's outcome says what happened."""
    p, done = collab.upsert(store, draft, did, writer, label)
    draft.commit(draft.settle(done))
    store.meta.durable()
    draft.flush_dead()
    outcome = f"upserted into {draft.artifact} (pending {collab.distributed_id(did)}): {p['contributed']} files"
    store.meta.set_draft_outcome(draft.id, outcome)
    draft.outcome = outcome
    return p


def make_durable(store, draft: Draft) -> None:
    """A program's fsync: every change so far on disk, then the scratch files they replaced go."""
    store.meta.durable()
    draft.flush_dead()
