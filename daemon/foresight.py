"""The drain's ETA and the deadline preview, at the edge: from the hub's status and the recent durations.

Where the ETA is computed, and why here: an ETA depends on the time it is asked (an item
passes its p90 and becomes overdue with no change of state), so a status the supervisor
built at its last change could not hold one that stays true; and its history is in the
store, which the supervisor must never wait on. So the supervisor's status stays as it is
(items with their structured fields), and this module, in the trio thread, keeps a
:class:`~actors.eta.Durations` and computes :func:`~actors.eta.drain_eta` for whoever asks:
the socket's ``status`` (through :class:`~daemon.hub.StatusHub`), ``preview``, ``STATUS=``
and the metric. The estimator itself stays pure (:mod:`actors.eta`).

The durations: jobs' from the store (:meth:`actors.store.Store.recent_durations`), read at
start and again after jobs finish, at most once per :data:`REFRESH_EVERY` (a burst of
finishes costs one query, made off the supervisor's thread by the store's actor); material
updates' as the materials subsystem measured them (in memory only: none after a restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from actors.errors import BadRequest, MaintdError
from actors.eta import DrainEta, Durations, Foreseen, deadline_preview, drain_eta
from actors.safety import blocking
from actors.status import Status

from .bridge import Bridge

log = logging.getLogger("maintd.foresight")

#: The least time between two reads of the job history (a burst of finished jobs is one read).
REFRESH_EVERY = 1.0
STORE_TIMEOUT = 30.0


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``preview``: what a deadline at ``deadline`` would do; nothing is changed."""

    now: float
    deadline: float
    cancel_at_deadline: bool
    drain: DrainEta
    items: tuple[Foreseen, ...]


class Foresight:
    """The recent durations, and the ETA and deadline preview from them (trio thread, but
    :meth:`job_finished` and :meth:`material_durations`, which any thread may call)."""

    def __init__(self, bridge: Bridge, store: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.bridge = bridge
        self.store = store  # the StoreActor's proxy (None: jobs have no history)
        self.clock = clock
        self._jobs: Durations = Durations()
        self._materials: dict[str, tuple[float, ...]] = {}
        self.durations = Durations()
        #: changes with every new Durations (the hub's cache of the status JSON follows it)
        self.version = 0
        self._stale = trio.Event()
        #: the last ETA: (durations' version, the second), the running systems it is of, the ETA
        self._eta: tuple[tuple[int, int], Any, DrainEta] | None = None

    # -- any thread ------------------------------------------------------------------------

    def job_finished(self, _result: str = "") -> None:
        self.bridge.call_soon(self._stale.set)

    def material_durations(self, material: str, durations: tuple[float, ...]) -> None:
        self.bridge.call_soon(self._set_material, material, durations)

    # -- trio thread ---------------------------------------------------------------------

    def set_durations(self, durations: Durations) -> None:
        self._jobs = durations
        self._rebuild()

    def _set_material(self, material: str, durations: tuple[float, ...]) -> None:
        self._materials[material] = durations
        self._rebuild()

    def _rebuild(self) -> None:
        self.durations = Durations(jobs=self._jobs.jobs, materials=dict(self._materials))
        self.version += 1

    async def refresh(self) -> None:
        """Read the job history again; a store that does not answer keeps the last one (logged)."""
        if self.store is None:
            return
        try:
            durations = await self.bridge.wait(self.store.call(lambda s: s.recent_durations()), STORE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - an ETA never takes the daemon down (a store error, a timeout)
            log.warning("cannot read the job history for the drain's ETA: %s", exc)
            return
        self.set_durations(durations)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the history at start, then after jobs finish (batched)."""
        await self.refresh()
        task_status.started()
        while True:
            await self._stale.wait()
            self._stale = trio.Event()
            await self.refresh()
            await trio.sleep(REFRESH_EVERY)  # rate limit: the finishes meanwhile make one more read

    def eta(self, status: Status, now: float | None = None) -> DrainEta:
        """When the drain is expected to end, from the items that block a restart.

        It depends only on the work in flight, the durations and the time (an item passes its
        p90), so it is computed again only when one of those changed, the time at most once a
        second: a drain changes the status many times a second, and the ETA of 10,000 items
        takes ~12 ms. The same answer (the same object) serves the status, systemd's STATUS=,
        the page and the metric."""
        now = self.clock() if now is None else now
        key = (self.version, int(now))
        cached = self._eta
        if cached is not None and cached[0] == key and cached[1] is status.running_systems:
            return cached[2]
        eta = drain_eta(blocking(status.running_systems.items()), self.durations, now)
        self._eta = (key, status.running_systems, eta)
        return eta

    def preview(self, status: Status | None, deadline_seconds: float | None, cancel: bool | None) -> Preview:
        """What a deadline would do to the work that blocks a restart now. Without
        ``deadline_seconds``, the running drain's deadline; without ``cancel``, its choice."""
        if status is None:
            raise MaintdError("maintd is starting; try again", code="unavailable")
        now = self.clock()
        m = status.maintenance
        if deadline_seconds is not None:
            deadline = now + deadline_seconds
        elif m.enabled and m.deadline is not None:
            deadline = m.deadline
        else:
            raise BadRequest("no deadline to preview: give one (deadline_seconds), or enable maintenance with --deadline")
        if cancel is None:
            cancel = m.enabled and m.on_deadline == "cancel"
        items = blocking(status.running_systems.items())
        return Preview(
            now=now,
            deadline=deadline,
            cancel_at_deadline=cancel,
            drain=drain_eta(items, self.durations, now),
            items=deadline_preview(items, self.durations, now, deadline, cancel),
        )

    def seconds_left(self, status: Status | None) -> tuple[float, float] | None:
        """The metric's values: (p50, p90) seconds from now until drained; (0, 0) when drained;
        None when unknown (maintenance off, or an item without history)."""
        if status is None or not status.maintenance.enabled:
            return None
        if status.maintenance.safe_to_restart:
            return (0.0, 0.0)
        now = self.clock()
        eta = self.eta(status, now)
        if eta.p50 is None or eta.p90 is None:
            return None
        return (max(0.0, eta.p50 - now), max(0.0, eta.p90 - now))
