"""Pipeline runs as the scheduler follows them: the messages that trigger, cancel or
reconfigure them, the :class:`Run` of one in progress, and the :class:`~actors.jobs.JobSpec`
of a job of it (its command, GoCD's environment, its workspace and log).

Moved out of :mod:`actors.scheduler`, which decides when runs start and how their stages
go on, and hands their jobs to the agents.
"""

from __future__ import annotations

import os

import msgspec

from .definitions import JobDef, PipelineDef, parse_duration
from .jobs import JobSpec, JobState


class TimerDue(msgspec.Struct, frozen=True):
    pipeline: str


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """Asked by the shell for ``maintctl trigger``; answers the new run. ``peer``: for the audit entry."""

    pipeline: str
    by: str
    peer: str | None = None


class CancelRun(msgspec.Struct, frozen=True, kw_only=True):
    """Cancel the scheduled and building jobs of a run (or of one stage of it)."""

    pipeline: str
    counter: int
    by: str
    stage: str | None = None
    peer: str | None = None


class PipelinesChanged(msgspec.Struct, frozen=True, kw_only=True):
    pipelines: tuple[PipelineDef, ...]
    paused: frozenset[str] = frozenset()


class PipelinesWanted(msgspec.Struct, frozen=True):
    """From a (re)started scheduler to the config guard: publish the pipelines again. The
    scheduler starts with the config file's pipelines only; a config repo's come from the guard."""


class Run:
    def __init__(self, run_id: int, pipeline: PipelineDef, counter: int, revisions: dict[str, str]) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.counter = counter
        self.revisions = revisions
        self.stage_index = -1
        self.pending: set[int] = set()
        self.results: dict[int, JobState] = {}


def job_spec(
    run: Run,
    stage_index: int,
    job_def: JobDef,
    job_id: int,
    log_path: str,
    work_root: str,
    scheduled_at: float | None = None,
) -> JobSpec:
    """What the shell needs to run one job of ``run``: its command, GoCD's environment, its workspace and log."""
    stage = run.pipeline.stages[stage_index]
    env = {
        "GO_PIPELINE_NAME": run.pipeline.name,
        "GO_PIPELINE_COUNTER": str(run.counter),
        "GO_STAGE_NAME": stage.name,
        "GO_STAGE_COUNTER": "1",
        "GO_JOB_NAME": job_def.name,
        **{f"GO_REVISION_{m.upper().replace('-', '_').replace('.', '_')}": rev for m, rev in run.revisions.items()},
        **job_def.env,
    }
    return JobSpec(
        job_id=job_id,
        run_id=run.run_id,
        pipeline=run.pipeline.name,
        pipeline_counter=run.counter,
        stage=stage.name,
        stage_counter=1,
        job=job_def.name,
        argv=tuple(job_def.command) if job_def.command else None,
        shell=job_def.shell,
        env=env,
        workspace=os.path.join(work_root, "workspaces", run.pipeline.name, str(run.counter), stage.name, job_def.name),
        log=log_path,
        agent="",
        timeout=parse_duration(job_def.timeout) if job_def.timeout else None,
        scheduled_at=scheduled_at,
    )
