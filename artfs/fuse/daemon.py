"""The mount daemon: one process serving one mount, started by ``artfs mount``.

``artfs mount`` resolves the reference and checks the mountpoint itself (so
its errors reach the terminal), then starts this module as a new process in
its own session with a pipe; the daemon mounts, and once it is serving it
writes ``ok`` (or ``error: <why>``) to the pipe, which is what ``artfs
mount`` waits for.  No fork after threads, no daemon that reports success
before the mount works.  Logs go to ``STORE/logs/``.

SIGINT/SIGTERM end the loop through ``pyfuse3.terminate()`` and the mount is
removed cleanly; a draft loses nothing because its state is in the store.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import pyfuse3
import trio

from .. import repo
from ..repo import staging
from ..errors import ArtfsError
from ..refs import parse_ref
from ..storage.store import Store
from . import heap, mounttab
from .ops import Operations
from .draft_vfs import DraftVFS
from .vfs import VersionVFS

log = logging.getLogger("artfs.fuse")


def build_ops(store: Store, ref_text: str, distributed_id: str | None = None, draft_key: str | None = None,
              type_: str | None = None) -> Operations:
    if repo.is_draft_key(ref_text):  # a draft named by its key (a run's outputs, an API draft)
        draft_key, ref_text = ref_text, f"{repo.draft_by_key(store, ref_text).artifact}:draft"
    ref = parse_ref(ref_text)
    if ref.draft:
        draft = repo.open_draft(store, ref.name, key=draft_key, type_=type_)
        # one mount per draft: two daemons editing one draft would undo each other's changes
        _draft_locks.append(repo.lock_draft(store, draft))
        draft.prepare_for_writing()
        vfs = DraftVFS(store, draft)
        collab = None
        if distributed_id:
            from .collab import MountCollab

            collab = MountCollab(store, draft, distributed_id)
        return Operations(vfs, collab)
    if distributed_id:
        raise ArtfsError("--distributed-id needs a draft: mount NAME:draft")
    return Operations(VersionVFS(store, repo.resolve(store, ref)))


_draft_locks = []  # held for the life of the daemon


def raise_fd_limit() -> None:
    """Many open files in a mount need many descriptors: take the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def fuse_options(ops: Operations, ref_text: str, allow_other: bool, debug: bool) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts.add("fsname=artfs")
    opts.add("subtype=artfs")
    if ops.ro:
        opts.add("ro")
    if allow_other:
        opts.add("allow_other")
    if debug:
        opts.add("debug")
    return opts


def tune_readahead(mountpoint: str, kb: int = 1024) -> None:
    """1 MiB read-ahead gives 1 MiB read requests (far fewer Python calls per byte)."""
    try:
        dev = os.stat(mountpoint).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.info("read_ahead_kb not changed: %s", exc)


def setup_logging(store: Store, foreground: bool, debug: bool) -> str:
    path = os.path.join(store.log_dir(), f"mount-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # private: it names files
    handlers = [logging.FileHandler(path)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return path


def serve(store_path: str, ref_text: str, mountpoint: str, *, foreground: bool = True, allow_other: bool = False,
          debug: bool = False, distributed_id: str | None = None, ready=None,
          draft_key: str | None = None, type_: str | None = None) -> int:
    """Mount and serve until unmounted or signalled.  ``ready(msg)`` is told 'ok' or 'error: ...'."""
    ready = ready or (lambda msg: None)
    raise_fd_limit()
    heap.tune_malloc()
    try:
        store = Store.open(store_path)
        setup_logging(store, foreground, debug)
        ops = build_ops(store, ref_text, distributed_id, draft_key, type_)
        pyfuse3.init(ops, mountpoint, fuse_options(ops, ref_text, allow_other, debug))
    except ArtfsError as exc:
        ready(f"error: {exc}")
        return exc.exit_code
    except (OSError, RuntimeError) as exc:
        ready(f"error: cannot mount {mountpoint}: {exc}")
        return 1
    log.info("mounted %s at %s (pid %d)", ref_text, mountpoint, os.getpid())

    async def main():
        async with trio.open_nursery() as nursery:
            async def on_signals():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                    async for sig in sigs:
                        log.info("signal %d: unmounting", sig)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signals)

            async def announce():
                await trio.to_thread.run_sync(tune_readahead, mountpoint)
                registry.append(mounttab.register(store, ref_text, mountpoint))
                ready("ok")

            nursery.start_soon(announce)
            ops.start(nursery)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    code = 0
    registry: list[str] = []
    try:
        trio.run(main)
    except BaseException:
        log.exception("mount loop failed")
        code = 1
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("close")
        if ops.vfs.draft is not None:
            try:  # what programs wrote is kept either way; this only makes the last edits durable now
                staging.make_durable(store, ops.vfs.draft)
            except Exception:
                log.exception("final sync")
            try:
                ops.scratch_pool.discard_blocking()
            except OSError:
                log.exception("removing scratch files made ahead")
        for path in registry:
            try:
                os.unlink(path)
            except OSError:
                pass
        log.info("unmounted %s", mountpoint)
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="artfs-mountd")
    p.add_argument("--store", required=True)
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--allow-other", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--distributed-id")
    p.add_argument("--type")
    p.add_argument("ref")
    p.add_argument("mountpoint")
    a = p.parse_args(argv)

    def ready(msg: str) -> None:
        if a.ready_fd is not None:
            try:
                os.write(a.ready_fd, (msg + "\n").encode())
                os.close(a.ready_fd)
            except OSError:
                pass
            a.ready_fd = None

    return serve(a.store, a.ref, a.mountpoint, foreground=False, allow_other=a.allow_other, debug=a.debug,
                 distributed_id=a.distributed_id, ready=ready, type_=a.type)


if __name__ == "__main__":
    sys.exit(main())
