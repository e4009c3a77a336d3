"""``maintd``: the daemon's entry point.

Start order: supervisor (which starts the subsystems), then the control socket; then
``READY=1`` and the watchdog pings. Stop on SIGTERM/SIGINT (``systemctl stop``) runs in the
stages of :mod:`daemon.stopping`.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import signal
import stat
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pykka.debug
import trio

from actors.errors import MaintdError
from actors.messages import Enable
from actors.peers import Peers
from actors.status import Event, Status
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor

from . import auth, fds, jobtree, lock, logs, paths, tokens
from . import config as config_mod
from .bridge import Bridge, TrioTimers, WallClock
from .foresight import Foresight
from .gocd_api import GocdApi
from .http import HttpError, parse_listen, serve_http
from .hub import StatusHub
from .jobserver import JobServerRequests, build_subsystems
from .listener import ListenerError, open_control_listener
from .metrics import Metrics, daemon_registry
from .notify import Notifier, describe
from .processes import ProcessRunner
from .server import ControlServer
from .stopping import Stop, stop_actors_and_jobs, stop_drain, watch_signals

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
    http: str | None
    #: the tokens of GoCD's API over HTTP (daemon/tokens.py), replaced on reload
    token_holder: Any
    #: what to warn of once the daemon is ready (a start that fails says only why, in one line)
    warnings: tuple[str, ...] = ()
    #: the remote agents' broker URL with its password (``[agents] backend = "celery"``; never logged)
    broker: str | None = None


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
        "--http",
        type=http_option,
        metavar="HOST:PORT|off",
        help="serve /metrics and the status page here (overrides [http]); off: not at all",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides the config")
    parser.add_argument("--version", action="version", version=f"maintd {VERSION}")
    return parser.parse_args(argv)


def http_option(text: str) -> str:
    """``--http``: ``off`` or a ``HOST:PORT`` the server can listen on; anything else is a usage error (exit 2)."""
    if text == "off":
        return text
    from .http import parse_listen

    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (e.g. 127.0.0.1:9187, [::1]:9187, or off)") from None
    return text


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
    try:
        holder = tokens.TokenHolder(tokens.Tokens.load(cfg.http.tokens_file) if cfg.http.tokens_file else None)
    except tokens.TokenError as exc:
        print(f"maintd: {config_mod.one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    broker = None
    if cfg.agents.backend == "celery":
        from .broker import broker_url, read_password

        try:
            broker = broker_url(cfg.celery.broker, read_password(cfg.celery.password_file))
        except OSError as exc:
            print(f"maintd: cannot read the broker's password file {cfg.celery.password_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
    logs.setup(args.log_level or cfg.daemon.log_level)
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
        token_holder=holder,
        broker=broker,
    )
    warnings = []
    if holder.tokens is not None and settings.http is not None and not _loopback_listen(settings.http):
        warnings.append(
            f"GoCD's API takes tokens on {settings.http}, not a loopback address: never without TLS in front "
            "(README: GoCD's maintenance API over HTTP)"
        )
    if problem := auth.admin_group_problem(cfg.control.admin_group):
        warnings.append(problem)
    if cfg.http.tokens_file and (loose := tokens.loose_mode(cfg.http.tokens_file)):
        warnings.append(loose)
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    return trio.run(run, msgspec.structs.replace(settings, warnings=tuple(warnings)))


async def run(settings: Settings) -> int:
    cfg = settings.config
    bridge = Bridge(trio.lowlevel.current_trio_token())
    notifier = Notifier.from_environ()
    stop = Stop()
    failure: list[str] = []
    ready = False  # served: until then a failing start says only why, in one line

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
            hub.config_repos = bool(cfg.config_repos)
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
                    now = time.time()
                    remote = settings.broker is not None  # remote jobs run on: they are not interrupted
                    interrupted, queued = await bridge.wait(
                        store_proxy.call(lambda s: s.recover(now, on_end=metrics.job_finished, keep_building=remote)),
                        STORE_TIMEOUT,
                    )
                    restored = await bridge.wait(store_proxy.call(lambda s: s.maintenance()), STORE_TIMEOUT)
                except (MaintdError, pykka.ActorDeadError) as exc:
                    log.error("cannot open the store in %s: %s", settings.state_dir, exc)
                    return EXIT_FAILURE
                if interrupted:
                    log.warning("%d job(s) were building when maintd last stopped; marked interrupted", len(interrupted))
                if queued:
                    log.info("%d scheduled job(s) queued again", len(queued))
                peers = Peers()
                clock = WallClock()
                sync_store = SyncStore(store_proxy)
                runner = None
                if settings.broker is not None:
                    runner = celery_runner(settings, bridge, nursery, processes, store_proxy, hub, metrics)
                    processes = runner  # polls go on locally through it
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
                    audit_log=sync_store,
                    save_maintenance=sync_store.save_maintenance,
                    restored=restored,
                    reconnect_grace=config_mod.parse_duration(cfg.control.reconnect_grace),
                    start_in_maintenance=(
                        Enable(by="maintd", reason="started with --start-in-maintenance")
                        if settings.start_in_maintenance
                        else None
                    ),
                )
                timers.target = supervisor
                if runner is not None:
                    await nursery.start(runner.run, peers.ref("agents"))
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
                jobs.tokens = settings.token_holder  # a reload reads the tokens file again
                server = ControlServer(bridge, supervisor, hub, cfg, jobs, on_reject=metrics.rejected, foresight=foresight)
                await nursery.start(server.serve, listening.listener)
                if settings.http is not None:
                    try:
                        api = GocdApi(settings.token_holder, server, cfg.http.public_url)
                        await nursery.start(partial(serve_http, settings.http, hub, metrics, api=api))
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
                log.info("job tracking: %s", tracking.describe())
                for warning in settings.warnings:
                    log.warning("%s", warning)
                ready = True
                nursery.start_soon(watch_signals, signals, stop, lambda: nursery.start_soon(_reload, jobs))
                await stop.requested.wait()
                notifier.send("STOPPING=1")
                if stop.drain and not failure:
                    drain_timeout = config_mod.parse_duration(cfg.daemon.stop_drain_timeout)
                    with stop.hurry:
                        await stop_drain(hub, bridge, supervisor, notifier, drain_timeout)
                    stop.drain = False
            finally:
                await stop_actors_and_jobs(processes, tracking, notifier, quiet=not ready)
                nursery.cancel_scope.cancel()
                if socket_path is not None:
                    _remove_socket(socket_path)
    tracking.close()  # again: a job task the nursery's cancel ended last has removed its cgroup by now
    notifier.close()
    if ready:
        log.info("stopped")
    return EXIT_FAILURE if failure else 0


def celery_runner(
    settings: Settings, bridge: Bridge, nursery: trio.Nursery, local: ProcessRunner, store_proxy: Any, hub: Any, metrics: Any
) -> Any:
    """The remote agents' runner (``[agents] backend = "celery"``): jobs go to Celery workers,
    polls to ``local``; the broker's state goes to the status and the metrics."""
    from actors.status import AgentsBackend

    from .broker import masked
    from .celery_runner import CeleryRunner

    cfg = settings.config
    assert settings.broker is not None
    shown = masked(settings.broker)

    def on_backend(error: str | None) -> None:
        state = "available" if error is None else "unavailable"
        hub.set_agents_backend(AgentsBackend(name="celery", state=state, broker=shown, error=error, since=time.time()))
        metrics.agents_backend("celery", error is None)

    async def rows(job_ids: tuple[int, ...]) -> list[Any]:
        return await bridge.wait(store_proxy.call(lambda s: [s.job(i) for i in job_ids]), STORE_TIMEOUT)

    on_backend("not connected yet")
    return CeleryRunner(
        bridge,
        nursery,
        local=local,
        broker=settings.broker,
        queue=cfg.celery.queue,
        instance=jobtree.instance_id(settings.state_dir),
        heartbeat=config_mod.parse_duration(cfg.celery.heartbeat),
        lost_timeout=config_mod.parse_duration(cfg.celery.lost_timeout),
        grace=config_mod.parse_duration(cfg.agents.cancel_grace),
        leftovers=cfg.agents.leftover_processes,
        root=settings.state_dir,
        rows=rows,
        on_backend=on_backend,
    )


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


def _loopback_listen(listen: str) -> bool:
    try:
        host = parse_listen(listen)[0]
    except ValueError:
        return True  # serve_http says what is wrong with it
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _remove_socket(path: Path) -> None:
    try:
        if path.is_socket():
            path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


if __name__ == "__main__":
    sys.exit(main())
