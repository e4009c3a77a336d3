"""Following remote jobs (the base of :class:`~daemon.celery_runner.CeleryRunner`): how a
job starts and ends, as maintd learns it, so that a missed event cannot make a job vanish.

- Its Redis stream, woken by one blocking XREAD for every job in flight: the output (copied
  to the job's log), then its start, last its result.
- Celery's result backend, read for every job in flight every heartbeat (and at once on a
  task event): its end (``SUCCESS`` with the task's result, ``FAILURE``), or a revoke before
  it started, or its expiry.
- The workers' ``inspect active/reserved`` answers: a started job its worker runs no more
  and that left no result was lost with the worker's pool.

A job's end is told (:class:`~actors.jobs.JobExited`) only once its result is known, after
the last of its output is in its log.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
import trio

from actors.jobs import JobExited, JobStarted
from daemon.celery_streams import Entries, Task, read_stream, write_log
from daemon.celery_workers import CONTROL_TIMEOUT
from remote import contract

__all__ = ["STREAM_BLOCK_MS", "Following"]

log = logging.getLogger("maintd.celery")

#: the longest a read of the streams blocks: how late new output can reach a log
STREAM_BLOCK_MS = 500
#: the most entries of one stream a read of the streams brings
STREAM_READ = 500


class Following:
    """The runner's half that follows the jobs; the other half publishes, revokes and watches
    the workers (:class:`~daemon.celery_runner.CeleryRunner`)."""

    app: Any
    redis: Any
    redis_block: Any
    root: str | None
    heartbeat: float
    lost_timeout: float
    grace: float
    tasks: dict[int, Task]
    by_task: dict[str, Task]
    _new_stream: trio.Event
    _reconciling: bool

    def _tell(self, reply_to: Any, message: Any) -> None:
        raise NotImplementedError

    def _untrack(self, t: Task) -> None:
        raise NotImplementedError

    async def _drain(self, t: Task, read: Entries | None = None, since: str = "") -> None:
        """Copy the new output of ``t`` to its log; note its start and its end. ``read``: the
        entries after ``since`` that a read of the streams already brought (used if nothing
        was taken from the stream since)."""
        async with t.lock:
            if self.by_task.get(t.task_id) is not t:
                return
            if read and t.last_id == since:
                entries = read
                if any(b"data" in fields for _, fields in read):
                    await trio.to_thread.run_sync(write_log, t, read, self.root)
                last = read[-1][0]
            else:
                last, entries = await trio.to_thread.run_sync(read_stream, self.redis, t, self.root)
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

    def _started(self, t: Task) -> None:
        t.started = True
        if not t.told_started and t.pid is not None:
            t.told_started = True
            self._tell(t.reply_to, JobStarted(job_id=t.job_id, pid=t.pid))

    def _ended(self, t: Task, result: contract.RemoteResult) -> None:
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

    async def _check(self, t: Task, restored: bool = False) -> None:
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
