"""A :class:`~actors.supervisor.SupervisorCore` with fake ports and refs that record what they are
told, driven directly (no threads): what ``test_supervisor_core.py`` and ``test_roster.py`` use."""

from __future__ import annotations

from typing import Any

from actors.messages import Drained, InFlightReport, IntakePaused
from actors.store import StoreError
from actors.supervisor import SupervisorCore
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers


class Ref:
    """An actor ref that records what it is told."""

    def __init__(self) -> None:
        self.told: list[Any] = []
        self.stopped = False

    def tell(self, message: Any) -> None:
        self.told.append(message)

    def stop(self, block: bool = True) -> None:
        self.stopped = True


class World:
    def __init__(self, names: tuple[str, ...] = ("scheduler", "agents"), *, grace: float = 0.0) -> None:
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), FakeSink()
        self.audits: list[tuple[str, str]] = []
        self.audit_fails = False
        self.refs: dict[str, list[Ref]] = {}
        self.core = SupervisorCore(clock=self.clock, timers=self.timers, sink=self.sink, audit_log=self, reconnect_grace=grace)
        for name in names:
            self.add(name)

    @classmethod
    def reported(cls) -> World:
        """The scheduler and agents, each having reported nothing in flight: a core ready to drain."""
        w = cls()
        for name in ("scheduler", "agents"):
            w.report(name)
        return w

    def audit(self, action: str, by: str, at: float, **fields: Any) -> None:
        if self.audit_fails:
            raise StoreError("disk I/O error")
        self.audits.append((action, by))

    def add(self, name: str, *, external: bool = False) -> None:
        def spawn(generation: int, items: Any) -> Ref:
            ref = Ref()
            self.refs.setdefault(name, []).append(ref)
            return ref

        self.core.add_subsystem(name, spawn, external=external)

    def ref(self, name: str) -> Ref:
        return self.refs[name][-1]

    def state(self) -> str:
        return self.core.machine.state.value

    def states(self) -> dict[str, str]:
        return {s.name: s.state for s in self.core.status().subsystems}

    def report(self, name: str, *items: Any, from_process: bool = False) -> None:
        self.core.on_report(InFlightReport(subsystem=name, items=items, from_process=from_process))

    def pause_and_drain(self, name: str) -> None:
        drain_id = self.core.drain_id or ""
        self.core.on_intake_paused(IntakePaused(subsystem=name, drain_id=drain_id))
        self.core.on_drained(Drained(subsystem=name, drain_id=drain_id))

    def history(self) -> list[tuple[str, str]]:
        return [(entry.action, entry.by) for entry in self.core.history]

    def events(self) -> list[str]:
        return [event.event for event in self.sink.events]
