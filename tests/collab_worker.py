"""One writer of a collaborative version, as a separate program (used by test_collab.py).

``python collab_worker.py SPEC.json`` where the spec is::

    {"store": PATH, "name": NAME, "did": ID or null ($ARTFS_GROUP), "parent": "NAME:vN" or null,
     "scratch": DIR (for the writer's local files), "ready": PATH or null, "go": PATH or null,
     "steps": [["add", {path: text}], ["add_dir", {rel: text}, prefix], ["remove", path],
               ["upsert"], ["finish"], ["touch", PATH], ["toggle_loop", path], ["grow_loop", prefix, n[, stop_file]]]}

It creates ``ready`` (if given), waits for ``go`` (if given) so that many
workers start their writes together, then runs the steps with ONE
``artfs.Artifact`` (one writer).  Each upsert's outcome is recorded, never
raised; the last line of stdout is the JSON list of outcomes.

``toggle_loop`` upserts forever, adding and removing ``path`` each time (the
contribution alternates between two known sets): a test SIGKILLs it.
``grow_loop`` adds one file and upserts, again and again, until an upsert
fails (the id was finished), ``n`` rounds, or ``stop_file`` exists; it
reports the last success.
"""
from __future__ import annotations

import json
import os
import sys
import time

import artfs


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    store = artfs.Store.open(spec["store"])
    if spec.get("ready"):
        open(spec["ready"], "w").close()
    if spec.get("go"):
        deadline = time.time() + 30
        while not os.path.exists(spec["go"]):
            if time.time() > deadline:
                sys.exit("start file never appeared")
            time.sleep(0.002)
    if spec.get("parent"):
        a = artfs.use_artifact(spec["parent"], store=store).new_draft()
    else:
        a = artfs.Artifact(spec["name"], store=store)
    scratch = spec["scratch"]
    os.makedirs(scratch, exist_ok=True)
    serial = [0]

    def local(text: str) -> str:
        serial[0] += 1
        p = os.path.join(scratch, f"f{serial[0]}")
        with open(p, "w") as f:
            f.write(text)
        return p

    def upsert() -> dict:
        try:
            p = a.upsert(spec["did"])
            return {"ok": p["contributed"]}
        except artfs.ArtfsError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    out = []
    for step in spec["steps"]:
        op = step[0]
        if op == "add":
            for path, text in step[1].items():
                a.add_file(local(text), path)
        elif op == "add_dir":
            d = os.path.join(scratch, f"dir{len(out)}-{serial[0]}")
            for rel, text in step[1].items():
                p = os.path.join(d, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w") as f:
                    f.write(text)
            a.add_dir(d, step[2])
        elif op == "remove":
            a.remove(step[1])
        elif op == "upsert":
            out.append(upsert())
        elif op == "finish":
            try:
                out.append({"ok": a.finish(spec["did"]).ref})
            except artfs.ArtfsError as exc:
                out.append({"error": type(exc).__name__, "message": str(exc)})
        elif op == "touch":
            open(step[1], "w").close()
        elif op == "grow_loop":
            # add PREFIX/0, PREFIX/1, ... upserting after each, until the id is finished
            last, stop = -1, None
            stop_file = step[3] if len(step) > 3 else None
            for i in range(step[2]):
                if stop_file and os.path.exists(stop_file):
                    break
                a.add_file(local(f"{step[1]} {i}\n"), f"{step[1]}/{i}")
                r = upsert()
                if "error" in r:
                    stop = r
                    break
                last = i
            out.append({"last": last, "stop": stop})
        elif op == "toggle_loop":
            extra = local("extra")
            while True:
                a.add_file(extra, step[1])
                upsert()
                a.remove(step[1])
                upsert()
        else:
            raise SystemExit(f"unknown step {op!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
