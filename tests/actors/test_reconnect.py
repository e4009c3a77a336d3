"""An external that disconnects with blocking work gives no safe window (issue 9, item 4).

The supervisor with real actors, fake clock and timers (fired by hand), and externals that
register over a recording link; the test plays the process, as ``daemon/server.py`` does.
Every status the supervisor publishes is recorded: none may say safe while the process's
work is unaccounted for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.messages import (
    Enable,
    ExternalDrained,
    ExternalInFlight,
    ExternalIntakePaused,
    GetStatus,
    Register,
    Unregister,
)
from actors.status import Status
from actors.supervisor_actor import SupervisorActor
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers, WorkCore, item
from tests.conftest import wait_for

GRACE = 10.0


class Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.actor: Any = None

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def route_to(self, actor: Any) -> None:
        self.actor = actor


class RecordingSink(FakeSink):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Status] = []

    def publish(self, status: Status | None, event: Any) -> None:
        if status is not None:
            self.seen.append(status)
        super().publish(status, event)


class World:
    def __init__(self) -> None:
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), RecordingSink()
        self.links: dict[str, Link] = {}
        self.supervisor = SupervisorActor.start(
            clock=self.clock,
            timers=self.timers,
            sink=self.sink,
            builtins=(("agents", WorkCore),),
            reconnect_grace=GRACE,
        )
        self.sink.wait(lambda s: len(s.subsystems) == 1 and s.subsystems[0].state == "running")

    def register(self, name: str) -> Link:
        link = self.links[name] = Link()
        self.supervisor.ask(Register(name=name, link=link, by="alice"), timeout=5)
        return link

    def send(self, name: str, message: Any) -> None:
        """A line from the process: its connection hands it to the subsystem's actor."""
        self.links[name].actor.tell(message)

    def settle(self) -> Status:
        return self.supervisor.ask(GetStatus(), timeout=5)

    def ext(self, status: Status, name: str = "worker") -> Any:
        return next((s for s in status.subsystems if s.name == name), None)

    def wait_ext(self, predicate: Any, what: str, name: str = "worker") -> Status:
        return self.sink.wait(lambda s: (view := self.ext(s, name)) is not None and predicate(view), what=what)

    def wait_message(self, text: str, since: int = 0) -> None:
        with self.sink.cond:
            if not self.sink.cond.wait_for(lambda: any(e.message == text for e in self.sink.events[since:]), 5):
                raise AssertionError(f"no event {text!r}")

    def drain_with_work(self) -> Link:
        """``worker`` has a blocking job; maintenance on; everyone but the job is done."""
        link = self.register("worker")
        self.send("worker", ExternalInFlight(items=(item("worker", "job-1"),)))
        self.supervisor.ask(Enable(by="alice"), timeout=5)
        drain_id = self.settle().maintenance.drain_id
        self.send("worker", ExternalIntakePaused(drain_id=drain_id))
        status = self.wait_ext(lambda v: v.state == "paused", "worker paused")
        assert status.maintenance.state == "draining"
        return link


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    pykka.ActorRegistry.stop_all()


def test_a_process_that_reconnects_at_once_never_makes_a_safe_window(world: World) -> None:
    world.drain_with_work()
    mark = len(world.sink.seen)
    world.supervisor.tell(Unregister(name="worker", reason="connection lost"))
    status = world.wait_ext(lambda v: v.state == "disconnected", "worker disconnected")
    view = world.ext(status)
    assert view.blocking == 1 and view.reconnect_by is not None
    assert [i.id for i in status.running_systems.building_jobs] == ["worker/job-1"]

    link = world.register("worker")  # the same name, a few ms later
    drain_id = status.maintenance.drain_id
    wait_for(lambda: {"type": "pause_intake", "drain_id": drain_id} in link.sent, 5, "pause_intake to the new process")
    status = world.settle()
    assert world.ext(status).state != "drained" and world.ext(status).blocking == 1  # not reported yet
    # It reports its work (still running), stops its intake: the earlier work is released.
    world.send("worker", ExternalInFlight(items=(item("worker", "job-1"),)))
    world.send("worker", ExternalIntakePaused(drain_id=drain_id))
    world.wait_ext(lambda v: v.state == "paused" and v.reconnect_by is None, "the earlier work released")
    assert "reconnect:worker" not in world.timers.armed
    assert not any(s.maintenance.safe_to_restart for s in world.sink.seen[mark:])

    world.send("worker", ExternalInFlight(items=()))
    world.send("worker", ExternalDrained(drain_id=drain_id))
    assert world.sink.wait(lambda s: s.maintenance.safe_to_restart).maintenance.state == "drained"


def test_a_process_that_registers_again_but_never_reports_blocks_until_the_grace_ends(world: World) -> None:
    world.drain_with_work()
    world.supervisor.tell(Unregister(name="worker", reason="connection lost"))
    world.wait_ext(lambda v: v.state == "disconnected", "worker disconnected")
    mark = len(world.sink.events)
    world.register("worker")
    drain_id = world.settle().maintenance.drain_id
    world.send("worker", ExternalIntakePaused(drain_id=drain_id))
    world.send("worker", ExternalDrained(drain_id=drain_id))  # says drained, but never reports its work
    world.wait_message("worker is drained", since=mark)
    status = world.settle()
    assert not status.maintenance.safe_to_restart and world.ext(status).blocking == 1
    assert world.ext(status).state == "paused" and world.ext(status).reconnect_by is not None

    world.timers.fire("reconnect:worker", world.supervisor)
    status = world.sink.wait(lambda s: s.maintenance.safe_to_restart, what="safe after the grace")
    assert world.ext(status).blocking == 0 and world.ext(status).reconnect_by is None


def test_without_a_reconnect_the_work_blocks_until_the_grace_ends_then_is_removed(world: World) -> None:
    world.drain_with_work()
    world.supervisor.tell(Unregister(name="worker", reason="connection lost"))
    status = world.wait_ext(lambda v: v.state == "disconnected", "worker disconnected")
    delay, _message, _target = world.timers.armed["reconnect:worker"]
    assert delay == GRACE and not status.maintenance.safe_to_restart
    assert world.ext(status).reconnect_by == 1_800_000_000.0 + GRACE  # FakeClock's now + the grace

    world.timers.fire("reconnect:worker", world.supervisor)
    status = world.sink.wait(lambda s: s.maintenance.safe_to_restart, what="safe after the grace")
    assert world.ext(status) is None
    (gone,) = status.removed
    assert gone.name == "worker" and [i.id for i in gone.abandoned] == ["worker/job-1"]
    assert gone.reason == "connection lost; did not register again within 10s"


def test_a_process_without_blocking_work_is_removed_at_once(world: World) -> None:
    world.register("idle")
    world.send("idle", ExternalInFlight(items=(item("idle", "b", blocks=False),)))
    world.wait_ext(lambda v: v.in_flight == 1, "idle's report", name="idle")
    world.supervisor.tell(Unregister(name="idle", reason="disconnected"))
    status = world.sink.wait(lambda s: [r.name for r in s.removed] == ["idle"], what="idle removed")
    assert world.ext(status, "idle") is None
    assert "reconnect:idle" not in world.timers.armed
