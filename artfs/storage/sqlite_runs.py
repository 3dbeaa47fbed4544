"""Runs and lineage in the SQLite metadata store (mixed into SqliteMeta).

A run row is written when the run starts and updated when it ends.  Uses
(``run_inputs``) and products (``run_outputs``; ``run_upserts`` for
contributions to a collaborative version, resolved to the version once it is
finished) carry the time they happened, which is what keeps lineage acyclic
(see runs.py).
"""
from __future__ import annotations

import json
import time

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, name TEXT, job_type TEXT, grp TEXT, config TEXT NOT NULL DEFAULT '{}',
    command TEXT, cwd TEXT, host TEXT, user TEXT, pid INTEGER, started REAL NOT NULL, ended REAL,
    outcome TEXT NOT NULL DEFAULT 'running', exit_status INTEGER, entity TEXT, project TEXT,
    summary TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS run_inputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_inputs_v ON run_inputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_outputs(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, num INTEGER NOT NULL, how TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, num));
CREATE INDEX IF NOT EXISTS run_outputs_v ON run_outputs(artifact, num);
CREATE TABLE IF NOT EXISTS run_upserts(
    run_id TEXT NOT NULL, artifact TEXT NOT NULL, distributed_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY(run_id, artifact, distributed_id));
"""


class RunsMeta:
    def run_start(self, row: dict) -> None:
        row = dict(row)
        row["config"] = json.dumps(row.get("config") or {}, sort_keys=True, default=str)
        cols = ", ".join(row)
        with self.tx() as db:
            db.execute(f"INSERT INTO runs({cols}) VALUES({', '.join('?' * len(row))})", tuple(row.values()))

    def run_resume(self, run_id: str, pid: int) -> bool:
        """A run started again (``init(id=..., resume=...)``): running once more; False if unknown."""
        with self.tx() as db:
            cur = db.execute("UPDATE runs SET outcome='running', ended=NULL, exit_status=NULL, pid=? WHERE id=?",
                             (pid, run_id))
            return cur.rowcount > 0

    def run_log(self, run_id: str, data: dict) -> None:
        """Merge logged values into the run's summary (the last value of each key wins)."""
        with self.tx() as db:
            r = db.execute("SELECT summary FROM runs WHERE id=?", (run_id,)).fetchone()
            if r is None:
                return
            summary = json.loads(r["summary"] or "{}")
            summary.update(data)
            db.execute("UPDATE runs SET summary=? WHERE id=?", (json.dumps(summary, sort_keys=True, default=str), run_id))

    def run_end(self, run_id: str, outcome: str, exit_status: int | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE runs SET ended=?, outcome=?, exit_status=? WHERE id=?",
                       (time.time(), outcome, exit_status, run_id))

    def run(self, run_id: str) -> dict | None:
        r = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run(r) if r else None

    def runs(self, limit: int | None = None) -> list[dict]:
        q = "SELECT * FROM runs ORDER BY started DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._run(r) for r in self.db.execute(q)]

    def run_used(self, run_id: str, artifact: str, num: int) -> None:
        with self.tx() as db:
            # a version this run produced is not one of its inputs (lineage stays acyclic)
            if db.execute("SELECT 1 FROM run_outputs WHERE run_id=? AND artifact=? AND num=?",
                          (run_id, artifact, num)).fetchone():
                return
            db.execute("INSERT OR IGNORE INTO run_inputs VALUES(?,?,?,?)", (run_id, artifact, num, time.time()))

    def run_produced(self, run_id: str, artifact: str, num: int, how: str, created: float) -> bool:
        """Record an output; only a version made during the run counts (returns whether recorded)."""
        with self.tx() as db:
            r = db.execute("SELECT started FROM runs WHERE id=?", (run_id,)).fetchone()
            if r is None or created < r["started"]:
                return False  # an unchanged result that already existed: not produced by this run
            if db.execute("SELECT 1 FROM run_inputs WHERE run_id=? AND artifact=? AND num=?",
                          (run_id, artifact, num)).fetchone():
                return False
            db.execute("INSERT OR IGNORE INTO run_outputs VALUES(?,?,?,?,?)", (run_id, artifact, num, how, time.time()))
            return True

    def run_upserted(self, run_id: str, artifact: str, did: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO run_upserts VALUES(?,?,?,?)", (run_id, artifact, did, time.time()))

    def run_inputs(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT artifact, num, at FROM run_inputs WHERE run_id=? ORDER BY at", (run_id,))]

    def run_outputs(self, run_id: str) -> list[dict]:
        """Versions the run produced: logged/committed, and collaborative versions it upserted into."""
        rows = [dict(r) for r in self.db.execute(
            "SELECT artifact, num, how, at FROM run_outputs WHERE run_id=? ORDER BY at", (run_id,))]
        for r in self.db.execute(
                "SELECT u.artifact, p.finished AS num, u.at, p.distributed_id FROM run_upserts u JOIN pending p"
                " ON p.artifact=u.artifact AND p.distributed_id=u.distributed_id WHERE u.run_id=? AND p.finished IS NOT NULL",
                (run_id,)):
            if not any(x["artifact"] == r["artifact"] and x["num"] == r["num"] for x in rows):
                rows.append({"artifact": r["artifact"], "num": r["num"], "how": "upserted", "at": r["at"]})
        return rows

    def run_pending_upserts(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT u.artifact, u.distributed_id, u.at FROM run_upserts u LEFT JOIN pending p ON p.artifact=u.artifact"
            " AND p.distributed_id=u.distributed_id WHERE u.run_id=? AND (p.finished IS NULL)", (run_id,))]

    def version_producers(self, artifact: str, num: int) -> list[dict]:
        """Runs that produced a version (several for a collaborative one), with how."""
        rows = [dict(r) for r in self.db.execute(
            "SELECT run_id, how, at FROM run_outputs WHERE artifact=? AND num=? ORDER BY at", (artifact, num))]
        for r in self.db.execute(
                "SELECT u.run_id, u.at FROM run_upserts u JOIN pending p ON p.artifact=u.artifact"
                " AND p.distributed_id=u.distributed_id WHERE p.artifact=? AND p.finished=?", (artifact, num)):
            if not any(x["run_id"] == r["run_id"] for x in rows):
                rows.append({"run_id": r["run_id"], "how": "upserted", "at": r["at"]})
        return rows

    def version_consumers(self, artifact: str, num: int) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT run_id, at FROM run_inputs WHERE artifact=? AND num=? ORDER BY at", (artifact, num))]
