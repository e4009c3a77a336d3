"""``maintd``: the daemon's entry point.

Start order: supervisor (which starts the subsystems), then the control socket; then
``READY=1`` and the watchdog pings. Stop on SIGTERM/SIGINT (``systemctl stop``) runs in stages,
each bounded and logged (Home Assistant's stop stages; ``tests/daemon/test_units.py`` checks
that their sum fits under the unit's ``TimeoutStopSec``):

1. drain: turn maintenance mode on (unless it is on already) and wait until it is safe to
   restart, at most ``[daemon] stop_drain_timeout``; the control socket keeps serving, so
   ``maintctl`` shows the drain and external subsystems report theirs. A second
   SIGTERM/SIGINT ends this stage at once; a failure skips it.
2. actors: stop them (shielded, in ``finally``, at most ``ACTORS_STOP_TIMEOUT``), then kill
   the jobs still building (at most ``JOBS_STOP_TIMEOUT``; the next start marks them
   interrupted); then the socket stops taking connections and the channels the actors
   push into close.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pykka.debug
import trio

from actors.errors import MaintdError
from actors.messages import Enable
from actors.peers import Peers
from actors.safety import blocking
from actors.status import Event, Status
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor
from actors.types import InFlightItem

from . import auth, fds, jobtree, lock, logs, paths
from . import config as config_mod
from .bridge import Bridge, TrioTimers, WallClock
from .foresight import Foresight
from .http import HttpError, serve_http
from .hub import StatusHub
from .jobserver import JobServerRequests, build_subsystems
from .listener import ListenerError, open_control_listener
from .metrics import Metrics, daemon_registry
from .notify import Notifier, describe
from .processes import ProcessRunner
from .server import ControlServer

log = logging.getLogger("maintd")

VERSION = "0.1.0"
EXIT_CONFIG = 2
EXIT_FAILURE = 1
STORE_TIMEOUT = 60.0
ACTORS_STOP_TIMEOUT = 10.0  # stop stage 2: pykka's stop_all; its threads are left behind after this
JOBS_STOP_TIMEOUT = 5.0  # stop stage 2: SIGKILL the jobs still building and reap them
STOP_TIMEOUT = ACTORS_STOP_TIMEOUT + JOBS_STOP_TIMEOUT  # all of stage 2
EXTEND_WINDOW = 60.0  # how much more time one step of drain progress asks systemd for
STOP_REASON = "stopping: draining before exit"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    config: config_mod.Config
    config_path: Path | None
    socket: Path
    state_dir: Path
    start_in_maintenance: bool
    http: str | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maintd",
        description="Maintenance-mode daemon: drains every subsystem before a restart and says when it is safe.",
        epilog=(
            "Exit codes: 0 stopped cleanly, 1 could not start or failed, 2 bad configuration or arguments.\n"
            "Control it with maintctl (maintctl --help)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file (default: none, built-in defaults)")
    parser.add_argument("--socket", type=Path, help=f"control socket path (default: {paths.runtime_dir() / paths.SOCKET_NAME})")
    parser.add_argument("--state-dir", type=Path, help=f"state directory (default: {paths.state_dir()})")
    parser.add_argument(
        "--start-in-maintenance",
        action="store_true",
        help="start with maintenance mode on (updated_by is 'maintd'), to check a migrated server before it builds",
    )
    parser.add_argument(
        "--http", metavar="HOST:PORT|off", help="serve /metrics and the status page here (overrides [http]); off: not at all"
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides the config")
    parser.add_argument("--version", action="version", version=f"maintd {VERSION}")
    return parser.parse_args(argv)


#: Bits always cleared from the mode of what maintd and its jobs create, whatever umask it was
#: started with (the unit's UMask=0027): the state directory, maintd.db, workspaces and logs
#: are never writable by the group nor open to others. The control socket's mode is set
#: explicitly ([control] mode).
UMASK = 0o027


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.umask(os.umask(UMASK) | UMASK)  # stricter than UMASK if it was stricter, never looser
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        for line in exc.lines:
            print(f"maintd: {line}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(args.log_level or cfg.daemon.log_level)
    if problem := auth.admin_group_problem(cfg.control.admin_group):
        log.warning("%s", problem)
    state_dir = args.state_dir or (Path(cfg.daemon.state_dir) if cfg.daemon.state_dir else paths.state_dir())
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(f"maintd: cannot use state directory {state_dir}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        lock.lock_state_dir(state_dir)  # before the store is opened; held (never closed) until exit
    except lock.StateLocked as exc:
        print(f"maintd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    before, now = fds.raise_open_files_limit()  # before the store and the sockets open: a flood must not reach the limit
    if now != before:
        log.info("open files limit raised from %d to %d (the hard limit)", before, now)
    loose = stat.S_IMODE(state_dir.stat().st_mode) & 0o022
    if loose:  # made before maintd (or by hand): say so rather than change what is not ours
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "everyone")) if loose & bit)
        log.warning(
            "state directory %s is writable by %s (mode %04o): they can change the store and the jobs' logs; "
            "chmod go-w %s",
            state_dir, who, stat.S_IMODE(state_dir.stat().st_mode), state_dir,
        )  # fmt: skip
    settings = Settings(
        config=cfg,
        config_path=args.config.resolve() if args.config else None,
        socket=args.socket or (Path(cfg.control.socket) if cfg.control.socket else paths.runtime_dir() / paths.SOCKET_NAME),
        state_dir=state_dir,
        start_in_maintenance=args.start_in_maintenance or cfg.maintenance.start_in_maintenance,
        http=(None if args.http == "off" else args.http) if args.http else (cfg.http.listen if cfg.http.enabled else None),
    )
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    return trio.run(run, settings)


async def run(settings: Settings) -> int:
    cfg = settings.config
    bridge = Bridge(trio.lowlevel.current_trio_token())
    notifier = Notifier.from_environ()
    stop = Stop()
    failure: list[str] = []

    def on_fatal(error: str) -> None:
        log.critical("%s; stopping", error)
        failure.append(error)
        stop.now()

    last_described: list[Status] = []

    def on_status(status: Status, _event: Event | None) -> None:
        # Only for systemd, and only when the status object changed (a burst of events shares one).
        if notifier.address is None or (last_described and last_described[0] is status):
            return
        last_described[:] = [status]
        draining = status.maintenance.enabled and not status.maintenance.safe_to_restart
        eta = hub.foresight.eta(status) if hub.foresight is not None and draining else None  # describe shows it only then
        notifier.status(("stopping, " if stop.requested.is_set() else "") + describe(status, eta))

    # Before the store marks the jobs that were building interrupted, and before anyone can
    # ask: what a dead daemon's jobs left running is killed and seen gone.
    try:
        tracking = await jobtree.start(cfg.agents.process_tracking, settings.state_dir)
    except jobtree.TrackingError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            hub = StatusHub(bridge, on_fatal)
            metrics = Metrics(daemon_registry(), version=VERSION)
            hub.listeners.append(metrics.update)
            hub.job_tracking = tracking.describe()
            metrics.job_tracking(tracking.mechanism)
            timers = TrioTimers(bridge, nursery)
            processes = ProcessRunner(
                bridge,
                nursery,
                root=settings.state_dir,
                tracking=tracking,
                kill_grace=config_mod.parse_duration(cfg.agents.cancel_grace),
                leftovers=cfg.agents.leftover_processes,
            )
            socket_path: Path | None = None  # set once this process bound the socket and must unlink it
            try:
                try:
                    store_ref = StoreActor.start(str(settings.state_dir / "maintd.db"))
                    store_proxy = store_ref.proxy()
                    interrupted, queued = await bridge.wait(store_proxy.recover(time.time()), STORE_TIMEOUT)
                except (MaintdError, pykka.ActorDeadError) as exc:
                    log.error("cannot open the store in %s: %s", settings.state_dir, exc)
                    return EXIT_FAILURE
                for _ in interrupted:
                    metrics.job_finished("interrupted")
                if interrupted:
                    log.warning("%d job(s) were building when maintd last stopped; marked interrupted", len(interrupted))
                if queued:
                    log.info("%d scheduled job(s) queued again", len(queued))
                peers = Peers()
                clock = WallClock()
                sync_store = SyncStore(store_proxy)
                foresight = Foresight(bridge, store_proxy)
                hub.foresight = foresight
                metrics.drain_eta(lambda: foresight.seconds_left(hub.status))
                await nursery.start(foresight.run)
                builtins = build_subsystems(
                    cfg,
                    peers=peers,
                    store=sync_store,
                    processes=processes,
                    timers=timers,
                    clock=clock,
                    work_root=settings.state_dir,
                    on_job=lambda result: (metrics.job_finished(result), foresight.job_finished(result)),
                    on_poll=metrics.material_polled,
                    on_poll_durations=foresight.material_durations,
                )
                supervisor = SupervisorActor.start(
                    clock=clock,
                    timers=timers,
                    sink=hub,
                    restart_delay=config_mod.parse_duration(cfg.maintenance.subsystem_restart_delay),
                    builtins=builtins,
                    peers=peers,
                    audit_log=sync_store.audit,
                    reconnect_grace=config_mod.parse_duration(cfg.control.reconnect_grace),
                    start_in_maintenance=(
                        Enable(by="maintd", reason="started with --start-in-maintenance")
                        if settings.start_in_maintenance
                        else None
                    ),
                )
                timers.target = supervisor
                with trio.fail_after(STORE_TIMEOUT):
                    await hub.ready.wait()  # serve nobody before every built-in subsystem has started
                try:
                    listening = await open_control_listener(settings.socket, int(cfg.control.mode, 8), cfg.control.admin_group)
                except ListenerError as exc:
                    log.error("%s", exc)
                    return EXIT_FAILURE
                if not listening.activated:
                    socket_path = listening.path  # systemd's socket file is systemd's to remove
                jobs = JobServerRequests(bridge, peers, store_proxy, settings.config_path, settings.state_dir)
                server = ControlServer(bridge, supervisor, hub, cfg, jobs, on_reject=metrics.rejected, foresight=foresight)
                await nursery.start(server.serve, listening.listener)
                if settings.http is not None:
                    try:
                        await nursery.start(serve_http, settings.http, hub, metrics)
                    except HttpError as exc:
                        log.error("%s", exc)
                        return EXIT_FAILURE
                notifier.send("READY=1")
                # What start-up made (the parsed config, the recovered queue) lives as long as
                # the daemon: move it out of the cyclic collector's full passes, which stall
                # the loop for a time that grows with the number of tracked objects.
                gc.freeze()
                hub.listeners.append(on_status)
                if hub.status is not None:
                    on_status(hub.status, None)
                nursery.start_soon(notifier.watchdog)
                log.info("maintd %s ready: control socket %s, state %s", VERSION, listening.path, settings.state_dir)
                nursery.start_soon(_watch_signals, signals, stop, lambda: nursery.start_soon(_reload, jobs))
                await stop.requested.wait()
                notifier.send("STOPPING=1")
                if stop.drain and not failure:
                    drain_timeout = config_mod.parse_duration(cfg.daemon.stop_drain_timeout)
                    with stop.hurry:
                        await _stop_drain(hub, bridge, supervisor, notifier, drain_timeout)
                    stop.drain = False
            finally:
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
                nursery.cancel_scope.cancel()
                if socket_path is not None:
                    _remove_socket(socket_path)
    tracking.close()  # again: a job task the nursery's cancel ended last has removed its cgroup by now
    notifier.close()
    log.info("stopped")
    return EXIT_FAILURE if failure else 0


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


def _blocking(status: Status | None) -> list[InFlightItem]:
    """The work a restart would break: what the drain waits for."""
    if status is None:
        return []
    return blocking(status.running_systems.items())


async def _stop_drain(hub: StatusHub, bridge: Bridge, supervisor: Any, notifier: Notifier, timeout: float) -> None:
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
                await bridge.ask(supervisor, Enable(by="maintd", reason=STOP_REASON), STORE_TIMEOUT)
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


async def _reload(jobs: JobServerRequests) -> None:
    """SIGHUP: a reload that fails, for any reason, is a log line; the daemon and its jobs go on."""
    try:
        result = await jobs.reload("SIGHUP")
    except MaintdError:
        pass  # logged by the reload, with its reason
    except Exception as exc:  # noqa: BLE001 - never take the daemon down for a reload
        log.warning("reload by SIGHUP refused: %s", config_mod.one_line(f"{type(exc).__name__}: {exc}"))
    else:
        log.info("configuration reloaded: %s pipeline(s)", result["pipelines"])


async def _watch_signals(signals: Any, stop: Stop, on_hup: Any = None) -> None:
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


def _remove_socket(path: Path) -> None:
    try:
        if path.is_socket():
            path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


if __name__ == "__main__":
    sys.exit(main())
