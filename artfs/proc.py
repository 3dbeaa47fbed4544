"""Process liveness, as the tools that wait for daemons and report runs need it."""
from __future__ import annotations


def alive(pid: int) -> bool:
    """True while the process runs.  A zombie (exited, not yet reaped: daemons are
    reparented to init, which may reap late) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
