"""How the daemon stops: the signals that ask for it (:func:`watch_signals` into
:class:`Stop`) and the stages that ``daemon.app.run`` awaits in turn. On SIGTERM/SIGINT
(``systemctl stop``) it runs in stages, each bounded and logged (Home Assistant's stop
stages; ``tests/daemon/test_units.py`` checks that their sum fits under the unit's
``TimeoutStopSec``):

1. drain (:func:`stop_drain`): turn maintenance mode on (unless it is on already) and wait
   until it is safe to restart, at most ``[daemon] stop_drain_timeout``; the control socket
   keeps serving, so ``maintctl`` shows the drain and external subsystems report theirs. A
   second SIGTERM/SIGINT ends this stage at once; a failure skips it.
2. actors (:func:`stop_actors_and_jobs`, shielded, in ``run``'s ``finally``): stop them (at
   most ``ACTORS_STOP_TIMEOUT``), then kill the jobs still building (at most
   ``JOBS_STOP_TIMEOUT``; the next start marks them interrupted); then ``run`` stops the
   socket taking connections and closes the channels the actors push into.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import pykka
import trio

from actors.budget import ACTOR_ANSWER
from actors.errors import MaintdError
from actors.messages import Enable
from actors.safety import blocking
from actors.status import Event, Status
from actors.types import InFlightItem

from .bridge import Bridge
from .hub import StatusHub
from .jobtree import Tracking
from .notify import Notifier
from .processes import ProcessRunner

log = logging.getLogger("maintd")

ACTORS_STOP_TIMEOUT = 10.0  # stop stage 2: pykka's stop_all; its threads are left behind after this
JOBS_STOP_TIMEOUT = 5.0  # stop stage 2: SIGKILL the jobs still building and reap them
STOP_TIMEOUT = ACTORS_STOP_TIMEOUT + JOBS_STOP_TIMEOUT  # all of stage 2
EXTEND_WINDOW = 60.0  # how much more time one step of drain progress asks systemd for
STOP_REASON = "stopping: draining before exit"


class Stop:
    """How the daemon stops. The first SIGTERM/SIGINT stops with a drain first; a second one
    during the drain cuts it short (``hurry``); a failure stops without one. Any later
    signal changes nothing."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.drain = False  # a drain is due or running
        self.hurry = trio.CancelScope()

    def by_signal(self, name: str) -> None:
        if not self.requested.is_set():
            log.info("received %s: stopping; draining first", name)
            self.drain = True
            self.requested.set()
        elif self.drain and not self.hurry.cancel_called:
            log.warning("received %s again: stopping now, without waiting for the drain", name)
            self.hurry.cancel()
        else:
            log.info("received %s: already stopping", name)

    def now(self) -> None:
        self.requested.set()
        self.hurry.cancel()


async def watch_signals(signals: Any, stop: Stop, on_hup: Any = None) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            if stop.requested.is_set():
                log.info("SIGHUP while stopping: ignored")
                continue
            log.info("SIGHUP: reloading the configuration")
            if on_hup is not None:
                on_hup()
            continue
        stop.by_signal(signal.Signals(signum).name)


def _blocking(status: Status | None) -> list[InFlightItem]:
    """The work a restart would break: what the drain waits for."""
    if status is None:
        return []
    return blocking(status.running_systems.items())


async def stop_drain(hub: StatusHub, bridge: Bridge, supervisor: Any, notifier: Notifier, timeout: float) -> None:
    """Stop stage 1: drain, at most ``timeout`` seconds; return early when a second signal
    (the caller's cancel scope) or an operator's ``maintctl disable`` says to stop now.

    systemd's stop timeout is extended (``EXTEND_TIMEOUT_USEC``) only when the number of
    blocking items went down since the last extension: a drain that is stuck gets no more
    than the unit's ``TimeoutStopSec``.
    """
    status = hub.status
    if status is not None and status.maintenance.safe_to_restart:
        log.info("stop stage 1/2: already drained; nothing to wait for")
        return
    if timeout <= 0:
        log.info("stop stage 1/2: skipped (stop_drain_timeout is 0)")
        return
    log.info("stop stage 1/2: draining before exit (at most %gs)", timeout)
    changed = trio.Event()

    def on_status(_status: Status, _event: Event | None) -> None:
        changed.set()

    hub.listeners.append(on_status)
    started = trio.current_time()
    try:
        if status is None or not status.maintenance.enabled:
            try:
                await bridge.ask(supervisor, Enable(by="maintd", reason=STOP_REASON), ACTOR_ANSWER)
            except (MaintdError, pykka.ActorDeadError, trio.TooSlowError) as exc:
                log.warning("cannot turn on maintenance mode to drain (%s); stopping now", exc)
                return
        mark = len(_blocking(hub.status))
        seen_on = False  # the hub's snapshot may lag behind the enable's reply for a burst
        with trio.move_on_after(timeout) as scope:
            while True:
                status = hub.status
                assert status is not None
                if status.maintenance.safe_to_restart:
                    log.info("stop stage 1/2 done: drained in %.1fs", trio.current_time() - started)
                    return
                seen_on = seen_on or status.maintenance.enabled
                if seen_on and not status.maintenance.enabled:
                    log.warning("maintenance mode was turned off during the stop drain; stopping now")
                    return
                if (left := len(_blocking(status))) < mark:
                    mark = left
                    notifier.extend_timeout(min(EXTEND_WINDOW, scope.deadline - trio.current_time()) + STOP_TIMEOUT)
                    log.info("draining: %d blocking item(s) left", left)
                await changed.wait()
                changed = trio.Event()
        left_items = _blocking(hub.status)
        log.warning(
            "stop stage 1/2: not drained after %gs; stopping anyway with %d blocking item(s): %s",
            timeout,
            len(left_items),
            ", ".join(f"{i.id} ({i.description})" for i in left_items) or "none",
        )
    finally:
        hub.listeners.remove(on_status)


async def stop_actors_and_jobs(processes: ProcessRunner, tracking: Tracking, notifier: Notifier, quiet: bool = False) -> None:
    """Stop stage 2 (shielded: it runs while the daemon is being cancelled): the actors, then
    the jobs still building, each within its bound. ``quiet``: a start that failed (its one
    line said why; there is nothing to tell of a stop)."""
    if not quiet:
        log.info("stop stage 2/2: stopping the actors, then the jobs still building (at most %gs)", STOP_TIMEOUT)
    notifier.status("stopping: stopping the actors and the jobs still building")
    with trio.CancelScope(shield=True):
        with trio.move_on_after(ACTORS_STOP_TIMEOUT) as actors_scope:
            await trio.to_thread.run_sync(pykka.ActorRegistry.stop_all, abandon_on_cancel=True)
        if actors_scope.cancelled_caught:
            log.error("the actors did not stop within %gs; leaving their threads behind", ACTORS_STOP_TIMEOUT)
        # Jobs still building are killed; the next start marks them interrupted.
        with trio.move_on_after(JOBS_STOP_TIMEOUT):
            await processes.aclose()
        tracking.close()
