"""Machine 2: the job server's plain cores on a real store, messages delivered by the rules."""

from __future__ import annotations

import itertools
import sys
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.agents import AgentsCore
from actors.errors import MaintdError, NotFound
from actors.handout import Assign
from actors.jobs import TERMINAL, JobExited, JobState
from actors.materials import MaterialChanged
from actors.messages import (
    Cancel,
    Cancelled,
    CancelRefused,
    Drained,
    PauseIntake,
    ReportInFlight,
    ResumeIntake,
)
from actors.runs import CancelRun, Trigger
from actors.scheduler import SchedulerCore
from actors.store import Store
from actors.subsystem import SubsystemCore
from tests.actors.drain_properties.jobserver_model import APP, CORES, DOCS, Ask, Bus, Processes, job_of
from tests.actors.drain_properties.runs import COUNTS, RULES, USERS
from tests.actors.fakes import FakeClock, FakeTimers


class JobServerMachine(RuleBasedStateMachine):
    """SchedulerCore and AgentsCore (two agents) on one in-memory Store; pipelines ``app``
    (build: compile, package; test: unit) and ``docs`` (site: render).

    The cores talk through :class:`Bus` inboxes that the rules deliver, so a rule may leave
    messages on their way (an Assign, a JobExited, a CancelJobs) while another acts. The
    supervisor is played by the rules (PauseIntake/ResumeIntake in its order, Cancel of an
    item it shows) and the process runner by :class:`Processes`.
    """

    def __init__(self) -> None:
        super().__init__()
        COUNTS["jobserver examples"] += 1
        self.store = Store(":memory:")
        self.clock, self.timers = FakeClock(), FakeTimers()
        self.bus = Bus()
        self.procs = Processes(self)
        self.emitted: list[Any] = []
        self.violations: list[str] = []
        self.cancelled_runs: set[int] = set()
        self.cancelled_jobs: set[int] = set()
        self.must_end_cancelled: set[int] = set()
        self.gone: set[int] = set()  # cancels answered subsystem_gone by a failing core
        self.cancels: list[tuple[str, object]] = []  # (item id, reply token) sent in a Cancel
        self.drain_id: str | None = None
        self.drains = itertools.count(1)
        self.revisions = itertools.count(1)
        self.cores: dict[str, Any] = {}
        self.agents_paused = False  # the agents got PauseIntake, and no ResumeIntake since
        for name in CORES:
            self.spawn(name, ())

    def step(self) -> None:
        COUNTS["jobserver steps"] += 1
        RULES["jobserver." + sys._getframe(1).f_code.co_name] += 1

    # -- wiring ----------------------------------------------------------------------------

    def spawn(self, name: str, items: Any) -> None:
        """What the supervisor's spawn and SubsystemActor.on_start do for a (re)started core."""
        if name == "scheduler":
            core: SubsystemCore = SchedulerCore(
                "scheduler", self.emitted.append, items, pipelines=[APP, DOCS], store=self.store, peers=self.bus,
                timers=self.timers, clock=self.clock, work_root="/srv/maintd",
            )  # fmt: skip
        else:
            core = AgentsCore(
                "agents", self.emitted.append, items, count=2, store=self.store, peers=self.bus,
                processes=self.procs, clock=self.clock, grace=5.0,
            )  # fmt: skip
        core.paused_for = self.drain_id  # comes up closed during a drain
        if name == "agents":
            self.agents_paused = self.drain_id is not None
        self.cores[name] = core
        core.report()
        core.start()
        if self.drain_id is not None:
            self.bus.tell(name, PauseIntake(drain_id=self.drain_id))

    def fail_core(self, name: str) -> None:
        """As SubsystemActor.on_failure and the supervisor's restart do: a queued cancel is
        answered subsystem_gone, the rest of the inbox is lost, a fresh core starts (the
        agents' with the items the supervisor last heard of)."""
        old = self.cores[name]
        lost = [m for _s, m in self.bus.inbox[name]]
        self.bus.inbox[name].clear()
        self.gone |= {id(m.reply) for m in lost if isinstance(m, Cancel)}
        COUNTS["jobserver messages lost in a failed inbox"] += len(lost)
        self.spawn(name, tuple(old.items.values()) if name == "agents" else ())

    def deliver(self, name: str) -> None:
        """The next message of ``name``'s inbox, handled as SubsystemActor.on_receive does."""
        _seq, message = self.bus.inbox[name].popleft()
        core = self.cores[name]
        runs = self.run_count()
        emitted = len(self.emitted)
        was_open = core.intake_open
        inner = message.message if isinstance(message, Ask) else message
        try:
            match inner:
                case PauseIntake(drain_id=d):
                    self.agents_paused |= name == "agents"
                    core.pause(d)
                case ResumeIntake(drain_id=d):
                    self.agents_paused &= name != "agents"
                    core.resume(d)
                case ReportInFlight():
                    core.report()
                case Cancel():
                    core.cancel(inner)
                case _:
                    result = core.handle(inner)
                    assert result is not NotImplemented, f"{name}: unexpected {inner!r}"
                    if isinstance(message, Ask):
                        message.result = result
        except MaintdError as exc:
            if not isinstance(message, Ask):
                raise
            message.error = exc
        grown = self.run_count() - runs
        if isinstance(inner, JobExited) and any(isinstance(m, Drained) for m in self.emitted[emitted:]):
            COUNTS["jobserver drains ended by a job exit"] += 1
        if isinstance(inner, Assign) and not was_open:
            COUNTS["jobserver assignments given back by paused agents"] += 1
        if isinstance(message, Ask):
            message.done, message.open_when_handled, message.runs_created = True, was_open, grown
        if name == "scheduler" and not was_open and not isinstance(inner, ResumeIntake):
            assert grown == 0, f"the paused scheduler started {grown} run(s) on {inner!r}"
        if isinstance(inner, Cancel) and any(isinstance(m, Cancelled) and m.reply is inner.reply for m in self.emitted):
            if name == "scheduler":
                self.cancelled_jobs.add(job_of(inner.item_id))  # cancelled in the store: it must never start
            else:
                self.must_end_cancelled.add(job_of(inner.item_id))

    def pump(self) -> None:
        """Deliver everything, oldest message first."""
        while self.bus.pending():
            name = min((q[0][0], n) for n, q in self.bus.inbox.items() if q)[1]
            self.deliver(name)

    def ask(self, name: str, message: Any) -> Ask:
        """Put an ask in the inbox and handle that inbox until it is answered."""
        ask = Ask(message)
        self.bus.tell(name, ask)
        while not ask.done:
            self.deliver(name)
        return ask

    def run_count(self) -> int:
        return sum(self.store.next_counter(p) - 1 for p in ("app", "docs"))

    def running_runs(self) -> list[Any]:
        return [r for r in self.store.recent_runs(limit=100_000) if r.state == "running"]

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def nothing_lost(self) -> None:
        COUNTS["jobserver checks"] += 1
        COUNTS["jobserver checks with a job running"] += bool(self.procs.running)
        COUNTS["jobserver checks paused"] += self.drain_id is not None
        assert self.violations == []
        scheduler, agents = self.cores["scheduler"], self.cores["agents"]
        assert scheduler.intake_open == agents.intake_open or self.bus.pending()
        if self.bus.pending():
            return
        COUNTS["jobserver quiescent checks"] += 1
        # at quiescence: a scheduled job is queued, a building job is running on an agent
        jobs = [j for r in self.store.recent_runs(limit=100_000) for j in r.jobs]
        scheduled = {j.id for j in jobs if j.state == JobState.SCHEDULED}
        building = {j.id for j in jobs if j.state == JobState.BUILDING}
        queued = [spec.job_id for spec in scheduler.queue]
        assert len(queued) == len(set(queued)), f"a job is queued twice: {queued}"
        assert scheduled == set(queued), f"scheduled {sorted(scheduled)} but queued {sorted(queued)}"
        assert {job_of(i) for i in scheduler.items} == scheduled
        assert {job_of(i) for i in agents.items} == building, f"building {sorted(building)}, agents {sorted(agents.items)}"
        assert set(self.procs.running) == building
        busy = [j for j in agents.agents.values() if j is not None]
        assert sorted(busy) == sorted(building), f"agents busy with {busy}, building {sorted(building)}"
        # every accepted cancel was answered
        answered = {id(m.reply) for m in self.emitted if isinstance(m, (Cancelled, CancelRefused))} | self.gone
        assert all(id(token) in answered for _item, token in self.cancels)
        # the drain's word: agents drained once nothing builds
        if agents.paused_for is not None:
            assert agents.drain_complete() == (not building)

    def teardown(self) -> None:
        if sys.exc_info()[0] is None:  # not on top of a failure already reported
            self.finish_all_work()
            COUNTS["jobserver examples run to the end"] += 1
        self.store.close()

    def finish_all_work(self) -> None:
        """Maintenance off, every job exits: then every job has ended, in a recorded state."""
        if self.drain_id is not None:
            self.disable_all()
        for _ in range(500):
            self.pump()
            if not self.procs.running:
                break
            for job_id in sorted(self.procs.running):
                self.exit(job_id, 0)
        else:
            raise AssertionError("the jobs never ran out")
        self.pump()
        assert self.violations == []
        stuck = [(j.id, j.pipeline, j.stage, j.name, j.state) for r in self.store.recent_runs(limit=100_000) for j in r.jobs
                 if j.state not in TERMINAL]  # fmt: skip
        assert stuck == [], f"jobs that never ended: {stuck}"
        assert self.running_runs() == [], "a run never ended"
        for job_id in sorted(self.must_end_cancelled):
            row = self.store.job(job_id)
            assert row is not None and row.state in ("cancelled", "interrupted"), (
                f"job {job_id} was cancelled (accepted) but ended {row.state if row else None}"
            )
        for run_id in sorted(self.cancelled_runs):
            state = next(r.state for r in self.store.recent_runs(limit=100_000) if r.id == run_id)
            assert state in ("cancelled", "interrupted"), f"run {run_id} was cancelled but ended {state}"

    # -- rules -------------------------------------------------------------------------

    @precondition(lambda self: len(self.running_runs()) < 3)  # then let the work flow
    @rule(pipeline=st.sampled_from(["app", "docs", "app by a new revision"]), by=st.sampled_from(USERS))
    def trigger(self, pipeline: str, by: str) -> None:
        self.step()
        if pipeline == "app by a new revision":  # told, not asked; a paused scheduler skips it
            self.bus.tell("scheduler", MaterialChanged(material="app", revision=f"r{next(self.revisions)}"))
            return
        ask = self.ask("scheduler", Trigger(pipeline=pipeline, by=by))
        if ask.open_when_handled:
            assert ask.error is None and ask.runs_created == 1
        else:  # a paused scheduler refuses, and triggers nothing
            assert isinstance(ask.error, MaintdError) and ask.error.code == "maintenance_mode"
            assert ask.runs_created == 0

    @precondition(lambda self: self.drain_id is not None)
    @rule()
    def disable(self) -> None:
        """Maintenance mode off: ResumeIntake to each core."""
        self.step()
        self.disable_all()

    @precondition(lambda self: self.drain_id is None)
    @rule()
    def enable(self) -> None:
        """Maintenance mode on: PauseIntake to each core, in the supervisor's order."""
        self.step()
        self.drain_id = f"drain-{next(self.drains)}"
        for name in CORES:
            self.bus.tell(name, PauseIntake(drain_id=self.drain_id))

    def disable_all(self) -> None:
        drain_id, self.drain_id = self.drain_id or "", None
        for name in CORES:
            self.bus.tell(name, ResumeIntake(drain_id=drain_id))

    @precondition(lambda self: self.bus.pending())
    @rule(name=st.sampled_from(CORES), n=st.integers(1, 4))
    def deliver_some(self, name: str, n: int) -> None:
        self.step()
        for _ in range(n):
            if self.bus.inbox[name]:
                self.deliver(name)

    @precondition(lambda self: self.bus.pending())
    @rule()
    def deliver_all(self) -> None:
        self.step()
        self.pump()

    @precondition(lambda self: self.procs.running)
    @rule(data=st.data())
    def job_exits(self, data: st.DataObject) -> None:
        self.step()
        job_id = data.draw(st.sampled_from(sorted(self.procs.running)), label="job")
        self.exit(job_id, data.draw(st.sampled_from([0, 1]), label="returncode"))

    def exit(self, job_id: int, code: int) -> None:
        reply_to = self.procs.running.pop(job_id)
        if job_id in self.procs.stopping:
            code = -15
        self.procs.exits[job_id] = JobExited(job_id=job_id, returncode=code)
        reply_to.tell(self.procs.exits[job_id])

    @precondition(lambda self: self.cores["scheduler"].items or self.cores["agents"].items)
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def cancel_item(self, data: st.DataObject, by: str) -> None:
        """As the supervisor does: a Cancel to the owner of an item it showed."""
        self.step()
        shown = sorted(self.cores["scheduler"].items) + sorted(self.cores["agents"].items)
        item_id = data.draw(st.sampled_from(shown), label="item")
        token = object()
        self.cancels.append((item_id, token))
        self.bus.tell(item_id.partition("/")[0], Cancel(item_id=item_id, by=by, reply=token))

    @precondition(lambda self: self.running_runs() and not self.bus.pending())
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def cancel_run(self, data: st.DataObject, by: str) -> None:
        """Cancel a run while nothing is on its way (JobServerCancelRunRaceMachine: any time)."""
        self.cancel_a_run(data, by)

    def cancel_a_run(self, data: st.DataObject, by: str) -> None:
        self.step()
        run = data.draw(st.sampled_from([(r.pipeline, r.counter, r.id) for r in self.running_runs()]), label="run")
        live = {j.id for j in self.store.jobs_of_run(run[2])
                if j.state == JobState.SCHEDULED or (j.state == JobState.BUILDING and j.id in self.procs.running)}  # fmt: skip
        live |= {spec.job_id for spec in self.cores["scheduler"].queue if spec.run_id == run[2]}
        ask = self.ask("scheduler", CancelRun(pipeline=run[0], counter=run[1], by=by))
        if ask.error is None:
            # every job of the run that had not ended must end cancelled (or interrupted)
            self.must_end_cancelled |= live
            if live:
                self.cancelled_runs.add(run[2])
        else:
            assert isinstance(ask.error, NotFound)

    @precondition(lambda self: self.procs.running or self.cores["scheduler"].queue)
    @rule()
    def daemon_restarts(self) -> None:
        """maintd stops and starts again (drained or not). Stopping, each actor handles what is already in
        its inbox (pykka's stop message queues behind it); then the jobs die with the
        daemon; at start, Store.recover and fresh cores, maintenance mode off (it is not
        restored)."""
        self.step()
        self.pump()
        self.restart_daemon()

    def restart_daemon(self) -> None:
        dropped = {id(m.reply) for q in self.bus.inbox.values() for _s, m in q if isinstance(m, Cancel)}
        self.cancels = [(i, t) for i, t in self.cancels if id(t) not in dropped]  # their clients went too
        for q in self.bus.inbox.values():
            q.clear()
        self.procs.running.clear()
        self.procs.stopping.clear()
        self.procs.exits.clear()  # a new process runner
        self.clock.t += 60
        interrupted, _queued = self.store.recover(self.clock.now())
        COUNTS["jobserver jobs interrupted"] += len(interrupted)
        self.drain_id = None
        for name in CORES:
            self.spawn(name, ())

    @precondition(lambda self: self.procs.running or self.bus.inbox["agents"])
    @rule(data=st.data())
    def drain_to_the_end(self, data: st.DataObject) -> None:
        """Maintenance on; the messages flow and the building jobs exit one by one: then the
        agents say Drained, and no job started on the way."""
        self.step()
        if self.drain_id is None:
            self.enable()
        self.pump()
        while self.procs.running:
            job_id = data.draw(st.sampled_from(sorted(self.procs.running)), label="job")
            self.exit(job_id, data.draw(st.sampled_from([0, 1]), label="returncode"))
            self.pump()
        agents = self.cores["agents"]
        assert agents.items == {} and agents.paused_for == self.drain_id
        assert Drained(subsystem="agents", drain_id=self.drain_id) in self.emitted
        assert Drained(subsystem="scheduler", drain_id=self.drain_id) in self.emitted
        COUNTS["jobserver drains run to the end"] += 1

    @precondition(lambda self: self.procs.running)
    @rule()
    def all_work_finishes(self) -> None:
        self.step()
        self.finish_all_work()
