"""Property tests: a drain loses nothing.

Hypothesis state machines, each next to a model of what must hold:

* :class:`DrainMachine` runs the real actors: a :class:`SupervisorActor` with builtin
  ``WorkCore`` subsystems and external subsystems that register over a recording
  ``SubsystemLink`` (the test plays the process: it answers ``intake_paused``, ``drained``
  and ``cancel_result`` straight to the actor the link was routed to, as ``daemon/server.py`` does). Rules
  enable (with or without a deadline), disable, start and finish work (a paused subsystem
  must refuse), cancel, register (with or without work) and disconnect externals, crash
  and restart builtins (also with a cancel queued behind the crash), and fire the
  deadline. After every step it waits until every actor is quiescent (asks, never sleeps)
  and checks: no new work after a pause; safe_to_restart exactly when every subsystem is
  paused for this drain with nothing blocking and none failed or unknown (from the model,
  against the status and each subsystem's state); disable resumes everybody; the state is
  normal/draining/drained and enabled == (state != normal); history and audit record
  every enable and disable with who; every accepted cancel is answered.
* :class:`JobServerMachine` runs the job server's plain cores (``SchedulerCore`` and
  ``AgentsCore``) on a real ``Store(":memory:")``. Messages between them go through an
  inbox per core that the rules deliver, so the rules choose the interleaving. Rules
  trigger, pause, resume, deliver, finish jobs, cancel items and runs, drain to the end and
  restart the daemon (``Store.recover``). It checks that no job starts while the agents are
  paused, none starts twice, nothing is lost at quiescence (a scheduled job is queued, a
  building job runs on an agent), a drain ends once the building jobs exit, and every job
  ends in a recorded terminal state once all work is done.
* :class:`JobServerCancelRunRaceMachine` and :class:`JobServerCoreFailureMachine` add a
  cancel-run at any moment, and failing cores (pykka drops a failed actor's inbox) and a
  killed daemon. The defects they found are fixed; the ``test_regression_*`` tests below
  are their shrunk examples, written out (``test_jobserver_restarts.py`` runs the failure
  cases again through real actors).

``COUNTS`` and ``RULES`` count examples, steps and rules; a module fixture prints them at the end.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pykka
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.agents import AgentsCore
from actors.definitions import JobDef, PipelineDef, StageDef
from actors.errors import Conflict, MaintdError, NotCancellable, NotFound, SubsystemGone
from actors.future import CallbackFuture
from actors.handout import Assign
from actors.jobs import TERMINAL, JobExited, JobSpec, JobStarted, JobState
from actors.materials import MaterialChanged
from actors.messages import (
    Cancel,
    Cancelled,
    CancelRefused,
    Disable,
    Drained,
    Enable,
    ExternalCancelResult,
    ExternalDrained,
    ExternalInFlight,
    ExternalIntakePaused,
    GetHistory,
    PauseIntake,
    Register,
    ReportInFlight,
    RequestCancel,
    ResumeIntake,
    Unregister,
)
from actors.peers import PeerRef
from actors.scheduler import CancelRun, SchedulerCore, Trigger
from actors.store import Store
from actors.subsystem import SubsystemActor, SubsystemCore
from actors.supervisor import DEADLINE_TIMER
from actors.supervisor_actor import SupervisorActor
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, SCHEDULED_JOB, InFlightItem, OnDeadline
from tests.actors.fakes import Explode, FakeClock, FakeSink, FakeTimers, FinishWork, TryStartWork, WorkCore

#: How many examples and steps each machine ran (printed by the last test).
COUNTS: collections.Counter[str] = collections.Counter()
#: How often each rule ran.
RULES: collections.Counter[str] = collections.Counter()

SETTINGS = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: For the machines that find a defect: search longer (they stop at the first failure),
#: and shrink only that one.
DEFECT_SETTINGS = settings(
    SETTINGS,
    max_examples=1000,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

# =======================================================================================
# Machine 1: the supervisor with real actors
# =======================================================================================

BUILTINS = ("materials", "scheduler", "agents", "config")
EXTERNALS = ("backup", "exporter")
USERS = ("alice", "bob", "carol")
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


class DrainMachine(RuleBasedStateMachine):
    """The supervisor, four builtin WorkCore subsystems and up to two external processes.

    The model holds what each subsystem has in flight, whether it failed, what each
    process was told (pause/resume, cancels) and answered (intake_paused, drained, cancel
    results), and every enable and disable. The invariant settles the actors and compares
    the status, every builtin's core, every process's lines, the history and the audit log
    with it.
    """

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
            audit_log=self.audit_log,
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

    def audit_log(self, action: str, by: str, at: float, **fields: Any) -> None:
        with self.audit_lock:
            self.audited.append((action, by, fields.get("target")))

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
            status = self.supervisor.ask("status", timeout=ASK)
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

    # -- invariants (checked after every step, once the actors are quiescent) -----------

    @invariant()
    def quiescent_and_consistent(self) -> None:
        COUNTS["drain checks"] += 1
        self.settle()
        status, m = self.status, self.status.maintenance
        # (4) the state is one of three, and enabled means "not normal"
        assert m.state in ("normal", "draining", "drained")
        assert m.enabled == (m.state != "normal")
        assert m.enabled == self.enabled
        assert m.drain_id == self.drain_id
        COUNTS[f"drain seen {m.state}"] += 1
        # (2) safe_to_restart from the model, against the status and the per-subsystem states
        safe = self.safe_to_restart()
        assert m.safe_to_restart == safe, f"safe_to_restart {m.safe_to_restart}, the model says {safe}"
        assert m.state == self.expected_maintenance_state()
        shown = {s.name: s for s in status.subsystems}
        assert list(shown) == list(self.builtins) + list(self.exts)
        for name, info in shown.items():
            assert info.state == self.expected_state(name), f"{name}: {info.state}, expected {self.expected_state(name)}"
            items = self.builtins[name].items if name in self.builtins else self.exts[name].items
            assert (info.in_flight, info.blocking) == (len(items), blocking(items)), name
            assert info.external == (name in self.exts)
        if m.safe_to_restart:
            assert all(s.state == "drained" for s in status.subsystems)
            assert not any(s.state in ("failed", "unknown", "pausing") for s in status.subsystems)
        running = status.running_systems
        shown_items = [i.id for g in (running.material_update_in_progress, running.building_jobs,
                                      running.scheduled_jobs, running.other) for i in g]  # fmt: skip
        assert sorted(shown_items) == sorted(self.all_items())
        assert m.overdue == (self.deadline_passed and m.state == "draining")
        # timers: the deadline while it may still fire, a restart per failed builtin
        assert (DEADLINE_TIMER in self.timers.armed) == self.deadline_armed
        for name, b in self.builtins.items():
            assert (f"restart:{name}" in self.timers.armed) == b.failed, name
            assert shown[name].failures == b.failures
        # (1) and (3): every running builtin's gate is closed for this drain, or open
        assert set(self.snaps) == set(self.alive_builtins())
        for name, snap in self.snaps.items():
            assert snap.intake_open == (not self.enabled), f"{name} intake_open={snap.intake_open}"
            assert snap.paused_for == self.drain_id
            assert snap.items == tuple(sorted(self.builtins[name].items)), f"{name} started or lost work"
            assert list(snap.refused) == self.refused[name]
        for name, e in self.exts.items():
            assert e.link.gate() == e.gate, f"{name} got {e.link.gate()}, expected {e.gate}"
            assert e.link.cancels() == e.cancel_lines
        # removed subsystems and the work they abandoned
        assert [(r.name, tuple(sorted(i.id for i in r.abandoned))) for r in status.removed] == self.removed[-20:]
        # (5) history and audit record every enable and disable with who
        history = self.supervisor.ask(GetHistory(), timeout=ASK)
        assert [(h.action, h.by) for h in history if h.action in ("enable", "disable")] == self.toggles
        with self.audit_lock:
            audited = list(self.audited)
        assert [(a, by) for a, by, _ in audited if a in ("enable", "disable")] == self.toggles
        assert [(by, t) for a, by, t in audited if a == "cancel_requested"] == self.cancel_requests
        # every accepted cancel gets its answer
        for case in self.cancels:
            self.check_cancel(case)

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

    # -- maintenance -------------------------------------------------------------------

    @precondition(lambda self: not self.enabled)
    @rule(data=st.data())
    def enable(self, data: st.DataObject) -> None:
        self.step()
        by = data.draw(st.sampled_from(USERS), label="by")
        deadline = data.draw(st.sampled_from([None, 0.0, 60.0]), label="deadline_seconds")
        on = data.draw(st.sampled_from(list(OnDeadline)), label="on_deadline")
        msg = Enable(by=by, reason="window", deadline_seconds=deadline, on_deadline=on)
        info = self.supervisor.ask(msg, timeout=ASK)
        assert (info.enabled, info.updated_by, info.drain_id) == (True, by, info.drain_id)
        self.start_drain(info.drain_id, by, deadline, on)
        with pytest.raises(Conflict):  # enable when on: refused, changes nothing, audits nothing
            self.supervisor.ask(Enable(by="mallory", reason="again"), timeout=ASK)

    def start_drain(self, drain_id: str, by: str, deadline: float | None, on: OnDeadline) -> None:
        assert drain_id and drain_id != self.drain_id
        self.enabled, self.drain_id = True, drain_id
        self.deadline_armed, self.deadline_passed, self.on_deadline = deadline is not None, False, on
        self.toggles.append(("enable", by))
        for e in self.exts.values():
            e.acked = e.said_drained = None
            e.gate = ("pause_intake", drain_id)

    @precondition(lambda self: not self.enabled and self.alive_builtins())
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def enable_then_start_work_at_once(self, data: st.DataObject, by: str) -> None:
        """The shell's next request after enable (no waiting in between) is refused."""
        self.step()
        name = data.draw(st.sampled_from(self.alive_builtins()), label="builtin")
        info = self.supervisor.ask(Enable(by=by), timeout=ASK)
        late = self.new_item(name, BUILDING_JOB, True)
        self.refs[name].tell(TryStartWork(late))
        self.start_drain(info.drain_id, by, None, OnDeadline.WAIT)
        self.refused[name].append(late.id)

    @precondition(lambda self: self.enabled)
    @rule(by=st.sampled_from(USERS))
    def disable(self, by: str) -> None:
        self.step()
        info = self.supervisor.ask(Disable(by=by, reason="done"), timeout=ASK)
        assert (info.enabled, info.state, info.updated_by) == (False, "normal", by)
        with pytest.raises(Conflict):  # disable when off: refused, changes nothing, audits nothing
            self.supervisor.ask(Disable(by="mallory"), timeout=ASK)
        old, self.enabled, self.drain_id = self.drain_id, False, None
        self.deadline_armed = self.deadline_passed = False
        self.on_deadline = None
        self.toggles.append(("disable", by))
        for e in self.exts.values():
            e.acked = e.said_drained = None
            e.gate = ("resume_intake", old or "")

    @precondition(lambda self: self.deadline_armed)
    @rule()
    def deadline_fires(self) -> None:
        self.step()
        draining = self.expected_maintenance_state() == "draining"
        self.timers.fire(DEADLINE_TIMER, self.supervisor)
        self.deadline_armed, self.deadline_passed = False, True
        if not draining or self.on_deadline is not OnDeadline.CANCEL:
            return
        for b in self.builtins.values():
            if not b.failed:
                for item in list(b.items.values()):
                    if item.cancellable and item.kind != MATERIAL_UPDATE:
                        del b.items[item.id]
        for e in self.exts.values():
            for item in e.items.values():
                if item.cancellable and item.kind != MATERIAL_UPDATE and item.id not in e.pending:
                    e.pending[item.id] = None
                    e.cancel_lines.append(item.local_id)

    # -- builtin work --------------------------------------------------------------------

    @precondition(lambda self: self.alive_builtins())
    @rule(data=st.data(), kind=st.sampled_from(KINDS), cancellable=st.booleans())
    def try_start_work(self, data: st.DataObject, kind: str, cancellable: bool) -> None:
        self.step()
        name = data.draw(st.sampled_from(self.alive_builtins()), label="builtin")
        item = self.new_item(name, kind, cancellable)
        self.refs[name].tell(TryStartWork(item))
        if self.enabled:  # (1) a paused subsystem starts nothing
            self.refused[name].append(item.id)
        else:
            self.builtins[name].items[item.id] = item

    @precondition(lambda self: any(self.builtins[n].items for n in self.alive_builtins()))
    @rule(data=st.data())
    def finish_work(self, data: st.DataObject) -> None:
        self.step()
        name = data.draw(st.sampled_from([n for n in self.alive_builtins() if self.builtins[n].items]), label="builtin")
        item_id = data.draw(st.sampled_from(sorted(self.builtins[name].items)), label="item")
        self.refs[name].tell(FinishWork(item_id))
        del self.builtins[name].items[item_id]

    @precondition(lambda self: not any(b.failed for b in self.builtins.values()))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.step()
        name = data.draw(st.sampled_from(self.alive_builtins()), label="builtin")
        self.refs[name].tell(Explode())
        self.sink.wait(lambda s: any(x.name == name and x.state == "failed" for x in s.subsystems), what=f"{name} failed")
        b = self.builtins[name]
        b.failed, b.failures = True, b.failures + 1

    @precondition(lambda self: any(b.failed for b in self.builtins.values()))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self.step()
        name = data.draw(st.sampled_from([n for n, b in self.builtins.items() if b.failed]), label="builtin")
        self.timers.fire(f"restart:{name}", self.supervisor)
        self.builtins[name].failed = False
        self.refused[name] = []  # a fresh core

    # -- cancel --------------------------------------------------------------------------

    @precondition(lambda self: self.all_items())
    @rule(data=st.data(), by=st.sampled_from(USERS), bare=st.booleans())
    def cancel(self, data: st.DataObject, by: str, bare: bool) -> None:
        self.step()
        items = self.all_items()
        item_id = data.draw(st.sampled_from([*sorted(items), "nobody/nothing"]), label="item")
        self.request_cancel(item_id, by, bare)

    @precondition(lambda self: any(cancellable_by_process(e) for e in self.exts.values()))
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def cancel_external_work(self, data: st.DataObject, by: str) -> None:
        """A cancel that goes to a process, which answers later (ext_answers_cancel)."""
        self.step()
        choices = sorted(i for e in self.exts.values() for i in cancellable_by_process(e))
        self.request_cancel(data.draw(st.sampled_from(choices), label="item"), by, False)

    def request_cancel(self, item_id: str, by: str, bare: bool) -> None:
        items = self.all_items()
        item = items.get(item_id)
        ref = item.local_id if item is not None and bare else item_id
        reply = CallbackFuture()
        msg = RequestCancel(item=ref, by=by, reply=reply, reason="stuck")
        if item is None:
            with pytest.raises(NotFound):
                self.supervisor.ask(msg, timeout=ASK)
            return
        if item.kind == MATERIAL_UPDATE or not item.cancellable:
            with pytest.raises(NotCancellable):
                self.supervisor.ask(msg, timeout=ASK)
            return
        owner = item.subsystem
        if owner in self.builtins and self.builtins[owner].failed:
            with pytest.raises(MaintdError) as err:
                self.supervisor.ask(msg, timeout=ASK)
            assert err.value.code == "unavailable"
            return
        assert self.supervisor.ask(msg, timeout=ASK) == item_id
        self.cancel_requests.append((by, item_id))
        if owner in self.builtins:
            del self.builtins[owner].items[item_id]
            self.cancels.append(CancelCase(reply, item_id, by, "cancelled"))
            return
        e = self.exts[owner]
        if e.pending.get(item_id) is not None:  # its asker still waits; the deadline's (None) gives way
            self.cancels.append(CancelCase(reply, item_id, by, "refused", "conflict"))
            return
        COUNTS["drain ext cancels"] += 1
        e.pending[item_id] = reply
        e.cancel_lines.append(item.local_id)
        self.cancels.append(CancelCase(reply, item_id, by, "pending"))

    @precondition(
        lambda self: any(
            i.cancellable and i.kind != MATERIAL_UPDATE for n in self.alive_builtins() for i in self.builtins[n].items.values()
        )
    )
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def crash_with_a_cancel_queued(self, data: st.DataObject, by: str) -> None:
        """A builtin fails on a message queued before a cancel the supervisor sent it.

        The Hold only makes that interleaving certain (Explode, then Cancel, in the inbox).
        The cancel was accepted, so the caller must get an answer, whatever it is."""
        self.step()
        choices = sorted(
            i.id for n in self.alive_builtins() for i in self.builtins[n].items.values()
            if i.cancellable and i.kind != MATERIAL_UPDATE
        )  # fmt: skip
        item_id = data.draw(st.sampled_from(choices), label="item")
        name = item_id.partition("/")[0]
        hold = Hold()
        self.refs[name].tell(hold)
        assert hold.started.wait(ASK)
        try:
            self.refs[name].tell(Explode())
            reply = CallbackFuture()
            assert self.supervisor.ask(RequestCancel(item=item_id, by=by, reply=reply), timeout=ASK) == item_id
        finally:
            hold.release.set()
        self.sink.wait(lambda s: any(x.name == name and x.state == "failed" for x in s.subsystems), what=f"{name} failed")
        b = self.builtins[name]
        b.failed, b.failures = True, b.failures + 1
        self.cancel_requests.append((by, item_id))
        self.cancels.append(CancelCase(reply, item_id, by, "answered"))

    # -- external subsystems -------------------------------------------------------------

    @precondition(lambda self: len(self.exts) < len(EXTERNALS))
    @rule(
        data=st.data(),
        by=st.sampled_from(USERS),
        work=st.lists(st.tuples(st.sampled_from(KINDS), st.booleans(), st.booleans()), max_size=3),
    )
    def register(self, data: st.DataObject, by: str, work: list[tuple[str, bool, bool]]) -> None:
        self.step()
        name = data.draw(st.sampled_from([n for n in EXTERNALS if n not in self.exts]), label="name")
        link = RecordingLink()
        answer = self.supervisor.ask(Register(name=name, link=link, by=by, pid=4242), timeout=ASK)
        assert answer["drain_id"] == self.drain_id
        with pytest.raises(Conflict):  # the name is taken now
            self.supervisor.ask(Register(name=name, link=RecordingLink(), by="mallory"), timeout=ASK)
        e = self.exts[name] = ExtModel(link)
        if self.enabled:
            e.gate = ("pause_intake", self.drain_id or "")
        if work:  # a process that joins with work already running (even during a drain)
            for kind, cancellable, blocks in work:
                item = self.new_item(name, kind, cancellable, blocks)
                e.items[item.id] = item
            self.exts[name].link.tell(ExternalInFlight(items=tuple(e.items.values())))

    def ext_names(self, pred: Any = lambda e: True) -> list[str]:
        return [n for n, e in self.exts.items() if pred(e)]

    @precondition(lambda self: self.ext_names(unpaused))
    @rule(data=st.data(), kind=st.sampled_from(KINDS), cancellable=st.booleans(), blocks=st.booleans())
    def ext_starts_work(self, data: st.DataObject, kind: str, cancellable: bool, blocks: bool) -> None:
        """A process starts work only before it has acknowledged a pause."""
        self.step()
        name = data.draw(st.sampled_from(self.ext_names(unpaused)), label="external")
        e = self.exts[name]
        item = self.new_item(name, kind, cancellable, blocks)
        e.items[item.id] = item
        self.exts[name].link.tell(ExternalInFlight(items=tuple(e.items.values())))

    @precondition(lambda self: self.ext_names(lambda e: e.items))
    @rule(data=st.data())
    def ext_finishes_work(self, data: st.DataObject) -> None:
        self.step()
        name = data.draw(st.sampled_from(self.ext_names(lambda e: e.items)), label="external")
        e = self.exts[name]
        item_id = data.draw(st.sampled_from(sorted(e.items)), label="item")
        del e.items[item_id]
        self.exts[name].link.tell(ExternalInFlight(items=tuple(e.items.values())))

    @precondition(lambda self: self.exts)
    @rule(data=st.data(), stale=st.booleans())
    def ext_says_intake_paused(self, data: st.DataObject, stale: bool) -> None:
        self.step()
        name = data.draw(st.sampled_from(sorted(self.exts)), label="external")
        e = self.exts[name]
        paused = e.gate is not None and e.gate[0] == "pause_intake"
        drain_id = e.gate[1] if paused and not stale else "drain-stale"
        self.exts[name].link.tell(ExternalIntakePaused(drain_id=drain_id))
        if drain_id == self.drain_id:
            e.acked = drain_id

    @precondition(lambda self: self.exts)
    @rule(data=st.data(), stale=st.booleans())
    def ext_says_drained(self, data: st.DataObject, stale: bool) -> None:
        self.step()
        name = data.draw(st.sampled_from(sorted(self.exts)), label="external")
        e = self.exts[name]
        paused = e.gate is not None and e.gate[0] == "pause_intake"
        drain_id = e.gate[1] if paused and not stale else "drain-stale"
        self.exts[name].link.tell(ExternalDrained(drain_id=drain_id))
        if drain_id == self.drain_id:
            e.said_drained = drain_id

    @precondition(lambda self: self.ext_names(lambda e: e.pending))
    @rule(data=st.data())
    def ext_answers_cancel(self, data: st.DataObject) -> None:
        self.step()
        ok = data.draw(st.booleans(), label="ok")
        name = data.draw(st.sampled_from(self.ext_names(lambda e: e.pending)), label="external")
        e = self.exts[name]
        item_id = data.draw(st.sampled_from(sorted(e.pending)), label="item")
        reply = e.pending.pop(item_id)
        local = item_id.partition("/")[2]
        self.exts[name].link.tell(ExternalCancelResult(item=local, ok=ok, reason="no"))
        if ok and item_id in e.items:  # the process stopped it: it reports its work without it
            del e.items[item_id]
            self.exts[name].link.tell(ExternalInFlight(items=tuple(e.items.values())))
        for case in self.cancels:
            if case.future is reply and reply is not None:
                case.expect, case.code = ("cancelled", None) if ok else ("refused", "not_cancellable")

    @precondition(lambda self: self.exts)
    @rule(data=st.data())
    def ext_disconnects(self, data: st.DataObject) -> None:
        self.step()
        name = data.draw(st.sampled_from(sorted(self.exts)), label="external")
        self.supervisor.tell(Unregister(name=name, reason="disconnected"))
        e = self.exts.pop(name)
        self.removed.append((name, tuple(sorted(e.items))))
        for case in self.cancels:
            if case.future in e.pending.values():
                case.expect = "gone"


DrainMachine.TestCase.settings = SETTINGS
TestDrainMachine = DrainMachine.TestCase


# =======================================================================================
# Machine 2: the job server's cores on a real store
# =======================================================================================

APP = PipelineDef(
    name="app",
    materials=["app"],
    stages=[
        StageDef(name="build", jobs=[JobDef(name="compile", command=["make"]), JobDef(name="package", command=["tar"])]),
        StageDef(name="test", jobs=[JobDef(name="unit", command=["pytest"])]),
    ],
)
DOCS = PipelineDef(name="docs", stages=[StageDef(name="site", jobs=[JobDef(name="render", command=["make", "site"])])])
CORES = ("scheduler", "agents")


class Ask:
    """A message asked of a core: the answer (or the error) lands here."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.open_when_handled: bool | None = None
        self.runs_created = 0


class Bus:
    """The Peers port: every ``tell`` goes into the named core's inbox, in order."""

    def __init__(self) -> None:
        self.seq = itertools.count()
        self.inbox: dict[str, collections.deque[tuple[int, Any]]] = {name: collections.deque() for name in CORES}
        self.refs: dict[str, PeerRef] = {}
        self.elsewhere: list[tuple[str, Any]] = []

    def tell(self, name: str, message: Any) -> None:
        if name not in self.inbox:  # a subsystem this machine does not model (config, materials)
            self.elsewhere.append((name, message))
            return
        self.inbox[name].append((next(self.seq), message))

    def ref(self, name: str) -> PeerRef:
        return self.refs.setdefault(name, PeerRef(self, name))  # type: ignore[arg-type]

    def pending(self) -> int:
        return sum(len(q) for q in self.inbox.values())


class Processes:
    """The ProcessPort: records running jobs and checks every start against the rules."""

    def __init__(self, machine: JobServerMachine) -> None:
        self.machine = machine
        self.running: dict[int, Any] = {}  # job id -> reply_to
        self.stopping: set[int] = set()
        self.started: set[int] = set()
        self.pid_of: dict[int, int] = {}
        self.exits: dict[int, JobExited] = {}  # what was told when each job ended (as the runner keeps it)
        self.pids = itertools.count(1000)

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        m = self.machine
        if m.agents_paused:  # from the messages the agents got, not from their own word
            m.violations.append(f"job {spec.job_id} was started while the agents were paused")
        if spec.job_id in self.started:
            m.violations.append(f"job {spec.job_id} was started twice")
        if spec.job_id in m.cancelled_jobs:
            m.violations.append(f"job {spec.job_id} was started after its cancel was accepted")
        self.started.add(spec.job_id)
        COUNTS["jobserver jobs started"] += 1
        self.running[spec.job_id] = reply_to
        self.pid_of[spec.job_id] = next(self.pids)
        reply_to.tell(JobStarted(job_id=spec.job_id, pid=self.pid_of[spec.job_id]))

    def stop_job(self, job_id: int, grace: float) -> None:
        if job_id in self.running:
            self.stopping.add(job_id)

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        """As ProcessRunner.report_jobs: started again for a running job, its exit again for an ended one."""
        COUNTS["jobserver jobs reported again"] += len(job_ids)
        for job_id in job_ids:
            if job_id in self.exits:
                reply_to.tell(self.exits[job_id])
            elif job_id in self.running:
                reply_to.tell(JobStarted(job_id=job_id, pid=self.pid_of[job_id]))
            else:
                reply_to.tell(JobExited(job_id=job_id, returncode=None, error="lost"))

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        raise AssertionError("no materials here")

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        raise AssertionError("no materials here")


def job_of(item_id: str) -> int:
    return int(item_id.partition("/")[2].removeprefix("job-"))


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


JobServerMachine.TestCase.settings = SETTINGS
TestJobServerMachine = JobServerMachine.TestCase


class JobServerCancelRunRaceMachine(JobServerMachine):
    """:class:`JobServerMachine` where a run may be cancelled at any time, also while
    one of its jobs is on its way to an agent."""

    @precondition(lambda self: self.running_runs())
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def cancel_run(self, data: st.DataObject, by: str) -> None:
        self.cancel_a_run(data, by)

    # fewer rules, so that the races between a cancel and the messages on their way come up
    cancel_item = daemon_restarts = drain_to_the_end = all_work_finishes = None  # type: ignore[assignment]


JobServerCancelRunRaceMachine.TestCase.settings = settings(DEFECT_SETTINGS, stateful_step_count=15)
TestJobServerCancelRunRaceMachine = JobServerCancelRunRaceMachine.TestCase


class JobServerCoreFailureMachine(JobServerMachine):
    """:class:`JobServerMachine` plus failures: a core fails and the supervisor starts a
    fresh one (with nothing queued for it, or with messages in its inbox, which pykka
    drops), and the daemon is killed."""

    @precondition(lambda self: not self.bus.pending())
    @rule(name=st.sampled_from(CORES))
    def core_restarts_when_idle(self, name: str) -> None:
        """A core fails with nothing queued for it and the supervisor starts a fresh one."""
        self.step()
        self.fail_core(name)

    @rule(name=st.sampled_from(CORES))
    def core_restarts(self, name: str) -> None:
        """A core fails and the supervisor starts a fresh one; what was queued for it is lost
        (pykka drops the inbox of a failed actor)."""
        self.step()
        self.fail_core(name)

    @rule()
    def daemon_killed(self) -> None:
        """maintd is killed (SIGKILL, OOM): whatever waited in an inbox is lost; then it starts again."""
        self.step()
        COUNTS["jobserver messages lost in a killed daemon"] += self.bus.pending()
        self.restart_daemon()


JobServerCoreFailureMachine.TestCase.settings = DEFECT_SETTINGS
TestJobServerCoreFailureMachine = JobServerCoreFailureMachine.TestCase


# =======================================================================================
# Regression tests: the defects the machines found, each as its shrunk example
# =======================================================================================


def run_to_the_end(m: JobServerMachine) -> dict[int, str]:
    """Maintenance off, messages flow, every running job exits 0; the state of every job."""
    if m.drain_id is not None:
        m.disable_all()
    for _ in range(100):
        m.pump()
        if not m.procs.running:
            break
        for job_id in sorted(m.procs.running):
            m.exit(job_id, 0)
    return {j.id: j.state for r in m.store.recent_runs(limit=100) for j in r.jobs}


def agents_inbox(m: JobServerMachine) -> list[str]:
    return [type(msg).__name__ for _seq, msg in m.bus.inbox["agents"]]


@pytest.mark.parametrize("given_back_because", ["the agent is busy", "the agents are paused"])
def test_regression_a_cancelled_run_runs_on_when_its_job_was_on_its_way_to_an_agent(given_back_because: str) -> None:
    """JobServerCancelRunRaceMachine, shrunk (the busy case)::

        state = JobServerCancelRunRaceMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.trigger(by='alice', pipeline='app')
        state.cancel_run(by='alice', data=data(...))   # Draw 1 (run): ('app', 2, 2)
        state.all_work_finishes()
        AssertionError: job 3 was cancelled (accepted) but ended passed

    CancelRun takes a job that is no longer queued for a building one and only tells the
    agents CancelJobs. When the Assign is still on its way, the agents give the job back
    (then Requeue, now GiveBack: that agent is busy, or the agents are paused), CancelJobs finds nothing, and
    the requeued job runs later: the run the user cancelled (and was told "cancelled_jobs:
    2") runs to the end. At start-up each agent asks for work twice (AgentsCore.start and
    the answer to the scheduler's AnnounceIdle), which is how a busy agent gets an Assign.
    """
    m = JobServerMachine()
    if given_back_because == "the agent is busy":
        m.ask("scheduler", Trigger(pipeline="app", by="alice"))  # run 1 goes to agent-1 and agent-2
        m.pump()  # both build; then both asked for work again (AnnounceIdle)
        m.ask("scheduler", Trigger(pipeline="app", by="alice"))  # run 2: to the same, busy agents
        run = 2
    else:
        m.bus.tell("scheduler", MaterialChanged(material="app", revision="r1"))
        m.enable()
        while m.bus.inbox["scheduler"]:  # agents ask for work, run 1 goes to them, then the pause
            m.deliver("scheduler")
        run = 1
    assert agents_inbox(m)[-2:] == ["Assign", "Assign"]  # run's jobs on their way
    ask = m.ask("scheduler", CancelRun(pipeline="app", counter=run, by="alice"))
    assert ask.error is None and ask.result["cancelled_jobs"] == 2
    states = run_to_the_end(m)
    cancelled = {j.id: states[j.id] for j in m.store.jobs_of_run(run)}
    assert set(cancelled.values()) == {"cancelled"}, f"the jobs of the cancelled run ended {cancelled}"
    assert next(r.state for r in m.store.recent_runs() if r.id == run) == "cancelled"


def test_regression_agents_failing_with_an_assign_queued_lose_the_job() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.core_restarts(name='agents')
        AssertionError: jobs that never ended: [(1, 'app', 'build', 'compile', 'scheduled'),
                                                (2, 'app', 'build', 'package', 'scheduled')]

    The scheduler drops a job from its queue (and from its in-flight items) when it sends
    the Assign. If the agents' actor fails with that Assign in its inbox, pykka drops it:
    the job stays ``scheduled`` in the store, in nobody's queue and in no status, and never
    runs until the daemon restarts.

    Fixed: the scheduler records the hand-out in the store before the Assign goes; the
    restarted agents find a job handed to them that they do not hold and give it back
    (GiveBack), dropping any late Assign until the scheduler answers TakenBack.
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    assert agents_inbox(m) == ["AnnounceIdle", "Assign", "Assign"]
    m.fail_core("agents")
    states = run_to_the_end(m)
    assert all(state in TERMINAL for state in states.values()), f"jobs that never ended: {states}"


def test_regression_agents_failing_with_a_job_exit_queued_never_drain() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.enable()
        state.job_exits(data=data(...))          # job 1, returncode 0
        state.core_restarts(name='agents')
        state.drain_to_the_end(data=data(...))   # job 2 exits
        AssertionError: agents still hold agents/job-1 (building) after every job exited

    The process runner tells the agents JobExited; if their actor fails with it queued,
    pykka drops it. The fresh actor restores job 1 as building, but its process is gone and
    will never exit again: job 1 stays ``building``, agent-1 stays busy, and the drain
    never completes (safe_to_restart never comes).

    Fixed: the restarted agents learn their building jobs from the store and ask the process
    port to tell again how each stands (``report_jobs``: its exit again for an ended one).
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    m.pump()
    m.enable()
    m.pump()
    m.exit(1, 0)
    assert agents_inbox(m) == ["JobExited"]
    m.fail_core("agents")
    m.exit(2, 0)
    m.pump()
    agents = m.cores["agents"]
    assert agents.items == {}, f"agents still hold {sorted(agents.items)} (building) after every job exited"
    assert Drained(subsystem="agents", drain_id=m.drain_id or "") in m.emitted


def test_regression_a_scheduler_restarted_while_an_assign_is_on_its_way_runs_the_job_twice() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.core_restarts(name='scheduler')
        AssertionError: ['job 1 was started twice', 'job 2 was started twice']

    The store says ``scheduled`` until the agents handle the Assign, so a scheduler that
    fails (its own inbox may even be empty) and is restarted while the Assigns are on their
    way restores those jobs and queues them again: each runs twice (also seen: the same job
    queued twice, and a cancel of the requeued item marking a running job ``cancelled``).

    Fixed: the hand-out is in the store (scheduled, with its agent) before the Assign goes;
    a restarted scheduler keeps such a job handed out, not queued, until the agents finish
    it or give it back.
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    assert agents_inbox(m) == ["AnnounceIdle", "Assign", "Assign"] and not m.bus.inbox["scheduler"]
    m.fail_core("scheduler")
    run_to_the_end(m)
    assert m.violations == []


def test_regression_agents_restarted_after_a_cancel_record_the_job_failed_not_cancelled() -> None:
    """JobServerCoreFailureMachine (core_restarts_when_idle), shrunk::

        state = JobServerMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.cancel_item(by='alice', data=data(...))   # Draw 1 (item): 'agents/job-1'
        state.deliver_all()
        state.core_restarts_when_idle(name='agents')
        state.all_work_finishes()
        AssertionError: job 1 was cancelled (accepted) but ended failed

    Nothing is lost in transit here: the agents accepted alice's cancel and sent SIGTERM,
    but who cancelled lives only in AgentsCore.cancel_by, which a restarted core does not
    get back. The job exits -15 and is recorded ``failed`` with cancelled_by None, though
    the supervisor's history and the audit log say alice cancelled it.

    Fixed: a cancel asked for is recorded in the store (``request_cancel``); the restarted
    agents read it back (and stop the job again, in case the first stop was lost).
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    m.pump()
    token = object()
    m.bus.tell("agents", Cancel(item_id="agents/job-1", by="alice", reply=token))
    m.pump()
    assert any(isinstance(x, Cancelled) and x.reply is token for x in m.emitted)
    m.fail_core("agents")  # with nothing queued for it
    run_to_the_end(m)
    assert m.store.job(1).state == "cancelled" and m.store.job(1).cancelled_by == "alice"  # type: ignore[union-attr]


@pytest.fixture(scope="module", autouse=True)
def report_how_many_examples_and_steps_ran(request: pytest.FixtureRequest) -> Iterator[None]:
    """Once the module's tests have run, whichever ran and in whatever order: what the machines ran."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\ndrain properties ran:", ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items())))
        print("rules:", ", ".join(f"{k}: {v}" for k, v in sorted(RULES.items())))
