"""No safe window from a subsystem that reconnects (issue 9, item 4).

A real daemon, a process with a blocking job that drops its connection and registers again
under the same name a few milliseconds later, a ``watch`` that records every event, and a
concurrent ``maintctl wait``: nothing may say safe to restart until the new process has
reported and finished its work. Without a reconnect, safe comes only after
``[control] reconnect_grace``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.conftest import ROOT, Daemon, Line, wait_for
from tests.e2e.test_drain import JOB, register

BUILTINS_DRAINED = "every built-in subsystem drained"


def ext(s: dict[str, Any], name: str = "worker") -> dict[str, Any] | None:
    return next((x for x in s["subsystems"] if x["name"] == name), None)


def builtins_drained(s: dict[str, Any]) -> bool:
    return all(x["state"] == "drained" for x in s["subsystems"] if not x["external"])


def register_again(d: Daemon, name: str) -> Line:
    """Register under ``name`` as soon as the daemon lets us (as a reconnecting client would)."""

    def attempt() -> Line | None:
        line = d.client()
        reply = line.request("register", name=name)
        if reply["ok"]:
            return line
        assert reply["error"]["code"] == "conflict", reply
        line.close()
        return None

    return wait_for(attempt, 10, f"{name} to register again")


def events_until(watcher: Line, predicate: Any) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = watcher.next_event(lambda m: m.get("type") == "event")
        seen.append(message)
        if predicate(message):
            return seen


def at(e: dict[str, Any]) -> float:
    return e["at"]


def test_a_subsystem_that_reconnects_within_ms_never_opens_a_safe_window(daemon: Daemon) -> None:
    watcher = daemon.client()
    assert not watcher.request("watch")["result"]["maintenance"]["safe_to_restart"]
    sub = register(daemon, "worker", [JOB])
    wait_for(lambda: daemon.status()["running_systems"]["building_jobs"], 10, "the job")
    assert daemon.maintctl("enable").returncode == 0
    drain_id = sub.next_event(lambda m: m.get("type") == "pause_intake")["drain_id"]
    sub.send(type="intake_paused", drain_id=drain_id)
    wait_for(lambda: builtins_drained(s := daemon.status()) and ext(s)["state"] == "paused", 10, BUILTINS_DRAINED)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "wait", "--timeout", "60s"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The process drops its connection and comes straight back; its job never stopped.
        sub.close()
        again = register_again(daemon, "worker")
        assert again.next_event(lambda m: m.get("type") == "pause_intake")["drain_id"] == drain_id
        again.send(type="in_flight", items=[JOB])
        again.send(type="intake_paused", drain_id=drain_id)
        seen = []
        for _ in range(2):  # its first registration, then the one after the drop
            seen += events_until(watcher, lambda e: e["event"] == "subsystem_registered" and e["subsystem"] == "worker")
        wait_for(lambda: (v := ext(daemon.status())) and v["state"] == "paused" and not v.get("reconnect_by"), 10, "the report")
        assert waiter.poll() is None, waiter.communicate()
        # Only now does the job end.
        again.send(type="in_flight", items=[])
        again.send(type="drained", drain_id=drain_id)
        seen += events_until(watcher, lambda e: e["maintenance"]["safe_to_restart"])
        _out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, err
    first_safe = next(i for i, e in enumerate(seen) if e["maintenance"]["safe_to_restart"])
    last_report = max(i for i, e in enumerate(seen) if e["event"] == "in_flight_changed" and e["subsystem"] == "worker")
    assert first_safe > last_report, [(e["event"], e.get("subsystem"), e["maintenance"]["safe_to_restart"]) for e in seen]
    assert all(e["event"] != "subsystem_removed" for e in seen)


def test_without_a_reconnect_safe_comes_only_after_the_grace(make_daemon) -> None:
    d = make_daemon(config='[control]\nreconnect_grace = "700ms"\n')
    watcher = d.client()
    watcher.request("watch")
    sub = register(d, "worker", [JOB])
    wait_for(lambda: d.status()["running_systems"]["building_jobs"], 10, "the job")
    assert d.maintctl("enable").returncode == 0
    drain_id = sub.next_event(lambda m: m.get("type") == "pause_intake")["drain_id"]
    sub.send(type="intake_paused", drain_id=drain_id)
    wait_for(lambda: builtins_drained(s := d.status()) and ext(s)["state"] == "paused", 10, BUILTINS_DRAINED)
    sub.close()

    seen = events_until(watcher, lambda e: e["event"] == "subsystem_disconnected")
    gone = seen[-1]
    assert not gone["maintenance"]["safe_to_restart"] and [i["id"] for i in gone["items"]] == ["worker/job-7"]
    s = d.status()
    if ext(s) is not None:  # the grace may be over on a slow machine; then the removal shows it
        assert ext(s)["state"] == "disconnected" and ext(s)["blocking"] == 1
        text = d.maintctl("status").stdout
        assert "disconnected, waiting" in text and "worker/job-7" in text, text
        assert d.client().request("cancel", item="worker/job-7")["error"]["code"] == "unavailable"

    seen += events_until(watcher, lambda e: e["event"] == "subsystem_removed")
    assert "did not register again within 0.7s" in seen[-1]["message"] and seen[-1]["maintenance"]["safe_to_restart"]
    first_safe = next(i for i, e in enumerate(seen) if e["maintenance"]["safe_to_restart"])
    assert at(seen[first_safe]) - at(gone) >= 0.65
    assert seen[first_safe - 1]["event"] != "subsystem_removed" and first_safe >= seen.index(gone)
