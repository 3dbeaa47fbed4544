"""``artfs mount / umount / commit / status``: thin wrappers over the daemon and `.artfs/`."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import click

from ..errors import ArtfsError, BadInput
from ..refs import parse_ref
from . import mounttab

READY_TIMEOUT = 60.0


def _check_mountpoint(mnt: str) -> str:
    mnt = os.path.abspath(mnt)
    if mounttab.is_dead(mnt):
        mounttab.lazy_unmount(mnt)
        print(f"artfs: {mnt} was a dead artfs mount (its daemon had died); removed it", file=sys.stderr)
    if not os.path.exists(mnt):
        raise BadInput(f"mountpoint {mnt} does not exist")
    if not os.path.isdir(mnt):
        raise BadInput(f"mountpoint {mnt} is not a directory")
    if os.path.ismount(mnt):
        raise BadInput(f"{mnt} is already a mount point (artfs umount {mnt} first)")
    if os.listdir(mnt):
        raise BadInput(f"mountpoint {mnt} is not empty")
    if not os.path.exists("/dev/fuse"):
        raise ArtfsError("/dev/fuse is missing: install fuse3 and load the fuse module")
    return mnt


def mount(store, ref_text: str, mnt: str, foreground=False, allow_other=False, debug=False, distributed_id=None) -> None:
    """Mount ``ref_text`` at ``mnt``; returns once it is serving (or raises with the reason)."""
    from .. import repo

    if repo.is_draft_key(ref_text):
        repo.draft_by_key(store, ref_text)  # a draft by key (`artfs drafts` lists them)
        ref = None
    else:
        ref = parse_ref(ref_text)
    if ref is None:
        pass
    elif not ref.draft:
        repo.resolve(store, ref)  # unknown refs fail here, on the user's terminal
    elif distributed_id is None:
        from ..refs import check_artifact_name

        check_artifact_name(ref.name)
    mnt = _check_mountpoint(mnt)
    if foreground:
        from .daemon import serve

        code = serve(store.path, ref_text, mnt, foreground=True, allow_other=allow_other, debug=debug,
                     distributed_id=distributed_id, ready=lambda m: print(m if m != "ok" else f"mounted {ref_text} at {mnt}", file=sys.stderr))
        if code:
            raise SystemExit(code)
        return
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "artfs.fuse.daemon", "--store", store.path, "--ready-fd", str(w)]
    if allow_other:
        cmd.append("--allow-other")
    if debug:
        cmd.append("--debug")
    if distributed_id:
        cmd += ["--distributed-id", distributed_id]
    cmd += [ref_text, mnt]
    log_fd = os.open(os.path.join(store.log_dir(), "daemon-stderr.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log_fd, start_new_session=True)
    finally:
        os.close(log_fd)
    os.close(w)
    msg = read_ready(r, lambda: f"mount daemon exited with status {proc.wait()} (see the store's logs/)")
    if msg != "ok":
        if proc.poll() is None:
            proc.terminate()
        raise ArtfsError(msg[len("error: "):] if msg.startswith("error: ") else msg)


def read_ready(r: int, on_eof, timeout: float = READY_TIMEOUT) -> str:
    """The daemon's first line on the ready pipe ('ok' or 'error: ...'); closes the pipe.

    ``on_eof()`` describes a daemon that closed the pipe without a word."""
    buf = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(r, False)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(r, 4096)
            except BlockingIOError:
                chunk = None
            if chunk:
                buf += chunk
                if b"\n" in buf:
                    return buf.split(b"\n", 1)[0].decode()
            elif chunk == b"":
                return buf.decode().strip() or on_eof()
            time.sleep(0.005)
        return "mount daemon did not become ready in time"
    finally:
        os.close(r)


def daemon_pid(mnt: str) -> int | None:
    try:
        with open(os.path.join(mnt, ".artfs", "pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def umount(mnt: str, timeout: float = 30.0) -> str:
    """Unmount and wait for the daemon to exit; returns what happened (one line)."""
    mnt = os.path.abspath(mnt)
    if mounttab.is_dead(mnt):
        if not mounttab.lazy_unmount(mnt):
            raise ArtfsError(f"{mnt} is a dead mount and fusermount3 -u -z failed")
        return f"{mnt} was a dead mount (its daemon had died); removed it"
    if not os.path.ismount(mnt):
        raise BadInput(f"{mnt} is not mounted")
    pid = daemon_pid(mnt)
    p = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        if "busy" in why.lower():
            users = mounttab.holders(mnt)
            who = ", ".join(f"{name} (pid {pid_})" for pid_, name in users[:10]) or "an unknown process"
            raise ArtfsError(f"{mnt} is busy: used by {who}")
        raise ArtfsError(why)
    if pid and not mounttab.wait_exit(pid, timeout):
        return f"unmounted {mnt} (its daemon, pid {pid}, is still finishing)"
    return f"unmounted {mnt}"


def _ctl(mnt: str, name: str) -> str:
    path = os.path.join(os.path.abspath(mnt), ".artfs", name)
    if mounttab.is_dead(mnt):
        raise ArtfsError(f"the artfs mount at {os.path.abspath(mnt)} is dead (its daemon died);"
                         f" remove it with: artfs umount {mnt}")
    if not os.path.exists(path):
        raise BadInput(f"{mnt} is not an artfs mount")
    return path


def commit(mnt: str, message: str | None, finish: bool = False) -> str:
    path = _ctl(mnt, "finish" if finish else "commit")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise BadInput(f"{mnt} is a read-only version; mount NAME:draft to commit") from None
        raise
    try:
        os.write(fd, (message or "").encode() or b"\n")
    except OSError as exc:
        why = ""
        try:
            with open(path) as f:
                why = f.read().strip()
        except OSError:
            pass
        if why.startswith("error: "):
            raise ArtfsError(f"{'finish' if finish else 'commit'} failed: {why[len('error: '):]}") from None
        raise ArtfsError(f"commit failed: {exc.strerror} (see the store's logs/ for details)") from None
    finally:
        os.close(fd)
    with open(path) as f:
        return f.read().strip()


def status(mnt: str) -> str:
    with open(_ctl(mnt, "status")) as f:
        return f.read()


def register(group) -> None:
    """Add the mount commands to the CLI's click group."""
    from ..cli import pass_env

    @group.command("mount")
    @click.argument("ref")
    @click.argument("mountpoint")
    @click.option("--foreground", "-f", is_flag=True, help="stay attached and serve until unmounted")
    @click.option("-o", "options", multiple=True, help="mount option (allow_other)")
    @click.option("--debug", is_flag=True)
    @click.option("--distributed-id", default=None, help="upsert into this collaborative version")
    @pass_env
    def mount_cmd(env, ref, mountpoint, foreground, options, debug, distributed_id):
        """Mount a version read-only, or NAME:draft writable."""
        opts = {o for opt in options for o in opt.split(",") if o}
        unknown = opts - {"allow_other"}
        if unknown:
            raise BadInput(f"unknown mount option(s): {', '.join(sorted(unknown))}")
        mount(env.store(), ref, mountpoint, foreground, "allow_other" in opts, debug, distributed_id)
        if not foreground:
            click.echo(f"mounted {ref} at {os.path.abspath(mountpoint)}")

    @group.command("umount")
    @click.argument("mountpoint")
    def umount_cmd(mountpoint):
        """Unmount and wait for the daemon to exit (also cleans up a mount whose daemon died).

        Example: artfs umount /mnt/d
        """
        msg = umount(mountpoint)
        if "dead" in msg or "still" in msg:
            click.echo(f"artfs: {msg}", err=True)

    @group.command("commit")
    @click.argument("mountpoint")
    @click.option("-m", "--message", default=None)
    def commit_cmd(mountpoint, message):
        """Commit a draft mount (the same as writing to .artfs/commit)."""
        click.echo(commit(mountpoint, message))

    @group.command("status")
    @click.argument("mountpoint")
    def status_cmd(mountpoint):
        """A draft's changes (the same as reading .artfs/status)."""
        click.echo(status(mountpoint), nl=False)
