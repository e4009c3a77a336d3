"""Human-readable output for maintctl. ``--json`` bypasses all of this.

Every string from the daemon may hold text a client chose (an item's id and description,
a reason, a pipeline name). Each renderer first passes what it got through :func:`clean`,
which escapes control characters and bidi overrides (``\\x1b``, ``\\u202e``), and ``maintctl``
passes its whole human output through :func:`terminal` too: nothing it prints can retitle
the terminal, move its cursor or reorder what it shows.
"""

from __future__ import annotations

from typing import Any

from daemon.logs import escape
from daemon.times import iso, local, seconds_until

from . import foresight

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


def when(ts: float | None) -> str:
    """An item's or a run's time, in the local time zone."""
    return local(ts)


def maintenance_line(m: dict[str, Any]) -> str:
    m = clean(m)
    if not m["enabled"]:
        by = f" (last turned off by {m['updated_by']} at {iso(m['updated_on'])})" if m.get("updated_by") else ""
        return f"Maintenance mode: off{by}"
    text = f"Maintenance mode: ON, {m['state']}; turned on by {m['updated_by']} at {iso(m['updated_on'])}"
    if m.get("reason"):
        text += f"\n  reason: {m['reason']}"
    if m.get("deadline"):
        text += f"\n  deadline: {iso(m['deadline'])}" + (" (OVERDUE)" if m.get("overdue") else "")
        if m.get("on_deadline") == "cancel":
            text += ", cancellable work is cancelled at the deadline"
    return text


def safe_line(m: dict[str, Any]) -> str:
    m = clean(m)
    if m["safe_to_restart"]:
        return "Safe to restart: YES"
    if not m["enabled"]:
        return "Safe to restart: no (maintenance mode is off; run `maintctl enable`)"
    return "Safe to restart: no (still draining)"


def items_table(items: list[dict[str, Any]], etas: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """One row an item; with ``etas`` (by item id, escaped already), each ETA in words after it."""
    items = clean(items)
    rows = []
    for item in items:
        flags = []
        if item.get("cancellable") and item.get("kind") != "material_update":
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
        f"Store: DEGRADED, {store['pending_writes']} result(s) waiting to be written since {iso(store['since'])}"
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
    lines = [maintenance_line(m), safe_line(m), *store_line(result.get("store"))]
    if not m["safe_to_restart"] and (eta := foresight.drain_line(result.get("eta"), enabled=m["enabled"])):
        lines.append(eta[0].upper() + eta[1:])
    etas = foresight.etas_by_item(result)
    if result.get("job_tracking"):
        lines.append(f"Job tracking: {result['job_tracking']}")
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
            lines += ["", f"{title}:", *items_table(items, etas)]
    removed = result.get("removed") or []
    if removed:
        lines += ["", "Removed subsystems:"]
        for r in removed:
            lines.append(f"  {r['name']} at {iso(r['at'])} ({r['reason']}), {len(r['abandoned'])} item(s) abandoned")
            lines += ["  " + row for row in items_table(r["abandoned"])]
    return "\n".join(lines)


def event(e: dict[str, Any]) -> str:
    e = clean(e)
    m = e["maintenance"]
    safe = "safe to restart" if m["safe_to_restart"] else m["state"]
    where = f" {e['subsystem']}" if e.get("subsystem") else ""
    text = f"{iso(e['at'])} {e['event']}{where}: {e.get('message') or ''} [{safe}]"
    if e.get("items"):
        text += "\n" + "\n".join(items_table(e["items"]))
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


def agents(rows: list[dict[str, Any]]) -> str:
    rows = clean(rows)
    lines = []
    for a in rows:
        doing = f" {a['job']} (pid {a['pid']}) since {when(a.get('since'))}" if a["state"] == "building" else ""
        lines.append(f"  {a['name']:<10} {a['state']:<9}{doing}")
    return "\n".join(lines) or "no agents"
