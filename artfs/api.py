"""The Python API, named after W&B Artifacts so its users feel at home.

``Artifact`` is something being built (a new artifact version, or a draft of
the next version from ``Version.new_draft()``); ``Version`` is a committed,
immutable version.  Every ``Artifact`` keeps its staged changes in a draft in
the store, so files added are safely stored as they are added, and a crashed
program's work is still there (``artfs fsck`` lists drafts' files).
"""
from __future__ import annotations

import io
import os
import uuid

from . import repo, treefmt
from .draft import DEntry, Draft
from .errors import BadInput, NotFound, StoreMissing
from .refs import check_artifact_name, check_alias
from .store import Store, default_store_path
from .treefmt import DIR, FILE, REF, Entry


def _store(store) -> Store:
    if isinstance(store, Store):
        return store
    try:
        return Store.open(store)
    except StoreMissing:
        # the API creates the store on first use (the CLI asks for `artfs init`), but never
        # inside a directory that already holds something else
        path = os.path.abspath(store or default_store_path())
        if os.path.isdir(path) and os.listdir(path):
            raise StoreMissing(f"{path} is not an artfs store and not empty; give an empty or new directory") from None
        return Store.init(path)


def _parts(name: str) -> tuple:
    parts = treefmt.split_path(name)
    if not parts:
        raise BadInput(f"empty path {name!r}")
    if parts[0] == repo.CONTROL_DIR:
        raise BadInput("the name .artfs is reserved")
    return parts


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
        return self._store.meta.aliases(self.name).get(self._info.num, [])

    def __repr__(self) -> str:
        return f"<Version {self.ref}{' (unchanged)' if self.unchanged else ''}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Version) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def files(self) -> list[str]:
        """Paths of every file (and reference) in this version, sorted."""
        return [treefmt.join_path(p) for p, e in repo.walk(self._store, self._info.root) if e.kind in (FILE, REF)]

    def entry(self, path: str) -> Entry:
        return repo.lookup(self._store, self._info, path)

    def open(self, path: str) -> io.BytesIO:
        """The verified bytes of one file as a binary file object."""
        e = self.entry(path)
        if e.kind not in (FILE, REF):
            raise BadInput(f"{path} is not a file in {self.ref}")
        return io.BytesIO(b"".join(repo.iter_content(self._store, e)))

    def download(self, root: str | None = None) -> str:
        root = root or os.path.join("artifacts", f"{self.name}-v{self._info.num}")
        repo.export(self._store, self._info, root)
        return root

    def new_draft(self) -> "Artifact":
        """A draft of the next version, starting from this one; only changes are recorded."""
        return Artifact(self.name, self.type, store=self._store, _parent=self._info)

    def set_alias(self, alias: str) -> None:
        check_alias(alias)
        self._store.meta.set_alias(self.name, alias, self._info.num)


class Artifact:
    """An artifact version being built: add/remove files, then ``save()``."""

    def __init__(self, name: str, type: str = "dataset", description: str | None = None,
                 metadata: dict | None = None, store=None, *, _parent: repo.VersionInfo | None = None):
        check_artifact_name(name)
        self.name = name
        self.type = type
        self.description = description
        self.metadata = dict(metadata or {})
        self._store = _store(store)
        art = self._store.meta.artifact(name)
        if art is not None and art["type"] != type:
            raise BadInput(f"{name} is a {art['type']}, not a {type}")
        self._parent = _parent
        self._draft: Draft | None = None
        self.writer_id = uuid.uuid4().hex  # one writer, for collaborative upserts
        self.writer_label: str | None = None  # how `artfs log` names this writer

    # -- the staged changes live in a draft in the store -------------------------
    @property
    def draft(self) -> Draft:
        if self._draft is None:
            self._draft = repo.open_draft(self._store, self.name, key=f"api:{self.writer_id}", type_=self.type,
                                          parent=self._parent, empty=self._parent is None)
        return self._draft

    def add_file(self, local_path: str, name: str | None = None) -> None:
        if not os.path.isfile(local_path):
            raise BadInput(f"not a file: {local_path}")
        try:
            self.draft.add_file(_parts(os.path.basename(local_path) if name is None else name), local_path)
        except PermissionError as exc:
            raise BadInput(f"cannot read {local_path}: {exc.strerror}") from None

    def add_dir(self, local_path: str, name: str | None = None) -> None:
        """Add every file below ``local_path`` under ``name`` (default: the root), merging."""
        if not os.path.isdir(local_path):
            raise BadInput(f"not a directory: {local_path}")
        prefix = _parts(name) if name else ()
        d = self.draft
        with self._store.writing():
            tree = repo.build_tree_from_dir(self._store, local_path, reject_control=not prefix)
            if prefix:
                self._merge(prefix, tree)
            else:
                for e in self._store.tree(tree.digest):
                    self._merge((e.name,), e)
        return None if d else None

    def _merge(self, path: tuple, e: Entry) -> None:
        d = self.draft
        cur = d.lookup(path)
        if e.kind == DIR and cur is not None and cur.kind == DIR:
            for child in self._store.tree(e.digest):
                self._merge(path + (child.name,), child)
        else:
            d.add_entry(path, e)

    def add_reference(self, uri: str, name: str | None = None) -> None:
        """Record a file:/// reference: digest and size, not a copy."""
        p = repo.uri_path(uri)
        hexd, size = repo.hash_reference(uri)
        st = os.stat(p)
        e = Entry(os.fsencode(os.path.basename(p)), REF, st.st_mode & 0o7777, st.st_uid, st.st_gid, size,
                  st.st_mtime_ns, digest=bytes.fromhex(hexd), uri=uri)
        self.draft.add_entry(_parts(os.path.basename(p) if name is None else name), e)

    def remove(self, item: str) -> None:
        parts = _parts(item)
        try:
            self.draft.remove(parts)
        except NotFound:
            raise NotFound(f"no {item} in this draft of {self.name}") from None

    def files(self) -> list[str]:
        out = []

        def rec(d: DEntry, prefix):
            for name, e in sorted(self.draft.children(d).items()):
                if e.kind == DIR:
                    rec(e, prefix + (name,))
                elif e.kind in (FILE, REF):
                    out.append(treefmt.join_path(prefix + (name,)))

        rec(self.draft.root(), ())
        return out

    def status(self) -> list[tuple[str, str]]:
        return self.draft.status()

    def save(self, message: str | None = None) -> Version:
        """Commit: the next version, or the existing one when the content is identical."""
        d = self.draft
        num, unchanged = d.commit(message, self.metadata, description=self.description)
        d.discard()
        self._draft = None
        info = repo.resolve(self._store, f"{self.name}:v{num}")
        self._parent = info
        return Version(self._store, info, unchanged)

    # -- collaborative versions (DESIGN.md §6) ----------------------------------------
    def upsert(self, distributed_id: str | None = None) -> dict:
        """Merge this artifact's files into the pending version ``distributed_id``
        (default $ARTFS_GROUP); upserting again replaces this object's earlier contribution."""
        from . import collab

        label = self.writer_label or f"{self.name} writer {self.writer_id[:8]} (pid {os.getpid()})"
        return collab.upsert(self._store, self.draft, distributed_id, f"api:{self.writer_id}", label)

    def finish(self, distributed_id: str | None = None, message: str | None = None) -> Version:
        """Upsert this artifact's own files (if any), then seal the pending version as the next version."""
        from . import collab

        did = collab.distributed_id(distributed_id)
        if self._draft is not None or self._store.meta.pending(self.name, did) is None:
            self.upsert(did)
        num, unchanged = collab.finish(self._store, self.name, did, message, self.metadata or None)
        self.discard()
        info = repo.resolve(self._store, f"{self.name}:v{num}")
        self._parent = info
        return Version(self._store, info, unchanged)

    def discard(self) -> None:
        if self._draft is not None:
            self._draft.discard()
            self._draft = None


def use_artifact(ref: str, store=None) -> Version:
    s = _store(store)
    return Version(s, repo.resolve(s, ref))


# -- runs (DESIGN.md §9): W&B's run API with `wandb` replaced by `artfs` ------------------

def _version_of(store: Store, artifact: str, num: int) -> Version:
    return Version(store, repo.resolve(store, f"{artifact}:v{num}"))


class Run:
    """One execution that uses and produces versions; a context manager."""

    def __init__(self, store: Store, run_id: str):
        self._store = store
        self.id = run_id
        row = store.meta.run(run_id)
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
        from . import runs

        return runs.state(self._store.meta.run(self.id))

    # -- using and producing ---------------------------------------------------------
    def use_artifact(self, ref: str) -> Version:
        """Resolve a reference and record it as an input of this run."""
        v = use_artifact(ref, store=self._store)
        self._store.meta.run_used(self.id, v.name, v._info.num)
        return v

    def log_artifact(self, artifact: "Artifact", aliases: list[str] | None = None) -> Version:
        """Save an artifact (or a draft) as a version produced by this run; move ``aliases``."""
        v = artifact.save() if isinstance(artifact, Artifact) else artifact
        self._produced(v, "logged")
        for a in aliases or []:
            v.set_alias(a)
        return v

    def upsert_artifact(self, artifact: "Artifact", distributed_id: str | None = None) -> dict:
        from . import collab

        did = collab.distributed_id(distributed_id or self.group)
        p = artifact.upsert(did)
        self._store.meta.run_upserted(self.id, artifact.name, did)
        return p

    def finish_artifact(self, artifact: "Artifact", distributed_id: str | None = None) -> Version:
        from . import collab

        did = collab.distributed_id(distributed_id or self.group)
        v = artifact.finish(did)
        self._store.meta.run_upserted(self.id, artifact.name, did)
        self._produced(v, "finished")
        return v

    def _produced(self, v: Version, how: str) -> None:
        self._store.meta.run_produced(self.id, v.name, v._info.num, how, v._info.created)

    def used_artifacts(self) -> list[Version]:
        return [_version_of(self._store, r["artifact"], r["num"]) for r in self._store.meta.run_inputs(self.id)]

    def logged_artifacts(self) -> list[Version]:
        return [_version_of(self._store, r["artifact"], r["num"]) for r in self._store.meta.run_outputs(self.id)]

    # -- ending ----------------------------------------------------------------------------
    def finish(self, exit_code: int = 0) -> None:
        if not self._ended:
            self._store.meta.run_end(self.id, "finished" if exit_code == 0 else "failed", exit_code)
            self._ended = True

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish(0)
        elif not self._ended:
            killed = issubclass(exc_type, KeyboardInterrupt)
            self._store.meta.run_end(self.id, "killed" if killed else "failed", 130 if killed else 1)
            self._ended = True


def init(job_type: str | None = None, group: str | None = None, name: str | None = None,
         config: dict | None = None, store=None) -> Run:
    """Start a run (like ``wandb.init``); use it as a context manager or call ``run.finish()``."""
    from . import runs

    s = _store(store)
    return Run(s, runs.start(s, job_type=job_type, group=group, name=name, config=config))


def _logged_by(self: Version) -> "Run | None":
    prods = self._store.meta.version_producers(self.name, self._info.num)
    return Run(self._store, prods[0]["run_id"]) if prods else None


def _used_by(self: Version) -> list[Run]:
    return [Run(self._store, r["run_id"]) for r in self._store.meta.version_consumers(self.name, self._info.num)]


Version.logged_by = _logged_by
Version.used_by = _used_by
