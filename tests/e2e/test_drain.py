"""End to end: the real daemon, the real maintctl, and a process that joins as a subsystem."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, USER, Daemon, Line, wait_for


def register(d: Daemon, name: str, items: list[dict] | None = None) -> Line:
    sub = d.client()
    reply = sub.request("register", name=name)
    assert reply["ok"], reply
    if items is not None:
        sub.send(type="in_flight", items=items)
    return sub


def ext(s: dict) -> list[dict]:
    """The external subsystems (the built-in ones are always there)."""
    return [x for x in s["subsystems"] if x["external"]]


JOB = {"id": "job-7", "kind": "building_job", "description": "build #7", "cancellable": True}
BATCH = {"id": "b1", "kind": "batch", "description": "nightly export", "cancellable": False}


def test_a_registered_process_is_drained_and_maintctl_wait_says_when_it_is_safe(daemon: Daemon) -> None:
    sub = register(daemon, "exporter", [JOB, BATCH])
    daemon.wait_status(lambda s: len(s["running_systems"]["other"]) == 1, "the report")

    enabled = daemon.maintctl("enable", "--reason", "kernel upgrade")
    assert enabled.returncode == 0, enabled.stderr
    assert "draining" in enabled.stdout

    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    s = daemon.status()
    assert s["maintenance"]["state"] == "draining" and not s["maintenance"]["safe_to_restart"]
    assert s["maintenance"]["updated_by"] == USER and s["maintenance"]["reason"] == "kernel upgrade"
    assert [i["id"] for i in s["running_systems"]["building_jobs"]] == ["exporter/job-7"]
    assert ext(s) == [
        {
            "name": "exporter",
            "state": "pausing",
            "in_flight": 2,
            "blocking": 2,
            "external": True,
            "failures": 0,
            "last_error": None,
            "reconnect_by": None,
            # asked to pause when maintenance was turned on; silent since (it has not acknowledged)
            "pause_asked_at": s["maintenance"]["updated_on"],
        }
    ]

    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    daemon.wait_status(lambda s: ext(s)[0]["state"] == "paused", "paused")

    waited = daemon.maintctl("wait", "--timeout", "200ms")
    assert waited.returncode == 4
    assert "exporter/job-7" in waited.stdout and "exporter/b1" in waited.stdout

    waiter = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "wait", "--timeout", "20s"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "Safe to restart" in out
    assert daemon.status()["maintenance"]["safe_to_restart"]

    assert daemon.maintctl("disable").returncode == 0
    resume = sub.next_event(lambda m: m.get("type") == "resume_intake")
    assert resume["drain_id"] == pause["drain_id"]
    s = daemon.status()
    assert s["maintenance"]["state"] == "normal" and ext(s)[0]["state"] == "running"


def test_drained_is_not_believed_while_the_process_still_reports_work(daemon: Daemon) -> None:
    sub = register(daemon, "worker", [JOB])
    daemon.maintctl("enable")
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    sub.send(type="drained", drain_id=pause["drain_id"])
    # Messages from one subsystem are handled in order: once this report shows, so has drained.
    sub.send(type="in_flight", items=[{**JOB, "description": "still going"}])
    s = daemon.wait_status(lambda s: s["running_systems"]["building_jobs"][0]["description"] == "still going", "report")
    assert s["maintenance"]["state"] == "draining" and ext(s)[0]["state"] == "paused"


def test_cancel_reaches_the_owner_and_its_answer_reaches_maintctl(daemon: Daemon) -> None:
    sub = register(daemon, "worker", [JOB, {**JOB, "id": "job-8"}, {"id": "mdu", "kind": "material_update", "cancellable": True}])
    daemon.wait_status(lambda s: len(s["running_systems"]["building_jobs"]) == 2, "the report")

    mdu = daemon.maintctl("cancel", "worker/mdu")
    assert mdu.returncode == 1 and "not_cancellable" in mdu.stderr and "partial clone" in mdu.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "cancel", "job-7", "--reason", "stuck"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    asked = sub.next_event(lambda m: m.get("type") == "cancel")
    assert asked["item"] == "job-7"
    sub.send(type="cancel_result", item="job-7", ok=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cancelled worker/job-7" in out

    proc = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "cancel", "worker/job-8"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sub.next_event(lambda m: m.get("type") == "cancel" and m["item"] == "job-8")
    sub.send(type="cancel_result", item="job-8", ok=False, reason="already uploading")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "already uploading" in err

    history = json.loads(daemon.maintctl("history", "--json").stdout)["entries"]
    assert [(e["action"], e["item"], e["by"], e["reason"]) for e in history if e["action"] == "cancel"] == [
        ("cancel", "worker/job-7", USER, "stuck")
    ]


def test_the_deadline_marks_the_drain_overdue_and_cancels_what_can_be_cancelled(daemon: Daemon) -> None:
    sub = register(daemon, "worker", [JOB, BATCH])
    watcher = daemon.client()
    watcher.request("watch")
    daemon.wait_status(lambda s: ext(s)[0]["in_flight"] == 2, "the report")
    assert daemon.maintctl("enable", "--deadline", "300ms", "--cancel-at-deadline").returncode == 0
    overdue = watcher.next_event(lambda m: m.get("event") == "overdue")
    assert {i["id"] for i in overdue["items"]} == {"worker/job-7", "worker/b1"}
    asked = sub.next_event(lambda m: m.get("type") == "cancel")
    assert asked["item"] == "job-7"  # b1 does not accept cancel and is left alone
    sub.send(type="cancel_result", item="job-7", ok=True)
    watcher.next_event(lambda m: m.get("event") == "cancelled")
    s = daemon.status()
    assert s["maintenance"]["overdue"] is True
    history = json.loads(daemon.maintctl("history", "--json").stdout)["entries"]
    assert ("worker/job-7", "deadline", "cancelled by the deadline") in [
        (e["item"], e["by"], e["reason"]) for e in history if e["action"] == "cancel"
    ]


def test_a_subsystem_that_disconnects_is_removed_and_its_work_shown_abandoned(make_daemon) -> None:
    # Its blocking work keeps blocking for reconnect_grace first (tests/e2e/test_reconnect.py).
    daemon = make_daemon(config='[control]\nreconnect_grace = "200ms"\n')
    watcher = daemon.client()
    watcher.request("watch")
    sub = register(daemon, "flaky", [JOB])
    daemon.wait_status(lambda s: ext(s) and ext(s)[0]["in_flight"] == 1, "the report")
    daemon.maintctl("enable")
    sub.close()
    removed = watcher.next_event(lambda m: m.get("event") == "subsystem_removed")
    assert removed["subsystem"] == "flaky" and [i["id"] for i in removed["items"]] == ["flaky/job-7"]
    s = daemon.wait_status(lambda s: not ext(s), "removal")
    assert s["maintenance"]["state"] == "drained"
    (gone,) = s["removed"]
    assert gone["name"] == "flaky" and [i["id"] for i in gone["abandoned"]] == ["flaky/job-7"]
    text = daemon.maintctl("status").stdout
    assert "Removed subsystems:" in text and "flaky" in text and "1 item(s) abandoned" in text


def test_a_process_registering_with_work_during_a_drained_window_makes_it_unsafe_again(daemon: Daemon) -> None:
    daemon.maintctl("enable")
    daemon.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained")
    sub = register(daemon, "late", [JOB])
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    s = daemon.status()
    assert s["maintenance"]["state"] == "draining" and not s["maintenance"]["safe_to_restart"]
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    daemon.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained again")


def test_start_in_maintenance_is_on_from_the_start_by_maintd(make_daemon) -> None:
    d = make_daemon("--start-in-maintenance")
    m = d.status()["maintenance"]
    assert m["enabled"] and m["updated_by"] == "maintd"


def test_maintctl_status_text_and_json(daemon: Daemon) -> None:
    register(daemon, "exporter", [JOB])
    daemon.wait_status(lambda s: ext(s)[0]["in_flight"] == 1, "the report")
    text = daemon.maintctl("status")
    assert text.returncode == 0
    assert "Maintenance mode: off" in text.stdout and "exporter" in text.stdout and "build #7" in text.stdout
    as_json = json.loads(daemon.maintctl("status", "--json").stdout)
    assert next(x["name"] for x in as_json["subsystems"] if x["external"]) == "exporter"
    assert daemon.maintctl("disable").returncode == 1  # not on: conflict


def test_maintctl_says_plainly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(tmp_path / "none.sock"), "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "maintd is not running" in result.stderr and "Traceback" not in result.stderr


def test_maintctl_rejects_bad_durations_with_usage_exit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(tmp_path / "x"), "enable", "--deadline", "soon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "not a duration" in result.stderr


def test_a_bad_config_exits_2_naming_the_file_and_the_key(make_daemon) -> None:
    d = make_daemon(config='[control]\nclient_queue = "lots"\n', start=False)
    result = subprocess.run(d.cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert str(d.tmp / "maintd.toml") in result.stderr and "$.control.client_queue" in result.stderr
    assert "expected an integer, got a string" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sigterm_drains_first_then_stops_cleanly_and_removes_the_socket(daemon: Daemon) -> None:
    sub = register(daemon, "exporter", [JOB])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")  # the stop drains the subsystem first
    assert daemon.proc.poll() is None
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    assert daemon.proc.wait(15) == 0
    assert not daemon.socket.exists()
    assert "Traceback" not in daemon.log_text()


def test_under_systemd_every_log_line_has_a_priority_prefix_and_says_who(make_daemon) -> None:
    d = make_daemon(env={"JOURNAL_STREAM": "8:12345"})
    assert d.maintctl("enable", "--reason", "upgrade").returncode == 0
    assert d.maintctl("trigger", "nothing").returncode == 1
    wait_for(lambda: "turned on maintenance mode" in d.log_text(), 10, "the enable line")
    lines = d.log_text().splitlines()
    assert lines and all(line[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"} for line in lines), lines
    assert f"<6>maintd.control: {USER} turned on maintenance mode (reason: upgrade)" in lines


def test_the_audit_log_survives_a_kill_9(daemon: Daemon) -> None:
    assert daemon.maintctl("enable", "--reason", "upgrade", "--deadline", "30m").returncode == 0
    assert daemon.maintctl("disable", "--reason", "done").returncode == 0
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    daemon.start()
    entries = json.loads(daemon.maintctl("history", "--json").stdout)["entries"]
    assert [(e["action"], e["by"], e["reason"]) for e in entries] == [("enable", USER, "upgrade"), ("disable", USER, "done")]
    # What was asked, then which process asked (its pid and command line).
    assert entries[0]["detail"].startswith("deadline 1800s, then wait; pid ")
    assert entries[0]["detail"].endswith("-m maintctl enable --reason upgrade --deadline 30m")
    assert daemon.status()["maintenance"]["enabled"] is False
