"""The subsystem contract, shared by every subsystem.

:class:`SubsystemCore` holds the intake gate and the in-flight work and decides when to
answer ``IntakePaused`` and ``Drained``; it does no I/O and is tested without threads.
:class:`SubsystemActor` is the thin pykka actor over it. Subclasses override the ``on_*``
hooks to start or stop their own intake and to carry out a cancel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pykka

from .errors import MaintdError, NotCancellable, NotFound, SubsystemGone
from .future import CallbackFuture
from .messages import (
    Cancel,
    Cancelled,
    CancelRefused,
    Drained,
    InFlightReport,
    IntakePaused,
    PauseIntake,
    ReportInFlight,
    ResumeIntake,
    SubsystemFailed,
)
from .safety import blocking
from .types import MATERIAL_UPDATE, MDU_REFUSAL, InFlightItem

Emit = Callable[[Any], None]


class SubsystemCore:
    """Intake gate plus in-flight work for one subsystem.

    ``emit`` sends a message to the supervisor. The core sends ``InFlightReport`` whenever
    its work changes, ``IntakePaused`` when its gate closes for a drain, and ``Drained``
    once per drain when the gate is closed and nothing that blocks a restart is in flight.
    Repeating ``PauseIntake`` for the same drain answers ``IntakePaused`` again.
    """

    def __init__(self, name: str, emit: Emit, items: Iterable[InFlightItem] = ()) -> None:
        self.name = name
        self.emit = emit
        self.paused_for: str | None = None
        self.items: dict[str, InFlightItem] = {item.id: item for item in items}
        self._drained_sent_for: str | None = None

    # -- the contract ------------------------------------------------------------------

    @property
    def intake_open(self) -> bool:
        return self.paused_for is None

    def pause(self, drain_id: str) -> None:
        self.paused_for = drain_id
        self._drained_sent_for = None
        self.on_pause(drain_id)
        self.acknowledge_pause(drain_id)

    def acknowledge_pause(self, drain_id: str) -> None:
        self.emit(IntakePaused(subsystem=self.name, drain_id=drain_id))
        self.check_drained()

    def resume(self, drain_id: str) -> None:
        self.paused_for = None
        self._drained_sent_for = None
        self.on_resume(drain_id)

    def report(self) -> None:
        self.emit(InFlightReport(subsystem=self.name, items=tuple(self.items.values())))

    def cancel(self, msg: Cancel) -> None:
        item = self.items.get(msg.item_id)
        if item is None:
            self.refuse(msg, NotFound(f"no item {msg.item_id!r} in flight in {self.name}"))
        elif item.kind == MATERIAL_UPDATE:
            self.refuse(msg, NotCancellable(MDU_REFUSAL))
        elif not item.cancellable:
            self.refuse(msg, NotCancellable(f"{item.id} ({item.kind}) does not accept cancel"))
        else:
            self.on_cancel(item, msg)

    def refuse(self, msg: Cancel, error: MaintdError) -> None:
        self.emit(
            CancelRefused(
                subsystem=self.name,
                item_id=msg.item_id,
                code=error.code,
                reason=error.message,
                by=msg.by,
                reply=msg.reply,
            )
        )

    def accept_cancel(self, msg: Cancel) -> None:
        self.emit(Cancelled(subsystem=self.name, item_id=msg.item_id, by=msg.by, reason=msg.reason, reply=msg.reply))

    # -- work --------------------------------------------------------------------------

    def set_items(self, items: Iterable[InFlightItem]) -> None:
        self.items = {item.id: item for item in items}
        self.report()
        self.check_drained()

    def add(self, item: InFlightItem) -> None:
        self.items[item.id] = item
        self.report()
        self.check_drained()

    def remove(self, item_id: str) -> None:
        if self.items.pop(item_id, None) is not None:
            self.report()
            self.check_drained()

    @property
    def blocking(self) -> list[InFlightItem]:
        return blocking(self.items.values())

    def drain_complete(self) -> bool:
        """Whether the drain is done here; subclasses may ask for more (an external's word)."""
        return self.paused_for is not None and not self.blocking

    def check_drained(self) -> None:
        if self.drain_complete():
            if self._drained_sent_for != self.paused_for:
                self._drained_sent_for = self.paused_for
                self.emit(Drained(subsystem=self.name, drain_id=self.paused_for))
        else:
            self._drained_sent_for = None

    # -- hooks -------------------------------------------------------------------------

    def on_pause(self, drain_id: str) -> None:
        """Close the subsystem's own intake."""

    def on_resume(self, drain_id: str) -> None:
        """Open the subsystem's own intake again."""

    def on_cancel(self, item: InFlightItem, msg: Cancel) -> None:
        """Carry out a cancel the core has checked. The default accepts and drops the item."""
        self.accept_cancel(msg)
        self.remove(item.id)

    def start(self) -> None:
        """Called once the actor runs (also after a restart): arm timers, ask for work."""

    def busy(self) -> bool:
        """Whether more messages wait in the actor's inbox (the actor sets this; a bare core: never).

        A core may put off work it can do for several messages at once until it is not
        busy: the actor calls :meth:`on_idle` once its inbox is empty.
        """
        return False

    def on_idle(self) -> None:
        """Called by the actor after a message that left its inbox empty: do what was put off."""

    def handle(self, message: Any) -> Any:
        """Handle a subsystem-specific message and return the answer (for an ``ask``).

        Return ``NotImplemented`` for a message this subsystem does not know.
        """
        return NotImplemented


class SubsystemActor(pykka.ThreadingActor):
    """Runs a :class:`SubsystemCore` and tells the supervisor what it emits.

    An exception in a handler stops this actor; ``on_failure`` tells the supervisor, which
    shows the subsystem ``failed`` and starts a fresh actor.
    """

    use_daemon_thread = True

    def __init__(self, core: SubsystemCore, supervisor: pykka.ActorRef[Any], generation: int = 0) -> None:
        super().__init__()
        self.core = core
        self.supervisor = supervisor
        self.generation = generation
        core.busy = self._busy  # type: ignore[method-assign]

    def _busy(self) -> bool:
        return not self.actor_inbox.empty()

    @staticmethod
    def _create_future() -> CallbackFuture:
        return CallbackFuture()

    def on_start(self) -> None:
        try:
            self.core.report()
            self.core.start()
        except Exception as exc:
            # pykka stops an actor whose on_start raises without calling on_failure.
            self.supervisor.tell(SubsystemFailed(subsystem=self.core.name, generation=self.generation, error=repr(exc)))
            raise

    def on_receive(self, message: Any) -> Any:
        result = deliver(self.core, message)
        if self.actor_inbox.empty():
            self.core.on_idle()
        return result

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka has marked this actor stopped: nothing new arrives. A cancel still queued
        # here would never be answered, so it is answered now.
        while not self.actor_inbox.empty():
            message = self.actor_inbox.get_nowait().message
            if isinstance(message, Cancel) and message.reply is not None and not message.reply.done:
                message.reply.set_exception(
                    SubsystemGone(f"{self.core.name} failed before it answered the cancel of {message.item_id}; try again")
                )
        self.supervisor.tell(SubsystemFailed(subsystem=self.core.name, generation=self.generation, error=repr(exception_value)))


def deliver(core: SubsystemCore, message: Any) -> Any:
    """One message to its core: the subsystem contract's four to their methods, anything else
    to ``handle`` (its answer returned). A message the core does not know raises TypeError.
    The actors of built-in subsystems and the hosts of external ones both deliver through it."""
    match message:
        case PauseIntake(drain_id=drain_id):
            core.pause(drain_id)
        case ResumeIntake(drain_id=drain_id):
            core.resume(drain_id)
        case ReportInFlight():
            core.report()
        case Cancel():
            core.cancel(message)
        case _:
            result = core.handle(message)
            if result is NotImplemented:
                raise TypeError(f"{core.name}: unexpected message {type(message).__name__}")
            return result
    return None
