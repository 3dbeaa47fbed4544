"""artfs: versioned artifacts that ordinary programs read and edit as directories."""
from .api import Artifact, Run, Version, init, use_artifact
from .errors import ArtfsError, BadInput, Conflict, Corrupt, Finished, NotFound, ReadOnly, StoreMissing
from .storage.store import Store

__all__ = [
    "Artifact", "Run", "Version", "init", "use_artifact", "Store",
    "ArtfsError", "BadInput", "Conflict", "Corrupt", "Finished", "NotFound", "ReadOnly", "StoreMissing",
]
__version__ = "0.2.0"
