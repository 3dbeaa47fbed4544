"""Drafts as a user sees them: opening, listing, locking, discarding, pruning.

A draft is *owned* by whoever holds its lock (``STORE/locks/draft-<uuid>.lock``,
kept apart from the draft's files): a mount for its whole life, an ``artfs
run`` output, an API program while it changes the draft.  Only the owner
repairs or cleans a draft; read-only commands (``drafts``, ``fsck``, ``status``)
never change one.
"""
from __future__ import annotations

import fcntl
import os
import time

from ..errors import BadInput, Conflict, NotFound
from ..names import quote
from ..refs import check_artifact_name
from .drafts import Draft
from .versions import VersionInfo, latest


def draft_label(key: str) -> str:
    """How a user names a draft: NAME:draft for an artifact's mountable one, else its key."""
    return f"{key[len('draft:'):]}:draft" if key.startswith("draft:") else key


def open_draft(store, name: str, key: str | None = None, type_: str | None = None,
               parent: VersionInfo | None = None, empty: bool = False) -> Draft:
    """The draft ``key`` of ``name`` (default: the artifact's one mountable draft), resumed or
    created.  A new draft starts from ``parent``, else from latest, else empty."""
    check_artifact_name(name)
    art = store.meta.artifact(name)
    t = type_ or (art["type"] if art else "dataset")
    if art is not None and type_ is not None and art["type"] != type_:
        if store.meta.alias(name, "latest") is not None:
            raise BadInput(f"{name} is a {art['type']}, not a {type_}")
        store.meta.set_artifact_type(name, type_)  # no version yet: the type is still open
    key = key or f"draft:{name}"
    existing = store.meta.draft(key)
    if existing is not None:
        d = Draft(store, existing)
        if type_ is not None and d.type != type_:
            if store.meta.alias(name, "latest") is not None:
                raise BadInput(f"{name} is a {d.type}, not a {type_}")
            store.meta.set_artifact_type(name, type_)
            d.type = type_
        return d
    if parent is None and not empty:
        parent = latest(store, name)
    return Draft.open(store, key, name, t, parent)


DRAFT_KEY_PREFIXES = ("run:", "api:")


def is_draft_key(text: str) -> bool:
    """Whether a reference names a draft by its key (``run:ID:NAME``, ``api:...``), as
    ``artfs drafts`` lists them (kept for inspection, mountable)."""
    return isinstance(text, str) and text.startswith(DRAFT_KEY_PREFIXES)


def draft_by_key(store, key: str) -> Draft:
    d = find_draft(store, key)
    if d is None:
        raise NotFound(f"no draft {quote(key)}; `artfs drafts` lists them")
    return d


def find_draft(store, key: str) -> Draft | None:
    row = store.meta.draft(key)
    return Draft(store, row) if row is not None else None


class DraftLock:
    """The owner's lock of one draft (flock; released when closed or the process dies)."""

    def __init__(self, store, draft: Draft):
        self.path = store.draft_lock_path(draft.scratch_uuid)
        self.fd = -1
        self.claim = None  # the store's hold across machines (scale-out), see lock_draft

    def acquire(self, what: str) -> "DraftLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise Conflict(f"{what} is in use ({other or 'by another process'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_draft(store, draft: Draft) -> DraftLock:
    lock = DraftLock(store, draft).acquire(draft_label(draft.key))
    try:
        # a scale-out store also holds it across machines, and refuses a draft whose scratch
        # files live on another machine
        lock.claim = store.claim_draft(draft, draft_label(draft.key))
    except BaseException:
        lock.release()
        raise
    return lock


def is_locked(store, draft: Draft) -> bool:
    path = store.draft_lock_path(draft.scratch_uuid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def drafts(store) -> list[dict]:
    """Every draft in the store: mountable ones, API drafts left by programs, run outputs.
    Read-only: a damaged draft is listed with its problem, never repaired."""
    out = []
    for row in store.meta.drafts():
        item = {"draft": draft_label(row["key"]), "key": row["key"], "artifact": row["artifact"],
                "parent": f"{row['artifact']}:v{row['parent']}" if row["parent"] is not None else None,
                "created": row["created"], "updated": row.get("updated", row["created"])}
        if not store.draft_here(row):  # scale-out: its scratch files are on another machine
            item.update(changes=None, mounted=False, machine=row.get("machine_label") or row.get("machine"))
            out.append(item)
            continue
        try:
            d = Draft(store, row)
            item["changes"] = len(d.status())
            item["mounted"] = is_locked(store, d)
            behind = latest(store, row["artifact"])
            item["latest"] = behind.ref if behind is not None else None
        except Exception as exc:  # a damaged draft is reported, not fatal to the listing
            item["changes"] = None
            item["mounted"] = False
            item["problem"] = str(exc)
        out.append(item)
    return out


def discard_draft(store, key: str) -> str:
    """Drop a draft by key (refused while it is in use); says what happened."""
    row = store.meta.draft(key)
    if row is None:
        raise NotFound(f"no draft {quote(draft_label(key))}")
    d = Draft(store, row)
    with lock_draft(store, d):
        try:
            n = len(d.status())
        except Exception:
            n = None
        d.discard()
    if n is None:
        return f"discarded {draft_label(key)}"
    return f"discarded {draft_label(key)} ({n} change{'s' if n != 1 else ''})"


def prune_drafts(store, older_than: float, kinds=("api:", "run:")) -> list[str]:
    """Discard drafts left by programs (API, run outputs) not changed for ``older_than`` seconds
    and not in use; returns their labels."""
    cutoff = time.time() - older_than
    gone = []
    for row in store.meta.drafts():
        if not row["key"].startswith(kinds) or row.get("updated", row["created"]) > cutoff:
            continue
        d = Draft(store, row)
        try:
            with lock_draft(store, d):
                d.discard()
        except Conflict:
            continue
        gone.append(draft_label(row["key"]))
    return gone


def ref_text(store, d: Draft) -> str:
    """``NAME:draft (parent NAME:vN[, latest NAME:vM])`` -- says when a draft is behind."""
    parent = f"parent {d.artifact}:v{d.parent}" if d.parent is not None else "no parent"
    lat = latest(store, d.artifact)
    behind = f", latest {lat.ref}" if lat is not None and lat.num != d.parent else ""
    return f"{d.artifact}:draft ({parent}{behind})"



def reset_to_version(store, d: Draft, v: VersionInfo, outcome: str) -> list[str]:
    """Make a draft clean on version ``v`` in the store (durably; memory untouched): after its
    changes went into ``v`` another way (a collaborative finish).  Returns the scratch files the
    reset retired (delete them once the new state is installed)."""
    from .commit import root_record

    store.meta.reset_draft(d.id, v.num, v.root.hex(), root_record(v.root_entry()), v.links.hex() if v.links else None,
                           outcome)
    return sorted(d.referenced_scratch())


def rebase_draft(store, d: Draft, v: VersionInfo, outcome: str) -> None:
    """:func:`reset_to_version`, then the draft's memory follows (callers that own it outright)."""
    old = reset_to_version(store, d, v, outcome)
    d.reload()
    d.adopt_links_now()
    d.dead.extend(old)
    d.flush_dead()
