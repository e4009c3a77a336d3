"""The maintenance state machine: one table, no I/O.

Everything that changes the maintenance state goes through :meth:`Machine.fire`. An event
the table does not allow in the current state raises :class:`IllegalTransition` and
changes nothing (as h11's ``_state.py`` does). What decides the state lives here too, as
pure functions: :func:`subsystem_state` (one subsystem's state, from what the supervisor
knows of it) and :func:`automatic_event` (the draining ⇄ drained move those states call for).
"""

from __future__ import annotations

import enum

import msgspec

from .errors import IllegalTransition
from .types import MaintenanceState as S
from .types import SubsystemState


class MaintenanceEvent(enum.StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"
    ALL_DRAINED = "all_drained"
    WORK_APPEARED = "work_appeared"


E = MaintenanceEvent

#: Who the changes nobody asked for are by: the automatic transitions, a removed subsystem.
SYSTEM = "maintd"

TRANSITIONS: dict[S, dict[E, S]] = {
    S.NORMAL: {E.ENABLE: S.DRAINING},
    S.DRAINING: {E.ALL_DRAINED: S.DRAINED, E.DISABLE: S.NORMAL},
    S.DRAINED: {E.WORK_APPEARED: S.DRAINING, E.DISABLE: S.NORMAL},
}

_REFUSALS = {
    (S.DRAINING, E.ENABLE): "maintenance mode is already on (draining)",
    (S.DRAINED, E.ENABLE): "maintenance mode is already on (drained: safe to restart)",
    (S.NORMAL, E.DISABLE): "maintenance mode is not on",
}


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    event: MaintenanceEvent
    from_state: S
    to_state: S
    by: str
    at: float
    reason: str | None = None


class Machine:
    """The current state and the transition that led to it."""

    def __init__(self) -> None:
        self.state = S.NORMAL
        self.last: Transition | None = None

    def check(self, event: MaintenanceEvent) -> S:
        """The state ``event`` would lead to; raises :class:`IllegalTransition` and changes nothing."""
        new = TRANSITIONS[self.state].get(event)
        if new is None:
            message = _REFUSALS.get((self.state, event), f"event {event.value!r} is not allowed in state {self.state.value!r}")
            raise IllegalTransition(message)
        return new

    def fire(self, event: MaintenanceEvent, *, by: str, at: float, reason: str | None = None) -> Transition:
        new = self.check(event)
        transition = Transition(event=event, from_state=self.state, to_state=new, by=by, at=at, reason=reason)
        self.state = new
        self.last = transition
        return transition

    @property
    def enabled(self) -> bool:
        return self.state is not S.NORMAL


def subsystem_state(
    *,
    disconnected: bool,
    failed: bool,
    reported: bool,
    draining: bool,
    paused: bool,
    drained: bool,
    blocking: bool,
) -> SubsystemState:
    """One subsystem's state, from what the supervisor knows of it.

    ``draining``: maintenance is on (there is a drain). ``paused`` and ``drained``: the
    subsystem acknowledged this drain's PauseIntake, and said it is drained, for this
    drain. ``blocking``: it has work in flight that blocks a restart. The first rule that
    applies wins: an external whose process went away, then a failed actor, then one that
    has not reported since it (re)started.
    """
    if disconnected:
        return SubsystemState.DISCONNECTED
    if failed:
        return SubsystemState.FAILED
    if not reported:
        return SubsystemState.UNKNOWN
    if not draining:
        return SubsystemState.RUNNING
    if not paused:
        return SubsystemState.PAUSING
    if drained and not blocking:
        return SubsystemState.DRAINED
    return SubsystemState.PAUSED


def automatic_event(state: S, subsystems: dict[str, SubsystemState]) -> tuple[MaintenanceEvent, str] | None:
    """The transition nobody asks for, and why: draining ⇄ drained as the subsystems stand.

    Draining becomes drained when every subsystem is drained (also when there are none);
    drained goes back to draining when one is not any more. None when nothing moves (and
    always in normal: only a person turns maintenance on or off).
    """
    waiting = [name for name, sub in subsystems.items() if sub is not SubsystemState.DRAINED]
    if state is S.DRAINING and not waiting:
        return E.ALL_DRAINED, "every subsystem is drained"
    if state is S.DRAINED and waiting:
        return E.WORK_APPEARED, "not drained any more: " + ", ".join(waiting)
    return None
