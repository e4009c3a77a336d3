"""Domain types of the job server: what a job is and how it ends.

The actors decide; the shell (``daemon/processes.py``) runs git and job processes (the
:class:`~actors.ports.ProcessPort`) and tells the asking actor how it went, with the
messages at the end of this module.
"""

from __future__ import annotations

import enum

import msgspec


class JobState(enum.StrEnum):
    SCHEDULED = "scheduled"
    BUILDING = "building"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


TERMINAL = frozenset({JobState.PASSED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED})


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the shell needs to run one job on one agent.

    ``argv`` runs without a shell; ``shell`` (only when the config says so) runs with
    ``/bin/sh -c``. ``workspace`` and ``log`` are paths inside the state directory.
    """

    job_id: int
    run_id: int
    pipeline: str
    pipeline_counter: int
    stage: str
    stage_counter: int
    job: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    env: dict[str, str] = {}
    workspace: str
    log: str
    agent: str
    timeout: float | None = None
    #: when the job was scheduled (its row's ``scheduled_at``)
    scheduled_at: float | None = None
    #: when it was handed to its agent (its row's ``started_at``): names a remote attempt
    started_at: float | None = None


def job_argv(argv: tuple[str, ...] | None, shell: str | None) -> list[str]:
    """What a job runs (an agent's, local or remote): ``shell`` through ``/bin/sh -c``, else ``argv``."""
    if shell is not None:
        return ["/bin/sh", "-c", shell]
    if not argv:
        raise ValueError("the job has neither argv nor shell")
    return list(argv)


class PollFinished(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    revision: str | None = None
    error: str | None = None
    timed_out: bool = False


class FilesFetched(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    revision: str
    files: dict[str, str] = {}
    error: str | None = None


class JobStarted(msgspec.Struct, frozen=True, kw_only=True):
    job_id: int
    pid: int


class JobExited(msgspec.Struct, frozen=True, kw_only=True):
    """``returncode`` as subprocess gives it (negative: killed by that signal): the main
    process's. Told once none of the job's processes is left; ``leftovers`` counts those the
    runner killed after the main process exited (``[agents] leftover_processes = "kill"``)."""

    job_id: int
    returncode: int | None
    error: str | None = None
    timed_out: bool = False
    leftovers: int = 0
    #: nothing of it ran: its task never reached a worker (remote agents); it is queued again
    unstarted: bool = False
    #: its worker lost it without a result (remote agents: a worker restarted mid-job); it is run again
    lost: bool = False
