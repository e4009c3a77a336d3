"""What the supervisor knows of one subsystem: its actor, its in-flight work (counted and
grouped once per report), its pause and drain, its failures, and for an external process
that went away, the work that keeps blocking until it comes back or the grace ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from .pending import WritesPending
from .safety import blocking
from .types import (
    GROUP_OF_KIND,
    InFlightItem,
)

log = logging.getLogger("maintd.supervisor")

#: Starts a subsystem actor (an external's ExternalHost): (generation, items to restore) -> its ref.
Spawn = Callable[[int, tuple[InFlightItem, ...]], Any]


class SubsystemView:
    """What the supervisor knows of one subsystem."""

    def __init__(self, name: str, spawn: Spawn, *, external: bool) -> None:
        self.name = name
        self.spawn = spawn
        self.external = external
        self.generation = 0
        self.ref: Any = None
        self.reported = False
        self.failed = False
        self.failures = 0
        self.last_error: str | None = None
        self._items: tuple[InFlightItem, ...] = ()
        self.groups: dict[str, tuple[InFlightItem, ...]] = {}
        self.blocking_count = 0
        self.paused_for: str | None = None
        self.drained_for: str | None = None
        #: when it was last sent a PauseIntake (how long a subsystem that has not answered has been silent)
        self.pause_asked_at: float | None = None
        self.leaving: str | None = None
        #: its writes that wait for the store (WritesPending), None when none
        self.writes: WritesPending | None = None
        # An external whose process disconnected with blocking work: why, and until when its
        # work keeps blocking. After it registers again, ``abandoned`` holds the old
        # process's work (still blocking) until the new one reports (an InFlightReport
        # ``from_process``) or the grace ends.
        self.disconnected: str | None = None
        self.reconnect_by: float | None = None
        self.disconnects = 0
        self.abandoned: tuple[InFlightItem, ...] = ()
        self._shown: tuple[InFlightItem, ...] = ()

    def start(self) -> None:
        self.ref = self.spawn(self.generation, self._items)

    def tell(self, message: Any) -> bool:
        """Tell the subsystem's actor; False when there is none or it has died.

        An actor that died has its ``SubsystemFailed`` on the way to the supervisor:
        ``on_failed`` marks the view failed and ``on_restart`` gives the new actor what a
        drain needs (it starts paused and is sent the PauseIntake again), so a tell it
        missed is not lost, and the supervisor never raises halfway through a change it
        has already made and audited.
        """
        if self.ref is None:
            return False
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            log.info("%s: its actor has died; %s waits for its restart", self.name, type(message).__name__)
            return False
        return True

    @property
    def items(self) -> tuple[InFlightItem, ...]:
        """Everything in flight here: the process's work, and its predecessor's it has not reported on."""
        return self._shown

    @items.setter
    def items(self, items: tuple[InFlightItem, ...]) -> None:
        self._items = items
        self._recount()

    def set_abandoned(self, abandoned: tuple[InFlightItem, ...]) -> None:
        self.abandoned = abandoned
        self._recount()

    def _recount(self) -> None:
        items = self._items
        if self.abandoned:
            ids = {item.id for item in items}
            items = items + tuple(item for item in self.abandoned if item.id not in ids)
        self._shown = items
        self.blocking_count = len(blocking(items))
        groups: dict[str, list[InFlightItem]] = {}
        for item in items:
            groups.setdefault(GROUP_OF_KIND.get(item.kind, "other"), []).append(item)
        self.groups = {group: tuple(listed) for group, listed in groups.items()}
