"""The repository: artifacts, versions, aliases, drafts, and what is made of them.

Everything here speaks digests and metadata rows; nothing knows about FUSE.
Write ordering for every new version (DESIGN.md §5): objects durable
(``objects.sync``) -> trees -> one metadata transaction that allocates the
number, inserts the row and moves ``latest`` (``meta.commit_version``).
Every writer holds ``store.writing()`` across that span (see store.py's gc rule).
"""
from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3

from . import treefmt
from .diff import diff_items, tree_children
from .draft import Draft
from .errors import BadInput, Corrupt, NotFound, ReferenceChanged
from .refs import Ref, check_alias, check_artifact_name, parse_ref
from .store import Store
from .treefmt import DIR, FILE, REF, SYMLINK, Entry

CONTROL_DIR = b".artfs"  # reserved at the root of every version


@dataclass
class VersionInfo:
    artifact: str
    num: int
    root: bytes
    ident: bytes
    parent: int | None
    created: float
    message: str | None
    metadata: dict
    file_count: int
    total_bytes: int
    how: str
    type: str = "dataset"

    @property
    def ref(self) -> str:
        return f"{self.artifact}:v{self.num}"

    @classmethod
    def of(cls, row: dict, type_: str) -> "VersionInfo":
        return cls(row["artifact"], row["num"], bytes.fromhex(row["root"]), bytes.fromhex(row["ident"]), row["parent"],
                   row["created"], row["message"], row["metadata"], row["file_count"], row["total_bytes"], row["how"], type_)

    def root_entry(self) -> Entry:
        return Entry(b"", DIR, 0o755, 0, 0, self.total_bytes, int(self.created * 1e9), digest=self.root, ident=self.ident,
                     nfiles=self.file_count)


# -- references -----------------------------------------------------------------

def _versions_hint(store: Store, name: str) -> str:
    rows = store.meta.versions(name)
    if not rows:
        return f"{name} has no versions yet"
    newest = ", ".join(f"v{r['num']}" for r in rows[:5])
    return f"newest: {newest}"


def _artifact_or_fail(store: Store, name: str) -> dict:
    art = store.meta.artifact(name)
    if art is None:
        names = [a["name"] for a in store.meta.artifacts()]
        known = ("artifacts: " + ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")) if names else "the store has no artifacts yet"
        raise NotFound(f"no artifact {name!r}; {known}")
    return art


def resolve(store: Store, ref: "str | Ref") -> VersionInfo:
    """A read-only reference -> the version it names (DESIGN.md §2)."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.draft:
        raise BadInput(f"{r} is a draft, not a version")
    art = _artifact_or_fail(store, r.name)
    if r.version is not None:
        row = store.meta.version(r.name, r.version)
        if row is None:
            raise NotFound(f"{r.name} has no v{r.version}; {_versions_hint(store, r.name)}")
    else:
        num = store.meta.alias(r.name, r.alias)
        if num is None:
            if r.alias == "latest":
                raise NotFound(f"{r.name} has no versions yet")
            aliases = sorted({a for al in store.meta.aliases(r.name).values() for a in al})
            raise NotFound(f"{r.name} has no alias {r.alias!r}; aliases: {', '.join(aliases) or 'none'}")
        row = store.meta.version(r.name, num)
    return VersionInfo.of(row, art["type"])


def latest(store: Store, name: str) -> VersionInfo | None:
    num = store.meta.alias(name, "latest")
    if num is None:
        return None
    art = store.meta.artifact(name)
    return VersionInfo.of(store.meta.version(name, num), art["type"])


def open_draft(store: Store, name: str, key: str | None = None, type_: str | None = None,
               parent: VersionInfo | None = None, empty: bool = False) -> Draft:
    """The draft ``key`` of ``name`` (default: the artifact's one mountable draft), resumed or created.

    A new draft starts from ``parent``, else from latest, else empty.
    """
    check_artifact_name(name)
    art = store.meta.artifact(name)
    t = type_ or (art["type"] if art else "dataset")
    if art is not None and type_ is not None and art["type"] != type_:
        raise BadInput(f"{name} is a {art['type']}, not a {type_}")
    key = key or f"draft:{name}"
    existing = store.meta.draft(key)
    if existing is not None:
        return Draft(store, existing)
    if parent is None and not empty:
        parent = latest(store, name)
    return Draft.open(store, key, name, t, parent.num if parent else None, parent.root.hex() if parent else None)


def draft_label(key: str) -> str:
    """How a user names a draft: NAME:draft for an artifact's mountable one, else its key."""
    return f"{key[len('draft:'):]}:draft" if key.startswith("draft:") else key


def _draft_mounted(d: Draft) -> bool:
    import fcntl

    lock = os.path.join(d.scratch_dir, ".mounted")
    if not os.path.exists(lock):
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def drafts(store: Store) -> list[dict]:
    """Every draft in the store: mountable ones, API drafts left by programs, run outputs."""
    out = []
    for row in store.meta.drafts():
        d = Draft(store, row)
        out.append({"draft": draft_label(row["key"]), "key": row["key"], "artifact": row["artifact"],
                    "parent": f"{row['artifact']}:v{row['parent']}" if row["parent"] is not None else None,
                    "created": row["created"], "changes": len(d.status()), "mounted": _draft_mounted(d)})
    return out


def discard_draft(store: Store, key: str) -> str:
    """Drop a draft by key (refused while it is mounted); says what happened."""
    row = store.meta.draft(key)
    if row is None:
        return f"no draft {draft_label(key)}"
    d = Draft(store, row)
    if _draft_mounted(d):
        raise BadInput(f"{draft_label(key)} is mounted; unmount it first")
    n = len(d.status())
    d.discard()
    return f"discarded {draft_label(key)} ({n} change{'s' if n != 1 else ''})"


# -- walking versions ---------------------------------------------------------------

def lookup(store: Store, v: VersionInfo, path: str | bytes) -> Entry:
    parts = treefmt.split_path(path)
    e = v.root_entry()
    for i, comp in enumerate(parts):
        if e.kind != DIR:
            raise NotFound(f"not a directory in {v.ref}: {treefmt.join_path(parts[:i])}")
        e = store.tree_map(e.digest).get(comp)
        if e is None:
            raise NotFound(f"no {treefmt.join_path(parts[: i + 1])} in {v.ref}")
    return e


def walk(store: Store, tree: bytes, prefix: tuple = ()):
    """Yield (path tuple, Entry) for every entry below a tree, depth first, sorted."""
    for e in store.tree(tree):
        p = prefix + (e.name,)
        yield p, e
        if e.kind == DIR:
            yield from walk(store, e.digest, p)


def diff_versions(store: Store, a: VersionInfo, b: VersionInfo) -> list[tuple[str, str]]:
    ch = tree_children(store)
    return diff_items(ch, ("t", a.root), ch, ("t", b.root))


# -- reading file content -----------------------------------------------------------------

def uri_path(uri: str) -> str:
    if not uri.startswith("file://"):
        raise BadInput(f"unsupported reference {uri!r}: only file:///absolute/path")
    p = uri[len("file://"):]
    if not p.startswith("/"):
        raise BadInput(f"reference must be an absolute file:/// URI: {uri!r}")
    return p


def open_content(store: Store, e: Entry) -> tuple[int, str]:
    """An fd for reading a file entry's bytes, and the hex digest they must have."""
    if e.kind == FILE:
        return store.objects.open_fd(e.digest.hex()), e.digest.hex()
    if e.kind == REF:
        try:
            return os.open(uri_path(e.uri), os.O_RDONLY), e.digest.hex()
        except OSError as exc:
            raise ReferenceChanged(f"reference {e.uri} is unreadable: {exc.strerror}") from None
    raise BadInput(f"{e.name.decode(errors='replace')} is not a file")


def iter_content(store: Store, e: Entry, chunk: int = 1 << 20):
    """Yield a file's bytes, verifying the digest; raises Corrupt at the end on a mismatch."""
    fd, hexd = open_content(store, e)
    h = blake3.blake3()
    try:
        off = 0
        while True:
            try:
                buf = os.pread(fd, chunk, off)
            except OSError as exc:  # EIO from a failing disk, EISDIR from a reference now a directory
                if e.kind == REF:
                    raise ReferenceChanged(f"reference {e.uri} is unreadable: {exc.strerror}") from None
                raise Corrupt(f"object {hexd} is unreadable: {exc.strerror}") from None
            if not buf:
                break
            h.update(buf)
            off += len(buf)
            yield buf
    finally:
        os.close(fd)
    if h.hexdigest() != hexd:
        if e.kind == REF:
            raise ReferenceChanged(f"reference {e.uri} changed since it was recorded")
        raise Corrupt(f"object {hexd} is corrupt")


def hash_reference(uri: str) -> tuple[str, int]:
    from .objects import hash_file

    p = uri_path(uri)
    try:
        return hash_file(p)
    except OSError as exc:
        raise BadInput(f"cannot read {p}: {exc.strerror}") from None


# -- put: a version from a local directory ---------------------------------------------------

def _scan(src: str):
    """Walk a local directory: yields (rel path tuple, os.stat_result) with lstat, sorted."""
    def rec(path, prefix):
        try:
            it = sorted(os.scandir(path), key=lambda d: os.fsencode(d.name))
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        for d in it:
            name = os.fsencode(d.name)
            try:
                st = d.stat(follow_symlinks=False)
            except OSError as exc:
                raise BadInput(f"cannot read {d.path}: {exc.strerror}") from None
            yield prefix + (name,), st, d.path
            if stat.S_ISDIR(st.st_mode):
                yield from rec(d.path, prefix + (name,))
    return rec(src, ())


def put_dir(store: Store, name: str, src: str, type_: str | None = None, message: str | None = None,
            metadata: dict | None = None, description: str | None = None, progress=None) -> tuple[VersionInfo, bool]:
    """A new version whose content is exactly ``src``; ``(version, unchanged)``.

    Files whose (dev, ino, size, mtime, ctime) match the put cache are not re-read.
    """
    check_artifact_name(name)
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise BadInput(f"not a directory: {src}")
    start = time.time()
    cache_rows: list = []
    with store.writing():
        root = build_tree_from_dir(store, src, progress=progress, cache_before=start - 2, cache_rows=cache_rows)
        store.objects.sync()
        num, unchanged = store.meta.commit_version(
            name, type_, root.digest.hex(), root.ident.hex(), None, "latest", message, metadata,
            root.nfiles, root.size, "single", description,
        )
    # only once the version exists: a cached digest is then one a version reaches
    store.meta.filecache_put(cache_rows)
    art = store.meta.artifact(name)
    return VersionInfo.of(store.meta.version(name, num), art["type"]), unchanged


def build_tree_from_dir(store: Store, src: str, progress=None, cache_before: float | None = None,
                        reject_control: bool = True, cache_rows: list | None = None) -> Entry:
    """Store a local directory's files and trees; returns its DIR entry (caller holds writing()).

    With ``cache_rows``, files not yet in the put cache are appended to it as rows for
    ``meta.filecache_put``, for the caller to record once the version exists."""
    items = list(_scan(src))
    if reject_control and any(p == (CONTROL_DIR,) for p, _, _ in items):
        raise BadInput(f"{os.path.join(src, '.artfs')}: the name .artfs is reserved")
    files = [(p, st, full) for p, st, full in items if stat.S_ISREG(st.st_mode)]
    for p, st, full in items:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise BadInput(f"unsupported file type (not a file, directory or symlink): {full}")
    cache = store.meta.filecache_get([full for _, _, full in files])
    digests: dict[str, tuple[bytes, int]] = {}
    todo = []
    for p, st, full in files:
        c = cache.get(full)
        if c and c[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) and store.objects.has(c[5]):
            digests[full] = (bytes.fromhex(c[5]), st.st_size)
        else:
            todo.append(full)
    if progress:
        progress.total(len(todo), sum(os.lstat(f).st_size for f in todo) if todo else 0)

    def store_one(full):
        try:
            hexd, size = store.objects.put_file(full)
        except OSError as exc:
            raise BadInput(f"cannot read {full}: {exc.strerror}") from None
        if progress:
            progress.advance(1, size)
        return full, bytes.fromhex(hexd), size

    with ThreadPoolExecutor(min(8, (os.cpu_count() or 2) * 2)) as pool:
        for full, d, size in pool.map(store_one, todo):
            digests[full] = (d, size)

    # bottom-up trees: children are listed before they are needed thanks to the sorted depth-first scan
    dirs: dict[tuple, list[Entry]] = {(): []}
    order = []
    for p, st, full in items:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            dirs[p] = []
            order.append((p, st))
        elif stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(full))
            dirs[p[:-1]].append(Entry(p[-1], SYMLINK, mode, st.st_uid, st.st_gid, len(target), st.st_mtime_ns, target=target))
        else:
            d, size = digests[full]
            dirs[p[:-1]].append(Entry(p[-1], FILE, mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, digest=d))
    for p, st in reversed(order):  # deepest first
        ents = dirs.pop(p)
        dirs[p[:-1]].append(store.write_dir(p[-1], ents, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns))
    st = os.stat(src)
    root = store.write_dir(b"", dirs[()], stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    if cache_rows is not None and cache_before is not None:
        fresh = set(todo)  # files already in the cache need no new row
        for p, st, full in files:
            if full in fresh and st.st_mtime_ns / 1e9 < cache_before and st.st_ctime_ns / 1e9 < cache_before:
                cache_rows.append((full, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                   digests[full][0].hex()))
    return root


# -- export ------------------------------------------------------------------------------

def export(store: Store, v: VersionInfo, dest: str, progress=None) -> int:
    """Materialise a version into ``dest`` (created; must be empty); returns files written."""
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise BadInput(f"{dest} exists and is not an empty directory")
    os.makedirs(dest, exist_ok=True)
    if progress:
        progress.total(v.file_count, v.total_bytes)
    is_root = os.geteuid() == 0
    dir_times = []
    count = 0

    def write_file(e: Entry, out: str):
        try:
            with open(out, "wb") as f:
                for buf in iter_content(store, e):
                    f.write(buf)
        except Corrupt:
            os.unlink(out)  # the bytes failed verification: leave no file that looks exported
            raise
        os.chmod(out, e.mode)
        if is_root:
            os.lchown(out, e.uid, e.gid)
        os.utime(out, ns=(e.mtime_ns, e.mtime_ns))
        if progress:
            progress.advance(1, e.size)

    jobs = []
    for p, e in walk(store, v.root):
        out = os.path.join(dest, os.fsdecode(b"/".join(p)))
        if e.kind == DIR:
            os.mkdir(out, 0o700)
            dir_times.append((out, e))
        elif e.kind == SYMLINK:
            os.symlink(e.target, out)
            if is_root:
                os.lchown(out, e.uid, e.gid)
            os.utime(out, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        else:
            jobs.append((e, out))
    with ThreadPoolExecutor(4) as pool:
        for _ in pool.map(lambda j: write_file(*j), jobs):
            count += 1
    for out, e in reversed(dir_times):
        os.chmod(out, e.mode)
        if is_root:
            os.lchown(out, e.uid, e.gid)
        os.utime(out, ns=(e.mtime_ns, e.mtime_ns))
    return count


# -- aliases ------------------------------------------------------------------------------

def set_alias(store: Store, ref: str, alias: str) -> VersionInfo:
    v = resolve(store, ref)
    check_alias(alias)
    store.meta.set_alias(v.artifact, alias, v.num)
    return v


def delete_alias(store: Store, text: str) -> None:
    name, sep, alias = text.partition(":")
    check_artifact_name(name)
    if not sep:
        raise BadInput(f"expected NAME:ALIAS, got {text!r}")
    check_alias(alias)
    _artifact_or_fail(store, name)
    if not store.meta.delete_alias(name, alias):
        raise NotFound(f"{name} has no alias {alias!r}")


# -- fsck and gc ---------------------------------------------------------------------------

def _draft_roots(store: Store, problems: list | None = None):
    """Digests (trees, blobs) that drafts and pending collaborative versions reference, labelled."""
    from .draft import DEntry

    bases, recs = store.meta.all_draft_recs()
    trees, blobs = [], []
    for did, base in bases:
        if base:
            trees.append((bytes.fromhex(base), f"draft {did}"))
    labelled = [(f"draft {did}", rec) for did, rec in recs] + store.meta.all_pending_recs()
    for label, rec in labelled:
        try:
            e = DEntry.decode(rec)
        except Corrupt as exc:
            if problems is None:
                raise  # gc must not sweep what a damaged record might have named
            problems.append(f"{exc} ({label})")
            continue
        if e is None:
            continue
        if e.kind == DIR and e.tree is not None:
            trees.append((e.tree, label))
        elif e.kind == FILE and e.digest is not None:
            blobs.append((e.digest, label))
    return trees, blobs


def mark(store: Store, problems: list | None = None, progress=None) -> dict[str, str]:
    """Every reachable object hex -> where it is used (first seen)."""
    seen: dict[str, str] = {}
    roots = [(treefmt.EMPTY_TREE_DIGEST, "the store (empty tree)")]  # Store.init writes it; it stays
    roots += [(bytes.fromhex(r["root"]), f"{r['artifact']}:v{r['num']}") for r in store.meta.all_versions()]
    draft_trees, draft_blobs = _draft_roots(store, problems)
    roots += draft_trees

    def visit_tree(digest: bytes, label: str, path: tuple):
        hexd = digest.hex()
        if hexd in seen:
            return
        seen[hexd] = f"{label} {treefmt.join_path(path) or '/'}"
        try:
            entries = store.tree(digest)
        except Corrupt as exc:
            # a missing object or one whose bytes miss its digest is named by fsck's own
            # passes; here only a tree that is intact but undecodable
            if problems is not None and store.objects.verify(hexd):
                problems.append(f"{exc} (tree {hexd} of {seen[hexd]})")
            return
        for e in entries:
            p = path + (e.name,)
            if e.kind == DIR:
                visit_tree(e.digest, label, p)
            elif e.kind == FILE:
                seen.setdefault(e.digest.hex(), f"{label} {treefmt.join_path(p)}")
        if progress:
            progress.advance(1, 0)

    for digest, label in roots:
        visit_tree(digest, label, ())
    for digest, label in draft_blobs:
        seen.setdefault(digest.hex(), label)
    return seen


def fsck(store: Store, progress=None) -> list[str]:
    """Re-hash every object and walk every version and draft; returns the problems found."""
    problems: list[str] = []
    used = mark(store, problems)
    present = set(store.objects.iter_all())
    for hexd, where in sorted(used.items(), key=lambda kv: kv[1]):
        if hexd not in present:
            problems.append(f"missing object {hexd} (used by {where})")
    if progress:
        progress.total(len(present), 0)

    def check(hexd):
        ok = store.objects.verify(hexd)
        if progress:
            progress.advance(1, 0)
        return hexd, ok

    with ThreadPoolExecutor(2) as pool:
        for hexd, ok in pool.map(check, sorted(present)):
            if not ok:
                problems.append(f"corrupt object {hexd} (used by {used.get(hexd, 'nothing: garbage')})")
    for row in store.meta.drafts():
        try:
            dr = Draft(store, row)
        except Corrupt:
            continue  # already named by mark()
        scratch = []
        dr._scratch_entries(0, scratch)
        for e in scratch:
            if not os.path.exists(dr.scratch_path(e.scratch)):
                problems.append(f"missing scratch file {e.scratch} of draft {row['key']}")
    return problems


def gc(store: Store, progress=None) -> tuple[int, int]:
    """Delete objects nothing reaches; returns (objects, bytes) removed.  See store.py for the rule."""
    removed = freed = 0
    with store.collecting():
        used = mark(store)
        for hexd in list(store.objects.iter_all()):
            if hexd not in used:
                freed += store.objects.delete(hexd)
                removed += 1
        # temporaries of writers that died (no writer is active while we hold the lock)
        for name in os.listdir(store.objects.tmp_dir):
            try:
                os.unlink(os.path.join(store.objects.tmp_dir, name))
            except FileNotFoundError:
                pass
        # scratch directories of drafts that no longer exist.  List before reading the live
        # drafts: a draft is created (row committed) before its directory, and drafts are
        # created without the gc lock, so a directory listed here that belongs to a new
        # draft always finds that draft's row below.
        ddir = os.path.join(store.path, "drafts")
        names = os.listdir(ddir)
        live = {str(d["id"]) for d in store.meta.drafts()}
        for name in names:
            if name not in live:
                import shutil

                shutil.rmtree(os.path.join(ddir, name), ignore_errors=True)
    return removed, freed
