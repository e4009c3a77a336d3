"""Messages between actors, grouped by who receives them. All are frozen msgspec Structs.

A ``reply`` field holds a :class:`~actors.future.CallbackFuture` for answers that come
later than the handler returns (a cancel waits on the subsystem that owns the item).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .types import InFlightItem, OnDeadline


class Msg(msgspec.Struct, frozen=True, kw_only=True):
    pass


# --- to every subsystem: the subsystem contract -----------------------------------------


class PauseIntake(Msg):
    drain_id: str


class ResumeIntake(Msg):
    drain_id: str


class ReportInFlight(Msg):
    pass


class Cancel(Msg):
    """Cancel one item. ``by`` is who asked (a user name, or ``deadline``)."""

    item_id: str
    by: str
    reason: str | None = None
    reply: Any = None


# --- from subsystems to the supervisor (always by tell) ---------------------------------


class IntakePaused(Msg):
    subsystem: str
    drain_id: str


class Notice(Msg):
    """Something a subsystem did on its own that watchers should see as an event (a job
    rescheduled because its agent was lost, the broker gone): published as ``event``."""

    subsystem: str
    event: str
    message: str


class InFlightReport(Msg):
    subsystem: str
    items: tuple[InFlightItem, ...]
    #: an external's report of what its process sent (not its actor's restored items)
    from_process: bool = False


class Drained(Msg):
    subsystem: str
    drain_id: str


class Cancelled(Msg):
    subsystem: str
    item_id: str
    by: str
    reason: str | None = None
    reply: Any = None


class CancelRefused(Msg):
    subsystem: str
    item_id: str
    code: str
    reason: str
    by: str
    reply: Any = None


class SubsystemFailed(Msg):
    subsystem: str
    generation: int
    error: str


# --- from the shell to the supervisor ---------------------------------------------------


class Enable(Msg):
    """``peer``: which process asked (its pid and command line), for the audit log."""

    by: str
    reason: str | None = None
    deadline_seconds: float | None = None
    on_deadline: OnDeadline = OnDeadline.WAIT
    peer: str | None = None
    #: Maintenance left on longer than this is raised (never turned off): see TTLPassed.
    ttl_seconds: float | None = None
    #: Compare-and-set: refused ``conflict`` unless the maintenance version is still this.
    if_version: int | None = None


class Disable(Msg):
    by: str
    reason: str | None = None
    peer: str | None = None
    #: Compare-and-set: refused ``conflict`` unless this drain is still the one on.
    if_drain_id: str | None = None


class Forget(Msg):
    """Clear the removed subsystem ``name`` (and the work it abandoned) from the status."""

    name: str
    by: str
    peer: str | None = None


class RequestCancel(Msg):
    """Ask answers once the cancel is dispatched; ``reply`` gets the subsystem's answer."""

    item: str
    by: str
    reply: Any
    reason: str | None = None
    peer: str | None = None


class Register(Msg):
    """A process joins as an external subsystem. ``link`` is its :class:`SubsystemLink`."""

    name: str
    link: Any
    by: str
    pid: int | None = None
    peer: str | None = None


class Unregister(Msg):
    name: str
    reason: str


class ForExternal(Msg):
    """To the supervisor: a message for an external subsystem's core, which runs in the
    supervisor's thread (:class:`actors.external.ExternalHost`): from its connection (the
    process's lines), from the supervisor itself (``PauseIntake``) or from a timer."""

    host: Any
    message: Any


class CancelTimedOut(Msg):
    """From the shell: the asker of this cancel stopped waiting (``cancel_timeout``).

    The cancel ends there: another one of the same item may be sent.
    """

    item_id: str
    reply: Any


class ReconnectGraceEnded(Msg):
    """A disconnected external subsystem did not come back (and report) in time."""

    name: str
    generation: int


class GetHistory(Msg):
    pass


class GetStatus(Msg):
    """Asked of the supervisor: its :class:`~actors.status.Status` now."""


# --- asked of a job server subsystem by the shell (and tests) ---------------------------


class GetInfo(Msg):
    """What the subsystem shows: the config guard its pipelines, the agents their agents."""


class GetQueueLength(Msg):
    """Asked of the scheduler: how many jobs wait for an agent."""


class DeadlineReached(Msg):
    drain_id: str


class TTLPassed(Msg):
    """The drain's ``--ttl`` passed (and, while it stays on, every hour after)."""

    drain_id: str


class RestartSubsystem(Msg):
    name: str
    generation: int


# --- from the wire to an external subsystem actor (its connection tells the actor) --------


class ExternalInFlight(Msg):
    items: tuple[InFlightItem, ...]


class ExternalIntakePaused(Msg):
    drain_id: str


class ExternalDrained(Msg):
    drain_id: str


class ExternalGone(Msg):
    """The process's connection closed; every line it sent before is already handled."""

    reason: str


class ExternalLeft(Msg):
    """To the supervisor, from an external subsystem's actor: remove me (after my last report)."""

    subsystem: str
    reason: str


class ExternalCancelResult(Msg):
    item: str
    ok: bool
    reason: str | None = None
