"""The supervisor with real actors and fake ports: the drain, failures, deadlines, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.errors import Conflict, NotCancellable
from actors.future import CallbackFuture
from actors.messages import Disable, Enable, GetHistory, GetStatus, PauseIntake, RequestCancel
from actors.supervisor import DEADLINE_TIMER, SupervisorCore
from actors.supervisor_actor import SupervisorActor
from actors.types import OnDeadline
from tests.actors.fakes import (
    AddWork,
    Explode,
    FakeClock,
    FakeSink,
    FakeTimers,
    FinishWork,
    TryStartWork,
    WorkCore,
    core_of,
    item,
    subsystem_ref,
)

NAMES = ("materials", "scheduler", "agents", "config")


class World:
    def __init__(self, names: tuple[str, ...] = NAMES) -> None:
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), FakeSink()
        self.supervisor = SupervisorActor.start(
            clock=self.clock,
            timers=self.timers,
            sink=self.sink,
            restart_delay=0.5,
            builtins=tuple((name, WorkCore) for name in names),
        )
        self.sink.wait(lambda s: all(x.state == "running" for x in s.subsystems) and len(s.subsystems) == len(names))

    def ask(self, message: Any) -> Any:
        return self.supervisor.ask(message, timeout=5)

    def tell(self, name: str, message: Any) -> None:
        subsystem_ref(name).tell(message)

    def wait_state(self, state: str) -> Any:
        return self.sink.wait(lambda s: s.maintenance.state == state, what=f"state {state}")

    def subsystem(self, status: Any, name: str) -> Any:
        return next(s for s in status.subsystems if s.name == name)


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    pykka.ActorRegistry.stop_all()


def test_enable_pauses_every_subsystem_once_and_reports_safe_once_all_drained(world: World) -> None:
    world.tell("agents", AddWork(item("agents", "job1")))
    world.sink.wait(lambda s: len(s.running_systems.building_jobs) == 1)
    info = world.ask(Enable(by="alice", reason="upgrade"))
    assert (info.enabled, info.state, info.updated_by, info.reason) == (True, "draining", "alice", "upgrade")
    status = world.sink.wait(
        lambda s: [world.subsystem(s, n).state for n in NAMES] == ["drained", "drained", "paused", "drained"]
    )
    assert status.maintenance.state == "draining" and not status.maintenance.safe_to_restart
    assert [s.name for s in status.subsystems] == list(NAMES)  # listed in the drain order
    assert all(core_of(name).pauses == [info.drain_id] for name in NAMES)
    world.tell("agents", FinishWork("agents/job1"))
    status = world.wait_state("drained")
    assert status.maintenance.safe_to_restart


class Told:
    """An actor ref that adds what it is told to a list shared by every subsystem."""

    def __init__(self, name: str, told: list[tuple[str, Any]]) -> None:
        self.name, self.told = name, told

    def tell(self, message: Any) -> None:
        self.told.append((self.name, message))

    def stop(self, block: bool = True) -> None:
        pass


def test_enable_tells_pause_intake_in_the_drain_order_builtins_first_then_externals() -> None:
    # Each actor runs in its own thread, so the order they act in proves nothing: the
    # order is the supervisor's, in the PauseIntakes it sends (DESIGN.md: materials,
    # scheduler, agents, config guard, external).
    told: list[tuple[str, Any]] = []
    core = SupervisorCore(clock=FakeClock(), timers=FakeTimers(), sink=FakeSink())
    for name in NAMES:
        core.add_subsystem(name, lambda generation, items, name=name: Told(name, told), external=False)
    core.add_subsystem("exporter", lambda generation, items: Told("exporter", told), external=True)
    core.enable(Enable(by="alice"))
    assert [(name, type(m)) for name, m in told] == [(name, PauseIntake) for name in (*NAMES, "exporter")]


def test_a_paused_subsystem_starts_no_new_work(world: World) -> None:
    world.ask(Enable(by="alice"))
    world.wait_state("drained")
    world.tell("scheduler", TryStartWork(item("scheduler", "late")))
    assert core_of("scheduler").refused == ["scheduler/late"]
    assert world.ask(GetStatus()).maintenance.safe_to_restart


def test_scheduled_jobs_are_shown_but_do_not_hold_back_the_restart(world: World) -> None:
    world.tell("scheduler", AddWork(item("scheduler", "queued", "scheduled_job", blocks=False)))
    world.ask(Enable(by="alice"))
    status = world.wait_state("drained")
    assert [i.id for i in status.running_systems.scheduled_jobs] == ["scheduler/queued"]


def test_new_work_after_drained_goes_back_to_draining(world: World) -> None:
    world.ask(Enable(by="alice"))
    world.wait_state("drained")
    world.tell("agents", AddWork(item("agents", "sneaky")))
    status = world.wait_state("draining")
    assert not status.maintenance.safe_to_restart


def test_enable_twice_and_disable_when_off_are_conflicts_that_change_nothing(world: World) -> None:
    with pytest.raises(Conflict, match="not on"):
        world.ask(Disable(by="bob"))
    world.ask(Enable(by="alice", reason="first"))
    with pytest.raises(Conflict, match="already on"):
        world.ask(Enable(by="bob", reason="second"))
    status = world.ask(GetStatus())
    assert (status.maintenance.updated_by, status.maintenance.reason) == ("alice", "first")


def test_disable_resumes_every_subsystem(world: World) -> None:
    world.ask(Enable(by="alice"))
    world.wait_state("drained")
    info = world.ask(Disable(by="bob"))
    assert (info.enabled, info.updated_by) == (False, "bob")
    status = world.sink.wait(lambda s: all(x.state == "running" for x in s.subsystems))
    assert not status.maintenance.safe_to_restart
    for name in NAMES:
        core = core_of(name)
        assert core.intake_open and core.resumes == core.pauses


def test_a_subsystem_that_raises_is_failed_never_safe_and_restarted(world: World) -> None:
    world.ask(Enable(by="alice"))
    world.wait_state("drained")
    world.tell("agents", Explode())
    status = world.sink.wait(lambda s: world.subsystem(s, "agents").state == "failed")
    assert status.maintenance.state == "draining" and not status.maintenance.safe_to_restart
    assert "boom" in (world.subsystem(status, "agents").last_error or "")
    assert "restart:agents" in world.timers.armed
    world.timers.fire("restart:agents", world.supervisor)
    status = world.wait_state("drained")
    assert world.subsystem(status, "agents").failures == 1
    assert core_of("agents").pauses  # the fresh actor was paused for the running drain


def test_history_records_who_when_why(world: World) -> None:
    world.ask(Enable(by="alice", reason="upgrade"))
    world.wait_state("drained")
    world.ask(Disable(by="bob", reason="done"))
    entries = [(e.action, e.by, e.from_state, e.to_state) for e in world.ask(GetHistory())]
    assert entries == [
        ("enable", "alice", "normal", "draining"),
        ("all_drained", "maintd", "draining", "drained"),
        ("disable", "bob", "drained", "normal"),
    ]


def test_deadline_marks_overdue_and_cancels_cancellable_work_but_never_an_mdu(world: World) -> None:
    world.tell("materials", AddWork(item("materials", "app", "material_update", cancellable=True)))
    world.tell("agents", AddWork(item("agents", "job1")))
    world.tell("agents", AddWork(item("agents", "job2", cancellable=False)))
    world.sink.wait(lambda s: len(s.running_systems.building_jobs) == 2 and s.running_systems.material_update_in_progress)
    world.ask(Enable(by="alice", deadline_seconds=60, on_deadline=OnDeadline.CANCEL))
    assert world.timers.armed[DEADLINE_TIMER][0] == 60
    world.timers.fire(DEADLINE_TIMER, world.supervisor)
    overdue = world.sink.wait_event("overdue")
    assert {i.id for i in overdue.items or ()} == {"materials/app", "agents/job1", "agents/job2"}
    world.sink.wait_event("cancelled")
    status = world.sink.wait(lambda s: [i.id for i in s.running_systems.building_jobs] == ["agents/job2"])
    assert status.maintenance.overdue
    assert [i.id for i in status.running_systems.material_update_in_progress] == ["materials/app"]
    cancels = [e for e in world.ask(GetHistory()) if e.action == "cancel"]
    assert [(c.item, c.by, c.reason) for c in cancels] == [("agents/job1", "deadline", "cancelled by the deadline")]


def test_cancel_goes_to_the_owner_and_an_mdu_is_refused(world: World) -> None:
    world.tell("materials", AddWork(item("materials", "app", "material_update")))
    world.tell("agents", AddWork(item("agents", "job1")))
    world.sink.wait(lambda s: s.running_systems.building_jobs and s.running_systems.material_update_in_progress)
    with pytest.raises(NotCancellable, match="partial clone"):
        world.ask(RequestCancel(item="materials/app", by="alice", reply=CallbackFuture()))
    reply = CallbackFuture()
    assert world.ask(RequestCancel(item="job1", by="alice", reply=reply)) == "agents/job1"
    assert reply.get(timeout=5) == {"item": "agents/job1", "cancelled": True, "by": "alice"}
