"""Drafts: the persistent, mutable state of a version being prepared.

A draft is its parent's root tree plus an overlay, kept in the metadata store
so that unmounting, a crash or a reboot loses nothing:

* A *materialized directory* (``dir_id``, which is also its inode number; the
  root is 1) has a base tree (or none, for a new directory) and overlay rows
  ``name -> record`` that add, replace or white out (record None) names of the
  base.  A directory never changed below stays a reference to its tree digest
  and is materialized the first time something inside it changes: O(depth).
* A changed file's bytes live in a *scratch file* ``STORE/drafts/<uuid>/<name>``
  until commit; an unchanged file is just its digest.  Scratch files and
  objects never share an inode: commit copies (DESIGN.md §5, invariant 1).
* Hard links: every name of a linked inode is a *link record* pointing at an
  inode record (``draft_inodes``) that holds the content and metadata and the
  link count.  A parent version's hard-link groups are adopted (turned into
  inode records, their directories materialized) before the first change.
* Inode numbers are stable for the draft's life: a name's number is pinned
  (``draft_pins``) when it is created, moved or linked; a name never touched
  derives its number from its directory's number and its name.  Numbers
  survive commits, remounts and the kernel forgetting them.

Every mutation is planned against the current state (nothing changes yet),
then persisted as one metadata transaction, then applied in memory, in that
order (:class:`Change`): if the transaction fails -- a full disk, a lock
timeout -- the draft on disk, in the database and in memory is exactly as
before (DESIGN.md §5, invariant 4).  Scratch files a change replaced are
deleted only after the change is durable (:meth:`Draft.flush_dead`).

Concurrency: planning and applying belong to one thread (the FUSE loop, or
the API caller); persisting may run in a worker thread meanwhile, while other
requests read the unchanged state.  One mutation at a time (the FUSE layer
holds a lock from plan to apply).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..errors import BadInput, Corrupt, Exists, IsADirectory, NotADirectory, NotEmpty, NotFound, NotPermitted
from ..names import quote
from ..storage import format as fmt
from ..storage.format import DIR, FILE, REF, SYMLINK, Entry
from ..storage.hashing import copy_fd, digest as blake, hash_fd, write_sparse
from ..storage.meta import Busy

ROOT_INO = 1
FIRST_INO = 16
DERIVED = 1 << 62  # numbers at or above this are derived from (directory, name); below, allocated
_DEL = object()  # an overlay row removed: the base's entry (if any) shows again
CONTROL_DIR = b".artfs"


def derived_ino(parent: int, name: bytes) -> int:
    h = int.from_bytes(blake(parent.to_bytes(8, "little") + name)[:8], "little")
    return DERIVED | (h & (DERIVED - 1))


class ScratchFile:
    """An open scratch file (the FUSE layer reads and writes a changed file through it).

    Use counting keeps the descriptor alive while a worker thread uses it even if the
    handle that owns it is released meanwhile."""

    __slots__ = ("fd", "name", "users", "closing")

    def __init__(self, fd: int, name: str | None):
        self.fd = fd
        self.name = name
        self.users = 0
        self.closing = False

    def _use(self):
        if self.fd < 0:
            raise OSError(errno.EBADF, "scratch file closed")
        self.users += 1

    def _done(self):
        self.users -= 1
        if self.closing and self.users == 0:
            self._close_now()

    def pread(self, off: int, n: int) -> bytes:
        self._use()
        try:
            return os.pread(self.fd, n, off)
        finally:
            self._done()

    def pwrite(self, buf, off: int) -> int:
        self._use()
        try:
            return os.pwrite(self.fd, buf, off)
        finally:
            self._done()

    def truncate(self, size: int) -> None:
        self._use()
        try:
            os.ftruncate(self.fd, size)
        finally:
            self._done()

    def fsync(self) -> None:
        self._use()
        try:
            os.fsync(self.fd)
        finally:
            self._done()

    def fstat(self) -> os.stat_result:
        self._use()
        try:
            return os.fstat(self.fd)
        finally:
            self._done()

    def set_times(self, atime_ns: int, mtime_ns: int) -> None:
        self._use()
        try:
            os.utime(self.fd, ns=(atime_ns, mtime_ns))
        finally:
            self._done()

    def close(self) -> None:
        self.closing = True
        if self.users == 0:
            self._close_now()

    def _close_now(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PinMap:
    """The draft's pinned inode numbers, ``(dir_id, name) -> ino`` as a mapping, held as one
    dict per directory: a tuple key per pin would cost 64 bytes more, and a draft keeps a pin
    for every name it created (100k after a ``cp -r`` of 100k files), for its whole life."""

    __slots__ = ("by_dir", "n")

    def __init__(self, pairs=()):
        self.by_dir: dict[int, dict[bytes, int]] = {}
        self.n = 0
        for key, ino in pairs:
            self[key] = ino

    def get(self, key: tuple[int, bytes], default=None):
        names = self.by_dir.get(key[0])
        return default if names is None else names.get(key[1], default)

    def __getitem__(self, key: tuple[int, bytes]) -> int:
        return self.by_dir[key[0]][key[1]]

    def __contains__(self, key) -> bool:
        names = self.by_dir.get(key[0])
        return names is not None and key[1] in names

    def __setitem__(self, key: tuple[int, bytes], ino: int) -> None:
        names = self.by_dir.get(key[0])
        if names is None:
            names = self.by_dir[key[0]] = {}
        if key[1] not in names:
            self.n += 1
        names[key[1]] = ino

    def pop(self, key: tuple[int, bytes], default=None):
        names = self.by_dir.get(key[0])
        if names is None or key[1] not in names:
            return default
        self.n -= 1
        ino = names.pop(key[1])
        if not names:
            del self.by_dir[key[0]]
        return ino

    def __len__(self) -> int:
        return self.n

    def keys(self):
        return ((d, name) for d, names in self.by_dir.items() for name in names)

    def items(self):
        return (((d, name), ino) for d, names in self.by_dir.items() for name, ino in names.items())


class Change:
    """One planned mutation: what to write, what to change in memory, and its result."""

    def __init__(self, draft: "Draft"):
        self.d = draft
        self.ov: dict[tuple[int, bytes], object] = {}  # (dir, name) -> Entry | None (whiteout) | _DEL
        self.dirs: dict[int, bytes | None] = {}  # newly materialized/created dirs -> base
        self.deldirs: set[int] = set()
        self.inodes: dict[int, Entry | None] = {}
        self.pins: dict[tuple[int, bytes], int | None] = {}
        self.root: Entry | None = None
        self.next_ino = draft.next_ino
        self.dead: list[str] = []  # scratch files to delete once this change is durable
        self.new_scratch: list[str] = []  # scratch files made for this change (removed if it fails)
        self.adopted = False
        self.result = None
        self.now = time.time_ns()

    # -- reads through the change ------------------------------------------------------
    def base(self, dir_id: int):
        return self.dirs[dir_id] if dir_id in self.dirs else self.d.bases[dir_id]

    def ov_get(self, dir_id: int, name: bytes):
        """(present, record): an overlay row as this change would leave it."""
        key = (dir_id, name)
        if key in self.ov:
            v = self.ov[key]
            return (False, None) if v is _DEL else (True, v)
        if dir_id in self.dirs:
            return False, None
        ov = self.d.overlay.get(dir_id)
        if ov is not None and name in ov:
            return True, ov[name]
        return False, None

    def inode(self, ino: int) -> Entry:
        if ino in self.inodes:
            e = self.inodes[ino]
            if e is None:
                raise Corrupt(f"draft inode {ino} is gone")
            return e
        try:
            return self.d.inodes[ino]
        except KeyError:
            raise Corrupt(f"draft names inode {ino}, which has no record") from None

    def pin(self, dir_id: int, name: bytes) -> int | None:
        key = (dir_id, name)
        if key in self.pins:
            return self.pins[key]
        return self.d.pins.get(key)

    def root_entry(self) -> Entry:
        return self.root if self.root is not None else self.d.root

    def alloc(self) -> int:
        n = self.next_ino
        self.next_ino += 1
        return n

    # -- persisting and applying ---------------------------------------------------------
    def size(self) -> int:
        """About how many rows :meth:`ops` writes."""
        return len(self.deldirs) + len(self.dirs) + len(self.ov) + len(self.inodes) + len(self.pins) + 1

    def ops(self) -> list:
        ops: list = [("deldir", x) for x in self.deldirs]
        ops += [("dir", x, b.hex() if b else None) for x, b in self.dirs.items() if x not in self.deldirs]
        for (x, name), v in self.ov.items():
            if x in self.deldirs:
                continue
            ops.append(("ent", x, name, None if v is _DEL else fmt.encode_rec(v)))
        ops += [("ino", i, None if e is None else fmt.encode_rec(e)) for i, e in self.inodes.items()]
        ops += [("pin", x, name, ino) for (x, name), ino in self.pins.items()]
        if self.root is not None:
            ops.append(("ent", 0, b"", fmt.encode_rec(self.root)))
        return ops


INLINE_MAX = 64  # rows of a change Draft.try_persist_now writes on the calling thread at most


class Draft:
    """A draft of ``artifact`` on top of version ``parent`` (None: empty)."""

    def __init__(self, store, row: dict):
        self.store = store
        self.meta = store.meta
        self.id: int = row["id"]
        self.key: str = row["key"]
        self.artifact: str = row["artifact"]
        self.type: str = row["type"]
        self.created = row["created"]
        self.scratch_uuid: str = row["scratch"]
        self.scratch_dir = store.scratch_dir(self.scratch_uuid)
        self.dead: list[str] = []
        self._digests: dict[str, tuple] = {}  # scratch -> (size, mtime, ctime, digest, chunks-list)
        self._nsub: dict = {}  # subdirectory counts of trees / materialized dirs
        self._load(row)

    # -- state ---------------------------------------------------------------------
    def _load(self, row: dict) -> None:
        self.install(self._decode(row, self.meta.draft_state(self.id)))

    def _decode(self, row: dict, st: dict) -> dict:
        """The in-memory state of a draft from its rows (decoded, checked; nothing installed)."""
        out = {"parent": row["parent"],
               "base_root": bytes.fromhex(row["base_root"]) if row["base_root"] else None,
               "base_links": bytes.fromhex(row["base_links"]) if row.get("base_links") else None,
               "links_adopted": bool(row.get("links_adopted", 1)), "outcome": row["outcome"],
               "next_ino": row["next_ino"]}
        try:
            bases = {d: (bytes.fromhex(b) if b else None) for d, b in st["dirs"].items()}
        except ValueError as exc:
            raise Corrupt(f"damaged draft {self.key}: {exc}") from None
        overlay: dict[int, dict[bytes, Entry | None]] = {d: {} for d in bases}
        root = Entry(b"", DIR, 0o755, os.getuid(), os.getgid(), 0, int(self.created * 1e9),
                     int(self.created * 1e9), dir_id=ROOT_INO, ctime_ns=int(self.created * 1e9))
        for dir_id, name, rec in st["entries"]:
            e = fmt.decode_rec(rec, name)
            if dir_id == 0:
                if e is None or e.kind != DIR:
                    raise Corrupt(f"damaged draft {self.key}: bad root record")
                root = e.with_(dir_id=ROOT_INO, digest=None)
            else:
                overlay.setdefault(dir_id, {})[name] = e
        if ROOT_INO not in bases:
            raise Corrupt(f"damaged draft {self.key}: no root directory")
        out.update(bases=bases, overlay=overlay, root=root,
                   inodes={ino: fmt.decode_rec(rec) for ino, rec in st["inodes"].items()},
                   pins=self.pins if st["pins"] is None else PinMap(st["pins"].items()))
        return out

    def fetch(self, keep_pins: bool = False) -> dict:
        """Read the draft's state from the metadata store (a worker thread may do this).
        ``keep_pins``: the inode numbers in memory are the store's (nothing changed them since
        they were read: a commit or finish keeps them), so they are not read again -- at a
        100k-name draft, most of what a commit after one edit cost."""
        row = self.meta.draft_by_id(self.id)
        if row is None:
            raise NotFound(f"draft {self.key} was discarded")
        return self._decode(row, self.meta.draft_state(self.id, pins=not keep_pins))

    def install(self, state: dict) -> None:
        """Make memory what ``fetch`` read (the owner's thread: readers never see half of it)."""
        self.parent: int | None = state["parent"]
        self.base_root: bytes | None = state["base_root"]
        self.base_links: bytes | None = state["base_links"]
        self.links_adopted: bool = state["links_adopted"]
        self.outcome: str = state["outcome"]
        self.next_ino: int = state["next_ino"]
        self.bases = state["bases"]
        self.overlay = state["overlay"]
        self.root = state["root"]
        self.inodes = state["inodes"]
        self.pins = state["pins"]
        self._nsub = {}

    @classmethod
    def open(cls, store, key: str, artifact: str, type_: str, parent, root_rec: bytes | None = None) -> "Draft":
        """Create the draft ``key`` unless it exists.  ``parent``: a VersionInfo or None."""
        if root_rec is None:
            from .commit import root_record

            now = time.time_ns()
            root_rec = root_record(parent.root_entry() if parent is not None else
                                   Entry(b"", DIR, 0o755, os.getuid(), os.getgid(), 0, now, now))
        row = store.meta.create_draft(key, artifact, type_, parent.num if parent else None,
                                      parent.root.hex() if parent else None, root_rec,
                                      parent.links.hex() if parent is not None and parent.links else None)
        return cls(store, row)

    def reload(self) -> None:
        self.install(self.fetch())

    # -- scratch files -----------------------------------------------------------------
    def scratch_path(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise Corrupt(f"bad scratch name {name!r}")
        return os.path.join(self.scratch_dir, name)

    @staticmethod
    def scratch_name() -> str:
        return uuid.uuid4().hex

    def new_scratch(self, name: str | None = None, made: bool = False) -> tuple[str, ScratchFile]:
        """A new empty scratch file (O_EXCL), open read-write.  ``made``: ``name`` is an empty
        scratch file made ahead (:meth:`make_empty_scratch`): open it and stamp its times now,
        as a file created now has them (or create it after all, should it be gone)."""
        name = name or self.scratch_name()
        path = self.scratch_path(name)
        if made:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            else:
                try:
                    os.utime(fd)
                except BaseException:
                    os.close(fd)
                    raise
                return name, ScratchFile(fd, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return name, ScratchFile(fd, name)

    def make_empty_scratch(self, n: int) -> list[str]:
        """Make ``n`` empty scratch files ahead of need and return their names (worker thread).
        Nothing references them: if the owner dies, the next owner's
        :meth:`prepare_for_writing` (or gc) removes them like any other unreferenced scratch file."""
        os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
        names = []
        for _ in range(n):
            name = self.scratch_name()
            try:
                os.close(os.open(self.scratch_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except OSError:
                if not names:
                    raise
                break  # a full disk, say: keep (and hand over) what was made
            names.append(name)
        return names

    def anon_scratch(self) -> ScratchFile:
        """A scratch file with no name (for a file unlinked while open): gone when closed."""
        os.makedirs(self.scratch_dir, mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.scratch_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError:
            name, sf = self.new_scratch()
            os.unlink(self.scratch_path(name))
            return ScratchFile(sf.fd, None)
        return ScratchFile(fd, None)

    def open_scratch(self, name: str) -> ScratchFile:
        return ScratchFile(os.open(self.scratch_path(name), os.O_RDWR | os.O_CLOEXEC), name)

    def drop_scratch_now(self, name: str) -> None:
        try:
            os.unlink(self.scratch_path(name))
        except FileNotFoundError:
            pass
        self._digests.pop(name, None)

    def sync_scratch_dir(self) -> None:
        """Make the names of new scratch files durable (a program's fsync of a new file): the
        draft's scratch directory, and that directory's own name in drafts/."""
        for d in (self.scratch_dir, os.path.dirname(self.scratch_dir)):
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def flush_dead(self) -> int:
        """Delete scratch files that durable changes replaced (call after ``meta.durable()``)."""
        dead, self.dead = self.dead, []
        for name in dead:
            self.drop_scratch_now(name)
        return len(dead)

    def scratch_stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(self.scratch_path(name))
        except FileNotFoundError:
            return None

    def referenced_scratch(self) -> set[str]:
        out = {e.scratch for ov in self.overlay.values() for e in ov.values() if e is not None and e.scratch}
        out |= {e.scratch for e in self.inodes.values() if e.scratch}
        return out

    def unreferenced_scratch(self) -> list[str]:
        try:
            names = os.listdir(self.scratch_dir)
        except FileNotFoundError:
            return []
        used = self.referenced_scratch()
        return sorted(n for n in names if n not in used)

    def prepare_for_writing(self) -> None:
        """Called by the draft's owner (a mount, holding its lock): remove scratch files a
        crash left unreferenced, adopt the parent's hard-link groups."""
        for name in self.unreferenced_scratch():
            self.drop_scratch_now(name)
        if not self.links_adopted:
            self.commit(self.plan_noop())

    # -- reading -------------------------------------------------------------------
    def _raw(self, ch: Change | None, d: Entry, name: bytes) -> Entry | None:
        """The record of ``name`` in directory ``d`` (a link record is not resolved)."""
        if d.dir_id is not None:
            if ch is not None:
                present, rec = ch.ov_get(d.dir_id, name)
                base = ch.base(d.dir_id)
            else:
                ov = self.overlay.get(d.dir_id)
                present = ov is not None and name in ov
                rec = ov[name] if present else None
                base = self.bases[d.dir_id]
            if present:
                return rec
        else:
            base = d.digest
        if base is None:
            return None
        return self.store.tree_map(base).get(name)

    def _resolve(self, ch: Change | None, name: bytes, rec: Entry | None) -> Entry | None:
        if rec is None or rec.link is None:
            return rec if rec is None or rec.name == name else rec.with_(name=name)
        inode = ch.inode(rec.link) if ch is not None else self.inodes.get(rec.link)
        if inode is None:
            raise Corrupt(f"draft {self.key} names inode {rec.link}, which has no record")
        return inode.with_(name=name, link=rec.link)

    def child(self, d: Entry, name: bytes, ch: Change | None = None) -> Entry | None:
        if d.kind != DIR:
            raise NotADirectory("not a directory")
        return self._resolve(ch, name, self._raw(ch, d, name))

    def lookup(self, path: tuple) -> Entry | None:
        d = self.root
        for comp in path:
            if d.kind != DIR:
                return None
            d = self.child(d, comp)
            if d is None:
                return None
        return d

    def children(self, d: Entry) -> dict[bytes, Entry]:
        """All names of a directory (base merged with overlay, links resolved)."""
        if d.kind != DIR:
            raise NotADirectory("not a directory")
        base = self.bases[d.dir_id] if d.dir_id is not None else d.digest
        out = dict(self.store.tree_map(base)) if base is not None else {}
        if d.dir_id is not None:
            for name, e in self.overlay.get(d.dir_id, {}).items():
                if e is None:
                    out.pop(name, None)
                else:
                    out[name] = self._resolve(None, name, e)
        return out

    def listdir(self, path: tuple) -> list[tuple[bytes, Entry]]:
        d = self.lookup(path)
        if d is None:
            raise NotFound(f"no such directory: {quote(b'/'.join(path))}")
        return sorted(self.children(d).items())

    def ino_of(self, parent_ino: int, name: bytes, e: Entry, ch: Change | None = None) -> int:
        """The stable inode number of ``name`` (entry ``e``) in directory ``parent_ino``."""
        if e.link is not None:
            return e.link
        if e.dir_id is not None:
            return e.dir_id
        pin = ch.pin(parent_ino, name) if ch is not None else self.pins.get((parent_ino, name))
        return pin if pin is not None else derived_ino(parent_ino, name)

    def subdirs(self, d: Entry) -> int:
        """Number of subdirectories (a directory's st_nlink is 2 + this), O(changes)."""
        def of_tree(t):
            if t is None:
                return 0
            n = self._nsub.get(t)
            if n is None:
                n = self._nsub[t] = sum(1 for e in self.store.tree(t) if e.kind == DIR)
            return n

        if d.dir_id is None:
            return of_tree(d.digest)
        hit = self._nsub.get(d.dir_id)  # kept per changed directory until a change touches it
        if hit is not None:
            return hit
        base = self.bases.get(d.dir_id)
        n = of_tree(base)
        ov = self.overlay.get(d.dir_id)
        if ov:
            bm = self.store.tree_map(base) if base is not None else {}
            for name, e in ov.items():
                was = bm.get(name)
                n += (e is not None and e.kind == DIR) - (was is not None and was.kind == DIR)
        self._nsub[d.dir_id] = n
        return n

    # -- walking with materialization (inside a change) ---------------------------------------
    def _walk(self, ch: Change, path: tuple, materialize: bool) -> tuple[int, Entry]:
        """(inode number, entry) of the directory at ``path``, materializing it and its
        ancestors when asked.  NotFound / NotADirectory otherwise."""
        cur = ch.root_entry()
        ino = ROOT_INO
        for i, comp in enumerate(path):
            e = self.child(cur, comp, ch)
            if e is None:
                raise NotFound(f"no such directory: {quote(b'/'.join(path[:i + 1]))}")
            if e.kind != DIR:
                raise NotADirectory(f"not a directory: {quote(b'/'.join(path[:i + 1]))}")
            ino_c = self.ino_of(ino, comp, e, ch)
            if materialize and e.dir_id is None:
                ch.dirs[ino_c] = e.digest
                e = e.with_(dir_id=ino_c, digest=None, ident=None, nfiles=0)
                self._set(ch, cur.dir_id, comp, e)
            cur, ino = e, ino_c
        return ino, cur

    def _set(self, ch: Change, dir_id: int, name: bytes, e: Entry | None) -> None:
        """Overlay ``name`` in a materialized dir with ``e`` (None removes it)."""
        base = ch.base(dir_id)
        in_base = base is not None and name in self.store.tree_map(base)
        if e is None and not in_base:
            ch.ov[(dir_id, name)] = _DEL
        else:
            ch.ov[(dir_id, name)] = e if e is None else e.with_(name=name)

    def _update(self, ch: Change, dir_id: int, name: bytes, e: Entry) -> None:
        """Write back a changed entry: a link's inode record, else the name's record."""
        if e.link is not None:
            ch.inodes[e.link] = e.with_(name=b"", link=None)
        else:
            self._set(ch, dir_id, name, e)

    def _touch_dir(self, ch: Change, path: tuple) -> None:
        """A directory whose entries changed: mtime and ctime now (POSIX), the root too."""
        now = ch.now
        if not path:
            ch.root = ch.root_entry().with_(mtime_ns=now, ctime_ns=now)
            return
        pino, parent = self._walk(ch, path[:-1], True)
        e = self.child(parent, path[-1], ch)
        if e is not None:
            self._set(ch, parent.dir_id, path[-1], e.with_(mtime_ns=now, ctime_ns=now))

    def _forget(self, ch: Change, e: Entry | None) -> None:
        """Drop what only ``e`` referenced: a link's share of its inode, materialized dirs and
        scratch files below it (deleted once the change is durable)."""
        stack = [e]
        while stack:
            x = stack.pop()
            if x is None:
                continue
            if x.link is not None:
                inode = ch.inode(x.link)
                if inode.nlink > 1:
                    ch.inodes[x.link] = inode.with_(nlink=inode.nlink - 1, ctime_ns=ch.now)
                    continue
                ch.inodes[x.link] = None
                x = inode
            if x.scratch is not None:
                ch.dead.append(x.scratch)
            if x.dir_id is not None:
                stack.extend(self._ov_items(ch, x.dir_id).values())
                ch.deldirs.add(x.dir_id)

    def _ov_items(self, ch: Change, dir_id: int) -> dict[bytes, Entry]:
        """The records of a materialized directory as ``ch`` would leave them (no whiteouts)."""
        out = {} if dir_id in ch.dirs else {n: e for n, e in self.overlay.get(dir_id, {}).items() if e is not None}
        for (dx, name), v in ch.ov.items():
            if dx == dir_id:
                if v is _DEL or v is None:
                    out.pop(name, None)
                else:
                    out[name] = v
        return {n: (e if e.name == n else e.with_(name=n)) for n, e in out.items()}

    @staticmethod
    def _split(path: tuple) -> tuple[tuple, bytes]:
        if not path:
            raise BadInput("the root cannot be changed this way")
        for comp in path:
            fmt.check_name(comp)
        if path == (CONTROL_DIR,):
            raise NotPermitted(".artfs is reserved")
        return path[:-1], path[-1]

    def _new_change(self) -> Change:
        ch = Change(self)
        if not self.links_adopted:
            self._adopt_links(ch)
        return ch

    def _adopt_links(self, ch: Change) -> None:
        """Turn the parent version's hard-link groups into inode records (before anything can
        move the paths the link table names)."""
        from .versions import link_table

        used: set[int] = set()
        for hlid, paths in sorted(link_table(self.store, self.base_links).items()):
            members = []
            for p in paths:
                pino, parent = self._walk(ch, p[:-1], True)
                rec = self.child(parent, p[-1], ch)
                if rec is None or rec.hlid != hlid:
                    raise Corrupt(f"link table of {self.artifact}:v{self.parent} names {quote(b'/'.join(p))}, "
                                  "which is not in its group")
                members.append((pino, parent, p[-1], rec))
            # the number the group had before (its names are pinned to it: a commit, a remount
            # does not change a hard-linked file's st_ino), else a new one
            pinned = [ch.pin(pino, name) for pino, _, name, _ in members]
            ino = next((x for x in pinned if x is not None and x not in used), None) or ch.alloc()
            used.add(ino)
            for pino, parent, name, rec in members:
                self._set(ch, parent.dir_id, name, Entry(name, rec.kind, link=ino))
                ch.pins[(pino, name)] = ino
            if members:
                ch.inodes[ino] = members[0][3].with_(name=b"", nlink=len(members), ctime_ns=ch.now)
        ch.adopted = True

    def adopt_links_now(self) -> None:
        """After a commit or a rebase onto a version with hard links: its groups become inode
        records again at once (the owner's call), so st_nlink and st_ino stay right."""
        if not self.links_adopted:
            self.commit(self.plan_noop())

    # -- committing a change -------------------------------------------------------------
    def persist(self, ch: Change) -> None:
        """Write the change in one metadata transaction (may run in a worker thread).
        On failure the new scratch files are removed and nothing else happened."""
        try:
            self.meta.draft_apply(self.id, ch.ops(), next_ino=ch.next_ino if ch.next_ino != self.next_ino else None,
                                  links_adopted=True if ch.adopted else None)
        except Busy:
            raise  # nothing happened, and the caller persists it again (try_persist_now)
        except BaseException:
            for name in ch.new_scratch:
                try:
                    os.unlink(self.scratch_path(name))
                except OSError:
                    pass
            raise

    def try_persist_now(self, ch: Change) -> bool:
        """:meth:`persist` on the calling thread if the metadata store can do it without
        waiting (a local store whose database no other writer holds); False if nothing was
        done, for the caller to :meth:`persist` in a worker thread.  An event loop's thread
        saves the worker-thread trip this way: about half of what a create costs."""
        nowait = getattr(self.meta, "nowait", None)
        if nowait is None or ch.size() > INLINE_MAX:  # a big transaction would stall the loop
            return False
        try:
            with nowait():
                self.persist(ch)
        except Busy:
            return False
        return True

    def create_scratch_for(self, scratch: str, made: bool = False) -> ScratchFile:
        """The scratch file a planned change names, open (``made``: an empty one made ahead,
        see :meth:`new_scratch`); if that fails, a file made ahead is removed."""
        try:
            return self.new_scratch(scratch, made)[1]
        except BaseException:
            if made:  # made ahead, now nobody's
                try:
                    self.drop_scratch_now(scratch)
                except OSError:
                    pass
            raise

    def apply(self, ch: Change) -> None:
        """Make memory match a persisted change (the owner's thread, after persist)."""
        for dir_id in {x for x, _ in ch.ov} | set(ch.dirs) | ch.deldirs:
            self._nsub.pop(dir_id, None)
        for dir_id, base in ch.dirs.items():
            self.bases[dir_id] = base
            self.overlay[dir_id] = {}
        for (dir_id, name), v in ch.ov.items():
            ov = self.overlay.setdefault(dir_id, {})
            if v is _DEL:
                ov.pop(name, None)
            else:
                ov[name] = v
        for dir_id in ch.deldirs:
            self.overlay.pop(dir_id, None)
            self.bases.pop(dir_id, None)
        for ino, e in ch.inodes.items():
            if e is None:
                self.inodes.pop(ino, None)
            else:
                self.inodes[ino] = e
        for key, ino in ch.pins.items():
            if ino is None:
                self.pins.pop(key, None)
            else:
                self.pins[key] = ino
        if ch.root is not None:
            self.root = ch.root
        self.next_ino = ch.next_ino
        if ch.adopted:
            self.links_adopted = True
        self.dead.extend(ch.dead)

    def commit(self, ch: Change):
        """persist + apply (callers that are not the FUSE loop); returns the change's result."""
        self.persist(ch)
        self.apply(ch)
        return ch.result

    # -- planned mutations ---------------------------------------------------------------
    def plan_noop(self) -> Change:
        return self._new_change()

    def plan_create(self, path: tuple, kind: int, mode: int, uid: int, gid: int, *, rdev: int = 0,
                    target: bytes | None = None, scratch: str | None = None, digest: bytes | None = None,
                    chunks: bytes | None = None, size: int = 0, uri: str | None = None,
                    mtime_ns: int | None = None, atime_ns: int | None = None, xattrs: tuple = (),
                    exclusive: bool = True) -> Change:
        """A new name (file, special file, symlink, directory).  Result: (ino, Entry)."""
        parent, name = self._split(path)
        ch = self._new_change()
        pino, pd = self._walk(ch, parent, True)
        old = self.child(pd, name, ch)
        if old is not None:
            if exclusive:
                raise Exists(f"exists: {quote(b'/'.join(path))}")
            if old.kind == DIR and kind != DIR:
                raise IsADirectory(f"is a directory: {quote(b'/'.join(path))}")
            self._forget(ch, old)
        if kind == SYMLINK and (not target or b"\0" in target or len(target) > fmt.MAX_TARGET):
            raise BadInput("bad symlink target")
        ino = ch.alloc()
        now = ch.now
        e = Entry(name, kind, stat.S_IMODE(mode), uid, gid, size if kind != SYMLINK else len(target),
                  now if mtime_ns is None else mtime_ns, now if atime_ns is None else atime_ns,
                  digest=digest, chunks=chunks, target=target, rdev=rdev if kind in (fmt.CHR, fmt.BLK) else 0,
                  scratch=scratch, uri=uri, xattrs=xattrs, ctime_ns=now)
        if kind == DIR:
            ch.dirs[ino] = None
            e = e.with_(dir_id=ino, size=0)
        if scratch is not None:
            ch.new_scratch.append(scratch)
        self._set(ch, pd.dir_id, name, e)
        ch.pins[(pino, name)] = ino
        self._touch_dir(ch, parent)
        ch.result = (ino, e)
        return ch

    def plan_link(self, src: tuple | None, dst: tuple, ino: int | None = None) -> Change:
        """A hard link ``dst`` to the non-directory ``src`` (or to the hard-linked inode ``ino``,
        whatever its names are now).  Result: (ino, Entry)."""
        dparent, dname = self._split(dst)
        ch = self._new_change()
        if src is None:
            if ino not in self.inodes:
                raise NotFound("no such inode")
            e = ch.inode(ino).with_(name=dname, link=ino)
            spino = spd = sname = None
        else:
            sparent, sname = self._split(src)
            spino, spd = self._walk(ch, sparent, True)
            e = self.child(spd, sname, ch)
        if e is None:
            raise NotFound(f"no such file: {quote(b'/'.join(src))}")
        if e.kind == DIR:
            raise NotPermitted("hard links to directories are not allowed")
        dpino, dpd = self._walk(ch, dparent, True)
        if self.child(dpd, dname, ch) is not None:
            raise Exists(f"exists: {quote(b'/'.join(dst))}")
        now = ch.now
        if e.link is None:
            ino = self.ino_of(spino, sname, e, ch)
            ch.inodes[ino] = e.with_(name=b"", nlink=2, ctime_ns=now)
            self._set(ch, spd.dir_id, sname, Entry(sname, e.kind, link=ino))
            ch.pins[(spino, sname)] = ino
        else:
            ino = e.link
            inode = ch.inode(ino)
            ch.inodes[ino] = inode.with_(nlink=inode.nlink + 1, ctime_ns=now)
        self._set(ch, dpd.dir_id, dname, Entry(dname, e.kind, link=ino))
        ch.pins[(dpino, dname)] = ino
        self._touch_dir(ch, dparent)
        ch.result = (ino, self._resolve(ch, dname, Entry(dname, e.kind, link=ino)))
        return ch

    def plan_remove(self, path: tuple, kind: str = "any") -> Change:
        """Remove a name.  ``kind``: "file" (unlink: not a directory), "dir" (rmdir: an empty
        directory), "any" (recursive; API).  Result: the removed Entry."""
        parent, name = self._split(path)
        ch = self._new_change()
        pino, pd = self._walk(ch, parent, True)
        e = self.child(pd, name, ch)
        if e is None:
            raise NotFound(f"no such file or directory: {quote(b'/'.join(path))}")
        if kind == "file" and e.kind == DIR:
            raise IsADirectory(f"is a directory: {quote(b'/'.join(path))}")
        if kind == "dir":
            if e.kind != DIR:
                raise NotADirectory(f"not a directory: {quote(b'/'.join(path))}")
            if self._nonempty(ch, e):
                raise NotEmpty(f"directory not empty: {quote(b'/'.join(path))}")
        self._forget(ch, e)
        self._set(ch, pd.dir_id, name, None)
        if ch.pin(pino, name) is not None:
            ch.pins[(pino, name)] = None
        self._touch_dir(ch, parent)
        ch.result = e
        return ch

    def _nonempty(self, ch: Change, d: Entry) -> bool:
        if d.dir_id is None:
            return d.digest is not None and bool(self.store.tree(d.digest))
        base = ch.base(d.dir_id)
        names = set(self.store.tree_map(base)) if base is not None else set()
        rows = {} if d.dir_id in ch.dirs else dict(self.overlay.get(d.dir_id, {}))
        for (dx, n), v in ch.ov.items():
            if dx == d.dir_id:
                if v is _DEL:
                    rows.pop(n, None)
                else:
                    rows[n] = v
        for name, rec in rows.items():
            if rec is None:
                names.discard(name)
            else:
                names.add(name)
        return bool(names)

    def plan_rename(self, old: tuple, new: tuple, noreplace: bool = False, exchange: bool = False) -> Change:
        """Move an entry (file or directory, from the parent or not) to ``new``, replacing a
        compatible target (POSIX rename), or swapping the two (RENAME_EXCHANGE).
        Result: (moved Entry, replaced Entry or None)."""
        if old == new:
            ch = self._new_change()
            e = self.lookup(old)
            if e is None:
                raise NotFound(f"no such file or directory: {quote(b'/'.join(old))}")
            ch.result = (e, None)
            return ch
        op, oname = self._split(old)
        np_, nname = self._split(new)
        ch = self._new_change()
        opino, opd = self._walk(ch, op, True)
        e = self.child(opd, oname, ch)
        if e is None:
            raise NotFound(f"no such file or directory: {quote(b'/'.join(old))}")
        if e.kind == DIR and new[:len(old)] == old:
            raise BadInput("cannot move a directory into itself")
        npino, npd = self._walk(ch, np_, True)
        e = self.child(opd, oname, ch)  # re-read: materializing a shared ancestor may have changed it
        target = self.child(npd, nname, ch)
        if exchange:
            if target is None:
                raise NotFound(f"no such file or directory: {quote(b'/'.join(new))}")
            if target.kind == DIR and old[:len(new)] == new:
                raise BadInput("cannot move a directory into itself")
        elif target is not None:
            if noreplace:
                raise Exists(f"exists: {quote(b'/'.join(new))}")
            if target.kind == DIR and e.kind != DIR:
                raise IsADirectory(f"is a directory: {quote(b'/'.join(new))}")
            if e.kind == DIR and target.kind != DIR:
                raise NotADirectory(f"not a directory: {quote(b'/'.join(new))}")
            if target.kind == DIR and self._nonempty(ch, target):
                raise NotEmpty(f"directory not empty: {quote(b'/'.join(new))}")
            if target.link is not None and target.link == e.link:
                # two names of one inode: POSIX says do nothing
                ch.result = (e, None)
                return ch
        now = ch.now
        eino = self.ino_of(opino, oname, e, ch)
        tino = self.ino_of(npino, nname, target, ch) if target is not None else None
        moved = e.with_(ctime_ns=now) if e.link is None else Entry(nname, e.kind, link=e.link)
        if e.link is not None:
            ch.inodes[e.link] = ch.inode(e.link).with_(ctime_ns=now)
        if exchange:
            other = (target.with_(ctime_ns=now) if target.link is None
                     else Entry(oname, target.kind, link=target.link))
            self._set(ch, opd.dir_id, oname, other)
            ch.pins[(opino, oname)] = tino
        else:
            if target is not None:
                self._forget(ch, target)
            self._set(ch, opd.dir_id, oname, None)
            ch.pins[(opino, oname)] = None
        self._set(ch, npd.dir_id, nname, moved)
        ch.pins[(npino, nname)] = eino
        self._touch_dir(ch, op)
        if np_ != op:
            self._touch_dir(ch, np_)
        ch.result = (e, None if exchange else target)
        return ch

    def plan_setattr(self, path: tuple | None, *, ino: int | None = None, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                     mtime_ns: int | None = None, atime_ns: int | None = None, ctime_ns: int | None = None,
                     kind: int | None = None, scratch: str | None = None, content: Entry | None = None,
                     xattrs: tuple | None = None, size: int | None = None) -> Change:
        """Change metadata of an existing name (the root too; ``path`` None and ``ino``: a
        hard-linked inode).  ``scratch``: the file's bytes now live in that scratch file (after
        a copy-up); ``content``: point it at stored content instead (the entry's digest, chunks,
        size).  Result: the new Entry."""
        ch = self._new_change()
        now = ch.now
        kw = {}
        if mode is not None:
            kw["mode"] = stat.S_IMODE(mode)
        if uid is not None:
            kw["uid"] = uid
        if gid is not None:
            kw["gid"] = gid
        if mtime_ns is not None:
            kw["mtime_ns"] = mtime_ns
        if atime_ns is not None:
            kw["atime_ns"] = atime_ns
        if xattrs is not None:
            kw["xattrs"] = xattrs
        if size is not None:
            kw["size"] = size
        kw["ctime_ns"] = now if ctime_ns is None else ctime_ns
        if path is None:  # a hard-linked inode, by number: whichever names it has
            if ino not in self.inodes:
                raise NotFound("no such inode")
            inode = ch.inode(ino)
            if scratch is not None:
                if inode.scratch is not None and inode.scratch != scratch:
                    ch.dead.append(inode.scratch)
                kw.update(kind=FILE, scratch=scratch, digest=None, chunks=None, uri=None)
                ch.new_scratch.append(scratch)
            new = inode.with_(**kw)
            ch.inodes[ino] = new
            ch.result = new.with_(link=ino)
            return ch
        if not path:
            e = ch.root_entry().with_(**kw)
            ch.root = e
            ch.result = e
            return ch
        parent, name = self._split(path)
        pino, pd = self._walk(ch, parent, True)
        e = self.child(pd, name, ch)
        if e is None:
            raise NotFound(f"no such file: {quote(b'/'.join(path))}")
        if scratch is not None:
            if e.kind not in (FILE, REF):
                raise BadInput("not a regular file")
            if e.scratch is not None and e.scratch != scratch:
                ch.dead.append(e.scratch)
            kw.update(kind=FILE, scratch=scratch, digest=None, chunks=None, uri=None)
            ch.new_scratch.append(scratch)
        if content is not None:
            if e.scratch is not None:
                ch.dead.append(e.scratch)
            kw.update(kind=content.kind, scratch=None, digest=content.digest, chunks=content.chunks,
                      size=content.size, uri=content.uri)
        if kind is not None:
            kw["kind"] = kind
        new = e.with_(**kw)
        self._update(ch, pd.dir_id, name, new)
        ch.result = new
        return ch

    def plan_put(self, path: tuple, e: Entry, make_parents: bool = True) -> Change:
        """Set ``path`` to a stored entry (file, tree, symlink, reference), replacing what is
        there; parents are created (API add_file/add_dir, patch mode)."""
        parent, name = self._split(path)
        ch = self._new_change()
        if make_parents:
            self._makedirs(ch, parent)
        pino, pd = self._walk(ch, parent, True)
        old = self.child(pd, name, ch)
        self._forget(ch, old)
        if e.kind == DIR and e.dir_id is not None:
            raise BadInput("only stored trees can be put")
        self._set(ch, pd.dir_id, name, e.with_(name=name, ctime_ns=ch.now))
        ch.pins[(pino, name)] = ch.alloc()  # a new inode at this name
        ch.result = e
        return ch

    def _makedirs(self, ch: Change, path: tuple) -> None:
        for i in range(1, len(path) + 1):
            pino, pd = self._walk(ch, path[:i - 1], True)
            e = self.child(pd, path[i - 1], ch)
            if e is None:
                ino = ch.alloc()
                now = ch.now
                ch.dirs[ino] = None
                self._set(ch, pd.dir_id, path[i - 1], Entry(path[i - 1], DIR, 0o755, os.getuid(), os.getgid(), 0,
                                                            now, now, dir_id=ino, ctime_ns=now))
                ch.pins[(pino, path[i - 1])] = ino
            elif e.kind != DIR:
                raise NotADirectory(f"not a directory: {quote(b'/'.join(path[:i]))}")

    # -- convenience for non-FUSE callers (API, CLI) -----------------------------------------
    def put(self, path: tuple, e: Entry) -> Entry:
        return self.commit(self.plan_put(path, e))

    def remove(self, path: tuple) -> Entry:
        return self.commit(self.plan_remove(path, "any"))

    def mkdir(self, path: tuple, mode: int = 0o755) -> Entry:
        return self.commit(self.plan_create(path, DIR, mode, os.getuid(), os.getgid()))[1]

    # -- content of changed files ------------------------------------------------------------
    def copy_up(self, e: Entry, truncate: bool = False) -> tuple[str, ScratchFile]:
        """A new scratch file holding ``e``'s verified content (blocking: a worker thread).
        The caller records it with ``plan_setattr(path, scratch=name)``."""
        from .content import ContentReader

        name, sf = self.new_scratch()
        try:
            if not truncate and e.size:
                if e.scratch is not None:
                    src = os.open(self.scratch_path(e.scratch), os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        copy_fd(src, sf.fd, os.fstat(src).st_size)
                    finally:
                        os.close(src)
                else:
                    with ContentReader(self.store, e) as r:  # zeros are left as holes
                        for i in range(fmt.chunk_count(r.size)):
                            write_sparse(sf.fd, r.piece(i), i * fmt.CHUNK)
                        if os.fstat(sf.fd).st_size != r.size:  # it ends in a hole
                            os.ftruncate(sf.fd, r.size)
            if not truncate:
                os.utime(sf.fd, ns=(e.atime_ns, e.mtime_ns))  # opening is not writing: keep the times
        except BaseException:
            sf.close()
            self.drop_scratch_now(name)
            raise
        return name, sf

    def resolved(self, e: Entry) -> Entry:
        """``e`` with a scratch file's digest, size and mtime (hashed, cached by stat)."""
        if e.scratch is None:
            return e
        p = self.scratch_path(e.scratch)
        st = os.stat(p)
        key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        hit = self._digests.get(e.scratch)
        if hit is None or hit[0] != key:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            try:
                d, n, _ = hash_fd(fd)
            finally:
                os.close(fd)
            hit = self._digests[e.scratch] = (key, d)
        return e.with_(digest=hit[1], size=st.st_size, mtime_ns=st.st_mtime_ns)

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> list[tuple[str, tuple]]:
        """``(A|M|D, path tuple)`` against the parent, sorted by path; equal content is not M."""
        from .diff import diff_items, tree_children

        def children(d):
            out = {}
            for name, e in self.children(d).items():
                e = self.resolved(e)
                out[name] = (e, e if e.kind == DIR else None)
            return out

        return diff_items(tree_children(self.store), self.base_root, children, self.root)

    def changed_dirs(self) -> int:
        return len(self.bases)

    # -- discarding -----------------------------------------------------------------------------
    def discard(self) -> None:
        """Delete the draft: its row first (durably), then its scratch files."""
        self.meta.delete_draft(self.id)
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        try:
            os.unlink(self.store.draft_lock_path(self.scratch_uuid))
        except OSError:
            pass

    # -- building trees (commit, upsert) ----------------------------------------------------------
    def scratch_entries(self) -> list[Entry]:
        """Every record whose bytes are in a scratch file (iterative over materialized dirs)."""
        out = [e for e in self.inodes.values() if e.scratch is not None]
        for ov in self.overlay.values():
            out.extend(e for e in ov.values() if e is not None and e.scratch is not None and e.link is None)
        return out

    def hlid_of(self, ino: int, inode: Entry) -> bytes:
        return inode.hlid or blake(self.scratch_uuid.encode() + ino.to_bytes(8, "little"))[:fmt.HLID_LEN]

    def build(self, batch, progress=None, threads: int = 4) -> tuple[Entry, dict, dict]:
        """Write every changed object and tree into ``batch``.  Returns (root DIR entry,
        link table {hlid: [paths]}, {scratch name: (digest, size, chunks)}).
        Cost: the materialized directories and the scratch files, nothing else."""
        scratch = self.scratch_entries()

        def copy_in(e: Entry):
            fd = os.open(self.scratch_path(e.scratch), os.O_RDONLY | os.O_CLOEXEC)
            try:
                d, n, chunks = batch.put_fd(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if progress:
                progress.advance(1, n)
            return e.scratch, (d, n, chunks, st.st_mtime_ns)

        if progress:
            progress.total(len(scratch), sum((self.scratch_stat(e.scratch) or os.stat_result((0,) * 10)).st_size
                                             for e in scratch))
        with ThreadPoolExecutor(threads) as pool:
            done = dict(pool.map(copy_in, scratch))

        links: dict[bytes, list] = {}

        def stored(name: bytes, e: Entry, path: tuple) -> Entry:
            hlid = None
            if e.link is not None:
                ino = e.link
                inode = self.inodes[ino]
                if inode.nlink > 1:
                    hlid = self.hlid_of(ino, inode)
                    links.setdefault(hlid, []).append(path)
                e = inode.with_(name=name)
            if e.scratch is not None:
                d, n, chunks, mtime = done[e.scratch]
                e = e.with_(digest=d, size=n, chunks=chunks, mtime_ns=mtime)
            return e.with_(name=name, hlid=hlid, scratch=None, link=None, dir_id=None, ctime_ns=0, nlink=1)

        # post-order over materialized directories, iterative
        root = self.root
        stack = [(ROOT_INO, (), root, None)]
        built: dict[int, Entry] = {}
        while stack:
            dir_id, path, meta, pending = stack.pop()
            ov = self.overlay.get(dir_id, {})
            if pending is None:
                subs = [(e.dir_id, path + (n,), e) for n, e in ov.items()
                        if e is not None and e.kind == DIR and e.dir_id is not None]
                stack.append((dir_id, path, meta, True))
                stack.extend((sid, sp, se, None) for sid, sp, se in subs)
                continue
            base = self.bases.get(dir_id)
            entries = dict(self.store.tree_map(base)) if base is not None else {}
            for n, e in ov.items():
                if e is None:
                    entries.pop(n, None)
                elif e.kind == DIR and e.dir_id is not None:
                    entries[n] = built.pop(e.dir_id).with_(name=n)
                else:
                    entries[n] = stored(n, e, path + (n,))
            built[dir_id] = self.store.write_dir(batch, meta.with_(name=path[-1] if path else b""), entries.values())
        rootent = built[ROOT_INO]
        return rootent, links, done

    def settle(self, done: dict) -> Change:
        """After an upsert: files copied from scratch files now live in the store; point their
        records at the digests (content unchanged) and retire the scratch files."""
        ch = Change(self)
        for dir_id, ov in self.overlay.items():
            for name, e in ov.items():
                if e is not None and e.link is None and e.scratch in done:
                    d, n, chunks, mtime = done[e.scratch]
                    ch.ov[(dir_id, name)] = e.with_(scratch=None, digest=d, size=n, chunks=chunks, mtime_ns=mtime)
                    ch.dead.append(e.scratch)
        for ino, e in self.inodes.items():
            if e.scratch in done:
                d, n, chunks, mtime = done[e.scratch]
                ch.inodes[ino] = e.with_(scratch=None, digest=d, size=n, chunks=chunks, mtime_ns=mtime)
                ch.dead.append(e.scratch)
        return ch
