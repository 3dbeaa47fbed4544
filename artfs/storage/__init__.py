"""The storage layer: on-disk formats, ``ObjectStore`` and ``MetaStore`` and their back ends.

Nothing above the repo layer imports from here except :class:`Store` (to open one)."""
from .store import Store, default_store_path

__all__ = ["Store", "default_store_path"]
