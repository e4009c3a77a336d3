"""The supervisor: drives maintenance mode over every subsystem.

:class:`SupervisorCore` holds the decisions and no I/O; the pykka actor over it is
:class:`actors.supervisor_actor.SupervisorActor`, and what it knows of each subsystem is an
:class:`actors.view.SubsystemView`. Subsystems talk to it by ``tell`` only; the shell ``ask``\\ s it
(downward), so it never waits on anybody. After every change it publishes the whole status
and one event through the :class:`~actors.ports.StatusSink`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from .errors import BadRequest, Conflict, MaintdError, NotCancellable, NotFound, StillLeaving
from .maintenance import Machine, MaintenanceEvent, Transition
from .messages import (
    Cancel,
    Cancelled,
    CancelRefused,
    DeadlineReached,
    Disable,
    Drained,
    Enable,
    ExternalGone,
    InFlightReport,
    IntakePaused,
    PauseIntake,
    ReconnectGraceEnded,
    RequestCancel,
    RestartSubsystem,
    ResumeIntake,
    SubsystemFailed,
)
from .peers import Peers
from .pending import WritesPending
from .ports import Clock, StatusSink, Timers
from .status import (
    Event,
    HistoryEntry,
    MaintenanceInfo,
    RemovedSubsystem,
    RunningSystems,
    Status,
    StoreInfo,
    SubsystemInfo,
    iso,
)
from .types import (
    MATERIAL_UPDATE,
    MDU_REFUSAL,
    InFlightItem,
    MaintenanceState,
    OnDeadline,
    SubsystemState,
)
from .view import Spawn, SubsystemView

SYSTEM = "maintd"
log = logging.getLogger("maintd.supervisor")


def _deadline_detail(msg: Enable) -> str | None:
    if msg.deadline_seconds is None:
        return _details(msg.peer)
    return _details(f"deadline {msg.deadline_seconds:g}s, then {msg.on_deadline.value}", msg.peer)


def _details(*parts: str | None) -> str | None:
    """An audit entry's detail: what was asked, then which process asked."""
    return "; ".join(part for part in parts if part) or None


DEADLINE_TIMER = "deadline"
#: How many removed subsystems the status keeps showing.
REMOVED_SHOWN = 20


class SupervisorCore:
    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        sink: StatusSink,
        restart_delay: float = 1.0,
        history_size: int = 1000,
        peers: Peers | None = None,
        audit_log: Callable[..., Any] | None = None,
        reconnect_grace: float = 0.0,
    ) -> None:
        self.audit_log = audit_log
        #: How long the blocking work of an external that disconnected keeps blocking (0: not at all).
        self.reconnect_grace = reconnect_grace
        self.peers = peers
        self.clock = clock
        self.timers = timers
        self.sink = sink
        self.restart_delay = restart_delay
        self.machine = Machine()
        self.views: dict[str, SubsystemView] = {}
        self.drain_id: str | None = None
        self.toggled: Transition | None = None
        self.deadline: float | None = None
        self.on_deadline: OnDeadline | None = None
        self.deadline_passed = False
        self.history: collections.deque[HistoryEntry] = collections.deque(maxlen=history_size)
        self.defer_status = False
        self.status_pending = False
        # The last RunningSystems built, and the views' item tuples it was built from.
        self._running: RunningSystems = RunningSystems()
        self._running_from: list[tuple[InFlightItem, ...]] = []
        self.removed: collections.deque[RemovedSubsystem] = collections.deque(maxlen=REMOVED_SHOWN)
        self.write_failures = 0
        self._store_info = StoreInfo()
        self._seq = itertools.count(1)

    # -- subsystems ----------------------------------------------------------------------

    def add_subsystem(self, name: str, spawn: Spawn, *, external: bool, by: str = SYSTEM) -> SubsystemView:
        known = self.views.get(name)
        if known is not None and external and known.disconnected is not None:
            return self.reattach(known, spawn, by)
        if known is not None and known.leaving is not None:
            raise StillLeaving(f"a subsystem named {name!r} is still disconnecting; register again")
        if known is not None:
            raise Conflict(f"a subsystem named {name!r} is already registered")
        view = SubsystemView(name, spawn, external=external)
        self.start_view(view)
        self.views[name] = view
        if self.drain_id is not None:
            view.tell(PauseIntake(drain_id=self.drain_id))
        self.recompute()
        self.publish("subsystem_registered", subsystem=name, message=f"{name} registered by {by}")
        return view

    def unregister(self, name: str, reason: str) -> None:
        """A process's connection closed: remove it once its actor has passed on what it sent."""
        view = self.views.get(name)
        if view is None:
            return
        view.leaving = reason
        if view.tell(ExternalGone(reason=reason)):
            return
        self.disconnect(name, reason)

    def disconnect(self, name: str, reason: str) -> None:
        """An external's process is gone. Its blocking work keeps blocking for ``reconnect_grace``.

        Until the same name registers again and reports, or the grace ends, the view stays
        (``disconnected``) with its items: a process that reconnects at once never makes a
        window in which the server looks safe to restart.
        """
        view = self.views.get(name)
        if view is None:
            return
        if not view.blocking_count or self.reconnect_grace <= 0:
            self.remove_subsystem(name, reason)
            return
        if view.ref is not None:
            view.ref.stop(block=False)
        self.timers.disarm(f"restart:{name}")  # a failed actor of a process that is gone: no restart
        view.ref, view.leaving, view.disconnected, view.failed = None, None, reason, False
        view.disconnects += 1
        view.reconnect_by = self.clock.now() + self.reconnect_grace
        self.timers.arm(f"reconnect:{name}", self.reconnect_grace, ReconnectGraceEnded(name=name, generation=view.disconnects))
        self.record("subsystem_disconnected", by=SYSTEM, reason=reason, item=name)
        self.recompute()
        self.publish(
            "subsystem_disconnected",
            subsystem=name,
            items=view.items,
            message=f"{name} disconnected ({reason}); its {view.blocking_count} blocking item(s) keep blocking "
            f"for {self.reconnect_grace:g}s or until it registers again and reports",
        )

    def reattach(self, view: SubsystemView, spawn: Spawn, by: str) -> SubsystemView:
        """The process of a disconnected external registered again: its old work blocks until it reports."""
        view.spawn = spawn
        view.disconnected = None
        earlier = view.items
        view.items = ()
        view.set_abandoned(earlier)
        view.generation += 1
        view.reported = view.failed = False
        view.paused_for = view.drained_for = None
        self.start_view(view)
        if self.drain_id is not None:
            view.tell(PauseIntake(drain_id=self.drain_id))
        self.recompute()
        self.publish(
            "subsystem_registered",
            subsystem=view.name,
            message=f"{view.name} registered again by {by}; its earlier work blocks until it reports",
        )
        return view

    def on_reconnect_grace_ended(self, msg: ReconnectGraceEnded) -> None:
        view = self.views.get(msg.name)
        if view is None or msg.generation != view.disconnects:
            return
        if view.disconnected is not None:
            self.remove_subsystem(view.name, f"{view.disconnected}; did not register again within {self.reconnect_grace:g}s")
            return
        if view.abandoned:
            self.release_abandoned(view, f"did not report within {self.reconnect_grace:g}s of going away")

    def release_abandoned(self, view: SubsystemView, why: str) -> None:
        """The earlier process's work stops blocking: the new one reported, or the grace ended."""
        count = len(view.abandoned)
        view.set_abandoned(())
        view.reconnect_by = None
        self.timers.disarm(f"reconnect:{view.name}")
        self.recompute()
        message = f"{view.name} {why}: {count} earlier item(s) released"
        self.publish("in_flight_changed", subsystem=view.name, items=view.items, message=message)

    def start_view(self, view: SubsystemView) -> None:
        view.start()
        if self.peers is not None and not view.external:
            self.peers.set(view.name, view.ref)

    def remove_subsystem(self, name: str, reason: str) -> None:
        view = self.views.pop(name, None)
        if view is None:
            return
        self.timers.disarm(f"restart:{name}")
        self.timers.disarm(f"reconnect:{name}")
        if view.ref is not None:
            view.ref.stop(block=False)
        abandoned = view.items
        self.audit_after("subsystem_removed", SYSTEM, reason=reason, target=name, detail=f"{len(abandoned)} item(s) abandoned")
        self.removed.append(RemovedSubsystem(name=name, at=iso(self.clock.now()) or "", reason=reason, abandoned=abandoned))
        self.record("subsystem_removed", by=SYSTEM, reason=reason, item=name)
        self.recompute()
        self.publish(
            "subsystem_removed",
            subsystem=name,
            items=abandoned,
            message=f"{name} removed ({reason}); {len(abandoned)} item(s) abandoned",
        )

    # -- maintenance ---------------------------------------------------------------------

    def enable(self, msg: Enable) -> MaintenanceInfo:
        if msg.deadline_seconds is not None and msg.deadline_seconds < 0:
            raise BadRequest("deadline_seconds must be zero or more")
        now = self.clock.now()
        self.machine.check(MaintenanceEvent.ENABLE)
        # Recorded before it takes effect: what cannot be recorded does not happen.
        self.audit("enable", msg.by, now, reason=msg.reason, detail=_deadline_detail(msg))
        transition = self.machine.fire(MaintenanceEvent.ENABLE, by=msg.by, at=now, reason=msg.reason)
        self.toggled = transition
        self.drain_id = f"drain-{secrets.token_hex(4)}"
        self.deadline_passed = False
        self.on_deadline = msg.on_deadline
        self.deadline = None if msg.deadline_seconds is None else now + msg.deadline_seconds
        if msg.deadline_seconds is not None:
            self.timers.arm(DEADLINE_TIMER, msg.deadline_seconds, DeadlineReached(drain_id=self.drain_id))
        self.record_transition(transition)
        for view in self.views.values():
            view.paused_for = view.drained_for = None
            view.tell(PauseIntake(drain_id=self.drain_id))
        self.recompute(publish_transition=False)
        self.publish("state_changed", message=f"{msg.by} turned on maintenance mode")
        return self.maintenance_info()

    def disable(self, msg: Disable) -> MaintenanceInfo:
        now = self.clock.now()
        self.machine.check(MaintenanceEvent.DISABLE)
        self.audit("disable", msg.by, now, reason=msg.reason, detail=msg.peer)
        transition = self.machine.fire(MaintenanceEvent.DISABLE, by=msg.by, at=now, reason=msg.reason)
        self.toggled = transition
        drain_id, self.drain_id = self.drain_id or "", None
        self.deadline = self.on_deadline = None
        self.deadline_passed = False
        self.timers.disarm(DEADLINE_TIMER)
        self.record_transition(transition)
        for view in self.views.values():
            view.paused_for = view.drained_for = None
            view.tell(ResumeIntake(drain_id=drain_id))
        self.publish("state_changed", message=f"{msg.by} turned off maintenance mode")
        return self.maintenance_info()

    def recompute(self, *, publish_transition: bool = True) -> None:
        """Move between draining and drained as the subsystems' reports say."""
        state = self.machine.state
        if state is MaintenanceState.NORMAL:
            return
        done = all(self.state_of(view) is SubsystemState.DRAINED for view in self.views.values())
        if state is MaintenanceState.DRAINING and done:
            event, reason = MaintenanceEvent.ALL_DRAINED, "every subsystem is drained"
        elif state is MaintenanceState.DRAINED and not done:
            waiting = [v.name for v in self.views.values() if self.state_of(v) is not SubsystemState.DRAINED]
            event, reason = MaintenanceEvent.WORK_APPEARED, "not drained any more: " + ", ".join(waiting)
        else:
            return
        transition = self.machine.fire(event, by=SYSTEM, at=self.clock.now(), reason=reason)
        self.record_transition(transition)
        if publish_transition:
            self.publish("state_changed", message=reason)

    def state_of(self, view: SubsystemView) -> SubsystemState:
        if view.disconnected is not None:
            return SubsystemState.DISCONNECTED
        if view.failed:
            return SubsystemState.FAILED
        if not view.reported:
            return SubsystemState.UNKNOWN
        if self.drain_id is None:
            return SubsystemState.RUNNING
        if view.paused_for != self.drain_id:
            return SubsystemState.PAUSING
        if view.drained_for == self.drain_id and not view.blocking_count:
            return SubsystemState.DRAINED
        return SubsystemState.PAUSED

    # -- reports from subsystems -------------------------------------------------------

    def on_intake_paused(self, msg: IntakePaused) -> None:
        view = self.views.get(msg.subsystem)
        if view is None or msg.drain_id != self.drain_id:
            return
        view.paused_for = msg.drain_id
        self.recompute()
        self.publish("subsystem_state", subsystem=view.name, message=f"{view.name} stopped its intake")

    def on_report(self, msg: InFlightReport) -> None:
        view = self.views.get(msg.subsystem)
        if view is None:
            return
        view.items = msg.items
        view.reported = True
        if view.abandoned and msg.from_process:
            self.release_abandoned(view, "registered again and reported its work")
        if view.blocking_count:
            view.drained_for = None
        self.recompute()
        self.publish("in_flight_changed", subsystem=view.name, items=view.items)

    def on_drained(self, msg: Drained) -> None:
        view = self.views.get(msg.subsystem)
        if view is None or msg.drain_id != self.drain_id:
            return
        view.drained_for = msg.drain_id
        self.recompute()
        self.publish("subsystem_state", subsystem=view.name, message=f"{view.name} is drained")

    def on_failed(self, msg: SubsystemFailed) -> None:
        view = self.views.get(msg.subsystem)
        if view is None or msg.generation != view.generation:
            return
        if view.leaving is not None:  # its process is gone too: nothing to restart
            self.disconnect(view.name, view.leaving)
            return
        view.failed = True
        view.failures += 1
        view.last_error = msg.error
        view.ref = None
        self.timers.arm(f"restart:{view.name}", self.restart_delay, RestartSubsystem(name=view.name, generation=view.generation))
        self.recompute()
        self.publish("subsystem_state", subsystem=view.name, message=f"{view.name} failed: {msg.error}")

    def on_restart(self, msg: RestartSubsystem) -> None:
        view = self.views.get(msg.name)
        if view is None or msg.generation != view.generation or not view.failed:
            return
        view.generation += 1
        view.writes = None  # they went with the failed actor (the new one learns its jobs again)
        self.update_store_info()
        view.failed = False
        view.reported = False
        view.paused_for = view.drained_for = None
        self.start_view(view)
        if self.drain_id is not None:
            view.tell(PauseIntake(drain_id=self.drain_id))
        self.recompute()
        self.publish("subsystem_state", subsystem=view.name, message=f"{view.name} restarted")

    def on_writes_pending(self, msg: WritesPending) -> None:
        """A built-in subsystem's writes that wait for the store. Each is also an in-flight
        item that blocks a restart (which decides ``safe_to_restart``); this is the summary."""
        view = self.views.get(msg.subsystem)
        if view is None or view.external:
            return
        self.write_failures += msg.failures
        view.writes = msg if msg.count else None
        self.update_store_info()

    def update_store_info(self) -> None:
        """Rebuild the status's ``store``; published quietly (the subsystem's InFlightReport,
        which follows its WritesPending, carries the event)."""
        waiting = [view.writes for view in self.views.values() if view.writes is not None]
        if not waiting:
            self._store_info = StoreInfo(write_failures=self.write_failures)
        else:
            self._store_info = StoreInfo(
                state="degraded",
                pending_writes=sum(w.count for w in waiting),
                last_error=next((w.last_error for w in waiting if w.last_error), None),
                since=iso(min(w.since or 0.0 for w in waiting)),
                write_failures=self.write_failures,
            )
        self.status_pending = True

    # -- cancel ------------------------------------------------------------------------

    def find_item(self, ref: str) -> InFlightItem:
        items = [item for view in self.views.values() for item in view.items]
        exact = [item for item in items if item.id == ref]
        if exact:
            return exact[0]
        bare = [item for item in items if item.local_id == ref]
        if len(bare) == 1:
            return bare[0]
        if bare:
            names = ", ".join(item.id for item in bare)
            raise BadRequest(f"{ref!r} names more than one item ({names}); use the full id")
        raise NotFound(f"no item {ref!r} is in flight (`maintctl inflight` lists them)")

    def request_cancel(self, msg: RequestCancel) -> str:
        item = self.find_item(msg.item)
        view = self.views[item.subsystem]
        if item.kind == MATERIAL_UPDATE:
            raise NotCancellable(MDU_REFUSAL)
        if not item.cancellable:
            raise NotCancellable(f"{item.id} ({item.kind}) does not accept cancel")
        if view.disconnected is not None:
            why = f"{view.name} is disconnected; its work can be cancelled once it registers again"
            raise MaintdError(why, code="unavailable")
        if view.ref is None:
            raise MaintdError(f"{view.name} has failed and is restarting; try again", code="unavailable")
        self.audit("cancel_requested", msg.by, self.clock.now(), reason=msg.reason, target=item.id, detail=msg.peer)
        if not view.tell(Cancel(item_id=item.id, by=msg.by, reason=msg.reason, reply=msg.reply)):
            raise MaintdError(f"{view.name} has failed and is restarting; try again", code="unavailable")
        return item.id

    def on_cancelled(self, msg: Cancelled) -> None:
        self.record("cancel", by=msg.by, reason=msg.reason, item=msg.item_id)
        self.audit_after("cancel", msg.by, reason=msg.reason, target=msg.item_id)
        self.publish("cancelled", subsystem=msg.subsystem, message=f"{msg.item_id} cancelled by {msg.by}")
        if msg.reply is not None:
            msg.reply.set({"item": msg.item_id, "cancelled": True, "by": msg.by})

    def on_cancel_refused(self, msg: CancelRefused) -> None:
        self.publish("cancel_refused", subsystem=msg.subsystem, message=f"cancel of {msg.item_id} refused: {msg.reason}")
        if msg.reply is not None:
            msg.reply.set_exception(MaintdError(msg.reason, code=msg.code))

    def on_deadline_reached(self, msg: DeadlineReached) -> None:
        if msg.drain_id != self.drain_id:
            return
        self.deadline_passed = True
        if self.machine.state is not MaintenanceState.DRAINING:
            return
        left = tuple(item for view in self.views.values() for item in view.items)
        self.publish("overdue", items=left, message=f"the drain deadline passed with {len(left)} item(s) left")
        if self.on_deadline is not OnDeadline.CANCEL:
            return
        for view in self.views.values():
            for item in view.items:
                if item.cancellable and item.kind != MATERIAL_UPDATE:
                    view.tell(Cancel(item_id=item.id, by="deadline", reason="cancelled by the deadline"))

    # -- records and publishing ----------------------------------------------------------

    def record(self, action: str, *, by: str, **fields: Any) -> None:
        self.history.append(HistoryEntry(at=iso(self.clock.now()) or "", action=action, by=by, **fields))

    def audit(self, action: str, by: str, at: float, **fields: Any) -> None:
        """Write to the persistent audit log; raises (a StoreError) if it cannot."""
        if self.audit_log is not None:
            self.audit_log(action, by, at, **fields)

    def audit_after(self, action: str, by: str, **fields: Any) -> None:
        """Audit something that has already happened: a failure is logged, it cannot be refused."""
        try:
            self.audit(action, by, self.clock.now(), **fields)
        except MaintdError as exc:
            log.error("could not record %s by %s in the audit log: %s", action, by, exc.message)

    def record_transition(self, t: Transition) -> None:
        self.record(
            t.event.value,
            by=t.by,
            reason=t.reason,
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            drain_id=self.drain_id,
        )

    def maintenance_info(self) -> MaintenanceInfo:
        state = self.machine.state
        toggled = self.toggled
        return MaintenanceInfo(
            enabled=self.machine.enabled,
            state=state.value,
            safe_to_restart=state is MaintenanceState.DRAINED,
            updated_by=toggled.by if toggled else None,
            updated_on=iso(toggled.at) if toggled else None,
            reason=toggled.reason if toggled and self.machine.enabled else None,
            deadline=iso(self.deadline),
            overdue=self.deadline_passed and state is MaintenanceState.DRAINING,
            on_deadline=self.on_deadline.value if self.on_deadline else None,
            drain_id=self.drain_id,
        )

    def status(self) -> Status:
        views = self.views.values()
        return Status(
            maintenance=self.maintenance_info(),
            subsystems=tuple(
                SubsystemInfo(
                    name=view.name,
                    state=self.state_of(view).value,
                    in_flight=len(view.items),
                    blocking=view.blocking_count,
                    external=view.external,
                    failures=view.failures,
                    last_error=view.last_error,
                    reconnect_by=iso(view.reconnect_by),
                )
                for view in views
            ),
            running_systems=self.running_systems(),
            removed=tuple(self.removed),
            store=self._store_info,
        )

    def running_systems(self) -> RunningSystems:
        """Every view's items by group; the same object while no view's items changed.

        A status is published after every change, and most changes (a subsystem pausing,
        a drain's state) leave the items alone: with thousands of items, rebuilding the
        groups (and re-encoding and re-counting them downstream) each time would make
        every publication cost as much as the largest one.
        """
        current = [view.items for view in self.views.values()]
        if len(current) != len(self._running_from) or any(a is not b for a, b in zip(current, self._running_from, strict=True)):
            views = self.views.values()
            self._running = RunningSystems(
                **{
                    group: tuple(itertools.chain.from_iterable(view.groups.get(group, ()) for view in views))
                    for group in RunningSystems.__struct_fields__
                }
            )
            self._running_from = current
        return self._running

    def publish(
        self,
        event: str,
        *,
        subsystem: str | None = None,
        items: tuple[InFlightItem, ...] | None = None,
        message: str | None = None,
    ) -> None:
        # In a burst of reports the whole status is built once, when the burst ends
        # (see SupervisorActor.on_receive); each event still goes out at once.
        status = None if self.defer_status else self.status()
        self.status_pending = self.defer_status
        self.sink.publish(
            status,
            Event(
                seq=next(self._seq),
                at=iso(self.clock.now()) or "",
                event=event,
                maintenance=status.maintenance if status is not None else self.maintenance_info(),
                subsystem=subsystem,
                items=items,
                message=message,
            ),
        )

    def flush_status(self) -> None:
        if self.status_pending:
            self.status_pending = False
            self.sink.publish(self.status(), None)
