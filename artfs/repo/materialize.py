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
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..errors import BadInput, Corrupt
from ..storage import format as fmt
from ..storage.format import BLK, CHR, DIR, FIFO, FILE, REF, SOCK, SYMLINK, Entry
from .content import iter_content
from .versions import VersionInfo, walk

_SKIP_XATTR = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP)


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
            for buf in iter_content(store, e):
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view):]
            _set_xattrs(fd, e)
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
