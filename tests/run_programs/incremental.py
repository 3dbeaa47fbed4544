"""W&B's incremental-artifact program (cwd holds file_to_add.txt; my_artifact has dir_to_remove/)."""
import json

import artfs

with artfs.init(job_type="modify dataset") as run:
    saved = run.use_artifact("my_artifact:latest")  # recorded as an input of this run
    draft = saved.new_draft()
    draft.add_file("file_to_add.txt")
    draft.remove("dir_to_remove/")
    version = run.log_artifact(draft)

print(json.dumps({"run": run.id, "used": saved.ref, "version": version.ref}))
