"""Domain types of the job server: what a job is, how it ends, and the process port.

The actors decide; the shell (``daemon/processes.py``) runs git and job processes and
tells the asking actor how it went, with the messages at the end of this module.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

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


class ProcessPort(Protocol):
    """Runs processes for the actors. Every call returns at once; the answer comes as a message."""

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        """``git ls-remote``; then tell ``reply_to`` :class:`PollFinished`."""
        ...

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        """Read the files of ``revision`` of a config repo; then tell :class:`FilesFetched`."""
        ...

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        """Start the job; tell :class:`JobStarted`, and :class:`JobExited` once none of its processes is left."""
        ...

    def stop_job(self, job_id: int, grace: float) -> None:
        """SIGTERM to every process of the job, SIGKILL after ``grace`` seconds to those left."""
        ...

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        """Tell ``reply_to`` again how each job stands, for a restarted actor that lost its inbox:
        :class:`JobStarted` for one that runs (its :class:`JobExited` follows when it ends), the
        :class:`JobExited` told before for one that has ended, and a :class:`JobExited` with an
        ``error`` for one the runner does not know. A job still starting is told as usual."""
        ...


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
