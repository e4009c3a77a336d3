"""Cancels and the drain's deadline: an operator's cancel of one item, the answers, and what
the deadline does. :class:`Cancels` is a part of :class:`~actors.supervisor.SupervisorCore`
(one of its bases); moved out of :mod:`actors.supervisor`.
"""

from __future__ import annotations

from .errors import BadRequest, MaintdError, NotCancellable, NotFound
from .maintenance import Machine
from .messages import Cancel, Cancelled, CancelRefused, DeadlineReached, RequestCancel
from .ports import Clock
from .types import MATERIAL_UPDATE, MDU_REFUSAL, InFlightItem, MaintenanceState, OnDeadline
from .view import SubsystemView


class Cancels:
    """The cancels and the deadline of :class:`~actors.supervisor.SupervisorCore`."""

    # The core's state, used here (set in SupervisorCore.__init__).
    clock: Clock
    views: dict[str, SubsystemView]
    machine: Machine
    drain_id: str | None
    deadline_passed: bool
    on_deadline: OnDeadline | None
    # And its record(), audit(), audit_after() and publish().

    def find_item(self, ref: str) -> InFlightItem:
        items = [item for view in self.views.values() for item in view.items]
        exact = [item for item in items if item.id == ref]
        if exact:
            return exact[0]
        bare = [item for item in items if item.local_id == ref]
        if len(bare) == 1:
            return bare[0]
        if bare:
            names = ", ".join(item.id for item in bare)
            raise BadRequest(f"{ref!r} names more than one item ({names}); use the full id")
        raise NotFound(f"no item {ref!r} is in flight (`maintctl inflight` lists them)")

    def request_cancel(self, msg: RequestCancel) -> str:
        item = self.find_item(msg.item)
        view = self.views[item.subsystem]
        if item.kind == MATERIAL_UPDATE:
            raise NotCancellable(MDU_REFUSAL)
        if not item.cancellable:
            raise NotCancellable(f"{item.id} ({item.kind}) does not accept cancel")
        if view.disconnected is not None:
            why = f"{view.name} is disconnected; its work can be cancelled once it registers again"
            raise MaintdError(why, code="unavailable")
        if view.ref is None:
            raise MaintdError(f"{view.name} has failed and is restarting; try again", code="unavailable")
        self.audit("cancel_requested", msg.by, self.clock.now(), reason=msg.reason, target=item.id, detail=msg.peer)
        if not view.tell(Cancel(item_id=item.id, by=msg.by, reason=msg.reason, reply=msg.reply)):
            raise MaintdError(f"{view.name} has failed and is restarting; try again", code="unavailable")
        return item.id

    def on_cancelled(self, msg: Cancelled) -> None:
        self.record("cancel", by=msg.by, reason=msg.reason, item=msg.item_id)
        self.audit_after("cancel", msg.by, reason=msg.reason, target=msg.item_id)
        self.publish("cancelled", subsystem=msg.subsystem, message=f"{msg.item_id} cancelled by {msg.by}")
        if msg.reply is not None:
            msg.reply.set({"item": msg.item_id, "cancelled": True, "by": msg.by})

    def on_cancel_refused(self, msg: CancelRefused) -> None:
        self.publish("cancel_refused", subsystem=msg.subsystem, message=f"cancel of {msg.item_id} refused: {msg.reason}")
        if msg.reply is not None:
            msg.reply.set_exception(MaintdError(msg.reason, code=msg.code))

    def on_deadline_reached(self, msg: DeadlineReached) -> None:
        if msg.drain_id != self.drain_id:
            return
        self.deadline_passed = True
        if self.machine.state is not MaintenanceState.DRAINING:
            return
        left = tuple(item for view in self.views.values() for item in view.items)
        self.publish("overdue", items=left, message=f"the drain deadline passed with {len(left)} item(s) left")
        if self.on_deadline is not OnDeadline.CANCEL:
            return
        for view in self.views.values():
            for item in view.items:
                if item.cancellable and item.kind != MATERIAL_UPDATE:
                    view.tell(Cancel(item_id=item.id, by="deadline", reason="cancelled by the deadline"))
