"""W&B's single-run program with `wandb` replaced by `artfs` (run with ARTFS_STORE set, cwd holding image1.png)."""
import json

import artfs

with artfs.init(job_type="train") as run:
    artifact = artfs.Artifact("artifact_name", "artifact_type")
    artifact.add_file("image1.png")
    version = run.log_artifact(artifact)

print(json.dumps({"run": run.id, "version": version.ref}))
