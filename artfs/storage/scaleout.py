"""The scale-out store (DESIGN.md §10): PostgreSQL metadata, S3 objects, per-machine state.

A scale-out store is named by a small JSON *description* file (the store
path); a copy of it is all another machine needs::

    {"format": "artfs scale-out store 1", "id": "<store id>",
     "meta": "postgresql://user@host:5432/db",            (never a password)
     "objects": "s3://BUCKET/PREFIX", "endpoint": "http://...", "region": "...",
     "cache_size": 4294967296}

Credentials come from the environment only: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``) for the bucket, libpq's
``PG*`` variables or ``~/.pgpass`` for PostgreSQL -- or ``ARTFS_META_DSN``, a
whole DSN used instead of the description's.  ``AWS_ENDPOINT_URL`` applies
when the description names no endpoint; ``ARTFS_CACHE_SIZE`` overrides the
cache bound on one machine.

This machine's state for the store is keyed by the store id, under the
user's XDG directories, so two ``HOME``s on one machine behave as two
machines::

    $XDG_DATA_HOME/artfs-scaleout/<id>/   drafts/ (scratch files), locks/, logs/, machine-id
    $XDG_CACHE_HOME/artfs/<id>/            the object cache (cache.py)

(``artfs-scaleout``, not ``artfs/``: ``~/.local/share/artfs`` is the default
*local* store's directory.)

gc across machines (:class:`PgGc`) is coordinated through leases in the
metadata store, never ``flock``: a writer registers a lease (renewed by a
heartbeat) before its first upload and drops it once the metadata row naming
its objects is committed; gc takes the store's gc lease -- from then on new
writers wait -- reaps writer leases that expired (or whose process is known
dead on this very kernel), waits for the others to end, and only then marks
and sweeps, checking its own lease before every delete batch.  A writer whose
lease was reaped (it outlived its lease: a long stall) cannot record
anything: every writing transaction checks its leases under a share lock
(``PgMeta.fence``).  Drafts belong to the machine that holds their scratch
files; another machine may take a draft over only when it has none, and a
draft in use anywhere is locked with a PostgreSQL advisory lock.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
import weakref
from contextlib import contextmanager

from ..errors import BadInput, Conflict, StoreMissing
from . import format as fmt
from .cache import DEFAULT_LIMIT, ObjectCache, parse_size
from .store import Store, private_dir

DESC_FORMAT = "artfs scale-out store 1"


def _xdg(var: str, default: str) -> str:
    return os.environ.get(var) or os.path.join(os.path.expanduser("~"), default)


def state_root() -> str:
    return os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "artfs-scaleout")


def cache_root() -> str:
    return os.path.join(_xdg("XDG_CACHE_HOME", ".cache"), "artfs")


def parse_s3_url(url: str) -> tuple[str, str]:
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?", url or "")
    if not m:
        raise BadInput(f"bad --objects {url!r}: expected s3://BUCKET/PREFIX (a bucket name of 3-63 lowercase "
                       "letters, digits, dots and hyphens)")
    prefix = (m.group(2) or "").strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise BadInput(f"bad prefix in {url!r}")
    return m.group(1), prefix


# -- the description file -------------------------------------------------------------------

def load_description(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
        desc = json.loads(raw)
    except OSError as exc:
        raise StoreMissing(f"cannot read the store description {path}: {exc.strerror}") from None
    except ValueError:
        raise StoreMissing(f"{path} is a file but not an artfs store description") from None
    if not isinstance(desc, dict) or desc.get("format") != DESC_FORMAT:
        raise StoreMissing(f"{path} is a file but not an artfs store description"
                           + (f" (format {desc.get('format')!r})" if isinstance(desc, dict) else ""))
    for k in ("id", "meta", "objects"):
        if not isinstance(desc.get(k), str) or not desc[k]:
            raise StoreMissing(f"the store description {path} lacks {k!r}")
    if not re.fullmatch(r"[0-9a-f-]{36}", desc["id"]):
        raise StoreMissing(f"the store description {path} has a bad id {desc['id']!r}")
    return desc


def _write_description(path: str, desc: dict) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(desc, indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- this machine ----------------------------------------------------------------------------

def _machine_id(state_dir: str) -> str:
    """This machine's id for the store (a uuid kept in its state directory)."""
    p = os.path.join(state_dir, "machine-id")
    try:
        with open(p) as f:
            mid = f.read().strip()
        if re.fullmatch(r"[0-9a-f]{32}", mid):
            return mid
    except FileNotFoundError:
        pass
    mid = uuid.uuid4().hex
    tmp = f"{p}.tmp-{mid[:8]}"
    with open(tmp, "w") as f:
        f.write(mid + "\n")
    try:
        os.link(tmp, p)  # first one wins when processes start together
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(p) as f:
        return f.read().strip()


def _boot_id() -> str:
    """This kernel's boot and pid namespace: where a pid names one process (containers sharing a
    kernel have pid namespaces of their own)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def _holder(machine: str, label: str) -> str:
    pid = os.getpid()
    return json.dumps({"host": socket.gethostname(), "machine": machine, "label": label, "boot": _boot_id(),
                       "pid": pid, "start": _start_time(pid), "n": uuid.uuid4().hex[:8]}, sort_keys=True)


def _dead(holder: str | None) -> bool:
    """Whether a lease holder is a process of this very kernel that no longer exists."""
    if not holder:
        return False
    try:
        h = json.loads(holder)
    except ValueError:
        return False
    if not isinstance(h, dict) or not h.get("boot") or h.get("boot") != _boot_id():
        return False
    return _start_time(int(h.get("pid", 0))) != h.get("start")


def _who(holder: str | None) -> str:
    try:
        h = json.loads(holder or "")
        return f"pid {h['pid']} on {h['label']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


# -- gc coordination ---------------------------------------------------------------------------

class PgGc:
    """The gc rule across machines: leases in the metadata store (see the module docstring)."""

    def __init__(self, meta, objects, machine: str, label: str, lease: float | None = None):
        if lease is None:  # seconds a writer's or gc's lease lasts unrenewed
            lease = float(os.environ.get("ARTFS_GC_LEASE", "60"))
        self.meta = meta
        self.objects = objects
        self.machine = machine
        self.label = label
        self.lease = lease
        self._held: dict[str, str] = {}  # lease id -> holder (this process's writers)
        self._gc_holder: str | None = None
        self._lock = threading.Lock()
        self._tl = threading.local()
        self._beat: threading.Thread | None = None
        self._beat_pid = 0
        self._wake = threading.Event()
        # weak: no reference cycle keeps a closed store's connections and clients alive
        fence, check = weakref.WeakMethod(self._fence_ids), weakref.WeakMethod(self._check_gc)
        meta.fence = lambda: (fence() or list)()
        objects.before_delete = lambda: (check() or (lambda: None))()

    def _fence_ids(self) -> list[str]:
        with self._lock:
            return list(self._held)

    # -- heartbeat -----------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._beat is not None and self._beat_pid == os.getpid() and self._beat.is_alive():
                return
            self._beat = threading.Thread(target=self._heartbeat, name="artfs-gc-lease", daemon=True)
            self._beat_pid = os.getpid()
            self._beat.start()

    def _heartbeat(self) -> None:
        """Renew this process's leases until it holds none (then the thread ends)."""
        try:
            while True:
                self._wake.wait(self.lease / 4)
                self._wake.clear()
                with self._lock:
                    ids = list(self._held)
                    gc_holder = self._gc_holder
                    if not ids and gc_holder is None:
                        self._beat = None
                        return
                try:
                    if ids:
                        self.meta.gc_writers_renew(ids, self.lease)
                    if gc_holder is not None:
                        self.meta.gc_renew(gc_holder, self.lease)
                except Exception:
                    pass  # the metadata store is away: fencing keeps a stale lease from recording anything
        finally:
            self.meta.close()  # this thread's connection

    # -- writers -------------------------------------------------------------------------
    @contextmanager
    def writing(self):
        depth = getattr(self._tl, "depth", 0)
        if depth:
            self._tl.depth = depth + 1
            try:
                yield
            finally:
                self._tl.depth -= 1
            return
        lease_id = uuid.uuid4().hex
        holder = _holder(self.machine, self.label)
        delay = 0.01
        while True:
            gc = self.meta.gc_writer_enter(lease_id, holder, self.lease)
            if gc is None:
                break
            if _dead(gc["holder"]):
                self.meta.gc_end(gc["holder"])  # a gc of this machine that died: its lease goes now
                continue
            time.sleep(delay)  # another machine's gc: the metadata store is the only place to look
            delay = min(delay * 2, 0.5)
        with self._lock:
            self._held[lease_id] = holder
        self._ensure_heartbeat()
        self._tl.depth = 1
        try:
            yield
        finally:
            self._tl.depth = 0
            with self._lock:
                self._held.pop(lease_id, None)
                if not self._held and self._gc_holder is None:
                    self._wake.set()  # the heartbeat has nothing left to renew: it ends now
            try:
                self.meta.gc_writer_exit(lease_id)
            except Exception:
                pass  # unreachable: the lease expires on its own

    # -- gc --------------------------------------------------------------------------------
    @contextmanager
    def collecting(self):
        holder = _holder(self.machine, self.label)
        delay = 0.01
        while True:
            st = self.meta.gc_state()
            dead = st["holder"] if st["holder"] and _dead(st["holder"]) else None
            if self.meta.gc_begin(holder, self.lease, dead_holder=dead):
                break
            time.sleep(delay)  # another gc runs (on some machine): wait for its lease to end
            delay = min(delay * 2, 0.5)
        with self._lock:
            self._gc_holder = holder
        self._ensure_heartbeat()
        try:
            delay = 0.01
            while True:
                rows = self.meta.gc_writers()
                gone = [r["id"] for r in rows if not r["live"] or _dead(r["holder"])]
                self.meta.gc_reap(gone)
                if len(gone) == len(rows):
                    break
                time.sleep(delay)  # writers on other machines are finishing; no event reaches us
                delay = min(delay * 2, 0.25)
            self._check_gc()
            yield
        finally:
            with self._lock:
                self._gc_holder = None
                if not self._held:
                    self._wake.set()
            try:
                self.meta.gc_end(holder)
            except Exception:
                pass  # it expires

    def _check_gc(self) -> None:
        """Before gc deletes anything: it still holds the store (else writers may be running)."""
        with self._lock:
            holder = self._gc_holder
        if holder is None:
            return
        if not self.meta.gc_renew(holder, self.lease):
            raise Conflict("gc lost its lease on the store (it stalled for longer than the lease); "
                           "it stopped without deleting more: run it again")


class DraftClaim:
    """A draft held by this process across machines: a PostgreSQL session advisory lock, given
    back explicitly (a closed connection's lock lingers until its server process notices)."""

    def __init__(self, store: "ScaleoutStore", conn, key: tuple[int, int]):
        self.store = store
        self.conn = conn
        self.key = key

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", self.key)
        except Exception:
            try:
                conn.close()  # the session's locks go with it
            except Exception:
                pass
            return
        self.store._lock_conn_done(conn)


class ScaleoutStore(Store):
    kind = "scaleout"

    def __init__(self, path: str, desc: dict, objects, meta, state_dir: str, gc, machine: str, label: str):
        super().__init__(path, objects, meta, state_dir, gc)
        self.description = desc
        self.store_id = desc["id"]
        self.machine_id = machine
        self.machine_label = label
        self._lock_conns: list = []
        self._lock_conns_pid = os.getpid()
        self._lock_conns_lock = threading.Lock()

    # -- drafts across machines ----------------------------------------------------------------
    def draft_here(self, row: dict) -> bool:
        """Whether a draft's scratch files (if any) live on this machine."""
        return row.get("machine") in (None, self.machine_id)

    def _lock_conn(self):
        """An autocommit connection for advisory locks (reused: connecting costs more than locking)."""
        import psycopg

        with self._lock_conns_lock:
            if self._lock_conns_pid != os.getpid():
                self._lock_conns, self._lock_conns_pid = [], os.getpid()  # a forked child's are not its own
            while self._lock_conns:
                conn = self._lock_conns.pop()
                if not conn.closed:
                    return conn
        try:
            return psycopg.connect(self.meta.dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            from .pg_meta import MetaUnavailable, _one_line

            raise MetaUnavailable(f"cannot reach {self.meta._where()}: {_one_line(exc)}") from None

    def _lock_conn_done(self, conn) -> None:
        with self._lock_conns_lock:
            if self._lock_conns_pid == os.getpid() and len(self._lock_conns) < 4:
                self._lock_conns.append(conn)
                return
        conn.close()

    def claim_draft(self, draft, what: str):
        """Hold ``draft`` for this process (called by ``repo.lock_draft`` after its local flock):
        refused while another machine uses it or keeps its changed files."""
        meta = self.meta
        conn = self._lock_conn()
        key = (_hash32(f"artfs-draft:{meta.schema}"), int(draft.id) & 0x7FFFFFFF)
        claim = DraftClaim(self, conn, key)
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0]:
                claim.conn = None
                self._lock_conn_done(conn)
                raise Conflict(f"{what} is in use on another machine")
            row = meta.draft_by_id(draft.id)
            if row is not None and not self.draft_here(row):
                if draft.referenced_scratch():
                    raise Conflict(f"{what} keeps its changed files on another machine "
                                   f"({row.get('machine_label') or row.get('machine')}): mount, commit or discard it "
                                   "there")
                if not meta.claim_draft(draft.id, self.machine_id, self.machine_label, row.get("machine")):
                    raise Conflict(f"{what} was taken by another machine meanwhile")
            return claim
        except BaseException:
            claim.release()
            raise


def _hash32(text: str) -> int:
    """A stable signed 32-bit key (advisory locks take two int4)."""
    import zlib

    v = zlib.crc32(text.encode())
    return v - (1 << 32) if v >= 1 << 31 else v


def _cache_limit(desc: dict) -> int:
    """This machine's cache bound: $ARTFS_CACHE_SIZE, else the description's ``cache_size`` (bytes,
    or a size as --cache-size takes it: "20G")."""
    env = os.environ.get("ARTFS_CACHE_SIZE")
    if env:
        try:
            return parse_size(env)
        except ValueError as exc:
            raise BadInput(f"ARTFS_CACHE_SIZE: {exc}") from None
    v = desc.get("cache_size")
    if v is None:
        return DEFAULT_LIMIT
    try:
        if isinstance(v, str):
            return parse_size(v)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    except ValueError:
        pass
    raise BadInput(f"the store description's cache_size is {json.dumps(v)[:40]}: expected a number of bytes "
                   "or a size such as \"20G\"")


def _clients() -> None:
    missing = []
    for mod, pkg in (("psycopg", "psycopg[binary]"), ("obstore", "obstore")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise BadInput(f"a scale-out store needs {' and '.join(missing)}: pip install 'artfs[scaleout]'")


def _parts(path: str, desc: dict, dsn: str | None = None):
    _clients()
    from .pg_meta import PgMeta
    from .s3_objects import S3ObjectStore

    sid = desc["id"]
    state_dir = os.path.join(state_root(), sid)
    private_dir(os.path.dirname(state_dir))
    private_dir(state_dir)
    machine = _machine_id(state_dir)
    label = f"{socket.gethostname()} ({machine[:8]})"
    dsn = dsn or os.environ.get("ARTFS_META_DSN") or desc["meta"]
    meta = PgMeta(dsn, machine=machine, machine_label=label)
    bucket, prefix = parse_s3_url(desc["objects"])
    private_dir(cache_root())
    cache = ObjectCache(os.path.join(cache_root(), sid), _cache_limit(desc))
    endpoint = desc.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    objects = S3ObjectStore(bucket, prefix, endpoint=endpoint, region=desc.get("region"), cache=cache)
    gc = PgGc(meta, objects, machine, label)
    return ScaleoutStore(path, desc, objects, meta, state_dir, gc, machine, label)


def open_scaleout(path: str) -> ScaleoutStore:
    path = os.path.abspath(path)
    desc = load_description(path)
    s = _parts(path, desc)
    s.meta.check_schema()
    have = s.meta.store_id()
    if have != desc["id"]:
        raise StoreMissing(f"{path} describes store {desc['id']}, but its metadata store holds "
                           f"{have or 'no store'}; was the database replaced?")
    _check_objects_location(s.meta, desc["objects"], path)
    s.ensure_state()
    return s


def _check_objects_location(meta, objects_url: str, path: str) -> None:
    """One store keeps its objects in one place: the metadata store records it (the first time:
    init, or the first open of a store made before it was recorded) and refuses another, which
    would upload into another store's prefix (whose gc deletes them) or miss every object."""
    kept = meta.claim_info("objects", objects_url)
    if kept != objects_url:
        raise BadInput(f"{path} names objects at {objects_url}, but this store keeps its objects at {kept} "
                       "(another store's, or a typo?): fix the description's \"objects\"")


def init_scaleout(path: str, meta_dsn: str, objects_url: str, endpoint: str | None = None,
                  region: str | None = None, cache_size: int | None = None) -> ScaleoutStore:
    """Create (idempotently) a scale-out store and write its description at ``path``."""
    _clients()
    from .pg_meta import PgMeta, redact

    path = os.path.abspath(path)
    if not meta_dsn.startswith(("postgresql://", "postgres://")):
        raise BadInput(f"bad --meta {redact(meta_dsn)!r}: expected postgresql://[user@]host[:port]/database")
    bucket, prefix = parse_s3_url(objects_url)
    if os.path.isdir(path):
        raise BadInput(f"{path} is a directory (a local store, or something else); a scale-out store is "
                       "described by a file: give a new file name")
    if os.path.exists(path):
        old = load_description(path)
        if (old["meta"], old["objects"], old.get("endpoint")) != (redact(meta_dsn), objects_url, endpoint):
            raise BadInput(f"{path} already describes another store ({old['meta']}, {old['objects']})")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise BadInput(f"no directory {parent} for the store description")
    probe = PgMeta(meta_dsn)
    probe.create()
    probe.check_schema()
    sid = probe.store_id()
    kept = probe.info("objects")
    probe.close()
    if kept is not None and kept != objects_url:
        raise BadInput(f"this metadata store already keeps its objects at {kept}, not {objects_url}: "
                       "one store has one place for its objects")
    desc = {"format": DESC_FORMAT, "id": sid, "meta": redact(meta_dsn), "objects": objects_url,
            "endpoint": endpoint, "region": region,
            "cache_size": int(cache_size) if cache_size is not None else DEFAULT_LIMIT}
    if os.path.exists(path):
        old = load_description(path)
        if cache_size is None:
            desc["cache_size"] = old.get("cache_size", DEFAULT_LIMIT)
    s = _parts(path, desc, dsn=meta_dsn)  # this process may use the credentials it was given
    mine = json.dumps({"format": DESC_FORMAT, "id": sid}).encode()
    marker = s.objects.create_marker(mine)
    if marker is not None:
        try:
            other = json.loads(marker).get("id")
        except (ValueError, AttributeError):
            other = None
        if other != sid:
            raise BadInput(f"{objects_url} already holds another artfs store ({other or 'unknown'}); "
                           "give another prefix")
    _check_objects_location(s.meta, objects_url, path)  # the prefix is this store's: recorded now
    with s.writing(), s.objects.batch() as b:  # gc's rule holds for this object too
        b.put_bytes(fmt.EMPTY_TREE)
    _write_description(path, desc)
    s.ensure_state()
    return s
