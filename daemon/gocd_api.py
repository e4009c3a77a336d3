"""GoCD's maintenance-mode info API: the JSON of ``GET /go/api/admin/maintenance_mode/info``.

:func:`gocd_info` builds it from a :class:`~actors.status.Status`; :mod:`daemon.http` serves
it at :data:`INFO_PATH`, and the status page links to it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from actors.safety import has_running_work
from actors.status import Status
from actors.types import InFlightItem

DOC_URL = "https://api.gocd.org/current/#maintenance-mode-info"
INFO_PATH = "/api/maintenance_mode/info"
#: A material update's description: ``material NAME: URL (BRANCH)`` or ``config repo NAME: URL (BRANCH)``
MATERIAL = re.compile(r"^(material|config repo) ([^:\s]+): (.*) \(([^()]*)\)$")


def _iso(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return str(ts)


def pipeline_counter(item: InFlightItem) -> int | None:
    """The pipeline counter, from the description ``PIPELINE/COUNTER/STAGE/JOB``: InFlightItem has no field for it."""
    if not item.pipeline or not item.stage:
        return None
    match = re.match(rf"{re.escape(item.pipeline)}/(\d+)/{re.escape(item.stage)}/", item.description)
    return int(match.group(1)) if match else None


def _material(item: InFlightItem) -> dict[str, Any]:
    """GoCD's material representation plus ``mdu_start_time``; maintd polls git only."""
    match = MATERIAL.match(item.description)
    if match and item.subsystem == "materials":
        attributes: dict[str, Any] = {
            "name": match.group(2),
            "url": match.group(3),
            "branch": match.group(4),
            "auto_update": True,
            "config_repo": match.group(1) == "config repo",
        }
        kind = "git"
    else:  # an external subsystem's material update: only its description is known
        attributes = {"name": item.local_id, "url": None, "description": item.description, "auto_update": True}
        kind = "unknown"
    return {"type": kind, "attributes": attributes, "mdu_start_time": _iso(item.started_at)}


def _job(item: InFlightItem, state: str) -> dict[str, Any]:
    counter = pipeline_counter(item)
    return {
        "pipeline_name": item.pipeline,
        "pipeline_counter": counter,
        # maintd runs each stage once (no re-runs), so a known stage's counter is "1"; GoCD sends it as a string.
        "stage_counter": "1" if counter is not None else None,
        "stage_name": item.stage,
        "name": item.job or item.local_id,
        "state": state,
        "scheduled_date": _iso(item.started_at),
        "agent_uuid": item.agent,
    }


def _other(item: InFlightItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "subsystem": item.subsystem,
        "kind": item.kind,
        "description": item.description,
        "start_time": _iso(item.started_at),
        "blocks_restart": item.blocks_restart,
        "cancellable": item.cancellable,
    }


def gocd_info(status: Status) -> dict[str, Any]:
    """GoCD's maintenance mode info; ``attributes`` only while maintenance mode is on.

    ``has_running_systems`` is "not safe to restart because of running work": any listed
    item that blocks the restart, whatever its group, from :func:`actors.safety.has_running_work`,
    the computation the supervisor's ``safe_to_restart`` uses. An item that says
    ``blocks_restart: false`` (a scheduled job, which survives a restart) is listed but
    does not count.
    """
    m = status.maintenance
    info: dict[str, Any] = {
        "_links": {"self": {"href": INFO_PATH}, "doc": {"href": DOC_URL}},
        "is_maintenance_mode": m.enabled,
        "metadata": {"updated_by": m.updated_by, "updated_on": m.updated_on},
    }
    if m.enabled:
        rs = status.running_systems
        info["attributes"] = {
            "has_running_systems": has_running_work(rs),
            "running_systems": {
                "material_update_in_progress": [_material(i) for i in rs.material_update_in_progress],
                "building_jobs": [_job(i, "Building") for i in rs.building_jobs],
                "scheduled_jobs": [_job(i, "Scheduled") for i in rs.scheduled_jobs],
                "other": [_other(i) for i in rs.other],
            },
        }
    return info
