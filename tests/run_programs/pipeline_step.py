"""One step of a prepare -> train -> eval pipeline through the API: ``python pipeline_step.py STEP``."""
import json
import os
import sys
import tempfile

import artfs


def write(d: str, name: str, text: str) -> str:
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


step = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp, artfs.init(job_type=step) as run:
    if step == "prepare":
        a = artfs.Artifact("ds", "dataset")
        a.add_file(write(tmp, "train.csv", "x,y\n1,2\n3,4\n"))
        v = run.log_artifact(a)
    elif step == "train":
        ds = run.use_artifact("ds:latest")
        rows = ds.open("train.csv").read().decode().splitlines()
        a = artfs.Artifact("model", "model")
        a.add_file(write(tmp, "weights.txt", f"trained on {len(rows) - 1} rows\n"))
        v = run.log_artifact(a)
    elif step == "eval":
        ds = run.use_artifact("ds:latest")
        model = run.use_artifact("model:latest")
        a = artfs.Artifact("preds", "predictions")
        text = model.open("weights.txt").read().decode() + ds.open("train.csv").read().decode()
        a.add_file(write(tmp, "preds.txt", text))
        v = run.log_artifact(a)
    else:
        sys.exit(f"unknown step {step}")

print(json.dumps({"run": run.id, "version": v.ref}))
