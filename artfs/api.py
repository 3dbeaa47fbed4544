"""The Python API, named after W&B Artifacts so its users feel at home.

``Artifact`` is something being built (a new artifact version, or a draft of
the next version from ``Version.new_draft()``); ``Version`` is a committed,
immutable version.  An ``Artifact`` keeps its staged changes in a draft in the
store (created on its first accepted change), so files added are safely stored
as they are added and a crashed program's work is still there.

Every error a caller can cause is an ``ArtfsError`` (``BadInput`` for bad
arguments) and leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import tempfile
import uuid

from . import repo
from .errors import BadInput, NotFound, StoreMissing
from .refs import check_alias, check_artifact_name
from .repo import collab, staging
from .repo.drafts import Draft
from .storage import format as fmt
from .storage.format import DIR, FILE, REF, Entry
from .storage.store import Store, default_store_path


def _store(store) -> Store:
    if isinstance(store, Store):
        return store
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise BadInput(f"store must be a path, got {type(store).__name__}")
    try:
        return Store.open(store)
    except StoreMissing:
        # the API creates the store on first use (the CLI asks for `artfs init`); Store.init
        # refuses a directory that already holds something else
        return Store.init(os.fspath(store) if store is not None else default_store_path())


def _text_arg(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{what} must be text, got {type(value).__name__}")
    return value


def _parts(name, file: bool = False) -> tuple:
    """A path inside an artifact: relative, no '..' or empty component; ``file``: no trailing
    slash either (it would name a directory)."""
    if not isinstance(name, (str, bytes)):
        raise BadInput(f"a path must be text, got {type(name).__name__}")
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    if raw.startswith(b"/"):
        raise BadInput(f"{name!r}: paths inside an artifact are relative")
    if file and raw.endswith(b"/"):
        raise BadInput(f"{name!r} names a directory (trailing slash), not a file")
    parts = fmt.split_path(raw, allow_root=False)
    if parts[0] == repo.CONTROL_DIR:
        raise BadInput("the name .artfs is reserved")
    return parts


def _local_path(p, what: str = "path") -> str:
    if not isinstance(p, (str, bytes, os.PathLike)):
        raise BadInput(f"{what} must be a path, got {type(p).__name__}")
    p = os.fsdecode(os.fspath(p))
    if "\0" in p:
        raise BadInput(f"{what} contains NUL")
    return p


class Entry_:
    """One file of a version as W&B shows it (``get_entry``): path, digest, size, ref."""

    def __init__(self, version: "Version", path: str, e: Entry):
        self._version = version
        self.path = path
        self.digest = e.digest.hex() if e.digest else None
        self.size = e.size
        self.ref = e.uri
        self._e = e

    def __repr__(self) -> str:
        return f"<Entry {self.path} of {self._version.ref}>"

    def download(self, root: str | None = None) -> str:
        """Write this one file (verified) under ``root`` (default: the version's download dir)."""
        root = _local_path(root, "root") if root is not None else self._version._default_root()
        out = os.path.join(root, self.path)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "wb") as f:
            for buf in repo.iter_content(self._version._store, self._e):
                f.write(buf)
        return out

    def open(self) -> "VersionFile":
        return self._version.open(self.path)


class Version:
    """A committed version (W&B: a logged artifact).

    Metadata, description, tags, aliases and ttl may be changed and then ``save()``d (the content
    never changes); ``delete()`` removes the version (its number is never reused)."""

    def __init__(self, store: Store, info: repo.VersionInfo, unchanged: bool = False):
        self._store = store
        self._info = info
        self.unchanged = unchanged
        self._reset_edits()

    def _reset_edits(self) -> None:
        self.metadata = dict(self._info.metadata)
        self.description = self._info.description
        self.tags = list(self._info.tags or [])
        self._aliases = list(repo.aliases(self._store, self._info.artifact).get(self._info.num, []))
        self.ttl = (None if self._info.expires is None
                    else datetime.timedelta(seconds=self._info.expires - self._info.created))
        self._saved = (dict(self.metadata), self.description, list(self.tags), list(self._aliases), self.ttl)

    @property
    def aliases(self) -> list[str]:
        """The version's aliases: live, until the list is changed (then ``save()`` records it)."""
        if self._aliases == self._saved[3]:  # not edited: show what the store says now
            live = repo.aliases(self._store, self._info.artifact).get(self._info.num, [])
            self._aliases[:] = live
            self._saved = self._saved[:3] + (list(live),) + self._saved[4:]
        return self._aliases

    @aliases.setter
    def aliases(self, value) -> None:
        self._aliases[:] = list(value)

    name = property(lambda self: self._info.artifact)
    type = property(lambda self: self._info.type)
    ref = property(lambda self: self._info.ref)
    source_name = property(lambda self: self._info.ref)
    version = property(lambda self: f"v{self._info.num}")
    message = property(lambda self: self._info.message)
    file_count = property(lambda self: self._info.file_count)
    size = property(lambda self: self._info.total_bytes)
    created_at = property(lambda self: self._info.created)
    digest = property(lambda self: self._info.ident.hex())
    state = property(lambda self: "COMMITTED")
    id = property(lambda self: self._info.ref)

    @property
    def qualified_name(self) -> str:
        """``ENTITY/PROJECT/NAME:vN`` when the producing run named them, else ``NAME:vN``."""
        from .repo import runs

        for p in runs.producers(self._store, self.name, self._info.num):
            row = runs.get(self._store, p["run_id"])
            if row.get("entity") or row.get("project"):
                return "/".join(x for x in (row.get("entity"), row.get("project")) if x) + "/" + self.ref
        return self.ref

    def __repr__(self) -> str:
        return f"<Version {self.ref}{' (unchanged)' if self.unchanged else ''}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Version) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def files(self) -> list[str]:
        """Paths of every file (and reference) in this version, sorted."""
        return [fmt.join_path(p) for p, e in repo.walk(self._store, self._info.root) if e.kind in (FILE, REF)]

    def entry(self, path: str) -> Entry:
        _parts(path)  # relative, not the root
        return repo.lookup(self._store, self._info, path)

    def get_entry(self, name: str) -> Entry_:
        e = self.entry(name)
        if e.kind not in (FILE, REF):
            raise BadInput(f"{name} is not a file in {self.ref}")
        return Entry_(self, name.strip("/"), e)

    get_path = get_entry

    def open(self, path: str) -> "VersionFile":
        """A seekable, streaming binary file object of one file; every byte read is verified."""
        e = self.entry(path)
        if e.kind not in (FILE, REF):
            raise BadInput(f"{path} is not a file in {self.ref}")
        return VersionFile(repo.ContentReader(self._store, e))

    def _default_root(self) -> str:
        return os.path.join("artifacts", f"{self.name}-v{self._info.num}")

    def download(self, root: str | None = None, **_ignored) -> str:
        """The version's files under ``root`` (default ``./artifacts/NAME-vN``).  A second download
        into the same place reuses what is already right and writes only what is missing or
        different (W&B reuses its download too)."""
        from .repo.materialize import refresh

        root = _local_path(root, "root") if root is not None else self._default_root()
        refresh(self._store, self._info, root)
        return root

    def checkout(self, root: str | None = None) -> str:
        """Like download, and remove whatever under ``root`` the version does not have."""
        from .repo.materialize import refresh

        root = _local_path(root, "root") if root is not None else self._default_root()
        refresh(self._store, self._info, root, prune=True)
        return root

    def verify(self, root: str | None = None) -> None:
        """Check a downloaded copy: every file there with the recorded bytes, nothing else.
        ``root`` None: check the stored bytes themselves.  Raises Corrupt naming what differs."""
        from .errors import Corrupt
        from .storage.hashing import hash_fd

        if root is None:
            for p, e in repo.walk(self._store, self._info.root):
                if e.kind in (FILE, REF):
                    repo.ContentReader(self._store, e).verify_all()
            return
        root = _local_path(root, "root")
        want = set()
        for p, e in repo.walk(self._store, self._info.root):
            rel = os.fsdecode(b"/".join(p))
            want.add(rel)
            if e.kind not in (FILE, REF):
                continue
            try:
                with open(os.path.join(root, rel), "rb") as f:
                    ok = hash_fd(f.fileno())[0] == e.digest
            except OSError:
                ok = False
            if not ok:
                raise Corrupt(f"{os.path.join(root, rel)} differs from {self.ref}")
        for dirpath, dirs, files in os.walk(root):
            for n in files:
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                if rel not in want:
                    raise Corrupt(f"{os.path.join(root, rel)} is not in {self.ref}")

    def new_draft(self) -> "Artifact":
        """A draft of the next version, starting from this one; only changes are recorded."""
        return Artifact(self.name, self.type, store=self._store, _parent=self._info)

    def set_alias(self, alias: str) -> None:
        check_alias(alias)
        repo.set_alias(self._store, self.ref, alias)
        self._reset_edits()

    def save(self) -> "Version":
        """Record changed metadata, description, tags, aliases and ttl (W&B's ``artifact.save()``
        on a logged artifact); the content is immutable."""
        meta0, desc0, tags0, al0, ttl0 = self._saved
        if not isinstance(self.metadata, dict):
            raise BadInput("metadata must be a dict")
        if self.metadata != meta0 or self.description != desc0 or list(self.tags) != tags0:
            repo.update(self._store, self.ref, metadata=self.metadata, replace_metadata=True,
                        description=self.description if self.description != desc0 else None,
                        tags=list(self.tags) if list(self.tags) != tags0 else None)
        for a in sorted(set(self.aliases) - set(al0)):
            if a != "latest":
                repo.set_alias(self._store, self.ref, check_alias(a))
        for a in sorted(set(al0) - set(self.aliases)):
            if a != "latest":
                repo.delete_alias(self._store, f"{self.name}:{a}")
        if self.ttl != ttl0:
            secs = None if self.ttl is None else (self.ttl.total_seconds() if isinstance(self.ttl, datetime.timedelta)
                                                  else float(self.ttl))
            repo.set_ttl(self._store, self.ref, secs)
        self._info = repo.version(self._store, self.name, self._info.num)
        self._reset_edits()
        return self

    def wait(self, timeout: float | None = None) -> "Version":
        """A committed version is there already (W&B waits for an upload)."""
        return self

    def delete(self, delete_aliases: bool = False) -> None:
        """Delete this version; refused while user aliases point at it unless ``delete_aliases``."""
        repo.delete(self._store, self.ref, force=delete_aliases)

    def link(self, target_path: str, aliases: list[str] | None = None) -> "Version":
        """W&B links a version into a registry collection; here: the same content becomes the
        next version of the artifact ``target_path`` names (``[ENTITY/PROJECT/]NAME``), with
        ``aliases``.  No bytes are copied."""
        from .refs import parse_ref

        target = parse_ref(_text_arg(target_path, "target_path")).name
        info = repo.link_version(self._store, self._info, target)
        v = Version(self._store, info)
        for a in aliases or []:
            v.set_alias(a)
        return v

    def used_by(self) -> list:
        return _used_by(self)

    def logged_by(self):
        return _logged_by(self)


class VersionFile(io.RawIOBase):
    """A read-only, seekable view of a stored file; reads are verified piece by piece."""

    def __init__(self, reader: repo.ContentReader):
        super().__init__()
        self._r = reader
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._r.read(self._pos, len(b))
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._r.size - self._pos)
        data = self._r.read(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._r.size}[whence]
        if base + offset < 0:
            raise BadInput("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()


class _Staging:
    def __init__(self, art: "Artifact"):
        self.art = art
        self.fresh = art._draft is None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.fresh and self.art._draft is not None:
            self.art._draft.discard()
            self.art._draft = None


def _writer_identity(name: str, writer: str | None) -> tuple[str, bool]:
    """(writer id, whether it is stable): an explicit ``writer=``, else the current run (a run id
    survives a retry: ``init(id=..., resume=...)`` or ``$ARTFS_RUN_ID``), else ``$ARTFS_WRITER``,
    else one of its own (DESIGN.md §6)."""
    import hashlib

    if writer is None and run is not None:
        writer = f"run:{run.id}"
    if writer is None:
        writer = os.environ.get("ARTFS_WRITER") or (f"run:{os.environ['ARTFS_RUN_ID']}"
                                                    if os.environ.get("ARTFS_RUN_ID") else None)
    if writer is None:
        return uuid.uuid4().hex, False
    if not isinstance(writer, str) or not writer:
        raise BadInput("writer must be non-empty text")
    return hashlib.blake2b(f"{writer}\0{name}".encode(), digest_size=16).hexdigest(), True


class Artifact:
    """An artifact version being built: add/remove files, then ``save()`` (or a run's
    ``log_artifact``).  W&B's constructor: ``Artifact(name, type, description=None,
    metadata=None, incremental=False)``."""

    def __init__(self, name: str, type: str = "dataset", description: str | None = None,
                 metadata: dict | None = None, incremental: bool = False, store=None, writer: str | None = None,
                 *, _parent: repo.VersionInfo | None = None, **wandb_only):
        for k in wandb_only:
            if k not in ("use_as",):
                raise TypeError(f"Artifact() got an unexpected keyword argument {k!r}")
        check_artifact_name(name)
        if not isinstance(type, str) or not type:
            raise BadInput("type must be non-empty text")
        if description is not None:
            _text_arg(description, "description")
        if metadata is not None and not isinstance(metadata, dict):
            raise BadInput(f"metadata must be a dict, got {metadata.__class__.__name__}")
        self.name = name
        self.type = type
        self.description = description
        self.metadata = dict(metadata or {})
        self.aliases: list[str] = []
        self.tags: list[str] = []
        self.ttl = None
        self._store = _store(store)
        art = repo.artifact(self._store, name)
        if art is not None and art["type"] != type and repo.latest(self._store, name) is not None:
            raise BadInput(f"{name} is a {art['type']}, not a {type}")
        if incremental and _parent is None:
            _parent = repo.latest(self._store, name)  # W&B: start from the latest version's files
        self._parent = _parent
        self._draft: Draft | None = None
        self.writer_id, stable = _writer_identity(name, writer)
        self.writer_label: str | None = None  # how `artfs log` names this writer
        if stable:  # a retried writer starts afresh (its earlier upserts it then replaces)
            left = repo.find_draft(self._store, f"api:{self.writer_id}")
            if left is not None:
                left.discard()

    version = property(lambda self: None)  # not logged yet
    state = property(lambda self: "PENDING")

    def __repr__(self) -> str:
        return f"<Artifact {self.name} (not saved)>"

    # -- the staged changes live in a draft in the store (made on the first change) ------
    @property
    def draft(self) -> Draft:
        if self._draft is None:
            self._draft = repo.open_draft(self._store, self.name, key=f"api:{self.writer_id}", type_=self.type,
                                          parent=self._parent, empty=self._parent is None)
        return self._draft

    def _staging(self):
        """A change to the draft: if it fails and this call made the draft, the draft goes too
        (a rejected call leaves nothing behind)."""
        return _Staging(self)

    def add_file(self, local_path, name: str | None = None, **_wandb) -> None:
        local_path = _local_path(local_path, "local_path")
        parts = _parts(os.path.basename(local_path) if name is None else name, file=True)
        if not os.path.isfile(local_path):
            raise BadInput(f"not a file: {local_path}")
        with self._staging():
            staging.add_file(self._store, self.draft, parts, local_path)

    def add_dir(self, local_path, name: str | None = None, **_wandb) -> None:
        """Add every file below ``local_path`` under ``name`` (default: the root), merging."""
        local_path = _local_path(local_path, "local_path")
        prefix = _parts(name) if name else ()
        if not os.path.isdir(local_path):
            raise BadInput(f"not a directory: {local_path}")
        with self._staging():
            staging.add_dir(self._store, self.draft, local_path, prefix)

    def add_reference(self, uri: str, name: str | None = None, **_wandb) -> None:
        """Record a file:/// reference: digest and size, not a copy."""
        p = repo.uri_path(_text_arg(uri, "uri"))
        parts = _parts(os.path.basename(p) if name is None else name, file=True)
        with self._staging():
            staging.add_reference(self._store, self.draft, parts, uri)

    @contextlib.contextmanager
    def new_file(self, name: str, mode: str = "x", encoding: str | None = None):
        """A file to write into the artifact: ``with art.new_file("notes.txt") as f: f.write(...)``."""
        parts = _parts(name, file=True)
        if mode not in ("x", "w", "xb", "wb"):
            raise BadInput(f"new_file mode must be x, w, xb or wb, not {mode!r}")
        with tempfile.TemporaryDirectory(prefix="artfs-new-") as tmp:
            path = os.path.join(tmp, "f")
            with open(path, mode, encoding=None if "b" in mode else (encoding or "utf-8")) as f:
                yield f
            with self._staging():
                staging.add_file(self._store, self.draft, parts, path)

    def add(self, obj, name: str) -> None:
        """Add a value as a file: text, bytes, or JSON for dicts and lists.  W&B media objects
        (tables, images, ...) have no meaning here."""
        if isinstance(obj, (bytes, bytearray)):
            data = bytes(obj)
        elif isinstance(obj, str):
            data = obj.encode()
        elif isinstance(obj, (dict, list)):
            data = json.dumps(obj, sort_keys=True, default=str).encode()
        else:
            raise NotImplementedError(f"artfs.Artifact.add of a {type(obj).__name__} (W&B media objects) is not"
                                      " supported: add text, bytes, dicts or lists, or a file")
        with self.new_file(name, "wb") as f:
            f.write(data)

    def remove(self, item: str) -> None:
        parts = _parts(item)
        if self._draft is None and self._parent is None:
            raise NotFound(f"no {item} in this draft of {self.name}")
        with self._staging():
            e = self.draft.lookup(parts)
            if e is not None and fmt.names_dir(item) and e.kind != DIR:
                raise BadInput(f"{item!r} is not a directory")
            try:
                self.draft.remove(parts)
            except NotFound:
                raise NotFound(f"no {item} in this draft of {self.name}") from None

    def files(self) -> list[str]:
        if self._draft is None and self._parent is None:
            return []
        out = []
        d = self.draft
        stack = [(d.root, ())]
        while stack:
            de, prefix = stack.pop()
            for name, e in sorted(d.children(de).items(), reverse=True):
                if e.kind == DIR:
                    stack.append((e, prefix + (name,)))
                elif e.kind in (FILE, REF):
                    out.append(fmt.join_path(prefix + (name,)))
        return sorted(out)

    def status(self) -> list[tuple[str, str]]:
        if self._draft is None and self._parent is None:
            return []
        return [(code, fmt.join_path(p)) for code, p in self.draft.status()]

    def save(self, message: str | None = None, **_wandb) -> Version:
        """Commit: the next version, or the existing one when the content is identical (its
        metadata and description are then updated, as W&B does)."""
        if message is not None:
            _text_arg(message, "message")
        d = self.draft
        with repo.lock_draft(self._store, d):
            result = repo.commit_draft(self._store, d, message, self.metadata, description=self.description,
                                       replace=self._parent is None)
            repo.finish_commit(d, result)
            d.discard()
        self._draft = None
        return self._logged(result.num, result.unchanged)

    def _logged(self, num: int, unchanged: bool) -> Version:
        info = repo.version(self._store, self.name, num)
        self._parent = info
        v = Version(self._store, info, unchanged)
        if self.tags or self.ttl is not None:
            v.tags = sorted(set(v.tags) | set(self.tags))
            v.ttl = self.ttl if self.ttl is not None else v.ttl
            v.save()
        for a in self.aliases:
            v.set_alias(a)
        return v

    def wait(self, timeout: float | None = None) -> "Artifact":
        return self

    # -- collaborative versions (DESIGN.md §6) ----------------------------------------
    def upsert(self, distributed_id: str | None = None) -> dict:
        """Merge this artifact's files into the pending version ``distributed_id``
        (default $ARTFS_GROUP); upserting again replaces this writer's earlier contribution."""
        did = collab.distributed_id(distributed_id)
        label = self.writer_label or f"{self.name} writer {self.writer_id[:8]} (pid {os.getpid()})"
        d = self.draft
        with repo.lock_draft(self._store, d):
            return staging.upsert(self._store, d, did, f"api:{self.writer_id}", label)

    def finish(self, distributed_id: str | None = None, message: str | None = None) -> Version:
        """Upsert this artifact's own files (if any), then seal the pending version as the next version."""
        did = collab.distributed_id(distributed_id)
        if self._draft is not None:
            self.upsert(did)
        elif collab.pending(self._store, self.name, did) is None:
            raise NotFound(f"{self.name} has no pending version {did!r} and this artifact has no files of its own:"
                           " nothing to finish (a mistyped id?)")
        num, unchanged = collab.finish(self._store, self.name, did, message, self.metadata or None)
        self.discard()
        return self._logged(num, unchanged)

    def discard(self) -> None:
        if self._draft is not None:
            self._draft.discard()
            self._draft = None


def use_artifact(ref: str, store=None, type: str | None = None) -> Version:
    _text_arg(ref, "reference")
    s = _store(store)
    v = Version(s, repo.resolve(s, ref))
    if type is not None and v.type != type:
        raise BadInput(f"{v.ref} is a {v.type}, not a {type}")
    return v


class Api:
    """W&B's public API, for use outside a run: ``artfs.Api().artifact("name:latest")``."""

    def __init__(self, overrides: dict | None = None, store=None, **_wandb):
        self._store = _store(store)

    def artifact(self, name: str, type: str | None = None) -> Version:
        return use_artifact(name, store=self._store, type=type)

    def artifacts(self, type_name: str | None = None, name: str | None = None, per_page: int | None = None,
                  **_wandb) -> list[Version]:
        """The versions of artifact ``name`` (newest first); without a name, the latest version of
        every artifact of ``type_name``."""
        if name is not None:
            from .refs import parse_ref

            art = parse_ref(name).name
            out = [Version(self._store, v) for v in repo.list_versions(self._store, art)]
            if type_name is not None and out and out[0].type != type_name:
                raise BadInput(f"{art} is a {out[0].type}, not a {type_name}")
            return out
        out = []
        for a in repo.artifacts(self._store):
            if type_name is not None and a["type"] != type_name:
                continue
            v = repo.latest(self._store, a["name"])
            if v is not None:
                out.append(Version(self._store, v))
        return out

    artifact_versions = artifacts

    def artifact_exists(self, name: str) -> bool:
        try:
            self.artifact(name)
            return True
        except (NotFound, BadInput):
            return False

    def run(self, path: str) -> "Run":
        return Run(self._store, path.rsplit("/", 1)[-1])


# -- runs (DESIGN.md §9): W&B's run API with `wandb` replaced by `artfs` ------------------

def _version_of(store: Store, artifact: str, num: int) -> Version:
    return Version(store, repo.version(store, artifact, num))


class Config(dict):
    """A run's config: a dict that also reads and writes as attributes (``config.lr``)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v

    def update(self, *a, allow_val_change: bool = True, **kw) -> None:  # W&B's signature
        super().update(*a, **kw)


class Run:
    """One execution that uses and produces versions; a context manager."""

    def __init__(self, store: Store, run_id: str):
        from .repo import runs

        self._store = store
        self.id = run_id
        row = runs.get(store, run_id)
        self.name = row["name"]
        self.job_type = row["job_type"]
        self.group = row["group"]
        self.entity = row.get("entity")
        self.project = row.get("project")
        self.config = Config(row["config"])
        self._ended = row["outcome"] != "running"

    def __repr__(self) -> str:
        return f"<Run {self.id}{' ' + self.job_type if self.job_type else ''}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def outcome(self) -> str:
        from .repo import runs

        return runs.state(runs.get(self._store, self.id))

    @property
    def summary(self) -> dict:
        from .repo import runs

        return runs.get(self._store, self.id).get("summary", {})

    def log(self, data: dict, step: int | None = None, commit: bool | None = None) -> None:
        """Record values (the run's summary keeps the last of each; no charts here)."""
        from .repo import runs

        runs.log(self._store, self.id, data)

    # -- using and producing ---------------------------------------------------------
    def use_artifact(self, ref, type: str | None = None, aliases: list | None = None, use_as: str | None = None) -> Version:
        """Resolve a reference (or take a Version) and record it as an input of this run."""
        from .repo import runs

        v = ref if isinstance(ref, Version) else use_artifact(ref, store=self._store, type=type)
        runs.used(self._store, self.id, v.name, v._info.num)
        return v

    def _as_artifact(self, artifact_or_path, name: str | None, type: str | None) -> "Artifact | Version":
        if isinstance(artifact_or_path, (Artifact, Version)):
            return artifact_or_path
        path = _local_path(artifact_or_path, "artifact_or_path")
        a = Artifact(name or _artifact_name_of(path), type or "dataset", store=self._store)
        if os.path.isdir(path):
            a.add_dir(path)
        else:
            a.add_file(path)
        return a

    def log_artifact(self, artifact_or_path, name: str | None = None, type: str | None = None,
                     aliases: list[str] | None = None, tags: list[str] | None = None, **_wandb) -> Version:
        """Save an artifact (or a path: a file or directory) as a version produced by this run;
        move ``aliases``."""
        a = self._as_artifact(artifact_or_path, name, type)
        if isinstance(a, Artifact):
            a.tags = list(tags or a.tags)
            v = a.save()
        else:
            v = a
        self._produced(v, "logged")
        for al in aliases or []:
            if al != "latest":
                v.set_alias(al)
        return v

    def upsert_artifact(self, artifact_or_path, name: str | None = None, type: str | None = None,
                        aliases: list | None = None, distributed_id: str | None = None) -> dict:
        from .repo import runs

        a = self._as_artifact(artifact_or_path, name, type)
        did = collab.distributed_id(distributed_id or self.group)
        p = a.upsert(did)
        runs.upserted(self._store, self.id, a.name, did)
        return p

    def finish_artifact(self, artifact_or_path, name: str | None = None, type: str | None = None,
                        aliases: list | None = None, distributed_id: str | None = None) -> Version:
        from .repo import runs

        a = self._as_artifact(artifact_or_path, name, type)
        did = collab.distributed_id(distributed_id or self.group)
        v = a.finish(did)
        runs.upserted(self._store, self.id, a.name, did)
        self._produced(v, "finished")
        for al in aliases or []:
            if al != "latest":
                v.set_alias(al)
        return v

    def _produced(self, v: Version, how: str) -> None:
        from .repo import runs

        runs.produced(self._store, self.id, v.name, v._info.num, how, v._info.created)

    def used_artifacts(self) -> list[Version]:
        from .repo import runs

        return [_version_of(self._store, r["artifact"], r["num"]) for r in runs.inputs(self._store, self.id)]

    def logged_artifacts(self) -> list[Version]:
        from .repo import runs

        return [_version_of(self._store, r["artifact"], r["num"]) for r in runs.outputs(self._store, self.id)]

    # -- ending ----------------------------------------------------------------------------
    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        global run
        from .repo import runs

        if not self._ended:
            code = exit_code or 0
            runs.end(self._store, self.id, "finished" if code == 0 else "failed", code)
            self._ended = True
        if run is self:
            run = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global run
        from .repo import runs

        if exc_type is None:
            self.finish(0)
        elif not self._ended:
            killed = issubclass(exc_type, KeyboardInterrupt)
            runs.end(self._store, self.id, "killed" if killed else "failed", 130 if killed else 1)
            self._ended = True
        if run is self:
            run = None


def _artifact_name_of(path: str) -> str:
    import re

    base = os.path.basename(os.path.normpath(path)) or "artifact"
    name = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip(".-_") or "artifact"
    return name[:128]


run: "Run | None" = None  # the current run (W&B's wandb.run)

_INIT_IGNORED = ("dir", "mode", "tags", "notes", "reinit", "save_code", "settings", "anonymous", "sync_tensorboard",
                 "monitor_gym", "magic", "allow_val_change", "force", "tensorboard", "config_exclude_keys",
                 "config_include_keys", "fork_from", "resume_from")


def init(project: str | None = None, entity: str | None = None, job_type: str | None = None,
         group: str | None = None, name: str | None = None, id: str | None = None, resume=None,
         config: dict | None = None, store=None, **kwargs) -> Run:
    """Start a run (``wandb.init``); use it as a context manager or call ``run.finish()``.

    ``id`` + ``resume`` (or ``$ARTFS_RUN_ID``, set by ``artfs run``) go on with an existing run,
    so a retried worker is the same writer as before.  W&B options with no meaning here (``mode``,
    ``settings``, ...) are accepted and ignored."""
    global run
    from .repo import runs

    for k in kwargs:
        if k not in _INIT_IGNORED:
            raise TypeError(f"init() got an unexpected keyword argument {k!r}")
    if config is not None and not isinstance(config, dict):
        config = dict(config) if hasattr(config, "keys") else {"value": config}
    if id is None and os.environ.get("ARTFS_RUN_ID"):
        id, resume = os.environ["ARTFS_RUN_ID"], True
    s = _store(store)
    run_id = runs.start(s, job_type=job_type, group=group, name=name, config=config, run_id=id,
                        resume=bool(resume) and resume != "never", entity=entity, project=project)
    run = Run(s, run_id)
    return run


def log(data: dict, step: int | None = None, commit: bool | None = None) -> None:
    """``wandb.log``: record values on the current run."""
    if run is None:
        raise BadInput("call artfs.init() before artfs.log()")
    run.log(data, step, commit)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """``wandb.finish``: end the current run."""
    if run is not None:
        run.finish(exit_code)


def _logged_by(self: Version) -> "Run | None":
    from .repo import runs

    prods = runs.producers(self._store, self.name, self._info.num)
    return Run(self._store, prods[0]["run_id"]) if prods else None


def _used_by(self: Version) -> list[Run]:
    from .repo import runs

    return [Run(self._store, r["run_id"]) for r in runs.consumers(self._store, self.name, self._info.num)]
