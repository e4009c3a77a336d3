"""An external subsystem: a process on the host that joined over the control socket.

Its actor speaks the same contract as every subsystem, but the gate and the work live in
the process: ``PauseIntake`` becomes a ``pause_intake`` line, and ``IntakePaused`` is
answered only once the process says ``intake_paused``. The drain is complete here when
the process has said ``drained`` for this drain and reports nothing that blocks a restart.

The core runs in the supervisor's thread (:class:`ExternalHost`): the connection hands
the process's lines to it (its link's ``route_to``), and they cross one thread, trio's to
the supervisor's, as a built-in's reports cross one, its actor's to the supervisor's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pykka

from .errors import Conflict, NotCancellable, SubsystemGone
from .messages import (
    Cancel,
    CancelTimedOut,
    ExternalCancelResult,
    ExternalDrained,
    ExternalGone,
    ExternalInFlight,
    ExternalIntakePaused,
    ExternalLeft,
    ForExternal,
    InFlightReport,
    ReportInFlight,
    SubsystemFailed,
)
from .ports import SubsystemLink
from .subsystem import Emit, SubsystemCore, deliver
from .types import InFlightItem

log = logging.getLogger("maintd.external")


class ExternalCore(SubsystemCore):
    def __init__(self, name: str, emit: Emit, link: SubsystemLink, items: Iterable[InFlightItem] = ()) -> None:
        super().__init__(name, emit, items)
        self.link = link
        self.acked_for: str | None = None
        self.said_drained_for: str | None = None
        self.pending: dict[str, Cancel] = {}

    def pause(self, drain_id: str) -> None:
        self.paused_for = drain_id
        self.acked_for = None
        self.said_drained_for = None
        self._drained_sent_for = None
        self.link.send({"type": "pause_intake", "drain_id": drain_id})

    def resume(self, drain_id: str) -> None:
        super().resume(drain_id)
        self.acked_for = None
        self.said_drained_for = None
        self.link.send({"type": "resume_intake", "drain_id": drain_id})

    def drain_complete(self) -> bool:
        return super().drain_complete() and self.acked_for == self.paused_for and self.said_drained_for == self.paused_for

    def on_cancel(self, item: InFlightItem, msg: Cancel) -> None:
        waiting = self.pending.get(item.id)
        # Refused only while the earlier cancel's asker still waits for its answer: one that
        # timed out (CancelTimedOut) is gone from ``pending``, and one nobody waits for (the
        # deadline's) gives way to the new one, which is sent to the process again.
        # A cancel nobody waits for (the deadline's) while another is outstanding is not sent
        # again: the process answers the one it has.
        if waiting is not None and msg.reply is None:
            return
        if waiting is not None and waiting.reply is not None and not waiting.reply.done:
            self.refuse(msg, Conflict(f"a cancel of {item.id} is already waiting for {self.name}'s answer"))
            return
        self.pending[item.id] = msg
        self.link.send({"type": "cancel", "item": item.local_id})

    def handle(self, message: Any) -> Any:
        match message:
            case ExternalInFlight(items=items):
                self.items = {item.id: item for item in items}
                # What the process said (not a restarted actor's restored items): a process
                # that registered again releases its predecessor's work with this report.
                self.emit(InFlightReport(subsystem=self.name, items=tuple(self.items.values()), from_process=True))
                self.check_drained()
            case ExternalIntakePaused(drain_id=drain_id):
                # An answer to an older pause (or to none) is stale and changes nothing.
                if drain_id == self.paused_for and self.acked_for != drain_id:
                    self.acked_for = drain_id
                    self.acknowledge_pause(drain_id)
            case ExternalDrained(drain_id=drain_id):
                if drain_id == self.paused_for:
                    self.said_drained_for = drain_id
                    self.check_drained()
            case CancelTimedOut(item_id=item_id, reply=reply):
                waiting = self.pending.get(item_id)
                if waiting is not None and waiting.reply is reply:
                    del self.pending[item_id]
            case ExternalGone(reason=reason):
                # Through this actor, so that the reports the process sent before it
                # closed reach the supervisor before the removal does.
                self.emit(ExternalLeft(subsystem=self.name, reason=reason))
            case ExternalCancelResult(item=local, ok=ok, reason=reason):
                msg = self.pending.pop(f"{self.name}/{local}", None)
                if msg is None:
                    return None
                if ok:
                    self.accept_cancel(msg)
                else:
                    self.refuse(msg, NotCancellable(reason or f"{self.name} refused to cancel {msg.item_id}"))
            case _:
                return NotImplemented
        return None

    def abandon(self) -> None:
        """The process is gone: every cancel still waiting is answered ``subsystem_gone``."""
        pending, self.pending = self.pending, {}
        for msg in pending.values():
            if msg.reply is not None and not msg.reply.done:
                msg.reply.set_exception(SubsystemGone(f"{self.name} went away before it answered the cancel"))


class ExternalHost:
    """An external subsystem's actor, run in the supervisor's own thread.

    The process is the subsystem: its core only passes lines on and keeps count, so it
    needs no thread of its own. With a thread each, a drain of a hundred processes woke a
    hundred threads to send ``pause_intake`` and a hundred again for their answers, and
    the trio thread, which hands each line on, lost the GIL to each of them. Here every
    message for the core, from any thread, goes through the supervisor's inbox
    (:class:`ForExternal`) and is handled there, in order; what the core emits is told
    to the supervisor like any subsystem's report. A line from the process costs one
    thread crossing (trio to the supervisor), and the supervisor's answer one more (to trio).

    It stands where the supervisor keeps a subsystem's actor ref: ``tell`` (from any
    thread; ``ActorDeadError`` once stopped or failed), ``stop`` and ``is_alive``. A core
    that raises is failed as an actor is: the supervisor hears ``SubsystemFailed`` and
    starts a new host with the items restored; cancels still on their way to it, or
    waiting for the process, are answered ``subsystem_gone``.
    """

    def __init__(self, core: ExternalCore, supervisor: pykka.ActorRef[Any], generation: int = 0) -> None:
        self.core = core
        self.supervisor = supervisor
        self.generation = generation
        self.alive = True
        self.tell(ReportInFlight())  # what an actor's on_start does
        # Before the supervisor has the host: the route is in place before the register
        # reply (or the restart) lets the process's next line in.
        core.link.route_to(self)

    def tell(self, message: Any) -> None:
        if not self.alive:
            raise pykka.ActorDeadError(f"{self.core.name}'s core has stopped")
        self.supervisor.tell(ForExternal(host=self, message=message))

    def stop(self, block: bool = False) -> None:
        """The process is gone, or its core was replaced (the supervisor's thread)."""
        if self.alive:
            self.alive = False
            self.core.abandon()

    def is_alive(self) -> bool:
        return self.alive

    def receive(self, message: Any) -> None:
        """Handle one message (the supervisor's thread), as a subsystem actor's on_receive does."""
        core = self.core
        if not self.alive:
            if isinstance(message, Cancel) and message.reply is not None and not message.reply.done:
                why = f"{core.name} stopped (it failed, or its process left) before it answered the cancel of {message.item_id}"
                message.reply.set_exception(SubsystemGone(why))
            return
        try:
            deliver(core, message)
        except Exception as exc:
            log.exception("%s: its core failed", core.name)
            self.stop()
            self.supervisor.tell(SubsystemFailed(subsystem=core.name, generation=self.generation, error=repr(exc)))
