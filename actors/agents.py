"""The agent subsystem: ``count`` local agents, each running one job at a time.

An idle agent asks the scheduler for work only while the intake is open; paused, idle
agents pick up nothing and busy ones finish. A cancel sends SIGTERM to the job's process
group and SIGKILL after the grace period (the process runner does it); the job stays in
flight until its process has really exited.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from .jobs import JobExited, JobSpec, JobStarted, JobState, ProcessPort
from .messages import Cancel
from .ports import Clock
from .scheduler import AgentsPaused, AnnounceIdle, Assign, CancelJobs, JobFinished, Requeue, WantWork, job_item, job_item_id
from .subsystem import Emit, SubsystemCore
from .types import BUILDING_JOB, InFlightItem, qualify

log = logging.getLogger("maintd.agents")


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    job: str | None = None
    pid: int | None = None
    since: float | None = None


class AgentsCore(SubsystemCore):
    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Any = (),
        *,
        count: int,
        store: Any,
        peers: Any,
        processes: ProcessPort,
        clock: Clock,
        grace: float,
        on_job: Any = None,
    ) -> None:
        # Jobs building when an earlier actor failed are still running in the shell: keep them.
        super().__init__(name, emit, items)
        self.store = store
        self.peers = peers
        self.me = peers.ref(name)
        self.processes = processes
        self.clock = clock
        self.grace = grace
        self.on_job = on_job or (lambda state: None)
        self.agents: dict[str, int | None] = {f"agent-{i + 1}": None for i in range(count)}
        self.pids: dict[int, int] = {}
        self.cancel_by: dict[int, str] = {}
        for item in self.items.values():
            if item.agent in self.agents:
                self.agents[item.agent] = int(item.local_id.removeprefix("job-"))

    def start(self) -> None:
        self.ask_for_work()

    def ask_for_work(self) -> None:
        if not self.intake_open:
            return
        for agent, job in self.agents.items():
            if job is None:
                self.peers.tell("scheduler", WantWork(agent))

    def on_pause(self, drain_id: str) -> None:
        self.peers.tell("scheduler", AgentsPaused())

    def on_resume(self, drain_id: str) -> None:
        self.ask_for_work()

    def assign(self, agent: str, spec: JobSpec) -> None:
        if not self.intake_open or self.agents.get(agent, 0) is not None:
            self.peers.tell("scheduler", Requeue(spec))
            return
        self.agents[agent] = spec.job_id
        # Not waited for: the store handles its messages in order (see SyncStore.later).
        self.store.later("set_job_state", spec.job_id, JobState.BUILDING, self.clock.now(), agent=agent)
        self.add(job_item(self.name, msgspec.structs.replace(spec, agent=agent), BUILDING_JOB, self.clock.now(), agent=agent))
        self.processes.start_job(self.me, spec)

    def exited(self, msg: JobExited) -> None:
        item_id = qualify(self.name, job_item_id(msg.job_id))
        item = self.items.get(item_id)
        if item is None:
            return
        by = self.cancel_by.pop(msg.job_id, None)
        if by is not None:
            state = JobState.CANCELLED
        elif msg.returncode == 0 and msg.error is None:
            state = JobState.PASSED
        else:
            state = JobState.FAILED
        detail = msg.error or ("timed out" if msg.timed_out else None)
        # Not waited for; a job already terminal (recorded by an earlier actor) is logged by the store.
        self.store.later(
            "set_job_state", msg.job_id, state, self.clock.now(), returncode=msg.returncode, cancelled_by=by, detail=detail
        )
        self.pids.pop(msg.job_id, None)
        if item.agent in self.agents:
            self.agents[item.agent] = None
        self.remove(item_id)
        self.on_job(state.value)
        self.peers.tell("scheduler", JobFinished(job_id=msg.job_id, state=state))
        if self.intake_open and item.agent in self.agents:
            self.peers.tell("scheduler", WantWork(item.agent))

    def cancel_job(self, job_id: int, by: str) -> None:
        self.cancel_by.setdefault(job_id, by)
        self.processes.stop_job(job_id, self.grace)

    def on_cancel(self, item: InFlightItem, msg: Cancel) -> None:
        self.cancel_job(int(item.local_id.removeprefix("job-")), msg.by)
        self.accept_cancel(msg)

    def info(self) -> list[AgentInfo]:
        out = []
        for agent, job_id in self.agents.items():
            if job_id is None:
                out.append(AgentInfo(name=agent, state="idle" if self.intake_open else "paused"))
                continue
            item = self.items.get(qualify(self.name, job_item_id(job_id)))
            out.append(
                AgentInfo(
                    name=agent,
                    state="building",
                    job=item.description if item else str(job_id),
                    pid=self.pids.get(job_id),
                    since=item.started_at if item else None,
                )
            )
        return out

    def handle(self, message: Any) -> Any:
        match message:
            case Assign(agent=agent, spec=spec):
                self.assign(agent, spec)
            case JobStarted(job_id=job_id, pid=pid):
                self.pids[job_id] = pid
            case JobExited():
                self.exited(message)
            case CancelJobs(job_ids=job_ids, by=by):
                for job_id in job_ids:
                    if qualify(self.name, job_item_id(job_id)) in self.items:
                        self.cancel_job(job_id, by)
            case AnnounceIdle():
                self.ask_for_work()
            case "info":
                return self.info()
            case _:
                return NotImplemented
        return None
