"""What the job server is configured to do: materials, config repos, pipelines.

Plain frozen Structs, decoded by msgspec from the daemon's TOML and from the pipeline
files of config repositories alike, so both give the same key paths in their errors.
Imports only msgspec and the standard library (maintctl uses :func:`parse_duration`).
"""

from __future__ import annotations

import re
import typing
from typing import Annotated

import msgspec
from msgspec import Meta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# \Z, not $: in Python's re (which msgspec uses) `$` also matches before a trailing newline,
# so "build\n" would pass as a name. A Name becomes a folder name in STATE/workspaces and
# STATE/logs, so it is letters, digits, `_`, `.` and `-`, never `/`, and never starts with `.`.
Duration = Annotated[
    str,
    Meta(pattern=r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*\Z", description="a duration such as 250ms, 30s, 5m, 2h or 1d"),
]
Name = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z",
        description="a name of 1 to 63 letters, digits, '_', '.' or '-' that starts with a letter or digit",
    ),
]


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"1.5m"``, ``"2h"``, ``"250ms"`` -> seconds. Raises ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number with ms, s, m, h or d, e.g. 30m)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


#: No duration in a configuration may be longer (a poll_interval of 10^38 days overflows the
#: timers; nothing maintd waits for is meant to take a month).
MAX_DURATION = 30 * 86400.0
#: The least some durations may be, by key; any other duration may be zero. A poll or a job
#: given less than this would be timed out or started again before it could do anything.
MIN_DURATION = {
    "poll_interval": 0.1,
    "poll_timeout": 0.1,
    "timeout": 0.1,
    "cancel_timeout": 0.1,
    "heartbeat": 0.1,
    "lost_timeout": 0.2,
}


def _seconds(value: float) -> str:
    for unit in ("d", "h", "m", "s"):
        if value >= _UNITS[unit] and (value / _UNITS[unit]).is_integer():
            return f"{value / _UNITS[unit]:g}{unit}"
    return f"{value * 1000:g}ms"


def duration_problem(key: str, text: str) -> str | None:
    """Why the duration ``text`` of ``key`` is out of bounds (the bound named), or None."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        return str(exc)
    shown = text.strip() if len(text.strip()) <= 24 else text.strip()[:20] + "..."
    if not seconds <= MAX_DURATION:
        return f"{key} {shown!r} is too long: at most {_seconds(MAX_DURATION)}"
    low = MIN_DURATION.get(key, 0.0)
    if seconds < low:
        return f"{key} {shown!r} is too short: at least {_seconds(low)}"
    return None


def duration_errors(struct: msgspec.Struct, at: str) -> list[str]:
    """The out-of-bounds durations among the fields of ``struct`` (those typed Duration), with key paths."""
    errors = []
    hints = typing.get_type_hints(type(struct), include_extras=True)
    for field in msgspec.structs.fields(struct):
        hint = hints.get(field.name)
        if hint != Duration and Duration not in typing.get_args(hint):
            continue
        value = getattr(struct, field.name)
        if isinstance(value, str) and (problem := duration_problem(field.name, value)):
            errors.append(f"{problem} - at `{at}.{field.name}`")
    return errors


class Def(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class MaterialDef(Def, kw_only=True):
    """A git repository polled with ``git ls-remote``; each poll is a material update."""

    name: Name
    url: Annotated[str, Meta(min_length=1, max_length=4096)]
    branch: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,200}\Z",
            description="a branch name of letters, digits, '_', '.', '/' or '-' that starts with a letter or digit",
        ),
    ] = "main"
    poll_interval: Duration = "60s"
    poll_timeout: Duration = "5m"


class JobDef(Def, kw_only=True):
    """A job runs ``command`` (an argv list, no shell) or, only if written so, ``shell``."""

    name: Name
    command: Annotated[list[str], Meta(min_length=1)] | None = None
    shell: str | None = None
    timeout: Duration | None = None
    env: dict[str, str] = {}


class StageDef(Def, kw_only=True):
    name: Name
    jobs: Annotated[list[JobDef], Meta(min_length=1)]


class PipelineDef(Def, kw_only=True):
    name: Name
    materials: list[Name] = []
    timer: str | None = None
    stages: Annotated[list[StageDef], Meta(min_length=1)]


class PipelineFile(Def, kw_only=True):
    """A pipeline file in a config repository (pipelines as code)."""

    pipelines: list[PipelineDef] = []


def check_pipelines(pipelines: list[PipelineDef], materials: set[str], where: str = "$.pipelines") -> list[str]:
    """Rules msgspec cannot state: unique names, known materials, command xor shell, valid cron, env names."""
    errors: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(pipelines):
        at = f"{where}[{i}]"
        if p.name in seen:
            errors.append(f"pipeline name {p.name!r} is used twice - at `{at}.name`")
        seen.add(p.name)
        for m in p.materials:
            if m not in materials:
                errors.append(f"unknown material {m!r} - at `{at}.materials`")
        if p.timer is not None and (problem := cron_problem(p.timer)):
            errors.append(f"bad cron schedule {p.timer!r}: {problem} - at `{at}.timer`")
        stage_names: set[str] = set()
        for si, stage in enumerate(p.stages):
            if stage.name in stage_names:
                errors.append(f"stage name {stage.name!r} is used twice - at `{at}.stages[{si}].name`")
            stage_names.add(stage.name)
            job_names: set[str] = set()
            for ji, job in enumerate(stage.jobs):
                jat = f"{at}.stages[{si}].jobs[{ji}]"
                if (job.command is None) == (job.shell is None):
                    errors.append(f"a job needs exactly one of `command` (argv list) or `shell` - at `{jat}`")
                if job.name in job_names:
                    errors.append(f"job name {job.name!r} is used twice - at `{jat}.name`")
                # What execve would refuse only when the job starts: refused here, with its key path.
                for key, value in job.env.items():
                    if not _ENV_NAME.match(key):
                        errors.append(f"{key!r} is not an environment variable name (letters, digits, _) - at `{jat}.env`")
                    elif "\0" in value:
                        errors.append(f"the value of {key} has a NUL character - at `{jat}.env`")
                if any("\0" in arg for arg in job.command or ()) or "\0" in (job.shell or ""):
                    errors.append(f"a command cannot hold a NUL character - at `{jat}`")
                errors += duration_errors(job, jat)
                job_names.add(job.name)
    return errors


def cron_problem(expression: str) -> str | None:
    from croniter import croniter

    if len(expression.split()) not in (5, 6):
        return "expected five fields (minute hour day-of-month month day-of-week) and an optional sixth for seconds"
    return None if croniter.is_valid(expression) else "croniter does not accept it"


def next_fire(expression: str, after: float) -> float:
    """The next time (epoch seconds, local time zone) the cron ``expression`` fires after ``after``."""
    import datetime as dt

    from croniter import croniter

    start = dt.datetime.fromtimestamp(after).astimezone()
    return float(croniter(expression, start).get_next(float))
