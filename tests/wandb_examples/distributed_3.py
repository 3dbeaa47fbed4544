# W&B docs, "Create a new artifact version > Distributed runs", run 3, with `import wandb` replaced.
import artfs as wandb

# Once Run 1 and Run 2 are complete
with wandb.init() as run:
    artifact = wandb.Artifact("artifact_name", "artifact_type")

    # Add Files and Assets to the artifact using
    # `.add`, `.add_file`, `.add_dir`, and `.add_reference`
    artifact.add_file("image3.png")
    run.finish_artifact(artifact, distributed_id="my_dist_artifact")
