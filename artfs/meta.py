"""Metadata store: artifacts, versions, aliases, drafts (SQLite, embedded).

The rest of artfs talks to :class:`SqliteMeta` through its public methods
only (no SQL outside this module), so a PostgreSQL implementation can stand
in for it later with the same methods.

Concurrency rule: one connection per thread (``threading.local``), WAL
journal, ``isolation_level=None`` and explicit ``BEGIN IMMEDIATE`` for every
read-modify-write, with a long busy timeout: many processes committing at
once queue on the write lock instead of failing with "database is locked",
and a version number is allocated and inserted inside one such transaction,
so two writers never share one.

Rows are plain dicts; digests are lowercase hex text.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

from .errors import BadInput, Conflict, NotFound
from .meta_pending import PENDING_SCHEMA, PendingMeta
from .meta_runs import RUNS_SCHEMA, RunsMeta

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 120_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS artifacts(
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, type TEXT NOT NULL,
    description TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
    artifact_id INTEGER NOT NULL, num INTEGER NOT NULL, root TEXT NOT NULL,
    ident TEXT NOT NULL, parent INTEGER, created REAL NOT NULL, message TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', file_count INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL, how TEXT NOT NULL,
    PRIMARY KEY(artifact_id, num));
CREATE TABLE IF NOT EXISTS aliases(
    artifact_id INTEGER NOT NULL, alias TEXT NOT NULL, num INTEGER NOT NULL,
    PRIMARY KEY(artifact_id, alias));
CREATE TABLE IF NOT EXISTS drafts(
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, artifact TEXT NOT NULL,
    type TEXT NOT NULL, parent INTEGER, base_root TEXT, created REAL NOT NULL,
    next_id INTEGER NOT NULL DEFAULT 1, outcome TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS draft_dirs(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, base TEXT,
    PRIMARY KEY(draft_id, dir_id));
CREATE TABLE IF NOT EXISTS draft_entries(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, name BLOB NOT NULL,
    rec BLOB NOT NULL, PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS filecache(
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT);
"""


class SqliteMeta(PendingMeta, RunsMeta):
    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    # -- connection ----------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @staticmethod
    def _wal(conn: sqlite3.Connection) -> None:
        """Switch to WAL once per database (it persists in the file).  The switch needs an
        exclusive lock and SQLite does not wait for it with the busy handler, so processes
        creating one store together retry here instead of failing with "database is locked"."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def tx(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); yields the connection."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def create(self) -> None:
        db = self.db
        db.executescript(SCHEMA)
        db.executescript(PENDING_SCHEMA)
        db.executescript(RUNS_SCHEMA)
        db.execute("INSERT OR IGNORE INTO info VALUES('schema', ?)", (str(SCHEMA_VERSION),))

    def durable(self) -> None:
        """Make every committed transaction durable (after a user's fsync)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        fd = os.open(self.path + "-wal", os.O_RDONLY) if os.path.exists(self.path + "-wal") else None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- artifacts -----------------------------------------------------------
    def artifact(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM artifacts WHERE name=?", (name,)).fetchone()
        return dict(row) if row else None

    def artifacts(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM artifacts ORDER BY name")]

    def _ensure_artifact(self, db, name: str, type_: str | None, description: str | None = None) -> int:
        row = db.execute("SELECT id, type FROM artifacts WHERE name=?", (name,)).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO artifacts(name, type, description, created) VALUES(?,?,?,?)",
                (name, type_ or "dataset", description, time.time()),
            )
            return cur.lastrowid
        if type_ is not None and row["type"] != type_:
            raise Conflict(f"{name} is a {row['type']}, not a {type_}")
        if description is not None:
            db.execute("UPDATE artifacts SET description=? WHERE id=?", (description, row["id"]))
        return row["id"]

    def ensure_artifact(self, name: str, type_: str | None, description: str | None = None) -> dict:
        with self.tx() as db:
            self._ensure_artifact(db, name, type_, description)
        return self.artifact(name)

    # -- versions -------------------------------------------------------------
    @staticmethod
    def _version(row, name: str) -> dict:
        d = dict(row)
        d["artifact"] = name
        d["metadata"] = json.loads(d["metadata"] or "{}")
        return d

    def version(self, name: str, num: int) -> dict | None:
        row = self.db.execute(
            "SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=? AND v.num=?",
            (name, num),
        ).fetchone()
        return self._version(row, name) if row else None

    def versions(self, name: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=? ORDER BY v.num DESC",
            (name,),
        )
        return [self._version(r, name) for r in rows]

    def all_versions(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT v.*, a.name AS aname FROM versions v JOIN artifacts a ON a.id=v.artifact_id ORDER BY a.name, v.num"
        )
        out = []
        for r in rows:
            d = dict(r)
            name = d.pop("aname")
            out.append(self._version(d, name))
        return out

    def commit_version(
        self,
        name: str,
        type_: str | None,
        root: str,
        ident: str,
        parent: int | None,
        compare_to: str,
        message: str | None,
        metadata: dict | None,
        file_count: int,
        total_bytes: int,
        how: str,
        description: str | None = None,
        after=None,
    ) -> tuple[int, bool]:
        """Allocate the next number and insert the version, moving ``latest``.

        ``compare_to`` is ``"parent"`` or ``"latest"``: when that version has
        the same identity, nothing is inserted and ``(its number, True)`` is
        returned.  ``after(db, num, unchanged)`` runs inside the same
        transaction (drafts use it to reset themselves atomically).  With
        ``"latest"`` and no ``parent``, the new version's parent is the
        latest it was compared to (what ``put`` replaces).
        """
        with self.tx() as db:
            return self._commit_version_in(db, name, type_, root, ident, parent, compare_to, message, metadata,
                                           file_count, total_bytes, how, description, after)

    def _commit_version_in(self, db, name, type_, root, ident, parent, compare_to, message, metadata, file_count,
                           total_bytes, how, description=None, after=None) -> tuple[int, bool]:
        """commit_version's body, inside the caller's transaction."""
        meta_json = json.dumps(metadata or {}, sort_keys=True)
        aid = self._ensure_artifact(db, name, type_, description)
        if compare_to == "parent":
            cmp = parent
        else:
            r = db.execute("SELECT num FROM aliases WHERE artifact_id=? AND alias='latest'", (aid,)).fetchone()
            cmp = r["num"] if r else None
        if cmp is not None:
            r = db.execute("SELECT ident FROM versions WHERE artifact_id=? AND num=?", (aid, cmp)).fetchone()
            if r is not None and r["ident"] == ident:
                if after:
                    after(db, cmp, True)
                return cmp, True
        if parent is None:
            parent = cmp
        r = db.execute("SELECT MAX(num) AS m FROM versions WHERE artifact_id=?", (aid,)).fetchone()
        num = 0 if r["m"] is None else r["m"] + 1
        db.execute(
            "INSERT INTO versions(artifact_id, num, root, ident, parent, created, message, metadata,"
            " file_count, total_bytes, how) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (aid, num, root, ident, parent, time.time(), message, meta_json, file_count, total_bytes, how),
        )
        db.execute("INSERT OR REPLACE INTO aliases VALUES(?, 'latest', ?)", (aid, num))
        if after:
            after(db, num, False)
        return num, False

    # -- aliases --------------------------------------------------------------
    def alias(self, name: str, alias: str) -> int | None:
        r = self.db.execute(
            "SELECT al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id WHERE a.name=? AND al.alias=?",
            (name, alias),
        ).fetchone()
        return r["num"] if r else None

    def aliases(self, name: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        rows = self.db.execute(
            "SELECT al.alias, al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id WHERE a.name=? ORDER BY al.alias",
            (name,),
        )
        for r in rows:
            out.setdefault(r["num"], []).append(r["alias"])
        return out

    def set_alias(self, name: str, alias: str, num: int) -> None:
        with self.tx() as db:
            a = db.execute("SELECT id FROM artifacts WHERE name=?", (name,)).fetchone()
            if a is None:
                raise NotFound(f"no artifact {name!r}")
            db.execute("INSERT OR REPLACE INTO aliases VALUES(?,?,?)", (a["id"], alias, num))

    def delete_alias(self, name: str, alias: str) -> bool:
        with self.tx() as db:
            cur = db.execute(
                "DELETE FROM aliases WHERE alias=? AND artifact_id=(SELECT id FROM artifacts WHERE name=?)",
                (alias, name),
            )
            return cur.rowcount > 0

    # -- drafts ---------------------------------------------------------------
    def draft(self, key: str) -> dict | None:
        r = self.db.execute("SELECT * FROM drafts WHERE key=?", (key,)).fetchone()
        return dict(r) if r else None

    def draft_by_id(self, draft_id: int) -> dict | None:
        r = self.db.execute("SELECT * FROM drafts WHERE id=?", (draft_id,)).fetchone()
        return dict(r) if r else None

    def drafts(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM drafts ORDER BY id")]

    def create_draft(self, key: str, artifact: str, type_: str, parent: int | None, base_root: str | None) -> dict:
        """Create the draft named ``key`` unless it exists; returns its row."""
        with self.tx() as db:
            r = db.execute("SELECT * FROM drafts WHERE key=?", (key,)).fetchone()
            if r is not None:
                return dict(r)
            cur = db.execute(
                "INSERT INTO drafts(key, artifact, type, parent, base_root, created) VALUES(?,?,?,?,?,?)",
                (key, artifact, type_, parent, base_root, time.time()),
            )
            did = cur.lastrowid
            db.execute("INSERT INTO draft_dirs VALUES(?, 0, ?)", (did, base_root))
        return self.draft(key)

    def draft_state(self, draft_id: int) -> tuple[dict[int, str | None], list[tuple[int, bytes, bytes]]]:
        dirs = {r["dir_id"]: r["base"] for r in self.db.execute("SELECT dir_id, base FROM draft_dirs WHERE draft_id=?", (draft_id,))}
        ents = [
            (r["dir_id"], bytes(r["name"]), bytes(r["rec"]))
            for r in self.db.execute("SELECT dir_id, name, rec FROM draft_entries WHERE draft_id=?", (draft_id,))
        ]
        return dirs, ents

    def draft_apply(self, draft_id: int, ops, next_id: int | None = None) -> None:
        """Apply a batch of changes to a draft atomically.

        ops: ("dir", dir_id, base) | ("deldir", dir_id) | ("put", dir_id, name, rec) | ("del", dir_id, name)
        """
        with self.tx() as db:
            self._draft_apply(db, draft_id, ops, next_id)

    @staticmethod
    def _draft_apply(db, draft_id, ops, next_id=None):
        for op in ops:
            if op[0] == "put":
                db.execute("INSERT OR REPLACE INTO draft_entries VALUES(?,?,?,?)", (draft_id, op[1], op[2], op[3]))
            elif op[0] == "del":
                db.execute("DELETE FROM draft_entries WHERE draft_id=? AND dir_id=? AND name=?", (draft_id, op[1], op[2]))
            elif op[0] == "dir":
                db.execute("INSERT OR REPLACE INTO draft_dirs VALUES(?,?,?)", (draft_id, op[1], op[2]))
            elif op[0] == "deldir":
                db.execute("DELETE FROM draft_dirs WHERE draft_id=? AND dir_id=?", (draft_id, op[1]))
                db.execute("DELETE FROM draft_entries WHERE draft_id=? AND dir_id=?", (draft_id, op[1]))
            else:
                raise BadInput(f"unknown draft op {op[0]!r}")
        if next_id is not None:
            db.execute("UPDATE drafts SET next_id=MAX(next_id, ?) WHERE id=?", (next_id, draft_id))

    def reset_draft_in(self, db, draft_id: int, parent: int | None, base_root: str | None, outcome: str, keep_ops=()) -> None:
        """Inside a transaction: make the draft clean on top of a new parent."""
        db.execute("DELETE FROM draft_entries WHERE draft_id=?", (draft_id,))
        db.execute("DELETE FROM draft_dirs WHERE draft_id=?", (draft_id,))
        db.execute("INSERT INTO draft_dirs VALUES(?, 0, ?)", (draft_id, base_root))
        db.execute("UPDATE drafts SET parent=?, base_root=?, outcome=? WHERE id=?", (parent, base_root, outcome, draft_id))
        self._draft_apply(db, draft_id, keep_ops)

    def set_draft_outcome(self, draft_id: int, outcome: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE drafts SET outcome=? WHERE id=?", (outcome, draft_id))

    def delete_draft(self, draft_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM draft_entries WHERE draft_id=?", (draft_id,))
            db.execute("DELETE FROM draft_dirs WHERE draft_id=?", (draft_id,))
            db.execute("DELETE FROM drafts WHERE id=?", (draft_id,))

    def all_draft_recs(self):
        """(draft_id, rec) of every draft entry and (draft_id, base) of every dir (for gc/fsck)."""
        bases = [(r["draft_id"], r["base"]) for r in self.db.execute("SELECT draft_id, base FROM draft_dirs")]
        recs = [(r["draft_id"], bytes(r["rec"])) for r in self.db.execute("SELECT draft_id, rec FROM draft_entries")]
        return bases, recs

    # -- file cache for put (path -> stat -> digest) ---------------------------
    def filecache_get(self, paths: list[str]) -> dict[str, tuple]:
        out = {}
        db = self.db
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            q = "SELECT * FROM filecache WHERE path IN (%s)" % ",".join("?" * len(chunk))
            for r in db.execute(q, chunk):
                out[r["path"]] = (r["dev"], r["ino"], r["size"], r["mtime_ns"], r["ctime_ns"], r["digest"])
        return out

    def filecache_put(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with self.tx() as db:
            db.executemany("INSERT OR REPLACE INTO filecache VALUES(?,?,?,?,?,?,?)", rows)
