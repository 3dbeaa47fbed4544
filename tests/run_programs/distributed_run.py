"""Runs 1 and 2 of W&B's distributed-runs program: ``python distributed_run.py IMAGE [GO_FILE]``.

Both run in parallel processes; GO_FILE (if given) is a start line so that
their upserts overlap.  Prints the run's id as JSON.
"""
import json
import os
import sys
import time

import artfs

image = sys.argv[1]
if len(sys.argv) > 2:
    deadline = time.time() + 30
    while not os.path.exists(sys.argv[2]):
        if time.time() > deadline:
            sys.exit("start file never appeared")
        time.sleep(0.002)

with artfs.init(group="g7") as run:
    artifact = artfs.Artifact("artifact_name", "artifact_type")
    artifact.add_file(image)
    run.upsert_artifact(artifact, distributed_id="my_dist_artifact")

print(json.dumps({"run": run.id}))
