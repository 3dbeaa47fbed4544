"""``artfs push`` / ``artfs pull``: copy versions between stores (``artfs.repo.transfer``)."""
from __future__ import annotations

import json

import click


def _report(summary: dict, as_json: bool, target: str) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    for r in summary["versions"]:
        if not r["copied"] and not r["sent"]:
            click.echo(f"{r['source']} -> {target} {r['target']} (already there)")
        else:
            click.echo(f"{r['source']} -> {target} {r['target']} (sent {r['sent']} object"
                       f"{'s' if r['sent'] != 1 else ''}, {r['bytes']} bytes; {r['present']} already there)")
    if summary["aliases"]:
        click.echo(f"aliases: {', '.join(summary['aliases'])}")


def register(group) -> None:
    from .cli import pass_env

    @group.command()
    @click.argument("ref")
    @click.argument("target", metavar="STORE")
    @click.option("--all", "all_versions", is_flag=True, help="Every version of the artifact REF names, oldest first.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def push(env, ref, target, all_versions, as_json):
        """Copy the version REF (with its objects and lineage) to STORE, sending only what STORE lacks.

        STORE is another store's path: a local store directory or a scale-out store's
        description file.  Idempotent; an interrupted push resumes where it stopped.

        Example: artfs push mnist:v3 /shared/team.artfs
        """
        from .repo import transfer
        from .storage.store import Store

        src = env.store()
        dst = Store.open(target)
        with env.progress("push") as p:
            summary = transfer.copy(src, dst, ref, all_versions=all_versions, progress=p)
        _report(summary, as_json, target)

    @group.command()
    @click.argument("ref")
    @click.option("--from", "source", metavar="STORE", required=True, help="The store to copy from.")
    @click.option("--all", "all_versions", is_flag=True, help="Every version of the artifact REF names, oldest first.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def pull(env, ref, source, all_versions, as_json):
        """Copy the version REF (with its objects and lineage) from another STORE into this one,
        sending only what this store lacks.  Idempotent and resumable.

        Example: artfs pull mnist:v3 --from /shared/team.artfs
        """
        from .repo import transfer
        from .storage.store import Store

        src = Store.open(source)
        dst = env.store()
        with env.progress("pull") as p:
            summary = transfer.copy(src, dst, ref, all_versions=all_versions, progress=p)
        _report(summary, as_json, "here")
