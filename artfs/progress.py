"""Progress reporting for long work (put, commit, export, fsck, gc).

The repo layer takes an optional ``progress`` object with two methods::

    progress.phase(name)              what is being done now (scanning, hashing, syncing, ...)
    progress.total(files, nbytes)     what there is to do in this phase (may be called again)
    progress.advance(files, nbytes)   what was just done
    progress.note(text)               a one-line remark for the user (stderr, always shown)

Both may be called from worker threads.  :func:`reporter` gives a rich
progress bar (drawn on stderr, removed when the work ends) when stdout and
stderr are terminals, and a no-op otherwise, so that pipes, scripts and tests
see only the command's own output.  ``ARTFS_PROGRESS=0`` turns bars off and
``ARTFS_PROGRESS=1`` forces them on.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager


class NullProgress:
    """Accepts the progress protocol and shows nothing but notes."""

    def phase(self, name: str) -> None:
        pass

    def note(self, text: str) -> None:
        print(f"artfs: {text}", file=sys.stderr)

    def total(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        pass


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class RichProgress:
    """One rich task; the bar follows bytes when there are bytes to do, else files."""

    def __init__(self, progress, label: str):
        self._p = progress
        self._label = label
        self._lock = threading.Lock()
        self._files = self._nfiles = 0
        self._bytes = self._nbytes = 0
        self._task = progress.add_task(label, total=None, counts="")

    def _refresh(self) -> None:
        by_bytes = self._nbytes > 0
        counts = f"{self._files}/{self._nfiles} files"
        if by_bytes:
            counts += f"  {_fmt_bytes(self._bytes)}/{_fmt_bytes(self._nbytes)}"
        self._p.update(
            self._task,
            total=(self._nbytes if by_bytes else self._nfiles) or None,
            completed=self._bytes if by_bytes else self._files,
            counts=counts,
        )

    def phase(self, name: str) -> None:
        with self._lock:
            self._files = self._nfiles = self._bytes = self._nbytes = 0
            self._p.update(self._task, description=f"{self._label}: {name}", total=None, completed=0, counts="")

    def note(self, text: str) -> None:
        self._p.console.print(f"artfs: {text}")

    def total(self, files: int, nbytes: int) -> None:
        with self._lock:
            self._nfiles, self._nbytes = int(files), int(nbytes)
            self._refresh()

    def advance(self, files: int, nbytes: int) -> None:
        with self._lock:
            self._files += int(files)
            self._bytes += int(nbytes)
            if self._files > self._nfiles:  # work found along the way (e.g. trees walked by fsck)
                self._nfiles = self._files
            self._refresh()


def enabled() -> bool:
    force = os.environ.get("ARTFS_PROGRESS")
    if force in ("0", "1"):
        return force == "1"
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def reporter(label: str, show: bool | None = None, console=None):
    """``with reporter("put mnist") as p: repo.put_dir(..., progress=p)``."""
    if show is None:
        show = enabled() or console is not None
    if not show:
        yield NullProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as p:
        yield RichProgress(p, label)
