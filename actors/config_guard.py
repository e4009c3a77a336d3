"""The config guard: owns the pipeline configuration and every change to it.

During maintenance (its intake paused) every configuration change is refused with
``maintenance_mode``: pausing or unpausing a pipeline, reloading the config file. Pipeline
files from config repositories (pipelines as code) are merged here; the material
subsystem does not poll them while paused, so nothing arrives then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from .decode import Invalid, decode_toml
from .definitions import PipelineDef, PipelineFile, check_pipelines
from .errors import Conflict, MaintdError, NotFound
from .materials import ConfigRepoFiles, ConfigRepoFilesWanted
from .messages import GetInfo
from .ports import Clock, JobStore, PeerTable
from .runs import PipelinesChanged, PipelinesWanted
from .subsystem import Emit, SubsystemCore
from .types import InFlightItem

log = logging.getLogger("maintd.config")


class SetPipelinePaused(msgspec.Struct, frozen=True, kw_only=True):
    pipeline: str
    paused: bool
    by: str
    peer: str | None = None  # which process asked (pid and command line), for the audit log


class ApplyConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A configuration the shell has read and validated (``maintctl reload``, SIGHUP)."""

    pipelines: tuple[PipelineDef, ...]
    materials: frozenset[str]
    by: str
    peer: str | None = None  # which process asked (pid and command line), for the audit log


class PipelineInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    source: str
    paused: bool
    materials: tuple[str, ...]
    timer: str | None
    stages: tuple[str, ...]


def refuse_in_maintenance(action: str) -> MaintdError:
    return MaintdError(f"maintenance mode is on: {action} is refused until it is turned off", code="maintenance_mode")


def clean_repo_path(path: str) -> bool:
    """A path git itself would write to a tree: no ``.``, ``..``, ``.git`` or empty component, no control character.

    The path of a pipeline file is only a name here (its text comes from git, never from the
    file system), but a tree made by hand (``git mktree``) can hold ``../x.toml`` or a newline,
    and such a file is refused rather than shown to an operator as if it were a path.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return False
    return all(part not in ("", ".", "..") and part.lower() != ".git" for part in path.split("/"))


class ConfigGuardCore(SubsystemCore):
    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Iterable[InFlightItem] = (),
        *,
        pipelines: list[PipelineDef],
        materials: set[str],
        store: JobStore,
        peers: PeerTable,
        clock: Clock,
        paused: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(name, emit, ())
        self.base = {p.name: p for p in pipelines}
        self.materials = set(materials)
        self.from_repos: dict[str, dict[str, PipelineDef]] = {}
        self.paused = set(paused)
        self.held: dict[str, ConfigRepoFiles] = {}
        self.store = store
        self.peers = peers
        self.clock = clock

    def start(self) -> None:
        # The pause state is the store's: neither this actor's restart nor the daemon's forgets it.
        self.paused = set(self.store.paused_pipelines())
        self.publish()
        # A restarted guard knows no config repo: the material subsystem sends their files again.
        self.peers.tell("materials", ConfigRepoFilesWanted())

    def on_resume(self, drain_id: str) -> None:
        held, self.held = self.held, {}
        for message in held.values():
            self.merge_repo(message)

    def all_pipelines(self) -> dict[str, tuple[PipelineDef, str]]:
        merged = {name: (p, "config file") for name, p in self.base.items()}
        for repo, pipelines in self.from_repos.items():
            for name, p in pipelines.items():
                merged.setdefault(name, (p, f"config repo {repo}"))
        return merged

    def publish(self) -> None:
        pipelines = tuple(p for p, _ in self.all_pipelines().values())
        self.peers.tell("scheduler", PipelinesChanged(pipelines=pipelines, paused=frozenset(self.paused)))

    def set_paused(self, msg: SetPipelinePaused) -> dict[str, Any]:
        verb = "pause" if msg.paused else "unpause"
        if not self.intake_open:
            raise refuse_in_maintenance(f"{verb} of a pipeline")
        if msg.pipeline not in self.all_pipelines():
            raise NotFound(f"no pipeline named {msg.pipeline!r}")
        if (msg.pipeline in self.paused) == msg.paused:
            raise Conflict(f"pipeline {msg.pipeline!r} is already {'paused' if msg.paused else 'unpaused'}")
        # Recorded first (the state and its audit entry in one transaction): a change the store
        # cannot record is refused and not made.
        self.store.set_pipeline_paused(msg.pipeline, msg.paused, msg.by, self.clock.now(), detail=msg.peer)
        (self.paused.add if msg.paused else self.paused.discard)(msg.pipeline)
        log.info("%s %sd pipeline %s", msg.by, verb, msg.pipeline)
        self.publish()
        return {"pipeline": msg.pipeline, "paused": msg.paused}

    def apply(self, msg: ApplyConfig) -> dict[str, Any]:
        if not self.intake_open:
            raise refuse_in_maintenance("a configuration reload")
        detail = f"{len(msg.pipelines)} pipeline(s)" + (f"; {msg.peer}" if msg.peer else "")
        self.store.audit("config_reload", msg.by, self.clock.now(), detail=detail)
        self.base = {p.name: p for p in msg.pipelines}
        self.materials = set(msg.materials)
        log.info("%s reloaded the configuration: %d pipeline(s)", msg.by, len(self.base))
        self.publish()
        return {"pipelines": len(self.all_pipelines())}

    def merge_repo(self, msg: ConfigRepoFiles) -> None:
        """Take the pipelines of one config repo; a failure keeps its last good set (and every other repo's)."""
        try:
            found = self.read_repo(msg)
        except Exception as exc:  # noqa: BLE001 - bad input never takes the configuration down
            kept = len(self.from_repos.get(msg.repo, {}))
            log.warning(
                "config repo %s at %s could not be read (%s: %s); its last good set (%d pipeline(s)) is kept",
                msg.repo, msg.revision[:12], type(exc).__name__, exc, kept,
            )  # fmt: skip
            return
        self.from_repos[msg.repo] = found
        log.info("config repo %s at %s: %d pipeline(s)", msg.repo, msg.revision[:12], len(found))
        self.publish()

    def read_repo(self, msg: ConfigRepoFiles) -> dict[str, PipelineDef]:
        found: dict[str, PipelineDef] = {}
        for path, text in sorted(msg.files.items()):
            if not clean_repo_path(path):
                log.warning(
                    "config repo %s, %r at %s: not a clean path in the repository (an empty, `.`, `..` or `.git`"
                    " component, or a control character); file skipped",
                    msg.repo,
                    path,
                    msg.revision[:12],
                )
                continue
            try:
                parsed = decode_toml(text.encode(), PipelineFile)
                errors = check_pipelines(parsed.pipelines, self.materials)
            except (Invalid, msgspec.DecodeError) as exc:
                log.warning("config repo %s, %s at %s: %s; file skipped", msg.repo, path, msg.revision[:12], exc)
                continue
            except RecursionError:
                log.warning(
                    "config repo %s, %s at %s: arrays or tables nested too deeply; file skipped",
                    msg.repo, path, msg.revision[:12],
                )  # fmt: skip
                continue
            except Exception as exc:  # noqa: BLE001 - any failure to read one file skips that file
                log.warning(
                    "config repo %s, %s at %s: cannot be read (%s: %s); file skipped",
                    msg.repo, path, msg.revision[:12], type(exc).__name__, exc,
                )  # fmt: skip
                continue
            if errors:
                log.warning("config repo %s, %s at %s: %s; file skipped", msg.repo, path, msg.revision[:12], "; ".join(errors))
                continue
            for p in parsed.pipelines:
                if p.name in self.base or p.name in found:
                    log.warning("config repo %s, %s: pipeline %s is defined elsewhere; skipped", msg.repo, path, p.name)
                    continue
                found[p.name] = p
        return found

    def info(self) -> list[PipelineInfo]:
        return [
            PipelineInfo(
                name=name,
                source=source,
                paused=name in self.paused,
                materials=tuple(p.materials),
                timer=p.timer,
                stages=tuple(s.name for s in p.stages),
            )
            for name, (p, source) in sorted(self.all_pipelines().items())
        ]

    def handle(self, message: Any) -> Any:
        match message:
            case SetPipelinePaused():
                return self.set_paused(message)
            case ApplyConfig():
                return self.apply(message)
            case PipelinesWanted():
                self.publish()
            case ConfigRepoFiles():
                if self.intake_open or message.restored:  # restored: what it had, not a change
                    self.merge_repo(message)
                else:  # a config change: held until maintenance is over
                    log.info("config repo %s at %s held until maintenance is over", message.repo, message.revision[:12])
                    self.held[message.repo] = message
            case GetInfo():
                return self.info()
            case _:
                return NotImplemented
        return None
