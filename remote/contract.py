"""What maintd and its remote agents agree on: one Celery task, JSON only, and a Redis stream per job.

- Each ``maintd-agent --name NAME`` worker consumes one queue of its own,
  :func:`worker_queue` (``<queue>.<NAME>``), with a concurrency of ``--slots`` and a
  prefetch of one, and is the Celery node ``NAME@<host>``. maintd publishes a job to the
  queue of a worker it knows has an idle slot, so the broker never holds a backlog; it
  disables an agent with Celery's ``cancel_consumer`` on that queue.
- The task (:data:`TASK_NAME`) takes one argument, a :class:`RemoteJob` as a JSON object,
  and returns a :class:`RemoteResult` as a JSON object, once none of the job's processes
  is left. Its id (:func:`task_id`) is made from the job and the moment it was handed to
  the agent, so maintd finds it again after its own restart, and a rescheduled job is a
  new task.
- The job's output goes, as it is written, to the Redis stream :func:`log_stream` (capped
  at :data:`STREAM_MAXLEN` entries, kept :data:`STREAM_TTL` seconds after the end): entries
  ``{"data": <bytes>}``; first ``{"start": <JSON of JobStart>}`` once the main process runs,
  and last ``{"end": <JSON of RemoteResult>}``.
- A revoke with ``terminate=True`` sends SIGTERM to the task's pool process: the task sends
  SIGTERM to every process of the job, SIGKILL after ``RemoteJob.grace`` to those left,
  and returns a result with ``cancelled`` true once none is left.
"""

from __future__ import annotations

import msgspec

TASK_NAME = "maintd.run_job"
DEFAULT_QUEUE = "maintd"
STREAM_MAXLEN = 100_000
STREAM_TTL = 7 * 24 * 3600
#: how long Celery's result backend keeps a job's result (maintd reads it back after a restart)
RESULT_EXPIRES = 7 * 24 * 3600


def worker_queue(queue: str, name: str) -> str:
    """The queue of the agent ``name``: only that worker consumes it."""
    return f"{queue}.{name}"


def node_name(name: str, host: str) -> str:
    """The Celery node name (hostname) of agent ``name`` on ``host``."""
    return f"{name}@{host}"


def agent_of(node: str) -> str:
    """The agent's name from a Celery node name (``NAME@host`` -> ``NAME``)."""
    return node.split("@", 1)[0]


def task_id(instance: str, job_id: int, handed_at: float) -> str:
    """The task id of one attempt of a job: ``instance`` names maintd's state directory."""
    return f"maintd-{instance}-{job_id}-{round(handed_at * 1000)}"


def log_stream(task: str) -> str:
    """The Redis stream that carries the output of task ``task``."""
    return f"maintd:log:{task}"


class RemoteJob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The task's argument: one job, as a local agent would run it."""

    task_id: str
    job_id: int
    pipeline: str
    pipeline_counter: int
    stage: str
    stage_counter: int
    job: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    #: the GO_* variables and the job's own
    env: dict[str, str] = {}
    timeout: float | None = None
    #: SIGTERM, then SIGKILL after this many seconds (a cancel, a timeout, leftovers)
    grace: float = 10.0
    #: what is left running when the main process exits: "kill" (after grace) or "wait"
    leftovers: str = "kill"


class JobStart(msgspec.Struct, frozen=True, kw_only=True):
    """The stream's first entry: the job's main process runs."""

    worker: str
    pid: int
    at: float


class RemoteResult(msgspec.Struct, frozen=True, kw_only=True):
    """The task's return value (and the stream's last entry): how the job ended."""

    #: the main process's, as subprocess gives it (negative: killed by that signal); None if it never ran
    returncode: int | None
    error: str | None = None
    timed_out: bool = False
    leftovers: int = 0
    #: ended by a revoke (maintd's cancel)
    cancelled: bool = False
    worker: str = ""
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None


def celery_settings(broker: str) -> dict[str, object]:
    """The Celery configuration both sides use: JSON only (never pickle), events on,
    results in the same Redis, a prefetch of one, acknowledged on receipt (maintd
    reschedules the job of a lost worker itself: a redelivery would run it twice)."""
    return {
        "broker_url": broker,
        "result_backend": broker,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_track_started": True,
        "worker_send_task_events": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": False,
        "result_expires": RESULT_EXPIRES,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": DEFAULT_QUEUE,
    }


def make_app(broker: str, name: str = "maintd") -> object:
    """A Celery app with :func:`celery_settings` (imported here: maintctl never needs Celery)."""
    from celery import Celery

    app = Celery(name)
    app.conf.update(celery_settings(broker))
    return app
