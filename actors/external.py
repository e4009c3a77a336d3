"""An external subsystem: a process on the host that joined over the control socket.

Its actor speaks the same contract as every subsystem, but the gate and the work live in
the process: ``PauseIntake`` becomes a ``pause_intake`` line, and ``IntakePaused`` is
answered only once the process says ``intake_paused``. The drain is complete here when
the process has said ``drained`` for this drain and reports nothing that blocks a restart.

The process's messages take the built-ins' route: the connection hands them straight to
this actor (its link's ``route_to``), and only what the actor emits reaches the supervisor,
which sees each of them once.
"""

from __future__ import annotations

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
    InFlightReport,
)
from .ports import SubsystemLink
from .subsystem import Emit, SubsystemActor, SubsystemCore
from .types import InFlightItem


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


class ExternalSubsystemActor(SubsystemActor):
    core: ExternalCore

    def __init__(self, core: ExternalCore, supervisor: pykka.ActorRef[Any], generation: int = 0) -> None:
        super().__init__(core, supervisor, generation)
        # Before start() returns the ref to the supervisor: the route is in place before
        # the register reply (or the restart) lets the process's next line in.
        core.link.route_to(self.actor_ref)

    def on_stop(self) -> None:
        self.core.abandon()
