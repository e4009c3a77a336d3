"""The plain SQLite store: runs, jobs, job events, material revisions, paused pipelines, disabled
agents and the audit log.

:class:`Store` is a plain class over one ``sqlite3`` connection; every method is one
transaction, so a failure never leaves half a record. Its tables and their migrations are
in :mod:`actors.schema`; the actor that owns a Store in its own thread, with group commit,
and :class:`~actors.store_actor.SyncStore` are in :mod:`actors.store_actor`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator

from .budget import SQLITE_BUSY
from .errors import MaintdError
from .jobs import TERMINAL, JobState
from .schema import (
    CANCEL_DETAIL,
    MIGRATIONS,
    RESTART_DETAIL,
    RUN_INTERRUPTED_DETAIL,
    RUN_STATES,
    SCHEMA_VERSION,
    TRIGGERS,
    MaintenanceRow,
)
from .store_queries import Queries

log = logging.getLogger(__name__)


class StoreError(MaintdError):
    """The store could not read or record something (disk full, state directory not writable, ...)."""

    code = "store_unavailable"


def _event(db: sqlite3.Connection, job_id: int, at: float, state: str, detail: str | None = None) -> None:
    db.execute("INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)", (job_id, at, state, detail))


class Store(Queries):
    """One SQLite database. Use it from the thread that opened it."""

    def later(self, write: Callable[[Store], object], what: str) -> None:
        """As :meth:`~actors.store_actor.SyncStore.later`; on the plain store the write happens at once."""
        try:
            write(self)
        except (StoreError, ValueError) as exc:
            log.error("the store could not record %s: %s", what, exc)

    def __init__(self, path: str) -> None:
        self.path = path
        self._group = False  # a group transaction is open (begin_group)
        db: sqlite3.Connection | None = None
        try:
            self._db = db = sqlite3.connect(path, timeout=SQLITE_BUSY, isolation_level=None)
            db.row_factory = sqlite3.Row
            if path != ":memory:" and (mode := db.execute("PRAGMA journal_mode=WAL").fetchone()[0]) != "wal":
                raise StoreError(f"cannot open the store at {path}: it cannot use WAL mode (it stays in {mode!r} mode)")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the store at {path}: {exc} (is the state directory there and writable?)") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store at {self.path} has schema version {version}; this maintd knows up to {SCHEMA_VERSION}")
        for number in range(version, SCHEMA_VERSION):
            with self._tx(f"schema version {number + 1}") as db:
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    def close(self) -> None:
        self._db.close()

    # -- group commit (see actors.store_actor) ----------------------------------------------

    def begin_group(self) -> None:
        """Open one transaction for several calls: each call runs in a savepoint inside it
        (a refused call is rolled back alone) and nothing is committed before :meth:`commit_group`."""
        if self._group:
            raise RuntimeError("a group is open already")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the store at {self.path} could not begin a transaction: {exc}") from exc
        self._group = True

    def commit_group(self) -> None:
        """Commit the open group; on failure it is rolled back (nothing of it recorded) and a StoreError raised."""
        self._group = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the store at {self.path} could not record its writes: {exc}") from exc

    def abort_group(self) -> None:
        """Roll back the open group: nothing of it is recorded."""
        self._group = False
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _tx(self, what: str, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: committed whole, or rolled back and reported as a :class:`StoreError`.

        Inside a group it is a savepoint: released (committed later with the group) or rolled back alone.
        """
        db = self._db
        group = self._group
        try:
            db.execute("SAVEPOINT call" if group else begin)
            yield db
            db.execute("RELEASE call" if group else "COMMIT")
        except BaseException as exc:
            if group:
                # an error may have rolled back the whole transaction already (SQLITE_FULL, ...):
                # then the group fails (a StoreError below) and the actor redoes its calls one by one
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK TO call")
                        db.execute("RELEASE call")
            else:
                self._rollback()
            if isinstance(exc, sqlite3.IntegrityError):
                raise ValueError(f"the store refused {what}: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                verb = "record" if begin == "BEGIN IMMEDIATE" else "read"
                raise StoreError(f"the store at {self.path} could not {verb} {what}: {exc}") from exc
            raise

    def _read(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._tx(what, begin="BEGIN")

    # -- runs and jobs -------------------------------------------------------------------

    def next_counter(self, pipeline: str) -> int:
        with self._read(f"the counter of {pipeline}") as db:
            return db.execute("SELECT COALESCE(MAX(counter), 0) + 1 FROM runs WHERE pipeline = ?", (pipeline,)).fetchone()[0]

    def create_run(
        self, pipeline: str, counter: int, trigger: str, triggered_by: str, revisions: dict[str, str], at: float
    ) -> int:
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r} (one of {', '.join(TRIGGERS)})")
        with self._tx(f"the new run {pipeline}/{counter}") as db:
            cur = db.execute(
                "INSERT INTO runs (pipeline, counter, trigger, triggered_by, revisions, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (pipeline, counter, trigger, triggered_by, json.dumps(revisions, sort_keys=True), at),
            )
            return int(cur.lastrowid or 0)

    def create_jobs(
        self,
        run_id: int,
        pipeline: str,
        pipeline_counter: int,
        stage: str,
        stage_index: int,
        jobs: tuple[tuple[str, str], ...],
        at: float,
    ) -> list[int]:
        """The jobs of one stage, (name, log path) each, in one transaction: all of them or
        none, so a write retried after a failure never makes a job twice. Their ids, in order."""
        with self._tx(f"the jobs of {pipeline}/{pipeline_counter}/{stage}") as db:
            ids = []
            for name, log_path in jobs:
                cur = db.execute(
                    "INSERT INTO jobs (run_id, pipeline, pipeline_counter, stage, stage_counter, stage_index, name, state,"
                    " scheduled_at, log_path) VALUES (?, ?, ?, ?, 1, ?, ?, 'scheduled', ?, ?)",
                    (run_id, pipeline, pipeline_counter, stage, stage_index, name, at, log_path),
                )
                job_id = int(cur.lastrowid or 0)
                _event(db, job_id, at, JobState.SCHEDULED.value)
                ids.append(job_id)
            return ids

    def set_job_state(
        self,
        job_id: int,
        state: JobState | str,
        at: float,
        *,
        agent: str | None = None,
        returncode: int | None = None,
        cancelled_by: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Move a job to ``state``; raises ValueError for a job that has already ended."""
        new = JobState(state)
        with self._tx(f"job {job_id} becoming {new.value}") as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise ValueError(f"no job {job_id} in the store")
            if JobState(row["state"]) in TERMINAL:
                raise ValueError(f"job {job_id} is already {row['state']}; it cannot become {new.value}")
            # cancelled_by says who cancelled a job, or asked to while it runs; one that passed or failed was not.
            not_cancelled = new in (JobState.PASSED, JobState.FAILED)
            db.execute(
                "UPDATE jobs SET state = ?, agent = COALESCE(?, agent), returncode = COALESCE(?, returncode),"
                " cancelled_by = CASE WHEN ? THEN NULL ELSE COALESCE(?, cancelled_by) END,"
                " started_at = CASE WHEN ? THEN COALESCE(started_at, ?) ELSE started_at END,"
                " finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                (
                    new.value,
                    agent,
                    returncode,
                    not_cancelled,
                    cancelled_by,
                    new is JobState.BUILDING,
                    at,
                    new in TERMINAL,
                    at,
                    job_id,
                ),
            )
            _event(db, job_id, at, new.value, detail)

    def hand_out_many(self, hand_outs: tuple[tuple[int, str], ...]) -> list[bool]:
        """Record that scheduled jobs were given to agents (Assigns are on their way), in one transaction.

        Each job stays ``scheduled`` with its agent set until the agents start it (``building``)
        or give it back (:meth:`take_back`). One answer per (job id, agent) pair: False (and no
        change) for a job that is not scheduled."""
        with self._tx(f"{len(hand_outs)} jobs handed out") as db:
            done = [
                db.execute("UPDATE jobs SET agent = ? WHERE id = ? AND state = 'scheduled'", (agent, job_id)).rowcount > 0
                for job_id, agent in hand_outs
            ]
        for (job_id, agent), ok in zip(hand_outs, done, strict=True):
            if not ok:
                log.warning("job %d was handed to %s but is no longer scheduled", job_id, agent)
        return done

    def take_back(self, job_id: int) -> bool:
        """A scheduled job the agents did not take is queued again: no agent. False for one not scheduled."""
        with self._tx(f"job {job_id} taken back") as db:
            cur = db.execute("UPDATE jobs SET agent = NULL WHERE id = ? AND state = 'scheduled'", (job_id,))
            return cur.rowcount > 0

    def reschedule(self, job_id: int, at: float, detail: str) -> bool:
        """A building job whose agent was lost goes back to ``scheduled`` (no agent, no start
        time: its next start is a new attempt), with an event saying why. False for one not building."""
        with self._tx(f"job {job_id} rescheduled") as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'scheduled', agent = NULL, started_at = NULL WHERE id = ? AND state = 'building'",
                (job_id,),
            )
            if cur.rowcount == 0:
                return False
            _event(db, job_id, at, JobState.SCHEDULED.value, detail)
            return True

    def request_cancel(self, job_id: int, by: str) -> bool:
        """Record who asked to cancel a job that has not ended (the first asker stays). False for one that has ended."""
        with self._tx(f"the cancel of job {job_id}") as db:
            cur = db.execute(
                "UPDATE jobs SET cancelled_by = COALESCE(cancelled_by, ?) WHERE id = ? AND state IN ('scheduled', 'building')",
                (by, job_id),
            )
            return cur.rowcount > 0

    def finish_run(self, run_id: int, state: str, at: float) -> bool:
        """End a running run; returns False (and changes nothing) for a run that has already ended."""
        if state not in RUN_STATES or state == "running":
            raise ValueError(f"a run cannot finish as {state!r} (one of {', '.join(RUN_STATES[1:])})")
        with self._tx(f"run {run_id} finishing {state}") as db:
            row = db.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise ValueError(f"no run {run_id} in the store")
            if row["state"] != "running":
                return False
            db.execute("UPDATE runs SET state = ?, finished_at = ? WHERE id = ?", (state, at, run_id))
            return True

    def recover(
        self, at: float, on_end: Callable[[str], None] | None = None, *, keep_building: bool = False
    ) -> tuple[list[int], list[int]]:
        """At start-up: jobs a previous process left building become interrupted, and so do their runs.

        ``keep_building`` (remote agents): jobs building on remote agents (``NAME#N``) run on
        other hosts, not as children of the process that died; they stay building for the
        agents to find out how they stand. Jobs of local agents are interrupted all the same.

        Scheduled jobs of those runs are interrupted with them; a scheduled job that was on
        its way to an agent with a cancel asked for is cancelled; other scheduled jobs stay
        scheduled (on no agent) to be queued again. Returns (interrupted job ids, scheduled job ids).
        ``on_end`` is told the state of each job ended here, once it is recorded.
        """
        with self._tx("the interrupted jobs of the previous process") as db:
            # remote agents' slots are NAME#N; a local agent's job of an earlier run is interrupted all the same
            remote = " AND instr(COALESCE(agent, ''), '#') = 0" if keep_building else ""
            building = db.execute(f"SELECT id, run_id FROM jobs WHERE state = 'building'{remote} ORDER BY id").fetchall()
            changes = [(row["id"], RESTART_DETAIL) for row in building]
            for run_id in sorted({row["run_id"] for row in building}):
                db.execute(
                    "UPDATE runs SET state = 'interrupted', finished_at = ? WHERE id = ? AND state = 'running'", (at, run_id)
                )
                orphans = db.execute("SELECT id FROM jobs WHERE run_id = ? AND state = 'scheduled'", (run_id,)).fetchall()
                changes += [(row["id"], RUN_INTERRUPTED_DETAIL) for row in orphans]
            for job_id, detail in changes:
                db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ? WHERE id = ?", (at, job_id))
                _event(db, job_id, at, JobState.INTERRUPTED.value, detail)
            cancelled = db.execute("SELECT id FROM jobs WHERE state = 'scheduled' AND cancelled_by IS NOT NULL").fetchall()
            for row in cancelled:
                db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", (at, row["id"]))
                _event(db, row["id"], at, JobState.CANCELLED.value, CANCEL_DETAIL)
            db.execute("UPDATE jobs SET agent = NULL WHERE state = 'scheduled'")
            queued = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE state = 'scheduled' ORDER BY id")]
        if on_end is not None:
            for _ in changes:
                on_end(JobState.INTERRUPTED.value)
            for _ in cancelled:
                on_end(JobState.CANCELLED.value)
        return sorted(job_id for job_id, _ in changes), queued

    # -- revisions and audit -------------------------------------------------------------

    def record_revision(self, material: str, revision: str, at: float) -> bool:
        """Store ``revision`` if it is new for ``material``; True when it differs from the newest one."""
        with self._tx(f"revision {revision} of {material}") as db:
            row = db.execute("SELECT revision FROM revisions WHERE material = ? ORDER BY id DESC LIMIT 1", (material,)).fetchone()
            if row is not None and row["revision"] == revision:
                return False
            db.execute("INSERT INTO revisions (material, revision, seen_at) VALUES (?, ?, ?)", (material, revision, at))
            return True

    def last_revision(self, material: str) -> str | None:
        with self._read(f"the last revision of {material}") as db:
            row = db.execute("SELECT revision FROM revisions WHERE material = ? ORDER BY id DESC LIMIT 1", (material,)).fetchone()
            return None if row is None else str(row["revision"])

    def audit(
        self, action: str, by: str, at: float, reason: str | None = None, target: str | None = None, detail: str | None = None
    ) -> int:
        with self._tx(f"the audit entry {action!r} by {by}") as db:
            cur = db.execute(
                "INSERT INTO audit (at, action, by, reason, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (at, action, by, reason, target, detail),
            )
            return int(cur.lastrowid or 0)

    def set_pipeline_paused(self, pipeline: str, paused: bool, by: str, at: float, detail: str | None = None) -> int:
        """Record that ``pipeline`` is paused (or not) and its audit entry, in one transaction."""
        verb = "pause" if paused else "unpause"
        with self._tx(f"the {verb} of pipeline {pipeline}") as db:
            if paused:
                db.execute("INSERT OR REPLACE INTO paused_pipelines (pipeline, by, at) VALUES (?, ?, ?)", (pipeline, by, at))
            else:
                db.execute("DELETE FROM paused_pipelines WHERE pipeline = ?", (pipeline,))
            cur = db.execute(
                "INSERT INTO audit (at, action, by, reason, target, detail) VALUES (?, ?, ?, NULL, ?, ?)",
                (at, f"pipeline_{verb}", by, pipeline, detail),
            )
            return int(cur.lastrowid or 0)

    def paused_pipelines(self) -> list[str]:
        with self._read("the paused pipelines") as db:
            return [str(row["pipeline"]) for row in db.execute("SELECT pipeline FROM paused_pipelines ORDER BY pipeline")]

    def set_agent_disabled(
        self, agent: str, disabled: bool, by: str, at: float, reason: str | None = None, detail: str | None = None
    ) -> int:
        """Record that agent ``agent`` (a name, as `maintctl agents` shows it) is disabled (or
        not) and its audit entry (``agent_disable`` or ``agent_enable``), in one transaction.
        Disabling a disabled agent keeps who disabled it first, and is audited all the same."""
        action = "agent_disable" if disabled else "agent_enable"
        with self._tx(f"the {action} of {agent}") as db:
            if disabled:
                db.execute("INSERT OR IGNORE INTO disabled_agents (agent, by, at) VALUES (?, ?, ?)", (agent, by, at))
            else:
                db.execute("DELETE FROM disabled_agents WHERE agent = ?", (agent,))
            cur = db.execute(
                "INSERT INTO audit (at, action, by, reason, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (at, action, by, reason, agent, detail),
            )
            return int(cur.lastrowid or 0)

    def disabled_agents(self) -> list[str]:
        with self._read("the disabled agents") as db:
            return [str(row["agent"]) for row in db.execute("SELECT agent FROM disabled_agents ORDER BY agent")]

    def save_maintenance(self, row: MaintenanceRow, reason: str | None = None, detail: str | None = None) -> int:
        """Record a turn of maintenance on or off: the state (one row, replaced) and its audit
        entry (``enable`` or ``disable``), in one transaction."""
        action = "enable" if row.enabled else "disable"
        with self._tx(f"the {action} by {row.by} (maintenance version {row.version})") as db:
            db.execute(
                "INSERT OR REPLACE INTO maintenance (id, version, enabled, drain_id, ttl_end, by, at)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)",
                (row.version, int(row.enabled), row.drain_id, row.ttl_end, row.by, row.at),
            )
            cur = db.execute(
                "INSERT INTO audit (at, action, by, reason, target, detail) VALUES (?, ?, ?, ?, NULL, ?)",
                (row.at, action, row.by, reason, detail),
            )
            return int(cur.lastrowid or 0)

    def maintenance(self) -> MaintenanceRow | None:
        """The maintenance state last recorded; None before the first enable."""
        with self._read("the maintenance state") as db:
            row = db.execute("SELECT version, enabled, drain_id, ttl_end, by, at FROM maintenance WHERE id = 1").fetchone()
        if row is None:
            return None
        return MaintenanceRow(**{**dict(zip(row.keys(), row, strict=True)), "enabled": bool(row["enabled"])})
