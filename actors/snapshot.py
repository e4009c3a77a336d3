"""What the supervisor publishes: the whole status, built from its state, and one event.

:class:`Snapshots` is a part of :class:`~actors.supervisor.SupervisorCore` (one of its bases):
it reads the core's state and changes none of it, except its own cache of the running
systems and the store's summary. After every change the core calls :meth:`Snapshots.publish`;
in a burst of reports the status is built once, at the end (:meth:`Snapshots.flush_status`).
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING

from .maintenance import Machine, Transition
from .ports import Clock, StatusSink
from .status import (
    Event,
    MaintenanceInfo,
    RemovedSubsystem,
    RunningSystems,
    Status,
    StoreInfo,
    SubsystemInfo,
)
from .types import InFlightItem, MaintenanceState, OnDeadline, SubsystemState

if TYPE_CHECKING:
    from .view import SubsystemView


class Snapshots:
    """The status and events of :class:`~actors.supervisor.SupervisorCore`, built from its state."""

    # The core's state, read here (set in SupervisorCore.__init__).
    clock: Clock
    sink: StatusSink
    machine: Machine
    views: dict[str, SubsystemView]
    drain_id: str | None
    toggled: Transition | None
    deadline: float | None
    on_deadline: OnDeadline | None
    deadline_passed: bool
    version: int
    ttl_end: float | None
    ttl_expired: bool
    state_since: float | None
    removed: collections.deque[RemovedSubsystem]
    defer_status: bool
    status_pending: bool
    write_failures: int
    _running: RunningSystems
    _running_from: list[tuple[InFlightItem, ...]]
    _store_info: StoreInfo
    _seq: itertools.count[int]
    # And its one derivation: state_of(view) -> SubsystemState.

    def maintenance_info(self) -> MaintenanceInfo:
        state = self.machine.state
        toggled = self.toggled
        return MaintenanceInfo(
            enabled=self.machine.enabled,
            state=state.value,
            safe_to_restart=state is MaintenanceState.DRAINED,
            updated_by=toggled.by if toggled else None,
            updated_on=toggled.at if toggled else None,
            reason=toggled.reason if toggled and self.machine.enabled else None,
            deadline=self.deadline,
            overdue=self.deadline_passed and state is MaintenanceState.DRAINING,
            on_deadline=self.on_deadline.value if self.on_deadline else None,
            drain_id=self.drain_id,
            version=self.version,
            ttl_end=self.ttl_end,
            ttl_expired=self.ttl_expired,
            since=self.state_since,
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
                    reconnect_by=view.reconnect_by,
                    pause_asked_at=self.silent_since(view),
                )
                for view in views
            ),
            running_systems=self.running_systems(),
            removed=tuple(self.removed),
            store=self._store_info,
        )

    def silent_since(self, view: SubsystemView) -> float | None:
        """During a drain, for a subsystem that has not acknowledged its pause: when it was asked."""
        if self.drain_id is None or self.state_of(view) not in (SubsystemState.PAUSING, SubsystemState.UNKNOWN):
            return None
        return view.pause_asked_at

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
                since=min(w.since or 0.0 for w in waiting),
                write_failures=self.write_failures,
            )
        self.status_pending = True

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
                at=self.clock.now(),
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
