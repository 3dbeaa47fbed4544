"""Run 3 of W&B's distributed-runs program, after runs 1 and 2."""
import json

import artfs

with artfs.init() as run:
    artifact = artfs.Artifact("artifact_name", "artifact_type")
    artifact.add_file("image3.png")
    version = run.finish_artifact(artifact, distributed_id="my_dist_artifact")

print(json.dumps({"run": run.id, "version": version.ref}))
