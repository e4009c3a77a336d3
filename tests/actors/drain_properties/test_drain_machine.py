"""Machine 1: the supervisor with real actors (enable, disable, work, cancels, registering,
disconnecting, crashing, deadlines); after every step the actors settle and the status,
every core and every process's lines must match the model.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from actors.errors import Conflict, MaintdError, NotCancellable, NotFound
from actors.future import CallbackFuture
from actors.messages import (
    Disable,
    Enable,
    ExternalCancelResult,
    ExternalDrained,
    ExternalInFlight,
    ExternalIntakePaused,
    GetHistory,
    Register,
    RequestCancel,
    Unregister,
)
from actors.supervisor import DEADLINE_TIMER
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, OnDeadline
from tests.actors.drain_properties.drain_model import (
    ASK,
    EXTERNALS,
    KINDS,
    CancelCase,
    DrainWorld,
    ExtModel,
    Hold,
    RecordingLink,
    blocking,
    cancellable_by_process,
    unpaused,
)
from tests.actors.drain_properties.runs import COUNTS, SETTINGS, USERS
from tests.actors.fakes import Explode, FinishWork, TryStartWork


class DrainMachine(DrainWorld):
    """The supervisor, four builtin WorkCore subsystems and up to two external processes.

    The model holds what each subsystem has in flight, whether it failed, what each
    process was told (pause/resume, cancels) and answered (intake_paused, drained, cancel
    results), and every enable and disable. The invariant settles the actors and compares
    the status, every builtin's core, every process's lines, the history and the audit log
    with it.
    """

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
