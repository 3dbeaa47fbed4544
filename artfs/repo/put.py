"""``put``: a version from a local directory, without FUSE.

The source may be changing, and may be writable by other users while root
reads it.  So the scan is a plain lstat walk (iterative, any depth) that
records what each name is, and every regular file is then opened without
following any symlink (openat2 RESOLVE_NO_SYMLINKS / O_NOFOLLOW) and without
blocking, and must still be the same device, inode and type the scan saw --
otherwise the put stops naming the file.  What is stored is the copy that was
hashed, never a second read of the source.  FIFOs, sockets and devices are
recorded as special files and never opened; hard links inside the tree are
kept as groups; xattrs, atime and the root directory's own metadata are
recorded.

Files whose (device, inode, size, mtime, ctime) match the stat cache are not
read again (the cache is written only once the version exists; only on file
systems whose kernel moves ctime on every change: :data:`CTIME_TRUSTED`).  Neither is a
directory's tree encoded again when every child stats as it did and names the
same content: its record in the stat cache names the tree.  Either is trusted
only while its object is the very file the cache saw (DESIGN §5, invariant 2:
a re-put heals a damaged object).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack

from ..errors import BadInput, NoSpace
from ..names import quote
from ..refs import check_artifact_name
from ..storage import format as fmt
from ..storage.durable import SYNCFS_TRUSTED, TMPFS, fs_type
from ..storage.format import DIR, FILE, SYMLINK, Entry
from ..storage.hashing import digest as blake
from ..storage.meta import ANY
from .commit import create_version
from .content import open_nofollow
from .versions import CONTROL_DIR, VersionInfo, version

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _err(full: bytes, exc: OSError) -> BadInput:
    return BadInput(f"cannot read {quote(full)}: {exc.strerror}")


def read_xattrs(target, follow: bool = False) -> tuple:
    """((name, value), ...) of a path or descriptor; names the caller may not read are skipped."""
    try:
        names = os.listxattr(target, follow_symlinks=follow) if not isinstance(target, int) else os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
            return ()
        raise
    out = []
    for n in names:
        try:
            v = os.getxattr(target, n, follow_symlinks=follow) if not isinstance(target, int) else os.getxattr(target, n)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.EPERM, errno.EACCES, errno.ENOTSUP):
                continue
            raise
        out.append((os.fsencode(n), v))
    return fmt.xattr_tuple(out)


def scan(src: bytes):
    """Yield (rel path tuple, lstat, full path bytes) for everything below ``src`` (iterative,
    any depth; unordered: see :func:`_scan_sorted`)."""
    stack = [((), src)]
    while stack:
        prefix, path = stack.pop()
        try:
            with os.scandir(path) as it:
                ents = list(it)
        except OSError as exc:
            raise _err(path, exc) from None
        for d in ents:
            try:
                st = d.stat(follow_symlinks=False)
            except OSError as exc:
                raise _err(d.path, exc) from None
            p = prefix + (d.name,)
            yield p, st, d.path
            if stat.S_ISDIR(st.st_mode):
                stack.append((p, d.path))


def _scan_sorted(src: bytes):
    """Scanned items in sorted depth-first order (a directory before what it holds)."""
    items = list(scan(src))
    items.sort(key=lambda t: t[0])
    return items


def _hlid(st) -> bytes:
    return blake(b"artfs-put-hlid\0" + st.st_dev.to_bytes(8, "little") + st.st_ino.to_bytes(8, "little"))[:fmt.HLID_LEN]


def _stat_key(st) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


_DIR_REC = b"\0dir"  # a directory's record in the stat cache: no path holds a NUL


#: File systems whose kernel moves an inode's ctime on every change of it (bytes, xattrs, mode,
#: owner, links): only there does an unchanged stat prove an unchanged file, and put's stat
#: cache trusts nothing else.  A FUSE file system -- artfs's own mounts among them -- may show
#: the same inode number, size and times for other bytes or other xattrs.
CTIME_TRUSTED = frozenset(SYNCFS_TRUSTED | {TMPFS})


def _trusted_devices(root: bytes, root_st, items) -> set[int]:
    """The devices under ``root`` whose file system is in :data:`CTIME_TRUSTED` (a device
    changes only at a directory: a mount point)."""
    seen: dict[int, bool] = {}

    def classify(dev: int, path: bytes) -> None:
        if dev not in seen:
            try:
                seen[dev] = fs_type(os.fsdecode(path)) in CTIME_TRUSTED
            except OSError:
                seen[dev] = False

    classify(root_st.st_dev, root)
    for _, st, full in items:
        if stat.S_ISDIR(st.st_mode):
            classify(st.st_dev, full)
    return {dev for dev, ok in seen.items() if ok}


def _dir_key(children, known: dict, results: dict) -> str | None:
    """What a directory's tree is made of, as far as stat shows it: every child's lstat fields
    (ctime moves with xattrs, mode, owner and links), a file's content digest, a symlink's
    target and a subdirectory's own result.  None when the tree cannot be reused by its key: a
    child with more than one link (its hard-link group depends on other directories)."""
    rows = []
    for p, st, full in children:
        m = st.st_mode
        row = (p[-1], m, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
        if stat.S_ISDIR(m):
            rows.append(row + results[p])
            continue
        if st.st_nlink > 1:
            return None
        row += (st.st_size, st.st_rdev, st.st_nlink)
        if stat.S_ISREG(m):
            row += known[full]
        elif stat.S_ISLNK(m):
            try:
                row += (os.readlink(full),)
            except OSError:
                return None
        rows.append(row)
    return blake(b"artfs-put-dir\0" + fmt.FORMAT_BYTE + msgpack.packb(rows, use_bin_type=True)).hex()


def _dir_record(row) -> tuple | None:
    """(key, tree stamp, (tree, ident, nfiles, nbytes)) of a directory's stat-cache row."""
    try:
        key, _, stamp = row[0].partition("|")
        tree, ident, nfiles, nbytes = row[1].split(":")
        return key, stamp, (bytes.fromhex(tree), bytes.fromhex(ident), int(nfiles), int(nbytes))
    except ValueError:
        return None


def build_tree_from_dir(store, batch, src: str, progress=None, cache_before: float | None = None,
                        reject_control: bool = True, cache_rows: list | None = None) -> tuple[Entry, dict]:
    """Store a local directory's files and trees in ``batch``; returns (its DIR entry, link table).

    A directory whose children all stat as when a version was last made from it, with the same
    content digests, and whose tree object is still the very file then written, is not encoded
    again: its tree is named as it was (the record is kept in the stat cache).

    With ``cache_rows``, files not yet in the stat cache (and directories whose trees were
    encoded) are appended to it as rows for ``meta.filecache_put``, for the caller to record once
    the version exists."""
    root = os.fsencode(os.path.realpath(src))
    root_st = os.stat(root)  # before the scan reads it (and, with relatime, moves its atime)
    root_x = read_xattrs(root, follow=True)
    if progress:
        progress.phase("scanning")
    items = _scan_sorted(root)
    if reject_control and any(p == (CONTROL_DIR,) for p, _, _ in items):
        raise BadInput(f"{quote(os.path.join(root, CONTROL_DIR))}: the name .artfs is reserved")
    files = [(p, st, full) for p, st, full in items if stat.S_ISREG(st.st_mode)]
    dirs = [(p, full) for p, st, full in items if stat.S_ISDIR(st.st_mode)]
    dirs.reverse()  # deepest first
    dirs.append(((), root))
    cache = store.meta.filecache_get([full for _, _, full in files] + [full + _DIR_REC for _, full in dirs], under=root)
    recs = {}
    for _, full in dirs:
        row = cache.get(full + _DIR_REC)
        rec = _dir_record(row) if row else None
        if rec:
            recs[full] = rec
    trusted = _trusted_devices(root, root_st, items)
    known: dict[bytes, tuple] = {}
    maybe = {}
    for p, st, full in files:
        c = cache.get(full)
        if c and st.st_dev in trusted and c[0].split("|")[0] == _stat_key(st):
            d, _, ch = c[1].partition(":")
            maybe[full] = (bytes.fromhex(d), bytes.fromhex(ch) if ch else None, c[0].partition("|")[2])
    # a cached digest is trusted only while its object is the very file the cache saw (a
    # damaged object -- rewritten, truncated -- has another stamp: the source is read again and
    # the object healed); so is a directory's tree
    stamps = store.objects.stamps({x for m in maybe.values() for x in m[:2] if x is not None}
                                  | {r[2][0] for r in recs.values()})
    todo = []
    for p, st, full in files:
        m = maybe.get(full)
        if (m is not None and m[0] in stamps and stamps[m[0]] == m[2]
                and (m[1] is None) == (st.st_size <= fmt.CHUNK) and (m[1] is None or m[1] in stamps)):
            known[full] = (m[0], st.st_size, m[1])
        else:
            todo.append((st, full))
    if progress:
        progress.phase("hashing")
        progress.total(len(todo), sum(st.st_size for st, _ in todo))

    def store_one(job):
        st, full = job
        try:
            fd = open_nofollow(full, noatime=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BadInput(f"{quote(full)} became a symlink while it was read") from None
            raise _err(full, exc) from None
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise BadInput(f"{quote(full)} was replaced while it was read")
            try:
                d, n, chunks = batch.put_fd(fd)
            except NoSpace:
                raise
            except OSError as exc:
                if exc.errno in _FULL:
                    raise NoSpace(f"no space left in the store at {store.path} ({exc.strerror})") from None
                raise _err(full, exc) from None
            x = read_xattrs(fd)
        finally:
            os.close(fd)
        if progress:
            progress.advance(1, n)
        return full, (d, n, chunks, x)

    xattrs_of: dict[bytes, tuple] = {}
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 2) * 2)) as pool:
        for full, (d, n, chunks, x) in pool.map(store_one, todo):
            known[full] = (d, n, chunks)
            xattrs_of[full] = x

    # hard-link groups: (dev, ino) seen more than once inside the tree
    seen: dict[tuple, int] = {}
    for p, st, full in items:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            seen[(st.st_dev, st.st_ino)] = seen.get((st.st_dev, st.st_ino), 0) + 1
    links: dict[bytes, list] = {}

    def entry(p, st, full) -> Entry:
        mode = stat.S_IMODE(st.st_mode)
        common = dict(name=p[-1], mode=mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                      atime_ns=st.st_atime_ns)
        if stat.S_ISDIR(st.st_mode):
            tree, ident, nfiles, nbytes = results[p]
            return Entry(kind=DIR, size=nbytes, digest=tree, ident=ident, nfiles=nfiles, xattrs=read_xattrs(full),
                         **common)
        hlid = None
        if seen.get((st.st_dev, st.st_ino), 0) > 1:
            hlid = _hlid(st)
            links.setdefault(hlid, []).append(p)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(full)
            except OSError as exc:
                raise _err(full, exc) from None
            return Entry(kind=SYMLINK, size=len(target), target=target, xattrs=read_xattrs(full), hlid=hlid, **common)
        if stat.S_ISREG(st.st_mode):
            d, n, chunks = known[full]
            x = xattrs_of[full] if full in xattrs_of else read_xattrs(full)
            return Entry(kind=FILE, size=n, digest=d, chunks=chunks, xattrs=x, hlid=hlid, **common)
        kind = fmt.KIND_OF_FMT.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            raise BadInput(f"unsupported file type: {quote(full)}")
        return Entry(kind=kind, rdev=st.st_rdev if kind in (fmt.CHR, fmt.BLK) else 0, xattrs=read_xattrs(full),
                     hlid=hlid, **common)

    kids: dict[tuple, list] = {p: [] for p, _ in dirs}
    for item in items:
        kids[item[0][:-1]].append(item)
    results: dict[tuple, tuple] = {}  # a directory's (tree, ident, nfiles, nbytes)
    fresh_dirs = []
    for p, full in dirs:  # deepest first: a directory's key needs its subdirectories' results
        children = kids[p]
        key = _dir_key(children, known, results) if all(c[1].st_dev in trusted for c in children) else None
        rec = recs.get(full)
        if key is not None and rec is not None and rec[0] == key and stamps.get(rec[2][0]) == rec[1]:
            results[p] = rec[2]
            continue
        results[p] = store.write_tree(batch, [entry(*c) for c in children])
        if key is not None and cache_before is not None and all(
                st.st_mtime_ns / 1e9 < cache_before and st.st_ctime_ns / 1e9 < cache_before for _, st, _ in children):
            fresh_dirs.append((full, key, results[p]))
    for paths in links.values():
        paths.sort()
    st = root_st
    tree, ident, nfiles, nbytes = results[()]
    rootent = Entry(b"", DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, nbytes, st.st_mtime_ns, st.st_atime_ns,
                    digest=tree, ident=ident, nfiles=nfiles, xattrs=root_x)
    if cache_rows is not None and cache_before is not None:
        fresh = {full for _, full in todo}
        rows = [(full, st) for p, st, full in files if full in fresh and st.st_dev in trusted
                and st.st_mtime_ns / 1e9 < cache_before and st.st_ctime_ns / 1e9 < cache_before]
        cache_rows.append(("files", rows, known))
        cache_rows.append(("dirs", fresh_dirs, None))
    return rootent, links


def cache_rows_for(store, pending: list) -> list[tuple]:
    """The stat cache's rows once the objects are in place (their stamps known)."""
    out = []
    for kind, rows, known in pending:
        if kind == "dirs":
            stamps = store.objects.stamps({r[2][0] for r in rows})
            for full, key, (tree, ident, nfiles, nbytes) in rows:
                if tree in stamps:
                    out.append((full + _DIR_REC, key + "|" + stamps[tree], f"{tree.hex()}:{ident.hex()}:{nfiles}:{nbytes}"))
            continue
        stamps = store.objects.stamps({known[full][0] for full, _ in rows})
        for full, st in rows:
            d, _, chunks = known[full]
            if d in stamps:
                out.append((full, _stat_key(st) + "|" + stamps[d], d.hex() + (":" + chunks.hex() if chunks else "")))
    return out


def put_dir(store, name: str, src: str, type_: str | None = None, message: str | None = None,
            metadata: dict | None = None, description: str | None = None, progress=None) -> tuple[VersionInfo, bool]:
    """A new version whose content is exactly ``src``; ``(version, unchanged)``."""
    check_artifact_name(name)
    if not os.path.isdir(src):
        raise BadInput(f"not a directory: {src}")
    start = time.time()
    cache_rows: list = []
    with store.writing():
        with store.objects.batch() as b:
            root, links = build_tree_from_dir(store, b, src, progress=progress, cache_before=start - 2,
                                              cache_rows=cache_rows)
            if progress:
                progress.phase("syncing")
        num, unchanged, _ = create_version(store, name, type_, root, links, base=None, expected=ANY, message=message,
                                           metadata=metadata, how="single", description=description)
    # only once the version exists: a cached digest is then one a version reaches
    store.meta.filecache_put(cache_rows_for(store, cache_rows))
    return version(store, name, num), unchanged
