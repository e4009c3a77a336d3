"""The job server's subsystems, wired together, and the control requests that reach them.

Start order (DESIGN.md): store, then the subsystems in drain order (materials, scheduler,
agents, config guard), started by the supervisor; the shell talks to a subsystem by
asking its current actor (downward), never by waiting on it in the loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from actors.agents import AgentsCore
from actors.budget import ACTOR_ANSWER, STORE_WAIT
from actors.config_guard import ApplyConfig, ConfigGuardCore, SetPipelinePaused
from actors.definitions import parse_duration
from actors.errors import MaintdError, NotFound
from actors.materials import MaterialsCore
from actors.peers import Peers
from actors.ports import Clock, Timers
from actors.scheduler import CancelRun, SchedulerCore, Trigger

from . import config as config_mod
from . import protocol as p
from .bridge import Bridge
from .statedir import LogRefused, open_log

log = logging.getLogger("maintd.jobserver")

ASK_TIMEOUT = ACTOR_ANSWER  # actors/budget.py: longer than the actor waits on the store


def build_subsystems(
    cfg: config_mod.Config,
    *,
    peers: Peers,
    store: Any,
    processes: Any,
    timers: Timers,
    clock: Clock,
    work_root: Path,
    on_job: Callable[[str], None] | None = None,
    on_poll: Callable[[str], None] | None = None,
    on_poll_durations: Callable[[str, tuple[float, ...]], None] | None = None,
) -> tuple[tuple[str, Callable[..., Any]], ...]:
    """(name, make_core) pairs for the supervisor, in drain order."""
    material_names = {m.name for m in cfg.materials}

    def materials(name: str, emit: Any, items: Any) -> MaterialsCore:
        return MaterialsCore(
            name,
            emit,
            items,
            materials=cfg.materials,
            config_repos=cfg.config_repos,
            processes=processes,
            timers=timers,
            clock=clock,
            store=store,
            peers=peers,
            on_poll=on_poll,
            on_durations=on_poll_durations,
        )

    def scheduler(name: str, emit: Any, items: Any) -> SchedulerCore:
        return SchedulerCore(
            name,
            emit,
            items,
            pipelines=cfg.pipelines,
            store=store,
            peers=peers,
            timers=timers,
            clock=clock,
            work_root=str(work_root),
        )

    def agents(name: str, emit: Any, items: Any) -> AgentsCore:
        return AgentsCore(
            name,
            emit,
            items,
            count=cfg.agents.count,
            store=store,
            peers=peers,
            processes=processes,
            clock=clock,
            grace=parse_duration(cfg.agents.cancel_grace),
            on_job=on_job,
            timers=timers,
        )

    def config_guard(name: str, emit: Any, items: Any) -> ConfigGuardCore:
        return ConfigGuardCore(
            name, emit, items, pipelines=cfg.pipelines, materials=material_names, store=store, peers=peers, clock=clock
        )

    return (("materials", materials), ("scheduler", scheduler), ("agents", agents), ("config", config_guard))


class JobServerRequests:
    """Handles the job server's control requests; ``handle`` returns NotImplemented for others."""

    def __init__(self, bridge: Bridge, peers: Peers, store_proxy: Any, config_path: Path | None, state_dir: Path) -> None:
        self.bridge = bridge
        self.peers = peers
        self.store = store_proxy
        self.config_path = config_path
        #: the state directory as given and resolved: job log paths start with one of them
        self.state_dirs = tuple(dict.fromkeys((state_dir, state_dir.absolute(), state_dir.resolve())))

    async def ask(self, subsystem: str, message: Any) -> Any:
        ref = self.peers.current(subsystem)
        if ref is None:
            raise MaintdError(f"the {subsystem} subsystem is restarting; try again", code="unavailable")
        return await self.bridge.ask(ref, message, ASK_TIMEOUT)

    async def stored(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.bridge.wait(getattr(self.store, method)(*args, **kwargs), STORE_WAIT)

    async def handle(self, request: Any, peer: Any, admin_group: str | None) -> Any:
        match request:
            case p.PipelinesRequest():
                return {"pipelines": await self.ask("config", "info")}
            case p.AgentsRequest():
                return {"agents": await self.ask("agents", "info")}
            case p.RunsRequest(pipeline=pipeline, limit=limit):
                return {"runs": await self.stored("recent_runs", limit=limit, pipeline=pipeline)}
            case p.LogsRequest(job=job_id, max_bytes=max_bytes):
                return await self.logs(job_id, max_bytes)
            case p.TriggerRequest(pipeline=pipeline):
                peer.require_admin("trigger", admin_group)
                # the scheduler audits it after its checks and before the run starts
                return await self.ask("scheduler", Trigger(pipeline=pipeline, by=peer.user, peer=peer.detail))
            case p.PipelinePauseRequest(pipeline=pipeline) | p.PipelineUnpauseRequest(pipeline=pipeline):
                paused = isinstance(request, p.PipelinePauseRequest)
                peer.require_admin("pipeline pause" if paused else "pipeline unpause", admin_group)
                return await self.ask(
                    "config", SetPipelinePaused(pipeline=pipeline, paused=paused, by=peer.user, peer=peer.detail)
                )
            case p.ReloadRequest():
                peer.require_admin("reload", admin_group)
                return await self.reload(peer.user, peer.detail)
            case p.CancelRunRequest(pipeline=pipeline, counter=counter, stage=stage):
                peer.require_admin("cancel_run", admin_group)
                # audited by the scheduler after its checks and before any job is cancelled
                cancel = CancelRun(pipeline=pipeline, counter=counter, stage=stage, by=peer.user, peer=peer.detail)
                return await self.ask("scheduler", cancel)
        return NotImplemented

    async def history(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The audit log, oldest first, in the shape of the supervisor's history entries."""
        rows = await self.stored("audit_entries", limit=limit)
        return [
            {"at": r.at, "action": r.action, "by": r.by, "reason": r.reason, "item": r.target, "detail": r.detail} for r in rows
        ]

    async def reload(self, by: str, peer: str | None = None) -> Any:
        """Read the config file again and apply its pipelines. A reload that fails, for any
        reason, leaves the running configuration as it is, is logged and raises a MaintdError saying why."""
        try:
            return await self._reload(by, peer)
        except MaintdError as exc:
            log.warning("reload by %s refused: %s", by, exc.message)
            raise

    async def _reload(self, by: str, peer: str | None) -> Any:
        if self.config_path is None:
            raise MaintdError("maintd was started without --config: there is no file to reload", code="bad_request")
        try:
            cfg = await trio.to_thread.run_sync(config_mod.load, self.config_path)
        except config_mod.ConfigError as exc:
            raise MaintdError(f"the configuration was not reloaded: {exc}", code="bad_config") from None
        except Exception as exc:  # noqa: BLE001 - load turns what a file provokes into ConfigError; anything else too
            why = config_mod.one_line(f"{type(exc).__name__}: {exc}")
            raise MaintdError(f"the configuration was not reloaded: {self.config_path}: {why}", code="bad_config") from None
        apply = ApplyConfig(pipelines=tuple(cfg.pipelines), materials=frozenset(m.name for m in cfg.materials), by=by, peer=peer)
        try:
            return await self.ask("config", apply)
        except MaintdError as exc:
            raise MaintdError(f"the configuration was not reloaded: {exc.message}", code=exc.code) from None
        except trio.TooSlowError:
            raise MaintdError(
                f"the configuration was not reloaded: the config subsystem did not answer within {ASK_TIMEOUT:g}s"
                " (it may still apply it)",
                code="timeout",
            ) from None
        except Exception as exc:  # noqa: BLE001 - the config actor failed or stopped: nothing was applied
            why = config_mod.one_line(f"{type(exc).__name__}: {exc}")
            raise MaintdError(f"the configuration was not reloaded: {why}", code="unavailable") from None

    async def logs(self, job_id: int, max_bytes: int) -> Any:
        row = await self.stored("job", job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")

        def tail() -> tuple[bytes, int]:
            try:
                fd = open_log(self.state_dirs, row.log_path)
            except FileNotFoundError:
                return b"", 0  # not started yet
            except LogRefused as why:
                raise MaintdError(f"job {job_id}'s log is refused: {why}", code="forbidden") from None
            with os.fdopen(fd, "rb") as f:
                size = f.seek(0, 2)
                f.seek(max(size - max_bytes, 0))
                return f.read(max_bytes), size

        data, size = await trio.to_thread.run_sync(tail)
        return {
            "job": job_id,
            "state": row.state,
            "size": size,
            "truncated": size > len(data),
            "text": data.decode(errors="replace"),
        }
