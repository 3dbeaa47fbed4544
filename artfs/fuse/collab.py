"""A draft mount that writes into a collaborative version (``--distributed-id``).

Writing ``.artfs/commit`` upserts this mount's changes (the mount's draft is
one writer); writing ``.artfs/finish`` upserts and seals.  Both run with every
change held back, like a plain commit.  A failed upsert or finish leaves the
draft as it was: the scratch files were only copied.
"""
from __future__ import annotations

import logging

import trio

from .. import repo
from ..repo import collab, staging, workspace

log = logging.getLogger("artfs.fuse")


class MountCollab:
    def __init__(self, store, draft, distributed_id: str):
        self.store = store
        self.draft = draft
        self.did = collab.distributed_id(distributed_id)
        self.writer = f"mount:{draft.scratch_uuid}"
        self.label = f"mount of {draft.artifact}:draft"
        self.finished = ""

    def _upsert_blocking(self) -> dict:
        return staging.upsert(self.store, self.draft, self.did, self.writer, self.label)

    async def upsert(self, ops, message: str | None) -> str:
        await ops.gate.close()
        try:
            async with ops.mutex:
                await trio.to_thread.run_sync(self._upsert_blocking)
                await ops.after_commit(None)
        finally:
            ops.gate.open()
        log.info("%s", self.draft.outcome)
        return self.draft.outcome

    def _finish_blocking(self, message: str | None) -> str:
        self._upsert_blocking()
        num, unchanged = collab.finish(self.store, self.draft.artifact, self.did, message)
        outcome = f"{self.draft.artifact}:v{num}" + (" (unchanged)" if unchanged else "")
        # the mount goes on as a clean draft of the new version
        workspace.rebase_draft(self.store, self.draft, repo.version(self.store, self.draft.artifact, num), outcome)
        return outcome

    async def finish(self, ops, message: str | None) -> str:
        await ops.gate.close()
        try:
            async with ops.mutex:
                old_base = self.draft.base_root
                self.finished = await trio.to_thread.run_sync(self._finish_blocking, message)
                await ops.after_commit(old_base)
        finally:
            ops.gate.open()
        log.info("finished %s", self.finished)
        return self.finished

    def finish_outcome(self) -> str:
        return self.finished + "\n" if self.finished else ""
