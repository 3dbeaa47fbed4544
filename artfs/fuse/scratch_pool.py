"""Empty scratch files made ahead of need, so that creating a file in a draft does not wait for one.

Why: every regular file created in a draft gets a scratch file (its bytes until
the commit).  Creating that file is a directory update in the store's file
system, and on ext4 under a steady stream of writes -- ``cp -r`` into a draft --
it waits for the journal: measured here at 0.5-1 ms, most of the ~1.5 ms a
small file's create took in all.  Made ahead by a worker thread, in batches,
that wait is off the path of the ``create`` request; taking one from the pool
only opens it and stamps its times (a file created now has now's times).

The files are ordinary, empty, unreferenced scratch files in the draft's own
scratch directory.  Nothing is lost or leaked if the daemon dies: the next
owner of the draft (``Draft.prepare_for_writing``) or gc removes unreferenced
scratch files, and a clean unmount removes the unused ones (``discard_blocking``).
The pool starts empty and is filled only once files are created, so a mount
that only reads makes none.

Concurrency: ``take`` runs on the trio thread; the files are made in a worker
thread, one batch at a time.
"""
from __future__ import annotations

import logging

import trio

log = logging.getLogger("artfs.fuse")

LOW = 64  # refill when fewer than this many are left
BATCH = 128  # files made per worker-thread trip
HIGH = 512  # never more than this many made ahead
RETRY_AFTER = 5.0  # seconds before trying again after a batch failed


class ScratchPool:
    """Empty scratch files of one draft, made ahead.  Inactive (``take`` gives fresh names only)
    until :meth:`start`."""

    def __init__(self, draft):
        self.draft = draft
        self.names: list[str] = []
        self.nursery: trio.Nursery | None = None
        self.filling = False
        self.closed = False
        self.retry_at = float("-inf")  # after a failed batch, not before this (trio clock)

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def take(self) -> tuple[str, bool]:
        """(a scratch name, whether its empty file exists already) for a file being created."""
        if len(self.names) < LOW:
            self._refill()
        if self.names:
            return self.names.pop(), True
        return self.draft.scratch_name(), False

    def give_back(self, name: str) -> None:
        """A name ``take`` gave for a create that failed before its file was used: still empty."""
        self.names.append(name)

    def _refill(self) -> None:
        if self.nursery is None or self.filling or self.closed or trio.current_time() < self.retry_at:
            return
        self.filling = True
        self.nursery.start_soon(self._fill)

    async def _fill(self) -> None:
        try:
            n = min(BATCH, HIGH - len(self.names))
            names = await trio.to_thread.run_sync(self.draft.make_empty_scratch, n)
            self.names.extend(names)
        except Exception as exc:  # a full disk, no thread to be had: files are made as they are created
            log.info("scratch files not made ahead for %g s: %s", RETRY_AFTER, exc)
            self.retry_at = trio.current_time() + RETRY_AFTER
        finally:
            self.filling = False

    def _drop(self, names: list[str]) -> None:
        for name in names:
            self.draft.drop_scratch_now(name)

    def discard_blocking(self) -> int:
        """Remove the files not taken (at unmount; no trio)."""
        self.closed = True
        names, self.names = self.names, []
        self._drop(names)
        return len(names)
