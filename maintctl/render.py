"""Human-readable output for maintctl. ``--json`` bypasses all of this.

Every string from the daemon may hold text a client chose (an item's id and description,
a reason, a pipeline name). Each renderer first passes what it got through :func:`clean`,
which escapes control characters and bidi overrides (``\\x1b``, ``\\u202e``), and ``maintctl``
passes its whole human output through :func:`terminal` too: nothing it prints can retitle
the terminal, move its cursor or reorder what it shows.
"""

from __future__ import annotations

import time

from daemon.escape import escape
from daemon.times import human, seconds_until, span

from . import foresight

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a few ms of maintctl's start-up
    from typing import Any

GROUP_TITLES = {
    "material_update_in_progress": "Material updates in progress (cannot be cancelled)",
    "building_jobs": "Building jobs",
    "scheduled_jobs": "Scheduled jobs (kept across a restart; do not block it)",
    "other": "Other work",
}


def clean(value: Any) -> Any:
    """``value`` (a decoded reply) with every string in it, keys included, escaped for a terminal."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def terminal(text: str) -> str:
    """Text about to be printed: escaped but for its own line breaks (the last line of defence)."""
    return escape(text, keep="\n")


#: ``maintctl --utc``: every time in UTC instead of the local time zone (set once, by main).
UTC = False


def when(ts: float | None) -> str:
    """Every time maintctl shows people: local time with its zone (``2026-11-29 04:35:42 CET``),
    or UTC under ``--utc``."""
    return human(ts, UTC)


def maintenance_line(m: dict[str, Any]) -> str:
    m = clean(m)
    if not m["enabled"]:
        by = f" (last turned off by {m['updated_by']} at {when(m['updated_on'])})" if m.get("updated_by") else ""
        return f"Maintenance mode: off{by}; version {m.get('version', 0)}"
    text = f"Maintenance mode: ON, {m['state']}; turned on by {m['updated_by']} at {when(m['updated_on'])}"
    text += f"\n  drain: {m['drain_id']}, version {m.get('version', 0)}"
    if m.get("ttl_end"):
        text += f"\n  ttl: until {when(m['ttl_end'])}" + (" (EXPIRED: still on)" if m.get("ttl_expired") else "")
    if m.get("reason"):
        text += f"\n  reason: {m['reason']}"
    if m.get("deadline"):
        left = seconds_until(m["deadline"])
        soon = f" (in {span(left)})" if left and m.get("state") == "draining" else ""
        text += f"\n  deadline: {when(m['deadline'])}" + (" (OVERDUE)" if m.get("overdue") else soon)
        if m.get("on_deadline") == "cancel":
            text += ", cancellable work is cancelled at the deadline"
    return text


def ttl_warning(m: dict[str, Any]) -> list[str]:
    """The first line of the status while maintenance is on past its ``--ttl``."""
    m = clean(m)
    if not m.get("ttl_expired"):
        return []
    return [
        f"WARNING: maintenance mode is past its TTL ({when(m['ttl_end'])}) and still on: "
        "`maintctl disable` once the work is done",
        "",
    ]


def safe_line(m: dict[str, Any]) -> str:
    m = clean(m)
    if m["safe_to_restart"]:
        return "Safe to restart: YES"
    if not m["enabled"]:
        return "Safe to restart: no (maintenance mode is off; run `maintctl enable`)"
    return "Safe to restart: no (still draining)"


def items_table(items: list[dict[str, Any]], abandoned: bool = False, etas: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """One row an item. ``abandoned``: the work of a removed subsystem, which nobody can cancel
    any more (``maintctl forget`` clears it from the status). With ``etas`` (by item id, escaped
    already), each ETA in words after it."""
    items = clean(items)
    rows = []
    for item in items:
        flags = ["abandoned"] if abandoned else []
        if item.get("cancellable") and item.get("kind") != "material_update" and not abandoned:
            flags.append("cancellable")
        if not item.get("blocks_restart", True):
            flags.append("does not block restart")
        extra = f" [{', '.join(flags)}]" if flags else ""
        if etas and (note := foresight.item_note(etas.get(item["id"]))):
            extra += f" ({note})"
        rows.append(
            f"  {item['id']:<32} {item['kind']:<16} since {when(item.get('started_at'))}  {item.get('description', '')}{extra}"
        )
    return rows


def store_line(store: dict[str, Any] | None) -> list[str]:
    if not store or store.get("state") != "degraded":
        return []
    return [
        f"Store: DEGRADED, {store['pending_writes']} result(s) waiting to be written since {when(store['since'])}"
        f" (kept in memory and retried; not safe to restart until written): {store['last_error']}"
    ]


def reconnect_note(s: dict[str, Any]) -> str:
    """What a subsystem whose process went away with blocking work is waiting for."""
    left = seconds_until(s.get("reconnect_by"))
    if left is None:
        return ""
    if s["state"] == "disconnected":
        return f"  (disconnected, waiting {left:.0f}s for it to reconnect; its work still blocks)"
    return f"  (registered again; its earlier work blocks until it reports, at most {left:.0f}s)"


def status(result: dict[str, Any]) -> str:
    result = clean(result)
    m = result["maintenance"]
    lines = [*ttl_warning(m), maintenance_line(m), safe_line(m), *store_line(result.get("store"))]
    if not m["safe_to_restart"] and (eta := foresight.drain_line(result.get("eta"), enabled=m["enabled"])):
        lines.append(eta[0].upper() + eta[1:])
    etas = foresight.etas_by_item(result)
    if result.get("job_tracking"):
        lines.append(f"Job tracking: {result['job_tracking']}")
    if backend := result.get("agents_backend"):
        error = f" ({backend['error']})" if backend.get("error") else ""
        lines.append(f"Remote agents: {backend['name']}, broker {backend.get('broker') or '-'}: {backend['state']}{error}")
    lines.append("")
    subsystems = result["subsystems"]
    if subsystems:
        lines.append(f"  {'SUBSYSTEM':<24} {'STATE':<9} {'IN FLIGHT':>9} {'BLOCKING':>8}")
        for s in subsystems:
            error = f"  ({s['last_error']})" if s["state"] == "failed" and s.get("last_error") else ""
            error += reconnect_note(s)
            lines.append(f"  {s['name']:<24} {s['state']:<9} {s['in_flight']:>9} {s['blocking']:>8}{error}")
    else:
        lines.append("  no subsystems registered")
    for _group, title, items in running_groups(result):
        if items:
            lines += ["", f"{title}:", *items_table(items, etas=etas)]
    removed = result.get("removed") or []
    if removed:
        lines += ["", "Removed subsystems:"]
        for r in removed:
            lines.append(f"  {r['name']} at {when(r['at'])} ({r['reason']}), {len(r['abandoned'])} item(s) abandoned")
            lines += ["  " + row for row in items_table(r["abandoned"], abandoned=True)]
        lines.append("  (`maintctl forget SUBSYSTEM` clears a removed subsystem from the status)")
    return "\n".join(lines)


def event(e: dict[str, Any]) -> str:
    e = clean(e)
    m = e["maintenance"]
    safe = "safe to restart" if m["safe_to_restart"] else m["state"]
    where = f" {e['subsystem']}" if e.get("subsystem") else ""
    text = f"{when(e['at'])} {e['event']}{where}: {e.get('message') or ''} [{safe}]"
    if e.get("items"):
        text += "\n" + "\n".join(items_table(e["items"], abandoned=e["event"] == "subsystem_removed"))
    return text


def running_groups(result: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(group, title, items)`` of a status reply's running systems, in GoCD's order: the decoded
    JSON's counterpart of :meth:`actors.status.RunningSystems.groups` (maintctl does not load msgspec
    structs to render a reply)."""
    rs = result["running_systems"]
    return [(group, title, rs.get(group) or []) for group, title in GROUP_TITLES.items()]


def remaining(result: dict[str, Any]) -> list[dict[str, Any]]:
    result = clean(result)
    return [item for _, _, items in running_groups(result) for item in items]


def progress(result: dict[str, Any]) -> str:
    result = clean(result)
    m = result["maintenance"]
    if not m["enabled"]:
        return "maintenance mode is off; waiting for it to be turned on and drained"
    blocking = [i for i in remaining(result) if i.get("blocks_restart", True)]
    waiting = [s["name"] for s in result["subsystems"] if s["state"] != "drained"]
    text = f"{m['state']}: {len(blocking)} item(s) still running"
    if waiting:
        text += f"; waiting for {', '.join(waiting)}"
    if eta := foresight.drain_line(result.get("eta")):
        text += f"; {eta}"
    return text


def pipelines(rows: list[dict[str, Any]]) -> str:
    rows = clean(rows)
    if not rows:
        return "no pipelines configured"
    lines = [f"  {'PIPELINE':<24} {'STATE':<8} {'MATERIALS':<24} {'TIMER':<16} STAGES   (SOURCE)"]
    for p in rows:
        lines.append(
            f"  {p['name']:<24} {'paused' if p['paused'] else 'active':<8} {','.join(p['materials']) or '-':<24} "
            f"{p['timer'] or '-':<16} {' > '.join(p['stages'])}   ({p['source']})"
        )
    return "\n".join(lines)


def runs(rows: list[dict[str, Any]]) -> str:
    rows = clean(rows)
    if not rows:
        return "no runs yet"
    lines = []
    for r in rows:
        lines.append(
            f"{r['pipeline']}/{r['counter']}  {r['state']:<11} {r['trigger']} by {r['triggered_by']} at {when(r['created_at'])}"
        )
        for j in r.get("jobs", []):
            extra = f" (cancelled by {j['cancelled_by']})" if j.get("cancelled_by") else ""
            agent = f" on {j['agent']}" if j.get("agent") else ""
            label = f"{j['stage']}/{j['name']}"
            lines.append(f"    job {j['id']:<6} {label:<28} {j['state']:<11}{agent}{extra}")
    return "\n".join(lines)


def ago(ts: float | None) -> str:
    """How long ago ``ts`` was: ``3s ago``, ``4m12s ago``; ``-`` for none."""
    if ts is None:
        return "-"
    try:
        return f"{span(time.time() - ts)} ago"
    except TypeError:  # not a number
        return str(ts)


def agents(rows: list[dict[str, Any]]) -> str:
    """One row an agent (a remote worker: one row for its slots); a local agent's HOST is ``local``."""
    rows = clean(rows)
    if not rows:
        return "no agents ([agents] count = 0; or, with remote agents, no maintd-agent worker heard from yet)"
    lines = [f"  {'NAME':<16} {'STATE':<20} {'HOST':<16} {'SLOTS':>5} {'BUSY':>4}  {'HEARTBEAT':<12} JOB"]
    for a in rows:
        state = a["state"] + (" (disabled)" if a.get("disabled") and a["state"] != "disabled" else "")
        job = "-"
        if a.get("job"):
            pid = f" (pid {a['pid']})" if a.get("pid") else ""
            job = f"{a['job']}{pid} since {when(a.get('since'))}"
        lines.append(
            f"  {a['name']:<16} {state:<20} {a.get('host') or 'local':<16} {a.get('slots', 1):>5} {a.get('busy', 0):>4}"
            f"  {ago(a.get('heartbeat')):<12} {job}"
        )
    return "\n".join(lines)
