"""The hand-out between the scheduler and the agents: the messages they exchange about jobs,
and a job shown as an in-flight item (scheduled in the scheduler, building on an agent).

An idle agent asks (``WantWork``); the scheduler records the hand-out and sends ``Assign``;
agents that cannot take it give it back (``GiveBack``/``TakenBack``); a job's end goes back
as ``JobFinished`` once its result is recorded. ``AnnounceIdle`` asks the agents to say
again which are idle (after a scheduler restart), ``AgentsPaused`` clears the waiting list,
``CancelJobs`` cancels jobs that are building.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .jobs import JobSpec, JobState
from .types import InFlightItem, qualify


class WantWork(msgspec.Struct, frozen=True):
    agent: str


class AgentsPaused(msgspec.Struct, frozen=True):
    pass


class GiveBack(msgspec.Struct, frozen=True, kw_only=True):
    """From the agents: of the jobs handed to them, they hold (build) only ``holding``.

    Every other job handed out before the scheduler handles this was not taken (the agents
    were paused or busy, or a failed agents actor lost its Assign): it goes back to the
    queue, or is cancelled if its run was. Answered with :class:`TakenBack`; until that
    comes, the agents drop every Assign, so each one is either taken or given back, never
    both (the scheduler's messages reach the agents in the order it sent them).
    """

    token: int
    holding: tuple[int, ...] = ()


class TakenBack(msgspec.Struct, frozen=True):
    """To the agents: the :class:`GiveBack` with this token is done; Assigns after this are new."""

    token: int


class JobFinished(msgspec.Struct, frozen=True, kw_only=True):
    job_id: int
    state: JobState


class Reschedule(msgspec.Struct, frozen=True, kw_only=True):
    """To the scheduler: the building job ``job_id`` lost its agent (a remote worker that
    went silent) and is ``scheduled`` again in the store: queue it again, first in line."""

    job_id: int


class Assign(msgspec.Struct, frozen=True, kw_only=True):
    """To the agents: run ``spec`` on ``agent``."""

    agent: str
    spec: JobSpec


class AnnounceIdle(msgspec.Struct, frozen=True):
    """To the agents: a (re)started scheduler knows no waiting agents; idle ones ask again."""


class CancelJobs(msgspec.Struct, frozen=True, kw_only=True):
    job_ids: tuple[int, ...]
    by: str


def job_item_id(job_id: int) -> str:
    return f"job-{job_id}"


def job_item(subsystem: str, spec: JobSpec, kind: str, now: float, **extra: Any) -> InFlightItem:
    """A job as an in-flight item: scheduled (in the scheduler) or building (on an agent)."""
    where = f" on {spec.agent}" if spec.agent else ""
    return InFlightItem(
        id=qualify(subsystem, job_item_id(spec.job_id)),
        subsystem=subsystem,
        kind=kind,
        description=f"{spec.pipeline}/{spec.pipeline_counter}/{spec.stage}/{spec.job}{where}",
        started_at=now,
        cancellable=True,
        pipeline=spec.pipeline,
        counter=spec.pipeline_counter,
        stage=spec.stage,
        job=spec.job,
        scheduled_at=spec.scheduled_at,
        **extra,
    )
