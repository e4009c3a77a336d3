"""The maintenance state machine: one table, no I/O.

Everything that changes the maintenance state goes through :meth:`Machine.fire`. An event
the table does not allow in the current state raises :class:`IllegalTransition` and
changes nothing (as h11's ``_state.py`` does).
"""

from __future__ import annotations

import enum

import msgspec

from .errors import IllegalTransition
from .types import MaintenanceState as S


class MaintenanceEvent(enum.StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"
    ALL_DRAINED = "all_drained"
    WORK_APPEARED = "work_appeared"


E = MaintenanceEvent

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
