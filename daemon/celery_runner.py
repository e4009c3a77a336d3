"""The remote agents' shell: jobs published to Celery workers (``maintd-agent``) through Redis.

Implements the job half of :class:`actors.ports.ProcessPort` (git polls stay local: the
:class:`~daemon.processes.ProcessRunner` does them) and :class:`actors.ports.RemoteWorkers`.
Every Celery and Redis call is blocking, so each runs in a worker thread; publishes,
revokes and consumer changes go through one thread at a time, in the order asked.

What maintd knows of a job comes from three places, so that a missed event cannot make
a job vanish (:mod:`remote.contract`):

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

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
import trio

from actors.jobs import JobExited, JobSpec, JobStarted
from actors.remote_agents import RemoteWorker, WorkersSeen, worker_of
from daemon.bridge import Bridge
from daemon.processes import spawn, tell
from daemon.statedir import open_job_log
from remote import contract

__all__ = ["CeleryRunner", "broker_url", "masked"]

log = logging.getLogger("maintd.celery")

#: how long a control call (inspect, revoke) waits for the workers' answers
CONTROL_TIMEOUT = 1.0
#: the longest a read of the streams blocks: how late new output can reach a log
STREAM_BLOCK_MS = 500
#: the most entries of one stream a read of the streams brings
STREAM_READ = 500


def broker_url(url: str, password: str | None) -> str:
    """``url`` with ``password`` in it (what Celery and redis-py are given; never logged)."""
    if not password:
        return url
    parts = urlsplit(url)
    netloc = f":{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def masked(url: str) -> str:
    """``url`` as it may be shown: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def read_password(path: str | None) -> str | None:
    """The broker's password: the file's first line, else MAINTD_BROKER_PASSWORD, else None."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") or None
    return os.environ.get("MAINTD_BROKER_PASSWORD") or None


@dataclass(eq=False)
class _Task:
    """One attempt of a job: a published task."""

    job_id: int
    task_id: str
    log_path: str
    reply_to: Any
    stream: str
    last_id: str = "0-0"
    started: bool = False
    told_started: bool = False
    pid: int | None = None
    node: str | None = None
    cancelled: bool = False
    result: contract.RemoteResult | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    log_fd: int | None = None
    #: how many times in a row its worker answered ``inspect`` without it
    misses: int = 0


@dataclass
class _Worker:
    node: str
    heartbeat: float
    active: int = 0
    online: bool = True
    slots: int = 0
    asking: bool = False


class CeleryRunner:
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
        self.tasks: dict[int, _Task] = {}
        self.by_task: dict[str, _Task] = {}
        self.workers: dict[str, _Worker] = {}
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
            self._close_log(task)
        await self.local.aclose()

    # -- trio side ------------------------------------------------------------------------

    def _spawn(self, fn: Any, *args: Any) -> None:
        spawn(self.nursery, fn, *args)

    _tell = staticmethod(tell)

    def _track(self, job_id: int, task: str, log_path: str, reply_to: Any) -> _Task:
        self._cancels.discard(job_id)
        old = self.tasks.pop(job_id, None)
        if old is not None:
            self.by_task.pop(old.task_id, None)
            self._close_log(old)
        t = _Task(job_id=job_id, task_id=task, log_path=log_path, reply_to=reply_to, stream=contract.log_stream(task))
        self.tasks[job_id] = t
        self.by_task[task] = t
        self._new_stream.set()
        return t

    def _untrack(self, t: _Task) -> None:
        if self.tasks.get(t.job_id) is t:
            del self.tasks[t.job_id]
        self.by_task.pop(t.task_id, None)
        self._close_log(t)

    def _start_job(self, reply_to: Any, spec: JobSpec) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        try:
            handed = spec.started_at if spec.started_at is not None else time.time()
            t = self._track(spec.job_id, contract.task_id(self.instance, spec.job_id, handed), spec.log, reply_to)
            self._spawn(self._publish, t, spec)
        except Exception as exc:
            log.exception("cannot publish job %s", spec.job_id)
            self._tell(reply_to, JobExited(job_id=spec.job_id, returncode=None, error=f"not published: {exc}", unstarted=True))

    async def _publish(self, t: _Task, spec: JobSpec) -> None:
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
            os.close(self._open_log(t))
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
        nodes = [node for node in self.workers if contract.agent_of(node) == agent]
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

    # -- the log streams ----------------------------------------------------------------

    def _open_log(self, t: _Task) -> int:
        """The job's log under the state directory, made fresh when first opened for this
        attempt (after a restart it is written again from the stream's start): a duplicate
        of the descriptor kept while the task is followed (worker thread)."""
        if t.log_fd is None:
            f = open_job_log(_LogSpec(workspace=os.path.dirname(t.log_path), log=t.log_path), self.root)  # type: ignore[arg-type]
            t.log_fd = os.dup(f.fileno())
            f.close()
        return os.dup(t.log_fd)

    def _close_log(self, t: _Task) -> None:
        if t.log_fd is not None:
            with contextlib.suppress(OSError):
                os.close(t.log_fd)
            t.log_fd = None

    def _read_stream(self, t: _Task) -> tuple[str, list[tuple[str, dict[bytes, bytes]]]]:
        """The stream's entries after ``t.last_id``, written to the log (worker thread)."""
        entries = []
        last = t.last_id
        while True:
            batch = self.redis.xrange(t.stream, min=f"({last}" if last != "0-0" else "-", count=1000)
            if not batch:
                break
            entries += [(eid.decode(), fields) for eid, fields in batch]
            last = entries[-1][0]
            if len(batch) < 1000:
                break
        self._write_log(t, entries)
        return last, entries

    def _write_log(self, t: _Task, entries: list[tuple[str, dict[bytes, bytes]]]) -> None:
        """Append the output in ``entries`` to the job's log (worker thread)."""
        data = b"".join(fields.get(b"data", b"") for _, fields in entries)
        if data:
            fd = self._open_log(t)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    async def _drain(self, t: _Task, read: list[tuple[str, dict[bytes, bytes]]] | None = None, since: str = "") -> None:
        """Copy the new output of ``t`` to its log; note its start and its end. ``read``: the
        entries after ``since`` that a read of the streams already brought (used if nothing
        was taken from the stream since)."""
        async with t.lock:
            if self.by_task.get(t.task_id) is not t:
                return
            if read and t.last_id == since:
                entries = read
                if any(b"data" in fields for _, fields in read):
                    await trio.to_thread.run_sync(self._write_log, t, read)
                last = read[-1][0]
            else:
                last, entries = await trio.to_thread.run_sync(self._read_stream, t)
            t.last_id = last
            for entry, fields in entries:
                if b"start" in fields:
                    try:
                        start = msgspec.json.decode(fields[b"start"], type=contract.JobStart)
                        t.pid, t.node = start.pid, start.worker or t.node
                    except msgspec.DecodeError as exc:  # not the agent's: what it says is not taken
                        log.warning("job %s: its stream's start entry %s cannot be read: %s", t.job_id, entry, exc)
                        t.pid = t.pid or 0
                    self._started(t)
                if b"end" in fields:
                    try:
                        t.result = msgspec.json.decode(fields[b"end"], type=contract.RemoteResult)
                    except msgspec.DecodeError as exc:
                        why = f"its end entry in the stream {t.stream} cannot be read: {exc}"
                        t.result = contract.RemoteResult(returncode=None, error=why)
            if t.result is not None:
                self._ended(t, t.result)

    def _started(self, t: _Task) -> None:
        t.started = True
        if not t.told_started and t.pid is not None:
            t.told_started = True
            self._tell(t.reply_to, JobStarted(job_id=t.job_id, pid=t.pid))

    def _ended(self, t: _Task, result: contract.RemoteResult) -> None:
        if self.by_task.get(t.task_id) is not t:
            return
        self._untrack(t)
        error = result.error
        if result.cancelled and not t.cancelled and error is None:
            error = "revoked on the worker"
        self._tell(
            t.reply_to,
            JobExited(
                job_id=t.job_id,
                returncode=result.returncode,
                error=error,
                timed_out=result.timed_out,
                leftovers=result.leftovers,
            ),
        )

    async def _pump_streams(self) -> None:
        """Wake on new output of any job in flight (one blocking read for all) and copy it."""
        while True:
            if not self.tasks:
                self._new_stream = trio.Event()
                await self._new_stream.wait()
            streams = {t.stream: t.last_id for t in self.tasks.values()}

            def wait_for_output(streams: dict[str, str] = streams) -> list[Any]:
                return self.redis_block.xread(streams, count=STREAM_READ, block=STREAM_BLOCK_MS) or []

            try:
                found = await trio.to_thread.run_sync(wait_for_output, abandon_on_cancel=True)
            except Exception as exc:  # noqa: BLE001 - the broker is down: the heartbeat says so
                log.debug("cannot read the job streams: %s", exc)
                await trio.sleep(self.heartbeat)
                continue
            for stream, batch in found:
                name = stream.decode() if isinstance(stream, bytes) else stream
                t = self.by_task.get(name.removeprefix("maintd:log:"))
                if t is not None:
                    read = [(eid.decode() if isinstance(eid, bytes) else eid, fields) for eid, fields in batch]
                    try:
                        await self._drain(t, read, streams.get(name, ""))
                    except Exception as exc:  # noqa: BLE001 - the broker is down: read again later
                        log.debug("cannot read the output of task %s: %s", t.task_id, exc)

    # -- how a job ended: the stream, else the result backend ----------------------------

    async def _check(self, t: _Task, restored: bool = False) -> None:
        """Read what is left of ``t``'s stream; if that has no end, ask the result backend."""
        try:
            await self._drain(t)
            if self.by_task.get(t.task_id) is not t:
                return
            meta = await trio.to_thread.run_sync(self.app.backend.get_task_meta, t.task_id)
        except Exception as exc:  # noqa: BLE001 - the broker is down: checked again at the next heartbeat
            log.debug("cannot check task %s: %s", t.task_id, exc)
            return
        status = meta.get("status")
        if status in ("STARTED", "RECEIVED", "SUCCESS", "FAILURE") and meta.get("worker"):
            t.node = meta.get("worker")
        if status == "STARTED":
            t.started = True
            if restored and t.pid is None:
                self._tell(t.reply_to, JobStarted(job_id=t.job_id, pid=0))
                t.told_started = True
        elif status == "SUCCESS":
            await self._drain(t)  # the end entry, written just before
            if self.by_task.get(t.task_id) is t:
                try:
                    result = msgspec.convert(meta.get("result"), contract.RemoteResult)
                except msgspec.ValidationError as exc:
                    result = contract.RemoteResult(returncode=None, error=f"the agent's result cannot be read: {exc}")
                self._ended(t, result)
        elif status == "FAILURE":
            await self._drain(t)
            why = meta.get("result")
            self._ended(t, contract.RemoteResult(returncode=None, error=f"the agent failed: {type(why).__name__}: {why}"))
        elif status == "REVOKED" and not t.started:
            # revoked before it started (a cancel), or not taken before it expired: nothing of it ran
            if t.cancelled:
                self._ended(t, contract.RemoteResult(returncode=None, cancelled=True))
            else:
                self._untrack(t)
                why = f"its task was not taken within {self.lost_timeout:g}s (expired)"
                self._tell(t.reply_to, JobExited(job_id=t.job_id, returncode=None, error=why, unstarted=True))
        elif restored and status == "PENDING" and not t.started:
            pass  # published, not taken yet (or the broker lost it): its worker's heartbeats tell

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
                self._worker_event(kind, node, event, at)
                return
            t = self.by_task.get(event.get("uuid") or "")
            if t is None:
                if kind.startswith("task-") and node:
                    self._heard(node, at)
                return
            self._heard(node, at)
            if kind == "task-received":
                t.node = node
            elif kind == "task-started":
                t.node = node
                t.started = True
            elif kind in ("task-succeeded", "task-failed", "task-revoked"):
                self._spawn(self._check, t)
        except Exception:
            log.exception("cannot handle event %r", event.get("type"))

    def _heard(self, node: str, at: float) -> None:
        worker = self.workers.get(node)
        if worker is not None:
            worker.heartbeat = max(worker.heartbeat, at)

    def _worker_event(self, kind: str, node: str, event: dict[str, Any], at: float) -> None:
        if not node or "@" not in node:
            return
        worker = self.workers.get(node)
        if worker is None:
            worker = self.workers[node] = _Worker(node=node, heartbeat=at)
            log.info("agent %s seen (%s)", contract.agent_of(node), node)
        worker.heartbeat = max(worker.heartbeat, at)
        worker.active = int(event.get("active") or 0)
        if kind == "worker-offline":
            worker.online = False
            log.info("agent %s went offline", contract.agent_of(node))
            self._send_workers()
            return
        changed = not worker.online
        worker.online = True
        if worker.slots == 0 and not worker.asking:
            self._spawn(self._learn_slots, worker)
        if changed:
            self._send_workers()

    async def _learn_slots(self, worker: _Worker) -> None:
        worker.asking = True
        try:

            def stats() -> Any:
                return self.app.control.inspect(destination=[worker.node], timeout=CONTROL_TIMEOUT).stats() or {}

            answer = (await trio.to_thread.run_sync(stats)).get(worker.node) or {}
            slots = int(((answer.get("pool") or {}).get("max-concurrency")) or 0)
            if slots:
                worker.slots = slots
                log.info("agent %s has %d slot(s)", contract.agent_of(worker.node), slots)
                self._send_workers()
        except Exception as exc:  # noqa: BLE001 - asked again at its next heartbeat
            log.debug("cannot ask %s for its slots: %s", worker.node, exc)
        finally:
            worker.asking = False

    def _send_workers(self) -> None:
        if self.agents is None:
            return
        workers = tuple(
            RemoteWorker(
                name=contract.agent_of(w.node),
                host=w.node.partition("@")[2],
                node=w.node,
                slots=w.slots,
                active=w.active,
                heartbeat=w.heartbeat,
                online=w.online,
            )
            for w in self.workers.values()
        )
        self._tell(self.agents, WorkersSeen(workers=workers, broker_error=self.broker_error))

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
            for worker in self.workers.values():
                if worker.online and worker.slots == 0 and not worker.asking:
                    self._spawn(self._learn_slots, worker)
            self._send_workers()
            if error is None:
                for t in list(self.tasks.values()):
                    self._spawn(self._check, t)
                if not self._reconciling:
                    self._spawn(self._reconcile)
            await trio.sleep(self.heartbeat)

    async def _reconcile(self) -> None:
        """Ask the workers that run our jobs what they run (Celery's ``inspect``): a job its
        worker answers without, twice in a row, and that has no result, was lost with the
        worker's pool (a worker restarted under the same name before it could be found
        lost): it is told ended with ``lost``, and the agents run it again."""
        nodes = sorted({t.node for t in self.tasks.values() if t.started and t.node})
        if not nodes:
            return
        self._reconciling = True
        try:

            def ask() -> tuple[dict[str, Any], dict[str, Any]]:
                inspect = self.app.control.inspect(destination=nodes, timeout=CONTROL_TIMEOUT, limit=len(nodes))
                return inspect.active() or {}, inspect.reserved() or {}

            active, reserved = await trio.to_thread.run_sync(ask)
        except Exception as exc:  # noqa: BLE001 - asked again at the next heartbeat
            log.debug("cannot ask the workers what they run: %s", exc)
            return
        finally:
            self._reconciling = False
        for t in list(self.tasks.values()):
            if not t.started or t.node not in active:
                continue  # not started, or its worker did not answer: its heartbeats tell whether it is lost
            running = {task.get("id") for task in active.get(t.node) or ()} | {
                task.get("id") for task in reserved.get(t.node) or ()
            }
            if t.task_id in running:
                t.misses = 0
                continue
            t.misses += 1
            await self._check(t)  # it may just have ended: its result says so
            # A revoked task is no longer in its worker's list while it stops its job (up to
            # cancel_grace): its result is waited for that much longer.
            misses = 2 + (math.ceil((self.grace + 5) / self.heartbeat) if t.cancelled else 0)
            if t.misses >= misses and self.by_task.get(t.task_id) is t:
                self._untrack(t)
                why = f"its worker {t.node} runs it no more and it left no result (the worker restarted?)"
                log.warning("job %s: %s", t.job_id, why)
                self._tell(t.reply_to, JobExited(job_id=t.job_id, returncode=None, error=why, lost=True))


class _LogSpec(msgspec.Struct, frozen=True):
    """What :func:`~daemon.statedir.open_job_log` reads of a spec."""

    workspace: str
    log: str
