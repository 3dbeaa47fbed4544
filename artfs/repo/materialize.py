"""``export``: materialise a version as a plain directory, without FUSE.

Every byte written was verified first (content.py).  Files are created 0600
and get their recorded mode only once their content is complete, directories
0700 until everything below them is written, so no other user can read a
half-written or private file in between.  Hard-link groups become hard links,
special files become special files (devices need root, as with ``cp -a``),
xattrs, atime, mtime and (as root) owners are restored.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..errors import BadInput, Corrupt
from ..storage import format as fmt
from ..storage.format import BLK, CHR, DIR, FIFO, FILE, REF, SOCK, SYMLINK, Entry
from ..storage.hashing import write_sparse
from .content import iter_content
from .versions import VersionInfo, walk

_SKIP_XATTR = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP)


def _fill(store, fd: int, e: Entry) -> None:
    """Write a file entry's verified content and its xattrs into fd, a new empty file (Corrupt
    if a piece fails).  All-zero blocks are not written: the file gets holes there, and its
    length from ftruncate."""
    off = 0
    for buf in iter_content(store, e):
        write_sparse(fd, buf, off)
        off += len(buf)
    if os.fstat(fd).st_size != off:  # it ends in a hole
        os.ftruncate(fd, off)
    _set_xattrs(fd, e)


def _set_xattrs(target, e: Entry, follow: bool = True) -> None:
    for k, v in e.xattrs:
        try:
            if isinstance(target, int):
                os.setxattr(target, k, v)
            else:
                os.setxattr(target, k, v, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _SKIP_XATTR:  # trusted.*/security.* need root; user.* not on symlinks
                raise


def _finish_node(path: str, e: Entry, is_root_user: bool, follow: bool = True) -> None:
    if e.kind != SYMLINK:
        os.chmod(path, e.mode, follow_symlinks=follow)
    if is_root_user:
        os.chown(path, e.uid, e.gid, follow_symlinks=follow)
        if e.kind != SYMLINK and e.mode & 0o6000:
            os.chmod(path, e.mode, follow_symlinks=follow)  # chown clears setuid/setgid
    os.utime(path, ns=(e.atime_ns, e.mtime_ns), follow_symlinks=follow)


def _make_socket(path: str, dest: str) -> None:
    """A Unix socket file at ``path`` (bound under a short name, then moved: sun_path is short)."""
    tmp = os.path.join(dest, f".s{uuid.uuid4().hex[:8]}")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(tmp if len(os.fsencode(tmp)) < 100 else os.path.relpath(tmp))
    finally:
        s.close()
    os.rename(tmp, path)


def export(store, v: VersionInfo, dest: str, progress=None) -> int:
    """Materialise a version into ``dest`` (created; must be empty); returns files written."""
    try:
        if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
            raise BadInput(f"{dest} exists and is not an empty directory")
        os.makedirs(dest, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot write {dest}: {exc.strerror}") from None
    if progress:
        progress.phase("exporting")
        progress.total(v.file_count, v.total_bytes)
    is_root_user = os.geteuid() == 0
    dirs: list[tuple[str, Entry]] = []
    first_of: dict[bytes, str] = {}
    links: list[tuple[str, str]] = []
    jobs: list[tuple[Entry, str]] = []
    others: list[tuple[str, Entry]] = []
    skipped = 0
    for p, e in walk(store, v.root):
        out = os.path.join(dest, os.fsdecode(b"/".join(p)))
        if e.kind == DIR:
            os.mkdir(out, 0o700)
            dirs.append((out, e))
            continue
        if e.hlid is not None:
            if e.hlid in first_of:
                links.append((first_of[e.hlid], out))
                continue
            first_of[e.hlid] = out
        if e.kind in (FILE, REF):
            jobs.append((e, out))
        elif e.kind == SYMLINK:
            os.symlink(e.target, out)
            others.append((out, e))
        elif e.kind == FIFO:
            os.mkfifo(out, 0o600)
            others.append((out, e))
        elif e.kind == SOCK:
            _make_socket(out, dest)
            others.append((out, e))
        elif e.kind in (CHR, BLK):
            try:
                os.mknod(out, 0o600 | fmt.FMT_OF[e.kind], e.rdev)
            except PermissionError:
                skipped += 1  # devices need CAP_MKNOD, as for cp -a
                continue
            others.append((out, e))

    def write_file(job) -> None:
        e, out = job
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _fill(store, fd, e)
        except Corrupt:
            os.close(fd)
            fd = -1
            os.unlink(out)  # the bytes failed verification: leave no file that looks exported
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        _finish_node(out, e, is_root_user)
        if progress:
            progress.advance(1, e.size)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write_file, jobs))
    for out, e in others:
        _set_xattrs(out, e, follow=e.kind != SYMLINK)
        _finish_node(out, e, is_root_user, follow=e.kind != SYMLINK)
    for src, out in links:
        os.link(src, out, follow_symlinks=False)
    for out, e in reversed(dirs):
        _set_xattrs(out, e)
        _finish_node(out, e, is_root_user)
    root = v.root_entry()
    _set_xattrs(dest, root)
    _finish_node(dest, root, is_root_user)
    if skipped and progress:
        progress.note(f"{skipped} device file(s) not created: that needs root")
    return len(jobs)


def refresh(store, v: VersionInfo, dest: str, prune: bool = False) -> dict:
    """Make ``dest`` hold the version's files again, reusing what is already right: a file whose
    bytes hash to the recorded digest is kept, a missing or different one is written anew (to a
    temporary name, then renamed).  ``prune``: also remove what the version does not have (W&B's
    ``checkout``).  Returns counts."""
    from ..storage.hashing import hash_fd
    from .content import open_nofollow

    if not os.path.isdir(dest) or not os.listdir(dest):
        return {"written": export(store, v, dest), "kept": 0, "removed": 0}
    written = kept = removed = 0
    want: set[str] = set()
    for p, e in walk(store, v.root):
        out = os.path.join(dest, os.fsdecode(b"/".join(p)))
        want.add(out)
        if e.kind == DIR:
            if not os.path.isdir(out):
                if os.path.lexists(out):
                    os.unlink(out)
                os.mkdir(out, 0o700)
                _finish_node(out, e, os.geteuid() == 0)
            continue
        if e.kind not in (FILE, REF):
            continue
        try:
            fd = open_nofollow(out)
            try:
                same = os.fstat(fd).st_size == e.size and hash_fd(fd)[0] == e.digest
            finally:
                os.close(fd)
        except OSError:
            same = False
        if same:
            kept += 1
            continue
        tmp = os.path.join(os.path.dirname(out), f".artfs-{uuid.uuid4().hex[:12]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _fill(store, fd, e)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        _finish_node(tmp, e, os.geteuid() == 0)
        if os.path.isdir(out) and not os.path.islink(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
        written += 1
    if prune:
        for dirpath, dirs, files in os.walk(dest, topdown=False):
            for name in files + dirs:
                full = os.path.join(dirpath, name)
                if full not in want:
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full)
                    else:
                        os.unlink(full)
                    removed += 1
    return {"written": written, "kept": kept, "removed": removed}
