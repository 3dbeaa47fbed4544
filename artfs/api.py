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

import io
import os
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


class Version:
    """A committed version (W&B: a logged artifact)."""

    def __init__(self, store: Store, info: repo.VersionInfo, unchanged: bool = False):
        self._store = store
        self._info = info
        self.unchanged = unchanged

    name = property(lambda self: self._info.artifact)
    type = property(lambda self: self._info.type)
    ref = property(lambda self: self._info.ref)
    version = property(lambda self: f"v{self._info.num}")
    metadata = property(lambda self: dict(self._info.metadata))
    message = property(lambda self: self._info.message)
    file_count = property(lambda self: self._info.file_count)
    size = property(lambda self: self._info.total_bytes)
    created_at = property(lambda self: self._info.created)
    digest = property(lambda self: self._info.ident.hex())

    @property
    def aliases(self) -> list[str]:
        return repo.aliases(self._store, self.name).get(self._info.num, [])

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

    def open(self, path: str) -> "VersionFile":
        """A seekable, streaming binary file object of one file; every byte read is verified."""
        e = self.entry(path)
        if e.kind not in (FILE, REF):
            raise BadInput(f"{path} is not a file in {self.ref}")
        return VersionFile(repo.ContentReader(self._store, e))

    def download(self, root: str | None = None) -> str:
        root = _local_path(root, "root") if root is not None else os.path.join("artifacts", f"{self.name}-v{self._info.num}")
        repo.export(self._store, self._info, root)
        return root

    def new_draft(self) -> "Artifact":
        """A draft of the next version, starting from this one; only changes are recorded."""
        return Artifact(self.name, self.type, store=self._store, _parent=self._info)

    def set_alias(self, alias: str) -> None:
        check_alias(alias)
        repo.set_alias(self._store, self.ref, alias)


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


class Artifact:
    """An artifact version being built: add/remove files, then ``save()``."""

    def __init__(self, name: str, type: str = "dataset", description: str | None = None,
                 metadata: dict | None = None, store=None, *, _parent: repo.VersionInfo | None = None):
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
        self._store = _store(store)
        art = repo.artifact(self._store, name)
        if art is not None and art["type"] != type and repo.latest(self._store, name) is not None:
            raise BadInput(f"{name} is a {art['type']}, not a {type}")
        self._parent = _parent
        self._draft: Draft | None = None
        self.writer_id = uuid.uuid4().hex  # one writer, for collaborative upserts
        self.writer_label: str | None = None  # how `artfs log` names this writer

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

    def add_file(self, local_path, name: str | None = None) -> None:
        local_path = _local_path(local_path, "local_path")
        parts = _parts(os.path.basename(local_path) if name is None else name, file=True)
        if not os.path.isfile(local_path):
            raise BadInput(f"not a file: {local_path}")
        with self._staging():
            staging.add_file(self._store, self.draft, parts, local_path)

    def add_dir(self, local_path, name: str | None = None) -> None:
        """Add every file below ``local_path`` under ``name`` (default: the root), merging."""
        local_path = _local_path(local_path, "local_path")
        prefix = _parts(name) if name else ()
        if not os.path.isdir(local_path):
            raise BadInput(f"not a directory: {local_path}")
        with self._staging():
            staging.add_dir(self._store, self.draft, local_path, prefix)

    def add_reference(self, uri: str, name: str | None = None) -> None:
        """Record a file:/// reference: digest and size, not a copy."""
        p = repo.uri_path(_text_arg(uri, "uri"))
        parts = _parts(os.path.basename(p) if name is None else name, file=True)
        with self._staging():
            staging.add_reference(self._store, self.draft, parts, uri)

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

    def save(self, message: str | None = None) -> Version:
        """Commit: the next version, or the existing one when the content is identical."""
        if message is not None:
            _text_arg(message, "message")
        d = self.draft
        with repo.lock_draft(self._store, d):
            result = repo.commit_draft(self._store, d, message, self.metadata, description=self.description,
                                       replace=self._parent is None)
            repo.finish_commit(d, result)
            d.discard()
        self._draft = None
        info = repo.version(self._store, self.name, result.num)
        self._parent = info
        return Version(self._store, info, result.unchanged)

    # -- collaborative versions (DESIGN.md §6) ----------------------------------------
    def upsert(self, distributed_id: str | None = None) -> dict:
        """Merge this artifact's files into the pending version ``distributed_id``
        (default $ARTFS_GROUP); upserting again replaces this object's earlier contribution."""
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
        info = repo.version(self._store, self.name, num)
        self._parent = info
        return Version(self._store, info, unchanged)

    def discard(self) -> None:
        if self._draft is not None:
            self._draft.discard()
            self._draft = None


def use_artifact(ref: str, store=None) -> Version:
    _text_arg(ref, "reference")
    s = _store(store)
    return Version(s, repo.resolve(s, ref))


# -- runs (DESIGN.md §9): W&B's run API with `wandb` replaced by `artfs` ------------------

def _version_of(store: Store, artifact: str, num: int) -> Version:
    return Version(store, repo.version(store, artifact, num))


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
        self.config = row["config"]
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

    # -- using and producing ---------------------------------------------------------
    def use_artifact(self, ref: str) -> Version:
        """Resolve a reference and record it as an input of this run."""
        from .repo import runs

        v = use_artifact(ref, store=self._store)
        runs.used(self._store, self.id, v.name, v._info.num)
        return v

    def log_artifact(self, artifact: "Artifact", aliases: list[str] | None = None) -> Version:
        """Save an artifact (or a draft) as a version produced by this run; move ``aliases``."""
        v = artifact.save() if isinstance(artifact, Artifact) else artifact
        self._produced(v, "logged")
        for a in aliases or []:
            v.set_alias(a)
        return v

    def upsert_artifact(self, artifact: "Artifact", distributed_id: str | None = None) -> dict:
        from .repo import runs

        did = collab.distributed_id(distributed_id or self.group)
        p = artifact.upsert(did)
        runs.upserted(self._store, self.id, artifact.name, did)
        return p

    def finish_artifact(self, artifact: "Artifact", distributed_id: str | None = None) -> Version:
        from .repo import runs

        did = collab.distributed_id(distributed_id or self.group)
        v = artifact.finish(did)
        runs.upserted(self._store, self.id, artifact.name, did)
        self._produced(v, "finished")
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
    def finish(self, exit_code: int = 0) -> None:
        from .repo import runs

        if not self._ended:
            runs.end(self._store, self.id, "finished" if exit_code == 0 else "failed", exit_code)
            self._ended = True

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from .repo import runs

        if exc_type is None:
            self.finish(0)
        elif not self._ended:
            killed = issubclass(exc_type, KeyboardInterrupt)
            runs.end(self._store, self.id, "killed" if killed else "failed", 130 if killed else 1)
            self._ended = True


def init(job_type: str | None = None, group: str | None = None, name: str | None = None,
         config: dict | None = None, store=None) -> Run:
    """Start a run (like ``wandb.init``); use it as a context manager or call ``run.finish()``."""
    from .repo import runs

    s = _store(store)
    return Run(s, runs.start(s, job_type=job_type, group=group, name=name, config=config))


def _logged_by(self: Version) -> "Run | None":
    from .repo import runs

    prods = runs.producers(self._store, self.name, self._info.num)
    return Run(self._store, prods[0]["run_id"]) if prods else None


def _used_by(self: Version) -> list[Run]:
    from .repo import runs

    return [Run(self._store, r["run_id"]) for r in runs.consumers(self._store, self.name, self._info.num)]


Version.logged_by = _logged_by
Version.used_by = _used_by
