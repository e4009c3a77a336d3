"""A subsystem actor that died with its ``SubsystemFailed`` still queued (issue 11).

Until the supervisor reads that message the view still holds the dead actor's ref, and
``tell`` on it raises ``pykka.ActorDeadError``. The supervisor must not raise halfway
through a change it has already made and audited (maintenance on, and the client told
"maintd is shutting down"); the message the actor missed is given to its successor.
"""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.errors import MaintdError
from actors.future import CallbackFuture
from actors.messages import (
    Cancel,
    DeadlineReached,
    Disable,
    Enable,
    InFlightReport,
    PauseIntake,
    RequestCancel,
    RestartSubsystem,
    ResumeIntake,
    SubsystemFailed,
)
from actors.supervisor import DEADLINE_TIMER, SupervisorCore
from actors.types import OnDeadline
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers, item


class Ref:
    """An actor ref that records what it is told, or raises as a dead actor's does."""

    def __init__(self) -> None:
        self.told: list[Any] = []
        self.dead = False

    def tell(self, message: Any) -> None:
        if self.dead:
            raise pykka.ActorDeadError("dead")
        self.told.append(message)

    def stop(self, block: bool = True) -> None:
        self.dead = True


class Audits(list[str]):
    """The audit log: the actions audited."""

    def audit(self, action: str, *args: Any, **kwargs: Any) -> int:
        self.append(action)
        return len(self)


class World:
    def __init__(self) -> None:
        self.audits = Audits()
        self.timers = FakeTimers()
        self.core = SupervisorCore(clock=FakeClock(), timers=self.timers, sink=FakeSink(), audit_log=self.audits)
        self.refs: dict[str, list[Ref]] = {"alive": [], "dying": []}
        for name in self.refs:
            self.core.add_subsystem(name, self.spawner(name), external=False)
            self.core.on_report(InFlightReport(subsystem=name, items=(item(name, "job1"),)))

    def spawner(self, name: str) -> Any:
        def spawn(generation: int, items: Any) -> Ref:
            ref = Ref()
            self.refs[name].append(ref)
            return ref

        return spawn

    def die(self, name: str) -> None:
        self.refs[name][-1].dead = True

    def restart(self, name: str) -> Ref:
        """The queued SubsystemFailed is read, and the restart timer fires."""
        self.core.on_failed(SubsystemFailed(subsystem=name, generation=0, error="boom"))
        self.core.on_restart(RestartSubsystem(name=name, generation=0))
        return self.refs[name][-1]


@pytest.fixture
def world() -> World:
    return World()


def test_enable_with_a_dead_actor_answers_and_the_restarted_actor_is_paused(world: World) -> None:
    world.die("dying")
    info = world.core.enable(Enable(by="alice"))
    assert info.enabled and world.core.machine.enabled and world.audits == ["enable"]
    assert [type(m) for m in world.refs["alive"][-1].told] == [PauseIntake]
    successor = world.restart("dying")
    assert successor is not world.refs["dying"][0]
    assert successor.told == [PauseIntake(drain_id=info.drain_id or "")]


def test_disable_with_a_dead_actor_answers_and_resumes_the_others(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.die("dying")
    info = world.core.disable(Disable(by="alice"))
    assert not info.enabled
    assert isinstance(world.refs["alive"][-1].told[-1], ResumeIntake)
    assert world.restart("dying").told == []  # it starts with its intake open: nothing to resume


def test_cancel_of_a_dead_actors_item_is_refused_as_unavailable(world: World) -> None:
    world.die("dying")
    with pytest.raises(MaintdError) as refused:
        world.core.request_cancel(RequestCancel(item="dying/job1", by="alice", reply=CallbackFuture()))
    assert refused.value.code == "unavailable"


def test_the_deadline_cancels_the_live_actors_work_past_a_dead_one(world: World) -> None:
    world.core.enable(Enable(by="alice", deadline_seconds=1, on_deadline=OnDeadline.CANCEL))
    world.die("dying")
    assert DEADLINE_TIMER in world.timers.armed
    world.core.on_deadline_reached(DeadlineReached(drain_id=world.core.drain_id or ""))
    assert [m.item_id for m in world.refs["alive"][-1].told if isinstance(m, Cancel)] == ["alive/job1"]
