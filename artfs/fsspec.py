"""``artfs://``: the store as an fsspec file system, so pandas, dask, xarray and anything else
that takes an fsspec URL read versions (and write drafts) without a mount.

    import pandas as pd
    df = pd.read_csv("artfs://mnist:v3/labels.csv")             # every byte verified
    df.to_csv("artfs://mnist/labels.csv", index=False)           # staged in a draft of mnist
    fsspec.filesystem("artfs").commit(message="relabel")          # -> ["mnist:v4"]

Paths are ``REF/path/in/version`` with REF ``NAME`` (= ``NAME:latest``), ``NAME:vN``,
``NAME:ALIAS`` or ``NAME:draft``; ``artfs://`` lists the artifacts (those with a version) and
``artfs://NAME:v3`` the root of that version.  The store is ``storage_options={"store": PATH}``,
else ``$ARTFS_STORE``, else the default store.  Registered through the ``fsspec.specs`` entry
point, so ``fsspec.filesystem("artfs")`` finds it once artfs is installed.

Reading streams through :meth:`artfs.api.Version.open`: seekable, every piece checked against
its digest before it is returned; a corrupt object raises ``OSError(EIO)``, never wrong bytes.

Writing: opening ``NAME/path`` or ``NAME:draft/path`` for writing (``wb``, ``xb``, ``ab`` and
their text forms) stages the file, when it is closed, into an API draft of NAME (from its latest
version) that this file-system instance keeps; ``rm`` of such a path stages a removal.  Nothing
is visible in NAME until :meth:`ArtfsFileSystem.commit` saves the drafts as new versions;
``NAME:draft/...`` reads what is staged.  fsspec caches instances per store (and thread), so
``fsspec.filesystem("artfs")`` after ``df.to_csv("artfs://...")`` is the instance holding the
draft.  ``with fs.transaction:`` commits on a clean exit and discards on an exception.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile

from fsspec.spec import AbstractFileSystem
from fsspec.transaction import Transaction

from .errors import (ArtfsError, BadInput, Corrupt, IsADirectory, NotADirectory, NotFound, ReadOnly, StoreMissing)
from .storage import format as fmt
from .storage.format import DIR, FILE, REF, SYMLINK


@contextlib.contextmanager
def _errors(path: str):
    """artfs errors as the OSErrors fsspec callers expect (isdir/exists catch OSError)."""
    try:
        yield
    except OSError:
        raise
    except NotFound as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from None
    except NotADirectory as exc:
        raise NotADirectoryError(errno.ENOTDIR, str(exc), path) from None
    except IsADirectory as exc:
        raise IsADirectoryError(errno.EISDIR, str(exc), path) from None
    except StoreMissing as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from None
    except ReadOnly as exc:
        raise OSError(errno.EROFS, str(exc), path) from None
    except Corrupt as exc:
        raise OSError(errno.EIO, str(exc), path) from None
    except BadInput as exc:
        raise OSError(errno.EINVAL, str(exc), path) from None
    except ArtfsError as exc:
        raise OSError(errno.EIO, str(exc), path) from None


def _kind(e) -> str:
    if e.kind == DIR:
        return "directory"
    if e.kind in (FILE, REF):
        return "file"
    return "link" if e.kind == SYMLINK else "other"


class _VerifiedReader(io.RawIOBase):
    """A version's file (``Version.open``) with artfs errors turned into OSErrors."""

    def __init__(self, raw, path: str, size: int):
        super().__init__()
        self._raw = raw
        self._path = path
        self.size = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with _errors(self._path):
            return self._raw.readinto(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _errors(self._path):
            return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _StagedWriter(io.BufferedRandom):
    """A file being written: a private temporary file, staged into the draft when closed.
    An exception inside ``with`` discards it instead."""

    def __init__(self, fs: "ArtfsFileSystem", name: str, parts: tuple, path: str, tmpdir: str, raw: io.FileIO):
        super().__init__(raw)
        self._fs, self._name, self._parts, self._path, self._tmpdir = fs, name, parts, path, tmpdir
        self._discarded = False

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return super().__exit__(exc_type, exc, tb)

    def discard(self) -> None:
        """Drop what was written: nothing is staged."""
        self._discarded = True
        self.close()

    def commit(self) -> None:
        """fsspec's per-file commit: the file was staged when it was closed."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
            if not self._discarded:
                self._fs._stage_file(self._name, self._parts, self.raw.name, self._path)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


class _DraftTransaction(Transaction):
    """``with fs.transaction:`` -- commit the staged drafts on a clean exit, discard them on error."""

    def complete(self, commit: bool = True) -> None:
        files, self.files = self.files, type(self.files)()
        try:
            for f in files:
                (f.commit if commit else f.discard)()
            if commit:
                self.fs.commit()
            else:
                self.fs.discard()
        finally:
            self.fs._intrans = False
            self.fs._transaction = None


class _OnePerStore(type(AbstractFileSystem)):
    """fsspec caches instances by their arguments: name the store in them (``$ARTFS_STORE`` or the
    default, made absolute), so the cache key is the store itself, whatever the environment says
    later, and ``fsspec.filesystem("artfs")`` is the instance that holds what ``to_csv`` staged."""

    def __call__(cls, *args, **kwargs):
        from .storage.store import default_store_path

        if args:
            if "store" in kwargs:
                raise TypeError("store given twice")
            kwargs["store"], args = args[0], args[1:]
        store = kwargs.get("store")
        kwargs["store"] = os.path.abspath(os.fspath(store)) if store is not None else default_store_path()
        return super().__call__(*args, **kwargs)


class ArtfsFileSystem(AbstractFileSystem, metaclass=_OnePerStore):
    """The versions of an artfs store as an fsspec file system (protocol ``artfs``)."""

    protocol = "artfs"
    root_marker = ""
    sep = "/"
    transaction_type = _DraftTransaction

    def __init__(self, store=None, type: str = "dataset", **kwargs):
        """``store``: the store's path (default ``$ARTFS_STORE``, else the default store);
        ``type``: the type of artifacts that writes create (an existing one keeps its own)."""
        from .storage.store import default_store_path

        super().__init__(**kwargs)
        self.store_path = os.path.abspath(os.fspath(store)) if store is not None else default_store_path()
        self.artifact_type = type
        self._store = None
        self._staged: dict = {}  # artifact name -> artfs.Artifact (an API draft from latest)

    # -- fsspec plumbing ------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        from fsspec.utils import stringify_path

        path = stringify_path(path)
        for prefix in ("artfs://", "artfs::"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {}

    def store(self):
        """The store (opened on first use; a missing store reads as FileNotFoundError)."""
        if self._store is None:
            from .storage.store import Store

            with _errors(self.store_path):
                self._store = Store.open(self.store_path)
        return self._store

    def _split(self, path) -> tuple:
        """path -> (ref text, ref, path inside the version as text)."""
        from .refs import parse_ref

        path = self._strip_protocol(path)
        ref_text, _, inner = path.partition("/")
        if not ref_text:
            return "", None, ""
        with _errors(path):
            ref = parse_ref(ref_text)
            if ref.entity or ref.project:
                raise BadInput(f"{ref_text}: ENTITY/PROJECT/ references are not paths here; use NAME[:vN]")
            if inner:
                fmt.split_path(inner)  # no '..', NUL or empty components
        return ref_text, ref, inner

    # -- what a path names ------------------------------------------------------------------------
    def _version(self, ref):
        from . import repo

        return repo.resolve(self.store(), ref)

    def _draft(self, name: str):
        """The staged draft of ``name`` in this instance, or None (nothing staged yet)."""
        a = self._staged.get(name)
        return a._draft if a is not None else None

    def _entry(self, path: str):
        """(entry, where it lives: a Draft or None for a version, VersionInfo or None)."""
        from . import repo

        ref_text, ref, inner = self._split(path)
        with _errors(path):
            if ref.draft:
                d = self._draft(ref.name)
                if d is not None:
                    e = d.lookup(fmt.split_path(inner)) if inner else d.root
                    if e is None:
                        raise NotFound(f"no {inner} in the staged draft of {ref.name}")
                    return d.resolved(e), d, None
                v = repo.latest(self.store(), ref.name) if repo.artifact(self.store(), ref.name) else None
                if v is None:
                    raise NotFound(f"nothing staged for {ref.name} and it has no versions")
            else:
                v = self._version(ref)
            return repo.lookup(self.store(), v, inner), None, v

    def _info_of(self, name: str, e, v) -> dict:
        d = {"name": name, "size": e.size, "type": _kind(e)}
        if e.kind in (FILE, REF) and e.digest is not None:
            d["digest"] = e.digest.hex()
        if e.kind == REF:
            d["uri"] = e.uri
        if e.kind == SYMLINK:
            d["destination"] = os.fsdecode(e.target)
        if e.kind != DIR:
            d["mode"] = stat.S_IMODE(e.mode) if e.mode is not None else None
        if e.mtime_ns is not None:
            d["mtime"] = e.mtime_ns / 1e9
        if v is not None:
            d["ref"] = v.ref
        return d

    def ls(self, path, detail=True, **kwargs):
        from . import repo

        path = self._strip_protocol(path)
        if path == "":
            out = []
            with _errors(path):
                s = self.store()
                for a in repo.artifacts(s):
                    v = repo.latest(s, a["name"])
                    if v is not None:
                        out.append({"name": a["name"], "size": v.total_bytes, "type": "directory",
                                    "artifact_type": a["type"], "ref": v.ref})
            return out if detail else [x["name"] for x in out]
        e, d, v = self._entry(path)
        if e.kind != DIR:
            info = self._info_of(path, e, v)
            return [info] if detail else [path]
        with _errors(path):
            kids = d.children(e) if d is not None else {x.name: x for x in repo.entries(self.store(), e)}
            out = [self._info_of(f"{path}/{os.fsdecode(n)}", d.resolved(x) if d is not None else x, v)
                   for n, x in sorted(kids.items())]
        return out if detail else [x["name"] for x in out]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if path == "":
            return {"name": "", "size": 0, "type": "directory"}
        e, d, v = self._entry(path)
        info = self._info_of(path, e, v)
        if "/" not in path and v is not None:
            info.update({"version": v.num, "artifact": v.artifact, "artifact_type": v.type,
                         "files": v.file_count})
        return info

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode and "+" not in mode:
            return io.BufferedReader(self._reader(path), buffer_size=block_size or 1 << 20)
        if mode.replace("b", "") not in ("w", "x", "a"):
            raise ValueError(f"artfs:// files open for reading (rb) or writing (wb, xb, ab), not {mode!r}")
        return self._writer(path, mode)

    def _reader(self, path: str):
        from . import repo
        from .api import Version, VersionFile

        e, d, v = self._entry(path)
        if e.kind == DIR:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if e.kind not in (FILE, REF):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(e)})", path)
        with _errors(path):
            if d is not None:  # staged content: objects stored by add_file, read like a version's
                return _VerifiedReader(VersionFile(repo.ContentReader(self.store(), e)), path, e.size)
            return _VerifiedReader(Version(self.store(), v).open(path.partition("/")[2]), path, e.size)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._reader(self._strip_protocol(path)) as f:
            size = f.size
            start = 0 if start is None else (max(0, size + start) if start < 0 else start)
            end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            if end <= start:
                return b""
            f.seek(start)
            out = bytearray(end - start)
            view, got = memoryview(out), 0
            while got < len(out):
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            return bytes(out[:got])

    # -- writing: API drafts, saved by commit() ----------------------------------------------------
    def _target(self, path: str) -> tuple:
        """A writable path -> (artifact name, path parts inside it)."""
        ref_text, ref, inner = self._split(path)
        if ref is None:
            raise OSError(errno.EISDIR, "write to artfs://NAME/path: the root lists artifacts", path)
        if not (ref.draft or (ref.alias == "latest" and ":" not in ref_text)):
            raise OSError(errno.EROFS, f"{ref_text} is a committed version (read-only); write to "
                                       f"artfs://{ref.name}/... or artfs://{ref.name}:draft/... and commit()", path)
        if not inner:
            raise IsADirectoryError(errno.EISDIR, f"{ref_text} is the root of the draft, not a file", path)
        with _errors(path):
            return ref.name, fmt.split_path(inner, allow_root=False)

    def _artifact(self, name: str):
        """The API draft of ``name`` this instance stages into (made from latest on first use)."""
        from . import api, repo

        a = self._staged.get(name)
        if a is None:
            with _errors(self.store_path):
                s = self._store = self._store or api._store(self.store_path)  # writing may create the store
                latest = repo.latest(s, name) if repo.artifact(s, name) else None
                if latest is not None:
                    a = api.Version(s, latest).new_draft()
                else:
                    art = repo.artifact(s, name)
                    a = api.Artifact(name, art["type"] if art else self.artifact_type, store=s)
            self._staged[name] = a
        return a

    def _writer(self, path: str, mode: str):
        name, parts = self._target(path)
        if "x" in mode and self.exists(f"{name}:draft/{fmt.join_path(parts)}"):
            raise FileExistsError(errno.EEXIST, "exists", path)
        tmpdir = tempfile.mkdtemp(prefix="artfs-fsspec-")
        try:
            tmp = os.path.join(tmpdir, "f")
            if "a" in mode and self.isfile(f"{name}:draft/{fmt.join_path(parts)}"):
                with self._reader(f"{name}:draft/{fmt.join_path(parts)}") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            raw = io.FileIO(tmp, "a+" if "a" in mode else "w+")
            return _StagedWriter(self, name, parts, path, tmpdir, raw)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    def _stage_file(self, name: str, parts: tuple, local: str, path: str) -> None:
        a = self._artifact(name)
        with _errors(path):
            a.add_file(local, fmt.join_path(parts))

    def rm_file(self, path):
        self.rm(path)

    def _rm(self, path):
        self.rm(path)

    def rm(self, path, recursive=False, maxdepth=None):
        """Stage the removal of files (or, with ``recursive``, directories) from drafts."""
        for p in (path if isinstance(path, (list, tuple)) else [path]):
            p = self._strip_protocol(p)
            name, parts = self._target(p)
            e, _, _ = self._entry(f"{name}:draft/{fmt.join_path(parts)}")
            if e.kind == DIR and not recursive:
                raise IsADirectoryError(errno.EISDIR, "is a directory (rm(..., recursive=True))", p)
            a = self._artifact(name)
            with _errors(p):
                a.remove(fmt.join_path(parts))

    def mkdir(self, path, create_parents=True, **kwargs):
        self.makedirs(path, exist_ok=True)

    def makedirs(self, path, exist_ok=False):
        """Directories come with the files written into them: only check that ``path`` is in a
        draft (``put``, ``put_file`` and the like call this before writing)."""
        if self._split(path)[2]:
            self._target(path)

    def cp_file(self, path1, path2, **kwargs):
        """Copy a file (from any version or a draft) into a draft: staged like a write."""
        src = self._reader(self._strip_protocol(path1))
        with src, self._writer(self._strip_protocol(path2), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def staged(self) -> dict:
        """What is staged: artifact name -> [(A|M|D, path), ...] against its parent."""
        return {name: a.status() for name, a in self._staged.items() if a._draft is not None}

    def commit(self, name: str | None = None, message: str | None = None) -> list[str]:
        """Save the staged drafts (all, or the one of artifact ``name``) as new versions; returns
        their refs (``NAME:vK``, the existing version when the content is unchanged)."""
        names = [name] if name is not None else sorted(self._staged)
        if name is not None and name not in self._staged:
            raise ValueError(f"nothing staged for {name!r}")
        out = []
        for n in names:
            a = self._staged[n]
            if a._draft is None:  # nothing was ever staged (a first write that failed)
                del self._staged[n]
                continue
            with _errors(n):
                v = a.save(message)
            del self._staged[n]
            out.append(v.ref)
        return out

    def discard(self, name: str | None = None) -> None:
        """Drop staged drafts (all, or the one of artifact ``name``)."""
        for n in ([name] if name is not None else list(self._staged)):
            a = self._staged.pop(n, None)
            if a is not None:
                a.discard()

    def created(self, path):
        return self.modified(path)

    def modified(self, path):
        import datetime

        info = self.info(path)
        if "mtime" not in info:
            raise OSError(errno.EINVAL, "no modification time", path)
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    def ukey(self, path):
        info = self.info(path)
        return info.get("digest") or info.get("ref") or info["name"]
