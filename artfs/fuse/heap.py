"""The daemon's C heap (glibc malloc): tuned for big reads, given back after big commits.

Python objects live in pymalloc arenas and glibc's heap; what a big commit allocates (trees of
every changed directory, the changes themselves) is freed when it ends, but glibc keeps freed
memory inside the heap mapped unless asked.  Measured in-process after committing a 20k-file
draft: 92 MB resident, 82 MB after :func:`trim`.  Without glibc (musl, ...) both are no-ops.
"""
from __future__ import annotations

import ctypes

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
            _libc.malloc_trim  # noqa: B018 -- glibc only
        except (OSError, AttributeError):
            _libc = False
    return _libc


def tune_malloc() -> None:
    """Keep the 1 MiB buffers of big reads in the heap instead of an mmap each (glibc's default
    for blocks over 128 KiB to 32 MiB, adjusted as it goes): a fresh mapping per piece costs 256
    page faults and an munmap.  Measured on a 1 GiB read from a warm store: system time 0.75 s ->
    0.47 s.  Bounded so that at most 32 MiB of freed heap stays mapped."""
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc = _glibc()
    if libc:  # else (not glibc) its defaults stand
        libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 32 << 20)
        libc.mallopt(M_TOP_PAD, 16 << 20)


def trim() -> None:
    """Give the heap's free pages back to the kernel (blocking: milliseconds on a big heap)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)

