"""Fakes for the actors' ports: a clock, timers fired by hand, a sink that records."""

from __future__ import annotations

import threading
from typing import Any

import pykka

from actors.status import Event, Status
from actors.subsystem import SubsystemActor, SubsystemCore
from actors.types import InFlightItem


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


class FakeTimers:
    def __init__(self) -> None:
        self.armed: dict[str, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def arm(self, key: str, delay: float, message: Any, target: Any = None) -> None:
        with self.lock:
            self.armed[key] = (delay, message, target)

    def disarm(self, key: str) -> None:
        with self.lock:
            self.armed.pop(key, None)

    def fire(self, key: str, supervisor: pykka.ActorRef[Any]) -> None:
        with self.lock:
            _delay, message, target = self.armed.pop(key)
        (target or supervisor).tell(message)


class FakeSink:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.status: Status | None = None
        self.events: list[Event] = []
        self.fatal_errors: list[str] = []

    def publish(self, status: Status | None, event: Event | None) -> None:
        with self.cond:
            if status is not None:
                self.status = status
            if event is not None:
                self.events.append(event)
            self.cond.notify_all()

    def fatal(self, error: str) -> None:
        with self.cond:
            self.fatal_errors.append(error)
            self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float = 5.0, what: str = "status") -> Status:
        with self.cond:
            if not self.cond.wait_for(lambda: self.status is not None and predicate(self.status), timeout):
                raise AssertionError(f"timed out waiting for {what}; last status: {self.status}")
            assert self.status is not None
            return self.status

    def wait_event(self, name: str, timeout: float = 5.0) -> Event:
        with self.cond:
            found: list[Event] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if e.event == name]
                return bool(found)

            if not self.cond.wait_for(seen, timeout):
                raise AssertionError(f"no {name} event; saw {[e.event for e in self.events]}")
            return found[0]


# --- a test subsystem: work is added and finished by messages --------------------------


class AddWork:
    def __init__(self, item: InFlightItem) -> None:
        self.item = item


class FinishWork:
    def __init__(self, item_id: str) -> None:
        self.item_id = item_id


class Explode:
    pass


class TryStartWork:
    """Start work only if the intake is open; record whether it was refused."""

    def __init__(self, item: InFlightItem) -> None:
        self.item = item


class WorkCore(SubsystemCore):
    """A subsystem whose work the test drives; it records its gate's history."""

    refused: list[str]
    pauses: list[str]
    resumes: list[str]

    def __init__(self, name: str, emit: Any, items: Any = ()) -> None:
        super().__init__(name, emit, items)
        self.refused, self.pauses, self.resumes = [], [], []

    def on_pause(self, drain_id: str) -> None:
        self.pauses.append(drain_id)

    def on_resume(self, drain_id: str) -> None:
        self.resumes.append(drain_id)

    def handle(self, message: Any) -> Any:
        if isinstance(message, AddWork):
            self.add(message.item)
        elif isinstance(message, TryStartWork):
            if self.intake_open:
                self.add(message.item)
            else:
                self.refused.append(message.item.id)
        elif isinstance(message, FinishWork):
            self.remove(message.item_id)
        elif isinstance(message, Explode):
            raise RuntimeError("boom")
        else:
            return NotImplemented
        return None


def item(
    subsystem: str, local: str, kind: str = "building_job", *, cancellable: bool = True, blocks: bool = True
) -> InFlightItem:
    return InFlightItem(
        id=f"{subsystem}/{local}",
        subsystem=subsystem,
        kind=kind,
        description=f"{kind} {local}",
        started_at=0.0,
        cancellable=cancellable,
        blocks_restart=blocks,
    )


def subsystem_ref(name: str) -> pykka.ActorRef[Any]:
    """The running actor of subsystem ``name``."""
    for ref in pykka.ActorRegistry.get_by_class(SubsystemActor):
        if ref.is_alive() and ref.proxy().core.get().name == name:
            return ref
    raise LookupError(name)


def core_of(name: str) -> Any:
    return subsystem_ref(name).proxy().core.get()
