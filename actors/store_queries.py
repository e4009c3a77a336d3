"""The store's reads: jobs, runs, job events, the audit log and the job durations the drain's
ETA is made from. :class:`Queries` is a part of :class:`~actors.store.Store` (its base), over
the Store's read transaction (``_read``); moved out of :mod:`actors.store`, which writes.
"""

from __future__ import annotations

import contextlib
import sqlite3

from .eta import RECENT, Durations
from .schema import JOB_COLUMNS, RUN_COLUMNS, AuditRow, JobEvent, JobRow, RunRow, job_from_row, run_from_row


class Queries:
    """The Store's read-only methods; each is one read transaction."""

    def _read(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # the Store's

    def job(self, job_id: int) -> JobRow | None:
        with self._read(f"job {job_id}") as db:
            row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else job_from_row(row)

    def jobs_of_run(self, run_id: int) -> list[JobRow]:
        with self._read(f"the jobs of run {run_id}") as db:
            return [
                job_from_row(r) for r in db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY id", (run_id,))
            ]

    def recent_runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunRow]:
        """The newest runs first, each with its jobs in the order they were created."""
        with self._read("the recent runs") as db:
            where, args = ("WHERE pipeline = ?", [pipeline]) if pipeline is not None else ("", [])
            runs = db.execute(f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            jobs: dict[int, list[JobRow]] = {r["id"]: [] for r in runs}
            if runs:
                marks = ", ".join("?" * len(runs))
                for r in db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id IN ({marks}) ORDER BY id", list(jobs)):
                    jobs[r["run_id"]].append(job_from_row(r))
            return [run_from_row(r, jobs[r["id"]]) for r in runs]

    def agent_jobs(self) -> list[JobRow]:
        """Jobs given to an agent that have not ended: building, or scheduled with an agent (on their way)."""
        with self._read("the jobs on agents") as db:
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'building' OR (state = 'scheduled' AND agent IS NOT NULL)"
                " ORDER BY id"
            )
            return [job_from_row(r) for r in rows]

    def scheduled_jobs(self) -> list[JobRow]:
        with self._read("the scheduled jobs") as db:
            return [job_from_row(r) for r in db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'scheduled' ORDER BY id")]

    def job_events(self, job_id: int) -> list[JobEvent]:
        with self._read(f"the events of job {job_id}") as db:
            rows = db.execute("SELECT job_id, at, state, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
            return [JobEvent(job_id=r["job_id"], at=r["at"], state=r["state"], detail=r["detail"]) for r in rows]

    def recent_durations(self, limit_per_key: int = RECENT) -> Durations:
        """How long the newest ``limit_per_key`` passed or failed runs of each job took (seconds,
        newest first), by (pipeline, stage, job): the history the drain's ETA is read from.
        Material updates' durations are not stored (the materials subsystem keeps them)."""
        jobs: dict[tuple[str, str, str], list[float]] = {}
        with self._read("the recent job durations") as db:
            rows = db.execute(
                "SELECT pipeline, stage, name, finished_at - started_at AS took FROM ("
                " SELECT pipeline, stage, name, started_at, finished_at, ROW_NUMBER() OVER ("
                "  PARTITION BY pipeline, stage, name ORDER BY finished_at DESC, id DESC) AS n"
                " FROM jobs WHERE state IN ('passed', 'failed') AND started_at IS NOT NULL AND finished_at IS NOT NULL"
                " AND finished_at >= started_at)"
                " WHERE n <= ? ORDER BY pipeline, stage, name, n",
                (limit_per_key,),
            )
            for r in rows:
                jobs.setdefault((r["pipeline"], r["stage"], r["name"]), []).append(float(r["took"]))
        return Durations(jobs={key: tuple(took) for key, took in jobs.items()})

    def audit_entries(self, limit: int = 100) -> list[AuditRow]:
        """The newest ``limit`` entries, oldest first (newest last)."""
        with self._read("the audit log") as db:
            rows = db.execute("SELECT id, at, action, by, reason, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
            return [AuditRow(**dict(zip(r.keys(), r, strict=True))) for r in reversed(rows.fetchall())]
