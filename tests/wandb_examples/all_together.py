# W&B docs, "Putting it all together" (log a dataset, train on it, log a model, update the dataset
# incrementally, fetch outside a run), with `import wandb` replaced; nothing else changed.
import artfs as wandb

# 1. log a dataset
with wandb.init(project="artifacts-example", job_type="upload-dataset") as run:
    dataset = wandb.Artifact("my-dataset", type="dataset", description="raw images",
                             metadata={"source": "camera"})
    dataset.add_dir("images")
    run.log_artifact(dataset, aliases=["baseline"])

# 2. train on it and log a model
with wandb.init(project="artifacts-example", job_type="train", config={"lr": 0.01}) as run:
    data = run.use_artifact("my-dataset:latest", type="dataset")
    data_dir = data.download()
    run.log({"loss": 0.5})
    with open("model.pt", "w") as f:
        f.write(f"model trained on {sorted(data.files())} with lr={run.config.lr}\n")
    run.log_artifact("model.pt", name="my-model", type="model", aliases=["best"])

# 3. add an image to the dataset incrementally
with wandb.init(project="artifacts-example", job_type="modify dataset") as run:
    saved = run.use_artifact("my-dataset:latest")
    draft = saved.new_draft()
    draft.add_file("extra.png")
    run.log_artifact(draft)

# 4. outside a run: read the latest model and update its metadata
api = wandb.Api()
model = api.artifact("artifacts-example/my-model:best", type="model")
model.metadata["accuracy"] = 0.93
model.description = "first model"
model.save()
print(model.qualified_name, model.version, sorted(model.aliases))
