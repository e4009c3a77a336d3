"""The scheduler and agents as real actors under the real supervisor, on a real store actor,
failing with messages in their inboxes (pykka drops them) and restarted: nothing is lost,
nothing runs twice, a cancel stays a cancel.

The shrunk examples in ``drain_properties/test_jobserver_regressions.py`` run the plain cores with hand-delivered
messages; these run the same cases through pykka's threads, the Peers table, SyncStore
and the process port, as the daemon wires them. Every wait is on an ask or a condition.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.agents import AgentsCore
from actors.definitions import JobDef, PipelineDef, StageDef
from actors.errors import SubsystemGone
from actors.future import CallbackFuture
from actors.jobs import JobExited, JobSpec, JobStarted
from actors.messages import Enable, GetInfo, GetQueueLength, GetStatus, RequestCancel
from actors.peers import Peers
from actors.runs import CancelRun, Trigger
from actors.scheduler import SchedulerCore
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor
from tests.actors.fakes import Explode, FakeClock, FakeSink, FakeTimers

ASK = 5.0
APP = PipelineDef(
    name="app",
    materials=["app"],
    stages=[
        StageDef(name="build", jobs=[JobDef(name="compile", command=["make"]), JobDef(name="package", command=["tar"])]),
        StageDef(name="test", jobs=[JobDef(name="unit", command=["pytest"])]),
    ],
)


class Hold:
    """Blocks the actor's thread until released, so that messages queue behind it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


def hold_or_explode(message: Any) -> bool:
    if isinstance(message, Hold):
        message.started.set()
        assert message.release.wait(ASK), "never released"
        return True
    if isinstance(message, Explode):
        raise RuntimeError("boom")
    return False


class Scheduler(SchedulerCore):
    def handle(self, message: Any) -> Any:
        return None if hold_or_explode(message) else super().handle(message)


class Agents(AgentsCore):
    def handle(self, message: Any) -> Any:
        return None if hold_or_explode(message) else super().handle(message)


class Runner:
    """The process port, thread-safe: jobs run until the test ends them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running: dict[int, Any] = {}
        self.starts: list[int] = []
        self.stops: list[int] = []
        self.exits: dict[int, JobExited] = {}

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        with self.cond:
            self.starts.append(spec.job_id)
            self.running[spec.job_id] = reply_to
            self.cond.notify_all()
        reply_to.tell(JobStarted(job_id=spec.job_id, pid=1000 + spec.job_id))

    def stop_job(self, job_id: int, grace: float) -> None:
        with self.cond:
            self.stops.append(job_id)
            self.cond.notify_all()

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        with self.cond:
            told = [self.exits.get(j) or JobStarted(job_id=j, pid=1000 + j) for j in job_ids]
        for message in told:
            reply_to.tell(message)

    def poll_material(self, *args: Any) -> None:
        raise AssertionError("no materials here")

    fetch_files = poll_material

    def exit(self, job_id: int, code: int = 0) -> None:
        with self.cond:
            reply_to = self.running.pop(job_id)
            self.exits[job_id] = JobExited(job_id=job_id, returncode=-15 if job_id in self.stops else code)
        reply_to.tell(self.exits[job_id])

    def wait(self, predicate: Any, what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, ASK), f"timed out waiting for {what}; started {self.starts}"


class World:
    def __init__(self) -> None:
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), FakeSink()
        self.store = SyncStore(StoreActor.start(":memory:").proxy())
        self.peers = Peers()
        self.runner = Runner()
        self.supervisor = SupervisorActor.start(
            clock=self.clock,
            timers=self.timers,
            sink=self.sink,
            restart_delay=0.5,
            peers=self.peers,
            builtins=(("scheduler", self.scheduler), ("agents", self.agents)),
        )
        self.supervisor.ask(GetStatus(), timeout=ASK)  # after its on_start: both started
        self.settle()

    def scheduler(self, name: str, emit: Any, items: Any) -> Scheduler:
        return Scheduler(
            name, emit, items, pipelines=[APP], store=self.store, peers=self.peers,
            timers=self.timers, clock=self.clock, work_root="/srv/maintd",
        )  # fmt: skip

    def agents(self, name: str, emit: Any, items: Any) -> Agents:
        return Agents(
            name, emit, items, count=2, store=self.store, peers=self.peers,
            processes=self.runner, clock=self.clock, grace=5.0,
        )  # fmt: skip

    def ref(self, name: str) -> Any:
        ref = self.peers.current(name)
        assert ref is not None, f"{name} is not running"
        return ref

    def settle(self) -> None:
        """Every message told so far between the cores is handled (asks go behind them)."""
        for _ in range(3):  # what one core handles may tell the other
            for name in ("agents", "scheduler"):
                self.ref(name).ask(GetQueueLength() if name == "scheduler" else GetInfo(), timeout=ASK)
        self.supervisor.ask(GetStatus(), timeout=ASK)

    def hold(self, name: str) -> Hold:
        hold = Hold()
        self.ref(name).tell(hold)
        assert hold.started.wait(ASK)
        return hold

    def fail_and_restart(self, name: str, hold: Hold, settle: bool = True) -> None:
        """``name`` fails with what queued behind ``hold`` in its inbox; the supervisor starts a fresh one."""
        self.explode(name)
        self.restart(name, hold, settle)

    def explode(self, name: str) -> None:
        """Queue a failure (behind a hold): what is told after it is lost with the inbox."""
        self.ref(name).tell(Explode())

    def restart(self, name: str, hold: Hold, settle: bool = True) -> None:
        old = self.ref(name)
        hold.release.set()
        self.sink.wait(lambda s: any(x.name == name and x.state == "failed" for x in s.subsystems), what=f"{name} failed")
        assert not old.is_alive()
        self.timers.fire(f"restart:{name}", self.supervisor)
        self.sink.wait(lambda s: any(x.name == name and x.state != "failed" for x in s.subsystems), what=f"{name} back")
        if settle:
            self.settle()

    def finish_everything(self) -> dict[str, str]:
        """Every job exits 0 as it starts, until none runs; the state of every job by name."""
        for _ in range(10):
            self.settle()
            with self.runner.cond:
                running = sorted(self.runner.running)
            if not running:
                break
            for job_id in running:
                self.runner.exit(job_id)
        self.settle()
        (run,) = self.store.recent_runs()
        return {"run": run.state, **{j.name: j.state for j in run.jobs}}


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    pykka.ActorRegistry.stop_all()


def test_agents_failing_with_assigns_queued_get_the_jobs_again(w: World) -> None:
    hold = w.hold("agents")
    w.explode("agents")
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=ASK)  # two Assigns queue behind the failure
    w.restart("agents", hold)
    assert w.finish_everything() == {"run": "passed", "compile": "passed", "package": "passed", "unit": "passed"}
    assert sorted(w.runner.starts) == [1, 2, 3]  # each once


def test_agents_failing_with_a_job_exit_queued_drain_once_the_jobs_have_exited(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=ASK)
    w.runner.wait(lambda: len(w.runner.running) == 2, "two jobs")
    w.settle()
    w.supervisor.ask(Enable(by="alice"), timeout=ASK)
    hold = w.hold("agents")
    w.explode("agents")
    w.runner.exit(1)  # its JobExited queues behind the failure
    w.restart("agents", hold)
    w.runner.exit(2)
    status = w.sink.wait(lambda s: s.maintenance.safe_to_restart, what="safe to restart")
    assert status.running_systems.building_jobs == ()
    assert [w.store.job(j).state for j in (1, 2)] == ["passed", "passed"]  # type: ignore[union-attr]


def test_a_scheduler_restarted_while_its_assigns_are_on_their_way_runs_each_job_once(w: World) -> None:
    hold = w.hold("agents")
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=ASK)  # the Assigns wait behind the hold
    scheduler_hold = w.hold("scheduler")
    w.fail_and_restart("scheduler", scheduler_hold, settle=False)  # the agents are still held
    hold.release.set()
    assert w.finish_everything() == {"run": "passed", "compile": "passed", "package": "passed", "unit": "passed"}
    assert sorted(w.runner.starts) == [1, 2, 3]  # each once


def test_agents_restarted_after_a_cancel_record_who_cancelled(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=ASK)
    w.runner.wait(lambda: len(w.runner.running) == 2, "two jobs")
    w.settle()
    reply = CallbackFuture()
    w.supervisor.ask(RequestCancel(item="agents/job-1", by="bob", reply=reply), timeout=ASK)
    w.settle()
    assert reply.get(timeout=ASK)["cancelled"] is True
    assert w.runner.stops == [1]
    w.fail_and_restart("agents", w.hold("agents"))
    assert w.runner.stops == [1, 1]  # the restarted agents stop it again (the first may have been lost)
    states = w.finish_everything()
    assert (states["compile"], w.store.job(1).cancelled_by) == ("cancelled", "bob")  # type: ignore[union-attr]
    assert states["run"] == "cancelled" and "unit" not in states


def test_a_cancel_run_lost_with_the_failing_agents_inbox_still_cancels_the_run(w: World) -> None:
    w.ref("scheduler").ask(Trigger(pipeline="app", by="alice"), timeout=ASK)
    w.runner.wait(lambda: len(w.runner.running) == 2, "two jobs")
    w.settle()
    hold = w.hold("agents")
    w.explode("agents")
    w.ref("scheduler").ask(CancelRun(pipeline="app", counter=1, by="carol"), timeout=ASK)  # its CancelJobs is lost
    reply = CallbackFuture()
    w.supervisor.ask(RequestCancel(item="agents/job-2", by="dave", reply=reply), timeout=ASK)  # lost too
    w.restart("agents", hold)
    with pytest.raises(SubsystemGone):
        reply.get(timeout=ASK)  # answered by the failing actor
    assert sorted(w.runner.stops) == [1, 2]  # from the store: carol asked
    states = w.finish_everything()
    assert states == {"run": "cancelled", "compile": "cancelled", "package": "cancelled"}
    assert [w.store.job(j).cancelled_by for j in (1, 2)] == ["carol", "carol"]  # type: ignore[union-attr]
