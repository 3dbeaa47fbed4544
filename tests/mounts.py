"""Helpers for tests that mount: run `artfs` as users do, always unmount.

``Mounted`` starts ``artfs mount`` in a subprocess (which returns once the
daemon serves), and on exit unmounts with ``fusermount3 -u``, then ``-u -z``
if busy, then kills the daemon by its pid — even when the test failed.
"""
from __future__ import annotations

import os
import signal
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


def force_unmount(mnt: str, pid: int | None = None) -> None:
    """Unmount whatever state the mount is in; never raises."""
    if pid is None and is_mounted(mnt):
        pid = daemon_pid(mnt)
    if is_mounted(mnt):
        if subprocess.run(["fusermount3", "-u", mnt], capture_output=True).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    if pid:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not alive(pid):
                break
            time.sleep(0.01)
        else:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.2)


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
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and alive(self.pid):
                time.sleep(0.01)
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
def mstore(tmp_path):
    """A fresh store path for mount tests (initialised through the CLI); fsck must pass at the end."""
    s = str(tmp_path / "mstore")
    artfs(s, "init")
    yield s
    p = artfs(s, "fsck", check=False)
    assert p.returncode == 0, f"fsck after test: {p.stdout}{p.stderr}"
