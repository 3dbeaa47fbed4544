"""artfs: versioned artifacts that ordinary programs read and edit as directories."""
from . import api as _api
from .api import Api, Artifact, Run, Version, finish, init, log, use_artifact
from .errors import ArtfsError, BadInput, Conflict, Corrupt, Finished, NotFound, ReadOnly, StoreMissing
from .storage.store import Store

__all__ = [
    "Api", "Artifact", "Run", "Version", "finish", "init", "log", "use_artifact", "Store", "run",
    "ArtfsError", "BadInput", "Conflict", "Corrupt", "Finished", "NotFound", "ReadOnly", "StoreMissing",
]
__version__ = "0.2.0"


def __getattr__(name: str):
    # ``artfs.run`` is the current run (W&B's ``wandb.run``): it changes, so it is looked up live
    if name == "run":
        return _api.run
    raise AttributeError(f"module 'artfs' has no attribute {name!r}")
