"""A run that never ends by itself: prints its id, then sleeps (a test SIGKILLs it)."""
import time

import artfs

with artfs.init(job_type="sleeper") as run:
    print(run.id, flush=True)
    time.sleep(60)
