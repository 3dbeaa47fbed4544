"""The scale-out ``MetaStore``: PostgreSQL (psycopg 3, sync API), many machines.

The same methods and the same behaviour as the SQLite reference
(``sqlite_meta.py``, ``sqlite_pending.py``, ``sqlite_runs.py``); what differs
is how each rule is kept when many machines write at once:

* Every method is one transaction (READ COMMITTED).  Read-modify-writes lock
  the one row they depend on instead of the whole database: a version is
  created under the artifact's row lock (``FOR UPDATE``) -- compare-and-set on
  the expected latest, the number from the artifact's counter
  (``UPDATE ... RETURNING``), never ``MAX(num)+1``; an upsert or a finish
  locks its pending version's row, so its set-based conflict check (one query
  per upsert) sees every other writer's committed rows.
* Leases (the finish lease, gc leases) are timed by the server's clock, never
  by a machine's.
* A PostgreSQL commit is durable when it returns (``durable()`` has nothing
  to do), and a full disk on the server is ``NoSpace`` with nothing changed.
* Connection trouble (a restarted or unreachable server) is retried with
  backoff for a while (``ARTFS_META_RETRY`` seconds, default 60) as long as
  the transaction cannot have happened; a connection lost *while committing*
  a change is reported (``MetaUnavailable``), never silently repeated.
* Fencing for gc across machines: while this process holds gc writer leases
  (``scaleout.PgGc``), every writing transaction first checks, under a share
  lock, that its leases still exist; a lease that gc reaped (it expired) makes
  the transaction fail instead of naming objects gc may have deleted.

One connection per thread (``threading.local``, re-made after ``fork``).  The
schema lives in the first schema of the DSN's ``search_path``
(``?options=-csearch_path%3DNAME``; default ``public``), so one database can
hold several stores.  Its version is in ``info`` and every migration applied is
a row of ``migrations``.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid

import psycopg
from psycopg import errors as pgerr
from psycopg.rows import dict_row

from ..errors import ArtfsError, BadInput, Busy, Conflict, Finished, NotFound, NoSpace, SchemaMismatch, Stale
from .meta import ANY, MetaStore

SCHEMA_VERSION = 1
FINISH_LEASE = 600.0  # seconds an unfinished finish keeps upserts out (as sqlite_pending)
NOW = "extract(epoch from clock_timestamp())::float8"  # the server's clock: leases never trust a machine's

SCHEMA = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS migrations(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS artifacts(
    id BIGSERIAL PRIMARY KEY, name TEXT UNIQUE NOT NULL, type TEXT NOT NULL,
    description TEXT, created DOUBLE PRECISION NOT NULL, next_num BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS versions(
    artifact_id BIGINT NOT NULL, num BIGINT NOT NULL, root TEXT NOT NULL,
    ident TEXT NOT NULL, parent BIGINT, created DOUBLE PRECISION NOT NULL, message TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', file_count BIGINT NOT NULL,
    total_bytes BIGINT NOT NULL, how TEXT NOT NULL, root_meta BYTEA, links TEXT,
    description TEXT, tags TEXT NOT NULL DEFAULT '[]', expires DOUBLE PRECISION,
    PRIMARY KEY(artifact_id, num));
CREATE TABLE IF NOT EXISTS aliases(
    artifact_id BIGINT NOT NULL, alias TEXT NOT NULL, num BIGINT NOT NULL,
    PRIMARY KEY(artifact_id, alias));
CREATE TABLE IF NOT EXISTS drafts(
    id BIGSERIAL PRIMARY KEY, key TEXT UNIQUE NOT NULL, artifact TEXT NOT NULL,
    type TEXT NOT NULL, parent BIGINT, base_root TEXT, base_links TEXT,
    links_adopted INTEGER NOT NULL DEFAULT 0, scratch TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL, next_ino BIGINT NOT NULL DEFAULT 16, outcome TEXT NOT NULL DEFAULT '',
    machine TEXT, machine_label TEXT);
CREATE TABLE IF NOT EXISTS draft_dirs(
    draft_id BIGINT NOT NULL, dir_id BIGINT NOT NULL, base TEXT, PRIMARY KEY(draft_id, dir_id));
CREATE TABLE IF NOT EXISTS draft_entries(
    draft_id BIGINT NOT NULL, dir_id BIGINT NOT NULL, name BYTEA NOT NULL, rec BYTEA NOT NULL,
    PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS draft_inodes(
    draft_id BIGINT NOT NULL, ino BIGINT NOT NULL, rec BYTEA NOT NULL, PRIMARY KEY(draft_id, ino));
CREATE TABLE IF NOT EXISTS draft_pins(
    draft_id BIGINT NOT NULL, dir_id BIGINT NOT NULL, name BYTEA NOT NULL, ino BIGINT NOT NULL,
    PRIMARY KEY(draft_id, dir_id, name));
CREATE TABLE IF NOT EXISTS statcache(
    machine TEXT NOT NULL, path BYTEA NOT NULL, stat TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY(machine, path));
CREATE TABLE IF NOT EXISTS pending(
    id BIGSERIAL PRIMARY KEY, artifact TEXT NOT NULL, type TEXT NOT NULL,
    distributed_id TEXT NOT NULL, parent BIGINT, base_root TEXT,
    created DOUBLE PRECISION NOT NULL, finished BIGINT, generation BIGINT NOT NULL DEFAULT 0,
    closing DOUBLE PRECISION, closing_by TEXT, closing_holder TEXT, UNIQUE(artifact, distributed_id));
CREATE TABLE IF NOT EXISTS pending_rows(
    pending_id BIGINT NOT NULL, writer TEXT NOT NULL, path BYTEA NOT NULL,
    rec BYTEA NOT NULL, ckey BYTEA, isdir BOOLEAN NOT NULL, PRIMARY KEY(pending_id, writer, path));
CREATE INDEX IF NOT EXISTS pending_rows_path ON pending_rows(pending_id, path);
CREATE TABLE IF NOT EXISTS pending_writers(
    pending_id BIGINT NOT NULL, writer TEXT NOT NULL, label TEXT, updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY(pending_id, writer));
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, name TEXT, job_type TEXT, grp TEXT, config TEXT NOT NULL DEFAULT '{}',
    command TEXT, cwd TEXT, host TEXT, "user" TEXT, pid BIGINT, started DOUBLE PRECISION NOT NULL,
    ended DOUBLE PRECISION, outcome TEXT NOT NULL DEFAULT 'running', exit_status INTEGER, entity TEXT,
    project TEXT, summary TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS run_inputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_inputs_v ON run_inputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_outputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num BIGINT NOT NULL, how TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL, PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_outputs_v ON run_outputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_upserts(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, distributed_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY(run_id, artifact, distributed_id));
CREATE TABLE IF NOT EXISTS gc_state(
    id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT, until DOUBLE PRECISION, epoch BIGINT NOT NULL DEFAULT 0);
INSERT INTO gc_state(id) VALUES (1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS gc_writers(
    id TEXT PRIMARY KEY, holder TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, until DOUBLE PRECISION NOT NULL)
"""

#: migrations from schema N-1 to N: {N: [statements]} (none yet: schema 1 is the first)
MIGRATIONS: dict[int, list[str]] = {}

_RETRYABLE_STATES = {"40001", "40P01"}  # serialization failure, deadlock: the server rolled back


class MetaUnavailable(ArtfsError):
    """The metadata store cannot be reached (or a commit's outcome is unknown)."""

    exit_code = 2  # not corruption (1): the store is fine, the way to it is not


def schema_of(dsn: str) -> str:
    """The schema a DSN's ``search_path`` names first (``public`` without one)."""
    try:
        opts = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
    except psycopg.ProgrammingError:
        # libpq's message quotes the offending token, which may be the password: never shown
        raise MetaUnavailable("bad PostgreSQL DSN: libpq cannot parse it (are special characters of the "
                              "password percent-encoded?)") from None
    m = re.search(r"-c\s*search_path\s*=\s*([^\s,]+)", opts)
    name = m.group(1).strip('"') if m else "public"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise MetaUnavailable(f"unsupported schema name {name!r} in the DSN's search_path")
    return name


#: libpq parameters that are secrets (never in a description file or a message)
_SECRETS = ("password", "sslpassword")


def redact(dsn: str) -> str:
    """The DSN without its secrets (what a description file and messages may show); a URL
    stays a URL (also one without a host: ``postgresql:///db?host=...``)."""
    try:
        d = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    if dsn.startswith(("postgresql://", "postgres://")):
        from urllib.parse import parse_qsl, urlencode, urlsplit

        u = urlsplit(dsn)
        netloc = u.netloc
        if "@" in netloc:
            cred, host = netloc.rsplit("@", 1)
            netloc = cred.split(":", 1)[0] + "@" + host
        query = urlencode([(k, v) for k, v in parse_qsl(u.query, keep_blank_values=True) if k not in _SECRETS])
        # by hand, not urlunsplit: that drops the "//" of an empty host, which libpq then refuses
        return f"{u.scheme}://{netloc}{u.path}" + (f"?{query}" if query else "") + \
            (f"#{u.fragment}" if u.fragment else "")
    for k in _SECRETS:
        d.pop(k, None)
    return psycopg.conninfo.make_conninfo("", **d)


def _rows(cur) -> list[dict]:
    return [dict(r) for r in cur]


class PgMeta(MetaStore):
    def __init__(self, dsn: str, machine: str | None = None, machine_label: str | None = None):
        self.dsn = dsn
        self.schema = schema_of(dsn)
        self.machine = machine or "unknown"
        self.machine_label = machine_label or self.machine
        self._local = threading.local()
        self.fence = None  # () -> lease ids this process holds (set by the gc coordinator)
        self.retry_seconds = float(os.environ.get("ARTFS_META_RETRY", "60"))

    def __repr__(self) -> str:
        return f"PgMeta({redact(self.dsn)})"

    # -- connections and transactions ----------------------------------------------------
    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            kw = {}
            have = psycopg.conninfo.conninfo_to_dict(self.dsn)
            for k, v in (("connect_timeout", "10"), ("keepalives_idle", "10"), ("keepalives_interval", "5"),
                         ("keepalives_count", "3"), ("application_name", "artfs")):
                if k not in have:
                    kw[k] = v
            conn = psycopg.connect(self.dsn, autocommit=False, row_factory=dict_row, **kw)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        self._drop()

    def _where(self) -> str:
        return f"the metadata store ({redact(self.dsn)})"

    def _tx(self, fn, write: bool = True, retry: float | None = None):
        """Run ``fn(cursor)`` as one transaction and commit; retry while the server is unreachable
        (only where the transaction cannot have happened), for ``retry`` seconds (default
        ``ARTFS_META_RETRY``)."""
        deadline = time.monotonic() + (self.retry_seconds if retry is None else retry)
        delay = 0.05
        while True:
            committing = False
            try:
                conn = self._conn()
                try:
                    with conn.cursor() as cur:
                        if write and self.fence is not None:
                            self._check_fence(cur)
                        out = fn(cur)
                    committing = True
                    conn.commit()
                    return out
                except BaseException:
                    if not committing and not conn.closed:
                        try:
                            conn.rollback()
                        except psycopg.Error:
                            self._drop()
                    raise
            except pgerr.DiskFull:
                raise NoSpace(f"no space left for {self._where()}") from None
            except psycopg.DataError as exc:
                if "NUL" not in str(exc):
                    raise
                # a local store keeps such text; PostgreSQL's text type cannot: say so, change nothing
                raise BadInput("a message, description or name holds a NUL character, which the "
                               "scale-out store's metadata (PostgreSQL text) cannot keep") from None
            except psycopg.errors.InsufficientResources as exc:
                raise NoSpace(f"{self._where()} is out of resources: {exc}") from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                state = getattr(exc, "sqlstate", None)
                self._drop()
                if committing and write and state not in _RETRYABLE_STATES:
                    raise MetaUnavailable(f"lost {self._where()} while committing a change (it may or may not "
                                          f"have been made; check before repeating it): {_one_line(exc)}") from None
                if time.monotonic() > deadline:
                    raise MetaUnavailable(f"cannot reach {self._where()}: {_one_line(exc)}") from None
            except (pgerr.SerializationFailure, pgerr.DeadlockDetected):
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)  # the server restarting gives no event to wait on
            delay = min(delay * 2, 1.0)

    def _read(self, fn):
        return self._tx(fn, write=False)

    def _check_fence(self, cur) -> None:
        ids = self.fence()
        if not ids:
            return
        cur.execute("SELECT id FROM gc_writers WHERE id = ANY(%s) FOR SHARE", (list(ids),))
        alive = {r["id"] for r in cur}
        if alive != set(ids):
            raise Conflict("this write outlived its gc lease (the store's gc may have collected what it "
                           "uploaded); nothing was recorded: try again")

    def durable(self) -> None:
        """A PostgreSQL commit is durable when it returns."""

    # -- schema -------------------------------------------------------------------------
    def create(self) -> None:
        def fn(cur):
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"artfs-schema:{self.schema}",))
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            cur.execute(f'SET LOCAL search_path TO "{self.schema}"')
            cur.execute("SELECT to_regclass('info') IS NOT NULL AS have")
            if cur.fetchone()["have"]:
                cur.execute("SELECT value FROM info WHERE key='schema'")
                if cur.fetchone() is not None:
                    return
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            cur.execute("INSERT INTO info VALUES('schema', %s) ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                        (str(SCHEMA_VERSION),))
            cur.execute("INSERT INTO info VALUES('store_id', %s) ON CONFLICT DO NOTHING", (str(uuid.uuid4()),))
            cur.execute(f"INSERT INTO migrations VALUES(%s, {NOW}, 'created') ON CONFLICT DO NOTHING",
                        (SCHEMA_VERSION,))

        self._tx(fn)

    def check_schema(self) -> None:
        def fn(cur):
            cur.execute("SELECT to_regclass('info') IS NOT NULL AS have")
            if not cur.fetchone()["have"]:
                return None
            cur.execute("SELECT value FROM info WHERE key='schema'")
            r = cur.fetchone()
            return int(r["value"]) if r else 0

        # at open: an unreachable server is reported soon (a restart takes seconds, a typo forever)
        have = self._tx(fn, write=False, retry=min(self.retry_seconds, 10.0))
        if have is None:
            raise SchemaMismatch(f"{self._where()} holds no artfs store (schema {self.schema}): "
                                 "create it with artfs init --meta ... --objects ...")
        if have == SCHEMA_VERSION:
            return
        if have > SCHEMA_VERSION:
            raise SchemaMismatch(f"this store was made by a newer artfs (schema {have}; this artfs knows "
                                 f"{SCHEMA_VERSION}): upgrade artfs")
        if have < 1:
            raise SchemaMismatch(f"{self._where()}: unknown schema {have}")
        self._migrate(have)

    def _migrate(self, have: int) -> None:
        for target in range(have + 1, SCHEMA_VERSION + 1):
            def fn(cur, target=target):
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"artfs-schema:{self.schema}",))
                cur.execute("SELECT value FROM info WHERE key='schema'")
                if int(cur.fetchone()["value"]) >= target:
                    return  # another machine migrated meanwhile
                for stmt in MIGRATIONS[target]:
                    cur.execute(stmt)
                cur.execute("UPDATE info SET value=%s WHERE key='schema'", (str(target),))
                cur.execute(f"INSERT INTO migrations VALUES(%s, {NOW}, 'migrated')", (target,))

            self._tx(fn)

    def claim_info(self, key: str, value: str) -> str:
        """Record ``key`` = ``value`` in the store's info table unless it holds one already;
        returns what it holds (``value`` when this call recorded it)."""
        def fn(cur):
            cur.execute("INSERT INTO info VALUES(%s, %s) ON CONFLICT DO NOTHING", (key, value))
            cur.execute("SELECT value FROM info WHERE key=%s", (key,))
            return cur.fetchone()["value"]

        return self._tx(fn)

    def info(self, key: str) -> str | None:
        def fn(cur):
            cur.execute("SELECT value FROM info WHERE key=%s", (key,))
            r = cur.fetchone()
            return r["value"] if r else None

        return self._read(fn)

    def store_id(self) -> str | None:
        def fn(cur):
            cur.execute("SELECT value FROM info WHERE key='store_id'")
            r = cur.fetchone()
            return r["value"] if r else None

        return self._read(fn)

    # -- artifacts ------------------------------------------------------------------------
    def artifact(self, name: str) -> dict | None:
        def fn(cur):
            cur.execute("SELECT * FROM artifacts WHERE name=%s", (name,))
            r = cur.fetchone()
            return dict(r) if r else None

        return self._read(fn)

    def artifacts(self) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute('SELECT * FROM artifacts ORDER BY name COLLATE "C"')))

    @staticmethod
    def _ensure_artifact(cur, name: str, type_: str | None, description: str | None = None, lock: bool = False) -> int:
        cur.execute("SELECT id, type FROM artifacts WHERE name=%s" + (" FOR UPDATE" if lock else ""), (name,))
        row = cur.fetchone()
        if row is None:
            cur.execute("INSERT INTO artifacts(name, type, description, created) VALUES(%s,%s,%s,%s)"
                        " ON CONFLICT (name) DO NOTHING RETURNING id",
                        (name, type_ or "dataset", description, time.time()))
            r = cur.fetchone()
            if r is not None:
                return r["id"]
            # another machine created it meanwhile: go on with its row
            cur.execute("SELECT id, type FROM artifacts WHERE name=%s" + (" FOR UPDATE" if lock else ""), (name,))
            row = cur.fetchone()
        if type_ is not None and row["type"] != type_:
            if cur.execute("SELECT 1 FROM versions WHERE artifact_id=%s LIMIT 1", (row["id"],)).fetchone():
                raise Conflict(f"{name} is a {row['type']}, not a {type_}")
            cur.execute("UPDATE artifacts SET type=%s WHERE id=%s", (type_, row["id"]))  # no version yet: still open
        if description is not None:
            cur.execute("UPDATE artifacts SET description=%s WHERE id=%s", (description, row["id"]))
        return row["id"]

    def ensure_artifact(self, name: str, type_: str | None, description: str | None = None) -> dict:
        self._tx(lambda cur: self._ensure_artifact(cur, name, type_, description))
        return self.artifact(name)

    # -- versions --------------------------------------------------------------------------
    def version(self, name: str, num: int) -> dict | None:
        def fn(cur):
            cur.execute("SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=%s AND v.num=%s",
                        (name, num))
            r = cur.fetchone()
            return self._version(r, name) if r else None

        return self._read(fn)

    def versions(self, name: str) -> list[dict]:
        def fn(cur):
            cur.execute("SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=%s"
                        " ORDER BY v.num DESC", (name,))
            return [self._version(r, name) for r in cur]

        return self._read(fn)

    def all_versions(self) -> list[dict]:
        def fn(cur):
            out = []
            cur.execute('SELECT v.*, a.name AS aname FROM versions v JOIN artifacts a ON a.id=v.artifact_id'
                        ' ORDER BY a.name COLLATE "C", v.num')
            for r in cur:
                d = dict(r)
                out.append(self._version(d, d.pop("aname")))
            return out

        return self._read(fn)

    def create_version(self, name, type_, *, root, ident, root_meta, links, expected, parent, message, metadata,
                       file_count, total_bytes, how, description=None, draft_reset=None, seal=None):
        meta_json = json.dumps(metadata or {}, sort_keys=True)

        def fn(cur):
            # the artifact's row lock orders every version of it; nothing else waits
            aid = self._ensure_artifact(cur, name, type_, description, lock=True)
            cur.execute("SELECT num FROM aliases WHERE artifact_id=%s AND alias='latest'", (aid,))
            r = cur.fetchone()
            latest = r["num"] if r else None
            if expected != ANY and expected != latest:
                raise Stale(f"{name} moved on to v{latest} meanwhile", latest)
            if seal is not None:
                self._check_seal(cur, seal)
            unchanged = False
            if latest is not None:
                cur.execute("SELECT ident FROM versions WHERE artifact_id=%s AND num=%s", (aid, latest))
                r = cur.fetchone()
                unchanged = r is not None and r["ident"] == ident
            if unchanged:
                num = latest
                # W&B updates the metadata of the version whose content it is
                if metadata:
                    old = cur.execute("SELECT metadata FROM versions WHERE artifact_id=%s AND num=%s",
                                      (aid, num)).fetchone()["metadata"]
                    cur.execute("UPDATE versions SET metadata=%s WHERE artifact_id=%s AND num=%s",
                                (json.dumps({**json.loads(old or "{}"), **metadata}, sort_keys=True), aid, num))
                if description is not None:
                    cur.execute("UPDATE versions SET description=%s WHERE artifact_id=%s AND num=%s",
                                (description, aid, num))
            else:
                cur.execute("UPDATE artifacts SET next_num=next_num+1 WHERE id=%s RETURNING next_num-1 AS n", (aid,))
                num = cur.fetchone()["n"]
                cur.execute(
                    "INSERT INTO versions(artifact_id, num, root, ident, parent, created, message, metadata,"
                    " file_count, total_bytes, how, root_meta, links, description)"
                    " VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    (aid, num, root, ident, latest if parent is None else parent, time.time(), message, meta_json,
                     file_count, total_bytes, how, root_meta, links, description))
                cur.execute("INSERT INTO aliases VALUES(%s, 'latest', %s) ON CONFLICT (artifact_id, alias)"
                            " DO UPDATE SET num=EXCLUDED.num", (aid, num))
            if seal is not None:
                self._seal_in(cur, seal, num)
            if draft_reset is not None:
                outcome = draft_reset.get("outcome") or f"{name}:v{num}" + (" (unchanged)" if unchanged else "")
                self._reset_draft_in(cur, draft_reset["id"], num, root, draft_reset["root_rec"], links,
                                     outcome.replace("{num}", str(num)))
            return num, unchanged

        return self._tx(fn)

    def update_version(self, name: str, num: int, *, metadata: dict | None = None, replace_metadata: bool = False,
                       description: str | None = None, tags: list | None = None, expires=ANY) -> dict:
        def fn(cur):
            r = cur.execute("SELECT v.* FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE a.name=%s"
                            " AND v.num=%s FOR UPDATE OF v", (name, num)).fetchone()
            if r is None:
                raise NotFound(f"{name} has no v{num}")
            key = (r["artifact_id"], num)
            if metadata is not None:
                m = {} if replace_metadata else json.loads(r["metadata"] or "{}")
                m.update(metadata)
                cur.execute("UPDATE versions SET metadata=%s WHERE artifact_id=%s AND num=%s",
                            (json.dumps(m, sort_keys=True, default=str), *key))
            if description is not None:
                cur.execute("UPDATE versions SET description=%s WHERE artifact_id=%s AND num=%s", (description, *key))
            if tags is not None:
                cur.execute("UPDATE versions SET tags=%s WHERE artifact_id=%s AND num=%s",
                            (json.dumps(sorted(set(tags))), *key))
            if expires != ANY:
                cur.execute("UPDATE versions SET expires=%s WHERE artifact_id=%s AND num=%s", (expires, *key))

        self._tx(fn)
        return self.version(name, num)

    def delete_version(self, name: str, num: int, force: bool = False) -> dict:
        def fn(cur):
            a = cur.execute("SELECT id FROM artifacts WHERE name=%s FOR UPDATE", (name,)).fetchone()
            if a is None or cur.execute("SELECT 1 FROM versions WHERE artifact_id=%s AND num=%s",
                                        (a["id"], num)).fetchone() is None:
                raise NotFound(f"{name} has no v{num}")
            users = [r["alias"] for r in cur.execute(
                "SELECT alias FROM aliases WHERE artifact_id=%s AND num=%s AND alias<>'latest' ORDER BY alias COLLATE \"C\"",
                (a["id"], num)).fetchall()]
            if users and not force:
                raise Conflict(f"{name}:v{num} has aliases {', '.join(users)}; move them, or delete with --force")
            cur.execute("DELETE FROM aliases WHERE artifact_id=%s AND num=%s", (a["id"], num))
            cur.execute("DELETE FROM versions WHERE artifact_id=%s AND num=%s", (a["id"], num))
            m = cur.execute("SELECT MAX(num) AS m FROM versions WHERE artifact_id=%s", (a["id"],)).fetchone()["m"]
            if m is not None:
                cur.execute("INSERT INTO aliases VALUES(%s, 'latest', %s) ON CONFLICT (artifact_id, alias)"
                            " DO UPDATE SET num=EXCLUDED.num", (a["id"], m))
            return {"latest": m, "aliases_removed": users}

        return self._tx(fn)

    def expired_versions(self, now: float) -> list[tuple[str, int]]:
        return self._read(lambda cur: [(r["name"], r["num"]) for r in cur.execute(
            'SELECT a.name, v.num FROM versions v JOIN artifacts a ON a.id=v.artifact_id'
            ' WHERE v.expires IS NOT NULL AND v.expires <= %s ORDER BY a.name COLLATE "C", v.num', (now,))])

    def set_artifact_type(self, name: str, type_: str) -> None:
        def fn(cur):
            a = cur.execute("SELECT id, type FROM artifacts WHERE name=%s FOR UPDATE", (name,)).fetchone()
            if a is None or a["type"] == type_:
                return
            if cur.execute("SELECT 1 FROM versions WHERE artifact_id=%s LIMIT 1", (a["id"],)).fetchone():
                raise Conflict(f"{name} is a {a['type']}, not a {type_}")
            cur.execute("UPDATE artifacts SET type=%s WHERE id=%s", (type_, a["id"]))
            cur.execute("UPDATE drafts SET type=%s WHERE artifact=%s", (type_, name))

        self._tx(fn)

    # -- aliases ---------------------------------------------------------------------------
    def alias(self, name: str, alias: str) -> int | None:
        def fn(cur):
            cur.execute("SELECT al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id"
                        " WHERE a.name=%s AND al.alias=%s", (name, alias))
            r = cur.fetchone()
            return r["num"] if r else None

        return self._read(fn)

    def aliases(self, name: str) -> dict[int, list[str]]:
        def fn(cur):
            out: dict[int, list[str]] = {}
            cur.execute('SELECT al.alias, al.num FROM aliases al JOIN artifacts a ON a.id=al.artifact_id'
                        ' WHERE a.name=%s ORDER BY al.alias COLLATE "C"', (name,))
            for r in cur:
                out.setdefault(r["num"], []).append(r["alias"])
            return out

        return self._read(fn)

    def set_alias(self, name: str, alias: str, num: int) -> None:
        def fn(cur):
            cur.execute("SELECT id FROM artifacts WHERE name=%s", (name,))
            a = cur.fetchone()
            if a is None:
                raise NotFound(f"no artifact {name!r}")
            cur.execute("SELECT 1 FROM versions WHERE artifact_id=%s AND num=%s", (a["id"], num))
            if cur.fetchone() is None:
                raise NotFound(f"{name} has no v{num}")
            cur.execute("INSERT INTO aliases VALUES(%s,%s,%s) ON CONFLICT (artifact_id, alias)"
                        " DO UPDATE SET num=EXCLUDED.num", (a["id"], alias, num))

        self._tx(fn)

    def delete_alias(self, name: str, alias: str) -> bool:
        def fn(cur):
            cur.execute("DELETE FROM aliases WHERE alias=%s AND artifact_id=(SELECT id FROM artifacts WHERE name=%s)",
                        (alias, name))
            return cur.rowcount > 0

        return self._tx(fn)

    # -- drafts -----------------------------------------------------------------------------
    def draft(self, key: str) -> dict | None:
        def fn(cur):
            cur.execute("SELECT * FROM drafts WHERE key=%s", (key,))
            r = cur.fetchone()
            return dict(r) if r else None

        return self._read(fn)

    def draft_by_id(self, draft_id: int) -> dict | None:
        def fn(cur):
            cur.execute("SELECT * FROM drafts WHERE id=%s", (draft_id,))
            r = cur.fetchone()
            return dict(r) if r else None

        return self._read(fn)

    def drafts(self) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute("SELECT * FROM drafts ORDER BY id")))

    def create_draft(self, key, artifact, type_, parent, base_root, root_rec, base_links) -> dict:
        def fn(cur):
            now = time.time()
            cur.execute(
                "INSERT INTO drafts(key, artifact, type, parent, base_root, base_links, links_adopted, scratch,"
                " created, updated, machine, machine_label) VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (key) DO NOTHING RETURNING id",
                (key, artifact, type_, parent, base_root, base_links, 0 if base_links else 1, uuid.uuid4().hex,
                 now, now, self.machine, self.machine_label))
            r = cur.fetchone()
            if r is None:
                return
            cur.execute("INSERT INTO draft_dirs VALUES(%s, 1, %s)", (r["id"], base_root))
            cur.execute("INSERT INTO draft_entries VALUES(%s, 0, %s, %s)", (r["id"], b"", root_rec))

        self._tx(fn)
        return self.draft(key)

    def claim_draft(self, draft_id: int, machine: str, label: str, expected: str | None) -> bool:
        """Move a draft to ``machine`` if it is still held by ``expected`` (compare-and-set)."""
        def fn(cur):
            cur.execute("UPDATE drafts SET machine=%s, machine_label=%s WHERE id=%s AND machine IS NOT DISTINCT FROM %s",
                        (machine, label, draft_id, expected))
            return cur.rowcount == 1

        return self._tx(fn)

    def draft_state(self, draft_id: int, pins: bool = True) -> dict:
        def fn(cur):
            dirs = {r["dir_id"]: r["base"] for r in cur.execute(
                "SELECT dir_id, base FROM draft_dirs WHERE draft_id=%s", (draft_id,))}
            entries = [(r["dir_id"], bytes(r["name"]), bytes(r["rec"])) for r in cur.execute(
                "SELECT dir_id, name, rec FROM draft_entries WHERE draft_id=%s", (draft_id,))]
            inodes = {r["ino"]: bytes(r["rec"]) for r in cur.execute(
                "SELECT ino, rec FROM draft_inodes WHERE draft_id=%s", (draft_id,))}
            pins_ = {(r["dir_id"], bytes(r["name"])): r["ino"] for r in cur.execute(
                "SELECT dir_id, name, ino FROM draft_pins WHERE draft_id=%s", (draft_id,))} if pins else None
            return {"dirs": dirs, "entries": entries, "inodes": inodes, "pins": pins_}

        return self._read(fn)

    def draft_apply(self, draft_id, ops, next_ino=None, links_adopted=None) -> None:
        def fn(cur):
            self._draft_apply(cur, draft_id, ops)
            # one statement (one round trip) for the draft's row; GREATEST skips a NULL
            cur.execute("UPDATE drafts SET updated=%s, next_ino=GREATEST(next_ino, %s),"
                        " links_adopted=COALESCE(%s, links_adopted) WHERE id=%s",
                        (time.time(), next_ino, None if links_adopted is None else int(links_adopted), draft_id))

        self._tx(fn)

    @staticmethod
    def _draft_apply(cur, draft_id, ops) -> None:
        for op in ops:
            kind = op[0]
            if kind == "ent":
                if op[3] is None:
                    cur.execute("DELETE FROM draft_entries WHERE draft_id=%s AND dir_id=%s AND name=%s",
                                (draft_id, op[1], op[2]))
                else:
                    cur.execute("INSERT INTO draft_entries VALUES(%s,%s,%s,%s) ON CONFLICT (draft_id, dir_id, name)"
                                " DO UPDATE SET rec=EXCLUDED.rec", (draft_id, op[1], op[2], op[3]))
            elif kind == "dir":
                cur.execute("INSERT INTO draft_dirs VALUES(%s,%s,%s) ON CONFLICT (draft_id, dir_id)"
                            " DO UPDATE SET base=EXCLUDED.base", (draft_id, op[1], op[2]))
            elif kind == "deldir":
                cur.execute("DELETE FROM draft_dirs WHERE draft_id=%s AND dir_id=%s", (draft_id, op[1]))
                cur.execute("DELETE FROM draft_entries WHERE draft_id=%s AND dir_id=%s", (draft_id, op[1]))
            elif kind == "ino":
                if op[2] is None:
                    cur.execute("DELETE FROM draft_inodes WHERE draft_id=%s AND ino=%s", (draft_id, op[1]))
                else:
                    cur.execute("INSERT INTO draft_inodes VALUES(%s,%s,%s) ON CONFLICT (draft_id, ino)"
                                " DO UPDATE SET rec=EXCLUDED.rec", (draft_id, op[1], op[2]))
            elif kind == "pin":
                if op[3] is None:
                    cur.execute("DELETE FROM draft_pins WHERE draft_id=%s AND dir_id=%s AND name=%s",
                                (draft_id, op[1], op[2]))
                else:
                    cur.execute("INSERT INTO draft_pins VALUES(%s,%s,%s,%s) ON CONFLICT (draft_id, dir_id, name)"
                                " DO UPDATE SET ino=EXCLUDED.ino", (draft_id, op[1], op[2], op[3]))
            else:
                raise ValueError(f"unknown draft op {kind!r}")

    @staticmethod
    def _reset_draft_in(cur, draft_id, parent, base_root, root_rec, links, outcome) -> None:
        cur.execute("SELECT rec FROM draft_entries WHERE draft_id=%s AND dir_id=0", (draft_id,))
        keep_root = cur.fetchone()
        for t in ("draft_entries", "draft_dirs", "draft_inodes"):
            cur.execute(f"DELETE FROM {t} WHERE draft_id=%s", (draft_id,))
        cur.execute("INSERT INTO draft_dirs VALUES(%s, 1, %s)", (draft_id, base_root))
        rec = root_rec if root_rec is not None else (bytes(keep_root["rec"]) if keep_root else None)
        if rec is not None:
            cur.execute("INSERT INTO draft_entries VALUES(%s, 0, %s, %s)", (draft_id, b"", rec))
        cur.execute("UPDATE drafts SET parent=%s, base_root=%s, base_links=%s, links_adopted=%s, outcome=%s, updated=%s"
                    " WHERE id=%s", (parent, base_root, links, 0 if links else 1, outcome, time.time(), draft_id))

    def reset_draft(self, draft_id, parent, base_root, root_rec, links, outcome) -> None:
        self._tx(lambda cur: self._reset_draft_in(cur, draft_id, parent, base_root, root_rec, links, outcome))

    def set_draft_outcome(self, draft_id: int, outcome: str) -> None:
        self._tx(lambda cur: cur.execute("UPDATE drafts SET outcome=%s WHERE id=%s", (outcome, draft_id)))

    def delete_draft(self, draft_id: int) -> None:
        def fn(cur):
            for t in ("draft_entries", "draft_dirs", "draft_inodes", "draft_pins"):
                cur.execute(f"DELETE FROM {t} WHERE draft_id=%s", (draft_id,))
            cur.execute("DELETE FROM drafts WHERE id=%s", (draft_id,))

        self._tx(fn)

    def all_draft_recs(self):
        def fn(cur):
            bases = [(r["draft_id"], r["base"]) for r in cur.execute("SELECT draft_id, base FROM draft_dirs")]
            bases += [(r["id"], r["base_root"]) for r in cur.execute("SELECT id, base_root FROM drafts")]
            recs = [(r["draft_id"], bytes(r["rec"])) for r in cur.execute("SELECT draft_id, rec FROM draft_entries")]
            recs += [(r["draft_id"], bytes(r["rec"])) for r in cur.execute("SELECT draft_id, rec FROM draft_inodes")]
            return bases, recs

        return self._read(fn)

    def draft_links(self) -> list[tuple[int, str]]:
        return self._read(lambda cur: [(r["id"], r["base_links"]) for r in cur.execute(
            "SELECT id, base_links FROM drafts WHERE base_links IS NOT NULL")])

    # -- put's stat cache (per machine: paths and inode numbers mean nothing elsewhere) ------
    def filecache_get(self, paths: list[bytes], under: bytes | None = None) -> dict[bytes, tuple[str, str]]:
        if not paths:
            return {}

        def fn(cur):
            out = {}
            for i in range(0, len(paths), 5000):
                for r in cur.execute("SELECT path, stat, digest FROM statcache WHERE machine=%s AND path = ANY(%s)",
                                     (self.machine, list(paths[i:i + 5000]))):
                    out[bytes(r["path"])] = (r["stat"], r["digest"])
            return out

        return self._read(fn)

    def filecache_put(self, rows: list[tuple[bytes, str, str]]) -> None:
        if not rows:
            return
        rows = list({r[0]: r for r in rows}.values())  # the last row for a path wins, as INSERT OR REPLACE

        def fn(cur):
            cur.execute(
                "INSERT INTO statcache(machine, path, stat, digest) SELECT %s, * FROM unnest(%s::bytea[], %s::text[],"
                " %s::text[]) ON CONFLICT (machine, path) DO UPDATE SET stat=EXCLUDED.stat, digest=EXCLUDED.digest",
                (self.machine, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))

        self._tx(fn)

    # -- collaborative versions ---------------------------------------------------------------
    _PENDING = f"SELECT *, (closing IS NOT NULL AND closing > {NOW}) AS closing_live FROM pending"

    @staticmethod
    def _clean_pending(r) -> dict | None:
        if r is None:
            return None
        d = dict(r)
        d.pop("closing_live", None)
        d.pop("closing_holder", None)
        return d

    @staticmethod
    def _closing(p) -> bool:
        """A finish holds the pending version (its lease runs, and its process is not known dead)."""
        if not p["closing_live"]:
            return False
        from .scaleout import _dead

        return not _dead(p.get("closing_holder"))

    def _pending_row(self, cur, artifact: str, did: str, lock: bool = False):
        cur.execute(self._PENDING + " WHERE artifact=%s AND distributed_id=%s" + (" FOR UPDATE" if lock else ""),
                    (artifact, did))
        return cur.fetchone()

    def pending(self, artifact: str, did: str) -> dict | None:
        return self._read(lambda cur: self._clean_pending(self._pending_row(cur, artifact, did)))

    def pendings(self, artifact: str | None = None) -> list[dict]:
        def fn(cur):
            q = "SELECT * FROM pending" + (" WHERE artifact=%s" if artifact else "") + " ORDER BY created DESC"
            return [self._enrich(cur, self._clean_pending(r))
                    for r in cur.execute(q, (artifact,) if artifact else ()).fetchall()]

        return self._read(fn)

    @staticmethod
    def _enrich(cur, d: dict) -> dict:
        d["writers"] = [dict(w) for w in cur.execute(
            "SELECT w.writer, w.label, w.updated, (SELECT COUNT(*) FROM pending_rows p WHERE p.pending_id=w.pending_id"
            " AND p.writer=w.writer) AS rows FROM pending_writers w WHERE w.pending_id=%s ORDER BY w.updated",
            (d["id"],)).fetchall()]
        d["files"] = cur.execute("SELECT COUNT(DISTINCT path) AS n FROM pending_rows WHERE pending_id=%s",
                                 (d["id"],)).fetchone()["n"]
        return d

    def pending_rows(self, pending_id: int) -> list[tuple[str, bytes, bytes]]:
        return self._read(lambda cur: [(r["writer"], bytes(r["path"]), bytes(r["rec"])) for r in cur.execute(
            'SELECT writer, path, rec FROM pending_rows WHERE pending_id=%s ORDER BY path, writer COLLATE "C"',
            (pending_id,))])

    def all_pending_recs(self) -> list[tuple[str, bytes]]:
        return self._read(lambda cur: [
            (f"{r['artifact']} (pending {r['distributed_id']})", bytes(r["rec"])) for r in cur.execute(
                "SELECT p.artifact, p.distributed_id, r.rec FROM pending_rows r JOIN pending p ON p.id=r.pending_id"
                " WHERE p.finished IS NULL")])

    def all_pending_bases(self) -> list[tuple[str, str]]:
        return self._read(lambda cur: [
            (f"{r['artifact']} (pending {r['distributed_id']})", r["base_root"]) for r in cur.execute(
                "SELECT artifact, distributed_id, base_root FROM pending WHERE finished IS NULL"
                " AND base_root IS NOT NULL")])

    @staticmethod
    def _finished_error(row) -> Finished:
        return Finished(f"already finished as {row['artifact']}:v{row['finished']}")

    def upsert_rows(self, artifact, type_, did, parent, base_root, writer, label, rows) -> dict:
        """``rows``: {path: (rec, content key or None for a removal, is_dir)}."""
        def fn(cur):
            self._ensure_artifact(cur, artifact, type_)
            cur.execute("INSERT INTO pending(artifact, type, distributed_id, parent, base_root, created)"
                        " VALUES(%s,%s,%s,%s,%s,%s) ON CONFLICT (artifact, distributed_id) DO NOTHING RETURNING id",
                        (artifact, type_, did, parent, base_root, time.time()))
            fresh = cur.fetchone() is not None
            # the pending version's row lock orders its upserts and finishes: each conflict check
            # sees every committed contribution
            p = self._pending_row(cur, artifact, did, lock=True)
            if not fresh:
                if p["finished"] is not None:
                    raise self._finished_error(p)
                if self._closing(p):
                    raise Busy(f"pending version {artifact} ({did}) is being finished by {p['closing_by']}")
                if p["parent"] != parent:
                    have = f"v{p['parent']}" if p["parent"] is not None else "nothing (a new version from scratch)"
                    mine = f"v{parent}" if parent is not None else "nothing"
                    raise Conflict(f"pending version {artifact} ({did}) starts from {have}; this writer's starts "
                                   f"from {mine}")
            pid = p["id"]
            self._check_conflicts(cur, pid, artifact, did, writer, rows)
            cur.execute("DELETE FROM pending_rows WHERE pending_id=%s AND writer=%s", (pid, writer))
            paths = list(rows)
            cur.execute(
                "INSERT INTO pending_rows(pending_id, writer, path, rec, ckey, isdir) SELECT %s, %s, * FROM"
                " unnest(%s::bytea[], %s::bytea[], %s::bytea[], %s::boolean[])",
                (pid, writer, paths, [rows[p][0] for p in paths], [rows[p][1] for p in paths],
                 [bool(rows[p][2]) for p in paths]))
            cur.execute("INSERT INTO pending_writers VALUES(%s,%s,%s,%s) ON CONFLICT (pending_id, writer)"
                        " DO UPDATE SET label=EXCLUDED.label, updated=EXCLUDED.updated",
                        (pid, writer, label, time.time()))
            cur.execute("UPDATE pending SET generation=generation+1 WHERE id=%s", (pid,))
            return self._enrich(cur, self._clean_pending(self._pending_row(cur, artifact, did)))

        return self._tx(fn)

    @staticmethod
    def _check_conflicts(cur, pid: int, artifact: str, did: str, writer: str, rows: dict) -> None:
        """One set-based query: the writer's rows against every other writer's."""
        paths = list(rows)
        anc_of, anc = [], []
        for p in paths:
            i = p.find(b"/")
            while i >= 0:
                anc.append(p[:i])
                anc_of.append(p)
                i = p.find(b"/", i + 1)
        # paths below P are exactly those in [P + "/", P + "0") ("0" follows "/")
        cur.execute(
            "WITH u AS (SELECT * FROM unnest(%(p)s::bytea[], %(lo)s::bytea[], %(hi)s::bytea[], %(c)s::bytea[],"
            "                                %(d)s::boolean[]) AS t(path, lo, hi, ckey, isdir)),"
            "     a AS (SELECT * FROM unnest(%(ap)s::bytea[], %(aa)s::bytea[]) AS t(path, anc))"
            # the same path with other content (a removal has no content key)
            " SELECT u.path, r.writer FROM u JOIN pending_rows r ON r.pending_id=%(pid)s AND r.path=u.path"
            "   AND r.writer<>%(w)s WHERE r.ckey IS DISTINCT FROM u.ckey AND NOT (r.isdir AND u.isdir)"
            # something of another writer's below my file or removal
            " UNION ALL SELECT u.path, r.writer FROM u JOIN pending_rows r ON r.pending_id=%(pid)s"
            "   AND r.path>=u.lo AND r.path<u.hi AND r.writer<>%(w)s WHERE NOT u.isdir"
            # my path inside another writer's file or removal
            " UNION ALL SELECT a.path, r.writer FROM a JOIN pending_rows r ON r.pending_id=%(pid)s AND r.path=a.anc"
            "   AND r.writer<>%(w)s WHERE NOT r.isdir",
            {"p": paths, "lo": [p + b"/" for p in paths], "hi": [p + b"0" for p in paths],
             "c": [rows[p][1] for p in paths], "d": [bool(rows[p][2]) for p in paths], "ap": anc_of, "aa": anc,
             "pid": pid, "w": writer})
        clashes: dict[bytes, set[str]] = {}
        for r in cur.fetchall():
            clashes.setdefault(bytes(r["path"]), set()).add(r["writer"])
        if clashes:
            labels = {r["writer"]: r["label"] for r in cur.execute(
                "SELECT writer, label FROM pending_writers WHERE pending_id=%s", (pid,))}
            from ..names import quote

            parts = [f"{quote(path)} (also set by {', '.join(sorted(labels.get(w) or w for w in ws))})"
                     for path, ws in sorted(clashes.items())]
            raise Conflict(f"conflicting upsert into {artifact} (pending {did}): " + "; ".join(parts))

    def begin_finish(self, artifact: str, did: str) -> dict:
        import socket

        def fn(cur):
            p = self._pending_row(cur, artifact, did, lock=True)
            if p is None:
                raise NotFound(f"{artifact} has no pending version {did!r}")
            if p["finished"] is not None:
                raise self._finished_error(p)
            if self._closing(p):
                raise Busy(f"pending version {artifact} ({did}) is already being finished by {p['closing_by']}")
            from .scaleout import _holder

            cur.execute(f"UPDATE pending SET closing={NOW} + %s, closing_by=%s, closing_holder=%s WHERE id=%s",
                        (FINISH_LEASE, f"pid {os.getpid()} on {socket.gethostname()}",
                         _holder(self.machine, self.machine_label), p["id"]))
            out = self._clean_pending(p)
            out["rows"] = [(r["writer"], bytes(r["path"]), bytes(r["rec"])) for r in cur.execute(
                'SELECT writer, path, rec FROM pending_rows WHERE pending_id=%s ORDER BY path, writer COLLATE "C"',
                (p["id"],))]
            return out

        return self._tx(fn)

    def end_finish(self, pending_id: int) -> None:
        self._tx(lambda cur: cur.execute("UPDATE pending SET closing=NULL, closing_by=NULL, closing_holder=NULL"
                                         " WHERE id=%s AND finished IS NULL", (pending_id,)))

    def _check_seal(self, cur, seal: dict) -> None:
        cur.execute("SELECT * FROM pending WHERE id=%s FOR UPDATE", (seal["pending_id"],))
        r = cur.fetchone()
        if r is None:
            raise NotFound("the pending version was discarded meanwhile")
        if r["finished"] is not None:
            raise self._finished_error(r)
        if r["generation"] != seal["generation"]:
            raise Stale("the pending version changed while it was being finished")

    @staticmethod
    def _seal_in(cur, seal: dict, num: int) -> None:
        cur.execute("UPDATE pending SET finished=%s, closing=NULL, closing_by=NULL, closing_holder=NULL WHERE id=%s",
                    (num, seal["pending_id"]))
        cur.execute("DELETE FROM pending_rows WHERE pending_id=%s", (seal["pending_id"],))

    def discard_pending(self, artifact: str, did: str) -> bool:
        def fn(cur):
            p = self._pending_row(cur, artifact, did, lock=True)
            if p is None or p["finished"] is not None:
                return False
            for t in ("pending_rows", "pending_writers"):
                cur.execute(f"DELETE FROM {t} WHERE pending_id=%s", (p["id"],))
            cur.execute("DELETE FROM pending WHERE id=%s", (p["id"],))
            return True

        return self._tx(fn)

    # -- runs ----------------------------------------------------------------------------
    _RUN_COLS = {"id", "name", "job_type", "grp", "config", "command", "cwd", "host", "user", "pid", "started",
                 "ended", "outcome", "exit_status", "entity", "project", "summary"}

    def run_start(self, row: dict) -> None:
        row = dict(row)
        row["config"] = json.dumps(row.get("config") or {}, sort_keys=True, default=str)
        bad = set(row) - self._RUN_COLS
        if bad:
            raise ValueError(f"unknown run columns {sorted(bad)}")
        cols = ", ".join(f'"{c}"' for c in row)
        self._tx(lambda cur: cur.execute(f"INSERT INTO runs({cols}) VALUES({', '.join(['%s'] * len(row))})",
                                         tuple(row.values())))

    def run_end(self, run_id: str, outcome: str, exit_status: int | None) -> None:
        self._tx(lambda cur: cur.execute("UPDATE runs SET ended=%s, outcome=%s, exit_status=%s WHERE id=%s",
                                         (time.time(), outcome, exit_status, run_id)))

    def run_resume(self, run_id: str, pid: int) -> bool:
        def fn(cur):
            cur.execute("UPDATE runs SET outcome='running', ended=NULL, exit_status=NULL, pid=%s WHERE id=%s",
                        (pid, run_id))
            return cur.rowcount > 0

        return self._tx(fn)

    def run_log(self, run_id: str, data: dict) -> None:
        def fn(cur):
            r = cur.execute("SELECT summary FROM runs WHERE id=%s FOR UPDATE", (run_id,)).fetchone()
            if r is None:
                return
            summary = json.loads(r["summary"] or "{}")
            summary.update(data)
            cur.execute("UPDATE runs SET summary=%s WHERE id=%s",
                        (json.dumps(summary, sort_keys=True, default=str), run_id))

        self._tx(fn)

    def run(self, run_id: str) -> dict | None:
        def fn(cur):
            r = cur.execute("SELECT * FROM runs WHERE id=%s", (run_id,)).fetchone()
            return self._run(r) if r else None

        return self._read(fn)

    def runs(self, limit: int | None = None) -> list[dict]:
        q = "SELECT * FROM runs ORDER BY started DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return self._read(lambda cur: [self._run(r) for r in cur.execute(q)])

    def run_used(self, run_id: str, artifact: str, num: int) -> None:
        def fn(cur):
            if cur.execute("SELECT 1 FROM run_outputs WHERE run_id=%s AND artifact=%s AND num=%s",
                           (run_id, artifact, num)).fetchone():
                return
            cur.execute("INSERT INTO run_inputs VALUES(%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                        (run_id, artifact, num, time.time()))

        self._tx(fn)

    def run_produced(self, run_id: str, artifact: str, num: int, how: str, created: float) -> bool:
        def fn(cur):
            r = cur.execute("SELECT started FROM runs WHERE id=%s", (run_id,)).fetchone()
            if r is None or created < r["started"]:
                return False
            if cur.execute("SELECT 1 FROM run_inputs WHERE run_id=%s AND artifact=%s AND num=%s",
                           (run_id, artifact, num)).fetchone():
                return False
            cur.execute("INSERT INTO run_outputs VALUES(%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                        (run_id, artifact, num, how, time.time()))
            return True

        return self._tx(fn)

    def run_upserted(self, run_id: str, artifact: str, did: str) -> None:
        self._tx(lambda cur: cur.execute(
            "INSERT INTO run_upserts VALUES(%s,%s,%s,%s) ON CONFLICT (run_id, artifact, distributed_id)"
            " DO UPDATE SET at=EXCLUDED.at", (run_id, artifact, did, time.time())))

    def run_inputs(self, run_id: str) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute(
            "SELECT artifact, num, at FROM run_inputs WHERE run_id=%s ORDER BY at", (run_id,))))

    def run_outputs(self, run_id: str) -> list[dict]:
        def fn(cur):
            rows = _rows(cur.execute("SELECT artifact, num, how, at FROM run_outputs WHERE run_id=%s ORDER BY at",
                                     (run_id,)))
            for r in cur.execute(
                    "SELECT u.artifact, p.finished AS num, u.at, p.distributed_id FROM run_upserts u JOIN pending p"
                    " ON p.artifact=u.artifact AND p.distributed_id=u.distributed_id WHERE u.run_id=%s"
                    " AND p.finished IS NOT NULL", (run_id,)).fetchall():
                if not any(x["artifact"] == r["artifact"] and x["num"] == r["num"] for x in rows):
                    rows.append({"artifact": r["artifact"], "num": r["num"], "how": "upserted", "at": r["at"]})
            return rows

        return self._read(fn)

    def run_pending_upserts(self, run_id: str) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute(
            "SELECT u.artifact, u.distributed_id, u.at FROM run_upserts u LEFT JOIN pending p ON p.artifact=u.artifact"
            " AND p.distributed_id=u.distributed_id WHERE u.run_id=%s AND (p.finished IS NULL)", (run_id,))))

    def version_producers(self, artifact: str, num: int) -> list[dict]:
        def fn(cur):
            rows = _rows(cur.execute("SELECT run_id, how, at FROM run_outputs WHERE artifact=%s AND num=%s ORDER BY at",
                                     (artifact, num)))
            for r in cur.execute(
                    "SELECT u.run_id, u.at FROM run_upserts u JOIN pending p ON p.artifact=u.artifact"
                    " AND p.distributed_id=u.distributed_id WHERE p.artifact=%s AND p.finished=%s",
                    (artifact, num)).fetchall():
                if not any(x["run_id"] == r["run_id"] for x in rows):
                    rows.append({"run_id": r["run_id"], "how": "upserted", "at": r["at"]})
            return rows

        return self._read(fn)

    def version_consumers(self, artifact: str, num: int) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute(
            "SELECT run_id, at FROM run_inputs WHERE artifact=%s AND num=%s ORDER BY at", (artifact, num))))

    # -- gc leases (scaleout.PgGc) ----------------------------------------------------------
    def gc_writer_enter(self, lease_id: str, holder: str, lease: float) -> dict | None:
        """Register a writer unless a gc holds the store: None when registered, else the gc's row."""
        def fn(cur):
            g = cur.execute(f"SELECT holder, until, until > {NOW} AS live FROM gc_state WHERE id=1 FOR SHARE").fetchone()
            if g is not None and g["holder"] is not None and g["live"]:
                return dict(g)
            cur.execute(f"INSERT INTO gc_writers VALUES(%s, %s, {NOW}, {NOW} + %s) ON CONFLICT (id)"
                        " DO UPDATE SET until=EXCLUDED.until", (lease_id, holder, lease))
            return None

        return self._tx(fn, write=False)

    def gc_writers_renew(self, ids: list[str], lease: float) -> set[str]:
        """Extend leases; returns the ids that still exist."""
        def fn(cur):
            cur.execute(f"UPDATE gc_writers SET until={NOW} + %s WHERE id = ANY(%s) RETURNING id", (lease, list(ids)))
            return {r["id"] for r in cur}

        return self._tx(fn, write=False)

    def gc_writer_exit(self, lease_id: str) -> None:
        self._tx(lambda cur: cur.execute("DELETE FROM gc_writers WHERE id=%s", (lease_id,)), write=False)

    def gc_state(self) -> dict:
        return self._read(lambda cur: dict(cur.execute(
            f"SELECT holder, until, epoch, until > {NOW} AS live FROM gc_state WHERE id=1").fetchone()))

    def gc_begin(self, holder: str, lease: float, dead_holder: str | None = None) -> bool:
        """Take the gc lease if it is free, expired, or held by ``dead_holder`` (a gc that died)."""
        def fn(cur):
            cur.execute(f"UPDATE gc_state SET holder=%s, until={NOW} + %s, epoch=epoch+1 WHERE id=1 AND"
                        f" (holder IS NULL OR until <= {NOW} OR holder=%s OR holder=%s)", (holder, lease, dead_holder or "", holder))
            return cur.rowcount == 1

        return self._tx(fn, write=False)

    def gc_renew(self, holder: str, lease: float) -> bool:
        def fn(cur):
            cur.execute(f"UPDATE gc_state SET until={NOW} + %s WHERE id=1 AND holder=%s AND until > {NOW}",
                        (lease, holder))
            return cur.rowcount == 1

        return self._tx(fn, write=False)

    def gc_end(self, holder: str) -> None:
        self._tx(lambda cur: cur.execute("UPDATE gc_state SET holder=NULL, until=NULL WHERE id=1 AND holder=%s",
                                         (holder,)), write=False)

    def gc_writers(self) -> list[dict]:
        return self._read(lambda cur: _rows(cur.execute(
            f"SELECT id, holder, started, until, until > {NOW} AS live FROM gc_writers ORDER BY started")))

    def gc_reap(self, ids: list[str]) -> int:
        """Remove writer leases (expired ones, or ones whose process is known dead)."""
        if not ids:
            return 0

        def fn(cur):
            cur.execute("DELETE FROM gc_writers WHERE id = ANY(%s)", (list(ids),))
            return cur.rowcount

        return self._tx(fn, write=False)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
