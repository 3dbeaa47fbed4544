"""Repo services: everything the CLI, the API, the runner and the FUSE layer may call.

The layers above speak to these modules only (DESIGN.md §7); the storage layer
below (``ObjectStore``, ``MetaStore``) is reached through them.

* :mod:`.versions` -- references, versions, aliases, walking trees
* :mod:`.content`  -- verified reading of file content
* :mod:`.put`, :mod:`.materialize` -- a version from / to a local directory
* :mod:`.drafts`, :mod:`.workspace` -- drafts and who owns them
* :mod:`.commit`   -- draft -> version, with the lost-update rule
* :mod:`.collab`   -- collaborative versions (upsert, finish)
* :mod:`.runs`     -- runs and lineage
* :mod:`.integrity` -- fsck and gc
"""
from .commit import CommitResult, commit_draft, finish_commit
from .content import ContentReader, hash_reference, iter_content, read_all, uri_path
from .diff import diff_items, tree_children
from .drafts import Draft
from .materialize import export
from .integrity import counts, expire, fsck, garbage, gc, mark
from .put import build_tree_from_dir, put_dir
from .versions import (CONTROL_DIR, VersionInfo, aliases, artifact, artifact_or_fail, artifacts, delete, delete_alias,
                       entries, latest, link_table, link_version, lookup, resolve, set_alias, set_ttl, update, version, walk)
from .versions import versions as list_versions
from .workspace import (discard_draft, draft_by_key, draft_label, drafts, find_draft, is_draft_key, is_locked, lock_draft,
                        open_draft, prune_drafts)


def diff_versions(store, a: VersionInfo, b: VersionInfo) -> list[tuple[str, tuple]]:
    ch = tree_children(store)
    return diff_items(ch, a.root, ch, b.root)


__all__ = [
    "CONTROL_DIR", "CommitResult", "counts", "delete", "entries", "link_version", "set_ttl", "update", "ContentReader", "Draft", "VersionInfo", "aliases", "artifact", "artifact_or_fail",
    "artifacts", "build_tree_from_dir", "commit_draft", "delete_alias", "diff_versions", "discard_draft",
    "draft_by_key", "draft_label", "drafts", "expire", "garbage", "is_draft_key", "export", "find_draft", "finish_commit", "fsck", "gc", "hash_reference", "is_locked",
    "iter_content", "latest", "link_table", "lock_draft", "lookup", "mark", "open_draft", "prune_drafts", "put_dir",
    "read_all", "resolve", "set_alias", "uri_path", "version", "list_versions", "walk",
]
