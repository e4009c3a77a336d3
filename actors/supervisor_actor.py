"""The pykka actor over :class:`~actors.supervisor.SupervisorCore`: starts the built-in
subsystems in order, hands every message to the core, and publishes a burst of reports
once, when its inbox is empty."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from .external import ExternalCore, ExternalHost
from .future import CallbackFuture
from .messages import (
    Cancelled,
    CancelRefused,
    CancelTimedOut,
    DeadlineReached,
    Disable,
    Drained,
    Enable,
    ExternalLeft,
    ForExternal,
    Forget,
    GetHistory,
    GetStatus,
    InFlightReport,
    IntakePaused,
    Notice,
    ReconnectGraceEnded,
    Register,
    RequestCancel,
    RestartSubsystem,
    SubsystemFailed,
    TTLPassed,
    Unregister,
)
from .peers import Peers
from .pending import WritesPending
from .ports import AuditLog, Clock, StatusSink, Timers
from .schema import MaintenanceRow
from .supervisor import SupervisorCore
from .types import (
    InFlightItem,
)

_REPORTS = (InFlightReport, IntakePaused, Drained, ForExternal)  # ExternalLeft publishes at once


class SupervisorActor(pykka.ThreadingActor):
    """The actor over :class:`SupervisorCore`.

    ``builtins`` are (name, make_core) pairs started in order at start-up;
    ``make_core(name, emit, items)`` builds the subsystem's core, where ``emit`` tells the
    supervisor and ``items`` are the in-flight items to restore after a restart.
    """

    use_daemon_thread = True

    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        sink: StatusSink,
        restart_delay: float = 1.0,
        builtins: tuple[tuple[str, Callable[..., Any]], ...] = (),
        peers: Peers | None = None,
        start_in_maintenance: Enable | None = None,
        audit_log: AuditLog | None = None,
        reconnect_grace: float = 0.0,
        save_maintenance: Callable[[MaintenanceRow], Any] | None = None,
        restored: MaintenanceRow | None = None,
    ) -> None:
        super().__init__()
        self.start_in_maintenance = start_in_maintenance
        self.restored = restored
        self.core = SupervisorCore(
            clock=clock,
            timers=timers,
            sink=sink,
            restart_delay=restart_delay,
            peers=peers,
            audit_log=audit_log,
            reconnect_grace=reconnect_grace,
            save_maintenance=save_maintenance,
        )
        self.builtins = builtins

    @staticmethod
    def _create_future() -> CallbackFuture:
        return CallbackFuture()

    def on_start(self) -> None:
        from .subsystem import SubsystemActor

        me = self.actor_ref
        core = self.core
        core.restore(self.restored)
        if self.start_in_maintenance is not None:
            core.enable(self.start_in_maintenance)
        for name, make_core in self.builtins:

            def spawn(
                generation: int, items: tuple[InFlightItem, ...], name: str = name, make_core: Callable[..., Any] = make_core
            ) -> Any:
                subsystem = make_core(name, me.tell, items)
                # During maintenance a (re)started subsystem comes up with its intake already
                # closed; the PauseIntake that follows makes it acknowledge.
                subsystem.paused_for = core.drain_id
                return SubsystemActor.start(subsystem, me, generation)

            core.add_subsystem(name, spawn, external=False)
        core.publish("started", message="maintd started")

    def register(self, msg: Register) -> dict[str, Any]:
        me = self.actor_ref

        def spawn(generation: int, items: tuple[InFlightItem, ...]) -> Any:
            # ``items``: restored after the actor failed (the process is still there); none when it registers again.
            return ExternalHost(ExternalCore(msg.name, me.tell, msg.link, items), me, generation)

        self.core.add_subsystem(msg.name, spawn, external=True, by=msg.by)
        self.core.audit_after("register", msg.by, target=msg.name, detail=msg.peer)
        return {"name": msg.name, "maintenance": self.core.machine.state.value, "drain_id": self.core.drain_id}

    def on_receive(self, message: Any) -> Any:
        core = self.core
        # A report (tell) with more messages queued behind it defers the status snapshot
        # to the end of the burst; an ask always answers after its status is published.
        core.defer_status = isinstance(message, _REPORTS) and not self.actor_inbox.empty()
        try:
            return self.handle(message)
        finally:
            core.defer_status = False
            if not isinstance(message, _REPORTS) or self.actor_inbox.empty():
                core.flush_status()

    def handle(self, message: Any) -> Any:
        core = self.core
        match message:
            case InFlightReport():
                core.on_report(message)
            case IntakePaused():
                core.on_intake_paused(message)
            case Drained():
                core.on_drained(message)
            case Cancelled():
                core.on_cancelled(message)
            case CancelRefused():
                core.on_cancel_refused(message)
            case SubsystemFailed():
                core.on_failed(message)
            case RestartSubsystem():
                core.on_restart(message)
            case DeadlineReached():
                core.on_deadline_reached(message)
            case TTLPassed():
                core.on_ttl_passed(message)
            case WritesPending():
                core.on_writes_pending(message)
            case CancelTimedOut(item_id=item_id):
                view = core.views.get(item_id.partition("/")[0])
                if view is not None and view.external:
                    view.tell(message)
            case ForExternal(host=host, message=inner):
                host.receive(inner)
            case ReconnectGraceEnded():
                core.on_reconnect_grace_ended(message)
            case Notice(subsystem=subsystem, event=event, message=text):
                core.publish(event, subsystem=subsystem, message=text)
            case Enable():
                return core.enable(message)
            case Disable():
                return core.disable(message)
            case RequestCancel():
                return core.request_cancel(message)
            case Forget():
                return core.forget(message)
            case Register():
                return self.register(message)
            case Unregister(name=name, reason=reason):
                core.unregister(name, reason)
            case ExternalLeft(subsystem=name, reason=reason):
                core.disconnect(name, reason)
            case GetHistory():
                return tuple(core.history)
            case GetStatus():
                return core.status()
            case _:
                raise TypeError(f"supervisor: unexpected message {type(message).__name__}")
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.core.sink.fatal(f"supervisor failed: {exception_value!r}")
