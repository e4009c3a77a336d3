"""The remote agents' shell: jobs published to Celery workers (``maintd-agent``) through Redis.

Implements the job half of :class:`actors.ports.ProcessPort` (git polls stay local: the
:class:`~daemon.processes.ProcessRunner` does them) and :class:`actors.ports.RemoteWorkers`.
Every Celery and Redis call is blocking, so each runs in a worker thread; publishes,
revokes and consumer changes go through one thread at a time, in the order asked.

What maintd knows of a job comes from three places, so that a missed event cannot make
a job vanish (:mod:`remote.contract`; how each is read: :mod:`daemon.celery_follow`, the
runner's base; the log files: :mod:`daemon.celery_streams`; the workers:
:mod:`daemon.celery_workers`):

- Celery's events (one receiver thread): ``task-started`` tells that it runs;
  ``task-succeeded``/``-failed``/``-revoked`` make the runner look at once how it ended;
  ``worker-online``/``-heartbeat``/``-offline`` say which workers are there.
- The job's Redis stream: its output, copied to the job's log under the state directory as
  it is written (``maintctl logs`` and the page read that), its start and its result.
- Celery's result backend, read for every job in flight every ``heartbeat``: its end
  (``SUCCESS`` with the task's result, ``FAILURE``), or a revoke before it started.

Every ``heartbeat`` the runner pings the broker and tells the agents actor
(:class:`~actors.remote_agents.WorkersSeen`) the workers it knows, with their slots (asked
once of each worker: Celery's ``inspect stats``) and when each was last heard from; the
actor decides what is lost. A job's end is told (:class:`~actors.jobs.JobExited`) only
once its result is known, after the last of its output is in its log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from actors.jobs import JobExited, JobSpec, JobStarted
from actors.remote_agents import worker_of
from daemon.bridge import Bridge
from daemon.broker import masked
from daemon.celery_follow import STREAM_BLOCK_MS, Following
from daemon.celery_streams import Task, close_log, open_log
from daemon.celery_workers import CONTROL_TIMEOUT, WorkerTable
from daemon.processes import spawn, tell
from remote import contract

__all__ = ["CeleryRunner"]

log = logging.getLogger("maintd.celery")


class CeleryRunner(Following):
    """Runs the jobs on Celery workers (:class:`actors.ports.ProcessPort`'s job methods and
    :class:`actors.ports.RemoteWorkers`); polls go to ``local``."""

    def __init__(
        self,
        bridge: Bridge,
        nursery: trio.Nursery,
        *,
        local: Any,
        broker: str,
        queue: str,
        instance: str,
        heartbeat: float,
        lost_timeout: float,
        grace: float,
        leftovers: str,
        root: str | os.PathLike[str] | None,
        rows: Callable[[tuple[int, ...]], Any],
        on_backend: Callable[[str | None], None] = lambda error: None,
    ) -> None:
        import redis
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        self.bridge = bridge
        self.nursery = nursery
        self.local = local
        self.shown_broker = masked(broker)
        self.queue = queue
        self.instance = instance
        self.heartbeat = heartbeat
        #: a task not taken within this is dropped by its worker (Celery's ``expires``): by
        #: then the agents have found its worker lost and run the job elsewhere, so a worker
        #: that comes back later must not run it too
        self.lost_timeout = lost_timeout
        self.grace = grace
        self.leftovers = leftovers
        self.root = None if root is None else os.path.abspath(root)
        #: ``await rows(job_ids)``: the store's rows of those jobs (for jobs found after a restart)
        self.rows = rows
        self.on_backend = on_backend
        self.app: Any = contract.make_app(broker)
        self.redis = redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        #: for the heartbeat's ping: one quick retry, so that it says soon that the broker is gone
        self.redis_ping = redis.Redis.from_url(
            broker, socket_timeout=2, socket_connect_timeout=1, retry=Retry(ConstantBackoff(0.1), 1)
        )
        #: for the blocking read of the streams only
        self.redis_block = redis.Redis.from_url(broker, socket_timeout=5 + STREAM_BLOCK_MS / 1000, socket_connect_timeout=2)
        self.tasks: dict[int, Task] = {}
        self.by_task: dict[str, Task] = {}
        self.workers = WorkerTable(self.app, spawn=self._spawn, changed=self._send_workers)
        self.agents: Any = None  # the agents actor's mailbox, set by run()
        self.broker_error: str | None = "not connected yet"
        self._control = trio.CapacityLimiter(1)  # publishes, revokes, consumers: one at a time, in order
        self._new_stream = trio.Event()
        self._closed = threading.Event()
        self._receiver: Any = None
        #: jobs whose cancel was asked before they were followed (a restart): revoked once they are
        self._cancels: set[int] = set()
        self._reconciling = False

    # -- the ports: called from actor threads, nothing but call_soon -----------------------

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        self.local.poll_material(reply_to, key, url, branch, timeout)

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        self.local.fetch_files(reply_to, key, url, revision, timeout)

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        self.bridge.call_soon(self._start_job, reply_to, spec)

    def stop_job(self, job_id: int, grace: float) -> None:
        self.bridge.call_soon(self._stop_job, job_id)

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        self.bridge.call_soon(self._spawn, self._report_jobs, reply_to, tuple(job_ids))

    def set_consuming(self, agent: str, enabled: bool) -> None:
        self.bridge.call_soon(self._spawn, self._set_consuming, agent, enabled)

    def forget_job(self, job_id: int) -> None:
        self.bridge.call_soon(self._forget_job, job_id)

    # -- for the daemon (trio thread) --------------------------------------------------------

    def running(self) -> int:
        return len(self.tasks)

    async def run(self, agents: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the workers and the jobs until cancelled; ``agents``: the agents' mailbox."""
        self.agents = agents
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_events)
            nursery.start_soon(self._pump_streams)
            nursery.start_soon(self._heartbeats)
            task_status.started()

    async def aclose(self) -> None:
        """Stop watching; the remote jobs go on (that is the point of remote agents)."""
        self._closed.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        for task in list(self.tasks.values()):
            close_log(task)
        await self.local.aclose()

    # -- trio side ------------------------------------------------------------------------

    def _spawn(self, fn: Any, *args: Any) -> None:
        spawn(self.nursery, fn, *args)

    _tell = staticmethod(tell)

    def _track(self, job_id: int, task: str, log_path: str, reply_to: Any) -> Task:
        self._cancels.discard(job_id)
        old = self.tasks.pop(job_id, None)
        if old is not None:
            self.by_task.pop(old.task_id, None)
            close_log(old)
        t = Task(job_id=job_id, task_id=task, log_path=log_path, reply_to=reply_to, stream=contract.log_stream(task))
        self.tasks[job_id] = t
        self.by_task[task] = t
        self._new_stream.set()
        return t

    def _untrack(self, t: Task) -> None:
        if self.tasks.get(t.job_id) is t:
            del self.tasks[t.job_id]
        self.by_task.pop(t.task_id, None)
        close_log(t)

    def _start_job(self, reply_to: Any, spec: JobSpec) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        try:
            handed = spec.started_at if spec.started_at is not None else time.time()
            t = self._track(spec.job_id, contract.task_id(self.instance, spec.job_id, handed), spec.log, reply_to)
            self._spawn(self._publish, t, spec)
        except Exception as exc:
            log.exception("cannot publish job %s", spec.job_id)
            self._tell(reply_to, JobExited(job_id=spec.job_id, returncode=None, error=f"not published: {exc}", unstarted=True))

    async def _publish(self, t: Task, spec: JobSpec) -> None:
        payload = msgspec.to_builtins(
            contract.RemoteJob(
                task_id=t.task_id,
                job_id=spec.job_id,
                pipeline=spec.pipeline,
                pipeline_counter=spec.pipeline_counter,
                stage=spec.stage,
                stage_counter=spec.stage_counter,
                job=spec.job,
                argv=spec.argv,
                shell=spec.shell,
                env=dict(spec.env),
                timeout=spec.timeout,
                grace=self.grace,
                leftovers=self.leftovers,
            )
        )
        queue = contract.worker_queue(self.queue, worker_of(spec.agent))

        def publish() -> None:
            # the job's log, fresh (as a local job's), then the task
            os.close(open_log(t, self.root))
            self.app.send_task(
                contract.TASK_NAME,
                args=[payload],
                task_id=t.task_id,
                queue=queue,
                retry=False,
                expires=self.lost_timeout,
                argsrepr=f"job {spec.job_id}",  # not a printable copy of the whole job
                kwargsrepr="",
            )

        try:
            await trio.to_thread.run_sync(publish, limiter=self._control)
        except Exception as exc:  # noqa: BLE001 - the broker refused or is gone: nothing of it runs
            self._untrack(t)
            why = f"not published to {queue}: {type(exc).__name__}: {exc}"
            log.warning("job %s %s", spec.job_id, why)
            self._tell(t.reply_to, JobExited(job_id=spec.job_id, returncode=None, error=why, unstarted=True))

    def _stop_job(self, job_id: int) -> None:
        t = self.tasks.get(job_id)
        if t is None:
            self._cancels.add(job_id)  # a restart: _report_jobs finds its task, then revokes it
            return
        t.cancelled = True
        self._spawn(self._revoke, t.task_id)

    async def _revoke(self, task: str) -> None:
        def revoke() -> None:
            self.app.control.revoke(task, terminate=True, signal="SIGTERM")

        try:
            await trio.to_thread.run_sync(revoke, limiter=self._control)
        except Exception as exc:  # noqa: BLE001 - the broker is gone: the check after it comes back tells
            log.warning("cannot revoke task %s: %s", task, exc)

    def _forget_job(self, job_id: int) -> None:
        t = self.tasks.get(job_id)
        if t is None:
            return
        self._untrack(t)
        self._spawn(self._revoke, t.task_id)

    async def _set_consuming(self, agent: str, enabled: bool) -> None:
        queue = contract.worker_queue(self.queue, agent)
        nodes = self.workers.nodes_of(agent)
        if not nodes:
            return  # not running: it consumes nothing now; maintd offers it no work while disabled

        def change() -> None:
            if enabled:
                self.app.control.add_consumer(queue, destination=nodes, reply=True, timeout=CONTROL_TIMEOUT)
            else:
                self.app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=CONTROL_TIMEOUT)

        try:
            await trio.to_thread.run_sync(change, limiter=self._control)
        except Exception as exc:  # noqa: BLE001 - maintd offers it no work anyway
            log.warning("cannot %s the consumer of %s: %s", "add" if enabled else "cancel", queue, exc)

    async def _report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        """How each job stands: running (JobStarted; its end follows), ended (JobExited), or
        (a restart) found again from the store's rows and the task's stream and result."""
        unknown = []
        for job_id in job_ids:
            t = self.tasks.get(job_id)
            if t is None:
                unknown.append(job_id)
                continue
            t.reply_to = reply_to
            if t.started:
                self._tell(reply_to, JobStarted(job_id=job_id, pid=t.pid or 0))
        if not unknown:
            return
        try:
            rows = await self.rows(tuple(unknown))
        except Exception as exc:  # noqa: BLE001 - the store is gone: the actor asks again when it restarts
            log.warning("cannot read jobs %s from the store: %s", unknown, exc)
            return
        for job_id, row in zip(unknown, rows, strict=True):
            if row is None or row.started_at is None or job_id in self.tasks:
                self._tell(reply_to, JobExited(job_id=job_id, returncode=None, error="lost: no record of its task"))
                continue
            t = self._track(job_id, contract.task_id(self.instance, job_id, row.started_at), row.log_path, reply_to)
            log.info("job %s: following its task %s again", job_id, t.task_id)
            if job_id in self._cancels:
                self._stop_job(job_id)
            self._spawn(self._check, t, True)

    # -- the workers and the broker ---------------------------------------------------------

    async def _watch_events(self) -> None:
        """Celery's events, from a receiver thread (reconnecting), handled here."""
        while True:
            try:
                await trio.to_thread.run_sync(self._capture, abandon_on_cancel=True)
            except Exception as exc:  # noqa: BLE001 - the broker is down: the heartbeat says so
                log.debug("the event receiver stopped: %s", exc)
            if self._closed.is_set():
                return
            await trio.sleep(self.heartbeat)

    def _capture(self) -> None:
        """Worker thread: receive events until the connection fails or the runner closes."""
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event_thread})
            self._receiver = receiver
            if self._closed.is_set():
                return
            receiver.capture(limit=None, timeout=None, wakeup=True)

    def _on_event_thread(self, event: dict[str, Any]) -> None:
        self.bridge.call_soon(self._on_event, event, time.time())

    def _on_event(self, event: dict[str, Any], at: float) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        try:
            kind = event.get("type", "")
            node = event.get("hostname") or ""
            if kind.startswith("worker-"):
                self.workers.event(kind, node, event, at)
                return
            t = self.by_task.get(event.get("uuid") or "")
            if t is None:
                if kind.startswith("task-") and node:
                    self.workers.heard(node, at)
                return
            self.workers.heard(node, at)
            if kind == "task-received":
                t.node = node
            elif kind == "task-started":
                t.node = node
                t.started = True
            elif kind in ("task-succeeded", "task-failed", "task-revoked"):
                self._spawn(self._check, t)
        except Exception:
            log.exception("cannot handle event %r", event.get("type"))

    def _send_workers(self) -> None:
        if self.agents is not None:
            self._tell(self.agents, self.workers.seen(self.broker_error))

    async def _heartbeats(self) -> None:
        """Every ``heartbeat``: is the broker there; tell the agents the workers; check the jobs."""
        while True:
            try:
                await trio.to_thread.run_sync(self.redis_ping.ping)
                error = None
            except Exception as exc:  # noqa: BLE001 - any failure to reach it is the broker being down
                error = f"{type(exc).__name__}: {exc}".strip()
            if error != self.broker_error:
                if error is None:
                    log.info("the broker %s answers", self.shown_broker)
                else:
                    log.warning("the broker %s is unavailable: %s", self.shown_broker, error)
                self.broker_error = error
                self.on_backend(error)
            self.workers.ask_missing_slots()
            self._send_workers()
            if error is None:
                for t in list(self.tasks.values()):
                    self._spawn(self._check, t)
                if not self._reconciling:
                    self._spawn(self._reconcile)
            await trio.sleep(self.heartbeat)
