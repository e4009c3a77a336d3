"""The store's schema: the SQLite tables, their migrations and the rows read from them.

:data:`MIGRATIONS` holds one list of statements per schema version (``PRAGMA user_version``
says how many ran); :class:`~actors.store.Store` runs the missing ones when it opens a
database. :class:`JobRow`, :class:`RunRow`, :class:`JobEvent` and :class:`AuditRow` are what
its queries return.
"""

from __future__ import annotations

import json
import sqlite3

import msgspec

from .jobs import JobState

TRIGGERS = ("material", "timer", "user")
RUN_STATES = ("running", "passed", "failed", "cancelled", "interrupted")
RESTART_DETAIL = "daemon restarted while building"
RUN_INTERRUPTED_DETAIL = "its run was interrupted by a daemon restart"
CANCEL_DETAIL = "its cancel was asked for before a daemon restart"

# One list of statements per schema version; PRAGMA user_version says how many ran.
_JOB_STATES = ", ".join(f"'{s.value}'" for s in JobState)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE runs (
            id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, counter INTEGER NOT NULL,
            trigger TEXT NOT NULL CHECK (trigger IN ('material', 'timer', 'user')), triggered_by TEXT NOT NULL,
            revisions TEXT NOT NULL DEFAULT '{{}}',
            state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in RUN_STATES)})),
            created_at REAL NOT NULL, finished_at REAL, UNIQUE (pipeline, counter))""",
        f"""CREATE TABLE jobs (
            id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs (id), pipeline TEXT NOT NULL,
            pipeline_counter INTEGER NOT NULL, stage TEXT NOT NULL, stage_counter INTEGER NOT NULL,
            stage_index INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ({_JOB_STATES})),
            agent TEXT, scheduled_at REAL NOT NULL, started_at REAL, finished_at REAL, returncode INTEGER,
            cancelled_by TEXT, log_path TEXT NOT NULL)""",
        "CREATE INDEX jobs_by_run ON jobs (run_id)",
        "CREATE INDEX jobs_by_state ON jobs (state)",
        """CREATE TABLE job_events (
            id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id), at REAL NOT NULL,
            state TEXT NOT NULL, detail TEXT)""",
        "CREATE INDEX job_events_by_job ON job_events (job_id)",
        """CREATE TABLE revisions (
            id INTEGER PRIMARY KEY, material TEXT NOT NULL, revision TEXT NOT NULL, seen_at REAL NOT NULL)""",
        "CREATE INDEX revisions_by_material ON revisions (material, id)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, by TEXT NOT NULL,
            reason TEXT, target TEXT, detail TEXT)""",
    ),
    # 2: the pause state of pipelines, so that no restart (of the config actor or the daemon) forgets it
    (
        """CREATE TABLE paused_pipelines (
            pipeline TEXT PRIMARY KEY, by TEXT NOT NULL, at REAL NOT NULL)""",
    ),
    # 3: the maintenance version and the last drain, so that no restart reuses a version
    (
        """CREATE TABLE maintenance (
            id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, enabled INTEGER NOT NULL,
            drain_id TEXT, ttl_end REAL, by TEXT NOT NULL, at REAL NOT NULL)""",
    ),
    # 4: the agents an operator disabled (`maintctl agent disable`), so that no restart enables them
    (
        """CREATE TABLE disabled_agents (
            agent TEXT PRIMARY KEY, by TEXT NOT NULL, at REAL NOT NULL)""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class JobRow(msgspec.Struct, frozen=True, kw_only=True):
    """One job. ``agent`` is set once the scheduler hands the job out (still ``scheduled``
    while the Assign is on its way); ``cancelled_by`` is who cancelled it, or, on a job
    that has not ended, who asked to: a restarted actor learns both from here."""

    id: int
    run_id: int
    pipeline: str
    pipeline_counter: int
    stage: str
    stage_counter: int
    stage_index: int
    name: str
    state: str
    agent: str | None
    scheduled_at: float
    started_at: float | None
    finished_at: float | None
    returncode: int | None
    cancelled_by: str | None
    log_path: str


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    pipeline: str
    counter: int
    trigger: str
    triggered_by: str
    revisions: dict[str, str]
    state: str
    created_at: float
    finished_at: float | None
    jobs: tuple[JobRow, ...] = ()


class JobEvent(msgspec.Struct, frozen=True, kw_only=True):
    job_id: int
    at: float
    state: str
    detail: str | None


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: float
    action: str
    by: str
    reason: str | None
    target: str | None
    detail: str | None


class MaintenanceRow(msgspec.Struct, frozen=True, kw_only=True):
    """The maintenance state as last turned on or off: ``version`` counts those turns;
    ``drain_id`` and ``ttl_end`` are the drain's while ``enabled``."""

    version: int
    enabled: bool
    drain_id: str | None
    ttl_end: float | None
    by: str
    at: float


JOB_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(JobRow))
RUN_COLUMNS = ", ".join(f.name for f in msgspec.structs.fields(RunRow) if f.name != "jobs")


def job_from_row(row: sqlite3.Row) -> JobRow:
    return JobRow(**dict(zip(row.keys(), row, strict=True)))


def run_from_row(row: sqlite3.Row, jobs: list[JobRow]) -> RunRow:
    return RunRow(**{**dict(zip(row.keys(), row, strict=True)), "revisions": json.loads(row["revisions"]), "jobs": tuple(jobs)})
