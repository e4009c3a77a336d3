"""Ports: the effects an actor may ask for. ``daemon/`` implements them; tests fake them.

Every method may be called from an actor's thread and must return at once.
"""

from __future__ import annotations

from typing import Any, Protocol

from .status import Event, Status


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...


class Timers(Protocol):
    def arm(self, key: str, delay: float, message: Any, target: Any = None) -> None:
        """After ``delay`` seconds, tell ``target`` (default: the supervisor) ``message``.

        Re-arming a key replaces it; keys are global, so subsystems prefix theirs.
        """
        ...

    def disarm(self, key: str) -> None:
        """Forget ``key``; a timer that already fired is not taken back."""
        ...


class StatusSink(Protocol):
    def publish(self, status: Status | None, event: Event | None) -> None:
        """The newest status (None: not rebuilt yet, a newer one follows) and the event
        that produced it (None for a quiet refresh)."""
        ...

    def fatal(self, error: str) -> None:
        """The supervisor cannot go on; the daemon must exit non-zero."""
        ...


class SubsystemLink(Protocol):
    """The connection of an external subsystem, seen from its actor."""

    def send(self, message: dict[str, Any]) -> None:
        """Queue one wire message for the process (``pause_intake``, ``cancel``, ...)."""
        ...

    def route_to(self, actor: Any) -> None:
        """Hand the process's own messages (``ExternalInFlight``, ...) to ``actor.tell``
        from now on: the subsystem's :class:`~actors.external.ExternalHost`, or the one that
        replaced it after a failure. Called before the supervisor has the new host, so
        nothing the process sends after its ``register`` reply finds none."""
        ...
