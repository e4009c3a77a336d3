"""Domain types shared by every actor: states, in-flight work, item kinds.

Names follow GoCD's: ``material_update_in_progress``, ``building_jobs``, ``scheduled_jobs``.
"""

from __future__ import annotations

import enum

import msgspec


class MaintenanceState(enum.StrEnum):
    NORMAL = "normal"
    DRAINING = "draining"
    DRAINED = "drained"


class SubsystemState(enum.StrEnum):
    """What the supervisor knows of one subsystem.

    ``unknown``: started (or restarted) and has not reported yet. ``pausing``: asked to
    stop its intake, no acknowledgement yet. ``paused``: intake stopped, work still in
    flight. ``drained``: intake stopped and nothing in flight that blocks a restart.
    ``disconnected``: an external's process went away with blocking work, which keeps
    blocking until it registers again and reports, or ``[control] reconnect_grace`` ends.
    """

    RUNNING = "running"
    UNKNOWN = "unknown"
    PAUSING = "pausing"
    PAUSED = "paused"
    DRAINED = "drained"
    FAILED = "failed"
    DISCONNECTED = "disconnected"


class OnDeadline(enum.StrEnum):
    WAIT = "wait"
    CANCEL = "cancel"


MATERIAL_UPDATE = "material_update"
BUILDING_JOB = "building_job"
SCHEDULED_JOB = "scheduled_job"

#: GoCD's grouping of running systems, by item kind; every other kind goes to ``other``.
GROUP_OF_KIND = {
    MATERIAL_UPDATE: "material_update_in_progress",
    BUILDING_JOB: "building_jobs",
    SCHEDULED_JOB: "scheduled_jobs",
}

#: Why a material update is never cancelled (the seed says so).
MDU_REFUSAL = "material updates cannot be cancelled: a partial clone can corrupt the repository; wait for it to finish"


class MaterialRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The material a material update polls, as GoCD's API shows it: a git ``url`` at ``branch``.
    ``config_repo``: the material is a config repository (pipelines as code)."""

    name: str
    url: str
    branch: str
    config_repo: bool = False


class InFlightItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One piece of work in flight. ``id`` is unique across the daemon: ``subsystem/local``.

    ``description`` is for people only; what a program needs is in the fields: a job's
    ``pipeline``, ``counter``, ``stage``, ``job`` and ``agent``; a material update's
    ``material``. Each is optional (an external subsystem's items carry none of them).
    """

    id: str
    subsystem: str
    kind: str
    description: str
    started_at: float
    cancellable: bool
    blocks_restart: bool = True
    agent: str | None = None
    pipeline: str | None = None
    stage: str | None = None
    job: str | None = None
    expected_end: float | None = None
    #: the pipeline run's counter (``PIPELINE/COUNTER/STAGE/JOB``)
    counter: int | None = None
    material: MaterialRef | None = None
    #: a job's: when it was scheduled (GoCD's ``scheduled_date``); ``started_at`` is when it started
    scheduled_at: float | None = None
    #: a material update's: when its material's ``poll_timeout`` ends it (not an ETA: the
    #: drain's ETA comes from history, and ``expected_end`` is an external's own ETA)
    timeout_at: float | None = None

    @property
    def local_id(self) -> str:
        return self.id.partition("/")[2]


def qualify(subsystem: str, local_id: str) -> str:
    return f"{subsystem}/{local_id}"
