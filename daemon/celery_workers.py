"""What maintd knows of the Celery workers: each node, when it was last heard from (the
daemon's clock: hosts' clocks differ), whether it is online, and its slots (asked once of
each worker with Celery's ``inspect stats``). The runner feeds it Celery's events and turns
it into the agents' :class:`~actors.remote_agents.WorkersSeen`; the agents decide what is lost."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from actors.remote_agents import RemoteWorker, WorkersSeen
from remote import contract

__all__ = ["CONTROL_TIMEOUT", "WorkerTable"]

log = logging.getLogger("maintd.celery")

#: how long a control call (inspect, revoke) waits for the workers' answers
CONTROL_TIMEOUT = 1.0


@dataclass
class _Worker:
    node: str
    heartbeat: float
    active: int = 0
    online: bool = True
    slots: int = 0
    asking: bool = False


class WorkerTable:
    """The workers by node name. ``spawn(fn, *args)`` starts a trio task; ``changed()`` is
    called when the agents should hear of a change (a worker, its slots, online or not)."""

    def __init__(self, app: Any, *, spawn: Callable[..., None], changed: Callable[[], None]) -> None:
        self.app = app
        self.spawn = spawn
        self.changed = changed
        self.nodes: dict[str, _Worker] = {}

    def nodes_of(self, agent: str) -> list[str]:
        return [node for node in self.nodes if contract.agent_of(node) == agent]

    def heard(self, node: str, at: float) -> None:
        worker = self.nodes.get(node)
        if worker is not None:
            worker.heartbeat = max(worker.heartbeat, at)

    def event(self, kind: str, node: str, event: dict[str, Any], at: float) -> None:
        """A ``worker-online``, ``-heartbeat`` or ``-offline`` event, received at ``at``."""
        if not node or "@" not in node:
            return
        worker = self.nodes.get(node)
        if worker is None:
            worker = self.nodes[node] = _Worker(node=node, heartbeat=at)
            log.info("agent %s seen (%s)", contract.agent_of(node), node)
        worker.heartbeat = max(worker.heartbeat, at)
        worker.active = int(event.get("active") or 0)
        if kind == "worker-offline":
            worker.online = False
            log.info("agent %s went offline", contract.agent_of(node))
            self.changed()
            return
        came_back = not worker.online
        worker.online = True
        if worker.slots == 0 and not worker.asking:
            self.spawn(self._learn_slots, worker)
        if came_back:
            self.changed()

    def ask_missing_slots(self) -> None:
        for worker in self.nodes.values():
            if worker.online and worker.slots == 0 and not worker.asking:
                self.spawn(self._learn_slots, worker)

    async def _learn_slots(self, worker: _Worker) -> None:
        worker.asking = True
        try:

            def stats() -> Any:
                return self.app.control.inspect(destination=[worker.node], timeout=CONTROL_TIMEOUT).stats() or {}

            answer = (await trio.to_thread.run_sync(stats)).get(worker.node) or {}
            slots = int(((answer.get("pool") or {}).get("max-concurrency")) or 0)
            if slots:
                worker.slots = slots
                log.info("agent %s has %d slot(s)", contract.agent_of(worker.node), slots)
                self.changed()
        except Exception as exc:  # noqa: BLE001 - asked again at its next heartbeat
            log.debug("cannot ask %s for its slots: %s", worker.node, exc)
        finally:
            worker.asking = False

    def seen(self, broker_error: str | None) -> WorkersSeen:
        """What the agents are told: every worker, and whether the broker answers."""
        workers = tuple(
            RemoteWorker(
                name=contract.agent_of(w.node),
                host=w.node.partition("@")[2],
                node=w.node,
                slots=w.slots,
                active=w.active,
                heartbeat=w.heartbeat,
                online=w.online,
            )
            for w in self.nodes.values()
        )
        return WorkersSeen(workers=workers, broker_error=broker_error)
