"""maintctl's words for the ETA: the drain line (status, wait's progress), each item's note."""

from __future__ import annotations

from daemon.times import hhmm
from maintctl import render
from maintctl.foresight import drain_line, item_note

NOW = 1_800_000_000.0


def test_the_drain_line_says_how_long_and_by_when_or_why_it_cannot() -> None:
    eta = {"p50": NOW + 360, "p90": NOW + 660, "items": [{"item_id": "a/1"}], "unknown": []}
    assert drain_line(eta, NOW) == f"expected drained in about 6 min (p90 11 min), by {hhmm(NOW + 360)}"
    assert drain_line(eta, NOW, enabled=False).startswith("a drain started now would end in about 6 min")
    unknown = {"p50": None, "p90": None, "items": [{"item_id": "a/1"}, {"item_id": "a/2"}], "unknown": ["a/1", "a/2"]}
    assert drain_line(unknown, NOW) == "no estimate: 2 item(s) without history"
    assert drain_line({"p50": None, "p90": None, "items": [], "unknown": []}, NOW) is None  # nothing blocks
    assert drain_line(None, NOW) is None  # an older daemon sends no eta
    overdue = {"p50": NOW, "p90": NOW, "items": [{"item_id": "a/1", "overdue": True}], "unknown": []}
    assert drain_line(overdue, NOW) == "expected drained any moment: 1 item(s) overdue against history"


def test_each_item_says_overdue_against_history_or_no_history() -> None:
    on_time = {"p50": NOW + 60, "p90": NOW + 120, "basis": "job", "samples": 12, "overdue": False}
    assert item_note(on_time) == f"expected to end about {hhmm(NOW + 60)} (p90 {hhmm(NOW + 120)}; 12 runs of this job)"
    assert item_note({**on_time, "overdue": True, "basis": "stage"}) == "overdue against history (12 runs of its stage's jobs)"
    assert item_note({"p50": None, "p90": None, "basis": "none", "samples": 0, "overdue": False}) == "no history"


def test_waits_progress_line_carries_the_drains_eta() -> None:
    status = {
        "maintenance": {"enabled": True, "state": "draining", "safe_to_restart": False},
        "subsystems": [{"name": "agents", "state": "paused"}],
        "running_systems": {"building_jobs": [{"id": "agents/job-1", "blocks_restart": True}]},
        "eta": {"p50": None, "p90": None, "items": [{"item_id": "agents/job-1"}], "unknown": ["agents/job-1"]},
    }
    assert render.progress(status) == (
        "draining: 1 item(s) still running; waiting for agents; no estimate: 1 item(s) without history"
    )
