"""The daemon's configuration: TOML, decoded and validated by msgspec in one step.

A bad file raises :class:`ConfigError` with one line naming the file, the key path and
what was expected, e.g. ``maintd.toml: Expected `int`, got `str` - at `$.control.client_queue```.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from actors.definitions import Duration, MaterialDef, PipelineDef, check_pipelines, parse_duration

__all__ = ["Config", "ConfigError", "load", "parse_duration"]


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    socket: str | None = None
    mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}\Z")] = "0660"
    admin_group: str | None = "maintd"
    max_line_bytes: Annotated[int, Meta(ge=1024, le=64 << 20)] = 1 << 20
    client_queue: Annotated[int, Meta(ge=8, le=1_000_000)] = 4096
    cancel_timeout: Duration = "30s"


class MaintenanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start_in_maintenance: bool = False
    subsystem_restart_delay: Duration = "1s"


class DaemonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str | None = None
    log_level: Annotated[str, Meta(pattern=r"^(debug|info|warning|error)\Z")] = "info"
    #: On SIGTERM (``systemctl stop``), how long to wait for the drain before stopping anyway.
    stop_drain_timeout: Duration = "60s"


class AgentsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=0, le=256)] = 2
    cancel_grace: Duration = "10s"
    #: How a job's processes are found: "cgroup" (v2), "subreaper" (PR_SET_CHILD_SUBREAPER and
    #: the MAINTD_JOB marker), or "auto": cgroup where a writable cgroup2 exists, else subreaper.
    process_tracking: Literal["auto", "cgroup", "subreaper"] = "auto"
    #: What is left running when a job's main process exits: "kill" it after cancel_grace,
    #: or "wait" for it (the job ends when its last process does).
    leftover_processes: Literal["kill", "wait"] = "kill"


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The read-only HTTP server (``/metrics``, the status page, GoCD's info API); loopback by default."""

    enabled: bool = True
    listen: Annotated[str, Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")] = "127.0.0.1:9187"


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    maintenance: MaintenanceConfig = msgspec.field(default_factory=MaintenanceConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    materials: list[MaterialDef] = []
    config_repos: list[MaterialDef] = []
    pipelines: list[PipelineDef] = []


class ConfigError(Exception):
    """One line that names the file, the key path and what was expected."""


def load(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    errors = check(config)
    if errors:
        raise ConfigError(f"{path}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return resolve_urls(config, path.parent)


def check(config: Config) -> list[str]:
    """The rules msgspec's types cannot state, with the same `$.key` paths."""
    errors: list[str] = []
    names: set[str] = set()
    for where, defs in (("materials", config.materials), ("config_repos", config.config_repos)):
        for i, m in enumerate(defs):
            if m.name in names:
                errors.append(f"material name {m.name!r} is used twice - at `$.{where}[{i}].name`")
            names.add(m.name)
            for key in ("poll_interval", "poll_timeout"):
                if parse_duration(getattr(m, key)) <= 0:
                    errors.append(f"{key} must be more than zero - at `$.{where}[{i}].{key}`")
    if int(config.http.listen.rpartition(":")[2]) > 65535:
        errors.append("port must be 65535 or less - at `$.http.listen`")
    errors += check_pipelines(config.pipelines, {m.name for m in config.materials})
    return errors


def resolve_urls(config: Config, base: Path) -> Config:
    """A material URL that is a relative path is relative to the config file's folder."""

    def resolve(m: MaterialDef) -> MaterialDef:
        if "://" in m.url or ":" in m.url.split("/")[0] or Path(m.url).is_absolute():
            return m
        return msgspec.structs.replace(m, url=str((base / m.url).resolve()))

    return msgspec.structs.replace(
        config,
        materials=[resolve(m) for m in config.materials],
        config_repos=[resolve(m) for m in config.config_repos],
    )
