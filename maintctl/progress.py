"""What ``maintctl wait`` prints while it waits: one line a change, as ``kubectl drain`` does.

Each status is boiled down to facts (the maintenance state, each subsystem's state, each
item that blocks a restart); :meth:`Changes.lines` compares them with the last status and
says what changed, in words: ``agents/job-3 build/7/test/unit still building (4m12s)``,
``agents/job-3 build/7/test/unit done (4m40s)``, ``materials drained``. What an item is
comes from its fields (pipeline, counter, stage, job, material), never from its
description, which is only the fallback for an external subsystem's own kinds.
"""

from __future__ import annotations

import time

from daemon.times import span

from . import render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .follow import Subscription

#: ``wait`` repeats what still blocks after this long without a change.
REMIND_SECONDS = 60.0

#: What an item of a kind is doing, in words.
DOING = {"building_job": "building", "material_update": "updating", "pending_write": "waiting to be written"}


def what(item: dict[str, Any]) -> str:
    """``build/7/test/unit`` for a job, the material's name for a material update, else its description."""
    if item.get("pipeline") and item.get("job"):
        return "/".join(str(item[k]) for k in ("pipeline", "counter", "stage", "job") if item.get(k) is not None)
    material = item.get("material")
    if isinstance(material, dict) and material.get("name"):
        return f"material {material['name']}"
    return item.get("description") or item.get("kind", "")


def blocking(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The items that block a restart, by id (escaped for a terminal)."""
    return {item["id"]: item for item in render.remaining(status) if item.get("blocks_restart", True)}


class Changes:
    """The facts of the last status seen, and the lines that say how the next one differs."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.subsystems: dict[str, str] = {}
        self.items: dict[str, dict[str, Any]] = {}

    def lines(self, status: dict[str, Any], now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        clean = render.clean(status)
        out = []
        items = blocking(status)
        for item_id, item in self.items.items():
            if item_id not in items:
                out.append(f"{item_id} {what(item)} done ({span(now - (item.get('started_at') or now))})")
        for item_id, item in items.items():
            if item_id not in self.items:
                out.append(self.still(item, now))
        self.items = items
        subsystems = {s["name"]: s["state"] for s in clean["subsystems"]}
        for name, sub_state in subsystems.items():
            if self.subsystems.get(name) != sub_state and (name in self.subsystems or sub_state != "running"):
                out.append(f"{name} {sub_state}")
        for name in self.subsystems.keys() - subsystems.keys():
            out.append(f"{name} removed")
        self.subsystems = subsystems
        m = clean["maintenance"]
        state = m["state"] if m["enabled"] else "off"
        if state != self.state:
            out.append(f"maintenance mode {state}" if state != "off" else "maintenance mode off; waiting for it to be on")
            self.state = state
        return out

    def still(self, item: dict[str, Any], now: float) -> str:
        doing = DOING.get(item.get("kind", ""), "running")
        return f"{item['id']} {what(item)} still {doing} ({span(now - (item.get('started_at') or now))})"

    def reminder(self, now: float | None = None) -> list[str]:
        """Every item still blocking, with how long it has run (for a wait that has said nothing for a while)."""
        now = time.time() if now is None else now
        return [self.still(item, now) for item in self.items.values()]


def wait_until_safe(watch: Subscription, timeout: float | None, say: Callable[[str], None] | None) -> tuple[bool, dict[str, Any]]:
    """``(True, status)`` once it is safe to restart, ``(False, status)`` when ``timeout``
    (seconds) passes first. ``say`` (None: quiet) gets each change as a line, and what still
    blocks after :data:`REMIND_SECONDS` without one. ``watch`` is started here."""
    deadline = None if timeout is None else time.monotonic() + timeout
    changes = Changes()
    status = watch.start()
    safe = status["maintenance"]["safe_to_restart"]
    said = time.monotonic()
    while not safe:
        if say is not None:
            lines = changes.lines(status)
            if not lines and time.monotonic() - said >= REMIND_SECONDS:
                lines = changes.reminder()
            for line in lines:
                say(line)
            said = time.monotonic() if lines else said
        wake = None if say is None else time.monotonic() + REMIND_SECONDS
        message = watch.next(wake if deadline is None or (wake is not None and wake < deadline) else deadline)
        if message is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False, watch.status() or status
            continue  # time for a reminder
        if message["type"] == "snapshot":
            status = message["status"]
            safe = status["maintenance"]["safe_to_restart"]
            continue
        # Each event carries the maintenance state as of that event: it decides.
        safe = message["maintenance"]["safe_to_restart"]
        if not safe and say is not None:
            status = watch.status() or status
    return True, watch.status() or status
