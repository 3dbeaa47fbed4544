"""Versions, references, aliases and walking trees: the read side of the repository.

Everything here speaks digests and rows of the metadata store; nothing knows
about FUSE.  Every tree walk is iterative (a stack), so depth is limited only
by the kernel's path rules, never by Python's recursion limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput, Corrupt, NotADirectory, NotFound
from ..names import quote
from ..refs import Ref, check_alias, check_artifact_name, parse_ref
from ..storage import format as fmt
from ..storage.format import DIR, Entry
from ..storage.store import Store

CONTROL_DIR = b".artfs"  # reserved at the root of every version


@dataclass
class VersionInfo:
    artifact: str
    num: int
    root: bytes
    ident: bytes
    parent: int | None
    created: float
    message: str | None
    metadata: dict
    file_count: int
    total_bytes: int
    how: str
    type: str = "dataset"
    root_meta: bytes | None = None
    links: bytes | None = None  # digest of the hard-link table, if the version has hard links
    description: str | None = None
    tags: list = None
    expires: float | None = None  # when its TTL runs out (None: never)

    @property
    def ref(self) -> str:
        return f"{self.artifact}:v{self.num}"

    @classmethod
    def of(cls, row: dict, type_: str) -> "VersionInfo":
        try:
            return cls(row["artifact"], row["num"], bytes.fromhex(row["root"]), bytes.fromhex(row["ident"]),
                       row["parent"], row["created"], row["message"], row["metadata"], row["file_count"],
                       row["total_bytes"], row["how"], type_, row.get("root_meta"),
                       bytes.fromhex(row["links"]) if row.get("links") else None, row.get("description"),
                       list(row.get("tags") or []), row.get("expires"))
        except (ValueError, TypeError) as exc:
            raise Corrupt(f"damaged version row {row.get('artifact')}:v{row.get('num')}: {exc}") from None

    def root_entry(self) -> Entry:
        return fmt.decode_root(self.root_meta, self.root, self.ident, self.file_count, self.total_bytes)


# -- references -----------------------------------------------------------------

def _versions_hint(store: Store, name: str) -> str:
    rows = store.meta.versions(name)
    if not rows:
        return f"{name} has no versions yet"
    return "newest: " + ", ".join(f"v{r['num']}" for r in rows[:5])


def artifact_or_fail(store: Store, name: str) -> dict:
    check_artifact_name(name)
    art = store.meta.artifact(name)
    if art is None:
        names = [a["name"] for a in store.meta.artifacts()]
        known = ("artifacts: " + ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")) if names \
            else "the store has no artifacts yet"
        raise NotFound(f"no artifact {name!r}; {known}")
    return art


def resolve(store: Store, ref: "str | Ref") -> VersionInfo:
    """A read-only reference -> the version it names (DESIGN.md §2)."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.draft:
        raise BadInput(f"{r} is a draft, not a version")
    art = artifact_or_fail(store, r.name)
    if r.version is not None:
        row = store.meta.version(r.name, r.version)
        if row is None:
            raise NotFound(f"{r.name} has no v{r.version}; {_versions_hint(store, r.name)}")
    else:
        num = store.meta.alias(r.name, r.alias)
        if num is None:
            if r.alias == "latest":
                raise NotFound(f"{r.name} has no versions yet")
            aliases = sorted({a for al in store.meta.aliases(r.name).values() for a in al})
            raise NotFound(f"{r.name} has no alias {r.alias!r}; aliases: {', '.join(aliases) or 'none'}")
        row = store.meta.version(r.name, num)
        if row is None:
            raise Corrupt(f"alias {r.name}:{r.alias} points at v{num}, which does not exist (run artfs fsck)")
    return VersionInfo.of(row, art["type"])


def version(store: Store, name: str, num: int) -> VersionInfo:
    return resolve(store, Ref(name, version=num))


def latest(store: Store, name: str) -> VersionInfo | None:
    num = store.meta.alias(name, "latest")
    if num is None:
        return None
    row = store.meta.version(name, num)
    if row is None:
        raise Corrupt(f"{name}:latest points at v{num}, which does not exist (run artfs fsck)")
    return VersionInfo.of(row, store.meta.artifact(name)["type"])


def versions(store: Store, name: str) -> list[VersionInfo]:
    art = artifact_or_fail(store, name)
    return [VersionInfo.of(r, art["type"]) for r in store.meta.versions(name)]


def artifacts(store: Store) -> list[dict]:
    return store.meta.artifacts()


def artifact(store: Store, name: str) -> dict | None:
    return store.meta.artifact(name)


def aliases(store: Store, name: str) -> dict[int, list[str]]:
    return store.meta.aliases(name)


def update(store: Store, ref: str, *, metadata: dict | None = None, replace_metadata: bool = False,
           description: str | None = None, tags: list | None = None) -> VersionInfo:
    """Change a version's metadata, description or tags (never its content)."""
    v = resolve(store, ref)
    if metadata is not None and not isinstance(metadata, dict):
        raise BadInput("metadata must be a JSON object")
    for t in tags or []:
        if not isinstance(t, str) or not t or not t.isprintable() or len(t) > 128:
            raise BadInput(f"bad tag {t!r}: printable text, at most 128 characters")
    store.meta.update_version(v.artifact, v.num, metadata=metadata, replace_metadata=replace_metadata,
                              description=description, tags=tags)
    return version(store, v.artifact, v.num)


def set_ttl(store: Store, ref: str, seconds: float | None) -> VersionInfo:
    """A version is deleted by gc once ``seconds`` have passed since it was created (None: never)."""
    v = resolve(store, ref)
    if seconds is not None and seconds < 0:
        raise BadInput("a TTL cannot be negative")
    store.meta.update_version(v.artifact, v.num, expires=None if seconds is None else v.created + seconds)
    return version(store, v.artifact, v.num)


def delete(store: Store, ref: str, force: bool = False) -> dict:
    """Delete a version (NAME:vN, or an alias of one); its objects go with the next gc unless other
    versions share them.  Returns what moved."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.draft:
        raise BadInput(f"{r} is a draft: discard it with artfs discard")
    v = resolve(store, r)
    out = store.meta.delete_version(v.artifact, v.num, force=force)
    out["deleted"] = v.ref
    return out


def set_alias(store: Store, ref: str, alias: str) -> VersionInfo:
    v = resolve(store, ref)
    check_alias(alias)
    store.meta.set_alias(v.artifact, alias, v.num)
    return v


def delete_alias(store: Store, text: str) -> None:
    name, sep, alias = text.partition(":")
    check_artifact_name(name)
    if not sep:
        raise BadInput(f"expected NAME:ALIAS, got {text!r}")
    check_alias(alias)
    artifact_or_fail(store, name)
    if not store.meta.delete_alias(name, alias):
        raise NotFound(f"{name} has no alias {alias!r}")


# -- walking versions ---------------------------------------------------------------

def lookup(store: Store, v: VersionInfo, path: "str | bytes") -> Entry:
    """The entry at ``path`` ('' or '/' is the root); NotFound names what is missing."""
    parts = fmt.split_path(path)
    e = v.root_entry()
    for i, comp in enumerate(parts):
        if e.kind != DIR:
            raise NotFound(f"not a directory in {v.ref}: {quote(b'/'.join(parts[:i]))}")
        e = store.tree_map(e.digest).get(comp)
        if e is None:
            raise NotFound(f"no {quote(b'/'.join(parts[:i + 1]))} in {v.ref}")
    if fmt.names_dir(path) and e.kind != DIR:
        raise NotADirectory(f"{quote(path)} in {v.ref} is not a directory")
    return e


def walk(store: Store, tree: bytes, prefix: tuple = ()):
    """Yield (path tuple, Entry) for every entry below a tree, depth first, sorted (iterative)."""
    stack = [(prefix, iter(store.tree(tree)))]
    while stack:
        pre, it = stack[-1]
        e = next(it, None)
        if e is None:
            stack.pop()
            continue
        p = pre + (e.name,)
        yield p, e
        if e.kind == DIR:
            stack.append((p, iter(store.tree(e.digest))))


def link_table(store: Store, digest: bytes | None) -> dict[bytes, list[tuple]]:
    """hlid -> paths of a version's hard-link groups ({} when it has none)."""
    if digest is None:
        return {}
    return fmt.decode_links(store.objects.get(digest))


def entries(store: Store, e: Entry) -> list[Entry]:
    """The entries of a directory entry, or ``[e]`` for anything else (``ls``)."""
    return store.tree(e.digest) if e.kind == DIR else [e]


def link_version(store: Store, v: VersionInfo, target: str) -> VersionInfo:
    """The content of ``v`` as the next version of artifact ``target`` (shared by digest: no copy)."""
    from ..storage.meta import ANY
    from .commit import create_version

    check_artifact_name(target)
    with store.writing():
        num, _, _ = create_version(store, target, v.type, v.root_entry(), link_table(store, v.links), base=None,
                                   expected=ANY, message=f"linked from {v.ref}", metadata=v.metadata, how="linked")
    return version(store, target, num)
