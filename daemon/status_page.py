"""The status page and the error pages: HTML rendered by Jinja2 from templates in daemon/templates.

:func:`render_status_page` shows maintenance mode, GoCD's checklist of subsystems, the work
in flight and the recent history; the browser reloads it every :data:`REFRESH_SECONDS`.
:mod:`daemon.http` serves it at ``/``.

Autoescape is on for every template, so every value from the status is HTML-escaped
unless a template says otherwise (none does): escaping is the default, not a call to
remember. :func:`page_context` is where the page reads the status: it turns it into plain
values (strings, numbers, lists) and the templates only lay them out.
"""

from __future__ import annotations

from typing import Any

import jinja2

from actors.status import Status, SubsystemInfo
from actors.types import InFlightItem

from .gocd_api import INFO_PATH
from .times import utc

REFRESH_SECONDS = 5
#: The built-in subsystems, in drain order, and how GoCD's checklist names each.
CHECKLIST = (
    ("materials", "Waiting for material subsystem to stop..", "Stopped material subsystem."),
    ("config repos", "Waiting for config repository polling to stop..", "Stopped polling on config repositories."),
    ("scheduler", "Waiting for scheduling subsystem to stop..", "Stopped scheduling subsystem."),
    ("agents", "Waiting for agent subsystem to stop..", "Stopped agent subsystem."),
    ("config", "Waiting for config changes to stop..", "Stopped config changes."),
)

#: The templates, from the installed package (package data: see pyproject.toml).
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("daemon", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def _human(ts: float | None) -> str:
    """Seconds since the epoch -> ``2026-11-29 03:35:42 UTC``."""
    return utc(ts)


def _frame(title: str, status: Status | None, version: str, now: float) -> dict[str, Any]:
    """What every page shows around its body: the header, the maintenance banner, the footer."""
    banner = None
    if status is not None and status.maintenance.enabled:
        m = status.maintenance
        banner = {"by": m.updated_by or "someone", "at": _human(m.updated_on)}
    return {
        "title": title,
        "refresh": REFRESH_SECONDS,
        "info_path": INFO_PATH,
        "banner": banner,
        "version": version,
        "generated_at": _human(now),
    }


def page_context(status: Status, *, version: str, now: float) -> dict[str, Any]:
    """Everything the status page shows, read from ``status`` as plain values for status.html.j2."""
    m = status.maintenance
    rs = status.running_systems
    rows = [
        ("Turned on by", m.updated_by or "-"),
        ("At", _human(m.updated_on)),
        ("Reason", m.reason or "-"),
        ("Deadline", _human(m.deadline) + (" (passed: overdue)" if m.overdue else "") if m.deadline else "none"),
    ]
    if m.deadline:
        rows.append(("At the deadline", "cancel what is cancellable" if m.on_deadline == "cancel" else "wait"))
    rows.append(("Drain", m.drain_id or "-"))
    other = [
        {
            "subsystem": i.subsystem,
            "kind": i.kind,
            "work": i.description,
            "since": _human(i.started_at),
            "blocks": i.blocks_restart,
            "id": i.id,
            "cancellable": i.cancellable,
        }
        for i in sorted(rs.other, key=lambda i: (i.subsystem, i.started_at, i.id))
    ]
    return {
        **_frame("Server Maintenance Mode", status, version, now),
        "maintenance": {
            "enabled": m.enabled,
            "state": m.state,
            "safe": m.safe_to_restart,
            "rows": rows,
            "updated_by": m.updated_by,
            "updated_at": _human(m.updated_on),
        },
        "checklist": _checklist(status),
        "subsystems": status.subsystems,
        "building": _stages(rs.building_jobs),
        "scheduled": _stages(rs.scheduled_jobs),
        "mdus": [_mdu(item) for item in sorted(rs.material_update_in_progress, key=lambda i: (i.started_at, i.id))],
        "other": other,
        "show_external": bool(other) or any(s.external for s in status.subsystems),
        "removed": [
            {"name": r.name, "at": _human(r.at), "reason": r.reason, "abandoned": len(r.abandoned)} for r in status.removed[-10:]
        ],
    }


def _stages(items: tuple[InFlightItem, ...]) -> list[dict[str, Any]]:
    """Jobs grouped by their stage (``pipeline / counter / stage``), oldest first."""
    groups: dict[str, list[dict[str, str]]] = {}
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        counter = item.counter
        if item.pipeline and item.stage:
            key = f"{item.pipeline} / {counter if counter is not None else '?'} / {item.stage}"
        else:
            key = item.subsystem
        job = {"job": item.job or item.local_id, "since": _human(item.started_at), "agent": item.agent or "-", "id": item.id}
        groups.setdefault(key, []).append(job)
    return [{"stage": stage, "jobs": jobs} for stage, jobs in groups.items()]


def _mdu(item: InFlightItem) -> dict[str, str]:
    material = item.material
    if material is not None:
        kind = "Git (config repo)" if material.config_repo else "Git"
        name, where = material.name, f"{material.url} ({material.branch})"
    else:
        kind, name, where = item.subsystem, item.local_id, item.description
    return {"kind": kind, "name": name, "where": where, "started": _human(item.started_at)}


def _checklist(status: Status) -> list[dict[str, Any]]:
    """GoCD's checklist: one line per built-in subsystem (config repo polling apart), then the externals."""
    subs = {s.name: s for s in status.subsystems}
    mdus = status.running_systems.material_update_in_progress
    lines = []
    for key, waiting, stopped in CHECKLIST:
        if key == "config repos":
            sub = subs.get("materials")
            polling = sum(1 for i in mdus if i.material is not None and i.material.config_repo)
            done = sub is not None and (sub.state == "drained" or (sub.state == "paused" and polling == 0))
            detail = f"{polling} config repo poll(s) running" if polling else ""
        else:
            sub = subs.get(key)
            if sub is None:
                continue
            done = sub.state == "drained"
            detail = _sub_detail(sub)
        lines.append({"done": done, "text": stopped if done else waiting, "detail": detail, "slug": key.replace(" ", "-")})
    for sub in status.subsystems:
        if sub.external:
            done = sub.state == "drained"
            text = f"Stopped external subsystem {sub.name}." if done else f"Waiting for external subsystem {sub.name} to stop.."
            lines.append({"done": done, "text": text, "detail": _sub_detail(sub), "slug": f"external-{sub.name}"})
    return lines


def _sub_detail(sub: SubsystemInfo) -> str:
    if sub.state == "failed":
        return f"failed, being restarted{': ' + sub.last_error if sub.last_error else ''}"
    if sub.state == "drained":
        return f"{sub.in_flight} item(s) kept across a restart" if sub.in_flight else ""
    parts = [sub.state]
    if sub.blocking:
        parts.append(f"{sub.blocking} item(s) holding the restart")
    return ", ".join(parts)


def render_status_page(status: Status, *, version: str, now: float) -> str:
    return TEMPLATES.get_template("status.html.j2").render(page_context(status, version=version, now=now))


def render_error_page(code: int, message: str, status: Status | None, *, version: str, now: float) -> str:
    context = {**_frame(f"{code} {message}", status, version, now), "code": code, "message": message}
    return TEMPLATES.get_template("error.html.j2").render(context)
