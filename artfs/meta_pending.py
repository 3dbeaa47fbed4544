"""Metadata of collaborative (pending) versions: part of the metadata store.

Mixed into :class:`artfs.meta.SqliteMeta`; same rules (explicit
``BEGIN IMMEDIATE`` transactions, no SQL outside the metadata layer).

A pending version is keyed by ``(artifact, distributed_id)``.  Each writer's
contribution is a set of rows ``path -> rec`` (a draft entry record, or a
whiteout for a removal), replaced as a whole by that writer's next upsert.
The conflict check and the replacement happen in one transaction, so
concurrent upserts from many processes serialise on the write lock and
nothing is lost.  Sealing inserts the version and marks the pending row
finished in one transaction too; the row stays, so a later upsert or finish
with that id fails with "already finished as NAME:vN".
"""
from __future__ import annotations

import time

from .errors import Conflict, Finished, NotFound

PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending(
    id INTEGER PRIMARY KEY, artifact TEXT NOT NULL, type TEXT NOT NULL,
    distributed_id TEXT NOT NULL, parent INTEGER, base_root TEXT,
    created REAL NOT NULL, finished INTEGER,
    UNIQUE(artifact, distributed_id));
CREATE TABLE IF NOT EXISTS pending_rows(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, path BLOB NOT NULL,
    rec BLOB NOT NULL, PRIMARY KEY(pending_id, writer, path));
CREATE INDEX IF NOT EXISTS pending_rows_path ON pending_rows(pending_id, path);
CREATE TABLE IF NOT EXISTS pending_writers(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, label TEXT, updated REAL NOT NULL,
    PRIMARY KEY(pending_id, writer));
"""


class PendingMeta:
    def _pending_row(self, db, artifact: str, did: str):
        return db.execute("SELECT * FROM pending WHERE artifact=? AND distributed_id=?", (artifact, did)).fetchone()

    def pending(self, artifact: str, did: str) -> dict | None:
        r = self._pending_row(self.db, artifact, did)
        return dict(r) if r else None

    def pendings(self, artifact: str | None = None) -> list[dict]:
        q = "SELECT * FROM pending" + (" WHERE artifact=?" if artifact else "") + " ORDER BY created DESC"
        return [self._enrich(dict(r)) for r in self.db.execute(q, (artifact,) if artifact else ())]

    def _enrich(self, d: dict) -> dict:
        """Add the writers (with their row counts) and the number of distinct paths."""
        d["writers"] = [dict(w) for w in self.db.execute(
            "SELECT w.writer, w.label, w.updated, (SELECT COUNT(*) FROM pending_rows p WHERE p.pending_id=w.pending_id"
            " AND p.writer=w.writer) AS rows FROM pending_writers w WHERE w.pending_id=? ORDER BY w.updated", (d["id"],))]
        d["files"] = self.db.execute("SELECT COUNT(DISTINCT path) AS n FROM pending_rows WHERE pending_id=?",
                                     (d["id"],)).fetchone()["n"]
        return d

    def pending_rows(self, pending_id: int) -> list[tuple[str, bytes, bytes]]:
        return [(r["writer"], bytes(r["path"]), bytes(r["rec"])) for r in self.db.execute(
            "SELECT writer, path, rec FROM pending_rows WHERE pending_id=? ORDER BY path", (pending_id,))]

    def all_pending_recs(self) -> list[tuple[str, bytes]]:
        """(label, rec) of every row of every unfinished pending version (gc, fsck)."""
        return [(f"{r['artifact']} (pending {r['distributed_id']})", bytes(r["rec"])) for r in self.db.execute(
            "SELECT p.artifact, p.distributed_id, r.rec FROM pending_rows r JOIN pending p ON p.id=r.pending_id"
            " WHERE p.finished IS NULL")]

    @staticmethod
    def _finished_error(row) -> Finished:
        return Finished(f"already finished as {row['artifact']}:v{row['finished']}")

    def upsert_rows(self, artifact: str, type_: str, did: str, parent: int | None, base_root: str | None,
                    writer: str, label: str, rows: dict[bytes, bytes], same, is_dir) -> dict:
        """Replace ``writer``'s contribution with ``rows`` (path -> rec) unless it conflicts.

        ``same(rec_a, rec_b)`` says whether two records put the same content at a path;
        ``is_dir(rec)`` whether a record is a directory (other paths may lie below it).
        Raises Conflict naming every conflicting path and the other writer(s).
        """
        with self.tx() as db:
            self._ensure_artifact(db, artifact, type_)
            p = self._pending_row(db, artifact, did)
            if p is None:
                cur = db.execute(
                    "INSERT INTO pending(artifact, type, distributed_id, parent, base_root, created) VALUES(?,?,?,?,?,?)",
                    (artifact, type_, did, parent, base_root, time.time()))
                pid = cur.lastrowid
            else:
                if p["finished"] is not None:
                    raise self._finished_error(p)
                if p["parent"] != parent:
                    have = f"v{p['parent']}" if p["parent"] is not None else "nothing (a new version from scratch)"
                    mine = f"v{parent}" if parent is not None else "nothing"
                    raise Conflict(f"pending version {artifact} ({did}) starts from {have}; this writer's starts from {mine}")
                pid = p["id"]
            conflicts: dict[str, set[str]] = {}

            def clash(path: bytes, other: str) -> None:
                conflicts.setdefault(path.decode("utf-8", "surrogateescape"), set()).add(other)

            for path, rec in rows.items():
                for r in db.execute("SELECT writer, rec FROM pending_rows WHERE pending_id=? AND path=? AND writer<>?",
                                    (pid, path, writer)):
                    if not same(bytes(r["rec"]), rec):
                        clash(path, r["writer"])
                # something of mine inside another writer's file or removal, or the reverse
                if not is_dir(rec):
                    # paths below ``path`` are exactly those in [path + "/", path + "0") ("0" follows "/"):
                    # a range on the (pending_id, path) index, not a scan of every row
                    for r in db.execute("SELECT DISTINCT writer FROM pending_rows INDEXED BY pending_rows_path"
                                        " WHERE pending_id=? AND path>=? AND path<?"
                                        " AND writer<>?", (pid, path + b"/", path + b"0", writer)):
                        clash(path, r["writer"])
                parts = path.split(b"/")
                for i in range(1, len(parts)):
                    for r in db.execute("SELECT writer, rec FROM pending_rows WHERE pending_id=? AND writer<>? AND path=?",
                                        (pid, writer, b"/".join(parts[:i]))):
                        if not is_dir(bytes(r["rec"])):
                            clash(path, r["writer"])
            if conflicts:
                labels = {r["writer"]: r["label"] for r in db.execute(
                    "SELECT writer, label FROM pending_writers WHERE pending_id=?", (pid,))}
                parts = [f"{path} (also set by {', '.join(sorted(labels.get(w) or w for w in ws))})"
                         for path, ws in sorted(conflicts.items())]
                raise Conflict(f"conflicting upsert into {artifact} (pending {did}): " + "; ".join(parts))
            db.execute("DELETE FROM pending_rows WHERE pending_id=? AND writer=?", (pid, writer))
            db.executemany("INSERT INTO pending_rows VALUES(?,?,?,?)",
                           [(pid, writer, path, rec) for path, rec in rows.items()])
            db.execute("INSERT OR REPLACE INTO pending_writers VALUES(?,?,?,?)", (pid, writer, label, time.time()))
        return self._enrich(self.pending(artifact, did))

    def seal_pending(self, artifact: str, did: str, build, message: str | None = None,
                     metadata: dict | None = None) -> tuple[int, bool]:
        """Seal: inside one write transaction, ``build(rows, parent, base_root) -> (root_hex,
        ident_hex, files, bytes)`` writes the trees, the version is inserted and the pending row
        marked finished.  Upserts wait for it meanwhile, so the version holds exactly the rows
        that were there (and a stream of upserts cannot keep the finish from happening)."""
        with self.tx() as db:
            p = self._pending_row(db, artifact, did)
            if p is None:
                raise NotFound(f"no pending version {did!r} of {artifact}")
            if p["finished"] is not None:
                raise self._finished_error(p)
            rows = [(r["writer"], bytes(r["path"]), bytes(r["rec"])) for r in db.execute(
                "SELECT writer, path, rec FROM pending_rows WHERE pending_id=? ORDER BY path", (p["id"],))]
            root, ident, nfiles, nbytes = build(rows, p["parent"], p["base_root"])
            num, unchanged = self._commit_version_in(
                db, artifact, p["type"], root, ident, p["parent"], "parent" if p["parent"] is not None else "latest",
                message, metadata, nfiles, nbytes, "collaborative")
            db.execute("UPDATE pending SET finished=? WHERE id=?", (num, p["id"]))
            # the rows are in the version now; the pending row stays as the lock
            db.execute("DELETE FROM pending_rows WHERE pending_id=?", (p["id"],))
        return num, unchanged

    def discard_pending(self, artifact: str, did: str) -> bool:
        with self.tx() as db:
            p = self._pending_row(db, artifact, did)
            if p is None or p["finished"] is not None:
                return False
            for t in ("pending_rows", "pending_writers"):
                db.execute(f"DELETE FROM {t} WHERE pending_id=?", (p["id"],))
            db.execute("DELETE FROM pending WHERE id=?", (p["id"],))
            return True

