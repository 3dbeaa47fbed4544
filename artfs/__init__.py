"""artfs: versioned artifacts that ordinary programs read and edit as directories."""
import importlib

from .errors import ArtfsError, BadInput, Conflict, Corrupt, Finished, NotFound, ReadOnly, StoreMissing
from .storage.store import Store

__all__ = [
    "Api", "Artifact", "Run", "Version", "finish", "init", "log", "use_artifact", "Store", "run",
    "ArtfsError", "BadInput", "Conflict", "Corrupt", "Finished", "NotFound", "ReadOnly", "StoreMissing",
]
__version__ = "0.2.0"

# The W&B-style API (artfs.api) is imported on first use: every `artfs` command imports this
# package, and most never touch the API.
_API_NAMES = {"Api", "Artifact", "Run", "Version", "finish", "init", "log", "use_artifact"}


def __getattr__(name: str):
    if name == "api" or name in _API_NAMES:
        # import_module, not `from . import api`: that looks the attribute up here first
        api = importlib.import_module(".api", __name__)  # (and `artfs.api.Version` worked before)
        if name == "api":
            return api
        value = getattr(api, name)
        globals()[name] = value  # looked up once
        return value
    # ``artfs.run`` is the current run (W&B's ``wandb.run``): it changes, so it is looked up live
    if name == "run":
        return importlib.import_module(".api", __name__).run
    raise AttributeError(f"module 'artfs' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API_NAMES | {"run"})
