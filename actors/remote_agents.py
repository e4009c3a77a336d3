"""The agents on other hosts: Celery workers (``maintd-agent``), each with a number of slots.

The same subsystem as the local agents (:class:`~actors.agents.AgentsCore`: one job per
slot, a job handed to a slot only while the intake is open, cancel, results recorded
before the scheduler hears of them), with the workers learnt from the shell, which watches
Celery's events and asks the workers and the result backend (``daemon/celery_runner.py``):

- A worker NAME with N slots is the agents ``NAME#1`` .. ``NAME#N``; a slot is offered to
  the scheduler only while its worker is heard from, not disabled, not lost, and the broker
  is up, so a job is published only to a worker known to have an idle slot.
- A worker without a heartbeat for ``lost_timeout`` is lost: each of its jobs is
  rescheduled (GoCD reschedules the job of an agent that lost contact), with an event and
  an audit entry; until then they block. A job whose cancel was asked is not run again:
  it ends cancelled.
- While the broker is down, nothing is known of the remote jobs: while any is held, an
  item that blocks a restart says so, and no worker is declared lost (its heartbeats could
  not arrive); the clocks start again when the broker is back.
- After a restart of maintd the jobs the store has as building on remote agents are held
  again (the store does not mark them interrupted) and the shell tells how each stands:
  still running, or its real result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from .agents import AgentInfo, AgentsCore
from .handout import Reschedule, job_item_id
from .jobs import JobExited
from .messages import Notice
from .ports import Clock, JobStore, PeerTable, ProcessPort, RemoteWorkers, Timers
from .subsystem import Emit
from .types import InFlightItem, qualify

log = logging.getLogger("maintd.agents")

#: the kind of the item that blocks a restart while the broker is down and remote jobs are held
BACKEND_UNAVAILABLE = "backend_unavailable"
SLOT = "#"


class RemoteWorker(msgspec.Struct, frozen=True, kw_only=True):
    """One worker as the shell last saw it."""

    name: str
    host: str
    node: str
    #: its concurrency (0: not known yet)
    slots: int
    #: tasks it said it runs, in its last heartbeat
    active: int = 0
    #: when maintd last heard from it (its clock is not used: hosts' clocks differ)
    heartbeat: float | None = None
    #: False once it said it is going (warm shutdown ended)
    online: bool = True


class WorkersSeen(msgspec.Struct, frozen=True, kw_only=True):
    """From the shell, every heartbeat and on every change: the workers, and whether the
    broker answers (``broker_error``: why not)."""

    workers: tuple[RemoteWorker, ...] = ()
    broker_error: str | None = None


def slot_key(name: str, index: int) -> str:
    return f"{name}{SLOT}{index}"


def worker_of(key: str) -> str:
    return key.rpartition(SLOT)[0] or key


class RemoteAgentsCore(AgentsCore):
    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Iterable[InFlightItem] = (),
        *,
        store: JobStore,
        peers: PeerTable,
        processes: ProcessPort,
        remote: RemoteWorkers,
        clock: Clock,
        grace: float,
        lost_timeout: float,
        broker: str = "",
        on_job: Any = None,
        timers: Timers | None = None,
    ) -> None:
        super().__init__(
            name,
            emit,
            [i for i in items if i.kind != BACKEND_UNAVAILABLE],
            count=0,
            store=store,
            peers=peers,
            processes=processes,
            clock=clock,
            grace=grace,
            on_job=on_job,
            timers=timers,
        )
        self.remote = remote
        self.lost_timeout = lost_timeout
        self.broker = broker
        self.workers: dict[str, RemoteWorker] = {}
        #: lost workers, and when each was found lost
        self.lost: dict[str, float] = {}
        #: since when the lost clocks run: the start, or the broker's return
        self.clocks_from = clock.now()
        self.broker_error: str | None = None
        #: no word from the shell yet: the broker's state is not known
        self.heard = False

    # -- the slots ------------------------------------------------------------------------

    def agent_name(self, key: str) -> str:
        return worker_of(key)

    def slots_of(self, name: str) -> list[str]:
        return [key for key in self.agents if worker_of(key) == name]

    def takes_work(self, key: str) -> bool:
        """Also: its worker is heard from, online, not lost, has that slot, and the broker is up."""
        if not super().takes_work(key):
            return False
        name = worker_of(key)
        worker = self.workers.get(name)
        return (
            self.heard
            and self.broker_error is None
            and worker is not None
            and worker.online
            and name not in self.lost
            and int(key.rpartition(SLOT)[2] or 0) <= worker.slots
        )

    def restore(self) -> None:
        # The jobs the store has on remote agents: their slots exist before the store's
        # word is read (their workers are heard from later, or lost).
        for row in self.store.agent_jobs():
            if row.agent and SLOT in row.agent:
                self.agents.setdefault(row.agent, None)
        super().restore()
        self.report_backend()

    # -- what the shell sees of the workers -----------------------------------------------

    def seen(self, msg: WorkersSeen) -> None:
        now = self.clock.now()
        was_down, self.broker_error = self.broker_error, msg.broker_error
        first, self.heard = not self.heard, True
        for worker in msg.workers:
            if worker.name not in self.workers and worker.name in self.disabled:
                self.remote.set_consuming(worker.name, False)  # disabled before it was (last) seen
        self.workers = {w.name: w for w in msg.workers}
        for worker in msg.workers:
            for index in range(1, worker.slots + 1):
                self.agents.setdefault(slot_key(worker.name, index), None)
        for key in [k for k, job in self.agents.items() if job is None]:
            worker = self.workers.get(worker_of(key))
            if worker is None or int(key.rpartition(SLOT)[2] or 0) > worker.slots:
                del self.agents[key]  # a slot it no longer has (idle): gone
        if msg.broker_error is not None:
            if was_down is None:
                log.warning("the Celery broker is unavailable: %s", msg.broker_error)
                self.emit(Notice(subsystem=self.name, event="backend_unavailable", message=self.backend_problem() or ""))
            self.report_backend()
            return
        if was_down is not None and not first:
            log.info("the Celery broker is back")
            self.emit(Notice(subsystem=self.name, event="backend_available", message="the Celery broker answers again"))
            self.clocks_from = now  # no heartbeat could come while it was down
        elif first:
            self.clocks_from = now
        self.check_lost(now)
        self.report_backend()
        self.ask_for_work()

    def check_lost(self, now: float) -> None:
        """A worker not heard from for ``lost_timeout`` (counted from the start, or the broker's
        return, at the earliest) is lost, and its jobs are rescheduled; it is back only once
        heard from after that. One that said it went offline takes no work meanwhile (Celery
        workers say so also when they lose the broker and connect again)."""
        names = {worker_of(key) for key in self.agents} | set(self.workers)
        for name in sorted(names):
            worker = self.workers.get(name)
            heard = worker.heartbeat or 0.0 if worker is not None else 0.0
            if name in self.lost:
                if heard >= self.lost[name]:  # heard at or after the moment it was found lost
                    del self.lost[name]
                    log.info("agent %s is heard from again", name)
                continue
            silent = now - max(heard, self.clocks_from)
            if silent <= self.lost_timeout:
                continue
            self.lost[name] = now
            why = f"no heartbeat for {silent:.0f}s (lost_timeout {self.lost_timeout:g}s)"
            log.warning("agent %s is lost: %s", name, why)
            self.emit(Notice(subsystem=self.name, event="agent_lost", message=f"agent {name} is lost: {why}"))
            for key in self.slots_of(name):
                job_id = self.agents.get(key)
                if job_id is not None:
                    self.reschedule(job_id, f"agent {name} lost: no heartbeat for {silent:.0f}s")
            for key in self.slots_of(name):
                if self.agents.get(key) is None:
                    del self.agents[key]

    def reschedule(self, job_id: int, why: str) -> None:
        """Its agent is lost (or its task never reached a worker): the job runs again, elsewhere."""
        item_id = qualify(self.name, job_item_id(job_id))
        item = self.items.get(item_id)
        if item is None:
            return
        self.remote.forget_job(job_id)
        if job_id in self.cancel_by:
            # asked to be cancelled: it is not run again
            self.exited(JobExited(job_id=job_id, returncode=None, error=f"{why}; not run again: its cancel was asked"))
            return
        now = self.clock.now()

        def record() -> None:
            if self.store.reschedule(job_id, now, f"rescheduled: {why}"):
                self.store.audit("job_rescheduled", "maintd", now, target=item.description, detail=why)
                self.peers.tell("scheduler", Reschedule(job_id=job_id))
            self.unrecorded.discard(job_id)

        if not self.pending.write(f"the reschedule of job {job_id}", record):
            self.unrecorded.add(job_id)
        self.pids.pop(job_id, None)
        if item.agent in self.agents:
            self.agents[item.agent] = None
        self.remove(item_id)
        log.warning("job %d (%s) rescheduled: %s", job_id, item.description, why)
        self.emit(Notice(subsystem=self.name, event="job_rescheduled", message=f"{item.description} rescheduled: {why}"))

    def exited(self, msg: JobExited) -> None:
        if (msg.unstarted or msg.lost) and qualify(self.name, job_item_id(msg.job_id)) in self.items:
            self.reschedule(msg.job_id, msg.error or "its task did not reach a worker")
            return
        super().exited(msg)
        self.report_backend()

    def backend_problem(self) -> str | None:
        if self.broker_error is None:
            return None
        held = sum(1 for job in self.agents.values() if job is not None)
        return (
            f"the Celery broker {self.broker} is unavailable ({self.broker_error}): the state of {held} remote job(s) is unknown"
        )

    def report_backend(self) -> None:
        """While the broker is down with remote jobs held, an item blocks a restart and says why."""
        item_id = qualify(self.name, "broker")
        held = any(job is not None for job in self.agents.values())
        problem = self.backend_problem()
        if problem is None or not held:
            self.remove(item_id)
            return
        old = self.items.get(item_id)
        if old is not None and old.description == problem:
            return
        self.add(
            InFlightItem(
                id=item_id,
                subsystem=self.name,
                kind=BACKEND_UNAVAILABLE,
                description=problem,
                started_at=old.started_at if old is not None else self.clock.now(),
                cancellable=False,
            )
        )

    def on_agent_enabled(self, name: str, enabled: bool) -> None:
        self.remote.set_consuming(name, enabled)

    # -- what `maintctl agents` shows: one row per worker ----------------------------------

    def knows(self, name: str) -> bool:
        return super().knows(name) or name in self.workers or name in self.lost

    def info(self) -> list[AgentInfo]:
        names = {worker_of(key) for key in self.agents} | set(self.workers) | set(self.lost)
        return [self.agent_row(name) for name in sorted(names)]

    def agent_row(self, name: str) -> AgentInfo:
        worker = self.workers.get(name)
        keys = self.slots_of(name)
        jobs = [job for k in keys if (job := self.agents[k]) is not None]
        items = [item for j in jobs if (item := self.items.get(qualify(self.name, job_item_id(j)))) is not None]
        disabled = name in self.disabled
        if name in self.lost:
            state = "lost"
        elif self.broker_error is not None or worker is None:
            state = "unknown"
        elif jobs:
            state = "building"
        elif not worker.online:
            state = "offline"
        elif disabled:
            state = "disabled"
        else:
            state = "idle" if self.intake_open else "paused"
        return AgentInfo(
            name=name,
            state=state,
            job=", ".join(i.description for i in items) or None,
            since=min((i.started_at for i in items), default=None),
            host=worker.host if worker is not None else None,
            slots=worker.slots if worker is not None else len(keys),
            busy=len(jobs),
            heartbeat=worker.heartbeat if worker is not None else None,
            disabled=disabled,
        )

    def handle(self, message: Any) -> Any:
        match message:
            case WorkersSeen():
                self.seen(message)
                return None
        return super().handle(message)
