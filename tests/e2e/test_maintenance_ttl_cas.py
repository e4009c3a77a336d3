"""``enable --ttl`` and the compare-and-set options through the real daemon and ``maintctl``:
past the TTL maintenance stays on and says so everywhere; ``--if-drain-id`` and
``--if-version`` refuse ``conflict`` (exit 1) once someone else changed the state; the version
outlives a restart; ``[maintenance] require_ttl`` refuses an enable without ``--ttl``."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.conftest import wait_for


def metrics(daemon: Any) -> str:
    with urllib.request.urlopen(daemon.http_url() + "/metrics", timeout=10) as response:
        return response.read().decode()


def metrics_with(daemon: Any, needle: str) -> str:
    return wait_for(lambda: text if needle in (text := metrics(daemon)) else None, 10, needle)


def test_past_its_ttl_maintenance_stays_on_and_is_raised_everywhere(make_daemon: Any) -> None:
    daemon = make_daemon()
    watcher = daemon.client()
    watcher.request("watch")
    done = daemon.maintctl("enable", "--ttl", "1s", "--reason", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "ttl: until" in done.stdout
    event = watcher.next_event(lambda m: m.get("event") == "ttl_expired")
    assert event["maintenance"]["ttl_expired"] and event["maintenance"]["enabled"]
    status = daemon.status()["maintenance"]
    assert status["enabled"] and status["ttl_expired"] and status["ttl_end"]
    text = daemon.maintctl("status").stdout
    assert text.splitlines()[0].startswith("WARNING: maintenance mode is past its TTL"), text
    assert "(EXPIRED: still on)" in text
    shown = metrics_with(daemon, "maintd_maintenance_ttl_expired 1.0")
    assert "maintd_maintenance_ttl_timestamp_seconds 0.0" not in shown
    assert "past its TTL" in daemon.log_text()
    # A disable clears it.
    assert daemon.maintctl("disable").returncode == 0
    status = daemon.status()["maintenance"]
    assert not status["ttl_expired"] and status["ttl_end"] is None
    metrics_with(daemon, "maintd_maintenance_ttl_expired 0.0")


def test_two_operators_one_window_and_the_version_across_a_restart(make_daemon: Any) -> None:
    daemon = make_daemon()
    seen = json.loads(daemon.maintctl("status", "--json").stdout)["maintenance"]
    assert seen["version"] == 0 and seen["drain_id"] is None
    alice = json.loads(daemon.maintctl("enable", "--if-version", "0", "--json").stdout)
    assert alice["version"] == 1
    # Bob looked before alice enabled: his enable is refused as a conflict, not as "already on".
    bob = daemon.maintctl("enable", "--if-version", "0")
    assert bob.returncode == 1 and "conflict" in bob.stderr and "version is 1, not 0" in bob.stderr
    # Alice ends her window; carol opens one; alice's late disable must not end carol's.
    assert daemon.maintctl("disable", "--if-drain-id", alice["drain_id"]).returncode == 0
    carol = json.loads(daemon.maintctl("enable", "--json").stdout)
    late = daemon.maintctl("disable", "--if-drain-id", alice["drain_id"])
    assert late.returncode == 1 and "conflict" in late.stderr, late.stderr
    status = daemon.status()["maintenance"]
    assert status["enabled"] and status["drain_id"] == carol["drain_id"] and status["version"] == 3
    assert f"drain: {carol['drain_id']}, version 3" in daemon.maintctl("status").stdout

    # A restart does not restore maintenance, and counts as a turn of its own.
    assert daemon.stop() == 0
    daemon.start()
    status = daemon.status()["maintenance"]
    assert not status["enabled"] and status["version"] == 4
    assert daemon.maintctl("enable", "--if-version", "3").returncode == 1
    assert daemon.maintctl("enable", "--if-version", "4").returncode == 0


def test_require_ttl_refuses_an_enable_without_one(make_daemon: Any) -> None:
    daemon = make_daemon(config="[maintenance]\nrequire_ttl = true\n")
    refused = daemon.maintctl("enable")
    assert refused.returncode == 1
    assert "bad_request" in refused.stderr and "--ttl" in refused.stderr and "Traceback" not in refused.stderr
    assert not daemon.status()["maintenance"]["enabled"]
    assert daemon.maintctl("enable", "--ttl", "4h").returncode == 0
    assert daemon.status()["maintenance"]["ttl_end"]
