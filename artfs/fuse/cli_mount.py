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
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ArtfsError("cannot open /dev/fuse: permission denied (mounting needs read-write access to it:"
                         " ask for the 'fuse' group, or mount as root)")
    return mnt


def mount(store, ref_text: str, mnt: str, foreground=False, allow_other=False, debug=False, distributed_id=None,
          type_: str | None = None) -> None:
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
                     distributed_id=distributed_id, type_=type_, ready=lambda m: print(m if m != "ok" else f"mounted {ref_text} at {mnt}", file=sys.stderr))
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
    if type_:
        cmd += ["--type", type_]
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


def umount(mnt: str, timeout: float = 30.0) -> tuple[str, bool]:
    """Unmount and wait for the daemon to exit; returns what happened (one line) and whether the
    user should hear it (a dead mount cleaned up, a daemon still finishing)."""
    mnt = os.path.abspath(mnt)
    if mounttab.is_dead(mnt):
        if not mounttab.lazy_unmount(mnt):
            raise ArtfsError(f"{mnt} is a dead mount and fusermount3 -u -z failed")
        return f"{mnt} was a dead mount (its daemon had died); removed it", True
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
        return f"unmounted {mnt} (its daemon, pid {pid}, is still finishing)", True
    return f"unmounted {mnt}", False


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


MOUNT_OPTIONS = {"allow_other"}
# generic options mount(8) and fstab pass along that mean nothing to artfs
IGNORED_OPTIONS = {"rw", "ro", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "suid",
                   "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime", "async", "sync"}


def _parse_options(options) -> dict:
    """-o a,b,key=value -> {"allow_other": True, "store": ..., "type": ..., "distributed_id": ...}."""
    out = {}
    for opt in options:
        for o in opt.split(","):
            if not o or o in IGNORED_OPTIONS or o.startswith("x-"):
                continue
            k, sep, v = o.partition("=")
            if k in MOUNT_OPTIONS and not sep:
                out[k] = True
            elif k in ("store", "type", "distributed_id") and sep and v:
                out[k] = v
            else:
                raise BadInput(f"unknown mount option {o!r} (artfs takes allow_other, store=, type=, distributed_id=)")
    return out


def mount_helper(argv=None) -> None:
    """``mount.fuse.artfs REF MOUNTPOINT [-o OPTIONS]``: what ``mount -t fuse.artfs`` and an
    ``/etc/fstab`` line (``mnist:v3 /mnt/m fuse.artfs store=/data/store,allow_other 0 0``) run."""
    from ..cli import main

    args = list(sys.argv[1:] if argv is None else argv)
    pos, opts = [], []
    i = 0
    while i < len(args):
        if args[i] == "-o" and i + 1 < len(args):
            opts.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith("-o") and len(args[i]) > 2:
            opts.append(args[i][2:])
        elif args[i] in ("-n", "-s", "-f", "-v"):  # mount(8)'s own flags
            pass
        else:
            pos.append(args[i])
        i += 1
    if len(pos) != 2:
        print("usage: mount.fuse.artfs REF MOUNTPOINT [-o store=PATH,allow_other,...]", file=sys.stderr)
        raise SystemExit(2)
    try:
        parsed = _parse_options(opts)
    except BadInput as exc:
        print(f"artfs: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    cli_args = ["--store", parsed["store"]] if "store" in parsed else []
    cli_args += ["mount", pos[0], pos[1]]
    if parsed.get("allow_other"):
        cli_args += ["-o", "allow_other"]
    if "type" in parsed:
        cli_args += ["--type", parsed["type"]]
    if "distributed_id" in parsed:
        cli_args += ["--distributed-id", parsed["distributed_id"]]
    main(cli_args)


def register(group) -> None:
    """Add the mount commands to the CLI's click group."""
    from ..cli import pass_env

    @group.command("mount")
    @click.argument("ref")
    @click.argument("mountpoint")
    @click.option("--foreground", "-f", is_flag=True, help="stay attached and serve until unmounted")
    @click.option("-o", "options", multiple=True, help="mount options: allow_other")
    @click.option("--debug", is_flag=True)
    @click.option("--distributed-id", default=None, help="upsert into this collaborative version")
    @click.option("--type", "type_", metavar="T", help="the artifact's type, for a draft of a new artifact")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @pass_env
    def mount_cmd(env, ref, mountpoint, foreground, options, debug, distributed_id, type_, as_json):
        """Mount a version read-only, or NAME:draft writable; returns once it serves.

        Example: artfs mount mnist:draft /mnt/d
        """
        opts = _parse_options(options)
        if "store" in opts or "type" in opts or "distributed_id" in opts:
            raise BadInput("store=, type= and distributed_id= are for mount(8): use --store, --type, --distributed-id")
        mount(env.store(), ref, mountpoint, foreground, bool(opts.get("allow_other")), debug, distributed_id, type_)
        if not foreground:
            mnt = os.path.abspath(mountpoint)
            if as_json:
                from .mounttab import registered

                me = [r for r in registered(env.store()) if r["mountpoint"] == mnt]
                click.echo(__import__("json").dumps({"ref": ref, "mountpoint": mnt,
                                                     "pid": me[0]["pid"] if me else daemon_pid(mnt)}))
            else:
                click.echo(f"mounted {ref} at {mnt}")

    @group.command("umount")
    @click.argument("mountpoint")
    def umount_cmd(mountpoint):
        """Unmount and wait for the daemon to exit (also cleans up a mount whose daemon died).

        Example: artfs umount /mnt/d
        """
        msg, tell = umount(mountpoint)
        if tell:
            click.echo(f"artfs: {msg}", err=True)

    @group.command("commit")
    @click.argument("mountpoint")
    @click.option("-m", "--message", default=None)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def commit_cmd(mountpoint, message, as_json):
        """Commit a draft mount (the same as writing to .artfs/commit).

        Example: artfs commit /mnt/d -m "fix labels"
        """
        out = commit(mountpoint, message)
        if as_json:
            ref, _, rest = out.partition(" ")
            click.echo(__import__("json").dumps({"ref": ref, "unchanged": rest == "(unchanged)", "outcome": out}))
        else:
            click.echo(out)

    @group.command("status")
    @click.argument("mountpoint")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def status_cmd(mountpoint, as_json):
        """A draft's changes (the same as reading .artfs/status).

        Example: artfs status /mnt/d
        """
        text = status(mountpoint)
        if as_json:
            from ..names import unquote

            rows = []
            for line in text.splitlines():
                code, _, q = line.partition(" ")
                b = unquote(q)
                rows.append({"status": code, **__import__("artfs.names", fromlist=["json_path"]).json_path(b)})
            click.echo(__import__("json").dumps(rows, indent=2))
        else:
            click.echo(text, nl=False)

    @group.command("install-mount-helper")
    @click.option("--dir", "target_dir", default="/sbin", show_default=True, metavar="DIR")
    def install_helper_cmd(target_dir):
        """Install mount.fuse.artfs where mount(8) looks, so `mount -t fuse.artfs` and fstab work.

        Example: artfs install-mount-helper   (then: mount -t fuse.artfs mnist:v3 /mnt/m -o store=/data/s)
        """
        path = os.path.join(target_dir, "mount.fuse.artfs")
        helper = os.path.join(os.path.dirname(sys.executable), "mount.fuse.artfs")
        body = f"#!/bin/sh\n# installed by artfs install-mount-helper\nexec {helper} \"$@\"\n"
        try:
            with open(path + ".tmp", "w") as f:
                f.write(body)
            os.chmod(path + ".tmp", 0o755)
            os.rename(path + ".tmp", path)
        except OSError as exc:
            raise ArtfsError(f"cannot write {path}: {exc.strerror} (as root: sudo artfs install-mount-helper)") from None
        click.echo(path)
