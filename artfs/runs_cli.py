"""``artfs runs / lineage / rm / run``: runs, lineage and patch mode on the command line."""
from __future__ import annotations

import json
import time

import click


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def register(group) -> None:
    from .cli import pass_env

    @group.group("runs", invoke_without_command=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def runs_cmd(ctx, as_json):
        """Runs, newest first (`artfs runs show ID` for one).

        Example: artfs runs --json
        """
        if ctx.invoked_subcommand is not None:
            return
        from .repo import runs

        s = ctx.obj.store()
        rows = [runs.describe(s, r["id"]) for r in runs.recent(s)]
        if as_json:
            _echo_json(rows)
            return
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
            jt = r["job_type"] or "-"
            outs = ", ".join(r["produced"]) or "-"
            ins = ", ".join(r["used"]) or "-"
            click.echo(f"{r['id']}  {when}  {r['outcome']:<8}  {jt:<12}  in: {ins}  out: {outs}  {r['command']}")

    @runs_cmd.command("show")
    @click.argument("run_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def runs_show(env, run_id, as_json):
        """Everything recorded about one run.

        Example: artfs runs show 3f2a9c1e
        """
        from .repo import runs

        d = runs.describe(env.store(), run_id)
        if as_json:
            _echo_json(d)
            return
        for k, v in d.items():
            if isinstance(v, float) and k in ("started", "ended"):
                v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
            if isinstance(v, list):
                v = ", ".join(v) or "-"
            click.echo(f"{k + ':':<16}{'-' if v is None else v}")

    @group.command("lineage")
    @click.argument("ref")
    @click.option("--up", "direction", flag_value="up", help="Only upstream (what it was made from).")
    @click.option("--down", "direction", flag_value="down", help="Only downstream (what was made from it).")
    @click.option("--depth", type=click.IntRange(1, 100), default=10, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_env
    def lineage_cmd(env, ref, direction, depth, as_json):
        """Producing run and its inputs (up), consuming runs and their outputs (down).

        Example: artfs lineage model:v4 --up
        """
        from . import repo
        from .repo import runs

        s = env.store()
        v = repo.resolve(s, ref)
        tree = runs.lineage(s, v, up=direction != "down", down=direction != "up", depth=depth)
        if as_json:
            _echo_json(tree)
            return
        for line in runs.render(tree):
            click.echo(line)

    @group.command("rm")
    @click.argument("name")
    @click.argument("paths", nargs=-1, required=True)
    @click.option("-m", "--message", metavar="MSG")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @pass_env
    def rm_cmd(env, name, paths, message, as_json):
        """A new version of NAME without PATHS (patch mode; cost follows the paths given).

        Example: artfs rm mnist train/broken.png
        """
        from .api import use_artifact
        from .errors import BadInput, NotFound
        from .refs import check_artifact_name

        s = env.store()
        if ":" in name:
            base = name.split(":", 1)[0]
            raise BadInput(f"rm takes an artifact name, not a version: it makes a new version from latest"
                           f" (artfs rm {base} PATH...); to make one from an older version, mount a draft of it")
        check_artifact_name(name)
        latest = use_artifact(f"{name}:latest", store=s)
        d = latest.new_draft()
        try:
            for p in paths:
                try:
                    d.remove(p)
                except NotFound:
                    raise NotFound(f"no {p} in {latest.ref}") from None
            v = d.save(message)
        finally:
            d.discard()
        if as_json:
            _echo_json({"ref": v.ref, "unchanged": v.unchanged})
        else:
            click.echo(f"{v.ref} (unchanged)" if v.unchanged else v.ref)

    @group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @click.option("--in", "ins", multiple=True, metavar="DIR=REF", help="Mount REF read-only at DIR.")
    @click.option("--out", "outs", multiple=True, metavar="DIR=NAME", help="Mount NAME:draft at DIR; committed if CMD succeeds.")
    @click.option("--group", metavar="G", help="Upsert outputs into group G's collaborative version.")
    @click.option("--job-type", metavar="T")
    @click.option("-m", "--message", metavar="MSG", help="Message of the output versions.")
    @click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
    @pass_env
    def run_cmd(env, ins, outs, group, job_type, message, cmd):
        """Run CMD as a run: inputs mounted read-only, outputs as drafts committed on success.

        Example: artfs run --in data=mnist:v3 --out model=model -- python train.py data model
        """
        from .fuse.runner import run

        rc = run(env.store(), list(ins), list(outs), list(cmd), group=group, job_type=job_type, message=message,
                 echo=click.echo)
        raise SystemExit(rc)
