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

from actors.eta import DrainEta, ItemEta
from actors.safety import blocking
from actors.status import Status, SubsystemInfo
from actors.types import MATERIAL_UPDATE, InFlightItem

from .gocd_api import INFO_PATH
from .times import about, hhmm, human, span, utc

REFRESH_SECONDS = 5
#: The built-in subsystems, in drain order, and how GoCD's checklist names each: the line
#: while waiting, the line when done. GoCD's scheduling line waits for its building jobs.
CHECKLIST = (
    ("materials", "Waiting for material subsystem to stop..", "Stopped material subsystem."),
    ("config repos", "Waiting for config repository polling to stop..", "Stopped polling on config repositories."),
    ("triggers", "Waiting for pipeline triggers to stop..", "Stopped pipeline triggers."),
    ("scheduler", "Waiting for building jobs to finish..", "Stopped scheduling subsystem."),
    ("agents", "Waiting for agent subsystem to stop..", "Stopped agent subsystem."),
    ("config", "Waiting for config changes to stop..", "Stopped config changes."),
    ("store", "Waiting for database and filesystem to be in inactive state..", "Stopped database and filesystem modifications."),
)
#: The README's section on maintenance mode (the banner links to it). pyproject.toml names no
#: project page yet: change the host here when it does; the anchor is the README's heading.
#: The page that says what maintenance mode does (served by maintd itself: daemon/templates/help.html.j2).
HELP_PATH = "/help"
#: The reason maintd gives a maintenance it turned on itself (``--start-in-maintenance``).
STARTED_IN_MAINTENANCE = "started with --start-in-maintenance"

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
        started = m.updated_by == "maintd" and m.reason == STARTED_IN_MAINTENANCE
        banner = {"by": m.updated_by or "someone", "at": human(m.updated_on), "started": started, "readme": HELP_PATH}
    return {
        "title": title,
        "refresh": REFRESH_SECONDS,
        "info_path": INFO_PATH,
        "banner": banner,
        "version": version,
        "generated_at": _human(now),
    }


def _ran(now: float, ts: Any) -> str:
    """How long since ``ts``: ``4m12s`` (``-`` for a time that is not a number)."""
    return span(now - ts) if isinstance(ts, int | float) else "-"


def _deadline(deadline: Any, overdue: bool, now: float) -> str:
    """The deadline and its countdown: ``... (in 12m00s)``, ``... (passed 3m10s ago: overdue)``."""
    if not isinstance(deadline, int | float):
        return human(deadline)
    if deadline > now:
        return f"{human(deadline)} (in {span(deadline - now)})"
    return f"{human(deadline)} (passed {span(now - deadline)} ago{': overdue' if overdue else ''})"


def page_context(status: Status, *, version: str, now: float, config_repos: bool | None = None) -> dict[str, Any]:
    """Everything the status page shows, read from ``status`` as plain values for status.html.j2.

    ``config_repos``: whether any config repository is configured (None: not known; then the
    config repo line shows while a config repo poll runs). ``status.eta`` (the drain's ETA, set
    by the shell from :class:`~daemon.foresight.Foresight`) gives the ETA lines and notes."""
    m = status.maintenance
    etas = {e.item_id: e for e in status.eta.items} if status.eta is not None else {}
    rs = status.running_systems
    rows = [
        ("Turned on by", m.updated_by or "-"),
        ("At", _human(m.updated_on)),
        ("Reason", m.reason or "-"),
        ("Deadline", _deadline(m.deadline, m.overdue, now) if m.deadline else "none"),
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
            "ran": _ran(now, i.started_at),
            "eta": _item_note(etas.get(i.id), now),
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
        "checklist": _checklist(status, config_repos),
        "backend": status.agents_backend,
        "eta": _drain_line(status.eta, now, m.enabled),
        "why": _why(status, etas, now),
        "subsystems": status.subsystems,
        "building": _stages(rs.building_jobs, now, etas),
        "scheduled": _stages(rs.scheduled_jobs, now, {}),
        "mdus": [_mdu(item, now, etas) for item in sorted(rs.material_update_in_progress, key=lambda i: (i.started_at, i.id))],
        "other": other,
        "show_external": bool(other) or any(s.external for s in status.subsystems),
        "removed": [
            {"name": r.name, "at": _human(r.at), "reason": r.reason, "abandoned": len(r.abandoned)} for r in status.removed[-10:]
        ],
    }


def _drain_line(eta: DrainEta | None, now: float, enabled: bool) -> str | None:
    """``expected drained in about 6 min (p90 11 min), by 02:14`` or ``no estimate: 2 item(s)
    without history``; None when nothing blocks (the words of ``maintctl status``)."""
    if eta is None or not eta.items:
        return None
    if eta.p50 is None or eta.p90 is None:
        return f"no estimate: {len(eta.unknown)} item(s) without history"
    what = "expected drained" if enabled else "a drain started now would end"
    return f"{what} in about {about(eta.p50 - now)} (p90 {about(eta.p90 - now)}), by {hhmm(eta.p50)}"


def _item_note(e: ItemEta | None, now: float) -> str:
    """One item's ETA: ``expected to end about 02:10 (p90 02:12)``, ``overdue against history``, ``no history``."""
    if e is None:
        return ""
    if e.basis == "external":
        return f"expected to end about {hhmm(e.p50)} (its subsystem's own estimate)"
    if e.p50 is None:
        return "no history"
    if e.overdue:
        return f"overdue against history ({e.samples} runs)"
    return f"expected to end about {hhmm(e.p50)} (p90 {hhmm(e.p90)}; {e.samples} runs)"


def _why(status: Status, etas: dict[str, ItemEta], now: float) -> dict[str, Any]:
    """What holds ``safe_to_restart`` back, by subsystem (``maintctl why``'s data): every
    blocking item with since when, its ETA and how to cancel it; a subsystem silent since asked to pause."""
    m = status.maintenance
    if m.safe_to_restart:
        return {"safe": True, "since": hhmm(m.since), "subsystems": []}
    by_subsystem: dict[str, list[InFlightItem]] = {}
    for item in blocking(status.running_systems.items()):
        by_subsystem.setdefault(item.subsystem, []).append(item)
    groups = []
    states = {s.name: s for s in status.subsystems}
    names = [s.name for s in status.subsystems] + sorted(set(by_subsystem) - set(states))
    for name in names:
        sub = states.get(name)
        items = by_subsystem.get(name, [])
        state = sub.state if sub is not None else "removed"
        if not items and not (m.enabled and state != "drained"):
            continue
        reachable = state not in ("disconnected", "failed", "removed")
        asked = sub.pause_asked_at if sub is not None else None
        groups.append(
            {
                "name": name,
                "state": state,
                "silent": None if asked is None else f"silent for {_ran(now, asked)} (asked at {hhmm(asked)})",
                "items": [
                    {
                        "id": i.id,
                        "work": i.description,
                        "since": f"{human(i.started_at)} ({_ran(now, i.started_at)})",
                        "eta": _item_note(etas.get(i.id), now),
                        "cancel": f"maintctl cancel {i.id}"
                        if reachable and i.cancellable and i.kind != MATERIAL_UPDATE
                        else None,
                    }
                    for i in items
                ],
            }
        )
    return {"safe": False, "since": None, "subsystems": groups}


def _stages(items: tuple[InFlightItem, ...], now: float, etas: dict[str, ItemEta]) -> list[dict[str, Any]]:
    """Jobs grouped by their stage (``pipeline / counter / stage``), oldest first."""
    groups: dict[str, list[dict[str, str]]] = {}
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        counter = item.counter
        if item.pipeline and item.stage:
            key = f"{item.pipeline} / {counter if counter is not None else '?'} / {item.stage}"
        else:
            key = item.subsystem
        job = {
            "job": item.job or item.local_id,
            "since": _human(item.started_at),
            "ran": _ran(now, item.started_at),
            "eta": _item_note(etas.get(item.id), now),
            "agent": item.agent or "-",
            "id": item.id,
        }
        groups.setdefault(key, []).append(job)
    return [{"stage": stage, "jobs": jobs} for stage, jobs in groups.items()]


def _mdu(item: InFlightItem, now: float, etas: dict[str, ItemEta]) -> dict[str, str]:
    """A material update, how long it has run and, if its material's ``poll_timeout`` is known
    (the item's ``timeout_at``), when that ends it."""
    material = item.material
    if material is not None:
        kind = "Git (config repo)" if material.config_repo else "Git"
        name, where = material.name, f"{material.url} ({material.branch})"
    else:
        kind, name, where = item.subsystem, item.local_id, item.description
    ends = ""
    if isinstance(item.timeout_at, int | float):
        left = item.timeout_at - now
        ends = f"poll_timeout ends it at {human(item.timeout_at)} (in {span(left)})" if left > 0 else "past its poll_timeout"
    return {
        "kind": kind,
        "name": name,
        "where": where,
        "started": _human(item.started_at),
        "ran": _ran(now, item.started_at),
        "eta": _item_note(etas.get(item.id), now),
        "timeout": ends,
    }


def _checklist(status: Status, config_repos: bool | None = None) -> list[dict[str, Any]]:
    """GoCD's checklist: one line per built-in subsystem (config repo polling apart, and only
    where there are config repos), pipeline triggers, the store's writes, then the externals."""
    subs = {s.name: s for s in status.subsystems}
    mdus = status.running_systems.material_update_in_progress
    lines = []
    for key, waiting, stopped in CHECKLIST:
        if key == "config repos":
            sub = subs.get("materials")
            polling = sum(1 for i in mdus if i.material is not None and i.material.config_repo)
            if sub is None or config_repos is False or (config_repos is None and not polling):
                continue
            done = sub.state == "drained" or (sub.state == "paused" and polling == 0)
            detail = f"{polling} config repo poll(s) running" if polling else ""
        elif key == "triggers":
            # maintd's triggers are its materials' polls and the scheduler's intake: both
            # stop the moment they are paused (nothing new starts), as GoCD's do.
            paused = [subs[n] for n in ("materials", "scheduler") if n in subs]
            if not paused:
                continue
            done = all(s.state in ("paused", "drained") for s in paused)
            detail = ""
        elif key == "store":
            pending = status.store.pending_writes
            done = status.maintenance.enabled and pending == 0
            detail = f"{pending} write(s) pending, store {status.store.state}" if pending else ""
            if not status.maintenance.enabled:
                continue
        else:
            sub = subs.get(key)
            if sub is None:
                continue
            done = sub.state == "drained"
            detail = _sub_detail(sub)
            if key == "scheduler":  # GoCD's scheduling line: done once no job builds
                building = len(status.running_systems.building_jobs)
                done = done and not building
                detail = f"{building} job(s) building" if building else detail
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


def render_status_page(status: Status, *, version: str, now: float, config_repos: bool | None = None) -> str:
    context = page_context(status, version=version, now=now, config_repos=config_repos)
    return TEMPLATES.get_template("status.html.j2").render(context)


def render_help_page(status: Status | None, *, version: str, now: float) -> str:
    return TEMPLATES.get_template("help.html.j2").render(_frame("maintenance mode", status, version, now))


def render_error_page(code: int, message: str, status: Status | None, *, version: str, now: float) -> str:
    context = {**_frame(f"{code} {message}", status, version, now), "code": code, "message": message}
    return TEMPLATES.get_template("error.html.j2").render(context)
