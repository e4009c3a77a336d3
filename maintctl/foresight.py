"""``maintctl``'s foresight: the drain's ETA, what a deadline would do (``enable --dry-run``,
``deadline-preview``) and what holds a restart back (``why``), from the daemon's replies.

Kept lean like the rest of maintctl: the decoded JSON only, times through :mod:`daemon.times`.
Every renderer escapes what it got first (:func:`maintctl.render.clean`).
"""

from __future__ import annotations

import time

from daemon.times import about, hhmm, local

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a few ms of maintctl's start-up
    from typing import Any

MDU = "material_update"
#: A subsystem in these states has no process to cancel its items (actors.types.SubsystemState).
UNREACHABLE = ("disconnected", "failed")

#: How a deadline preview titles each verdict (actors/eta.py's constants), in the order shown.
VERDICTS = (
    ("ends_before", "Expected to end before the deadline"),
    ("probably_ends_before", "Probably ends before it (its p50 is before, its p90 after)"),
    ("cancelled_at_deadline", "Expected to be cancelled at the deadline"),
    ("holds_past_deadline", "Could hold the drain past the deadline (not cancelled at it, or no history)"),
)

BASIS_WORDS = {
    "external": "its subsystem's own estimate",
    "job": "runs of this job",
    "stage": "runs of its stage's jobs",
    "pipeline": "runs of its pipeline's jobs",
    "material": "polls of this material",
}


def _clean(value: Any) -> Any:
    from .render import clean

    return clean(value)


def drain_line(eta: dict[str, Any] | None, now: float | None = None, *, enabled: bool = True) -> str | None:
    """``expected drained in about 6 min (p90 11 min), by 02:14``; ``no estimate: ...``; None
    when nothing blocks (or the daemon sent no ``eta``)."""
    if not eta or not eta.get("items"):
        return None
    now = time.time() if now is None else now
    if eta.get("p50") is None or eta.get("p90") is None:
        n = len(eta.get("unknown") or ())
        return f"no estimate: {n} item(s) without history"
    p50, p90 = eta["p50"], eta["p90"]
    what = "expected drained" if enabled else "a drain started now would end"
    overdue = sum(1 for item in eta["items"] if item.get("overdue"))
    if p90 - now < 1 and overdue:  # history says it should have ended: say that, not "in about 0 s"
        return f"{what} any moment: {overdue} item(s) overdue against history"
    return f"{what} in about {about(p50 - now)} (p90 {about(p90 - now)}), by {hhmm(p50)}"


def item_note(e: dict[str, Any] | None) -> str:
    """One item's ETA in words: ``about 02:10 (p90 02:12; 12 runs of this job)``, ``overdue
    against history``, ``no history``."""
    if not e:
        return ""
    if e.get("basis") == "external":
        return f"expected to end about {hhmm(e['p50'])} ({BASIS_WORDS['external']})"
    if e.get("p50") is None:
        return "no history"
    basis = f"{e.get('samples', 0)} {BASIS_WORDS.get(e.get('basis', ''), 'runs')}"
    if e.get("overdue"):
        return f"overdue against history ({basis})"
    return f"expected to end about {hhmm(e['p50'])} (p90 {hhmm(e['p90'])}; {basis})"


def etas_by_item(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["item_id"]: e for e in (result.get("eta") or {}).get("items") or ()}


def cancel_command(item: dict[str, Any]) -> str | None:
    """The exact command that would cancel ``item``, or None if it cannot be cancelled."""
    if item.get("kind") == MDU or not item.get("cancellable"):
        return None
    import shlex

    return f"maintctl cancel {shlex.quote(item['id'])}"


def _item_lines(
    item: dict[str, Any], e: dict[str, Any] | None, now: float, command: str | None = "", state: str = ""
) -> list[str]:
    """An item, its ETA and how to cancel it (``command``: as :func:`cancel_command` says unless given)."""
    started = item.get("started_at")
    since = f"since {local(started)} ({about(now - started)})" if isinstance(started, int | float) else ""
    lines = [f"  {item['id']}  {item['kind']}  {since}  {item.get('description', '')}".rstrip()]
    if note := item_note(e):
        lines.append(f"    ETA: {note}")
    command = cancel_command(item) if command == "" else command
    if command:
        lines.append(f"    cancel: {command}")
    elif state in UNREACHABLE or state == "removed":
        after = "it is restarting; try again shortly" if state == "failed" else "it can be once it registers again"
        lines.append(f"    cannot be cancelled now: its subsystem is {state} ({after})")
    elif item.get("kind") == MDU:
        lines.append("    cannot be cancelled: material updates are never cancelled (a partial clone can corrupt the repository)")
    else:
        lines.append("    cannot be cancelled: its subsystem does not accept cancel")
    return lines


# -- deadline preview -------------------------------------------------------------------------


def preview(result: dict[str, Any], *, dry_run: bool, enabled: bool) -> str:
    """A ``preview`` reply in words."""
    result = _clean(result)
    now = result["now"]
    deadline = result["deadline"]
    then = "cancellable work is cancelled at it" if result["cancel_at_deadline"] else "nothing is cancelled at it"
    lines = [f"Deadline {hhmm(deadline)} (in {about(deadline - now)}); {then}."]
    if line := drain_line(result["drain"], now, enabled=enabled):
        lines.append(line[0].upper() + line[1:] + ".")
    items = result["items"]
    if not items:
        lines.append("Nothing blocks a restart now: no item is affected by the deadline.")
    for verdict, title in VERDICTS:
        chosen = [f for f in items if f["verdict"] == verdict]
        if chosen:
            lines += ["", f"{title} ({len(chosen)}):"]
            for f in chosen:
                lines += _item_lines(f["item"], f["eta"], now)
    if dry_run:
        lines += ["", "Dry run: nothing was changed."]
    return "\n".join(lines)


# -- why ------------------------------------------------------------------------------------


def holding(result: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What holds ``safe_to_restart`` back, by subsystem (the JSON ``maintctl why`` prints)."""
    now = time.time() if now is None else now
    m = result["maintenance"]
    etas = etas_by_item(result)
    by_subsystem: dict[str, list[dict[str, Any]]] = {}
    for group in result["running_systems"].values():
        for item in group:
            if item.get("blocks_restart", True):
                entry = {"item": item, "eta": etas.get(item["id"]), "cancel": cancel_command(item)}
                by_subsystem.setdefault(item["subsystem"], []).append(entry)
    subsystems = []
    for s in result["subsystems"]:
        items = by_subsystem.pop(s["name"], [])
        if s["state"] in UNREACHABLE:  # its process is gone: nothing to send a cancel to
            items = [{**entry, "cancel": None} for entry in items]
        if items or (m["enabled"] and s["state"] != "drained"):
            asked = s.get("pause_asked_at")
            subsystems.append(
                {
                    "name": s["name"],
                    "state": s["state"],
                    "silent_for": None if asked is None else max(0.0, now - asked),
                    "pause_asked_at": asked,
                    "items": items,
                }
            )
    for name, items in by_subsystem.items():  # items of a subsystem already removed
        items = [{**entry, "cancel": None} for entry in items]
        subsystems.append({"name": name, "state": "removed", "silent_for": None, "pause_asked_at": None, "items": items})
    return {
        "safe_to_restart": m["safe_to_restart"],
        "since": m.get("since") if m["safe_to_restart"] else None,
        "maintenance": m["state"] if m["enabled"] else "off",
        "eta": result.get("eta"),
        "subsystems": subsystems,
    }


def why(held: dict[str, Any], now: float | None = None) -> str:
    held = _clean(held)
    now = time.time() if now is None else now
    if held["safe_to_restart"]:
        return f"nothing: safe to restart since {hhmm(held['since'])}"
    lines = []
    if held["maintenance"] == "off":
        lines.append("maintenance mode is off: run `maintctl enable` to drain")
    count = sum(len(s["items"]) for s in held["subsystems"])
    lines.append(f"not safe to restart: {count} item(s) in flight that block it, in {len(held['subsystems'])} subsystem(s)")
    if line := drain_line(held.get("eta"), now, enabled=held["maintenance"] != "off"):
        lines.append(line)
    for s in held["subsystems"]:
        head = f"{s['name']} ({s['state']})"
        if s["silent_for"] is not None:
            silent = about(s["silent_for"])
            head += f": has not acknowledged the pause, silent for {silent} (asked at {hhmm(s['pause_asked_at'])})"
        lines += ["", head]
        for entry in s["items"]:
            lines += _item_lines(entry["item"], entry["eta"], now, entry["cancel"], s["state"])
    return "\n".join(lines)
