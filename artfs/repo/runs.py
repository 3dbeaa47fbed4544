"""Runs and lineage (DESIGN.md §9), on top of the metadata store.

A run records who ran what, where, when and how it ended, the versions it
used and the versions it produced.

Why lineage has no cycles, by construction: an input is recorded with the
time it was used, and a version only counts as produced by a run if it was
created during that run and is not one of the run's inputs.  Lineage edges
then only go forward in time: version *v* depends on the inputs its
producing run used *before v was created*, and a version is used by a run
only after it exists.  Following edges strictly increases creation times,
so no path can come back to where it started.
"""
from __future__ import annotations

import getpass
import os
import secrets
import socket
import sys
import time

from . import versions as repo
from ..errors import BadInput, NotFound
from ..proc import alive


def new_id() -> str:
    return secrets.token_hex(4)


def start(store, job_type: str | None = None, group: str | None = None, name: str | None = None,
          config: dict | None = None, command: list[str] | None = None, run_id: str | None = None,
          resume: bool = False, entity: str | None = None, project: str | None = None) -> str:
    """Record a run starting; returns its id.  With ``run_id`` and ``resume`` an existing run of
    that id goes on (W&B's ``init(id=..., resume=...)``); a new id must be fresh."""
    if run_id is not None:
        check_run_id(run_id)
        if store.meta.run(run_id) is not None:
            if not resume:
                raise BadInput(f"a run {run_id!r} exists already: pass resume=True to go on with it")
            store.meta.run_resume(run_id, os.getpid())
            return run_id
    else:
        run_id = new_id()
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    store.meta.run_start({
        "id": run_id, "name": name or run_id, "job_type": job_type, "grp": group, "config": config,
        "command": " ".join(command if command is not None else sys.argv), "cwd": os.getcwd(),
        "host": socket.gethostname(), "user": user, "pid": os.getpid(), "started": time.time(),
        "entity": entity, "project": project,
    })
    return run_id


def log(store, run_id: str, data: dict) -> None:
    """Record logged values (W&B's ``run.log``): the run's summary keeps the last of each."""
    if not isinstance(data, dict):
        raise BadInput("log takes a dict of values")
    store.meta.run_log(run_id, {str(k): v for k, v in data.items()})


def check_run_id(run_id) -> str:
    import re

    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9A-Za-z._-]{1,64}", run_id):
        raise BadInput(f"bad run id {run_id!r}: letters, digits, '.', '_' or '-', at most 64")
    return run_id


def end(store, run_id: str, outcome: str, exit_status: int | None) -> None:
    store.meta.run_end(run_id, outcome, exit_status)


def used(store, run_id: str, artifact: str, num: int) -> None:
    store.meta.run_used(run_id, artifact, num)


def produced(store, run_id: str, artifact: str, num: int, how: str, created: float) -> bool:
    return store.meta.run_produced(run_id, artifact, num, how, created)


def upserted(store, run_id: str, artifact: str, did: str) -> None:
    store.meta.run_upserted(run_id, artifact, did)


def inputs(store, run_id: str) -> list[dict]:
    return store.meta.run_inputs(run_id)


def outputs(store, run_id: str) -> list[dict]:
    return store.meta.run_outputs(run_id)


def producers(store, artifact: str, num: int) -> list[dict]:
    return store.meta.version_producers(artifact, num)


def consumers(store, artifact: str, num: int) -> list[dict]:
    return store.meta.version_consumers(artifact, num)


def recent(store, limit: int | None = None) -> list[dict]:
    return store.meta.runs(limit)


def state(row: dict) -> str:
    """The outcome to show: a 'running' run whose process is gone on this host 'died'."""
    if row["outcome"] != "running":
        return row["outcome"]
    if row["host"] == socket.gethostname() and row["pid"] and not alive(row["pid"]):
        return "died"
    return "running"


def get(store, run_id: str) -> dict:
    check_run_id(run_id)
    row = store.meta.run(run_id)
    if row is None:
        recent = ", ".join(r["id"] for r in store.meta.runs(5))
        raise NotFound(f"no run {run_id!r}; recent runs: {recent or 'none'}")
    return row


def describe(store, run_id: str) -> dict:
    """Everything about one run, JSON-ready."""
    row = get(store, run_id)
    return {
        "id": row["id"], "name": row["name"], "job_type": row["job_type"], "group": row["group"],
        "config": row["config"], "command": row["command"], "cwd": row["cwd"], "host": row["host"],
        "user": row["user"], "pid": row["pid"], "started": row["started"], "ended": row["ended"],
        "outcome": state(row), "exit_status": row["exit_status"], "entity": row.get("entity"),
        "project": row.get("project"), "summary": row.get("summary", {}),
        "used": [f"{r['artifact']}:v{r['num']}" for r in store.meta.run_inputs(run_id)],
        "produced": [f"{r['artifact']}:v{r['num']}" for r in store.meta.run_outputs(run_id)],
        "pending_upserts": [f"{r['artifact']} (pending {r['distributed_id']})"
                            for r in store.meta.run_pending_upserts(run_id)],
    }


def _run_node(store, run_id: str) -> dict:
    row = store.meta.run(run_id)
    return {"run": run_id, "name": row["name"], "job_type": row["job_type"], "outcome": state(row),
            "command": row["command"]}


def lineage(store, v: repo.VersionInfo, up: bool = True, down: bool = True, depth: int = 10) -> dict:
    """The lineage graph around ``v``: nested trees upstream/downstream plus a flat edge list."""
    edges: list[dict] = []
    seen_edges: set = set()

    def edge(src: str, dst: str, kind: str) -> None:
        if (src, dst, kind) not in seen_edges:
            seen_edges.add((src, dst, kind))
            edges.append({"from": src, "to": dst, "kind": kind})

    def upstream(art: str, num: int, created: float, d: int) -> list:
        out = []
        if d <= 0:
            return out
        ref = f"{art}:v{num}"
        for p in store.meta.version_producers(art, num):
            node = _run_node(store, p["run_id"])
            node["how"] = p["how"]
            edge(f"run:{p['run_id']}", ref, "produced")
            node["inputs"] = []
            for i in store.meta.run_inputs(p["run_id"]):
                if i["at"] >= created:
                    continue  # used after this version existed: not what it was made from
                iref = f"{i['artifact']}:v{i['num']}"
                edge(iref, f"run:{p['run_id']}", "used")
                row = store.meta.version(i["artifact"], i["num"])
                node["inputs"].append({"version": iref,
                                       "produced_by": upstream(i["artifact"], i["num"], row["created"], d - 1)})
            out.append(node)
        return out

    def downstream(art: str, num: int, d: int) -> list:
        out = []
        if d <= 0:
            return out
        ref = f"{art}:v{num}"
        for c in store.meta.version_consumers(art, num):
            node = _run_node(store, c["run_id"])
            edge(ref, f"run:{c['run_id']}", "used")
            node["outputs"] = []
            for o in store.meta.run_outputs(c["run_id"]):
                row = store.meta.version(o["artifact"], o["num"])
                if row is None or row["created"] <= c["at"]:
                    continue  # made before this version was used: not made from it
                oref = f"{o['artifact']}:v{o['num']}"
                edge(f"run:{c['run_id']}", oref, "produced")
                node["outputs"].append({"version": oref, "used_by": downstream(o["artifact"], o["num"], d - 1)})
            out.append(node)
        return out

    result: dict = {"version": v.ref}
    if up:
        result["produced_by"] = upstream(v.artifact, v.num, v.created, depth)
    if down:
        result["used_by"] = downstream(v.artifact, v.num, depth)
    result["edges"] = edges
    return result


def render(tree: dict) -> list[str]:
    """An indented text view of :func:`lineage` for a terminal."""
    lines = [tree["version"]]

    def run_line(n: dict, indent: str, arrow: str) -> str:
        jt = f" [{n['job_type']}]" if n.get("job_type") else ""
        return f"{indent}{arrow} run {n['run']}{jt} {n['outcome']}: {n['command']}"

    def up(nodes, indent):
        for n in nodes:
            lines.append(run_line(n, indent, "<- produced by"))
            for i in n["inputs"]:
                lines.append(f"{indent}    <- used {i['version']}")
                up(i["produced_by"], indent + "        ")

    def down(nodes, indent):
        for n in nodes:
            lines.append(run_line(n, indent, "-> used by"))
            for o in n["outputs"]:
                lines.append(f"{indent}    -> produced {o['version']}")
                down(o["used_by"], indent + "        ")

    if "produced_by" in tree:
        up(tree["produced_by"], "  ")
    if "used_by" in tree:
        down(tree["used_by"], "  ")
    return lines
