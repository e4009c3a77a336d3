"""The model of :class:`~tests.actors.drain_properties.test_drain_machine.DrainMachine`: the
supervisor with real actors, builtin and external subsystems, and what each must hold.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import Any

import msgspec
import pykka
import pytest
from hypothesis.stateful import RuleBasedStateMachine

from actors.errors import MaintdError, SubsystemGone
from actors.future import CallbackFuture
from actors.messages import GetStatus
from actors.subsystem import SubsystemActor
from actors.supervisor_actor import SupervisorActor
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, SCHEDULED_JOB, InFlightItem, OnDeadline
from tests.actors.drain_properties.runs import COUNTS, RULES
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers, WorkCore

BUILTINS = ("materials", "scheduler", "agents", "config")
EXTERNALS = ("backup", "exporter")
KINDS = (BUILDING_JOB, SCHEDULED_JOB, MATERIAL_UPDATE, "backup_run")
ASK = 5.0


class Probe:
    """Asked of a builtin subsystem: a snapshot of its core, taken in its own thread."""


class Hold:
    """Blocks a builtin subsystem's thread until released, to queue messages behind it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


class Snapshot(msgspec.Struct, frozen=True):
    name: str
    intake_open: bool
    paused_for: str | None
    items: tuple[str, ...]
    refused: tuple[str, ...]
    pauses: tuple[str, ...]
    resumes: tuple[str, ...]


class ProbeCore(WorkCore):
    """The test subsystem of ``fakes.py``, plus :class:`Probe` and :class:`Hold`."""

    def handle(self, message: Any) -> Any:
        if isinstance(message, Probe):
            return Snapshot(
                self.name,
                self.intake_open,
                self.paused_for,
                tuple(sorted(self.items)),
                tuple(self.refused),
                tuple(self.pauses),
                tuple(self.resumes),
            )
        if isinstance(message, Hold):
            message.started.set()
            message.release.wait(ASK)
            return None
        return super().handle(message)


class RecordingLink:
    """The external process's connection: records every line the daemon sends it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []
        self.actor: Any = None

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.sent.append(dict(message))

    def route_to(self, actor: Any) -> None:
        self.actor = actor

    def tell(self, message: Any) -> None:
        """A line from the process, handed to its subsystem's actor."""
        self.actor.tell(message)

    def lines(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.sent)

    def gate(self) -> tuple[str, str] | None:
        """The last pause_intake/resume_intake the process got: (type, drain_id)."""
        gates = [(m["type"], m["drain_id"]) for m in self.lines() if m["type"] in ("pause_intake", "resume_intake")]
        return gates[-1] if gates else None

    def cancels(self) -> list[str]:
        return [m["item"] for m in self.lines() if m["type"] == "cancel"]


class BuiltinModel:
    def __init__(self) -> None:
        self.items: dict[str, InFlightItem] = {}
        self.failed = False
        self.failures = 0


class ExtModel:
    def __init__(self, link: RecordingLink) -> None:
        self.link = link
        self.items: dict[str, InFlightItem] = {}
        self.acked: str | None = None
        self.said_drained: str | None = None
        #: item id -> the waiting cancel's reply (None: the deadline's cancel)
        self.pending: dict[str, CallbackFuture | None] = {}
        self.gate: tuple[str, str] | None = None
        self.cancel_lines: list[str] = []


class CancelCase:
    """An accepted cancel request and the answer the model expects on its reply."""

    def __init__(self, future: CallbackFuture, item: str, by: str, expect: str, code: str | None = None) -> None:
        self.future, self.item, self.by, self.expect, self.code = future, item, by, expect, code


def unpaused(e: ExtModel) -> bool:
    """The process has not acknowledged a pause (so it may still start work)."""
    return e.gate is None or e.gate[0] != "pause_intake" or e.acked != e.gate[1]


def cancellable_by_process(e: ExtModel) -> list[str]:
    return [i.id for i in e.items.values() if i.cancellable and i.kind != MATERIAL_UPDATE]


def blocking(items: dict[str, InFlightItem]) -> int:
    return sum(1 for i in items.values() if i.blocks_restart)


class DrainWorld(RuleBasedStateMachine):
    """The state of :class:`~tests.actors.drain_properties.test_drain_machine.DrainMachine`: the
    actors it runs, the model of what they hold, and what the model expects of them. The rules
    and the invariant are the machine's (``test_drain_machine.py``)."""

    def __init__(self) -> None:
        super().__init__()
        COUNTS["drain examples"] += 1
        self.clock, self.timers, self.sink = FakeClock(), FakeTimers(), FakeSink()
        self.audit_lock = threading.Lock()
        self.audited: list[tuple[str, str, str | None]] = []
        self.supervisor = SupervisorActor.start(
            clock=self.clock,
            timers=self.timers,
            sink=self.sink,
            restart_delay=0.5,
            builtins=tuple((name, ProbeCore) for name in BUILTINS),
            audit_log=self,
        )
        self.ids = itertools.count(1)
        # the model
        self.enabled = False
        self.drain_id: str | None = None
        self.deadline_armed = False
        self.deadline_passed = False
        self.on_deadline: OnDeadline | None = None
        self.toggles: list[tuple[str, str]] = []
        self.cancel_requests: list[tuple[str, str]] = []  # (by, item) audited as cancel_requested
        self.builtins = {name: BuiltinModel() for name in BUILTINS}
        self.refused: dict[str, list[str]] = {name: [] for name in BUILTINS}  # per generation
        self.exts: dict[str, ExtModel] = {}
        self.removed: list[tuple[str, tuple[str, ...]]] = []
        self.cancels: list[CancelCase] = []
        self.refs: dict[str, Any] = {}
        self.status: Any = None
        self.snaps: dict[str, Snapshot] = {}
        self.settle()

    def teardown(self) -> None:
        pykka.ActorRegistry.stop_all()

    def step(self) -> None:
        COUNTS["drain steps"] += 1
        RULES[sys._getframe(1).f_code.co_name] += 1

    def audit(self, action: str, by: str, at: float, **fields: Any) -> int:
        with self.audit_lock:
            self.audited.append((action, by, fields.get("target")))
            return len(self.audited)

    # -- waiting for quiescence --------------------------------------------------------

    def settle(self) -> None:
        """Ask every actor until two rounds in a row see the same state.

        An ask goes through an actor's inbox, so it returns once everything told to that
        actor before has been handled. Each round asks every subsystem actor, then the
        supervisor; the state is the supervisor's status, the number of events it
        published, every builtin's core and every line sent to a process.
        """
        previous = None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            snaps, refs = {}, {}
            for ref in pykka.ActorRegistry.get_by_class(SubsystemActor):
                try:
                    snap = ref.ask(Probe(), timeout=ASK)
                except (pykka.ActorDeadError, TypeError):  # gone, or an external (no Probe)
                    continue
                snaps[snap.name], refs[snap.name] = snap, ref
            status = self.supervisor.ask(GetStatus(), timeout=ASK)
            with self.sink.cond:
                events = len(self.sink.events)
            lines = tuple(len(e.link.lines()) for e in self.exts.values())
            state = (sorted(snaps.items()), status, events, lines)
            if state == previous:
                self.status, self.snaps, self.refs = status, snaps, refs
                return
            previous = state
        raise AssertionError("the actors did not become quiescent within 10 s")

    # -- the model's expectations ----------------------------------------------------

    def expected_state(self, name: str) -> str:
        if name in self.builtins:
            b = self.builtins[name]
            if b.failed:
                return "failed"
            if not self.enabled:
                return "running"
            return "paused" if blocking(b.items) else "drained"
        e = self.exts[name]
        if not self.enabled:
            return "running"
        if e.acked != self.drain_id:
            return "pausing"
        if e.said_drained == self.drain_id and not blocking(e.items):
            return "drained"
        return "paused"

    def safe_to_restart(self) -> bool:
        """Computed from the model alone: every subsystem paused for this drain, nothing
        blocking in flight, none failed or unknown."""
        if not self.enabled:
            return False
        for _name, b in self.builtins.items():
            if b.failed or blocking(b.items):
                return False
        for e in self.exts.values():
            if e.acked != self.drain_id or e.said_drained != self.drain_id or blocking(e.items):
                return False
        return True

    def expected_maintenance_state(self) -> str:
        if not self.enabled:
            return "normal"
        return "drained" if self.safe_to_restart() else "draining"

    def all_items(self) -> dict[str, InFlightItem]:
        out: dict[str, InFlightItem] = {}
        for b in self.builtins.values():
            out.update(b.items)
        for e in self.exts.values():
            out.update(e.items)
        return out

    def alive_builtins(self) -> list[str]:
        return [n for n, b in self.builtins.items() if not b.failed]

    def new_item(self, subsystem: str, kind: str, cancellable: bool, blocks: bool | None = None) -> InFlightItem:
        local = f"w{next(self.ids)}"
        return InFlightItem(
            id=f"{subsystem}/{local}",
            subsystem=subsystem,
            kind=kind,
            description=f"{kind} {local}",
            started_at=0.0,
            cancellable=cancellable,
            blocks_restart=(kind != SCHEDULED_JOB) if blocks is None else blocks,
        )

    def check_cancel(self, case: CancelCase) -> None:
        f = case.future
        if case.expect == "pending":
            assert not f.done, f"the cancel of {case.item} was answered before the process answered"
            return
        if case.expect == "gone":
            with pytest.raises(SubsystemGone):
                f.get(timeout=ASK)  # set by the stopping actor: bounded wait, no sleep
            return
        assert f.done, f"the cancel of {case.item} (accepted) was never answered"
        if case.expect == "answered":  # cancelled, or refused (e.g. subsystem_gone): not left hanging
            with contextlib.suppress(MaintdError):
                f.get(timeout=0)
        elif case.expect == "cancelled":
            assert f.get(timeout=0) == {"item": case.item, "cancelled": True, "by": case.by}
        elif case.expect == "refused":
            with pytest.raises(MaintdError) as err:
                f.get(timeout=0)
            assert err.value.code == case.code
