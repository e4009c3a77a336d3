"""The agent subsystem: ``count`` local agents, each running one job at a time.

An idle agent asks the scheduler for work only while the intake is open; paused, idle
agents pick up nothing and busy ones finish. A cancel sends SIGTERM to every process of the
job and SIGKILL after the grace period (the process runner does it); the job stays in
flight until none of its processes is left.

An Assign the agents do not take (paused, busy) is given back with :class:`GiveBack`,
which names the jobs they hold; until the scheduler answers :class:`TakenBack` every
Assign is dropped, since the scheduler takes back whatever it handed out that is not held.
A restarted core learns from the store what it holds (building jobs, and who asked to
cancel them) and what was on its way to it (handed out, then lost with the failed actor's
inbox: given back), and asks the process runner to tell again how its jobs stand.

One agent's drain (``maintctl agent disable NAME``, GoCD's agent disable): a disabled agent
finishes its job and asks for no more; an Assign that reaches it is given back as a paused
agent's is. Disabling only narrows the intake, so it is taken in maintenance too; enabling
is refused there (``maintenance_mode``). The disabled agents are kept in the store, with the
audit entry, before the change takes effect; a restarted core reads them back.

An agent is known by its name; the jobs run on its slots, the keys of ``self.agents``. Here
each agent has one slot, its name; :class:`~actors.remote_agents.RemoteAgentsCore` (a Celery
worker of N slots, ``NAME#1`` .. ``NAME#N``) overrides :meth:`AgentsCore.slots_of`,
:meth:`AgentsCore.agent_name`, :meth:`AgentsCore.agent_row` and :meth:`AgentsCore.on_agent_enabled`.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .config_guard import refuse_in_maintenance
from .errors import MaintdError, NotFound
from .handout import (
    AgentsPaused,
    AnnounceIdle,
    Assign,
    CancelJobs,
    GiveBack,
    JobFinished,
    TakenBack,
    WantWork,
    job_item,
    job_item_id,
)
from .jobs import JobExited, JobSpec, JobStarted, JobState
from .messages import Cancel, GetInfo
from .pending import PendingWrites, RetryWrites, without_pending
from .ports import Clock, JobStore, PeerTable, ProcessPort, Timers
from .subsystem import Emit, SubsystemCore
from .types import BUILDING_JOB, InFlightItem, qualify

log = logging.getLogger("maintd.agents")

#: GiveBack tokens, unique across the agents actors of this process
_tokens = itertools.count(1)


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``maintctl agents``: an agent (a local one, or a remote worker of ``slots`` slots).

    ``state``: ``idle``, ``building`` (a job on at least one slot, disabled or not),
    ``disabled`` (idle and disabled), ``paused`` (idle in maintenance), and for remote
    workers ``lost`` and ``unknown``. ``host`` None: a local agent.
    """

    name: str
    state: str
    job: str | None = None
    pid: int | None = None
    since: float | None = None
    host: str | None = None
    slots: int = 1
    busy: int = 0
    heartbeat: float | None = None
    disabled: bool = False


class SetAgentEnabled(msgspec.Struct, frozen=True, kw_only=True):
    """``maintctl agent disable|enable NAME``: agent ``name`` takes work (or finishes its job and takes no more)."""

    name: str
    enabled: bool
    by: str
    peer: str | None = None  # which process asked (pid and command line), for the audit log


class AgentsCore(SubsystemCore):
    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Iterable[InFlightItem] = (),
        *,
        count: int,
        store: JobStore,
        peers: PeerTable,
        processes: ProcessPort,
        clock: Clock,
        grace: float,
        on_job: Callable[[str], None] | None = None,
        timers: Timers | None = None,
    ) -> None:
        # Jobs building when an earlier actor failed are still running in the shell: keep them.
        # Its waiting writes went with it: the store still says those jobs build, so restore()
        # holds them again and the process runner tells their exits again.
        super().__init__(name, emit, without_pending(items))
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
        #: the token of the GiveBack the scheduler has not answered yet: Assigns are dropped meanwhile
        self.giving_back: int | None = None
        #: writes the store refused (a job's result first of all), kept in order and retried;
        #: ``timers`` may be None only where the store never fails (some tests)
        self.pending = PendingWrites(self, timers=timers, clock=clock, me=self.me)
        #: jobs that have ended whose result waits for the store: still held (GiveBack says so),
        #: since the scheduler hears that they finished only once it is recorded
        self.unrecorded: set[int] = set()
        #: the names of the agents an operator disabled (the store's, read back by restore())
        self.disabled: set[str] = set()
        for item in self.items.values():
            if item.agent in self.agents:
                self.agents[item.agent] = int(item.local_id.removeprefix("job-"))

    def start(self) -> None:
        self.restore()
        self.ask_for_work()

    def restore(self) -> None:
        """The store is the truth (also after a restart): the agents disabled, the jobs
        building on these agents, who asked to cancel them, and the jobs handed to them whose
        Assign never arrived."""
        self.disabled = set(self.store.disabled_agents())
        held = {job_id for job_id in self.agents.values() if job_id is not None}  # the supervisor's last word
        building: dict[int, Any] = {}
        handed = False
        for row in self.store.agent_jobs():
            if row.agent not in self.agents:
                continue
            if row.state == JobState.BUILDING or row.id in held:
                building[row.id] = row
            else:
                handed = True
        if not building and not held and not handed:
            return  # nothing here: a first start
        self.agents = dict.fromkeys(self.agents)
        items = []
        for job_id, row in building.items():
            self.agents[row.agent] = job_id
            item_id = qualify(self.name, job_item_id(job_id))
            items.append(self.items.get(item_id) or restored_item(self.name, row, self.clock.now()))
            if row.cancelled_by is not None:
                self.cancel_by.setdefault(job_id, row.cancelled_by)
        self.set_items(items)
        if building:
            # Its JobStarted or JobExited may have been lost with a failed actor's inbox.
            self.processes.report_jobs(self.me, tuple(building))
        for job_id in self.cancel_by:
            # The cancel may not have reached the process (a CancelJobs lost with the inbox).
            self.processes.stop_job(job_id, self.grace)
        if handed:
            self.give_back()

    def give_back(self) -> None:
        """Tell the scheduler what these agents hold; it takes back everything else it handed out."""
        self.giving_back = next(_tokens)
        holding = tuple(sorted({job_id for job_id in self.agents.values() if job_id is not None} | self.unrecorded))
        self.peers.tell("scheduler", GiveBack(token=self.giving_back, holding=holding))

    # -- agents and their slots (the seams RemoteAgentsCore overrides) -----------------------

    def slots_of(self, name: str) -> list[str]:
        """The keys in ``self.agents`` of agent ``name``'s slots; none for an unknown name."""
        return [name] if name in self.agents else []

    def agent_name(self, key: str) -> str:
        """The name of the agent whose slot ``key`` is."""
        return key

    def takes_work(self, key: str) -> bool:
        """Slot ``key`` is free and its agent enabled (the intake aside)."""
        return self.agents.get(key, 0) is None and self.agent_name(key) not in self.disabled

    def on_agent_enabled(self, name: str, enabled: bool) -> None:
        """Agent ``name`` was enabled or disabled (recorded, in effect here); a hook for subclasses."""

    def ask_for_work(self) -> None:
        if not self.intake_open or self.giving_back is not None:
            return
        for agent in self.agents:
            if self.takes_work(agent):
                self.peers.tell("scheduler", WantWork(agent))

    def on_pause(self, drain_id: str) -> None:
        self.peers.tell("scheduler", AgentsPaused())

    def on_resume(self, drain_id: str) -> None:
        self.ask_for_work()

    def assign(self, agent: str, spec: JobSpec) -> None:
        if self.giving_back is not None:
            return  # sent before the scheduler handled our GiveBack: it takes the job back
        if qualify(self.name, job_item_id(spec.job_id)) in self.items:
            log.warning("job %d is building here already; a second Assign is ignored", spec.job_id)
            return
        if not self.intake_open or not self.takes_work(agent):
            self.give_back()  # paused, busy or disabled
            return
        self.agents[agent] = spec.job_id
        # Not waited for: the store handles its messages in order (see SyncStore.later); behind
        # writes that wait for the store it waits with them.
        now = self.clock.now()
        self.pending.later(
            f"job {spec.job_id} building on {agent}",
            functools.partial(self.store.set_job_state, spec.job_id, JobState.BUILDING, now, agent=agent),
            functools.partial(
                self.store.later,
                lambda s: s.set_job_state(spec.job_id, JobState.BUILDING, now, agent=agent),
                "set_job_state",
            ),
        )
        self.add(job_item(self.name, msgspec.structs.replace(spec, agent=agent), BUILDING_JOB, now, agent=agent))
        # when it was handed over (the store's started_at) names a remote attempt
        self.processes.start_job(self.me, msgspec.structs.replace(spec, started_at=now))

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
        detail = job_detail(msg)
        now = self.clock.now()

        def record() -> None:
            # Waited for: the scheduler hears of the result only once it is recorded, so a run
            # never ends (nor goes on) on a result the store does not have.
            try:
                self.store.set_job_state(msg.job_id, state, now, returncode=msg.returncode, cancelled_by=by, detail=detail)
            except ValueError as exc:  # recorded by an earlier actor already
                log.warning("%s", exc)
            self.unrecorded.discard(msg.job_id)
            self.peers.tell("scheduler", JobFinished(job_id=msg.job_id, state=state))

        # Kept in memory (and blocking a restart) until the store takes it.
        if not self.pending.write(f"the result of job {msg.job_id} ({state.value})", record):
            self.unrecorded.add(msg.job_id)
        self.pids.pop(msg.job_id, None)
        if item.agent in self.agents:
            self.agents[item.agent] = None
        self.remove(item_id)
        self.on_job(state.value)
        if self.intake_open and self.giving_back is None and item.agent is not None and self.takes_work(item.agent):
            self.peers.tell("scheduler", WantWork(item.agent))

    def cancel_job(self, job_id: int, by: str) -> None:
        if job_id not in self.cancel_by:
            self.cancel_by[job_id] = by
            # Not waited for; a restarted core reads it back, so the job still ends cancelled.
            self.pending.later(
                f"the cancel of job {job_id}",
                functools.partial(self.store.request_cancel, job_id, by),
                functools.partial(self.store.later, lambda s: s.request_cancel(job_id, by), "request_cancel"),
            )
        self.processes.stop_job(job_id, self.grace)

    def on_cancel(self, item: InFlightItem, msg: Cancel) -> None:
        self.cancel_job(int(item.local_id.removeprefix("job-")), msg.by)
        self.accept_cancel(msg)

    def set_enabled(self, msg: SetAgentEnabled) -> dict[str, Any]:
        """Enable or disable agent ``msg.name``: recorded with its audit entry first (a change
        the store cannot record is refused and not made), then in effect."""
        name = msg.name
        verb = "enable" if msg.enabled else "disable"
        if not self.knows(name):
            known = ", ".join(row.name for row in self.info()) or "none"
            raise NotFound(f"no agent named {name!r}; the agents are {known} (`maintctl agents` lists them)")
        if msg.enabled and not self.intake_open:
            error = refuse_in_maintenance(f"enabling agent {name}")
            try:  # the refusal is audited too; it is refused even if the store cannot record it
                self.store.audit(
                    f"agent_{verb}_refused", msg.by, self.clock.now(), reason=error.message, target=name, detail=msg.peer
                )
            except MaintdError as exc:
                log.error("could not record the refused enable of agent %s in the audit log: %s", name, exc.message)
            raise error
        changed = (name in self.disabled) == msg.enabled
        reason = None if changed else f"already {verb}d"
        self.store.set_agent_disabled(name, not msg.enabled, msg.by, self.clock.now(), reason=reason, detail=msg.peer)
        if changed:
            log.info("%s %sd agent %s", msg.by, verb, name)
            (self.disabled.discard if msg.enabled else self.disabled.add)(name)
            idle = [key for key in self.slots_of(name) if self.agents[key] is None]
            if self.intake_open and self.giving_back is None and idle:
                if msg.enabled:
                    for key in idle:
                        self.peers.tell("scheduler", WantWork(key))
                else:
                    # Its idle slots are on the scheduler's waiting list: clear the list and
                    # ask again for the agents that take work. (An Assign already on its way
                    # to a disabled slot is given back.)
                    self.peers.tell("scheduler", AgentsPaused())
                    self.ask_for_work()
            self.on_agent_enabled(name, msg.enabled)
        return {"agent": name, "state": self.agent_row(name).state, "changed": changed}

    def knows(self, name: str) -> bool:
        """Whether ``name`` is an agent here (one disabled and gone since counts: it may be enabled)."""
        return bool(self.slots_of(name)) or name in self.disabled

    def info(self) -> list[AgentInfo]:
        """One row an agent (not a slot), in the order of their slots."""
        return [self.agent_row(name) for name in dict.fromkeys(self.agent_name(key) for key in self.agents)]

    def agent_row(self, name: str) -> AgentInfo:
        """Agent ``name``'s row of ``maintctl agents``: its job (the first busy slot's), and
        its state from its slots, whether it is disabled and the intake."""
        keys = self.slots_of(name)
        busy = [job_id for key in keys if (job_id := self.agents[key]) is not None]
        disabled = name in self.disabled
        if busy:
            state = "building"
        elif disabled:
            state = "disabled"
        else:
            state = "idle" if self.intake_open else "paused"
        row = AgentInfo(name=name, state=state, slots=max(len(keys), 1), busy=len(busy), disabled=disabled)
        if not busy:
            return row
        job_id = busy[0]
        item = self.items.get(qualify(self.name, job_item_id(job_id)))
        return msgspec.structs.replace(
            row,
            job=item.description if item else str(job_id),
            pid=self.pids.get(job_id),
            since=item.started_at if item else None,
        )

    def handle(self, message: Any) -> Any:
        match message:
            case Assign(agent=agent, spec=spec):
                self.assign(agent, spec)
            case JobStarted(job_id=job_id, pid=pid):
                if qualify(self.name, job_item_id(job_id)) in self.items:
                    self.pids[job_id] = pid
            case JobExited():
                self.exited(message)
            case RetryWrites():
                self.pending.retry()
            case TakenBack(token=token):
                if token == self.giving_back:
                    self.giving_back = None
                    self.ask_for_work()
            case CancelJobs(job_ids=job_ids, by=by):
                for job_id in job_ids:
                    if qualify(self.name, job_item_id(job_id)) in self.items:
                        self.cancel_job(job_id, by)
            case AnnounceIdle():
                if self.giving_back is not None:
                    # a restarted scheduler: our GiveBack may have been lost with its inbox
                    self.give_back()
                self.ask_for_work()
            case SetAgentEnabled():
                return self.set_enabled(message)
            case GetInfo():
                return self.info()
            case _:
                return NotImplemented
        return None


def job_detail(msg: JobExited) -> str | None:
    """What the job's state change records besides its state: why it failed, what was killed."""
    parts = [msg.error or ("timed out" if msg.timed_out else None)]
    if msg.leftovers:
        parts.append(f"killed {msg.leftovers} leftover process{'es' if msg.leftovers != 1 else ''}")
    return "; ".join(p for p in parts if p) or None


def restored_item(subsystem: str, row: Any, now: float) -> InFlightItem:
    """A building job as an in-flight item, from its row in the store."""
    return InFlightItem(
        id=qualify(subsystem, job_item_id(row.id)),
        subsystem=subsystem,
        kind=BUILDING_JOB,
        description=f"{row.pipeline}/{row.pipeline_counter}/{row.stage}/{row.name} on {row.agent}",
        started_at=row.started_at if row.started_at is not None else now,
        cancellable=True,
        pipeline=row.pipeline,
        counter=row.pipeline_counter,
        stage=row.stage,
        job=row.name,
        agent=row.agent,
        scheduled_at=row.scheduled_at,
    )
