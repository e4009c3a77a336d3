"""Synthetic statuses for the metrics, HTTP and browser tests, built from the supervisor's own types.

Also :func:`need_tool`: an external tool (promtool, chromium) a test needs. Under CI (the
environment variable ``CI`` set) a missing tool fails the test; elsewhere the test is skipped.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
import trio

from actors.status import MaintenanceInfo, RunningSystems, Status, SubsystemInfo
from actors.types import BUILDING_JOB, GROUP_OF_KIND, MATERIAL_UPDATE, SCHEDULED_JOB, InFlightItem, MaterialRef
from daemon.hub import StatusHub


def need_tool(*names: str, package: str) -> str:
    """The path of the first of ``names`` on PATH; fail under CI, skip elsewhere, when there is none."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' or '.join(names)} not found on PATH (Debian package {package!r}: apt-get install -y {package})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must install it", pytrace=False)
    pytest.skip(message)


T0 = 1_795_923_339.0  # 2026-11-29 03:35:39 UTC


def maintenance(state: str = "normal", **kw: Any) -> MaintenanceInfo:
    enabled = state != "normal"
    fields: dict[str, Any] = {
        "enabled": enabled,
        "state": state,
        "safe_to_restart": state == "drained",
        "updated_by": "root" if enabled else None,
        "updated_on": T0 + 3.926 if enabled else None,  # 2026-11-29T03:35:42.926Z
        "reason": "upgrade to 2.0" if enabled else None,
        "deadline": None,
        "overdue": False,
        "on_deadline": None,
        "drain_id": "drain-0001" if enabled else None,
    }
    fields.update(kw)
    return MaintenanceInfo(**fields)


def sub(name: str, state: str = "running", *, in_flight: int = 0, blocking: int = 0, external: bool = False) -> SubsystemInfo:
    return SubsystemInfo(name=name, state=state, in_flight=in_flight, blocking=blocking, external=external)


def builtins(state: str = "running") -> tuple[SubsystemInfo, ...]:
    return tuple(sub(n, state) for n in ("materials", "scheduler", "agents", "config"))


def mdu(
    name: str = "app", url: str = "https://git.example.com/app.git", *, config_repo: bool = False, at: float = T0
) -> InFlightItem:
    key = f"config:{name}" if config_repo else name
    return InFlightItem(
        id=f"materials/{key}",
        subsystem="materials",
        kind=MATERIAL_UPDATE,
        description=f"{'config repo' if config_repo else 'material'} {name}: {url} (main)",
        started_at=at,
        cancellable=False,
        material=MaterialRef(name=name, url=url, branch="main", config_repo=config_repo),
    )


def building(
    job: str = "unit",
    *,
    job_id: int = 1,
    pipeline: str = "build",
    counter: int = 7,
    stage: str = "test",
    agent: str = "agent-1",
    at: float = T0,
) -> InFlightItem:
    return InFlightItem(
        id=f"agents/job-{job_id}",
        subsystem="agents",
        kind=BUILDING_JOB,
        description=f"{pipeline}/{counter}/{stage}/{job} on {agent}",
        started_at=at,
        cancellable=True,
        agent=agent,
        pipeline=pipeline,
        counter=counter,
        stage=stage,
        job=job,
    )


def scheduled(
    job: str = "deploy", *, job_id: int = 2, pipeline: str = "build", counter: int = 7, stage: str = "ship", at: float = T0
) -> InFlightItem:
    return InFlightItem(
        id=f"scheduler/job-{job_id}",
        subsystem="scheduler",
        kind=SCHEDULED_JOB,
        description=f"{pipeline}/{counter}/{stage}/{job}",
        started_at=at,
        cancellable=True,
        blocks_restart=False,
        pipeline=pipeline,
        counter=counter,
        stage=stage,
        job=job,
    )


def external(
    subsystem: str = "batch",
    local: str = "1",
    kind: str = "sleep",
    *,
    blocks: bool = True,
    at: float = T0,
    description: str = "sleep 30",
) -> InFlightItem:
    return InFlightItem(
        id=f"{subsystem}/{local}",
        subsystem=subsystem,
        kind=kind,
        description=description,
        started_at=at,
        cancellable=True,
        blocks_restart=blocks,
    )


def status(
    m: MaintenanceInfo | None = None, subsystems: tuple[SubsystemInfo, ...] | None = None, items: tuple[InFlightItem, ...] = ()
) -> Status:
    groups: dict[str, list[InFlightItem]] = {
        "material_update_in_progress": [],
        "building_jobs": [],
        "scheduled_jobs": [],
        "other": [],
    }
    for item in items:
        groups[GROUP_OF_KIND.get(item.kind, "other")].append(item)
    return Status(
        maintenance=m or maintenance(),
        subsystems=builtins() if subsystems is None else subsystems,
        running_systems=RunningSystems(**{k: tuple(v) for k, v in groups.items()}),
    )


def draining_with_work() -> Status:
    """Maintenance on, draining: an MDU, a config repo poll, two building jobs, a scheduled one, external work."""
    subs = (
        sub("materials", "paused", in_flight=2, blocking=2),
        sub("scheduler", "drained", in_flight=1, blocking=0),
        sub("agents", "paused", in_flight=2, blocking=2),
        sub("config", "drained"),
        sub("batch", "paused", in_flight=1, blocking=1, external=True),
    )
    items = (
        mdu("app"),
        mdu("pipelines", "https://git.example.com/pipelines.git", config_repo=True),
        building("unit", job_id=1, agent="agent-1"),
        building("lint", job_id=2, agent="agent-2"),
        scheduled("deploy", job_id=3),
        external("batch", "7"),
    )
    return status(maintenance("draining", deadline=T0 + 1803.926, on_deadline="wait"), subs, items)


async def publish(hub: StatusHub, st: Status) -> None:
    """Publish as the supervisor does (any thread, through the bridge); return once the hub's listeners had it."""
    seen = trio.Event()

    def listener(got: Status, event: object) -> None:
        if got is st:
            seen.set()

    hub.listeners.append(listener)
    try:
        hub.publish(st, None)
        with trio.fail_after(5):
            await seen.wait()
    finally:
        hub.listeners.remove(listener)
