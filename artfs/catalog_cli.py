"""``artfs artifacts / show / meta / delete / ttl / mounts``: the everyday commands around versions.

A CLI plugin (see ``PLUGINS`` in cli.py): each command is a thin edge over the
repo services, prints one result (or ``--json``), and turns errors into one
line through the group's error handling.
"""
from __future__ import annotations

import json
import time

import click


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def version_json(store, v, aliases: list[str] | None = None) -> dict:
    """A version as every --json output shows it (documented in docs/cli.md)."""
    from .repo import runs

    prods = runs.producers(store, v.artifact, v.num)
    return {
        "ref": v.ref, "artifact": v.artifact, "type": v.type, "version": v.num,
        "aliases": aliases if aliases is not None else [],
        "created": v.created, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.created)),
        "message": v.message, "description": v.description, "metadata": v.metadata, "tags": v.tags or [],
        "expires": v.expires, "file_count": v.file_count, "total_bytes": v.total_bytes, "how": v.how,
        "parent": v.parent, "digest": v.ident.hex(), "produced_by": [p["run_id"] for p in prods],
    }


def parse_duration(text: str) -> float | None:
    """'30d', '12h', '90m', '45s', '2w' (or 'none') -> seconds."""
    import re

    from .errors import BadInput

    if text.strip().lower() in ("none", "never", "off"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise BadInput(f"bad duration {text!r}: use e.g. 90s, 30m, 12h, 7d, 2w, or none")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def register(group) -> None:
    from .cli import pass_env
    from .names import quote_text

    @group.command("artifacts")
    @click.option("--type", "type_", metavar="T", help="Only artifacts of this type.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def artifacts_cmd(env, type_, as_json):
        """Every artifact: type, latest version, size, number of versions.

        Example: artfs artifacts --type model
        """
        from . import repo

        s = env.store()
        rows = []
        for a in repo.artifacts(s):
            if type_ is not None and a["type"] != type_:
                continue
            vs = repo.list_versions(s, a["name"])
            latest = repo.latest(s, a["name"])
            rows.append({"artifact": a["name"], "type": a["type"], "versions": len(vs),
                         "latest": latest.ref if latest else None,
                         "files": latest.file_count if latest else 0, "bytes": latest.total_bytes if latest else 0,
                         "description": a.get("description")})
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            click.echo("no artifacts" + (f" of type {type_}" if type_ else ""), err=True)
            return
        w = max(len(r["artifact"]) for r in rows)
        wt = max(len(r["type"]) for r in rows)
        wl = max(len(r["latest"] or "-") for r in rows)
        for r in rows:
            click.echo(f"{r['artifact']:<{w}}  {r['type']:<{wt}}  {r['latest'] or '-':<{wl}}  "
                       f"{r['versions']} version{'s' if r['versions'] != 1 else ''}  {r['files']} files  "
                       f"{r['bytes']} bytes")

    @group.command("show")
    @click.argument("ref")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def show_cmd(env, ref, as_json):
        """Everything about one version: aliases, message, description, metadata, tags, TTL, lineage.

        Example: artfs show mnist:production
        """
        from . import repo

        s = env.store()
        v = repo.resolve(s, ref)
        d = version_json(s, v, repo.aliases(s, v.artifact).get(v.num, []))
        if as_json:
            _echo_json(d)
            return
        for k in ("ref", "type", "aliases", "created_utc", "message", "description", "metadata", "tags", "expires",
                  "file_count", "total_bytes", "how", "parent", "digest", "produced_by"):
            val = d[k]
            if k == "expires" and val is not None:
                val = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(val))
            if isinstance(val, (list, dict)):
                val = json.dumps(val, sort_keys=True) if val else "-"
            click.echo(f"{k + ':':<14}{quote_text('-' if val is None else str(val))}")

    @group.command("meta")
    @click.argument("ref")
    @click.option("--set", "sets", multiple=True, metavar="K=V", help="Set metadata K (V parsed as JSON if it can be).")
    @click.option("--unset", "unsets", multiple=True, metavar="K", help="Remove metadata K.")
    @click.option("--description", default=None, metavar="TEXT")
    @click.option("--tag", "tags", multiple=True, metavar="T", help="Add a tag.")
    @click.option("--untag", "untags", multiple=True, metavar="T", help="Remove a tag.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def meta_cmd(env, ref, sets, unsets, description, tags, untags, as_json):
        """Change a version's metadata, description or tags (never its content).

        Example: artfs meta mnist:v3 --set accuracy=0.93 --tag reviewed
        """
        from . import repo
        from .errors import BadInput

        s = env.store()
        v = repo.resolve(s, ref)
        md = dict(v.metadata)
        for item in sets:
            k, sep, val = item.partition("=")
            if not sep or not k:
                raise BadInput(f"--set takes K=V, got {item!r}")
            try:
                md[k] = json.loads(val)
            except ValueError:
                md[k] = val
        for k in unsets:
            md.pop(k, None)
        new_tags = None
        if tags or untags:
            new_tags = sorted((set(v.tags or []) | set(tags)) - set(untags))
        v = repo.update(s, v.ref, metadata=md if (sets or unsets) else None, replace_metadata=True,
                        description=description, tags=new_tags)
        if as_json:
            _echo_json(version_json(s, v, repo.aliases(s, v.artifact).get(v.num, [])))
        else:
            click.echo(f"{v.ref}: metadata {json.dumps(v.metadata, sort_keys=True)}"
                       + (f", tags {', '.join(v.tags)}" if v.tags else ""))

    @group.command("delete")
    @click.argument("ref", metavar="NAME:vN")
    @click.option("--force", is_flag=True, help="Also delete the user aliases that point at it.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def delete_cmd(env, ref, force, as_json):
        """Delete a version; gc reclaims what only it used.  Numbers are never reused.

        Example: artfs delete mnist:v2
        """
        from . import repo

        out = repo.delete(env.store(), ref, force=force)
        if as_json:
            _echo_json(out)
            return
        name = out["deleted"].split(":")[0]
        moved = f"; latest is now {name}:v{out['latest']}" if out["latest"] is not None else f"; {name} has no versions left"
        gone = f"; removed aliases {', '.join(out['aliases_removed'])}" if out["aliases_removed"] else ""
        click.echo(f"deleted {out['deleted']}{moved}{gone}")

    @group.command("ttl")
    @click.argument("ref")
    @click.argument("duration", metavar="DURATION|none")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def ttl_cmd(env, ref, duration, as_json):
        """Have gc delete a version once DURATION has passed since it was created (none: keep it).

        Example: artfs ttl scratch:v0 7d
        """
        from . import repo

        v = repo.set_ttl(env.store(), ref, parse_duration(duration))
        if as_json:
            _echo_json({"ref": v.ref, "expires": v.expires})
        elif v.expires is None:
            click.echo(f"{v.ref} never expires")
        else:
            click.echo(f"{v.ref} expires {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v.expires))}")

    @group.command("mounts")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def mounts_cmd(env, as_json):
        """What is mounted from this store: where, which daemon, since when.

        Example: artfs mounts --json
        """
        from .fuse import mounttab

        rows = mounttab.registered(env.store())
        if as_json:
            _echo_json(rows)
            return
        for r in rows:
            state = "" if r["alive"] else "  (dead: artfs umount it)"
            click.echo(f"{r['ref']}  {r['mountpoint']}  pid {r['pid']}  since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started']))}{state}")
