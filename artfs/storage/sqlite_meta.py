"""The embedded ``MetaStore``: SQLite in WAL mode, one machine.

Concurrency: one connection per thread (``threading.local``), WAL journal,
``isolation_level=None`` and an explicit ``BEGIN IMMEDIATE`` for every
read-modify-write, with a long busy timeout: many processes committing at once
queue on the write lock instead of failing with "database is locked".  Callers
in the FUSE daemon run every method in a worker thread, so a lock held by
another process never stalls the trio loop -- except a draft's small changes,
which the loop records itself inside :meth:`SqliteMeta.nowait` (a second
connection that never waits and never checkpoints: ``Busy`` sends the change to
a worker thread after all), saving a create half its cost.

Durability: ``synchronous=NORMAL`` (a commit is atomic but reaches the disk at
the next sync), so draft edits cost no fsync each -- like a local disk, they
are durable after the program's ``fsync``, which calls :meth:`durable`.
Transactions whose outcome a caller acts on pass ``durable=True`` and are
synced before the method returns (DESIGN.md §5, invariant 3).

Rows are plain dicts; digests are lowercase hex text.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

from ..errors import Conflict, NoSpace, NotFound, SchemaMismatch, Stale
from .meta import ANY, Busy, MetaStore
from .sqlite_pending import PENDING_SCHEMA, PendingMeta
from .sqlite_runs import RUNS_SCHEMA, RunsMeta

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 120_000
SQLITE_FULL = 13
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
NOWAIT_HANDOFF = 512  # see SqliteMeta.nowait
FILECACHE_RANGE_MIN = 2000  # paths from which filecache_get reads a range


SCHEMA = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS artifacts(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, type TEXT NOT NULL,
    description TEXT, created REAL NOT NULL, next_num INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS versions(
    artifact_id INTEGER NOT NULL, num INTEGER NOT NULL, root TEXT NOT NULL,
    ident TEXT NOT NULL, parent INTEGER, created REAL NOT NULL, message TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', file_count INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL, how TEXT NOT NULL, root_meta BLOB, links TEXT,
    description TEXT, tags TEXT NOT NULL DEFAULT '[]', expires REAL,
    PRIMARY KEY(artifact_id, num));
CREATE TABLE IF NOT EXISTS aliases(
    artifact_id INTEGER NOT NULL, alias TEXT NOT NULL, num INTEGER NOT NULL,
    PRIMARY KEY(artifact_id, alias));
CREATE TABLE IF NOT EXISTS drafts(
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE NOT NULL, artifact TEXT NOT NULL,
    type TEXT NOT NULL, parent INTEGER, base_root TEXT, base_links TEXT,
    links_adopted INTEGER NOT NULL DEFAULT 0, scratch TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, next_ino INTEGER NOT NULL DEFAULT 16, outcome TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS draft_dirs(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, base TEXT,
    PRIMARY KEY(draft_id, dir_id));
CREATE TABLE IF NOT EXISTS draft_entries(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, name BLOB NOT NULL,
    rec BLOB NOT NULL, PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS draft_inodes(
    draft_id INTEGER NOT NULL, ino INTEGER NOT NULL, rec BLOB NOT NULL,
    PRIMARY KEY(draft_id, ino));
CREATE TABLE IF NOT EXISTS draft_pins(
    draft_id INTEGER NOT NULL, dir_id INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS statcache(path BLOB PRIMARY KEY, stat TEXT NOT NULL, digest TEXT NOT NULL);
"""


def _rows(cur) -> list[dict]:
    return [dict(r) for r in cur]


def switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL once per database (it persists in the file).  The switch needs an
    exclusive lock and SQLite does not wait for it with the busy handler, so processes
    opening one database together retry here (up to ``timeout`` seconds) instead of failing
    with "database is locked"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the lock holder gives no event to wait on; SQLite's own busy loop does the same


class SqliteMeta(PendingMeta, RunsMeta, MetaStore):
    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._nowait_count = 0  # transactions begun in nowait() (every NOWAIT_HANDOFF-th is handed off)

    # -- connection ----------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _connect(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
        if fresh:
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        switch_to_wal(conn, BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        for attr in ("conn", "nowait_conn"):
            conn = getattr(self._local, attr, None)
            if conn is not None:
                conn.close()
                setattr(self._local, attr, None)

    @contextmanager
    def nowait(self):
        """Transactions in this block never wait: another writer's lock is :class:`Busy` at once
        (nothing changed), and they never checkpoint the WAL (a checkpoint writes and syncs the
        database file).  For an event loop's own thread, whose caller then retries in a worker
        thread (DESIGN §7: blocking work off the loop).  Every ``NOWAIT_HANDOFF``-th
        transaction is handed off that way on purpose, so that a worker's connection
        checkpoints the WAL now and then.  Same durability as :meth:`tx` (synchronous=NORMAL)."""
        loc = self._local
        self._nowait_count += 1
        if self._nowait_count % NOWAIT_HANDOFF == 0:
            raise Busy("handed to a worker thread (WAL checkpoint)")
        fast = getattr(loc, "nowait_conn", None)
        if fast is None or getattr(loc, "nowait_pid", None) != os.getpid():
            fast = self._connect()
            fast.execute("PRAGMA busy_timeout=0")
            fast.execute("PRAGMA wal_autocheckpoint=0")
            loc.nowait_conn, loc.nowait_pid = fast, os.getpid()
        saved = getattr(loc, "conn", None), getattr(loc, "pid", None)
        loc.conn, loc.pid = fast, os.getpid()
        try:
            yield  # tx() raises Busy (not an OperationalError: callers clean up after those)
        finally:
            loc.conn, loc.pid = saved

    @contextmanager
    def tx(self, durable: bool = False):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); yields the connection.
        ``durable``: the commit itself is synced (synchronous=FULL for this transaction).
        A full disk becomes NoSpace with nothing changed."""
        db = self.db
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db is getattr(self._local, "nowait_conn", None) and (
                    getattr(exc, "sqlite_errorcode", None) in (SQLITE_BUSY, SQLITE_LOCKED) or "locked" in str(exc)):
                if db.in_transaction:  # a COMMIT refused: nothing of it stays
                    db.execute("ROLLBACK")
                raise Busy(str(exc)) from None
            if (getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)
                    or ("disk I/O error" in str(exc) and self._disk_full())):
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise NoSpace(f"no space left for the store's database {self.path}") from None
            raise
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    def durable(self) -> None:
        """Every committed transaction on disk: a one-row transaction committed with
        synchronous=FULL fsyncs the WAL, and with it every frame before its own (a checkpoint
        would not: it syncs nothing while another process's reader holds an old snapshot).
        Files of the database are never opened here: closing a descriptor would drop SQLite's
        POSIX locks."""
        with self.tx(durable=True) as db:
            db.execute("INSERT OR REPLACE INTO info VALUES('synced', ?)", (str(time.time()),))

    def _disk_full(self) -> bool:
        try:
            st = os.statvfs(os.path.dirname(self.path))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    # -- schema -----------------------------------------------------------------
    def create(self) -> None:
        with self.tx(durable=True) as db:
            have = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='info'").fetchone()
            if have and db.execute("SELECT value FROM info WHERE key='schema'").fetchone():
                return
            for script in (SCHEMA, PENDING_SCHEMA, RUNS_SCHEMA):
                for stmt in script.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute("INSERT OR REPLACE INTO info VALUES('schema', ?)", (str(SCHEMA_VERSION),))

    def check_schema(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM info WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            if "disk I/O error" in str(exc) and self._disk_full():
                raise NoSpace(f"the disk of the store {os.path.dirname(self.path)} is full: SQLite cannot even"
                              " open its database; free some space there (then artfs gc frees more)") from None
            raise SchemaMismatch(f"{self.path} is not an artfs metadata database ({exc})") from None
        have = int(row["value"]) if row else 0
        if have == SCHEMA_VERSION:
            return
        if have == 1:
            self._migrate_1()
            return
        if have > SCHEMA_VERSION:
            raise SchemaMismatch(f"this store was made by a newer artfs (schema {have}; this artfs knows "
                                 f"{SCHEMA_VERSION}): upgrade artfs")
        raise SchemaMismatch(f"{self.path}: unknown schema {have}")

    def _migrate_1(self) -> None:
        """artfs 0.1 -> 2: versions gain root metadata and link tables, artifacts a version
        counter; drafts and pending versions were recorded differently and are not migrated."""
        with self.tx(durable=True) as db:
            if db.execute("SELECT value FROM info WHERE key='schema'").fetchone()["value"] != "1":
                return  # another process migrated meanwhile
            busy = db.execute("SELECT COUNT(*) FROM drafts").fetchone()[0] + db.execute(
                "SELECT COUNT(*) FROM pending WHERE finished IS NULL").fetchone()[0]
            if busy:
                raise SchemaMismatch("this store was made by artfs 0.1 and still has drafts or pending versions: "
                                     "commit or discard them with artfs 0.1, then open it with this version")
            for col in ("root_meta BLOB", "links TEXT", "description TEXT", "tags TEXT NOT NULL DEFAULT '[]'",
                        "expires REAL"):
                db.execute(f"ALTER TABLE versions ADD COLUMN {col}")
            for col in ("entity TEXT", "project TEXT", "summary TEXT NOT NULL DEFAULT '{}'"):
                db.execute(f"ALTER TABLE runs ADD COLUMN {col}")
            db.execute("ALTER TABLE artifacts ADD COLUMN next_num INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE artifacts SET next_num=(SELECT COALESCE(MAX(num)+1, 0) FROM versions v"
                       " WHERE v.artifact_id=artifacts.id)")
            for t in ("drafts", "draft_dirs", "draft_entries", "pending", "pending_rows", "pending_writers",
                      "filecache"):
                db.execute(f"DROP TABLE IF EXISTS {t}")
            for script in (SCHEMA, PENDING_SCHEMA):
                for stmt in script.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
            db.execute("UPDATE info SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    # -- artifacts -----------------------------------------------------------
    def artifact(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM artifacts WHERE name=?", (name,)).fetchone()
        return dict(row) if row else None

    def artifacts(self) -> list[dict]:
        return _rows(self.db.execute("SELECT * FROM artifacts ORDER BY name"))

    def _ensure_artifact(self, db, name: str, type_: str | None, description: str | None = None) -> int:
        row = db.execute("SELECT id, type FROM artifacts WHERE name=?", (name,)).fetchone()
        if row is None:
            cur = db.execute("INSERT INTO artifacts(name, type, description, created) VALUES(?,?,?,?)",
                             (name, type_ or "dataset", description, time.time()))
            return cur.lastrowid
        if type_ is not None and row["type"] != type_:
            if db.execute("SELECT 1 FROM versions WHERE artifact_id=? LIMIT 1", (row["id"],)).fetchone():
                raise Conflict(f"{name} is a {row['type']}, not a {type_}")
            db.execute("UPDATE artifacts SET type=? WHERE id=?", (type_, row["id"]))  # no version yet: still open
        if description is not None:
            db.execute("UPDATE artifacts SET description=? WHERE id=?", (description, row["id"]))
        return row["id"]

    def ensure_artifact(self, name: str, type_: str | None, description: str | None = None) -> dict:
        with self.tx() as db:
            self._ensure_artifact(db, name, type_, description)
        return self.artifact(name)

    # -- versions -------------------------------------------------------------
    def version(self, name: str, num: int) -> dict | None:
        row = self.db.execute(
            "SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=? AND v.num=?",
            (name, num)).fetchone()
        return self._version(row, name) if row else None

    def versions(self, name: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=? ORDER BY v.num DESC",
            (name,))
        return [self._version(r, name) for r in rows]

    def all_versions(self) -> list[dict]:
        out = []
        for r in self.db.execute("SELECT v.*, a.name AS aname FROM versions v JOIN artifacts a"
                                 " ON a.id=v.artifact_id ORDER BY a.name, v.num"):
            d = dict(r)
            out.append(self._version(d, d.pop("aname")))
        return out

    def create_version(self, name, type_, *, root, ident, root_meta, links, expected, parent, message, metadata,
                       file_count, total_bytes, how, description=None, draft_reset=None, seal=None):
        meta_json = json.dumps(metadata or {}, sort_keys=True)
        with self.tx(durable=True) as db:
            aid = self._ensure_artifact(db, name, type_, description)
            r = db.execute("SELECT num FROM aliases WHERE artifact_id=? AND alias='latest'", (aid,)).fetchone()
            latest = r["num"] if r else None
            if expected != ANY and expected != latest:
                raise Stale(f"{name} moved on to v{latest} meanwhile", latest)
            if seal is not None:
                self._check_seal(db, seal)
            unchanged = False
            if latest is not None:
                r = db.execute("SELECT ident FROM versions WHERE artifact_id=? AND num=?", (aid, latest)).fetchone()
                unchanged = r is not None and r["ident"] == ident
            if unchanged:
                num = latest
                # W&B updates the metadata of the version whose content it is
                if metadata:
                    db.execute("UPDATE versions SET metadata=? WHERE artifact_id=? AND num=?",
                               (json.dumps({**json.loads(db.execute(
                                   "SELECT metadata FROM versions WHERE artifact_id=? AND num=?", (aid, num)
                               ).fetchone()["metadata"] or "{}"), **metadata}, sort_keys=True), aid, num))
                if description is not None:
                    db.execute("UPDATE versions SET description=? WHERE artifact_id=? AND num=?",
                               (description, aid, num))
            else:
                num = db.execute("UPDATE artifacts SET next_num=next_num+1 WHERE id=? RETURNING next_num-1 AS n",
                                 (aid,)).fetchone()["n"]
                db.execute(
                    "INSERT INTO versions(artifact_id, num, root, ident, parent, created, message, metadata,"
                    " file_count, total_bytes, how, root_meta, links, description)"
                    " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (aid, num, root, ident, latest if parent is None else parent, time.time(), message, meta_json,
                     file_count, total_bytes, how, root_meta, links, description))
                db.execute("INSERT OR REPLACE INTO aliases VALUES(?, 'latest', ?)", (aid, num))
            if seal is not None:
                self._seal_in(db, seal, num)
            if draft_reset is not None:
                # the draft goes on from the tree just committed -- also when it equals latest's
                # content (unchanged), so metadata-only edits (times, modes) stay in the mount
                outcome = draft_reset.get("outcome") or f"{name}:v{num}" + (" (unchanged)" if unchanged else "")
                self._reset_draft_in(db, draft_reset["id"], num, root, draft_reset["root_rec"], links,
                                     outcome.replace("{num}", str(num)))
        return num, unchanged

    def update_version(self, name: str, num: int, *, metadata: dict | None = None, replace_metadata: bool = False,
                       description: str | None = None, tags: list | None = None, expires=ANY) -> dict:
        """Change a version's metadata, description, tags or expiry (content never changes)."""
        with self.tx(durable=True) as db:
            r = db.execute("SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=? AND v.num=?",
                           (name, num)).fetchone()
            if r is None:
                raise NotFound(f"{name} has no v{num}")
            if metadata is not None:
                cur = {} if replace_metadata else json.loads(r["metadata"] or "{}")
                cur.update(metadata)
                db.execute("UPDATE versions SET metadata=? WHERE artifact_id=? AND num=?",
                           (json.dumps(cur, sort_keys=True, default=str), r["artifact_id"], num))
            if description is not None:
                db.execute("UPDATE versions SET description=? WHERE artifact_id=? AND num=?",
                           (description, r["artifact_id"], num))
            if tags is not None:
                db.execute("UPDATE versions SET tags=? WHERE artifact_id=? AND num=?",
                           (json.dumps(sorted(set(tags))), r["artifact_id"], num))
            if expires != ANY:
                db.execute("UPDATE versions SET expires=? WHERE artifact_id=? AND num=?", (expires, r["artifact_id"], num))
        return self.version(name, num)

    def delete_version(self, name: str, num: int, force: bool = False) -> dict:
        """Delete a version (its number is never reused).  Refused while a user alias points at
        it unless ``force`` (which drops those aliases); ``latest`` moves to the newest left.
        Returns {"latest": num|None, "aliases_removed": [...]}."""
        with self.tx(durable=True) as db:
            a = db.execute("SELECT id FROM artifacts WHERE name=?", (name,)).fetchone()
            if a is None or db.execute("SELECT 1 FROM versions WHERE artifact_id=? AND num=?",
                                       (a["id"], num)).fetchone() is None:
                raise NotFound(f"{name} has no v{num}")
            users = [r["alias"] for r in db.execute(
                "SELECT alias FROM aliases WHERE artifact_id=? AND num=? AND alias<>'latest' ORDER BY alias",
                (a["id"], num))]
            if users and not force:
                raise Conflict(f"{name}:v{num} has aliases {', '.join(users)}; move them, or delete with --force")
            db.execute("DELETE FROM aliases WHERE artifact_id=? AND num=?", (a["id"], num))
            db.execute("DELETE FROM versions WHERE artifact_id=? AND num=?", (a["id"], num))
            r = db.execute("SELECT MAX(num) AS m FROM versions WHERE artifact_id=?", (a["id"],)).fetchone()
            if r["m"] is not None:
                db.execute("INSERT OR REPLACE INTO aliases VALUES(?, 'latest', ?)", (a["id"], r["m"]))
            return {"latest": r["m"], "aliases_removed": users}

    def expired_versions(self, now: float) -> list[tuple[str, int]]:
        return [(r["name"], r["num"]) for r in self.db.execute(
            "SELECT a.name, v.num FROM versions v JOIN artifacts a ON a.id=v.artifact_id"
            " WHERE v.expires IS NOT NULL AND v.expires <= ? ORDER BY a.name, v.num", (now,))]

    def set_artifact_type(self, name: str, type_: str) -> None:
        """Change an artifact's type while it has no version (e.g. made by mounting NAME:draft)."""
        with self.tx() as db:
            a = db.execute("SELECT id, type FROM artifacts WHERE name=?", (name,)).fetchone()
            if a is None or a["type"] == type_:
                return
            if db.execute("SELECT 1 FROM versions WHERE artifact_id=? LIMIT 1", (a["id"],)).fetchone():
                raise Conflict(f"{name} is a {a['type']}, not a {type_}")
            db.execute("UPDATE artifacts SET type=? WHERE id=?", (type_, a["id"]))
            db.execute("UPDATE drafts SET type=? WHERE artifact=?", (type_, name))

    # -- aliases --------------------------------------------------------------
    def alias(self, name: str, alias: str) -> int | None:
        r = self.db.execute("SELECT al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id"
                            " WHERE a.name=? AND al.alias=?", (name, alias)).fetchone()
        return r["num"] if r else None

    def aliases(self, name: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for r in self.db.execute("SELECT al.alias, al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id"
                                 " WHERE a.name=? ORDER BY al.alias", (name,)):
            out.setdefault(r["num"], []).append(r["alias"])
        return out

    def set_alias(self, name: str, alias: str, num: int) -> None:
        with self.tx(durable=True) as db:
            a = db.execute("SELECT id FROM artifacts WHERE name=?", (name,)).fetchone()
            if a is None:
                raise NotFound(f"no artifact {name!r}")
            if db.execute("SELECT 1 FROM versions WHERE artifact_id=? AND num=?", (a["id"], num)).fetchone() is None:
                raise NotFound(f"{name} has no v{num}")
            db.execute("INSERT OR REPLACE INTO aliases VALUES(?,?,?)", (a["id"], alias, num))

    def delete_alias(self, name: str, alias: str) -> bool:
        with self.tx(durable=True) as db:
            cur = db.execute("DELETE FROM aliases WHERE alias=? AND artifact_id=(SELECT id FROM artifacts WHERE name=?)",
                             (alias, name))
            return cur.rowcount > 0

    # -- drafts ---------------------------------------------------------------
    def draft(self, key: str) -> dict | None:
        r = self.db.execute("SELECT * FROM drafts WHERE key=?", (key,)).fetchone()
        return dict(r) if r else None

    def draft_by_id(self, draft_id: int) -> dict | None:
        r = self.db.execute("SELECT * FROM drafts WHERE id=?", (draft_id,)).fetchone()
        return dict(r) if r else None

    def drafts(self) -> list[dict]:
        return _rows(self.db.execute("SELECT * FROM drafts ORDER BY id"))

    def create_draft(self, key, artifact, type_, parent, base_root, root_rec, base_links) -> dict:
        import uuid

        with self.tx(durable=True) as db:
            r = db.execute("SELECT * FROM drafts WHERE key=?", (key,)).fetchone()
            if r is not None:
                return dict(r)
            now = time.time()
            cur = db.execute(
                "INSERT INTO drafts(key, artifact, type, parent, base_root, base_links, links_adopted, scratch,"
                " created, updated) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (key, artifact, type_, parent, base_root, base_links, 0 if base_links else 1, uuid.uuid4().hex,
                 now, now))
            did = cur.lastrowid
            db.execute("INSERT INTO draft_dirs VALUES(?, 1, ?)", (did, base_root))
            db.execute("INSERT INTO draft_entries VALUES(?, 0, ?, ?)", (did, b"", root_rec))
        return self.draft(key)

    def draft_state(self, draft_id: int, pins: bool = True) -> dict:
        db = self.db
        return {
            "dirs": {r["dir_id"]: r["base"] for r in db.execute(
                "SELECT dir_id, base FROM draft_dirs WHERE draft_id=?", (draft_id,))},
            "entries": [(r["dir_id"], bytes(r["name"]), bytes(r["rec"])) for r in db.execute(
                "SELECT dir_id, name, rec FROM draft_entries WHERE draft_id=?", (draft_id,))],
            "inodes": {r["ino"]: bytes(r["rec"]) for r in db.execute(
                "SELECT ino, rec FROM draft_inodes WHERE draft_id=?", (draft_id,))},
            "pins": {(r["dir_id"], bytes(r["name"])): r["ino"] for r in db.execute(
                "SELECT dir_id, name, ino FROM draft_pins WHERE draft_id=?", (draft_id,))} if pins else None,
        }

    def draft_apply(self, draft_id, ops, next_ino=None, links_adopted=None) -> None:
        with self.tx() as db:
            self._draft_apply(db, draft_id, ops)
            # one statement for the draft's row (a create is a few rows; this ran three times)
            db.execute("UPDATE drafts SET updated=?, next_ino=MAX(next_ino, COALESCE(?, next_ino)),"
                       " links_adopted=COALESCE(?, links_adopted) WHERE id=?",
                       (time.time(), next_ino, None if links_adopted is None else int(links_adopted), draft_id))

    @staticmethod
    def _draft_apply(db, draft_id, ops) -> None:
        for op in ops:
            kind = op[0]
            if kind == "ent":
                if op[3] is None:
                    db.execute("DELETE FROM draft_entries WHERE draft_id=? AND dir_id=? AND name=?",
                               (draft_id, op[1], op[2]))
                else:
                    db.execute("INSERT OR REPLACE INTO draft_entries VALUES(?,?,?,?)", (draft_id, op[1], op[2], op[3]))
            elif kind == "dir":
                db.execute("INSERT OR REPLACE INTO draft_dirs VALUES(?,?,?)", (draft_id, op[1], op[2]))
            elif kind == "deldir":
                db.execute("DELETE FROM draft_dirs WHERE draft_id=? AND dir_id=?", (draft_id, op[1]))
                db.execute("DELETE FROM draft_entries WHERE draft_id=? AND dir_id=?", (draft_id, op[1]))
            elif kind == "ino":
                if op[2] is None:
                    db.execute("DELETE FROM draft_inodes WHERE draft_id=? AND ino=?", (draft_id, op[1]))
                else:
                    db.execute("INSERT OR REPLACE INTO draft_inodes VALUES(?,?,?)", (draft_id, op[1], op[2]))
            elif kind == "pin":
                if op[3] is None:
                    db.execute("DELETE FROM draft_pins WHERE draft_id=? AND dir_id=? AND name=?",
                               (draft_id, op[1], op[2]))
                else:
                    db.execute("INSERT OR REPLACE INTO draft_pins VALUES(?,?,?,?)", (draft_id, op[1], op[2], op[3]))
            else:
                raise ValueError(f"unknown draft op {kind!r}")

    def _reset_draft_in(self, db, draft_id: int, parent: int | None, base_root: str | None, root_rec: bytes | None,
                        links: str | None, outcome: str) -> None:
        """Inside a transaction: make the draft clean on top of a new parent (pins stay:
        inode numbers outlive commits)."""
        keep_root = db.execute("SELECT rec FROM draft_entries WHERE draft_id=? AND dir_id=0", (draft_id,)).fetchone()
        for t in ("draft_entries", "draft_dirs", "draft_inodes"):
            db.execute(f"DELETE FROM {t} WHERE draft_id=?", (draft_id,))
        db.execute("INSERT INTO draft_dirs VALUES(?, 1, ?)", (draft_id, base_root))
        rec = root_rec if root_rec is not None else (bytes(keep_root["rec"]) if keep_root else None)
        if rec is not None:
            db.execute("INSERT INTO draft_entries VALUES(?, 0, ?, ?)", (draft_id, b"", rec))
        db.execute("UPDATE drafts SET parent=?, base_root=?, base_links=?, links_adopted=?, outcome=?, updated=?"
                   " WHERE id=?", (parent, base_root, links, 0 if links else 1, outcome, time.time(), draft_id))

    def reset_draft(self, draft_id: int, parent: int | None, base_root: str | None, root_rec: bytes | None,
                    links: str | None, outcome: str) -> None:
        with self.tx(durable=True) as db:
            self._reset_draft_in(db, draft_id, parent, base_root, root_rec, links, outcome)

    def set_draft_outcome(self, draft_id: int, outcome: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE drafts SET outcome=? WHERE id=?", (outcome, draft_id))

    def delete_draft(self, draft_id: int) -> None:
        with self.tx(durable=True) as db:
            for t in ("draft_entries", "draft_dirs", "draft_inodes", "draft_pins"):
                db.execute(f"DELETE FROM {t} WHERE draft_id=?", (draft_id,))
            db.execute("DELETE FROM drafts WHERE id=?", (draft_id,))

    def all_draft_recs(self):
        db = self.db
        bases = [(r["draft_id"], r["base"]) for r in db.execute("SELECT draft_id, base FROM draft_dirs")]
        bases += [(r["id"], r["base_root"]) for r in db.execute("SELECT id, base_root FROM drafts")]
        recs = [(r["draft_id"], bytes(r["rec"])) for r in db.execute("SELECT draft_id, rec FROM draft_entries")]
        recs += [(r["draft_id"], bytes(r["rec"])) for r in db.execute("SELECT draft_id, rec FROM draft_inodes")]
        return bases, recs

    def draft_links(self) -> list[tuple[int, str]]:
        """(draft id, link-table digest) of drafts whose parent has hard links (gc keeps them)."""
        return [(r["id"], r["base_links"]) for r in self.db.execute(
            "SELECT id, base_links FROM drafts WHERE base_links IS NOT NULL")]

    # -- put's stat cache (path -> stat -> digest) ------------------------------
    def filecache_get(self, paths: list[bytes], under: bytes | None = None) -> dict[bytes, tuple[str, str]]:
        """{path: (stat key, digest hex)} for the paths the cache knows."""
        out = {}
        db = self.db
        if under is not None and len(paths) > FILECACHE_RANGE_MIN:  # one range scan: half the time of lookups
            want = set(paths)
            cur = db.cursor()
            cur.row_factory = None
            for p, st, d in cur.execute("SELECT path, stat, digest FROM statcache WHERE path >= ? AND path < ?",
                                        (under, under + b"\xff")):
                p = bytes(p)
                if p in want:
                    out[p] = (st, d)
            return out
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            q = "SELECT path, stat, digest FROM statcache WHERE path IN (%s)" % ",".join("?" * len(chunk))
            for r in db.execute(q, chunk):
                out[bytes(r["path"])] = (r["stat"], r["digest"])
        return out

    def filecache_put(self, rows: list[tuple[bytes, str, str]]) -> None:
        if not rows:
            return
        with self.tx() as db:
            db.executemany("INSERT OR REPLACE INTO statcache VALUES(?,?,?)", rows)
