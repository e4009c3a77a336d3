"""``maintd``: the daemon's entry point.

Start order: supervisor (which starts the subsystems), then the control socket; then
``READY=1``. Stop order on SIGTERM/SIGINT is the reverse: the socket stops taking
connections, the actors stop (shielded, in ``finally``), then the channels they push into.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
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
from actors.store import StoreActor, SyncStore
from actors.supervisor import SupervisorActor

from . import config as config_mod
from . import paths
from .bridge import Bridge, TrioTimers, WallClock
from .hub import StatusHub
from .jobserver import JobServerRequests, build_subsystems
from .listener import ListenerError, open_unix_listener
from .notify import notify
from .processes import ProcessRunner
from .server import ControlServer

log = logging.getLogger("maintd")

VERSION = "0.1.0"
EXIT_CONFIG = 2
EXIT_FAILURE = 1
STORE_TIMEOUT = 60.0


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    config: config_mod.Config
    config_path: Path | None
    socket: Path
    state_dir: Path
    start_in_maintenance: bool


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
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides the config")
    parser.add_argument("--version", action="version", version=f"maintd {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"maintd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=(args.log_level or cfg.daemon.log_level).upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pykka logs every exception an ask returns to its caller; ours are refusals the
    # control socket already reports, so only its warnings (dead actors, failures) stay.
    logging.getLogger("pykka").setLevel(logging.WARNING)
    state_dir = args.state_dir or (Path(cfg.daemon.state_dir) if cfg.daemon.state_dir else paths.state_dir())
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(f"maintd: cannot use state directory {state_dir}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    settings = Settings(
        config=cfg,
        config_path=args.config.resolve() if args.config else None,
        socket=args.socket or (Path(cfg.control.socket) if cfg.control.socket else paths.runtime_dir() / paths.SOCKET_NAME),
        state_dir=state_dir,
        start_in_maintenance=args.start_in_maintenance or cfg.maintenance.start_in_maintenance,
    )
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    return trio.run(run, settings)


async def run(settings: Settings) -> int:
    cfg = settings.config
    bridge = Bridge(trio.lowlevel.current_trio_token())
    stop = trio.Event()
    failure: list[str] = []

    def on_fatal(error: str) -> None:
        log.critical("%s; stopping", error)
        failure.append(error)
        stop.set()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            hub = StatusHub(bridge, on_fatal)
            timers = TrioTimers(bridge, nursery)
            processes = ProcessRunner(bridge, nursery)
            bound = False
            try:
                try:
                    store_ref = StoreActor.start(str(settings.state_dir / "maintd.db"))
                    store_proxy = store_ref.proxy()
                    interrupted, queued = await bridge.wait(store_proxy.recover(time.time()), STORE_TIMEOUT)
                except (MaintdError, pykka.ActorDeadError) as exc:
                    log.error("cannot open the store in %s: %s", settings.state_dir, exc)
                    return EXIT_FAILURE
                if interrupted:
                    log.warning("%d job(s) were building when maintd last stopped; marked interrupted", len(interrupted))
                if queued:
                    log.info("%d scheduled job(s) queued again", len(queued))
                peers = Peers()
                clock = WallClock()
                builtins = build_subsystems(
                    cfg,
                    peers=peers,
                    store=SyncStore(store_proxy),
                    processes=processes,
                    timers=timers,
                    clock=clock,
                    work_root=settings.state_dir,
                )
                supervisor = SupervisorActor.start(
                    clock=clock,
                    timers=timers,
                    sink=hub,
                    restart_delay=config_mod.parse_duration(cfg.maintenance.subsystem_restart_delay),
                    builtins=builtins,
                    peers=peers,
                    start_in_maintenance=(
                        Enable(by="maintd", reason="started with --start-in-maintenance")
                        if settings.start_in_maintenance
                        else None
                    ),
                )
                timers.target = supervisor
                with trio.fail_after(STORE_TIMEOUT):
                    await hub.ready.wait()  # serve nobody before the supervisor's first status
                try:
                    listener = await open_unix_listener(settings.socket, int(cfg.control.mode, 8), cfg.control.admin_group)
                except ListenerError as exc:
                    log.error("%s", exc)
                    return EXIT_FAILURE
                bound = True
                jobs = JobServerRequests(bridge, peers, store_proxy, settings.config_path, settings.state_dir)
                server = ControlServer(bridge, supervisor, hub, cfg, jobs)
                await nursery.start(server.serve, listener)
                notify("READY=1", f"STATUS=serving {settings.socket}")
                log.info("maintd %s ready: control socket %s, state %s", VERSION, settings.socket, settings.state_dir)
                nursery.start_soon(_watch_signals, signals, stop, lambda: nursery.start_soon(_reload, jobs))
                await stop.wait()
                notify("STOPPING=1")
                log.info("stopping")
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pykka.ActorRegistry.stop_all)
                    # Jobs still building are killed; the next start marks them interrupted.
                    await processes.aclose()
                nursery.cancel_scope.cancel()
                if bound:
                    _remove_socket(settings.socket)
    return EXIT_FAILURE if failure else 0


async def _reload(jobs: JobServerRequests) -> None:
    try:
        result = await jobs.reload("SIGHUP")
    except MaintdError as exc:
        log.warning("reload refused: %s", exc.message)
    else:
        log.info("configuration reloaded: %s pipeline(s)", result["pipelines"])


async def _watch_signals(signals: Any, stop: trio.Event, on_hup: Any = None) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading the configuration")
            if on_hup is not None:
                on_hup()
            continue
        log.info("received %s", signal.Signals(signum).name)
        stop.set()
        return


def _remove_socket(path: Path) -> None:
    try:
        if path.is_socket():
            path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


if __name__ == "__main__":
    sys.exit(main())
