"""Read-ahead for mounts: across the files of a directory, and within a big file.

Why: a cold read through a mount is a chain of waits, one at a time -- the
kernel asks for one file (or one range), the daemon reads it from the store and
verifies it, and only then does the program ask for the next.  A plain disk
hides most of that with its own read-ahead; artfs has to do the same for what
the kernel cannot see:

* **Across files.**  Programs that walk a tree (``tar``, ``cp -r``, ``rsync``,
  ``find -exec cat``) open a directory's files in the order it lists them.  The
  objects of those files are scattered over the store (they are named by their
  digests), so each cold small file is a random read.  When a small file of a
  directory is opened, the next ``FILE_WINDOW`` small files of the same
  directory are read and verified in worker threads, several at once, into the
  process's cache of verified pieces (``repo.content``).  Their opens then take
  the bytes from memory on the trio thread, with no trip to a worker thread.
* **Within a big file.**  Sequential reads of a file larger than a piece read
  the next ``PIECE_WINDOW`` pieces ahead in worker threads, so reading from disk
  and verifying (BLAKE3) overlap with serving the kernel.  Not on a store whose
  readers fetch ahead themselves (``ObjectStore.reads_ahead``: the scale-out
  store's reader fetches the next 8 MiB spans of a sequential reader; a reader
  per piece here would fetch them again).

What is read ahead is verified exactly as a normal read (it goes through
``repo.ContentReader``) and only ever lands in the bounded shared cache; a
read that finds its bytes there serves them, one that does not reads them
itself, so a read-ahead that failed or was evicted costs nothing but the
attempt.  Errors in read-ahead are dropped: the program's own read reports
them.  References (``file://``) are never read ahead: they may change.

Concurrency: the methods run on the trio thread; the reading happens in
worker threads, at most ``PARALLEL`` at once.  A read that needs a piece being
read ahead waits for it (``settle``) instead of reading it twice.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from .. import repo
from ..repo.content import read_cached
from ..storage.format import CHUNK, FILE, Entry, chunk_count

log = logging.getLogger("artfs.fuse")

FILE_WINDOW = 64  # small files of a directory read ahead of the one opened
FILE_BATCH = 16  # files per worker-thread trip (16 files in 4 threads: 128 -> 100 us per cold small file in-process)
PIECE_WINDOW = 4  # pieces of a big file read ahead of a sequential read
PARALLEL = 4  # worker threads reading ahead at once
DIR_MARKS = 1024  # directories whose walk is remembered
SEQ_SLACK = 4 * CHUNK  # kernel read-ahead requests may arrive a little out of order


class ReadAhead:
    """Read-ahead of one mount.  Inactive (every method a no-op) until :meth:`start`."""

    def __init__(self, store, small_file: int):
        self.store = store
        self.small_file = min(small_file, CHUNK)  # a small file is one piece
        self.nursery: trio.Nursery | None = None
        self.limiter = trio.CapacityLimiter(PARALLEL)
        self.inflight: dict[tuple, trio.Event] = {}  # (digest, piece) -> set when read (or failed)
        # directory key -> (the index opened last, the end of what its walk scheduled)
        # a store whose readers fetch ahead themselves (the scale-out one) would fetch twice
        self.pieces_ahead = not getattr(store.objects, "reads_ahead", False)
        self.dir_mark: OrderedDict[object, tuple[int, int]] = OrderedDict()

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    # -- waiting -----------------------------------------------------------------
    async def settle(self, e: Entry, off: int, size: int) -> None:
        """Wait for read-ahead of any piece of ``e`` that ``[off, off + size)`` touches."""
        if not self.inflight or e.kind != FILE or e.size == 0:
            return
        end = min(e.size, off + size)
        for i in range(off // CHUNK, (max(end, off + 1) - 1) // CHUNK + 1):
            ev = self.inflight.get((e.digest, i))
            if ev is not None:
                await ev.wait()

    # -- across files ---------------------------------------------------------------
    def opened(self, dir_key, index: int, entries: list) -> None:
        """The file at ``entries[index]`` of a directory was opened for reading: read the small
        files after it ahead, unless that is already under way."""
        if self.nursery is None:
            return
        last, hi = self.dir_mark.get(dir_key, (-1, 0))
        walking = last < index < hi  # on in the same walk (going back or past the window starts afresh)
        self.dir_mark[dir_key] = (index, hi)
        self.dir_mark.move_to_end(dir_key)
        if walking and index < hi - FILE_WINDOW // 2:  # enough is scheduled ahead already
            return
        start, stop = (hi if walking else index + 1), min(len(entries), index + 1 + FILE_WINDOW)
        self.dir_mark[dir_key] = (index, stop)
        while len(self.dir_mark) > DIR_MARKS:
            self.dir_mark.popitem(last=False)
        todo, seen = [], set()
        for e in entries[start:stop]:
            if e.digest not in seen and self._wanted(e):  # identical files: read once
                seen.add(e.digest)
                todo.append(e)
        for k in range(0, len(todo), FILE_BATCH):
            self._launch([(e, 0) for e in todo[k:k + FILE_BATCH]])

    def _wanted(self, e: Entry) -> bool:
        return (e.kind == FILE and e.digest is not None and 0 < e.size <= self.small_file
                and (e.digest, 0) not in self.inflight and read_cached(e, 0, 1) is None)

    # -- within a file ------------------------------------------------------------
    def read(self, h, e: Entry, off: int, size: int) -> None:
        """A read of ``[off, off + size)`` of a big stored file through handle ``h``: when the reads
        of ``h`` are sequential, keep ``PIECE_WINDOW`` pieces read ahead of it."""
        if self.nursery is None or not self.pieces_ahead or e.kind != FILE or e.size <= CHUNK:
            return
        expect = h.ra_expect
        h.ra_expect = off + size
        if not (off == 0 if expect is None else abs(off - expect) <= SEQ_SLACK):
            h.ra_next = None  # a random read: read nothing ahead of it
            return
        last = (min(e.size, off + size) - 1) // CHUNK
        nxt = h.ra_next if h.ra_next is not None else last + 1
        stop = min(chunk_count(e.size), last + 1 + PIECE_WINDOW)
        if nxt >= stop:
            return
        h.ra_next = stop
        for i in range(max(nxt, last + 1), stop):
            if (e.digest, i) not in self.inflight and read_cached(e, i * CHUNK, 1) is None:
                self._launch([(e, i)])

    # -- the reading ----------------------------------------------------------------
    def _launch(self, pieces: list) -> None:
        if not pieces:
            return
        for e, i in pieces:
            self.inflight[(e.digest, i)] = trio.Event()
        self.nursery.start_soon(self._run, pieces)

    async def _run(self, pieces: list) -> None:
        try:
            await trio.to_thread.run_sync(self._read_blocking, pieces, limiter=self.limiter)
        except Exception as exc:  # no thread to be had, say: read-ahead is a hint, never the mount's end
            log.debug("read-ahead not run: %s", exc)
        finally:
            for e, i in pieces:
                ev = self.inflight.pop((e.digest, i), None)
                if ev is not None:
                    ev.set()

    def _read_blocking(self, pieces: list) -> None:
        """Read and verify the pieces into the shared cache (worker thread)."""
        for e, i in pieces:
            try:
                with repo.ContentReader(self.store, e) as r:
                    r.piece(i)
            except Exception as exc:  # the program's own read will meet (and report) it
                log.debug("read-ahead of %s piece %d: %s", e.digest.hex(), i, exc)
