"""The daemon's configuration: TOML, decoded and validated by msgspec in one step.

A bad file raises :class:`ConfigError` with every error of the file at once, each one line
naming the file, the key path and what was expected, in words (never a regular expression),
e.g. ``maintd.toml: expected a duration such as 250ms, 30s, 5m, 2h or 1d, got '5x' - at
`$.agents.cancel_grace```; whatever else a file provokes (nesting deep enough to exhaust the
parser's recursion, a NUL in a path) is one line too, never a traceback. Every duration (keys typed ``Duration``)
is bounded: at most ``MAX_DURATION`` (30 days), some at least ``MIN_DURATION``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from actors.decode import Invalid, decode_toml
from actors.definitions import Duration, MaterialDef, PipelineDef, check_pipelines, duration_errors, parse_duration

__all__ = ["Config", "ConfigError", "load", "parse_duration"]


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    socket: str | None = None
    mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}\Z", description='an octal file mode such as "0660"')] = "0660"
    admin_group: str | None = "maintd"
    max_line_bytes: Annotated[int, Meta(ge=1024, le=64 << 20)] = 1 << 20
    client_queue: Annotated[int, Meta(ge=8, le=1_000_000)] = 4096
    cancel_timeout: Duration = "30s"
    #: How long the blocking work of an external subsystem whose process disconnected keeps
    #: blocking, unless the same name registers again and reports first ("0s": not at all).
    reconnect_grace: Duration = "10s"


class MaintenanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start_in_maintenance: bool = False
    subsystem_restart_delay: Duration = "1s"
    #: Refuse ``maintctl enable`` without ``--ttl`` (bad_request).
    require_ttl: bool = False


class DaemonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
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
    #: Where jobs run: "local" (``count`` agents on this host) or "celery" (maintd-agent
    #: workers on other hosts, through the ``[celery]`` table's broker; ``count`` is unused).
    backend: Literal["local", "celery"] = "local"


class CeleryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The remote agents' broker (``[agents] backend = "celery"``): Celery with Redis."""

    broker: Annotated[
        str,
        Meta(
            pattern=r"^rediss?://[^\s]*\Z",
            description='a redis:// or rediss:// URL such as "redis://127.0.0.1:6379/0" (no password: see password_file)',
        ),
    ] = "redis://127.0.0.1:6379/0"
    #: a file holding the broker's password (a relative path is relative to the config file's
    #: folder); else the environment variable MAINTD_BROKER_PASSWORD, if set. Never logged.
    password_file: str | None = None
    #: the queues' prefix: agent NAME consumes "<queue>.<NAME>"
    queue: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z", description="letters, digits, '_', '.' or '-'")] = "maintd"
    #: how often maintd expects a worker's heartbeat, and looks at what the workers and the result backend say
    heartbeat: Duration = "2s"
    #: a worker without a heartbeat this long is lost: its jobs are rescheduled
    lost_timeout: Duration = "30s"


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP server (``/metrics``, the status page, GoCD's maintenance API); loopback by default."""

    enabled: bool = True
    listen: Annotated[
        str,
        Meta(
            pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z",
            description='HOST:PORT such as "127.0.0.1:9187" or "[::1]:9187"',
        ),
    ] = "127.0.0.1:9187"
    #: GoCD's maintenance API (``/go/api/admin/maintenance_mode/*``) is on when this names a
    #: tokens file (daemon/tokens.py; ``maintctl token add``); a relative path is relative to
    #: the config file's folder. Read at start and on reload.
    tokens_file: str | None = None
    #: How clients reach this server (``https://ci.example.com``, behind a TLS proxy): the base
    #: of the API's absolute links; unset, they are made from the request's Host header.
    public_url: (
        Annotated[str, Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?\Z", description='a URL such as "https://ci.example.com"')]
        | None
    ) = None


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    maintenance: MaintenanceConfig = msgspec.field(default_factory=MaintenanceConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    celery: CeleryConfig = msgspec.field(default_factory=CeleryConfig)
    materials: list[MaterialDef] = []
    config_repos: list[MaterialDef] = []
    pipelines: list[PipelineDef] = []


class ConfigError(Exception):
    """Every error of one file, each on one line that names the file, the key path and what was
    expected (``lines``); ``str()`` is all of them on one line, for a reload's answer."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        self.lines = [one_line(f"{path}: {e}") for e in errors]
        super().__init__(one_line(f"{path}: " + "; ".join(errors)))


def load(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror}"]) from None
    try:
        config = decode_toml(data, Config)
    except Invalid as exc:
        raise ConfigError(path, exc.errors) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(path, ["not valid TOML: arrays or tables nested too deeply"]) from None
    try:
        errors = check(config)
        if not errors:
            return resolve_urls(config, path.parent)
    except Exception as exc:  # noqa: BLE001 - whatever a file can provoke is one line, never a traceback
        raise ConfigError(path, [f"cannot be used: {type(exc).__name__}: {exc}"]) from None
    raise ConfigError(path, errors)


def one_line(text: str) -> str:
    """The message on one line, control characters shown escaped, at most 1,000 characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 1000 else text[:997] + "..."


def check(config: Config) -> list[str]:
    """The rules msgspec's types cannot state, with the same `$.key` paths."""
    errors: list[str] = []
    names: set[str] = set()
    for where, defs in (("materials", config.materials), ("config_repos", config.config_repos)):
        for i, m in enumerate(defs):
            if m.name in names:
                errors.append(f"material name {m.name!r} is used twice - at `$.{where}[{i}].name`")
            names.add(m.name)
            if any(not c.isprintable() for c in m.url):
                errors.append(f"a url cannot hold a NUL or another control character - at `$.{where}[{i}].url`")
            errors += duration_errors(m, f"$.{where}[{i}]")
    for field in msgspec.structs.fields(config):
        section = getattr(config, field.name)
        if isinstance(section, msgspec.Struct):
            errors += duration_errors(section, f"$.{field.name}")
    if "@" in config.celery.broker:
        errors.append(
            "the broker URL cannot hold a user or password (it would be logged): use password_file - at `$.celery.broker`"
        )
    if not duration_errors(config.celery, "$.celery") and parse_duration(config.celery.lost_timeout) <= parse_duration(
        config.celery.heartbeat
    ):
        errors.append("lost_timeout must be longer than heartbeat - at `$.celery.lost_timeout`")
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

    tokens = config.http.tokens_file
    if tokens is not None and not Path(tokens).is_absolute():
        config = msgspec.structs.replace(config, http=msgspec.structs.replace(config.http, tokens_file=str(base / tokens)))
    password = config.celery.password_file
    if password is not None and not Path(password).is_absolute():
        config = msgspec.structs.replace(
            config, celery=msgspec.structs.replace(config.celery, password_file=str(base / password))
        )
    return msgspec.structs.replace(
        config,
        materials=[resolve(m) for m in config.materials],
        config_repos=[resolve(m) for m in config.config_repos],
    )
