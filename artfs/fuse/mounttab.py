"""The kernel's view of mounts: what is mounted where, dead mounts, who holds one busy.

A mount whose daemon died stays in the kernel's table; every access to it
fails with ENOTCONN, so ``os.path.ismount`` and ``os.path.exists`` call it
"not there".  The commands recognise it from ``/proc/self/mountinfo`` instead
and clean it up with a lazy unmount.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import subprocess
import time

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def kernel_mount(path: str) -> dict | None:
    """The kernel's entry for a mount at ``path`` (absolute): {"fstype", "source", "options"}."""
    path = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and _unescape(fields[4]) == path and len(tail) >= 2:
            found = {"fstype": tail[0], "source": _unescape(tail[1]), "options": fields[5] if len(fields) > 5 else ""}
    return found  # the last one listed is the one on top


def is_artfs(m: dict | None) -> bool:
    return m is not None and m["fstype"].startswith("fuse") and "artfs" in (m["fstype"] + m["source"])


def is_dead(path: str) -> bool:
    """A FUSE mount in the kernel's table whose daemon is gone.  statfs always reaches the daemon
    (stat may be answered from the kernel's attribute cache, an hour for a version)."""
    if not is_artfs(kernel_mount(path)):
        return False
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(path: str) -> bool:
    return subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True).returncode == 0


def holders(path: str) -> list[tuple[int, str]]:
    """Processes using something under ``path`` (cwd, root, open files), like ``fuser -m``."""
    path = os.path.abspath(path)
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == path or target.startswith(path + "/"):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
                out.append((int(pid), name))
                break
    return out


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process to end (a pidfd: the event itself, no polling); True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel): watch /proc
        deadline = time.monotonic() + timeout
        from ..proc import alive

        while alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            from ..proc import alive

            return not alive(pid)  # a zombie counts as gone (init may reap late)
        return True
    finally:
        os.close(fd)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child: get ``sig`` when the parent dies (a killed ``artfs run`` takes its mounts along)."""
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


# -- the store's own list of its mounts (``artfs mounts``) -------------------------------------

def _registry(store) -> str:
    d = os.path.join(store.state_dir, "mounts")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def register(store, ref: str, mountpoint: str) -> str:
    """Record a serving mount (the daemon calls this; the file goes when it exits)."""
    import json

    path = os.path.join(_registry(store), f"{os.getpid()}.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"ref": ref, "mountpoint": os.path.abspath(mountpoint), "pid": os.getpid(),
                   "started": time.time()}, f)
    os.rename(tmp, path)
    return path


def registered(store) -> list[dict]:
    """The store's mounts on this machine: alive ones, and dead ones the kernel still lists."""
    import json

    from ..proc import alive

    out = []
    d = _registry(store)
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, name)) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        live = alive(r["pid"])
        listed = kernel_mount(r["mountpoint"]) is not None
        if not live and (not listed or not is_dead(r["mountpoint"])):
            try:  # gone for good (or something else, alive, is mounted there now): forget it
                os.unlink(os.path.join(d, name))
            except OSError:
                pass
            continue
        r["alive"] = live and listed
        out.append(r)
    return out
