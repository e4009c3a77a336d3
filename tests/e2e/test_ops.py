"""The real daemon's HTTP side: live /metrics linted by promtool, GoCD's info API, the banner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from tests.conftest import USER, Daemon, Line, wait_for

PROMTOOL = shutil.which("promtool")


def metrics_with(base: str, needle: str, what: str) -> str:
    def check() -> str | None:
        text = get(base + "/metrics")[1]
        return text if needle in text else None

    return wait_for(check, 10, what)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_live_metrics_follow_a_drain_and_pass_promtool(daemon: Daemon) -> None:
    base = daemon.http_url()
    sub = Line(daemon.socket)
    assert sub.request("register", name="exporter")["ok"]
    sub.send(type="in_flight", items=[{"id": "j", "kind": "building_job", "cancellable": True}])
    metrics_with(base, 'maintd_in_flight_items{kind="building_job",subsystem="exporter"} 1.0', "in-flight")
    assert daemon.maintctl("enable", "--reason", "upgrade").returncode == 0
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    text = metrics_with(base, 'maintd_maintenance_state{state="draining"} 1.0', "draining")
    assert "maintd_safe_to_restart 0.0" in text
    assert 'maintd_drain_eta_seconds{estimate="p90"} NaN' in text  # the job has no history: no estimate
    assert 'maintd_rejected_requests_total{reason="maintenance_mode"} 0.0' in text
    refused = daemon.maintctl("trigger", "build")
    assert refused.returncode == 1
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    text = metrics_with(base, "maintd_safe_to_restart 1.0", "safe")
    assert "maintd_drain_duration_seconds_count 1.0" in text
    assert 'maintd_drain_eta_seconds{estimate="p50"} 0.0' in text  # drained
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (CI is set: .ci/run installs it)")
        pytest.skip("promtool is not installed")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_gocd_info_api_and_banner_follow_maintenance(daemon: Daemon) -> None:
    base = daemon.http_url()
    status, body = get(base + "/api/maintenance_mode/info")
    info = json.loads(body)
    assert status == 200 and info["is_maintenance_mode"] is False and "attributes" not in info
    assert "turned on maintenance mode" not in get(base + "/")[1]
    daemon.maintctl("enable")
    info = json.loads(get(base + "/api/maintenance_mode/info")[1])
    assert info["is_maintenance_mode"] is True and info["metadata"]["updated_by"] == USER
    assert info["attributes"]["has_running_systems"] is False
    assert set(info["attributes"]["running_systems"]) >= {"material_update_in_progress", "building_jobs", "scheduled_jobs"}
    assert f"{USER} turned on maintenance mode at" in get(base + "/")[1]
