"""The job server's subsystems, wired together, and the control requests that reach them.

Start order (DESIGN.md): store, then the subsystems in drain order (materials, scheduler,
agents, config guard), started by the supervisor; the shell talks to a subsystem by
asking its current actor (downward), never by waiting on it in the loop.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from actors.agents import AgentsCore, SetAgentEnabled
from actors.budget import ACTOR_ANSWER, STORE_WAIT
from actors.config_guard import ApplyConfig, ConfigGuardCore, SetPipelinePaused
from actors.definitions import parse_duration
from actors.errors import MaintdError, NotFound
from actors.jobs import TERMINAL
from actors.materials import MaterialsCore
from actors.messages import GetInfo
from actors.peers import Peers
from actors.ports import Clock, JobStore, ProcessPort, Timers
from actors.runs import CancelRun, Trigger
from actors.scheduler import SchedulerCore
from actors.store import Store

from . import config as config_mod
from . import protocol as p
from .bridge import Bridge
from .statedir import LogRefused, open_log
from .tokens import TokenError, TokenHolder, Tokens

if TYPE_CHECKING:
    import pykka

    from actors.store_actor import StoreActor

log = logging.getLogger("maintd.jobserver")

ASK_TIMEOUT = ACTOR_ANSWER  # actors/budget.py: longer than the actor waits on the store

T = TypeVar("T")


def build_subsystems(
    cfg: config_mod.Config,
    *,
    peers: Peers,
    store: JobStore,
    processes: ProcessPort,
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
            on_job=on_job,
        )

    def agents(name: str, emit: Any, items: Any) -> AgentsCore:
        if cfg.agents.backend == "celery":
            from actors.remote_agents import RemoteAgentsCore

            return RemoteAgentsCore(
                name,
                emit,
                items,
                store=store,
                peers=peers,
                processes=processes,
                remote=processes,  # type: ignore[arg-type]  # the CeleryRunner is both
                clock=clock,
                grace=parse_duration(cfg.agents.cancel_grace),
                lost_timeout=parse_duration(cfg.celery.lost_timeout),
                broker=cfg.celery.broker,
                on_job=on_job,
                timers=timers,
            )
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

    def __init__(
        self, bridge: Bridge, peers: Peers, store_proxy: pykka.ActorProxy[StoreActor], config_path: Path | None, state_dir: Path
    ) -> None:
        self.bridge = bridge
        self.peers = peers
        self.store = store_proxy
        self.config_path = config_path
        #: the state directory as given and resolved: job log paths start with one of them
        self.state_dirs = tuple(dict.fromkeys((state_dir, state_dir.absolute(), state_dir.resolve())))
        #: GoCD's API tokens (daemon/tokens.py): read again by a reload, replaced once it applied
        self.tokens = TokenHolder()

    async def ask(self, subsystem: str, message: Any) -> Any:
        ref = self.peers.current(subsystem)
        if ref is None:
            raise MaintdError(f"the {subsystem} subsystem is restarting; try again", code="unavailable")
        return await self.bridge.ask(ref, message, ASK_TIMEOUT)

    async def stored(self, query: Callable[[Store], T]) -> T:
        """``query`` carried out by the store's actor (:meth:`~actors.store_actor.StoreActor.call`)."""
        result: T = await self.bridge.wait(self.store.call(query), STORE_WAIT)
        return result

    async def handle(self, request: Any, peer: Any, admin_group: str | None) -> Any:
        match request:
            case p.PipelinesRequest():
                return {"pipelines": await self.ask("config", GetInfo())}
            case p.AgentsRequest():
                return {"agents": await self.ask("agents", GetInfo())}
            case p.RunsRequest(pipeline=pipeline, limit=limit):
                runs = await self.stored(lambda s: s.recent_runs(limit=limit, pipeline=pipeline))
                # no runs, and not configured either: a name mistyped, not a pipeline yet to run
                if pipeline is not None and not runs and pipeline not in await self.pipeline_names():
                    raise NotFound(f"no pipeline {pipeline!r} (`maintctl pipelines` lists them)")
                return {"runs": runs}
            case p.LogsRequest(job=job_id, max_bytes=max_bytes, offset=offset):
                return await self.logs(job_id, max_bytes, offset)
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
            case p.AgentDisableRequest(name=name) | p.AgentEnableRequest(name=name):
                enabled = isinstance(request, p.AgentEnableRequest)
                peer.require_admin("agent enable" if enabled else "agent disable", admin_group)
                # the agents audit it before it takes effect (a refused enable too)
                return await self.ask("agents", SetAgentEnabled(name=name, enabled=enabled, by=peer.user, peer=peer.detail))
            case p.ReloadRequest():
                peer.require_admin("reload", admin_group)
                return await self.reload(peer.user, peer.detail)
            case p.CancelRunRequest(pipeline=pipeline, counter=counter, stage=stage):
                peer.require_admin("cancel_run", admin_group)
                # audited by the scheduler after its checks and before any job is cancelled
                cancel = CancelRun(pipeline=pipeline, counter=counter, stage=stage, by=peer.user, peer=peer.detail)
                return await self.ask("scheduler", cancel)
        return NotImplemented

    async def pipeline_names(self) -> set[str]:
        return {info.name for info in await self.ask("config", GetInfo())}

    async def history(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The audit log, oldest first, in the shape of the supervisor's history entries."""
        rows = await self.stored(lambda s: s.audit_entries(limit=limit))
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
        try:
            path = cfg.http.tokens_file
            tokens = await trio.to_thread.run_sync(Tokens.load, path) if path else None
        except TokenError as exc:
            raise MaintdError(f"the configuration was not reloaded: {config_mod.one_line(str(exc))}", code="bad_config") from None
        apply = ApplyConfig(pipelines=tuple(cfg.pipelines), materials=frozenset(m.name for m in cfg.materials), by=by, peer=peer)
        try:
            result = await self.ask("config", apply)
            self.tokens.tokens = tokens
            return result
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

    async def logs(self, job_id: int, max_bytes: int, offset: int | None = None) -> Any:
        """The last ``max_bytes`` of job ``job_id``'s log, or (``offset`` given) at most
        ``max_bytes`` from ``offset`` on, read through :func:`~daemon.statedir.open_log` (never
        through a symlink, a FIFO or a hard link). ``next_offset`` is where the next read
        starts: a character cut by ``max_bytes`` is left for it, whole. ``ended``: the job had
        ended before the log was read, so nothing more will be written to it."""
        row = await self.stored(lambda s: s.job(job_id))
        if row is None:
            raise NotFound(f"no job {job_id}")

        def read() -> tuple[bytes, int, int]:
            try:
                fd = open_log(self.state_dirs, row.log_path)
            except FileNotFoundError:
                return b"", 0, 0  # not started yet
            except LogRefused as why:
                raise MaintdError(f"job {job_id}'s log is refused: {why}", code="forbidden") from None
            with os.fdopen(fd, "rb") as f:
                size = f.seek(0, 2)
                start = max(size - max_bytes, 0) if offset is None else min(offset, size)
                f.seek(start)
                return f.read(max_bytes), size, start

        data, size, start = await trio.to_thread.run_sync(read)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        cut = offset is not None and start + len(data) < size  # more follows: keep a split character whole
        text = decoder.decode(data, final=not cut)
        kept = len(decoder.getstate()[0]) if cut else 0
        return {
            "job": job_id,
            "state": row.state,
            "ended": row.state in TERMINAL,
            "size": size,
            "offset": start,
            "next_offset": start + len(data) - kept,
            "truncated": start > 0 or start + len(data) < size,  # not the whole log
            "text": text,
        }
