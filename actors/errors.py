"""One exception hierarchy for every refusal the actors can give.

Each error carries a stable ``code`` that the control socket sends on the wire, and a
message that names the broken rule and the state it was broken in.
"""

from __future__ import annotations


class MaintdError(Exception):
    """A request that cannot be carried out. ``code`` is stable; the message is for people."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(MaintdError):
    code = "bad_request"


class Conflict(MaintdError):
    """The request contradicts the current state (GoCD answers 409)."""

    code = "conflict"


class NotFound(MaintdError):
    code = "not_found"


class NotCancellable(MaintdError):
    code = "not_cancellable"


class Forbidden(MaintdError):
    code = "forbidden"


class SubsystemGone(MaintdError):
    """The subsystem that held the item went away before it answered."""

    code = "subsystem_gone"


class IllegalTransition(Conflict):
    """An event that the maintenance state machine does not accept in its current state."""


class StillLeaving(Conflict):
    """A name whose process's connection is closing: registering again succeeds a moment later."""
