"""What the supervisor publishes: the status snapshot, events and history entries.

These are the exact shapes the control socket sends, so the shell encodes them as they are.
They are built bottom-up from strings, numbers and each other and are never changed, so
they cannot be part of a reference cycle: ``gc=False`` keeps the tens of thousands of them
a big drain holds out of the cyclic garbage collector's passes (each full pass over them
stalled the daemon for 15-45 ms).

Every time in them is seconds since the epoch (a float): the edges format it for their
readers (:mod:`daemon.times`), and nothing parses a time back out of text.
"""

from __future__ import annotations

import msgspec

from .eta import DrainEta
from .types import InFlightItem


class MaintenanceInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    enabled: bool
    state: str
    safe_to_restart: bool
    updated_by: str | None
    updated_on: float | None
    reason: str | None
    deadline: float | None
    overdue: bool
    on_deadline: str | None
    drain_id: str | None
    #: Counts every time maintenance was turned on or off (kept across restarts): what
    #: ``enable --if-version`` compares.
    version: int = 0
    #: ``enable --ttl``: when maintenance should be over; past it ``ttl_expired`` (it stays on).
    ttl_end: float | None = None
    ttl_expired: bool = False
    #: when the state last changed (for ``drained``: since when it is safe to restart)
    since: float | None = None


class SubsystemInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    name: str
    state: str
    in_flight: int
    blocking: int
    external: bool
    #: how often it failed: its actor died (the supervisor restarts it), or, for an external,
    #: its process went away with work in flight
    failures: int = 0
    last_error: str | None = None
    #: While an external's earlier work still blocks after its process went away: until when.
    reconnect_by: float | None = None
    #: During a drain, while it has not acknowledged its pause (``pausing``/``unknown``): when it was asked.
    pause_asked_at: float | None = None


class RunningSystems(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The work in flight, in GoCD's groups (:data:`~actors.types.GROUP_OF_KIND`).

    Read it through :meth:`groups` or :meth:`items`, never by naming the groups one by one.
    """

    material_update_in_progress: tuple[InFlightItem, ...] = ()
    building_jobs: tuple[InFlightItem, ...] = ()
    scheduled_jobs: tuple[InFlightItem, ...] = ()
    other: tuple[InFlightItem, ...] = ()

    def groups(self) -> tuple[tuple[str, tuple[InFlightItem, ...]], ...]:
        """``(group, items)`` for every group, in GoCD's order, ``other`` last."""
        return (
            ("material_update_in_progress", self.material_update_in_progress),
            ("building_jobs", self.building_jobs),
            ("scheduled_jobs", self.scheduled_jobs),
            ("other", self.other),
        )

    def items(self) -> tuple[InFlightItem, ...]:
        """Every item, whatever its group, in the order of :meth:`groups`."""
        return (*self.material_update_in_progress, *self.building_jobs, *self.scheduled_jobs, *self.other)


class RemovedSubsystem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A subsystem that went away (its process disconnected), and the work it abandoned."""

    name: str
    at: float
    reason: str
    abandoned: tuple[InFlightItem, ...]
    #: its failures up to its removal (as :attr:`SubsystemInfo.failures`)
    failures: int = 0


class StoreInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How the store stands for the subsystems' writes. ``degraded``: ``pending_writes``
    results wait in memory to be written (each also an in-flight ``pending_write`` item that
    blocks a restart), since ``since``, the store's last refusal ``last_error``.
    ``write_failures`` counts every refused attempt since the daemon started."""

    state: str = "ok"
    pending_writes: int = 0
    last_error: str | None = None
    since: float | None = None
    write_failures: int = 0


class AgentsBackend(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where the jobs run when it is not this host (``[agents] backend = "celery"``): the
    broker (its password never shown) and whether it answers (``available``/``unavailable``)."""

    name: str
    state: str
    broker: str | None = None
    error: str | None = None
    since: float | None = None


class Status(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    maintenance: MaintenanceInfo
    subsystems: tuple[SubsystemInfo, ...]
    running_systems: RunningSystems
    removed: tuple[RemovedSubsystem, ...] = ()
    store: StoreInfo = StoreInfo()
    #: how the daemon finds a job's processes (set by the shell, not the supervisor)
    job_tracking: str | None = None
    #: when the drain is expected to end, from history (set by the shell: :mod:`daemon.foresight`)
    eta: DrainEta | None = None
    #: the remote agents' backend, when jobs run on other hosts (set by the shell)
    agents_backend: AgentsBackend | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type", tag="event"):
    """One change, pushed to every ``watch`` subscriber.

    ``event`` names what happened: ``state_changed``, ``in_flight_changed``,
    ``subsystem_state``, ``subsystem_registered``, ``subsystem_disconnected``,
    ``subsystem_removed``, ``overdue``, ``ttl_expired``, ``cancelled``, ``cancel_refused``. ``items`` lists
    what is left (``overdue``), what was abandoned (``subsystem_removed``), what keeps
    blocking (``subsystem_disconnected``) or the subsystem's in-flight work.
    """

    seq: int
    at: float
    event: str
    maintenance: MaintenanceInfo
    subsystem: str | None = None
    items: tuple[InFlightItem, ...] | None = None
    message: str | None = None


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A maintenance transition or a cancel: who, when, why."""

    at: float
    action: str
    by: str
    reason: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    item: str | None = None
    drain_id: str | None = None
    version: int | None = None
