"""Domain errors.  The core raises these; the edges translate them.

The CLI prints ``str(err)`` as one line and exits with ``err.exit_code``;
the FUSE adapter maps each class to one errno (``artfs.fuse.ops.errno_of``).
Nothing else is meant to reach a user.
"""
from __future__ import annotations


class ArtfsError(Exception):
    """An error a user can cause or must hear about; one line of text."""

    exit_code = 2


class BadInput(ArtfsError):
    """Malformed reference, name, path or argument (EINVAL in a mount)."""


class NotFound(ArtfsError):
    """Unknown artifact, version, alias, path or object (ENOENT)."""


class StoreMissing(ArtfsError):
    """No store at the given location."""


class ReadOnly(ArtfsError):
    """A write to something immutable: a committed version (EROFS)."""


class NotPermitted(ArtfsError):
    """EPERM: e.g. touching the reserved control directory."""


class Exists(ArtfsError):
    """EEXIST."""


class NotEmpty(ArtfsError):
    """ENOTEMPTY."""


class NotADirectory(BadInput):
    """ENOTDIR."""


class IsADirectory(BadInput):
    """EISDIR."""


class NoSpace(ArtfsError):
    """The store's disk (or quota) is full (ENOSPC).  Nothing was changed."""

    exit_code = 1


class Conflict(ArtfsError):
    """Two writers disagree (collaborative upserts, a draft behind latest), or a state
    forbids the act (EBUSY in a mount)."""


class Busy(Conflict):
    """Someone else holds what this needs for a while (a finish in progress); retry later."""

    def __init__(self, message: str, holder: str | None = None, pending_id: int | None = None):
        super().__init__(message)
        self.holder = holder
        self.pending_id = pending_id


class Finished(Conflict):
    """A collaborative version that was already sealed."""


class Stale(Conflict):
    """A version was created against an expected parent that is no longer latest
    (compare-and-set failed); the caller rebases and retries."""

    def __init__(self, message: str, latest: int | None = None):
        super().__init__(message)
        self.latest = latest


class Corrupt(ArtfsError):
    """An object whose bytes do not match its digest, or an undecodable tree (EIO)."""

    exit_code = 1


class ReferenceChanged(Corrupt):
    """An external reference (file://) whose content changed since it was recorded."""


class SchemaMismatch(ArtfsError):
    """A store made by another version of artfs that this one cannot use."""
