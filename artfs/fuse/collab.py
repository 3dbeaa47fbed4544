"""A draft mount that writes into a collaborative version (``--distributed-id``).

Writing ``.artfs/commit`` upserts this mount's changes (the mount's draft is
one writer); writing ``.artfs/finish`` upserts and seals.  Both run with
every mutation held back (``Operations.exclusive``), like a plain commit.
"""
from __future__ import annotations

import logging

from .. import collab

log = logging.getLogger("artfs.fuse")


class MountCollab:
    def __init__(self, store, draft, distributed_id: str):
        self.store = store
        self.draft = draft
        self.did = collab.distributed_id(distributed_id)
        self.writer = f"mount:{draft.id}"
        self.label = f"mount of {draft.artifact}:draft"
        self.upsert_outcome = ""
        self.finished = ""

    def _upsert_blocking(self) -> dict:
        return collab.upsert(self.store, self.draft, self.did, self.writer, self.label)

    async def upsert(self, ops, message: str | None) -> str:
        p = await ops.exclusive(self._upsert_blocking)
        ops.vfs.after_commit()
        self.upsert_outcome = f"upserted into {self.draft.artifact} (pending {self.did}): {p['contributed']} files"
        self.draft.meta.set_draft_outcome(self.draft.id, self.upsert_outcome)
        self.draft.outcome = self.upsert_outcome
        log.info("%s", self.upsert_outcome)
        return self.upsert_outcome

    def _finish_blocking(self, message: str | None) -> tuple[int, bool]:
        collab.upsert(self.store, self.draft, self.did, self.writer, self.label)
        return collab.finish(self.store, self.draft.artifact, self.did, message)

    async def finish(self, ops, message: str | None) -> str:
        num, unchanged = await ops.exclusive(self._finish_blocking, message)
        d = self.draft
        self.finished = f"{d.artifact}:v{num}" + (" (unchanged)" if unchanged else "")
        row = d.meta.version(d.artifact, num)
        d.rebase(num, row["root"], self.finished)  # the mount goes on as a clean draft of the new version
        ops.vfs.after_commit()
        log.info("finished %s", self.finished)
        return self.finished

    def finish_outcome(self) -> str:
        return self.finished + "\n" if self.finished else ""
