"""``artfs run``: a legacy program as a run, with its inputs and outputs mounted.

Inputs are mounted read-only, outputs as the artifacts' drafts; CMD runs with
them; if it exits 0 every output is committed (or upserted into the group's
collaborative version), otherwise nothing is committed and the drafts stay
resumable.  The mounts are always removed, also when artfs itself is
interrupted; SIGINT/SIGTERM are passed on to CMD.

Speed: each mount daemon is forked from this process after pyfuse3 and trio
are imported (this process has no threads yet), so a mount costs a fork and
a pyfuse3.init, not a new Python interpreter; all mounts start at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

from .. import repo
from ..repo import runs
from ..errors import ArtfsError, BadInput
from ..refs import check_artifact_name, parse_ref
from .cli_mount import read_ready


@dataclass
class Binding:
    dir: str  # absolute
    ref: str  # what to mount
    output: bool
    name: str  # artifact
    created: bool = False
    pid: int | None = None


def parse_bindings(store, ins: list[str], outs: list[str]) -> list[Binding]:
    """Validate every --in/--out before anything is mounted (BadInput / NotFound otherwise)."""
    out: list[Binding] = []
    for spec, output in [(s, False) for s in ins] + [(s, True) for s in outs]:
        opt = "--out" if output else "--in"
        if "=" not in spec:
            raise BadInput(f"{opt} {spec!r}: expected DIR={'NAME' if output else 'REF'}")
        d, _, target = spec.partition("=")
        if not d or not target:
            raise BadInput(f"{opt} {spec!r}: expected DIR={'NAME' if output else 'REF'}")
        if output:
            check_artifact_name(target)
            ref, name = f"{target}:draft", target
        else:
            r = parse_ref(target)
            if r.draft:
                raise BadInput(f"--in {spec!r}: inputs are versions, not drafts")
            v = repo.resolve(store, r)  # resolved once, now: the run uses exactly this version
            ref, name = v.ref, v.artifact
        full = os.path.abspath(d)
        if os.path.exists(full):
            if not os.path.isdir(full):
                raise BadInput(f"{opt} {spec!r}: {d} exists and is not a directory")
            if os.listdir(full):
                raise BadInput(f"{opt} {spec!r}: {d} is not empty")
            if os.path.ismount(full):
                raise BadInput(f"{opt} {spec!r}: {d} is already a mount point")
        out.append(Binding(full, ref, output, name))
    dirs = [b.dir for b in out]
    if len(set(dirs)) != len(dirs):
        raise BadInput("the same DIR is given twice")
    names = [b.name for b in out if b.output]
    if len(set(names)) != len(names):
        raise BadInput("the same output artifact is given twice")
    return out


def _fork_mount(store_path: str, b: Binding, group: str | None, run_id: str, log_path: str) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        try:
            os.close(r)
            os.setsid()
            from .mounttab import die_with_parent

            die_with_parent()  # a killed `artfs run` takes its mounts along
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            nul = os.open(os.devnull, os.O_RDWR)
            os.dup2(nul, 0)
            os.dup2(nul, 1)
            os.dup2(fd, 2)
            from .daemon import serve

            def ready(msg: str) -> None:
                try:
                    os.write(w, (msg + "\n").encode())
                except OSError:
                    pass

            # each run's outputs get a draft of their own: a failed run's draft is kept (listed
            # by `artfs drafts`) and never leaks into the next run; parallel runs of a group
            # are separate writers of the collaborative version
            key = f"run:{run_id}:{b.name}" if b.output else None
            code = serve(store_path, b.ref, b.dir, foreground=False, distributed_id=group if b.output else None,
                         draft_key=key,
                         ready=ready)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    return pid, r


def _unmount(b: Binding) -> None:
    from .mounttab import is_dead, lazy_unmount, wait_exit

    if os.path.ismount(b.dir) or is_dead(b.dir):
        if subprocess.run(["fusermount3", "-u", b.dir], capture_output=True).returncode != 0:
            lazy_unmount(b.dir)
    if b.pid:
        if not wait_exit(b.pid, 10):
            try:
                os.kill(b.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(b.pid, 0)  # our child: reap it
        except ChildProcessError:
            pass
    if b.created:
        try:
            os.rmdir(b.dir)
        except OSError:
            pass


def run(store, ins: list[str], outs: list[str], cmd: list[str], group: str | None = None,
        job_type: str | None = None, message: str | None = None, echo=None) -> int:
    """Run CMD as a run; returns the exit status for ``artfs run``."""
    import pyfuse3  # noqa: F401  (imported before forking, so the daemons need not)
    import trio  # noqa: F401

    from . import daemon  # noqa: F401

    if echo is None:
        import click

        echo = click.echo
    if not cmd:
        raise BadInput("no command given: artfs run [--in DIR=REF]... [--out DIR=NAME]... -- CMD [ARGS...]")
    bindings = parse_bindings(store, ins, outs)
    run_id = runs.start(store, job_type=job_type, group=group, command=cmd)
    log_path = os.path.join(store.log_dir(), f"run-{run_id}.log")
    proc: subprocess.Popen | None = None
    interrupted: list[int] = []
    forwarded: list[int] = []
    phase = ["mounting"]  # -> "running" (CMD may be started) -> "ending" (commit and cleanup)

    def on_signal(sig, frame):
        interrupted.append(sig)
        if phase[0] == "mounting":
            raise KeyboardInterrupt
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)  # CMD decides how to stop; whatever it exits with, nothing is committed
            forwarded.append(sig)
        # once CMD has ended, a signal is only noted: the commit and the unmounts are not cut short

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 1
    outcome = "failed"
    try:
        for b in bindings:
            if not os.path.exists(b.dir):
                os.makedirs(b.dir)
                b.created = True
        started = [(b, *_fork_mount(store.path, b, group, run_id, log_path)) for b in bindings]
        errors = []
        for b, pid, r in started:
            b.pid = pid
            msg = read_ready(r, lambda: "mount daemon exited")
            if msg != "ok":
                errors.append(f"{b.ref} at {b.dir}: {msg.removeprefix('error: ')}")
        if errors:
            raise ArtfsError("cannot mount " + "; ".join(errors))
        for b in bindings:
            if not b.output:
                num = int(b.ref.rsplit(":v", 1)[1])
                runs.used(store, run_id, b.name, num)
        env = dict(os.environ, ARTFS_RUN_ID=run_id)
        if group:
            env["ARTFS_GROUP"] = group
        phase[0] = "running"
        if interrupted:
            raise KeyboardInterrupt
        try:
            from .mounttab import die_with_parent

            proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)  # no threads here: safe
        except OSError as exc:
            raise BadInput(f"cannot run {cmd[0]}: {exc.strerror}") from None
        if interrupted and not forwarded:  # a signal that came while CMD was being started
            proc.send_signal(interrupted[0])
        rc = proc.wait()
        phase[0] = "ending"
        if interrupted:  # asked to stop: even a CMD that handled the signal and exited 0 did not finish its work
            rc, outcome = (128 - rc if rc < 0 else rc or 128 + interrupted[0]), "killed"
            echo(f"artfs: interrupted by {signal.Signals(interrupted[0]).name}; nothing committed"
                 " (the drafts keep what it wrote)", err=True)
        elif rc < 0:
            rc, outcome = 128 - rc, "killed"
        elif rc == 0:
            for b in bindings:
                if b.output:
                    echo(_commit_output(store, run_id, b, group, message))
            outcome = "finished"  # only once every output is committed: a failed commit keeps the drafts
        else:
            kept = ", ".join(f"run:{run_id}:{b.name}" for b in bindings if b.output)
            echo(f"artfs: command exited with status {rc}; nothing committed"
                 + (f" (this run's drafts {kept} keep what it wrote)" if kept else ""), err=True)
    except KeyboardInterrupt:
        rc, outcome = 128 + (interrupted[0] if interrupted else signal.SIGINT), "killed"
    except ArtfsError as exc:
        rc = exc.exit_code  # recorded as the run's exit status, the same as `artfs run` exits with
        raise
    finally:
        phase[0] = "ending"
        for b in bindings:
            _unmount(b)
        if outcome == "finished":
            for b in bindings:
                if b.output:
                    _discard_run_draft(store, run_id, b.name)  # its changes are in a version now
        runs.end(store, run_id, outcome, rc)
        for s, h in old.items():
            signal.signal(s, h)
    echo(f"run {run_id}")
    return rc


def _commit_output(store, run_id: str, b: Binding, group: str | None, message: str | None) -> str:
    from .cli_mount import commit

    out = commit(b.dir, message)
    if group:
        runs.upserted(store, run_id, b.name, group)
        return out
    ref = out.split(" ", 1)[0]
    v = repo.resolve(store, ref)
    runs.produced(store, run_id, v.artifact, v.num, "committed", v.created)
    return out


def _discard_run_draft(store, run_id: str, name: str) -> None:
    d = repo.find_draft(store, f"run:{run_id}:{name}")
    if d is not None:
        d.discard()
