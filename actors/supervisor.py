"""The supervisor: drives maintenance mode over every subsystem.

:class:`SupervisorCore` holds the decisions and no I/O; the pykka actor over it is
:class:`actors.supervisor_actor.SupervisorActor`, and what it knows of each subsystem is an
:class:`actors.view.SubsystemView`. Subsystems talk to it by ``tell`` only; the shell ``ask``\\ s it
(downward), so it never waits on anybody. After every change it publishes the whole status
and one event through the :class:`~actors.ports.StatusSink`.

Two bases hold the rest of the core: :class:`actors.roster.Roster` adds and removes the
subsystems (and keeps a disconnected external's work blocking), and
:class:`actors.snapshot.Snapshots` builds and publishes the status.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from .cancels import Cancels
from .errors import BadRequest, Conflict, MaintdError
from .maintenance import SYSTEM, Machine, MaintenanceEvent, Transition, automatic_event, subsystem_state
from .messages import (
    DeadlineReached,
    Disable,
    Drained,
    Enable,
    InFlightReport,
    IntakePaused,
    PauseIntake,
    RestartSubsystem,
    ResumeIntake,
    SubsystemFailed,
    TTLPassed,
)
from .peers import Peers
from .pending import WritesPending
from .ports import AuditLog, Clock, StatusSink, Timers
from .roster import Roster
from .schema import MaintenanceRow
from .snapshot import Snapshots
from .status import (
    HistoryEntry,
    MaintenanceInfo,
    RemovedSubsystem,
    RunningSystems,
    StoreInfo,
)
from .types import (
    InFlightItem,
    MaintenanceState,
    OnDeadline,
    SubsystemState,
)
from .view import SubsystemView

log = logging.getLogger("maintd.supervisor")


def _deadline_detail(msg: Enable) -> str | None:
    ttl = None if msg.ttl_seconds is None else f"ttl {msg.ttl_seconds:g}s"
    if msg.deadline_seconds is None:
        return _details(ttl, msg.peer)
    return _details(f"deadline {msg.deadline_seconds:g}s, then {msg.on_deadline.value}", ttl, msg.peer)


def _details(*parts: str | None) -> str | None:
    """An audit entry's detail: what was asked, then which process asked."""
    return "; ".join(part for part in parts if part) or None


DEADLINE_TIMER = "deadline"
TTL_TIMER = "ttl"
#: While maintenance is on past its --ttl, the log says so this often (seconds).
TTL_WARN_EVERY = 3600.0
#: How many removed subsystems the status keeps showing.
REMOVED_SHOWN = 20


class SupervisorCore(Roster, Snapshots, Cancels):
    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        sink: StatusSink,
        restart_delay: float = 1.0,
        history_size: int = 1000,
        peers: Peers | None = None,
        audit_log: AuditLog | None = None,
        reconnect_grace: float = 0.0,
        save_maintenance: Callable[[MaintenanceRow], Any] | None = None,
    ) -> None:
        self.audit_log = audit_log
        #: Records each turn on or off (the version, the drain) with its audit entry, in place
        #: of ``audit_log``, before it takes effect; raises (a StoreError) if it cannot.
        self.save_maintenance = save_maintenance
        self.version = 0
        self.ttl_end: float | None = None
        self.ttl_expired = False
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
        #: when the maintenance state last changed (status: ``maintenance.since``)
        self.state_since: float | None = None
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

    # -- maintenance ---------------------------------------------------------------------

    def restore(self, row: MaintenanceRow | None) -> None:
        """Go on from the version the store last recorded (at start-up, before anything else).

        Maintenance is never restored after a restart: one that was on when maintd stopped
        ended with it, which is a turn of its own (the version moves on, so a compare-and-set
        against what was seen before the restart is refused).
        """
        if row is None:
            return
        self.version = row.version
        if row.enabled:
            log.warning("maintenance mode (%s, by %s) was on when maintd stopped; it is not restored", row.drain_id, row.by)
            self.version += 1
            row = MaintenanceRow(version=self.version, enabled=False, drain_id=None, ttl_end=None, by=SYSTEM, at=self.clock.now())
            try:
                self.turn(row, reason="maintd restarted; maintenance mode is not restored")
            except MaintdError as exc:  # the next turn writes the version again
                log.error("could not record that maintenance ended with the restart: %s", exc.message)

    def turn(self, row: MaintenanceRow, *, reason: str | None, detail: str | None = None) -> None:
        """Record a turn on or off and its audit entry; raises (a StoreError) if it cannot."""
        if self.save_maintenance is not None:
            self.save_maintenance(row, reason=reason, detail=detail)
        else:
            self.audit("enable" if row.enabled else "disable", row.by, row.at, reason=reason, detail=detail)

    def enable(self, msg: Enable) -> MaintenanceInfo:
        if msg.deadline_seconds is not None and msg.deadline_seconds < 0:
            raise BadRequest("deadline_seconds must be zero or more")
        if msg.ttl_seconds is not None and msg.ttl_seconds <= 0:
            raise BadRequest("ttl_seconds must be more than zero")
        if msg.if_version is not None and msg.if_version != self.version:
            raise Conflict(
                f"maintenance changed since you looked: its version is {self.version}, not {msg.if_version}"
                f" (it is {self.machine.state.value}; `maintctl status` shows who changed it)"
            )
        now = self.clock.now()
        self.machine.check(MaintenanceEvent.ENABLE)
        drain_id = f"drain-{secrets.token_hex(4)}"
        ttl_end = None if msg.ttl_seconds is None else now + msg.ttl_seconds
        # Recorded before it takes effect: what cannot be recorded does not happen.
        row = MaintenanceRow(version=self.version + 1, enabled=True, drain_id=drain_id, ttl_end=ttl_end, by=msg.by, at=now)
        self.turn(row, reason=msg.reason, detail=_deadline_detail(msg))
        transition = self.machine.fire(MaintenanceEvent.ENABLE, by=msg.by, at=now, reason=msg.reason)
        self.toggled = transition
        self.version += 1
        self.drain_id = drain_id
        self.ttl_end, self.ttl_expired = ttl_end, False
        if msg.ttl_seconds is not None:
            self.timers.arm(TTL_TIMER, msg.ttl_seconds, TTLPassed(drain_id=drain_id))
        self.deadline_passed = False
        self.on_deadline = msg.on_deadline
        self.deadline = None if msg.deadline_seconds is None else now + msg.deadline_seconds
        if msg.deadline_seconds is not None:
            self.timers.arm(DEADLINE_TIMER, msg.deadline_seconds, DeadlineReached(drain_id=self.drain_id))
        self.record_transition(transition)
        for view in self.views.values():
            view.paused_for = view.drained_for = None
            view.tell(PauseIntake(drain_id=self.drain_id))
            view.pause_asked_at = now
        self.recompute(publish_transition=False)
        self.publish("state_changed", message=f"{msg.by} turned on maintenance mode")
        return self.maintenance_info()

    def disable(self, msg: Disable) -> MaintenanceInfo:
        if msg.if_drain_id is not None and msg.if_drain_id != self.drain_id:
            now_on = f"the drain now on is {self.drain_id}" if self.drain_id else "maintenance mode is not on"
            raise Conflict(f"maintenance changed since you looked: {now_on}, not {msg.if_drain_id}; nothing was turned off")
        now = self.clock.now()
        self.machine.check(MaintenanceEvent.DISABLE)
        row = MaintenanceRow(version=self.version + 1, enabled=False, drain_id=None, ttl_end=None, by=msg.by, at=now)
        self.turn(row, reason=msg.reason, detail=msg.peer)
        transition = self.machine.fire(MaintenanceEvent.DISABLE, by=msg.by, at=now, reason=msg.reason)
        self.toggled = transition
        self.version += 1
        drain_id, self.drain_id = self.drain_id or "", None
        self.deadline = self.on_deadline = None
        self.deadline_passed = False
        self.ttl_end, self.ttl_expired = None, False
        self.timers.disarm(DEADLINE_TIMER)
        self.timers.disarm(TTL_TIMER)
        self.record_transition(transition)
        for view in self.views.values():
            view.paused_for = view.drained_for = None
            view.tell(ResumeIntake(drain_id=drain_id))
        self.publish("state_changed", message=f"{msg.by} turned off maintenance mode")
        return self.maintenance_info()

    def recompute(self, *, publish_transition: bool = True) -> None:
        """Move between draining and drained as the subsystems' reports say."""
        if self.machine.state is MaintenanceState.NORMAL:
            return
        states = {view.name: self.state_of(view) for view in self.views.values()}
        automatic = automatic_event(self.machine.state, states)
        if automatic is None:
            return
        event, reason = automatic
        transition = self.machine.fire(event, by=SYSTEM, at=self.clock.now(), reason=reason)
        self.record_transition(transition)
        if publish_transition:
            self.publish("state_changed", message=reason)

    def state_of(self, view: SubsystemView) -> SubsystemState:
        drain_id = self.drain_id
        return subsystem_state(
            disconnected=view.disconnected is not None,
            failed=view.failed,
            reported=view.reported,
            draining=drain_id is not None,
            paused=view.paused_for == drain_id,
            drained=view.drained_for == drain_id,
            blocking=view.blocking_count > 0,
        )

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
        self.start_paused(view)
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

    def on_ttl_passed(self, msg: TTLPassed) -> None:
        """Past ``--ttl`` maintenance stays on (an upgrade may be half done): it is raised,
        once as an event, and in the log now and every :data:`TTL_WARN_EVERY` after."""
        if msg.drain_id != self.drain_id or self.ttl_end is None:
            return
        self.timers.arm(TTL_TIMER, TTL_WARN_EVERY, msg)
        over = self.clock.now() - self.ttl_end
        by = self.toggled.by if self.toggled else "?"
        log.warning(
            "maintenance mode (%s, turned on by %s) is still on %.0f min past its TTL (%s);"
            " `maintctl disable` when the work is done",
            self.drain_id,
            by,
            over / 60,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.ttl_end)),
        )
        if not self.ttl_expired:
            self.ttl_expired = True
            self.publish("ttl_expired", message=f"maintenance mode (turned on by {by}) is past its TTL and still on")

    # -- records and publishing ----------------------------------------------------------

    def record(self, action: str, *, by: str, **fields: Any) -> None:
        self.history.append(HistoryEntry(at=self.clock.now(), action=action, by=by, **fields))

    def audit(self, action: str, by: str, at: float, **fields: Any) -> None:
        """Write to the persistent audit log; raises (a StoreError) if it cannot."""
        if self.audit_log is not None:
            self.audit_log.audit(action, by, at, **fields)

    def audit_after(self, action: str, by: str, **fields: Any) -> None:
        """Audit something that has already happened: a failure is logged, it cannot be refused."""
        try:
            self.audit(action, by, self.clock.now(), **fields)
        except MaintdError as exc:
            log.error("could not record %s by %s in the audit log: %s", action, by, exc.message)

    def record_transition(self, t: Transition) -> None:
        self.state_since = t.at
        self.record(
            t.event.value,
            by=t.by,
            reason=t.reason,
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            drain_id=self.drain_id,
            version=self.version,
        )
