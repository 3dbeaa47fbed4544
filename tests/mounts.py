"""Helpers for tests that mount: run `artfs` as users do, always unmount.

``Mounted`` starts ``artfs mount`` in a subprocess (which returns once the
daemon serves), and on exit unmounts with ``fusermount3 -u``, then ``-u -z``
if busy, then kills the daemon by its pid — even when the test failed.

Waiting helpers (shared by the tests of several processes): every wait is on
the event itself -- a process's exit through a pidfd, a pipe a child writes to
or closes (EOF when it dies), a FIFO, inotify on a directory -- against a
deadline that only bounds a hang.  No sleeps, no timing asserts.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from artfs.proc import alive

ARTFS = [sys.executable, "-m", "artfs.cli"]

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or subprocess.run(["which", "fusermount3"], capture_output=True).returncode != 0,
    reason="needs /dev/fuse and fusermount3",
)


def artfs(store: str, *args, check: bool = True, input: bytes | None = None, timeout: float = 120, env=None):
    """Run the CLI; returns the CompletedProcess (text)."""
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(ARTFS + ["--store", store, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=e, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"artfs {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def daemon_pid(mnt: str) -> int | None:
    try:
        with open(os.path.join(mnt, ".artfs", "pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


# -- waiting on events -----------------------------------------------------------------------

def wait_gone(pid: int, timeout: float) -> bool:
    """Wait (on a pidfd) until process ``pid`` has exited; a zombie counts as gone (it has closed
    everything; daemons are reparented to init, which may reap late).  False at the deadline."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd here: say what /proc says, without waiting
        return not alive(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def proc_fd(proc: subprocess.Popen) -> int | None:
    """A pidfd of a child (readable once it exits), or None if it is already gone."""
    if proc.poll() is not None:
        return None
    try:
        return os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return None


def _stderr_of(proc) -> str:
    err = getattr(proc, "stderr", None)
    if err is None or proc.poll() is None:
        return ""
    try:
        data = err.read()
    except (OSError, ValueError):
        return ""
    return (data.decode(errors="replace") if isinstance(data, bytes) else data)[-2000:]


def read_pipe(fd: int, what: str, timeout: float) -> bytes:
    """Wait for a child to write to (or close) the read end ``fd`` of a pipe or FIFO; returns what
    it wrote, b"" if it closed without writing.  A pipe gives EOF when the child dies."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{what}: nothing after {timeout:.0f} s (a hang)"
        if select.select([fd], [], [], left)[0]:
            try:
                return os.read(fd, 4096)
            except BlockingIOError:  # woken, but another reader took it
                continue


def expect_ready(fd: int, what: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> bytes:
    """``read_pipe`` that fails (with the child's stderr) when the child ended instead of writing."""
    data = read_pipe(fd, what, timeout)
    if not data and proc is not None:
        proc.wait(timeout=timeout)
        raise AssertionError(f"{what}: the process ended (exit {proc.returncode}) before it was ready: "
                             f"{_stderr_of(proc)}")
    return data


class ReadyFifo:
    """A FIFO at ``path`` that a child opens and closes (``open(path, "w").close()``, ``touch``,
    ``echo > path``) to say something happened; opened for reading before the child starts,
    so neither side blocks, and readable from the moment the child closes it."""

    def __init__(self, path: str):
        self.path = str(path)
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def wait(self, what: str, procs=(), timeout: float = 60) -> bytes:
        """Wait for the FIFO's writer to write or close it; fail fast if one of ``procs`` ends
        first."""
        deadline = time.monotonic() + timeout
        pfds = {proc_fd(p): p for p in procs}
        try:
            dead = [p for fd, p in pfds.items() if fd is None]
            assert not dead, f"{what}: a process ended first: {_stderr_of(dead[0])}"
            data = b""
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{what}: nothing after {timeout:.0f} s (a hang)"
                ready = select.select([self.fd, *pfds], [], [], left)[0]
                if self.fd in ready:
                    try:
                        chunk = os.read(self.fd, 4096)
                    except BlockingIOError:
                        continue
                    data += chunk
                    if not chunk:  # the writer closed it: done
                        return data
                    continue
                for fd in ready:
                    raise AssertionError(f"{what}: a process ended first (exit {pfds[fd].wait()}): "
                                         f"{_stderr_of(pfds[fd])}")
        finally:
            for fd in pfds:
                if fd is not None:
                    os.close(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW = 0x100, 0x200, 0x4000
_EVENT = struct.Struct("iIII")


class Inotify:
    """inotify (through libc): ``watch(dir, mask)``, then ``events(timeout)`` returns
    ``[(dir, name, mask)]`` -- what happened in the watched directories, as it happens."""

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.dirs: dict[int, str] = {}

    def watch(self, path: str, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.dirs[wd] = str(path)

    def events(self, timeout: float | None = 0) -> list[tuple[str, str, int]]:
        """The events so far; waits up to ``timeout`` for the first one (None: forever)."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        out = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            off = 0
            while off < len(buf):
                wd, mask, _cookie, size = _EVENT.unpack_from(buf, off)
                name = buf[off + _EVENT.size: off + _EVENT.size + size].rstrip(b"\0").decode(errors="replace")
                assert not mask & IN_Q_OVERFLOW, "inotify queue overflowed: events were lost"
                out.append((self.dirs.get(wd, "?"), name, mask))
                off += _EVENT.size + size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Inotify":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(cond, what: str, *, inotify: Inotify, procs=(), timeout: float = 60, recheck: float = 1.0):
    """Wait until ``cond()`` is true, checking it again each time something happens in the
    directories ``inotify`` watches (e.g. a store's database being written); fails fast if one of
    ``procs`` ends first.  ``recheck`` only bounds a lost wake-up (a change made visible after
    its last write, e.g. SQLite's WAL index, which is shared memory), it is not a poll for the
    condition: the waits end on events."""
    deadline = time.monotonic() + timeout
    pfds = {proc_fd(p): p for p in procs}
    try:
        while True:
            value = cond()
            if value:
                return value
            dead = [p for fd, p in pfds.items() if fd is None]
            assert not dead, f"{what}: a process ended first (exit {dead[0].returncode}): {_stderr_of(dead[0])}"
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: still not true after {timeout:.0f} s (a hang)"
            ready = select.select([inotify.fd, *[fd for fd in pfds if fd is not None]], [], [], min(left, recheck))[0]
            if inotify.fd in ready:
                inotify.events()
            for fd in ready:
                if fd != inotify.fd:
                    p = pfds[fd]
                    raise AssertionError(f"{what}: a process ended first (exit {p.wait()}): {_stderr_of(p)}")
    finally:
        for fd in pfds:
            if fd is not None:
                os.close(fd)


def wait_events(inotify: Inotify, n: int, what: str, *, procs=(), timeout: float = 60) -> list:
    """Wait until ``inotify`` has reported ``n`` more events (a point in a process's progress, e.g.
    where to kill it); returns them.  Ends early, with what it has, when one of ``procs`` exits
    (the work being watched is over)."""
    deadline = time.monotonic() + timeout
    got: list = []
    pfds = [fd for fd in (proc_fd(p) for p in procs) if fd is not None]
    try:
        if len(pfds) < len(procs):
            return got
        while len(got) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: {len(got)} of {n} events after {timeout:.0f} s (a hang)"
            ready = select.select([inotify.fd, *pfds], [], [], left)[0]
            if inotify.fd in ready:
                got += inotify.events()
            if any(fd in ready for fd in pfds):
                return got
        return got
    finally:
        for fd in pfds:
            os.close(fd)


def force_unmount(mnt: str, pid: int | None = None) -> None:
    """Unmount whatever state the mount is in; never raises."""
    if pid is None and is_mounted(mnt):
        pid = daemon_pid(mnt)
    if is_mounted(mnt):
        if subprocess.run(["fusermount3", "-u", mnt], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    if pid and not wait_gone(pid, 10):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if wait_gone(pid, 5):
                break


class Mounted:
    """Context manager: ``with Mounted(store, "mnist:draft", mnt) as m: ...``"""

    def __init__(self, store: str, ref: str, mnt: str, *extra: str):
        self.store, self.ref, self.mnt, self.extra = store, ref, str(mnt), extra
        self.pid: int | None = None

    def __enter__(self) -> "Mounted":
        os.makedirs(self.mnt, exist_ok=True)
        artfs(self.store, "mount", self.ref, self.mnt, *self.extra, timeout=60)
        assert is_mounted(self.mnt), f"{self.mnt} not mounted after artfs mount returned"
        self.pid = daemon_pid(self.mnt)
        assert self.pid, "no daemon pid in .artfs/pid"
        return self

    def __exit__(self, *exc) -> None:
        force_unmount(self.mnt, self.pid)

    def path(self, *parts: str) -> str:
        return os.path.join(self.mnt, *parts)

    def commit(self, message: str = "") -> str:
        with open(self.path(".artfs", "commit"), "w") as f:
            f.write(message or "\n")
        with open(self.path(".artfs", "commit")) as f:
            return f.read().strip()

    def status(self) -> list[str]:
        with open(self.path(".artfs", "status")) as f:
            return f.read().splitlines()

    def kill(self) -> None:
        """SIGKILL the daemon (fault tests), then clear the dead mount."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            wait_gone(self.pid, 10)
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)


def sh(cmd: str, cwd: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def tree_snapshot(root: str, content: bool = True, times: bool = False) -> dict:
    """path -> (kind, mode, size, digest|target[, mtime]) for comparing directory trees."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            import stat as st_

            if st_.S_ISLNK(st.st_mode):
                rec = ("l", os.readlink(full))
            elif st_.S_ISDIR(st.st_mode):
                rec = ("d", st_.S_IMODE(st.st_mode))
            else:
                data = open(full, "rb").read() if content else b""
                rec = ("f", st_.S_IMODE(st.st_mode), st.st_size, hashlib.sha256(data).hexdigest())
            if times and not st_.S_ISLNK(st.st_mode):
                rec = rec + (st.st_mtime_ns,)
            out[rel] = rec
    return out


@pytest.fixture
def mstore(tmp_path, backend, request):
    """A fresh store path for mount tests (initialised through the CLI; with the scale-out back
    end, a fresh scale-out store's description); fsck must pass at the end."""
    if backend == "scaleout":
        s = request.getfixturevalue("store_path")
    else:
        s = str(tmp_path / "mstore")
        artfs(s, "init")
    yield s
    p = artfs(s, "fsck", check=False)
    assert p.returncode == 0, f"fsck after test: {p.stdout}{p.stderr}"
