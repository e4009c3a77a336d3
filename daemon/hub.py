"""The status hub: the newest status the supervisor published, and the watchers.

The supervisor publishes from its thread; the hub takes each publication in the trio
thread (``run_sync_soon`` keeps their order). Events are fanned out to the watchers in
batches: every event that arrived in one pass of trio's entry queue goes to each watcher
as one write, so a burst of a hundred events costs each watcher one push, not a hundred.
Status requests are answered from the newest snapshot, encoded once; its running systems
(nearly all of its bytes) are encoded again only when the supervisor built new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import trio

from actors.status import AgentsBackend, Event, Status

from .bridge import Bridge

if TYPE_CHECKING:
    from .foresight import Foresight

log = logging.getLogger("maintd.hub")


class Watcher(Protocol):
    def push(self, *parts: bytes) -> None: ...


class StatusHub:
    """Implements the :class:`~actors.ports.StatusSink` port."""

    def __init__(self, bridge: Bridge, on_fatal: Callable[[str], None]) -> None:
        self.bridge = bridge
        self.on_fatal = on_fatal
        self.status: Status | None = None
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Status, Event | None], None]] = []
        self._status_json: bytes | None = None
        #: set once the supervisor has started every built-in subsystem (its "started" event)
        #: and a status has them: the socket serves nobody before, so no request finds a
        #: subsystem not started yet (a status comes after each one is added)
        self.ready = trio.Event()
        self._started = False
        self._inflight_json: bytes | None = None
        self._running: Any = None  # the RunningSystems last encoded, and its encoding
        self._running_raw = msgspec.Raw(b"{}")
        self._pending: list[Event] = []
        self._encoder = msgspec.json.Encoder()
        # In a burst of reports the supervisor sends events ahead of the status that has
        # them (it builds that once, at the end of the burst): meanwhile the snapshot is
        # older than the events already sent, and a new watcher waits for the next one.
        self._stale = False
        self._waiting: dict[Watcher, Callable[[bytes], tuple[bytes, ...]]] = {}
        #: one line on how jobs' processes are tracked, added to every status sent
        self.job_tracking: str | None = None
        #: the remote agents' backend, added to every status sent (None: local agents)
        self.agents_backend: AgentsBackend | None = None
        #: whether any config repository is configured (the status page's checklist; None: not known)
        self.config_repos: bool | None = None
        #: computes the drain's ETA added to every status sent (None: no ``eta``)
        self.foresight: Foresight | None = None
        self._eta: Any = None  # the DrainEta encoded in _eta_raw
        self._eta_raw: msgspec.Raw | None = None

    # -- the port (any thread) -------------------------------------------------------------

    def publish(self, status: Status | None, event: Event | None) -> None:
        self.bridge.call_soon(self._apply, status, event)

    def fatal(self, error: str) -> None:
        self.bridge.call_soon(self.on_fatal, error)

    # -- trio thread -------------------------------------------------------------------

    def _apply(self, status: Status | None, event: Event | None) -> None:
        if status is None and event is not None:
            self._stale = True
        if event is not None and event.event == "started":
            self._started = True
        if status is not None:
            self.status = status
            self._stale = False
            if self._started:
                self.ready.set()
            self._status_json = self._inflight_json = None
            for listener in self.listeners:
                try:
                    listener(status, event)
                except Exception:
                    log.exception("status listener failed")
        if event is not None and self.status is not None and self.watchers:
            self._pending.append(event)
            if len(self._pending) == 1:
                # After the rest of this batch of calls: the burst goes out at once.
                self.bridge.after_batch(self.flush)
        if status is not None and self._waiting:
            waiting, self._waiting = self._waiting, {}
            for watcher, reply in waiting.items():
                self.subscribe(watcher, reply)

    def set_agents_backend(self, backend: AgentsBackend | None) -> None:
        """The remote agents' backend changed (trio thread): in every status sent from now on."""
        self.agents_backend = backend
        self._status_json = None

    def flush(self) -> None:
        """Send the events not sent yet to every watcher (trio thread)."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        data = self._encoder.encode_lines(events)
        for watcher in list(self.watchers):
            watcher.push(data)

    def subscribe(self, watcher: Watcher, reply: Callable[[bytes], tuple[bytes, ...]]) -> None:
        """Add a watcher: ``reply(status_json)`` first, then every event after that snapshot.

        While the snapshot lags behind events already sent (a burst), the watcher is added
        when the status that has them arrives, so it misses no change.
        """
        if self._stale or self.status is None:
            self._waiting[watcher] = reply
            return
        self.flush()  # events already in the snapshot are not the new watcher's
        self.watchers.add(watcher)
        watcher.push(*reply(self.status_json()))

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        self._waiting.pop(watcher, None)

    def status_json(self) -> bytes:
        """The newest status, encoded once; its ``eta`` (the foresight's, which computes it again
        only when the work, the durations or the second changed) is encoded again when it is new."""
        if self.foresight is not None:
            status = self.status
            assert status is not None
            eta = self.foresight.eta(status)
            if eta is not self._eta:
                self._eta, self._eta_raw = eta, msgspec.Raw(self._encoder.encode(eta))
                self._status_json = None
        if self._status_json is None:
            status = self.status
            assert status is not None
            if status.running_systems is not self._running:
                self._running = status.running_systems
                self._running_raw = msgspec.Raw(self._encoder.encode(status.running_systems))
            # The same shape, with the running systems (and the ETA) already encoded.
            self._status_json = self._encoder.encode(
                msgspec.structs.replace(
                    status,
                    running_systems=self._running_raw,
                    job_tracking=self.job_tracking,
                    eta=self._eta_raw,
                    agents_backend=self.agents_backend,
                )
            )
        return self._status_json

    def inflight_json(self) -> bytes:
        """``items``: the work in flight; ``abandoned``: what removed subsystems left (nobody's to
        finish or cancel; ``forget`` clears it), each with its subsystem's name."""
        if self._inflight_json is None:
            items: list[Any] = []
            abandoned: list[Any] = []
            if self.status is not None:
                items = list(self.status.running_systems.items())
                abandoned = [item for removed in self.status.removed for item in removed.abandoned]
            self._inflight_json = msgspec.json.encode({"items": items, "abandoned": abandoned})
        return self._inflight_json
