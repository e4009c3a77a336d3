"""Ports: the effects an actor may ask for. ``daemon/`` implements them; tests fake them.

Every method may be called from an actor's thread and must return at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .jobs import JobSpec, JobState
from .status import Event, Status

if TYPE_CHECKING:
    from .schema import JobRow, RunRow
    from .store import Store


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...


class Timers(Protocol):
    def arm(self, key: str, delay: float, message: Any, target: Mailbox | None = None) -> None:
        """After ``delay`` seconds, tell ``target`` (default: the supervisor) ``message``.

        Re-arming a key replaces it; keys are global, so subsystems prefix theirs.
        """
        ...

    def disarm(self, key: str) -> None:
        """Forget ``key``; a timer that already fired is not taken back."""
        ...


class StatusSink(Protocol):
    def publish(self, status: Status | None, event: Event | None) -> None:
        """The newest status (None: not rebuilt yet, a newer one follows) and the event
        that produced it (None for a quiet refresh)."""
        ...

    def fatal(self, error: str) -> None:
        """The supervisor cannot go on; the daemon must exit non-zero."""
        ...


class SubsystemLink(Protocol):
    """The connection of an external subsystem, seen from its actor."""

    def send(self, message: dict[str, Any]) -> None:
        """Queue one wire message for the process (``pause_intake``, ``cancel``, ...)."""
        ...

    def route_to(self, actor: Any) -> None:
        """Hand the process's own messages (``ExternalInFlight``, ...) to ``actor.tell``
        from now on: the subsystem's :class:`~actors.external.ExternalHost`, or the one that
        replaced it after a failure. Called before the supervisor has the new host, so
        nothing the process sends after its ``register`` reply finds none."""
        ...


class Mailbox(Protocol):
    """Where an answer goes: an actor ref, or a :class:`~actors.peers.PeerRef` that finds the
    current actor of a subsystem at each ``tell``."""

    def tell(self, message: Any) -> None: ...


class PeerTable(Protocol):
    """The built-in subsystems as the cores reach each other (:class:`actors.peers.Peers`)."""

    def tell(self, name: str, message: Any) -> None:
        """Tell the current actor of subsystem ``name``; held for it while it restarts."""
        ...

    def ref(self, name: str) -> Mailbox:
        """A mailbox for ``name`` that outlives its actor's restarts (what a core answers to)."""
        ...


class ProcessPort(Protocol):
    """Runs processes for the actors. Every call returns at once; the answer comes as a message."""

    def poll_material(self, reply_to: Mailbox, key: str, url: str, branch: str, timeout: float) -> None:
        """``git ls-remote``; then tell ``reply_to`` :class:`~actors.jobs.PollFinished`."""
        ...

    def fetch_files(self, reply_to: Mailbox, key: str, url: str, revision: str, timeout: float) -> None:
        """Read the files of ``revision`` of a config repo; then tell :class:`~actors.jobs.FilesFetched`."""
        ...

    def start_job(self, reply_to: Mailbox, spec: JobSpec) -> None:
        """Start the job; tell :class:`~actors.jobs.JobStarted`, and :class:`~actors.jobs.JobExited`
        once none of its processes is left."""
        ...

    def stop_job(self, job_id: int, grace: float) -> None:
        """SIGTERM to every process of the job, SIGKILL after ``grace`` seconds to those left."""
        ...

    def report_jobs(self, reply_to: Mailbox, job_ids: tuple[int, ...]) -> None:
        """Tell ``reply_to`` again how each job stands, for a restarted actor that lost its inbox:
        :class:`~actors.jobs.JobStarted` for one that runs (its ``JobExited`` follows when it ends),
        the ``JobExited`` told before for one that has ended, and a ``JobExited`` with an
        ``error`` for one the runner does not know. A job still starting is told as usual."""
        ...


class RemoteWorkers(Protocol):
    """The remote agents' engine (Celery) as the agents core drives it, besides the jobs'
    :class:`ProcessPort` methods. The shell tells the agents how the workers stand with
    :class:`~actors.remote_agents.WorkersSeen`."""

    def set_consuming(self, agent: str, enabled: bool) -> None:
        """Let agent ``agent`` take tasks from its queue again, or stop it (Celery's
        ``add_consumer``/``cancel_consumer``); its running job goes on."""
        ...

    def forget_job(self, job_id: int) -> None:
        """The job was rescheduled (its worker was lost): revoke its task, so a worker that
        comes back does not go on with it, and tell nothing more of that attempt."""
        ...


class AuditLog(Protocol):
    """Who did what, when: one entry of the store's audit log, recorded before the answer goes."""

    def audit(
        self, action: str, by: str, at: float, reason: str | None = None, target: str | None = None, detail: str | None = None
    ) -> int: ...


class JobStore(AuditLog, Protocol):
    """The store as the job server's cores use it: :class:`~actors.store.Store` itself (in
    tests), or :class:`~actors.store_actor.SyncStore` over the store's actor. Each call is one
    transaction and raises :class:`~actors.store.StoreError` when it cannot be recorded, and
    ValueError when the store refuses it."""

    def later(self, write: Callable[[Store], object], what: str) -> None:
        """``write`` carried out without waiting for it; a failure is logged, naming ``what``."""
        ...

    # runs and jobs
    def next_counter(self, pipeline: str) -> int: ...

    def create_run(
        self, pipeline: str, counter: int, trigger: str, triggered_by: str, revisions: dict[str, str], at: float
    ) -> int: ...

    def create_jobs(
        self,
        run_id: int,
        pipeline: str,
        pipeline_counter: int,
        stage: str,
        stage_index: int,
        jobs: tuple[tuple[str, str], ...],
        at: float,
    ) -> list[int]: ...

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
    ) -> None: ...

    def hand_out_many(self, hand_outs: tuple[tuple[int, str], ...]) -> list[bool]: ...

    def take_back(self, job_id: int) -> bool: ...

    def reschedule(self, job_id: int, at: float, detail: str) -> bool: ...

    def request_cancel(self, job_id: int, by: str) -> bool: ...

    def finish_run(self, run_id: int, state: str, at: float) -> bool: ...

    def job(self, job_id: int) -> JobRow | None: ...

    def recent_runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunRow]: ...

    def agent_jobs(self) -> list[JobRow]: ...

    # material revisions
    def record_revision(self, material: str, revision: str, at: float) -> bool: ...

    def last_revision(self, material: str) -> str | None: ...

    # paused pipelines
    def set_pipeline_paused(self, pipeline: str, paused: bool, by: str, at: float, detail: str | None = None) -> int: ...

    def paused_pipelines(self) -> list[str]: ...

    # disabled agents
    def set_agent_disabled(
        self, agent: str, disabled: bool, by: str, at: float, reason: str | None = None, detail: str | None = None
    ) -> int: ...

    def disabled_agents(self) -> list[str]: ...
