"""Which subsystems the supervisor drives: they register, leave, come back, and are removed.

:class:`Roster` is a part of :class:`~actors.supervisor.SupervisorCore` (one of its bases). A
built-in subsystem is added once at start-up; an external one registers over its connection
and, when the connection closes, is removed once its actor has passed on what it sent. An
external whose process went away with blocking work stays ``disconnected`` (its work keeps
blocking) for ``reconnect_grace``: until the same name registers again and reports, or the
grace ends.
"""

from __future__ import annotations

import collections
from typing import Any

from .errors import Conflict, NotFound, StillLeaving
from .maintenance import SYSTEM
from .messages import (
    ExternalGone,
    Forget,
    PauseIntake,
    ReconnectGraceEnded,
)
from .peers import Peers
from .ports import Clock, Timers
from .status import RemovedSubsystem
from .view import Spawn, SubsystemView


class Roster:
    """The subsystems of :class:`~actors.supervisor.SupervisorCore`: added, gone, back, removed."""

    # The core's state, used here (set in SupervisorCore.__init__).
    clock: Clock
    timers: Timers
    peers: Peers | None
    views: dict[str, SubsystemView]
    drain_id: str | None
    reconnect_grace: float
    removed: collections.deque[RemovedSubsystem]
    # And its recompute(), record(), audit(), audit_after() and publish().

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
            view.pause_asked_at = self.clock.now()
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
        if view.items:
            view.failures += 1  # its work is abandoned, or blocks with nobody to end it: a failure
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
        self.start_paused(view)
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

    def start_paused(self, view: SubsystemView) -> None:
        """Start the view's actor (again), asked at once to pause its intake if a drain is on."""
        self.start_view(view)
        if self.drain_id is not None:
            view.tell(PauseIntake(drain_id=self.drain_id))
            view.pause_asked_at = self.clock.now()

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
        self.removed.append(
            RemovedSubsystem(name=name, at=self.clock.now(), reason=reason, abandoned=abandoned, failures=view.failures)
        )
        self.record("subsystem_removed", by=SYSTEM, reason=reason, item=name)
        self.recompute()
        self.publish(
            "subsystem_removed",
            subsystem=name,
            items=abandoned,
            message=f"{name} removed ({reason}); {len(abandoned)} item(s) abandoned",
        )

    def forget(self, msg: Forget) -> dict[str, Any]:
        """An admin clears a removed subsystem from the status: its abandoned work is nobody's
        to finish or cancel any more. Audited before it takes effect; NotFound when no removed
        subsystem has that name."""
        gone = [r for r in self.removed if r.name == msg.name]
        if not gone:
            raise NotFound(f"no removed subsystem {msg.name!r} (`maintctl status` lists them under Removed subsystems)")
        count = sum(len(r.abandoned) for r in gone)
        detail = "; ".join(part for part in (f"{count} abandoned item(s) cleared", msg.peer) if part)
        self.audit("forget", msg.by, self.clock.now(), target=msg.name, detail=detail)
        kept = [r for r in self.removed if r.name != msg.name]
        self.removed.clear()
        self.removed.extend(kept)
        self.record("forget", by=msg.by, item=msg.name)
        message = f"{msg.by} cleared {msg.name} ({count} abandoned item(s))"
        self.publish("subsystem_forgotten", subsystem=msg.name, message=message)
        return {"subsystem": msg.name, "abandoned_cleared": count}
