"""The daemon's configuration: TOML, decoded and validated by msgspec in one step.

A bad file raises :class:`ConfigError` with one line naming the file, the key path and
what was expected, e.g. ``maintd.toml: Expected `int`, got `str` - at `$.control.client_queue```.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

Duration = Annotated[str, Meta(pattern=r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$", description="e.g. 30s, 5m, 2h")]


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` -> seconds. Raises ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number with ms, s, m, h or d, e.g. 30m)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    socket: str | None = None
    mode: Annotated[str, Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    admin_group: str | None = "maintd"
    max_line_bytes: Annotated[int, Meta(ge=1024, le=64 << 20)] = 1 << 20
    client_queue: Annotated[int, Meta(ge=8, le=1_000_000)] = 4096
    cancel_timeout: Duration = "30s"


class MaintenanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start_in_maintenance: bool = False
    subsystem_restart_delay: Duration = "1s"


class DaemonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str | None = None
    log_level: Annotated[str, Meta(pattern=r"^(debug|info|warning|error)$")] = "info"


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    maintenance: MaintenanceConfig = msgspec.field(default_factory=MaintenanceConfig)


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
        return msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
