"""The ``artfs`` command line (DESIGN.md §3).

A thin edge over :mod:`artfs.repo`: parse arguments, call the repo, print.
Every error a user can cause leaves as ONE line ``artfs: <message>`` on
stderr with a non-zero exit status (``ArtfsError.exit_code``: 2, or 1 for
``Corrupt``), never a traceback.  That translation happens in one place,
:meth:`ArtfsGroup.invoke`, so it covers commands that other modules register
too.  Usage errors stay click's (exit 2).

Exit statuses: 0 ok; 1 corruption found (``fsck``, ``cat`` of a corrupt
object, a store database error); 2 bad input or something not found;
3 internal error (a bug: ``ARTFS_DEBUG=1`` shows the traceback);
130 interrupted.

Commands added by other modules
-------------------------------
``mount``, ``umount``, ``commit`` and ``status`` live in
``artfs/fuse/cli_mount.py`` (and later layers may add their own modules to
:data:`PLUGINS`).  Such a module defines ``register(group)`` which adds
click commands to the group, e.g.::

    from artfs.cli import pass_env, quote   # helpers meant for plugins

    def register(group):
        @group.command()
        @click.argument("mountpoint")
        @pass_env
        def umount(env, mountpoint):
            store = env.store()               # opened lazily; StoreMissing says how to init
            with env.progress("commit") as p:  # rich bar on a terminal, no-op otherwise
                ...

``register`` runs once per process, the first time the group looks a command
up (so importing ``artfs.cli`` stays cheap) -- that is, on every run of the
CLI: keep it cheap too and import pyfuse3/trio inside the command bodies.
If a plugin cannot be imported because a dependency is missing, its known
commands answer with that reason instead of "No such command".
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import posixpath
import sqlite3
import stat
import sys
import time

import click

from . import __version__, repo
from .errors import ArtfsError, BadInput
from .progress import reporter
from .refs import check_artifact_name
from .names import json_path, quote, quote_text
from .repo import collab
from .storage.format import DIR, FILE, REF, SYMLINK, KIND_NAMES, split_path
from .storage.store import Store, default_store_path

#: modules that add commands with ``register(group)``; missing ones are skipped
PLUGINS = ("artfs.fuse.cli_mount", "artfs.runs_cli", "artfs.transfer_cli", "artfs.catalog_cli")
#: commands those modules are expected to provide (for a clear message when they cannot load)
PLUGIN_COMMANDS = {"artfs.fuse.cli_mount": ("mount", "umount", "commit", "status"), "artfs.runs_cli": ("runs", "lineage", "rm", "run"),
                   "artfs.transfer_cli": ("push", "pull")}


# -- output helpers -------------------------------------------------------------------

show_path = quote  # helpers meant for plugins (the name older plugins use)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


# -- errors: one place ----------------------------------------------------------------

def _die(message: str, code: int):
    # one line, whatever bytes the message quotes (names, ids, arguments): no escape sequences
    click.echo(f"artfs: {quote_text(message)}", err=True)
    raise click.exceptions.Exit(code)


def _oserror_text(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:
        return f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}: {what}"
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {what}"
    return what


class ArtfsGroup(click.Group):
    """A click group that turns every error a user can cause into one line and an exit status."""

    plugin_errors: "dict[str, ImportError] | None" = None  # None: plugins not loaded yet

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            exc.message = quote_text(exc.message)  # click repeats bad arguments: no escape sequences
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ArtfsError as exc:
            _die(str(exc), exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `artfs cat ... | head`: the reader left; be quiet
                try:
                    fd = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(fd, sys.stdout.fileno())
                except (OSError, ValueError):
                    pass
                raise click.exceptions.Exit(1)
            _die(_oserror_text(exc), 2)
        except KeyboardInterrupt:
            _die("interrupted", 130)
        except UnicodeEncodeError:
            # a command-line argument that is not UTF-8 reached something that needs text
            _die("an argument is not valid UTF-8 text", 2)
        except sqlite3.Error as exc:
            _die(f"store database error: {exc}", 1)
        except Exception as exc:
            if os.environ.get("ARTFS_DEBUG"):
                raise
            _die(f"internal error: {type(exc).__name__}: {exc} (run with ARTFS_DEBUG=1 for details)", 3)

    def list_commands(self, ctx):
        _load_plugins(self)
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name):
        _load_plugins(self)
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            for mod, exc in self.plugin_errors.items():
                if cmd_name in PLUGIN_COMMANDS.get(mod, ()):
                    return _unavailable(cmd_name, exc)
        return cmd


def _unavailable(name: str, exc: ImportError) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def cmd():
        raise BadInput(f"{name} is unavailable: {exc}")

    return cmd


# -- the group and its shared state ---------------------------------------------------------

class Env:
    """What every command shares: the store location (opened lazily) and progress bars."""

    def __init__(self, store_path: str):
        self.store_path = os.path.abspath(store_path)
        self._store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.store_path)
        return self._store

    @staticmethod
    def progress(label: str):
        return reporter(label)


pass_env = click.make_pass_decorator(Env)


@click.group(cls=ArtfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", metavar="PATH",
              help="The store (default: $ARTFS_STORE, else ~/.local/share/artfs).")
@click.version_option(__version__, prog_name="artfs")
@click.pass_context
def cli(ctx: click.Context, store_path: str | None):
    """Versioned artifacts as ordinary directories.

    References: NAME (= NAME:latest), NAME:vN, NAME:ALIAS, NAME:draft.
    """
    ctx.obj = Env(store_path or default_store_path())


# -- store --------------------------------------------------------------------------------

@cli.command()
@click.option("--meta", "meta_dsn", metavar="DSN",
              help="Scale-out: the PostgreSQL metadata store, postgresql://[user@]host[:port]/db (password from "
                   "PGPASSWORD/~/.pgpass or ARTFS_META_DSN, never written down).")
@click.option("--objects", "objects_url", metavar="s3://BUCKET/PREFIX",
              help="Scale-out: where objects go (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).")
@click.option("--endpoint", metavar="URL", help="Scale-out: the S3 endpoint (default: AWS, or $AWS_ENDPOINT_URL).")
@click.option("--region", metavar="REGION", help="Scale-out: the bucket's region (default: $AWS_REGION or us-east-1).")
@click.option("--cache-size", metavar="SIZE", help="Scale-out: each machine's object cache bound (default 4G).")
@pass_env
def init(env: Env, meta_dsn, objects_url, endpoint, region, cache_size):
    """Create the store (idempotent); prints its path.

    With --meta and --objects: a scale-out store shared by many machines; the store path is then a
    small description file, and a copy of it is all another machine needs.

    Example: artfs --store /data/artfs init
    """
    scale = (meta_dsn, objects_url, endpoint, region, cache_size)
    if any(x is not None for x in scale):
        if meta_dsn is None or objects_url is None:
            raise BadInput("a scale-out store needs both --meta postgresql://... and --objects s3://BUCKET/PREFIX")
        from .storage.cache import parse_size
        from .storage.scaleout import init_scaleout

        try:
            size = parse_size(cache_size) if cache_size is not None else None
        except ValueError as exc:
            raise BadInput(f"--cache-size: {exc}") from None
        s = init_scaleout(env.store_path, meta_dsn, objects_url, endpoint=endpoint, region=region, cache_size=size)
        click.echo(s.path)
        return
    s = Store.init(env.store_path)
    click.echo(s.path)


@cli.command()
@click.argument("name")
@click.argument("src", metavar="DIR")
@click.option("--type", "type_", metavar="T", help="Artifact type for a new artifact (default: dataset).")
@click.option("-m", "--message", metavar="MSG", help="Message of the new version.")
@click.option("--distributed-id", metavar="ID", help="Upsert DIR's files into this collaborative version.")
@click.option("--patch", is_flag=True, help="Add or replace DIR's files on top of latest; remove nothing.")
@click.option("--prefix", metavar="P", default="", help="With --patch: put DIR's files under P.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def put(env: Env, name: str, src: str, type_: str | None, message: str | None, distributed_id: str | None,
        patch: bool, prefix: str, as_json: bool):
    """Make a new version of NAME from the directory DIR (no FUSE).

    Prints NAME:vN, or NAME:vK (unchanged) when DIR equals the latest version.
    With --distributed-id, DIR's files are upserted into that pending version
    instead (putting the same DIR again replaces its earlier upsert).

    Example: artfs put mnist ./data/mnist -m "fix labels"
    """
    s = env.store()
    check_artifact_name(name)
    if not os.path.isdir(src):
        raise BadInput(f"not a directory: {src}" if not os.path.exists(src) else f"{src} is not a directory")
    if prefix and not patch:
        raise BadInput("--prefix goes with --patch")
    if patch:
        from .api import Artifact, use_artifact

        a = (use_artifact(f"{name}:latest", store=s).new_draft() if repo.latest(s, name) is not None
             else Artifact(name, type_ or "dataset", store=s))
        try:
            a.add_dir(src, name=prefix or None)
            v = a.save(message)
        finally:
            a.discard()
        _version_result(as_json, v.ref, v.unchanged)
        return
    if distributed_id is not None:
        a = _collab_writer(s, name, type_, distributed_id, src)
        try:
            p = a.upsert(distributed_id)
        finally:
            a.discard()
        if as_json:
            _echo_json({"pending": distributed_id, "artifact": name, "contributed": p["contributed"],
                        "files": p["files"], "writers": len(p["writers"])})
        else:
            click.echo(f"upserted into {name} (pending {quote_text(distributed_id)}): {p['contributed']} files,"
                       f" {p['files']} in all from {len(p['writers'])} writer(s)")
        return
    with env.progress(f"put {name}") as p:
        v, unchanged = repo.put_dir(s, name, src, type_=type_, message=message, progress=p)
    _version_result(as_json, v.ref, unchanged)


def _version_result(as_json: bool, ref: str, unchanged: bool) -> None:
    """What put, finish and the like print: NAME:vN [(unchanged)], or JSON {ref, unchanged}."""
    if as_json:
        _echo_json({"ref": ref, "unchanged": unchanged})
    else:
        click.echo(f"{ref} (unchanged)" if unchanged else ref)


# -- collaborative versions (DESIGN.md §6) -----------------------------------------------------

def _collab_writer(s: Store, name: str, type_: str | None, did: str, src: str):
    """An Artifact holding DIR's files, one writer per (host, DIR) so a re-put replaces itself."""
    import hashlib
    import socket

    from .api import Artifact
    did = collab.distributed_id(did)
    art = repo.artifact(s, name)
    a = Artifact(name, type_ or (art["type"] if art else "dataset"), store=s)
    a.writer_id = hashlib.blake2b(f"put:{socket.gethostname()}:{os.path.abspath(src)}:{did}".encode(),
                                  digest_size=16).hexdigest()
    a.writer_label = f"put {os.path.abspath(src)} on {socket.gethostname()}"
    left = repo.find_draft(s, f"api:{a.writer_id}")
    if left is not None:
        left.discard()  # a draft left by an interrupted put of the same DIR
    pending = collab.pending(s, name, did)
    if pending is not None and pending["parent"] is not None:
        a._parent = repo.resolve(s, f"{name}:v{pending['parent']}")  # add on top of the pending base
    a.add_dir(src)
    return a


@cli.command()
@click.argument("name")
@click.argument("src", metavar="[DIR]", required=False)
@click.option("--distributed-id", metavar="ID", help="The collaborative version (default: $ARTFS_GROUP).")
@click.option("-m", "--message", metavar="MSG", help="Message of the new version.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def finish(env: Env, name: str, src: str | None, distributed_id: str | None, message: str | None, as_json: bool):
    """Seal a collaborative version of NAME as its next version (upserting DIR first, if given).

    Example: artfs finish results --distributed-id run42
    """
    s = env.store()
    check_artifact_name(name)
    did = collab.distributed_id(distributed_id)
    if src is not None:
        if not os.path.isdir(src):
            raise BadInput(f"not a directory: {src}")
        a = _collab_writer(s, name, None, did, src)
        v = a.finish(did, message)
        _version_result(as_json, v.ref, v.unchanged)
        return
    num, unchanged = collab.finish(s, name, did, message)
    _version_result(as_json, f"{name}:v{num}", unchanged)


@cli.command()
@click.argument("ref", metavar="NAME:draft | DRAFT | NAME")
@click.option("--pending", "did", metavar="ID", help="The pending collaborative version of NAME to drop.")
@pass_env
def discard(env: Env, ref: str, did: str | None):
    """Drop a draft (NAME:draft, or one `artfs drafts` lists), or a pending collaborative version.

    Example: artfs discard mnist:draft
    """
    from .refs import parse_ref

    s = env.store()
    if did is None:
        if ref.startswith(("api:", "run:")):  # drafts of API programs and of group runs, by key
            click.echo(repo.discard_draft(s, ref))
            return
        r = parse_ref(ref)
        if not r.draft:
            raise BadInput(f"expected NAME:draft, a draft `artfs drafts` lists, or NAME --pending ID; got {ref!r}")
        click.echo(repo.discard_draft(s, f"draft:{r.name}"))
        return
    name = ref
    check_artifact_name(name)
    click.echo(collab.discard_pending(s, name, collab.distributed_id(did)))


@cli.command("drafts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
@click.option("--prune", is_flag=True, help="Discard drafts left by programs (API, run outputs) that are not in use.")
@click.option("--older-than", "older", default="7d", metavar="AGE", show_default=True,
              help="With --prune: only drafts unchanged for AGE (e.g. 30m, 12h, 7d).")
def drafts_cmd(env: Env, as_json: bool, prune: bool, older: str):
    """Every draft in the store, with its parent and number of changes.

    Example: artfs drafts --prune --older-than 2d
    """
    s = env.store()
    if prune:
        gone = repo.prune_drafts(s, _duration(older))
        if as_json:
            _echo_json({"pruned": gone})
        else:
            for g in gone:
                click.echo(f"discarded {quote(g)}")
            click.echo(f"pruned {len(gone)} draft{'s' if len(gone) != 1 else ''}")
        return
    rows = repo.drafts(s)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        if r.get("problem"):
            click.echo(f"{quote(r['draft'])}  damaged: {quote_text(r['problem'])}")
            continue
        mounted = "  (mounted)" if r["mounted"] else ""
        behind = f"  (behind: latest {r['latest']})" if r.get("latest") and r["latest"] != r["parent"] else ""
        click.echo(f"{quote(r['draft'])}  from {r['parent'] or 'nothing'}  {r['changes']} change"
                   f"{'s' if r['changes'] != 1 else ''}  {_when(r['created'])}{mounted}{behind}")


def _duration(text: str) -> float:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise BadInput(f"bad duration {text!r}: use e.g. 90s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def _pending_lines(s: Store, name: str) -> list[str]:
    out = []
    for p in collab.pendings(s, name):
        if p["finished"] is not None:
            continue
        age = int(time.time() - p["created"])
        writers = ", ".join(f"{quote_text(w['label'] or w['writer'])} ({w['rows']})" for w in p["writers"])
        base = f"from v{p['parent']}" if p["parent"] is not None else "from scratch"
        out.append(f"pending {quote_text(p['distributed_id'])}  {base}  {p['files']} files  {len(p['writers'])} writer(s)"
                   f"  {age}s old  {writers}")
    return out


# -- reading ---------------------------------------------------------------------------------

@cli.command()
@click.argument("name")
@click.option("-n", "limit", type=click.IntRange(1), metavar="N", help="Only the newest N versions.")
@click.option("--alias", "alias", metavar="ALIAS", help="Only versions that carry ALIAS.")
@click.option("--since", metavar="WHEN", help="Only versions made since WHEN (a date 2026-11-01[ 12:00], or an age: 2d, 3h).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def log(env: Env, name: str, limit: int | None, alias: str | None, since: str | None, as_json: bool):
    """Versions of NAME, newest first: aliases, how made, by which run, message, metadata.

    Example: artfs log mnist -n 5 --since 7d
    """
    from .catalog_cli import version_json

    s = env.store()
    check_artifact_name(name)
    aliases = repo.aliases(s, name)
    versions = repo.list_versions(s, name)
    if alias is not None:
        versions = [v for v in versions if alias in aliases.get(v.num, [])]
    if since is not None:
        cutoff = _since(since)
        versions = [v for v in versions if v.created >= cutoff]
    if limit is not None:
        versions = versions[:limit]
    if as_json:
        rows = [version_json(s, v, aliases.get(v.num, [])) for v in versions]
        rows += [{"pending": p["distributed_id"], "artifact": name, "parent": p["parent"], "files": p["files"],
                  "created": p["created"], "writers": [{"writer": w["writer"], "label": w["label"], "files": w["rows"]}
                                                       for w in p["writers"]]}
                 for p in collab.pendings(s, name) if p["finished"] is None]
        _echo_json(rows)
        return
    for line in _pending_lines(s, name):
        click.echo(line)
    if not versions:
        click.echo(f"{name} has no versions" + (" matching" if (alias or since or limit) else " yet"), err=True)
        return
    from .repo import runs

    heads = [v.ref + (f" ({', '.join(aliases[v.num])})" if aliases.get(v.num) else "") for v in versions]
    w_head = max(map(len, heads))
    w_files = max(len(str(v.file_count)) for v in versions)
    w_bytes = max(len(str(v.total_bytes)) for v in versions)
    w_how = max(len(v.how) for v in versions)
    for head, v in zip(heads, versions):
        msg = quote_text((v.message or "").splitlines()[0]) if v.message else ""
        prods = runs.producers(s, v.artifact, v.num)
        by = f"  run {prods[0]['run_id']}" if prods else ""
        extra = ""
        if v.metadata:
            extra += "  " + quote_text(json.dumps(v.metadata, sort_keys=True))
        if v.description:
            extra += "  " + quote_text(v.description.splitlines()[0])
        line = (f"{head:<{w_head}}  {_when(v.created)}  {v.file_count:>{w_files}} files  "
                f"{v.total_bytes:>{w_bytes}} bytes  {v.how:<{w_how}}{by}  {msg}{extra}")
        click.echo(line.rstrip())


def _since(text: str) -> float:
    """A point in time: a date (local), or an age before now (7d, 3h, 30m)."""
    from datetime import datetime

    from .catalog_cli import parse_duration

    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, form).timestamp()
        except ValueError:
            continue
    try:
        secs = parse_duration(text)
    except BadInput:
        secs = None
    if secs is None:
        raise BadInput(f"bad --since {text!r}: give a date (2026-11-01, 2026-11-01 12:00) or an age (90m, 12h, 7d)")
    return time.time() - secs


def _entry_json(e) -> dict:
    d = json_path(e.name, "name")
    d.update({"kind": KIND_NAMES[e.kind], "mode": stat.filemode(e.st_mode), "perm": e.mode,
              "uid": e.uid, "gid": e.gid, "size": e.size, "mtime_ns": e.mtime_ns, "atime_ns": e.atime_ns})
    if e.kind in (FILE, REF):
        d["digest"] = e.digest.hex()
    if e.kind == REF:
        d["uri"] = e.uri
    if e.kind == SYMLINK:
        d.update(json_path(e.target, "target"))
    if e.kind == DIR:
        d["files"] = e.nfiles
    if e.rdev:
        d["rdev"] = e.rdev
    if e.xattrs:
        d["xattrs"] = sorted(k.decode("utf-8", "replace") for k, _ in e.xattrs)
    if e.hlid:
        d["hardlink_group"] = e.hlid.hex()
    return d


@cli.command("ls")
@click.argument("ref")
@click.argument("path", required=False, default="")
@click.option("-l", "--long", "long_", is_flag=True, help="Also show mtime and BLAKE3 digest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--pending", "did", metavar="ID", help="List the files upserted into this pending version of REF.")
@pass_env
def ls_(env: Env, ref: str, path: str, long_: bool, as_json: bool, did: str | None):
    """Entries of a version (of its directory PATH, default the root).

    Example: artfs ls -l mnist:v3 train
    """
    s = env.store()
    if did is not None:
        check_artifact_name(ref)
        rows = collab.pending_files(s, ref, collab.distributed_id(did))
        if as_json:
            _echo_json([dict(json_path(p), kind=what, writer=w) for p, what, w in rows])
        for p, what, w in ([] if as_json else rows):
            click.echo(f"{what:<9}  {quote(p)}  ({quote_text(w)})")
        return
    v = repo.resolve(s, ref)
    e = repo.lookup(s, v, path)
    entries = repo.entries(s, e)
    if as_json:
        _echo_json([_entry_json(x) for x in entries])
        return
    w = max((len(str(x.size)) for x in entries), default=0)
    for x in entries:
        name = quote(x.name)
        if x.kind == SYMLINK:
            name += " -> " + quote(x.target)
        elif x.kind == REF:
            name += f" (reference {quote(x.uri)})"
        cols = [stat.filemode(x.st_mode), f"{x.size:>{w}}"]
        if long_:
            t = x.mtime_ns / 1e9
            cols.append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{x.mtime_ns % 10**9:09d}")
            cols.append(x.digest.hex() if x.kind in (FILE, REF) else "-" * 64)
        click.echo("  ".join(cols + [name]))


def _follow(s: Store, v: repo.VersionInfo, path: str):
    """The entry at ``path``, following symlinks that stay inside the version."""
    parts = list(split_path(path))
    for _ in range(40):
        e = repo.lookup(s, v, b"/".join(parts))
        if e.kind != SYMLINK:
            return e
        where = quote(b"/".join(parts))
        if e.target.startswith(b"/"):
            raise BadInput(f"{where} in {v.ref} is a symlink to {quote(e.target)}, outside the version")
        new = posixpath.normpath(b"/".join(parts[:-1] + [e.target]))
        if new == b".." or new.startswith(b"../"):
            raise BadInput(f"{where} in {v.ref} is a symlink to {quote(e.target)}, outside the version")
        parts = [p for p in new.split(b"/") if p not in (b"", b".")]
    raise BadInput(f"{quote(path)} in {v.ref}: too many levels of symbolic links")


@cli.command()
@click.argument("ref")
@click.argument("path")
@pass_env
def cat(env: Env, ref: str, path: str):
    """Write the file PATH of a version to stdout (all of it verified before the first byte).

    Example: artfs cat mnist:latest labels.csv | head
    """
    s = env.store()
    v = repo.resolve(s, ref)
    e = _follow(s, v, path)
    if e.kind == DIR:
        raise BadInput(f"{quote(path)} is a directory in {v.ref}")
    if e.kind not in (FILE, REF):
        raise BadInput(f"{quote(path)} is a {KIND_NAMES[e.kind]} in {v.ref}, not a file")
    out = sys.stdout.buffer
    try:
        for buf in repo.iter_content(s, e, verify_first=True):
            out.write(buf)
    finally:
        out.flush()


@cli.command()
@click.argument("ref1")
@click.argument("ref2")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def diff(env: Env, ref1: str, ref2: str, as_json: bool):
    """What changed from REF1 to REF2: A (added), M (modified), D (deleted) lines, sorted by path.

    Example: artfs diff mnist:v2 mnist:v3
    """
    s = env.store()
    a, b = repo.resolve(s, ref1), repo.resolve(s, ref2)
    changes = repo.diff_versions(s, a, b)
    if as_json:
        _echo_json([dict(json_path(b"/".join(p)), status=code) for code, p in changes])
        return
    for code, p in changes:
        click.echo(f"{code} {quote(b'/'.join(p))}")


# -- aliases, export ---------------------------------------------------------------------

@cli.command("alias")
@click.argument("ref")
@click.argument("alias", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete the alias NAME:ALIAS given as the argument.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def alias_(env: Env, ref: str, alias: str | None, delete: bool, as_json: bool):
    """Point ALIAS at the version REF names, or --delete NAME:ALIAS.

    Example: artfs alias mnist:v3 production
    """
    if delete:
        if alias is not None:
            raise click.UsageError("with --delete, give one argument: NAME:ALIAS")
        s = env.store()
        repo.delete_alias(s, ref)
        if as_json:
            _echo_json({"deleted": ref})
        else:
            click.echo(f"deleted {ref}")
        return
    if alias is None:
        raise click.UsageError("missing argument 'ALIAS' (or use --delete NAME:ALIAS)")
    s = env.store()
    v = repo.set_alias(s, ref, alias)
    if as_json:
        _echo_json({"alias": f"{v.artifact}:{alias}", "ref": v.ref})
    else:
        click.echo(f"{v.artifact}:{alias} -> {v.ref}")


@cli.command()
@click.argument("ref")
@click.argument("dest", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def export(env: Env, ref: str, dest: str, as_json: bool):
    """Write a version into DIR (new or empty) as it is: modes, owners (as root), times, xattrs,
    hard links, symlinks and special files.

    Example: artfs export mnist:production ./out
    """
    s = env.store()
    v = repo.resolve(s, ref)
    with env.progress(f"export {v.ref}") as p:
        n = repo.export(s, v, dest, progress=p)
    if as_json:
        _echo_json({"ref": v.ref, "dest": os.path.abspath(dest), "files": n})
    else:
        click.echo(f"{v.ref} -> {quote(dest)} ({n} files)")


# -- maintenance ---------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def fsck(env: Env, as_json: bool):
    """Check every object, version and draft; prints each problem (exit 1), else a summary.

    Example: artfs fsck
    """
    s = env.store()
    with env.progress("fsck") as p:
        problems = repo.fsck(s, progress=p)
    nobj, nver = repo.counts(s)
    if as_json:
        _echo_json({"ok": not problems, "problems": problems, "objects": nobj, "versions": nver,
                    "garbage": [] if problems else repo.garbage(s)})
        if problems:
            raise click.exceptions.Exit(1)
        return
    if problems:
        for line in problems:
            click.echo(quote_text(line))
        _die(f"fsck found {len(problems)} problem{'s' if len(problems) != 1 else ''}", 1)
    for note in repo.garbage(s):
        click.echo(f"note: {quote_text(note)}")
    click.echo(f"ok: {nobj} objects, {nver} versions")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_env
def gc(env: Env, as_json: bool):
    """Delete expired versions, and objects that no version, draft or pending version uses.

    Example: artfs gc
    """
    s = env.store()
    expired, kept = repo.expire(s)
    with env.progress("gc") as p:
        removed, freed = repo.gc(s, progress=p)
    if as_json:
        _echo_json({"objects_removed": removed, "bytes_freed": freed, "expired_deleted": expired,
                    "expired_kept_by_alias": kept})
        return
    for ref in expired:
        click.echo(f"deleted {ref} (its TTL ran out)")
    for ref in kept:
        click.echo(f"kept {ref}: its TTL ran out, but a user alias points at it")
    click.echo(f"removed {removed} object{'s' if removed != 1 else ''} ({freed} bytes)")


# -- commands from other modules ------------------------------------------------------------

def _load_plugins(group: ArtfsGroup) -> None:
    """Let each module in PLUGINS add its commands (once, on first use: importing artfs.cli stays cheap)."""
    if group.plugin_errors is not None:
        return
    group.plugin_errors = {}
    for modname in PLUGINS:
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:
            missing = exc.name or ""
            if missing and (modname == missing or modname.startswith(missing + ".")):
                continue  # the module is not there (yet)
            group.plugin_errors[modname] = exc  # a dependency is missing: say so when its commands are used
            continue
        mod.register(group)


def main(argv: list[str] | None = None) -> None:
    """The ``artfs`` console script."""
    cli.main(args=argv, prog_name="artfs")


if __name__ == "__main__":  # python -m artfs.cli: run the importable module, so plugins share its group and Env
    from artfs.cli import main as _main

    _main()
