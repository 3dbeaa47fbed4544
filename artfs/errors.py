"""Domain errors.  The core raises these; the edges translate them.

The CLI prints ``str(err)`` as one line and exits with ``err.exit_code``;
the FUSE adapter maps each class to one errno (see ``artfs.fuse.errno_of``).
Nothing else is meant to reach a user.
"""
from __future__ import annotations


class ArtfsError(Exception):
    """An error a user can cause or must hear about; one line of text."""

    exit_code = 2


class BadInput(ArtfsError):
    """Malformed reference, name, path or argument."""


class NotFound(ArtfsError):
    """Unknown artifact, version, alias, path or object."""


class StoreMissing(ArtfsError):
    """No store at the given location."""


class ReadOnly(ArtfsError):
    """A write to something immutable (a committed version)."""


class Conflict(ArtfsError):
    """Two writers disagree (collaborative upserts), or a state forbids the act."""


class Finished(Conflict):
    """A collaborative version that was already sealed."""


class Corrupt(ArtfsError):
    """An object whose bytes do not match its digest, or an undecodable tree."""

    exit_code = 1


class ReferenceChanged(Corrupt):
    """An external reference (file://) whose content changed since it was recorded."""
