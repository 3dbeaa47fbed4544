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
from ..repo import collab, workspace

log = logging.getLogger("artfs.fuse")


class MountCollab:
    def __init__(self, store, draft, distributed_id: str):
        self.store = store
        self.draft = draft
        self.did = collab.distributed_id(distributed_id)
        self.writer = f"mount:{draft.scratch_uuid}"
        self.label = f"mount of {draft.artifact}:draft"
        self.finished = ""

    async def _upsert(self, ops) -> dict:
        """Upsert (worker thread), then point the draft's records at the copies: planned and
        applied here on the loop, persisted (durably) in a worker thread."""
        d = self.draft
        p, done = await trio.to_thread.run_sync(collab.upsert, self.store, d, self.did, self.writer, self.label)
        ch = d.settle(done)
        await trio.to_thread.run_sync(d.persist, ch)
        d.apply(ch)
        outcome = f"upserted into {d.artifact} (pending {self.did}): {p['contributed']} files"
        await trio.to_thread.run_sync(self._record, outcome)
        d.outcome = outcome
        await trio.to_thread.run_sync(d.flush_dead)
        return p

    def _record(self, outcome: str) -> None:
        self.store.meta.durable()
        self.store.meta.set_draft_outcome(self.draft.id, outcome)

    async def upsert(self, ops, message: str | None) -> str:
        await ops.gate.close()
        try:
            async with ops.mutex:
                await self._upsert(ops)
                await ops.after_commit(None)
        finally:
            ops.gate.open()
        log.info("%s", self.draft.outcome)
        return self.draft.outcome

    def _finish_blocking(self, message: str | None) -> tuple[str, list[str]]:
        num, unchanged = collab.finish(self.store, self.draft.artifact, self.did, message)
        outcome = f"{self.draft.artifact}:v{num}" + (" (unchanged)" if unchanged else "")
        # the mount goes on as a clean draft of the new version (installed by the caller)
        old = workspace.reset_to_version(self.store, self.draft, repo.version(self.store, self.draft.artifact, num),
                                         outcome)
        return outcome, old

    async def finish(self, ops, message: str | None) -> str:
        await ops.gate.close()
        try:
            async with ops.mutex:
                old_base = self.draft.base_root
                await self._upsert(ops)
                self.finished, dead = await trio.to_thread.run_sync(self._finish_blocking, message)
                await ops.start_clean(dead)
                await ops.after_commit(old_base)
                ops.give_back_memory(len(dead))
        finally:
            ops.gate.open()
        log.info("finished %s", self.finished)
        return self.finished

    def finish_outcome(self) -> str:
        return self.finished + "\n" if self.finished else ""
