"""One answer everywhere, on the real daemon (issue 9, item 5).

An external item of kind ``building_job`` or ``material_update`` that says
``blocks_restart: false`` made ``/api/maintenance_mode/info`` say ``has_running_systems:
true`` for ever, while the status, the metric and ``maintctl wait`` said safe.
"""

from __future__ import annotations

import json
import urllib.request

from tests.conftest import Daemon, wait_for
from tests.e2e.test_drain import register

ITEMS = [
    {"id": "job-1", "kind": "building_job", "description": "a job that survives a restart", "blocks_restart": False},
    {"id": "mdu-1", "kind": "material_update", "description": "a poll that may be cut", "blocks_restart": False},
]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def test_non_blocking_work_of_any_kind_is_not_running_systems(daemon: Daemon) -> None:
    sub = register(daemon, "worker", ITEMS)
    wait_for(lambda: daemon.status()["running_systems"]["building_jobs"], 10, "the report")
    assert daemon.maintctl("enable").returncode == 0
    drain_id = sub.next_event(lambda m: m.get("type") == "pause_intake")["drain_id"]
    sub.send(type="intake_paused", drain_id=drain_id)
    sub.send(type="drained", drain_id=drain_id)
    s = wait_for(lambda: (s := daemon.status())["maintenance"]["safe_to_restart"] and s, 10, "safe to restart")
    assert [i["id"] for i in s["running_systems"]["building_jobs"]] == ["worker/job-1"]  # listed, not blocking

    base = daemon.http_url()
    info = json.loads(get(f"{base}/api/maintenance_mode/info"))
    metrics = get(f"{base}/metrics").decode()
    waited = daemon.maintctl("wait", "--timeout", "5s")
    assert info["attributes"]["has_running_systems"] is False
    assert [j["name"] for j in info["attributes"]["running_systems"]["building_jobs"]] == ["job-1"]
    assert "maintd_safe_to_restart 1.0" in metrics
    assert waited.returncode == 0 and "Safe to restart" in waited.stdout
