"""Pending collaborative versions in the SQLite metadata store (mixed into SqliteMeta).

A pending version is keyed by ``(artifact, distributed_id)``.  Each writer's
contribution is a set of rows ``path -> (rec, content key, is-dir)``, replaced
as a whole by that writer's next upsert.  The conflict check is set-based (the
writer's rows go into a temporary table and three joins find every clash: the
same path with other content, a path below another writer's non-directory, a
non-directory above another writer's path), and it and the replacement are one
transaction, so concurrent upserts from many processes lose nothing.

Finishing takes a lease (``closing``) so that upserts arriving while the trees
are built are refused clearly instead of silently missing from the version;
the version is then inserted with ``create_version(seal=...)``, which checks
the pending version's ``generation`` (bumped by every upsert) is the one that
was read.  A finish that dies leaves a lease that simply expires.
"""
from __future__ import annotations

import os
import socket
import time

from ..errors import Busy, Conflict, Finished, NotFound, Stale

FINISH_LEASE = 600.0  # seconds an unfinished finish keeps upserts out


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "?"


def lease_holder() -> str:
    """Who holds a finish lease: enough to tell, on the same machine, that the holder is gone."""
    return f"pid {os.getpid()} on {socket.gethostname()} boot {boot_id()}"


def holder_is_gone(holder: str | None) -> bool:
    """A lease holder on this machine that is no longer running (killed, or before a reboot)."""
    import re

    from ..proc import alive

    m = re.fullmatch(r"pid (\d+) on (\S+) boot (\S+)", holder or "")
    if not m or m.group(2) != socket.gethostname():
        return False  # another machine's: its lease runs out by itself
    return m.group(3) != boot_id() or not alive(int(m.group(1)))

PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending(
    id INTEGER PRIMARY KEY AUTOINCREMENT, artifact TEXT NOT NULL, type TEXT NOT NULL,
    distributed_id TEXT NOT NULL, parent INTEGER, base_root TEXT,
    created REAL NOT NULL, finished INTEGER, generation INTEGER NOT NULL DEFAULT 0,
    closing REAL, closing_by TEXT,
    UNIQUE(artifact, distributed_id));
CREATE TABLE IF NOT EXISTS pending_rows(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, path BLOB NOT NULL,
    rec BLOB NOT NULL, ckey BLOB, isdir INTEGER NOT NULL, PRIMARY KEY(pending_id, writer, path));
CREATE INDEX IF NOT EXISTS pending_rows_path ON pending_rows(pending_id, path);
CREATE TABLE IF NOT EXISTS pending_writers(
    pending_id INTEGER NOT NULL, writer TEXT NOT NULL, label TEXT, updated REAL NOT NULL,
    PRIMARY KEY(pending_id, writer))
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
            "SELECT writer, path, rec FROM pending_rows WHERE pending_id=? ORDER BY path, writer", (pending_id,))]

    def all_pending_recs(self) -> list[tuple[str, bytes]]:
        """(label, rec) of every row of every unfinished pending version (gc, fsck)."""
        return [(f"{r['artifact']} (pending {r['distributed_id']})", bytes(r["rec"])) for r in self.db.execute(
            "SELECT p.artifact, p.distributed_id, r.rec FROM pending_rows r JOIN pending p ON p.id=r.pending_id"
            " WHERE p.finished IS NULL")]

    def all_pending_bases(self) -> list[tuple[str, str]]:
        return [(f"{r['artifact']} (pending {r['distributed_id']})", r["base_root"]) for r in self.db.execute(
            "SELECT artifact, distributed_id, base_root FROM pending WHERE finished IS NULL AND base_root IS NOT NULL")]

    @staticmethod
    def _finished_error(row) -> Finished:
        return Finished(f"already finished as {row['artifact']}:v{row['finished']}")

    @staticmethod
    def _closing(row) -> bool:
        return row["closing"] is not None and row["closing"] > time.time()

    def upsert_rows(self, artifact, type_, did, parent, base_root, writer, label, rows) -> dict:
        """``rows``: {path: (rec, content key or None for a removal, is_dir)}."""
        with self.tx(durable=True) as db:
            self._ensure_artifact(db, artifact, type_)
            p = self._pending_row(db, artifact, did)
            if p is None:
                pid = db.execute(
                    "INSERT INTO pending(artifact, type, distributed_id, parent, base_root, created)"
                    " VALUES(?,?,?,?,?,?)", (artifact, type_, did, parent, base_root, time.time())).lastrowid
            else:
                if p["finished"] is not None:
                    raise self._finished_error(p)
                if self._closing(p):
                    raise Busy(f"pending version {artifact} ({did}) is being finished by {p['closing_by']}",
                               holder=p["closing_by"], pending_id=p["id"])
                if p["parent"] != parent:
                    have = f"v{p['parent']}" if p["parent"] is not None else "nothing (a new version from scratch)"
                    mine = f"v{parent}" if parent is not None else "nothing"
                    raise Conflict(f"pending version {artifact} ({did}) starts from {have}; this writer's starts from {mine}")
                pid = p["id"]
            self._check_conflicts(db, pid, artifact, did, writer, rows)
            db.execute("DELETE FROM pending_rows WHERE pending_id=? AND writer=?", (pid, writer))
            db.executemany("INSERT INTO pending_rows VALUES(?,?,?,?,?,?)",
                           [(pid, writer, path, rec, ckey, int(isdir)) for path, (rec, ckey, isdir) in rows.items()])
            db.execute("INSERT OR REPLACE INTO pending_writers VALUES(?,?,?,?)", (pid, writer, label, time.time()))
            db.execute("UPDATE pending SET generation=generation+1 WHERE id=?", (pid,))
        return self._enrich(self.pending(artifact, did))

    @staticmethod
    def _check_conflicts(db, pid: int, artifact: str, did: str, writer: str, rows: dict) -> None:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS up_rows(path BLOB PRIMARY KEY, lo BLOB, hi BLOB, ckey BLOB,"
                   " isdir INTEGER)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS up_anc(anc BLOB, path BLOB)")
        db.execute("DELETE FROM up_rows")
        db.execute("DELETE FROM up_anc")
        # paths below P are exactly those in [P + "/", P + "0") ("0" follows "/")
        db.executemany("INSERT INTO up_rows VALUES(?,?,?,?,?)",
                       [(p, p + b"/", p + b"0", ckey, int(isdir)) for p, (_, ckey, isdir) in rows.items()])
        anc = []
        for p in rows:
            i = p.find(b"/")
            while i >= 0:
                anc.append((p[:i], p))
                i = p.find(b"/", i + 1)
        db.executemany("INSERT INTO up_anc VALUES(?,?)", anc)
        clashes: dict[bytes, set[str]] = {}
        # CROSS JOIN keeps the writer's rows as the outer loop: the cost follows this upsert,
        # not the size of the pending version
        for q in (
            # the same path with other content (a removal has no content key)
            "SELECT u.path AS path, r.writer AS writer FROM up_rows u CROSS JOIN pending_rows r ON r.pending_id=?"
            " AND r.path=u.path AND r.writer<>? WHERE r.ckey IS NOT u.ckey AND NOT (r.isdir AND u.isdir)",
            # something of another writer's below my file or removal
            "SELECT u.path AS path, r.writer AS writer FROM up_rows u JOIN pending_rows r INDEXED BY pending_rows_path"
            " ON r.pending_id=? AND r.path>=u.lo AND r.path<u.hi AND r.writer<>? WHERE u.isdir=0",
            # my path inside another writer's file or removal
            "SELECT a.path AS path, r.writer AS writer FROM up_anc a CROSS JOIN pending_rows r ON r.pending_id=?"
            " AND r.path=a.anc AND r.writer<>? WHERE r.isdir=0",
        ):
            for r in db.execute(q, (pid, writer)):
                clashes.setdefault(bytes(r["path"]), set()).add(r["writer"])
        if clashes:
            labels = {r["writer"]: r["label"] for r in db.execute(
                "SELECT writer, label FROM pending_writers WHERE pending_id=?", (pid,))}
            from ..names import quote

            parts = [f"{quote(path)} (also set by {', '.join(sorted(labels.get(w) or w for w in ws))})"
                     for path, ws in sorted(clashes.items())]
            raise Conflict(f"conflicting upsert into {artifact} (pending {did}): " + "; ".join(parts))

    def begin_finish(self, artifact: str, did: str) -> dict:
        """Take the finish lease and read the pending version: ``{row..., "rows": [...]}``."""
        with self.tx(durable=True) as db:
            p = self._pending_row(db, artifact, did)
            if p is None:
                raise NotFound(f"{artifact} has no pending version {did!r}")
            if p["finished"] is not None:
                raise self._finished_error(p)
            if self._closing(p):
                raise Busy(f"pending version {artifact} ({did}) is already being finished by {p['closing_by']}",
                           holder=p["closing_by"], pending_id=p["id"])
            db.execute("UPDATE pending SET closing=?, closing_by=? WHERE id=?",
                       (time.time() + FINISH_LEASE, lease_holder(), p["id"]))
            out = dict(p)
            out["rows"] = [(r["writer"], bytes(r["path"]), bytes(r["rec"])) for r in db.execute(
                "SELECT writer, path, rec FROM pending_rows WHERE pending_id=? ORDER BY path, writer", (p["id"],))]
        return out

    def end_finish(self, pending_id: int, holder: str | None = None) -> None:
        """Give the lease back (a finish that failed; or, with ``holder``, take it from a finish
        that died -- only if that one still holds it)."""
        with self.tx() as db:
            if holder is None:
                db.execute("UPDATE pending SET closing=NULL, closing_by=NULL WHERE id=? AND finished IS NULL",
                           (pending_id,))
            else:
                db.execute("UPDATE pending SET closing=NULL, closing_by=NULL WHERE id=? AND finished IS NULL"
                           " AND closing_by=?", (pending_id, holder))

    @staticmethod
    def _check_seal(db, seal: dict) -> None:
        r = db.execute("SELECT * FROM pending WHERE id=?", (seal["pending_id"],)).fetchone()
        if r is None:
            raise NotFound("the pending version was discarded meanwhile")
        if r["finished"] is not None:
            raise PendingMeta._finished_error(r)
        if r["generation"] != seal["generation"]:
            raise Stale("the pending version changed while it was being finished")

    @staticmethod
    def _seal_in(db, seal: dict, num: int) -> None:
        db.execute("UPDATE pending SET finished=?, closing=NULL, closing_by=NULL WHERE id=?", (num, seal["pending_id"]))
        # the rows are in the version now; the pending row stays as the lock
        db.execute("DELETE FROM pending_rows WHERE pending_id=?", (seal["pending_id"],))

    def discard_pending(self, artifact: str, did: str) -> bool:
        with self.tx(durable=True) as db:
            p = self._pending_row(db, artifact, did)
            if p is None or p["finished"] is not None:
                return False
            for t in ("pending_rows", "pending_writers"):
                db.execute(f"DELETE FROM {t} WHERE pending_id=?", (p["id"],))
            db.execute("DELETE FROM pending WHERE id=?", (p["id"],))
            return True
