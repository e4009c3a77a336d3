"""The status page: server-rendered HTML of a :class:`~actors.status.Status`, and the error pages.

:func:`render_status_page` shows maintenance mode, GoCD's checklist of subsystems, the
work in flight and the recent history; the browser reloads it every
:data:`REFRESH_SECONDS`. Every value from the status goes through :func:`e` (HTML escape).
:mod:`daemon.http` serves it at ``/``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

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


def _human(ts: float | None) -> str:
    """Seconds since the epoch -> ``2026-11-29 03:35:42 UTC``."""
    return utc(ts)


def e(value: Any) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#2c3e50;color:#fff;padding:.6em 1.5em}header h1{font-size:1.25em;margin:0}
header nav a{color:#cfe3ff;margin-right:1em;font-size:.9em}
main{padding:.8em 1.5em;max-width:1150px}
section{background:#fff;border:1px solid #dde1e6;border-radius:4px;padding:.3em 1.1em .5em;margin:0 0 .8em}
h2{font-size:1.05em;margin:.4em 0}
.state{font-size:1.15em;font-weight:600;margin:.3em 0}
.on{color:#9a5b00}.off{color:#2a6f2a}.safe{color:#2a6f2a;font-weight:600}.unsafe{color:#b02a2a;font-weight:600}
.columns{display:flex;flex-wrap:wrap;gap:0 3em}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}dt{color:#59606b}dd{margin:0}
ul.checklist{list-style:none;padding:0;margin:.4em 0}ul.checklist li{padding:.1em 0}
li.done:before{content:"\\2714";color:#2a6f2a;margin-right:.5em}
li.waiting:before{content:"\\231B";margin-right:.5em}
.detail{color:#59606b;font-size:.9em;margin-left:.5em}
table{border-collapse:collapse;width:100%;margin:.2em 0 .5em}caption{text-align:left;font-weight:600;padding:.2em 0}
th,td{text-align:left;padding:.2em .6em;border-bottom:1px solid #e5e8ec;font-size:.92em;vertical-align:top}
th{background:#f0f2f5}.empty{color:#59606b;font-style:italic;margin:.3em 0}code{font-size:.9em}
p.detail{margin:.2em 0 0}
.banner{background:#fff3cd;border-top:2px solid #e0a800;color:#5c4400;padding:.7em 1.5em;font-weight:600}
footer{color:#59606b;font-size:.85em;padding:.8em 1.5em}
"""


def _layout(title: str, body: str, status: Status | None, version: str, now: float) -> str:
    banner = ""
    if status is not None and status.maintenance.enabled:
        m = status.maintenance
        banner = (
            '<div id="maintenance-banner" class="banner" role="status">'
            f"{e(m.updated_by or 'someone')} turned on maintenance mode at {e(_human(m.updated_on))}."
            "</div>\n"
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f'<header><h1>maintd: {e(title)}</h1><nav><a href="/">Status</a>'
        f'<a href="{INFO_PATH}">Maintenance info (JSON)</a><a href="/metrics">Metrics</a></nav></header>\n'
        f"<main>\n{body}</main>\n"
        f"{banner}"
        f"<footer>maintd {e(version)} &middot; read-only &middot; this page refreshes every {REFRESH_SECONDS} s "
        f"&middot; generated at {e(_human(now))}</footer>\n"
        "</body></html>\n"
    )


def _table(headings: Iterable[str], rows: list[list[str]], empty: str, caption: str | None = None) -> str:
    """Rows hold HTML already escaped."""
    if not rows:
        return f'<p class="empty">{e(empty)}</p>\n'
    head = "".join(f"<th>{e(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _stage_key(item: InFlightItem) -> str:
    counter = item.counter
    if item.pipeline and item.stage:
        return f"{item.pipeline} / {counter if counter is not None else '?'} / {item.stage}"
    return item.subsystem


def _stages(items: tuple[InFlightItem, ...], state: str, empty: str) -> str:
    groups: dict[str, list[InFlightItem]] = {}
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        groups.setdefault(_stage_key(item), []).append(item)
    if not groups:
        return f'<p class="empty">{e(empty)}</p>\n'
    out = []
    for stage, jobs in groups.items():
        rows = [
            [e(j.job or j.local_id), e(state), e(_human(j.started_at)), e(j.agent or "-"), f"<code>{e(j.id)}</code>"]
            for j in jobs
        ]
        out.append(
            _table(("Job", "State", "Scheduled at" if state == "Scheduled" else "Since", "Agent", "Item"), rows, "", stage)
        )
    return "".join(out)


def _mdus(items: tuple[InFlightItem, ...]) -> str:
    rows = []
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        material = item.material
        if material is not None:
            kind = "Git (config repo)" if material.config_repo else "Git"
            name, where = material.name, f"{material.url} ({material.branch})"
        else:
            kind, name, where = item.subsystem, item.local_id, item.description
        rows.append([e(kind), e(name), e(where), e(_human(item.started_at))])
    return _table(("Type", "Name", "URL", "Started at"), rows, "No material update is running.")


def _checklist(status: Status) -> str:
    subs = {s.name: s for s in status.subsystems}
    mdus = status.running_systems.material_update_in_progress
    lines = []
    for key, waiting, stopped in CHECKLIST:
        if key == "config repos":
            sub = subs.get("materials")
            polling = sum(1 for i in mdus if i.subsystem == "materials" and i.local_id.startswith("config:"))
            done = sub is not None and (sub.state == "drained" or (sub.state == "paused" and polling == 0))
            detail = f"{polling} config repo poll(s) running" if polling else ""
        else:
            sub = subs.get(key)
            if sub is None:
                continue
            done = sub.state == "drained"
            detail = _sub_detail(sub)
        lines.append(_check_line(done, waiting, stopped, detail, key.replace(" ", "-")))
    for sub in status.subsystems:
        if not sub.external:
            continue
        lines.append(
            _check_line(
                sub.state == "drained",
                f"Waiting for external subsystem {sub.name} to stop..",
                f"Stopped external subsystem {sub.name}.",
                _sub_detail(sub),
                f"external-{sub.name}",
            )
        )
    return '<ul class="checklist" id="subsystem-checklist">' + "".join(lines) + "</ul>\n"


def _sub_detail(sub: SubsystemInfo) -> str:
    if sub.state == "failed":
        return f"failed, being restarted{': ' + sub.last_error if sub.last_error else ''}"
    if sub.state == "drained":
        return f"{sub.in_flight} item(s) kept across a restart" if sub.in_flight else ""
    parts = [sub.state]
    if sub.blocking:
        parts.append(f"{sub.blocking} item(s) holding the restart")
    return ", ".join(parts)


def _check_line(done: bool, waiting: str, stopped: str, detail: str, slug: str) -> str:
    cls, text = ("done", stopped) if done else ("waiting", waiting)
    extra = f'<span class="detail">({e(detail)})</span>' if detail else ""
    return f'<li class="{cls}" data-subsystem="{e(slug)}">{e(text)}{extra}</li>'


def render_status_page(status: Status, *, version: str, now: float) -> str:
    m = status.maintenance
    rs = status.running_systems
    parts = ['<section id="maintenance">\n']
    if m.enabled:
        parts.append(f'<p class="state on">Maintenance mode is ON: {e(m.state)}</p>\n')
        if m.safe_to_restart:
            parts.append('<p class="safe" id="safe-to-restart">Safe to restart: yes. Every subsystem has stopped.</p>\n')
        else:
            parts.append(
                '<p class="unsafe" id="safe-to-restart">Safe to restart: no. Some subsystems are still in progress.</p>\n'
            )
        rows = [
            ("Turned on by", m.updated_by or "-"),
            ("At", _human(m.updated_on)),
            ("Reason", m.reason or "-"),
            ("Deadline", _human(m.deadline) + (" (passed: overdue)" if m.overdue else "") if m.deadline else "none"),
        ]
        if m.deadline:
            rows.append(("At the deadline", "cancel what is cancellable" if m.on_deadline == "cancel" else "wait"))
        rows.append(("Drain", m.drain_id or "-"))
        parts.append(
            '<div class="columns"><div><h2>Maintenance</h2><dl>'
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
            + "</dl></div>\n<div><h2>Subsystems</h2>\n"
            + _checklist(status)
            + "</div></div>\n"
        )
    else:
        parts.append('<p class="state off">Maintenance mode is off.</p>\n')
        parts.append(
            '<p class="unsafe" id="safe-to-restart">Safe to restart: no. Turn maintenance mode on and wait for '
            "every subsystem to stop: <code>maintctl enable --reason WHY</code>, then <code>maintctl wait</code>.</p>\n"
        )
        if m.updated_by:
            parts.append(f"<p>Last turned off by {e(m.updated_by)} at {e(_human(m.updated_on))}.</p>\n")
    parts.append("</section>\n")

    sub_rows = [
        [
            e(s.name) + (" (external)" if s.external else ""),
            e(s.state),
            e(s.in_flight),
            e(s.blocking),
            e(s.failures) + (f" <span class='detail'>{e(s.last_error)}</span>" if s.last_error else ""),
        ]
        for s in status.subsystems
    ]
    parts.append(
        '<section id="subsystems"><h2>Subsystem states</h2>\n'
        + _table(("Subsystem", "State", "In flight", "Holding the restart", "Failures"), sub_rows, "No subsystem.")
        + "</section>\n"
    )
    parts.append(
        '<section id="running-stages"><h2>Running Stages</h2>\n'
        + _stages(rs.building_jobs, "Building", "No job is building.")
        + "<p class='detail'>Cancel a job with <code>maintctl cancel ITEM</code>.</p></section>\n"
    )
    parts.append(
        '<section id="running-mdus"><h2>Running MDUs</h2>\n'
        + _mdus(rs.material_update_in_progress)
        + "<p class='detail'>Material updates cannot be cancelled: a partial clone can corrupt the repository. "
        "Wait for them to finish.</p></section>\n"
    )
    parts.append(
        '<section id="scheduled-stages"><h2>Scheduled Stages</h2>\n'
        + _stages(rs.scheduled_jobs, "Scheduled", "No job is scheduled.")
        + "<p class='detail'>Scheduled jobs are kept across a restart; they do not hold it back.</p></section>\n"
    )
    other_rows = [
        [
            e(i.subsystem),
            e(i.kind),
            e(i.description),
            e(_human(i.started_at)),
            "yes" if i.blocks_restart else "no",
            f"<code>{e(i.id)}</code>" + ("" if i.cancellable else " (not cancellable)"),
        ]
        for i in sorted(rs.other, key=lambda i: (i.subsystem, i.started_at, i.id))
    ]
    externals = [s for s in status.subsystems if s.external]
    if externals or other_rows:
        parts.append(
            '<section id="external"><h2>External subsystems</h2>\n'
            + _table(
                ("Subsystem", "Kind", "Work", "Since", "Holds the restart", "Item"),
                other_rows,
                "No external work in flight.",
            )
            + "</section>\n"
        )
    if status.removed:
        removed_rows = [[e(r.name), e(_human(r.at)), e(r.reason), e(len(r.abandoned))] for r in status.removed[-10:]]
        parts.append(
            '<section id="removed"><h2>Subsystems that went away</h2>\n'
            + _table(("Subsystem", "At", "Why", "Items abandoned"), removed_rows, "")
            + "</section>\n"
        )
    return _layout("Server Maintenance Mode", "".join(parts), status, version, now)


def render_error_page(code: int, message: str, status: Status | None, *, version: str, now: float) -> str:
    body = f'<section id="error"><h2>{code}</h2><p>{e(message)}</p><p><a href="/">Back to the status page</a></p></section>\n'
    return _layout(f"{code} {message}", body, status, version, now)
