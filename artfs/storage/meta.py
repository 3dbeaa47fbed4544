"""``MetaStore``: the metadata of a store (DESIGN.md §7).

Artifacts, versions, aliases, drafts, pending collaborative versions, runs and
lineage.  Two back ends implement this interface: SQLite (embedded, one
machine: ``sqlite_meta.py``) and PostgreSQL (scale-out).

Rules every back end keeps:

* No database handle, cursor or callback crosses the interface; rows are plain
  dicts, digests are lowercase hex text, draft records are the bytes of
  ``format.encode_rec``.
* A version is created against an expected latest (compare-and-set):
  :meth:`create_version` raises ``Stale`` when ``latest`` moved, and never
  computes ``MAX(num)+1`` under a global lock (a per-artifact counter).
* Every method is one transaction.  A transaction whose outcome a caller acts
  on (``create_version``, ``upsert_rows``, ``seal_pending``, ``delete_draft``,
  aliases) is durable when the method returns (DESIGN.md §5, invariant 3);
  draft edits are durable after :meth:`durable` (a program's fsync).
* No object I/O and no fsync of anything but the database inside a transaction.
* A full disk is ``NoSpace``, never a half-written change.
* The schema carries a version, checked at open (``SchemaMismatch``).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod

ANY = "any"  # create_version(expected=ANY): no compare-and-set (put replaces whatever is latest)


class Busy(Exception):
    """Another writer holds the metadata store, and the caller asked not to wait (a store's
    ``nowait()``, where it has one): nothing was changed."""


class MetaStore(ABC):
    # -- row decoding shared by the back ends (their SQL differs, their rows do not) --------
    @staticmethod
    def _version(row, name: str) -> dict:
        """A versions row as the dict callers see: metadata and tags decoded (a metadata field
        that is not JSON reads as {} with ``metadata_error``, never a crash)."""
        d = dict(row)
        d["artifact"] = name
        try:
            d["metadata"] = json.loads(d["metadata"] or "{}")
        except ValueError as exc:
            d["metadata"], d["metadata_error"] = {}, f"not JSON ({exc})"
        if d.get("root_meta") is not None:
            d["root_meta"] = bytes(d["root_meta"])
        try:
            d["tags"] = json.loads(d.get("tags") or "[]")
        except ValueError:
            d["tags"] = []
        return d

    @staticmethod
    def _run(r) -> dict:
        """A runs row as the dict callers see (config and summary decoded)."""
        d = dict(r)
        d["config"] = json.loads(d["config"] or "{}")
        d["summary"] = json.loads(d.get("summary") or "{}")
        d["group"] = d.pop("grp")
        return d

    # -- lifecycle -------------------------------------------------------------------
    @abstractmethod
    def create(self) -> None:
        """Create the schema (idempotent)."""

    @abstractmethod
    def check_schema(self) -> None:
        """Raise SchemaMismatch for a store this version cannot use; migrate older ones."""

    @abstractmethod
    def durable(self) -> None:
        """Make every committed transaction durable (WAL fsync or equivalent)."""

    @abstractmethod
    def close(self) -> None:
        """Close this thread's connection."""

    # -- artifacts and versions ------------------------------------------------------------
    @abstractmethod
    def artifact(self, name: str) -> dict | None: ...

    @abstractmethod
    def artifacts(self) -> list[dict]: ...

    @abstractmethod
    def ensure_artifact(self, name: str, type_: str | None, description: str | None = None) -> dict:
        """The artifact row, created if missing; Conflict when its type differs."""

    @abstractmethod
    def version(self, name: str, num: int) -> dict | None: ...

    @abstractmethod
    def versions(self, name: str) -> list[dict]:
        """Newest first."""

    @abstractmethod
    def all_versions(self) -> list[dict]: ...

    @abstractmethod
    def create_version(self, name: str, type_: str | None, *, root: str, ident: str, root_meta: bytes,
                       links: str | None, expected, parent: int | None, message: str | None,
                       metadata: dict | None, file_count: int, total_bytes: int, how: str,
                       description: str | None = None, draft_reset: dict | None = None,
                       seal: dict | None = None) -> tuple[int, bool]:
        """Insert the next version and move ``latest`` in one durable transaction.

        ``expected``: the latest number the caller built on (None: no version yet), or
        ``ANY``; when latest differs, raises ``Stale`` (nothing changed).  When latest
        has identity ``ident`` nothing is inserted and ``(latest, True)`` returns.
        ``parent`` defaults to the latest it replaces.  ``draft_reset`` =
        ``{"id", "outcome", "root_rec"}`` makes that draft clean on the resulting
        version in the same transaction (``root_rec``: its root's record); ``seal`` = ``{"pending_id", "generation"}`` marks a pending
        collaborative version finished (``Stale`` if its generation moved)."""

    @abstractmethod
    def update_version(self, name: str, num: int, *, metadata: dict | None = None, replace_metadata: bool = False,
                       description: str | None = None, tags: list | None = None, expires=ANY) -> dict:
        """Change a version's metadata (merged, or replaced), description, tags or expiry time
        (None: never); its content never changes.  Returns the row."""

    @abstractmethod
    def delete_version(self, name: str, num: int, force: bool = False) -> dict:
        """Delete a version; its number is never reused.  Conflict while a user alias points at it
        unless ``force`` (the aliases go too); ``latest`` moves to the newest version left.
        Returns ``{"latest": num | None, "aliases_removed": [...]}``."""

    @abstractmethod
    def expired_versions(self, now: float) -> list[tuple[str, int]]:
        """(artifact, num) of versions whose TTL has run out (gc deletes them)."""

    @abstractmethod
    def set_artifact_type(self, name: str, type_: str) -> None:
        """Change an artifact's type while it has no version (Conflict otherwise)."""

    # -- aliases ---------------------------------------------------------------------------
    @abstractmethod
    def alias(self, name: str, alias: str) -> int | None: ...

    @abstractmethod
    def aliases(self, name: str) -> dict[int, list[str]]: ...

    @abstractmethod
    def set_alias(self, name: str, alias: str, num: int) -> None: ...

    @abstractmethod
    def delete_alias(self, name: str, alias: str) -> bool: ...

    # -- drafts ----------------------------------------------------------------------------
    @abstractmethod
    def draft(self, key: str) -> dict | None: ...

    @abstractmethod
    def draft_by_id(self, draft_id: int) -> dict | None: ...

    @abstractmethod
    def drafts(self) -> list[dict]: ...

    @abstractmethod
    def create_draft(self, key: str, artifact: str, type_: str, parent: int | None, base_root: str | None,
                     root_rec: bytes, base_links: str | None) -> dict:
        """Create the draft ``key`` unless it exists; returns its row (ids never reused)."""

    @abstractmethod
    def draft_state(self, draft_id: int, pins: bool = True) -> dict:
        """``{"dirs": {dir_id: base hex|None}, "entries": [(dir_id, name, rec)],
        "inodes": {ino: rec}, "pins": {(dir_id, name): ino}}`` (the root record is
        the entry (0, b"")).  O(changes), and O(names ever looked up) for the pins;
        ``pins=False`` leaves those out (``None``): they outlive commits, so an owner that
        holds them need not read them again after one."""

    @abstractmethod
    def draft_apply(self, draft_id: int, ops: list, next_ino: int | None = None,
                    links_adopted: bool | None = None) -> None:
        """Apply a batch of changes atomically.  ops: ``("ent", dir, name, rec|None)``
        (None deletes the row), ``("dir", dir, base|None)``, ``("deldir", dir)`` (its
        entries too), ``("ino", ino, rec|None)``, ``("pin", dir, name, ino|None)``."""

    @abstractmethod
    def reset_draft(self, draft_id: int, parent: int | None, base_root: str | None, root_rec: bytes,
                    links: str | None, outcome: str) -> None:
        """Make a draft clean on a version (durable): its rows go, its inode pins stay."""

    @abstractmethod
    def set_draft_outcome(self, draft_id: int, outcome: str) -> None: ...

    @abstractmethod
    def delete_draft(self, draft_id: int) -> None: ...

    @abstractmethod
    def all_draft_recs(self) -> tuple[list, list]:
        """``([(draft_id, base hex)], [(draft_id, rec)])`` of every draft (gc, fsck)."""

    @abstractmethod
    def draft_links(self) -> list[tuple[int, str]]:
        """(draft id, link-table digest hex) of drafts whose parent has hard links (gc keeps them)."""

    # -- put's stat cache --------------------------------------------------------------------
    @abstractmethod
    def filecache_get(self, paths: list[bytes], under: bytes | None = None) -> dict[bytes, tuple]:
        """{path: (stat key, digest)} for those of ``paths`` the cache knows.  ``under``: every
        path starts with it (a store may then read the range instead of each path)."""

    @abstractmethod
    def filecache_put(self, rows: list[tuple]) -> None: ...

    # -- collaborative versions ------------------------------------------------------------
    @abstractmethod
    def pending(self, artifact: str, did: str) -> dict | None: ...

    @abstractmethod
    def pendings(self, artifact: str | None = None) -> list[dict]: ...

    @abstractmethod
    def pending_rows(self, pending_id: int) -> list[tuple[str, bytes, bytes]]: ...

    @abstractmethod
    def all_pending_recs(self) -> list[tuple[str, bytes]]:
        """(label, rec) of every row of every unfinished pending version (gc, fsck)."""

    @abstractmethod
    def all_pending_bases(self) -> list[tuple[str, str]]:
        """(label, base tree hex) of unfinished pending versions that start from a version."""

    @abstractmethod
    def upsert_rows(self, artifact: str, type_: str, did: str, parent: int | None, base_root: str | None,
                    writer: str, label: str, rows: dict[bytes, bytes]) -> dict:
        """Replace ``writer``'s rows (path -> rec) unless they conflict with another
        writer's (one set-based check); Conflict names every path."""

    @abstractmethod
    def begin_finish(self, artifact: str, did: str) -> dict:
        """Take the finish lease (durable) and read the pending version: its row plus ``rows``
        [(writer, path, rec)] and ``generation``.  Busy while another finish holds the lease;
        NotFound / Finished as the pending version's state says."""

    @abstractmethod
    def end_finish(self, pending_id: int, holder: str | None = None) -> None:
        """Give the lease back after a finish that failed (``holder``: take it from a finish that
        died, only if that one still holds it)."""

    @abstractmethod
    def discard_pending(self, artifact: str, did: str) -> bool: ...

    # -- runs ------------------------------------------------------------------------------
    @abstractmethod
    def run_start(self, row: dict) -> None: ...

    @abstractmethod
    def run_end(self, run_id: str, outcome: str, exit_status: int | None) -> None: ...

    @abstractmethod
    def run_resume(self, run_id: str, pid: int) -> bool:
        """A run started again by ``init(id=..., resume=...)``: running once more; False if unknown."""

    @abstractmethod
    def run_log(self, run_id: str, data: dict) -> None:
        """Merge logged values into the run's summary."""

    @abstractmethod
    def run(self, run_id: str) -> dict | None: ...

    @abstractmethod
    def runs(self, limit: int | None = None) -> list[dict]: ...

    @abstractmethod
    def run_used(self, run_id: str, artifact: str, num: int) -> None: ...

    @abstractmethod
    def run_produced(self, run_id: str, artifact: str, num: int, how: str, created: float) -> bool: ...

    @abstractmethod
    def run_upserted(self, run_id: str, artifact: str, did: str) -> None: ...

    @abstractmethod
    def run_inputs(self, run_id: str) -> list[dict]: ...

    @abstractmethod
    def run_outputs(self, run_id: str) -> list[dict]: ...

    @abstractmethod
    def run_pending_upserts(self, run_id: str) -> list[dict]: ...

    @abstractmethod
    def version_producers(self, artifact: str, num: int) -> list[dict]: ...

    @abstractmethod
    def version_consumers(self, artifact: str, num: int) -> list[dict]: ...
