"""The status hub: the newest status the supervisor published, and the watchers.

The supervisor publishes from its thread; the hub takes each publication in the trio
thread (``run_sync_soon`` keeps their order) and fans the event out to every watcher's
bounded queue. Status requests are answered from the newest snapshot, encoded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import trio

from actors.status import Event, Status

from .bridge import Bridge

log = logging.getLogger("maintd.hub")


class Watcher(Protocol):
    def push(self, data: bytes) -> None: ...


class StatusHub:
    """Implements the :class:`~actors.ports.StatusSink` port."""

    def __init__(self, bridge: Bridge, on_fatal: Callable[[str], None]) -> None:
        self.bridge = bridge
        self.on_fatal = on_fatal
        self.status: Status | None = None
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Status, Event | None], None]] = []
        self._status_json: bytes | None = None
        self.ready = trio.Event()
        self._inflight_json: bytes | None = None

    # -- the port (any thread) -------------------------------------------------------------

    def publish(self, status: Status | None, event: Event | None) -> None:
        self.bridge.call_soon(self._apply, status, event)

    def fatal(self, error: str) -> None:
        self.bridge.call_soon(self.on_fatal, error)

    # -- trio thread -------------------------------------------------------------------

    def _apply(self, status: Status | None, event: Event | None) -> None:
        if status is not None:
            self.status = status
            self.ready.set()
            self._status_json = self._inflight_json = None
        if self.status is None:
            return
        for listener in self.listeners:
            try:
                listener(self.status, event)
            except Exception:
                log.exception("status listener failed")
        if event is not None and self.watchers:
            line = msgspec.json.encode(event) + b"\n"
            for watcher in list(self.watchers):
                watcher.push(line)

    def status_json(self) -> bytes:
        if self._status_json is None:
            self._status_json = msgspec.json.encode(self.status)
        return self._status_json

    def inflight_json(self) -> bytes:
        if self._inflight_json is None:
            items: list[Any] = []
            if self.status is not None:
                rs = self.status.running_systems
                items = [*rs.material_update_in_progress, *rs.building_jobs, *rs.scheduled_jobs, *rs.other]
            self._inflight_json = msgspec.json.encode({"items": items})
        return self._inflight_json
