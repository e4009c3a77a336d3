"""Foresight end to end, with the real daemon and maintctl: the status's ETA, ``why``,
``enable --dry-run`` (which changes nothing) and ``deadline-preview``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from daemon.times import hhmm
from tests.conftest import Line


def register(d: Any, name: str) -> Line:
    sub = d.client()
    assert sub.request("register", name=name)["ok"]
    return sub


def test_why_dry_run_and_deadline_preview_tell_the_truth_and_change_nothing(make_daemon: Any) -> None:
    d = make_daemon()
    end = time.time() + 630  # "about 10 min" for the first minute of the test
    exporter = register(d, "exporter")
    exporter.send(
        type="in_flight",
        items=[
            # its own estimate: ends in 10 min, before a 30 min deadline
            {"id": "j1", "kind": "building_job", "description": "export #1", "cancellable": True, "expected_end": end},
            # no history, cancellable: the deadline cancels it if told to
            {"id": "j2", "kind": "building_job", "description": "export #2", "cancellable": True},
            # no history, not cancellable: could hold the drain past the deadline
            {"id": "sync", "kind": "sync", "description": "mirror sync", "cancellable": False},
        ],
    )
    d.wait_status(lambda s: len(s["running_systems"]["other"]) == 1, "the external's items")
    silent = register(d, "silent")

    # Maintenance off: why names it first, and every item that would hold a drain.
    why = d.maintctl("why")
    assert why.returncode == 4, why
    assert "maintenance mode is off" in why.stdout
    assert "cancel: maintctl cancel exporter/j2" in why.stdout
    assert "cannot be cancelled: its subsystem does not accept cancel" in why.stdout
    assert "no history" in why.stdout and "its subsystem's own estimate" in why.stdout

    # A dry run: the preview, and nothing changed (still off, nothing audited).
    dry = d.maintctl("enable", "--deadline", "30m", "--cancel-at-deadline", "--dry-run")
    assert dry.returncode == 0, dry
    assert "Expected to end before the deadline (1):\n  exporter/j1" in dry.stdout
    assert "Expected to be cancelled at the deadline (1):\n  exporter/j2" in dry.stdout
    assert "Could hold the drain past the deadline (not cancelled at it, or no history) (1):\n  exporter/sync" in dry.stdout
    assert "No estimate: 2 item(s) without history." in dry.stdout and "Dry run: nothing was changed." in dry.stdout
    as_json = json.loads(d.maintctl("enable", "--deadline", "30m", "--cancel-at-deadline", "--dry-run", "--json").stdout)
    assert {f["item"]["id"]: f["verdict"] for f in as_json["items"]} == {
        "exporter/j1": "ends_before",
        "exporter/j2": "cancelled_at_deadline",
        "exporter/sync": "holds_past_deadline",
    }
    assert as_json["drain"]["unknown"] == ["exporter/j2", "exporter/sync"]
    status = d.status()
    assert status["maintenance"]["enabled"] is False and status["maintenance"]["drain_id"] is None
    admin = d.client()
    assert [e for e in admin.request("history")["result"]["entries"] if e["action"] == "enable"] == []
    no_deadline = d.maintctl("enable", "--dry-run")
    assert no_deadline.returncode == 2 and "--dry-run previews a deadline" in no_deadline.stderr
    refused = d.maintctl("deadline-preview")
    assert refused.returncode == 1 and "bad_request: no deadline to preview" in refused.stderr

    # A running drain with a deadline (no cancel at it): the preview uses both.
    assert d.maintctl("enable", "--deadline", "30m", "--reason", "upgrade").returncode == 0
    pause = exporter.next_event(lambda m: m.get("type") == "pause_intake")
    exporter.send(type="intake_paused", drain_id=pause["drain_id"])
    d.wait_status(
        lambda s: {x["name"]: x["state"] for x in s["subsystems"]}["exporter"] == "paused", "the exporter to acknowledge"
    )
    preview = d.maintctl("deadline-preview", "--json")
    found = json.loads(preview.stdout)
    assert found["deadline"] == d.status()["maintenance"]["deadline"] and found["cancel_at_deadline"] is False
    assert {f["item"]["id"]: f["verdict"] for f in found["items"]}["exporter/j2"] == "holds_past_deadline"
    text = d.maintctl("deadline-preview", "--deadline", "5m", "--cancel-at-deadline").stdout
    assert "cancellable work is cancelled at it" in text and "Expected to be cancelled at the deadline (2):" in text
    assert "Dry run" not in text

    # why: the silent subsystem, how long it has been silent; each item with its ETA and command.
    why = d.maintctl("why")
    assert why.returncode == 4
    assert "silent (pausing): has not acknowledged the pause, silent for" in why.stdout
    assert "exporter/j1  building_job" in why.stdout
    assert f"ETA: expected to end about {hhmm(end)} (its subsystem's own estimate)" in why.stdout
    held = json.loads(d.maintctl("why", "--json").stdout)
    assert [(s["name"], s["state"]) for s in held["subsystems"]] == [("exporter", "paused"), ("silent", "pausing")]
    assert held["subsystems"][1]["silent_for"] >= 0 and held["subsystems"][1]["items"] == []
    assert [i["cancel"] for i in held["subsystems"][0]["items"]] == [
        "maintctl cancel exporter/j1",
        "maintctl cancel exporter/j2",
        None,
    ]
    assert "No estimate: 2 item(s) without history" in d.maintctl("status").stdout

    # Only the item with an estimate left: the drain has one.
    exporter.send(type="in_flight", items=[{"id": "j1", "kind": "building_job", "cancellable": True, "expected_end": end}])
    status = d.wait_status(lambda s: len(s["running_systems"]["building_jobs"]) == 1, "one item left")
    assert status["eta"]["p50"] == status["eta"]["p90"] == end and status["eta"]["unknown"] == []
    shown = d.maintctl("status").stdout
    assert f"Expected drained in about 10 min (p90 10 min), by {hhmm(end)}" in shown
    assert f"(expected to end about {hhmm(end)} (its subsystem's own estimate))" in shown

    # Drained: nothing holds it, since the time it became drained.
    silent_pause = silent.next_event(lambda m: m.get("type") == "pause_intake")
    silent.send(type="intake_paused", drain_id=silent_pause["drain_id"])
    silent.send(type="drained", drain_id=silent_pause["drain_id"])
    exporter.send(type="in_flight", items=[])
    exporter.send(type="drained", drain_id=pause["drain_id"])
    status = d.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained")
    why = d.maintctl("why")
    assert why.returncode == 0, why
    assert why.stdout.strip() == f"nothing: safe to restart since {hhmm(status['maintenance']['since'])}"


def test_why_gives_no_cancel_command_for_the_work_of_a_subsystem_whose_process_went_away(make_daemon: Any) -> None:
    d = make_daemon()
    batch = register(d, "batch")
    batch.send(type="in_flight", items=[{"id": "b1", "kind": "batch", "description": "nightly", "cancellable": True}])
    d.wait_status(lambda s: len(s["running_systems"]["other"]) == 1, "the item")
    assert d.maintctl("enable").returncode == 0
    assert "cancel: maintctl cancel batch/b1" in d.maintctl("why").stdout
    batch.close()  # its work keeps blocking for [control] reconnect_grace (10 s by default)
    d.wait_status(lambda s: {x["name"]: x["state"] for x in s["subsystems"]}["batch"] == "disconnected", "disconnected")
    why = d.maintctl("why")
    assert why.returncode == 4
    assert "cannot be cancelled now: its subsystem is disconnected (it can be once it registers again)" in why.stdout
    assert "maintctl cancel" not in why.stdout
    held = json.loads(d.maintctl("why", "--json").stdout)
    assert [(s["name"], [i["cancel"] for i in s["items"]]) for s in held["subsystems"]] == [("batch", [None])]


def test_a_building_jobs_eta_comes_from_its_finished_runs_in_the_store(make_daemon: Any, tmp_path: Any) -> None:
    release = tmp_path / "release"
    release.touch()
    d = make_daemon(
        config=(
            '[agents]\ncount = 1\n[[pipelines]]\nname = "quick"\n[[pipelines.stages]]\nname = "test"\n'
            '[[pipelines.stages.jobs]]\nname = "unit"\n'
            f"shell = 'sleep 2; while [ ! -e \"{release}\" ]; do sleep 0.02; done'\n"
        )
    )

    def jobs() -> list[dict[str, Any]]:
        runs = json.loads(d.maintctl("runs", "--json").stdout)["runs"]
        return [j for r in runs for j in r["jobs"]]

    for n in (1, 2):  # two runs that pass: the history
        assert d.maintctl("trigger", "quick").returncode == 0
        d.wait_status(lambda s, n=n: not s["running_systems"]["building_jobs"] and len(jobs()) == n, f"run {n} to pass")
    done = [j for j in jobs() if j["state"] == "passed"]
    took = sorted(j["finished_at"] - j["started_at"] for j in done)
    assert len(took) == 2
    release.unlink()
    assert d.maintctl("trigger", "quick").returncode == 0
    status = d.wait_status(
        lambda s: (s.get("eta") or {}).get("items") and s["eta"]["items"][0]["basis"] == "job", "the third run's ETA"
    )
    (item,) = status["running_systems"]["building_jobs"]
    (eta,) = status["eta"]["items"]
    p50, p90 = item["started_at"] + (took[0] + took[1]) / 2, item["started_at"] + took[0] + 0.9 * (took[1] - took[0])
    # each run took 2 s and a bit, so the third is not overdue yet: both are its start plus history's
    assert (eta["item_id"], eta["samples"], eta["overdue"]) == (item["id"], 2, False)
    assert (eta["p50"], eta["p90"]) == (pytest.approx(p50), pytest.approx(p90))
    assert status["eta"]["p50"] == eta["p50"] and status["eta"]["unknown"] == []
    release.touch()
