"""Results already obtained are never lost: with the store refusing writes (disk full), the
scheduler and agents keep what they could not record, in order, show it, block a restart,
and record it once the store takes writes again.

The store is the real one (``Store(":memory:")``) with one change: while ``disk.full`` is
set, every write raises the store's own :class:`StoreError`, as SQLite's "database or disk
is full" does. Reads go on working, as they do on a full disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.agents import AgentsCore
from actors.definitions import PipelineDef
from actors.handout import JobFinished
from actors.jobs import JobExited, JobState
from actors.messages import Disable, Drained, Enable, GetQueueLength, GetStatus, InFlightReport
from actors.peers import Peers
from actors.pending import PENDING_WRITE, RETRY_FIRST, RetryWrites, WritesPending
from actors.runs import Trigger
from actors.scheduler import SchedulerCore
from actors.store import Store, StoreError
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor
from tests.actors import test_jobserver_restarts as restarts
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers
from tests.actors.test_jobserver_cores import PIPE, FakePeers, FakeProcesses
from tests.conftest import wait_for

FULL = "database or disk is full"


class Disk:
    full = False


class FailingStore(Store):
    """The real store, whose writes fail while ``disk.full`` is set."""

    def __init__(self, path: str, disk: Disk) -> None:
        self.disk = disk
        super().__init__(path)

    def _tx(self, what: str, begin: str = "BEGIN IMMEDIATE") -> Any:
        if self.disk.full and begin == "BEGIN IMMEDIATE":
            raise StoreError(f"the store at {self.path} could not record {what}: {FULL}")
        return super()._tx(what, begin)

    def begin_group(self) -> None:
        if self.disk.full:
            raise StoreError(f"the store at {self.path} could not begin a transaction: {FULL}")
        super().begin_group()


class FailingStoreActor(StoreActor):
    def __init__(self, path: str, disk: Disk) -> None:
        super().__init__(path)
        self.disk = disk

    def on_start(self) -> None:
        self._store = FailingStore(self._path, self.disk)


# --- the plain cores, messages delivered by hand -------------------------------------------


class Cores:
    """A scheduler and agents on one failing store; ``deliver`` hands their messages across."""

    def __init__(self, pipeline: PipelineDef = PIPE) -> None:
        self.disk = Disk()
        self.store = FailingStore(":memory:", self.disk)
        self.peers, self.procs, self.timers, self.clock = FakePeers(), FakeProcesses(), FakeTimers(), FakeClock()
        self.sent: list[Any] = []
        self.scheduler = SchedulerCore(
            "scheduler", self.sent.append, pipelines=[pipeline], store=self.store, peers=self.peers,
            timers=self.timers, clock=self.clock, work_root="/srv/maintd",
        )  # fmt: skip
        self.agents = AgentsCore(
            "agents", self.sent.append, count=2, store=self.store, peers=self.peers, processes=self.procs,
            clock=self.clock, grace=5.0, timers=self.timers,
        )  # fmt: skip
        self.delivered = 0

    def deliver(self) -> None:
        """Every message told so far between the two cores, in order (and what that tells)."""
        while self.delivered < len(self.peers.told):
            name, message = self.peers.told[self.delivered]
            self.delivered += 1
            core = {"scheduler": self.scheduler, "agents": self.agents}[name]
            core.handle(message)

    def fire(self, core: Any) -> float:
        """Fire ``core``'s retry timer as the Timers port would; its delay."""
        delay, message, target = self.timers.armed.pop(f"store-retry:{core.name}")
        assert isinstance(message, RetryWrites) and target is core.me
        core.handle(message)
        return delay

    def state(self, job_id: int) -> str:
        row = self.store.job(job_id)
        assert row is not None
        return row.state

    def pending_items(self, core: Any) -> list[Any]:
        return [item for item in core.items.values() if item.kind == PENDING_WRITE]

    def last(self, kind: type, subsystem: str) -> Any:
        return next(m for m in reversed(self.sent) if isinstance(m, kind) and m.subsystem == subsystem)


def started(cores: Cores) -> Cores:
    cores.scheduler.handle(Trigger(pipeline="app", by="alice"))
    cores.agents.start()
    cores.deliver()
    return cores


@pytest.fixture
def c() -> Cores:
    return started(Cores())


def test_job_results_the_store_refuses_are_kept_block_the_drain_and_are_recorded_in_order(c: Cores) -> None:
    ids = {spec.job: spec.job_id for _, spec in c.procs.of("start_job")}
    assert sorted(ids) == ["compile", "package"]
    assert c.state(ids["compile"]) == c.state(ids["package"]) == "building"
    c.agents.pause("d1")
    c.disk.full = True

    c.agents.handle(JobExited(job_id=ids["compile"], returncode=0))
    c.disk.full = False  # space comes back at once: the next write must still not overtake the kept one
    c.agents.handle(JobExited(job_id=ids["package"], returncode=2))
    c.deliver()

    # Neither is lost nor recorded out of order; the agents did not fail; nothing ran on.
    assert c.state(ids["compile"]) == c.state(ids["package"]) == "building"
    assert c.peers.to("scheduler", JobFinished) == []
    items = c.pending_items(c.agents)
    assert [i.description.split(" waiting")[0] for i in items] == [
        f"the result of job {ids['compile']} (passed)",
        f"the result of job {ids['package']} (failed)",
    ]
    assert all(i.blocks_restart and not i.cancellable for i in items)
    assert FULL in items[0].description
    assert c.last(InFlightReport, "agents").items == tuple(items)
    assert c.last(WritesPending, "agents") == WritesPending(
        subsystem="agents", count=2, last_error=c.agents.pending.last_error, since=c.clock.now(), failures=0
    )
    assert FULL in (c.agents.pending.last_error or "")
    assert not any(isinstance(m, Drained) for m in c.sent), "drained with results unwritten"

    # The retry timer (through the Timers port, never a sleep) records them in order.
    assert c.fire(c.agents) == RETRY_FIRST
    c.deliver()
    assert (c.state(ids["compile"]), c.state(ids["package"])) == ("passed", "failed")
    package = c.store.job(ids["package"])
    assert package is not None and package.returncode == 2
    finished = c.peers.to("scheduler", JobFinished)
    assert finished == [
        JobFinished(job_id=ids["compile"], state=JobState.PASSED),
        JobFinished(job_id=ids["package"], state=JobState.FAILED),
    ]
    assert c.pending_items(c.agents) == [] and c.last(WritesPending, "agents").count == 0
    assert any(isinstance(m, Drained) and m.subsystem == "agents" for m in c.sent)
    assert "store-retry:agents" not in c.timers.armed
    (run,) = c.store.recent_runs()
    assert run.state == "failed"


def test_retries_back_off_while_the_store_still_refuses(c: Cores) -> None:
    job_id = c.procs.of("start_job")[0][1].job_id
    c.disk.full = True
    c.agents.handle(JobExited(job_id=job_id, returncode=0))
    delays = [c.fire(c.agents) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert c.state(job_id) == "building" and len(c.pending_items(c.agents)) == 1
    assert sum(m.failures for m in c.sent if isinstance(m, WritesPending)) == 8  # the first try and 7 retries
    c.disk.full = False
    c.fire(c.agents)
    assert c.state(job_id) == "passed" and c.pending_items(c.agents) == []


def test_a_run_end_and_the_next_stage_the_store_refuses_wait_and_the_run_goes_on(c: Cores) -> None:
    ids = {spec.job: spec.job_id for _, spec in c.procs.of("start_job")}
    for job_id in ids.values():
        c.agents.handle(JobExited(job_id=job_id, returncode=0))
    # Recorded; the disk fills before the scheduler hears: the next stage cannot be made.
    c.disk.full = True
    c.deliver()
    assert [i.description.split(" waiting")[0] for i in c.pending_items(c.scheduler)] == ["the jobs of app/1/test"]
    assert c.scheduler.pending.last_error is not None and FULL in c.scheduler.pending.last_error
    assert [j.name for j in c.store.jobs_of_run(1)] == ["compile", "package"]
    assert c.scheduler.handle(GetQueueLength()) == 0

    c.disk.full = False
    c.fire(c.scheduler)
    c.deliver()
    assert [j.name for j in c.store.jobs_of_run(1)] == ["compile", "package", "unit"]  # made once
    assert c.pending_items(c.scheduler) == []
    (_, unit) = c.procs.of("start_job")[-1]
    assert unit.job == "unit"
    c.disk.full = True
    c.agents.handle(JobExited(job_id=unit.job_id, returncode=0))
    c.disk.full = False
    c.fire(c.agents)
    c.deliver()
    (run,) = c.store.recent_runs()
    assert (run.state, [j.state for j in run.jobs]) == ("passed", ["passed", "passed", "passed"])


def test_a_run_end_kept_for_the_store_is_not_overtaken_by_a_later_write() -> None:
    c = started(Cores(PipelineDef(name="app", materials=["app"], stages=PIPE.stages[:1])))
    ids = {spec.job: spec.job_id for _, spec in c.procs.of("start_job")}
    for job_id in ids.values():
        c.agents.handle(JobExited(job_id=job_id, returncode=0))
    c.disk.full = True
    c.deliver()  # the run passed, its end not written
    (run,) = c.store.recent_runs()
    assert run.state == "running" and len(c.pending_items(c.scheduler)) == 1
    c.disk.full = False
    # A later write of the scheduler (a new run's jobs) waits behind the run's end
    c.scheduler.handle(Trigger(pipeline="app", by="bob"))
    assert [r.state for r in c.store.recent_runs()] == ["running", "running"]  # run 2, run 1
    assert c.store.jobs_of_run(2) == []
    c.fire(c.scheduler)
    assert [r.state for r in c.store.recent_runs()] == ["running", "passed"]
    assert [j.name for j in c.store.jobs_of_run(2)] == ["compile", "package"]


def test_a_job_whose_result_waits_is_still_held_when_paused_agents_give_back_an_assign(c: Cores) -> None:
    """Found by DiskFullMachine: the scheduler hears JobFinished only once the result is
    written, so until then a GiveBack must name the job as held, or the scheduler takes it
    back and runs it a second time."""
    c.scheduler.handle(Trigger(pipeline="app", by="bob"))  # run 2 waits for an agent
    first = c.procs.of("start_job")[0][1].job_id
    c.disk.full = True
    c.agents.handle(JobExited(job_id=first, returncode=0))  # agent-1 free, asks for work
    c.agents.pause("d1")
    c.scheduler.pause("d1")
    c.disk.full = False
    c.deliver()  # run 2's first job goes to the paused agents, who give it back
    c.agents.resume("d1")
    c.scheduler.resume("d1")
    c.deliver()
    c.fire(c.agents)
    c.deliver()
    started = [spec.job_id for _, spec in c.procs.of("start_job")]
    assert started.count(first) == 1, started
    assert c.state(first) == "passed"


def test_a_timer_or_material_trigger_the_store_refuses_is_skipped_without_failing(c: Cores) -> None:
    c.disk.full = True
    c.scheduler.automatic("app", "timer")  # it raised StoreError out of the actor before
    assert len(c.store.recent_runs()) == 1
    with pytest.raises(StoreError):  # a user's trigger is refused: the asker learns why
        c.scheduler.handle(Trigger(pipeline="app", by="alice"))


# --- the real actors, under the real supervisor -----------------------------------------------


class World(restarts.World):
    """test_jobserver_restarts' world (real supervisor, scheduler and agents actors, Peers,
    SyncStore), on a store actor whose writes fail while ``disk.full`` is set."""

    def __init__(self) -> None:
        self.disk = Disk()
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), FakeSink()
        self.store = SyncStore(FailingStoreActor.start(":memory:", self.disk).proxy())
        self.peers = Peers()
        self.runner = restarts.Runner()
        self.supervisor = SupervisorActor.start(
            clock=self.clock, timers=self.timers, sink=self.sink, restart_delay=0.5, peers=self.peers,
            builtins=(("scheduler", self.scheduler), ("agents", self.agents)),
        )  # fmt: skip
        self.supervisor.ask(GetStatus(), timeout=restarts.ASK)
        self.settle()

    def agents(self, name: str, emit: Any, items: Any) -> restarts.Agents:
        return restarts.Agents(
            name, emit, items, count=2, store=self.store, peers=self.peers,
            processes=self.runner, clock=self.clock, grace=5.0, timers=self.timers,
        )  # fmt: skip


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    pykka.ActorRegistry.stop_all()


def wait_status(w: World, predicate: Any, what: str) -> Any:
    return w.sink.wait(predicate, what=what)


def recorded_building(w: World) -> None:
    """The agents do not wait for their "building" writes: the disk fills only once they landed."""
    wait_for(lambda: {j.state for j in w.store.recent_runs()[0].jobs} == {"building"}, 10, "both jobs recorded building")


def test_actors_keep_results_through_a_full_disk_and_finish_the_run_when_it_has_room(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=restarts.ASK)
    w.runner.wait(lambda: len(w.runner.running) == 2, "both jobs to build")
    w.supervisor.ask(Enable(by="alice", reason="upgrade"), timeout=restarts.ASK)
    w.settle()
    compile_id, package_id = sorted(w.runner.running)
    recorded_building(w)

    w.disk.full = True
    w.runner.exit(compile_id)
    w.runner.exit(package_id)
    w.settle()
    s = wait_status(w, lambda s: s.store.pending_writes == 2, "two results waiting")
    assert all(x.state != "failed" and x.failures == 0 for x in s.subsystems), s.subsystems
    assert s.store.state == "degraded" and FULL in (s.store.last_error or "") and s.store.since is not None
    assert s.store.write_failures >= 1
    waiting = [i for i in s.running_systems.other if i.kind == PENDING_WRITE]
    assert len(waiting) == 2 and all(i.blocks_restart for i in waiting)
    assert (s.maintenance.state, s.maintenance.safe_to_restart) == ("draining", False)
    assert [j.state for j in w.store.recent_runs()[0].jobs] == ["building", "building"]

    # Never safe while they wait, through the retries.
    for _ in range(3):
        w.timers.fire("store-retry:agents", w.supervisor)
        w.settle()
        assert not w.sink.status.maintenance.safe_to_restart
    assert not any(e.maintenance.safe_to_restart for e in w.sink.events)

    w.disk.full = False
    w.timers.fire("store-retry:agents", w.supervisor)
    w.settle()
    s = wait_status(w, lambda s: s.maintenance.safe_to_restart, "safe once the results are recorded")
    assert s.store.state == "ok" and s.store.pending_writes == 0 and s.store.last_error is None
    assert not [i for i in s.running_systems.other if i.kind == PENDING_WRITE]
    (run,) = w.store.recent_runs()
    assert {j.name: j.state for j in run.jobs} == {"compile": "passed", "package": "passed", "unit": "scheduled"}
    assert all(x.failures == 0 for x in s.subsystems)

    # The run goes on once maintenance is off.
    w.supervisor.ask(Disable(by="alice"), timeout=restarts.ASK)
    assert w.finish_everything() == {"run": "passed", "compile": "passed", "package": "passed", "unit": "passed"}


def test_a_restarted_agents_actor_learns_again_the_results_its_predecessor_kept(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=restarts.ASK)
    w.runner.wait(lambda: len(w.runner.running) == 2, "both jobs to build")
    w.settle()
    compile_id, _ = sorted(w.runner.running)
    recorded_building(w)
    w.disk.full = True
    w.runner.exit(compile_id)
    wait_status(w, lambda s: s.store.pending_writes == 1, "the result waiting")
    hold = w.hold("agents")
    w.disk.full = False
    w.fail_and_restart("agents", hold)
    # the fresh actor reads the job as building, asks the runner, and records the exit it is told again
    s = wait_status(w, lambda s: s.store.pending_writes == 0, "no write waiting after the restart")
    w.settle()
    assert not [i for i in s.running_systems.other if i.kind == PENDING_WRITE]
    assert {j.id: j.state for j in w.store.recent_runs()[0].jobs}[compile_id] == "passed"


def test_no_write_is_kept_when_the_store_takes_them(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=restarts.ASK)
    assert w.finish_everything()["run"] == "passed"
    s = w.sink.status
    assert s is not None and s.store.state == "ok" and s.store.write_failures == 0
    assert not [key for key in w.timers.armed if key.startswith("store-retry:")]


def test_a_new_revision_the_store_refuses_does_not_fail_materials_and_is_taken_up_again(tmp_path: Path) -> None:
    """A full disk when a poll finds a new revision: the materials core stays up, tells the
    scheduler, and, the revision not being recorded, sees it as new again at the next poll."""
    from actors.jobs import PollFinished
    from actors.materials import MaterialChanged, MaterialsCore
    from tests.actors.test_jobserver_cores import APP, World

    disk = Disk()
    w = World()
    w.store = FailingStore(str(tmp_path / "maintd.db"), disk)
    core = MaterialsCore(
        "materials", w.sent.append, materials=[APP], config_repos=[], processes=w.procs,
        timers=w.timers, clock=w.clock, store=w.store, peers=w.peers,
    )  # fmt: skip
    disk.full = True
    core.handle(PollFinished(key="app", revision="r1"))  # raised StoreError out of the actor before
    assert [m for m in w.peers.told if isinstance(m[1], MaterialChanged)][-1][1].revision == "r1"
    assert w.store.last_revision("app") is None
    disk.full = False
    core.handle(PollFinished(key="app", revision="r1"))
    assert w.store.last_revision("app") == "r1"
