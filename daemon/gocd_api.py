"""GoCD's maintenance-mode info API: the JSON of ``GET /go/api/admin/maintenance_mode/info``.

:func:`gocd_info` builds it from a :class:`~actors.status.Status`; :mod:`daemon.http` serves
it at :data:`INFO_PATH`, and the status page links to it.
"""

from __future__ import annotations

from typing import Any

from actors.safety import has_running_work
from actors.status import Status
from actors.types import InFlightItem

from .times import iso

DOC_URL = "https://api.gocd.org/current/#maintenance-mode-info"
INFO_PATH = "/api/maintenance_mode/info"


def _iso(ts: float | None) -> str | None:
    """GoCD's time format: ISO 8601 UTC to the second."""
    return iso(ts, timespec="seconds")


def _material(item: InFlightItem) -> dict[str, Any]:
    """GoCD's material representation plus ``mdu_start_time``; maintd polls git only."""
    material = item.material
    if material is not None:
        attributes: dict[str, Any] = {
            "name": material.name,
            "url": material.url,
            "branch": material.branch,
            "auto_update": True,
            "config_repo": material.config_repo,
        }
        kind = "git"
    else:  # an external subsystem's material update: only its description is known
        attributes = {"name": item.local_id, "url": None, "description": item.description, "auto_update": True}
        kind = "unknown"
    return {"type": kind, "attributes": attributes, "mdu_start_time": _iso(item.started_at)}


def _job(item: InFlightItem, state: str) -> dict[str, Any]:
    counter = item.counter
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


#: How GoCD shows an item of each group of :meth:`actors.status.RunningSystems.groups`.
ENTRY = {
    "material_update_in_progress": _material,
    "building_jobs": lambda item: _job(item, "Building"),
    "scheduled_jobs": lambda item: _job(item, "Scheduled"),
    "other": _other,
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
        "metadata": {"updated_by": m.updated_by, "updated_on": iso(m.updated_on)},
    }
    if m.enabled:
        rs = status.running_systems
        info["attributes"] = {
            "has_running_systems": has_running_work(rs),
            "running_systems": {group: [ENTRY[group](i) for i in items] for group, items in rs.groups()},
        }
    return info
