# W&B docs, "Create a new artifact version > Distributed runs", run 1, with `import wandb` replaced.
import artfs as wandb

# Ensure that both runs use the same distributed_id
with wandb.init() as run:
    artifact = wandb.Artifact("artifact_name", "artifact_type")

    # Add Files and Assets to the artifact using
    # `.add`, `.add_file`, `.add_dir`, and `.add_reference`
    artifact.add_file("image1.png")
    run.upsert_artifact(artifact, distributed_id="my_dist_artifact")
