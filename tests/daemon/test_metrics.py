"""Metrics from synthetic statuses, each test on a fresh CollectorRegistry; the exposition passes promtool."""

from __future__ import annotations

import subprocess
import threading
import time

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from actors.status import RemovedSubsystem, Status, SubsystemInfo
from daemon.metrics import JOB_RESULTS, POLL_RESULTS, REJECT_REASONS, Metrics, daemon_registry
from tests.synthetic import (
    T0,
    building,
    builtins,
    draining_with_work,
    external,
    maintenance,
    mdu,
    need_tool,
    scheduled,
    status,
    sub,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, version="9.8.7")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def state_of(registry: CollectorRegistry) -> str:
    states = [s for s in ("normal", "draining", "drained") if value(registry, "maintd_maintenance_state", state=s) == 1]
    assert len(states) == 1, states
    return states[0]


def subsystem_state(registry: CollectorRegistry, name: str) -> str | None:
    for metric in registry.collect():
        if metric.name == "maintd_subsystem_state":
            on = [s.labels["state"] for s in metric.samples if s.labels["subsystem"] == name and s.value == 1]
            assert len(on) <= 1
            return on[0] if on else None
    return None


def removing(s: Status, removed: tuple[RemovedSubsystem, ...]) -> Status:
    return msgspec.structs.replace(s, removed=removed)


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name == name]


def test_everything_is_there_before_the_first_status(registry: CollectorRegistry, metrics: Metrics) -> None:
    assert state_of(registry) == "normal"
    for result in JOB_RESULTS:
        assert value(registry, "maintd_jobs_total", result=result) == 0
    for result in POLL_RESULTS:
        assert value(registry, "maintd_material_polls_total", result=result) == 0
    for reason in REJECT_REASONS:
        assert value(registry, "maintd_rejected_requests_total", reason=reason) == 0
    assert value(registry, "maintd_build_info", version="9.8.7") == 1
    assert value(registry, "maintd_drain_duration_seconds_count") == 0


def test_the_state_machine_and_safe_to_restart(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.update(status(maintenance("normal")), None)
    assert state_of(registry) == "normal"
    assert value(registry, "maintd_safe_to_restart") == 0
    first = value(registry, "maintd_maintenance_state_changed_timestamp_seconds")
    assert first is not None and abs(first - time.time()) < 60

    metrics.update(status(maintenance("draining"), builtins("pausing")), None)
    assert state_of(registry) == "draining"
    assert value(registry, "maintd_safe_to_restart") == 0
    changed = value(registry, "maintd_maintenance_state_changed_timestamp_seconds")
    assert changed is not None and changed >= first

    metrics.update(status(maintenance("drained"), builtins("drained")), None)
    assert state_of(registry) == "drained"
    assert value(registry, "maintd_safe_to_restart") == 1

    metrics.update(status(maintenance("normal", updated_by="root", updated_on=T0 + 1461.0)), None)
    assert state_of(registry) == "normal"
    assert value(registry, "maintd_safe_to_restart") == 0


def test_the_changed_timestamp_moves_only_when_the_state_changes(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.update(status(maintenance("draining")), None)
    metrics.state_changed.set(1000.0)  # mark it: an update in the same state must not touch it
    metrics.update(status(maintenance("draining"), items=(building(),)), None)
    assert value(registry, "maintd_maintenance_state_changed_timestamp_seconds") == 1000.0
    metrics.update(status(maintenance("drained")), None)
    assert value(registry, "maintd_maintenance_state_changed_timestamp_seconds") > 1000.0


def test_deadline_and_overdue(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.update(status(maintenance("draining")), None)
    # no deadline: no sample at all (a 0 would read as 1970)
    assert value(registry, "maintd_drain_deadline_timestamp_seconds") is None
    lines = generate_latest(registry).decode().splitlines()
    assert not [line for line in lines if line.startswith("maintd_drain_deadline_timestamp_seconds")]
    assert value(registry, "maintd_drain_overdue") == 0
    metrics.update(status(maintenance("draining", deadline=T0 + 1803.926, on_deadline="wait")), None)
    assert value(registry, "maintd_drain_deadline_timestamp_seconds") == pytest.approx(1795925142.926)
    metrics.update(status(maintenance("draining", deadline=T0 + 1803.926, overdue=True)), None)
    assert value(registry, "maintd_drain_overdue") == 1
    metrics.update(status(maintenance("normal")), None)
    assert value(registry, "maintd_drain_deadline_timestamp_seconds") is None
    assert value(registry, "maintd_drain_overdue") == 0


def test_subsystem_states_and_a_subsystem_that_goes_away(registry: CollectorRegistry, metrics: Metrics) -> None:
    subs = (*builtins("running"), sub("batch", "running", external=True))
    metrics.update(status(maintenance("normal"), subs), None)
    assert subsystem_state(registry, "agents") == "running"
    assert subsystem_state(registry, "batch") == "running"

    subs = (
        sub("materials", "drained"),
        sub("scheduler", "pausing"),
        sub("agents", "failed"),
        sub("config", "unknown"),
        sub("batch", "paused", in_flight=1, blocking=1, external=True),
    )
    metrics.update(status(maintenance("draining"), subs, (external("batch", "1"),)), None)
    assert [subsystem_state(registry, n) for n in ("materials", "scheduler", "agents", "config", "batch")] == [
        "drained",
        "pausing",
        "failed",
        "unknown",
        "paused",
    ]
    assert value(registry, "maintd_in_flight_items", subsystem="batch", kind="sleep") == 1

    metrics.update(status(maintenance("draining"), subs[:4]), None)  # batch disconnected
    assert subsystem_state(registry, "batch") is None
    assert not [labels for labels in series(registry, "maintd_subsystem_state") if labels["subsystem"] == "batch"]
    assert not [labels for labels in series(registry, "maintd_in_flight_items") if labels["subsystem"] == "batch"]
    assert subsystem_state(registry, "agents") == "failed"


def test_in_flight_by_subsystem_and_kind(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.update(status(maintenance("normal")), None)
    # a series for each kind of work a built-in subsystem holds, and none for what it never holds
    assert {(labels["subsystem"], labels["kind"]) for labels in series(registry, "maintd_in_flight_items")} == {
        ("materials", "material_update"),
        ("scheduler", "scheduled_job"),
        ("agents", "building_job"),
    }
    for labels in series(registry, "maintd_in_flight_items"):
        assert value(registry, "maintd_in_flight_items", **labels) == 0, labels

    metrics.update(draining_with_work(), None)
    assert value(registry, "maintd_in_flight_items", subsystem="materials", kind="material_update") == 2
    assert value(registry, "maintd_in_flight_items", subsystem="agents", kind="building_job") == 2
    assert value(registry, "maintd_in_flight_items", subsystem="scheduler", kind="scheduled_job") == 1
    assert value(registry, "maintd_in_flight_items", subsystem="batch", kind="sleep") == 1
    # an external subsystem gets series for the kinds it reports, not the built-in ones
    assert value(registry, "maintd_in_flight_items", subsystem="batch", kind="building_job") is None

    metrics.update(status(maintenance("draining"), (*builtins("paused"), sub("batch", "drained", external=True))), None)
    assert value(registry, "maintd_in_flight_items", subsystem="agents", kind="building_job") == 0
    assert value(registry, "maintd_in_flight_items", subsystem="batch", kind="sleep") == 0  # kept at 0 while batch is there


def test_the_drain_duration_is_observed_once_per_drain(
    registry: CollectorRegistry, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("daemon.metrics.time.monotonic", lambda: now[0])
    metrics.update(status(maintenance("normal")), None)
    metrics.update(status(maintenance("draining", drain_id="drain-a"), items=(building(),)), None)
    now[0] = 142.0
    metrics.update(status(maintenance("drained", drain_id="drain-a")), None)
    assert value(registry, "maintd_drain_duration_seconds_count") == 1
    assert value(registry, "maintd_drain_duration_seconds_sum") == pytest.approx(42.0)
    assert value(registry, "maintd_drain_duration_seconds_bucket", le="60.0") == 1
    assert value(registry, "maintd_drain_duration_seconds_bucket", le="30.0") == 0

    # new work (a process registers) sends it back to draining; drained again is the same drain
    now[0] = 150.0
    metrics.update(status(maintenance("draining", drain_id="drain-a"), items=(external(),)), None)
    metrics.update(status(maintenance("drained", drain_id="drain-a")), None)
    assert value(registry, "maintd_drain_duration_seconds_count") == 1

    # off, then on again: a new drain, timed from when it was first seen
    metrics.update(status(maintenance("normal")), None)
    now[0] = 1000.0
    metrics.update(status(maintenance("draining", drain_id="drain-b")), None)
    now[0] = 1003.0
    metrics.update(status(maintenance("drained", drain_id="drain-b")), None)
    assert value(registry, "maintd_drain_duration_seconds_count") == 2
    assert value(registry, "maintd_drain_duration_seconds_sum") == pytest.approx(45.0)


def test_counters_from_actor_threads(registry: CollectorRegistry, metrics: Metrics) -> None:
    def work() -> None:
        for _ in range(500):
            metrics.job_finished("passed")
            metrics.material_polled("ok")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics.job_finished("failed")
    metrics.job_finished("cancelled")
    metrics.job_finished("interrupted")
    metrics.material_polled("timeout")
    metrics.material_polled("error")
    assert value(registry, "maintd_jobs_total", result="passed") == 2000
    assert value(registry, "maintd_material_polls_total", result="ok") == 2000
    for result in ("failed", "cancelled", "interrupted"):
        assert value(registry, "maintd_jobs_total", result=result) == 1
    assert value(registry, "maintd_material_polls_total", result="timeout") == 1


def test_unknown_results_and_codes_make_no_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.job_finished("building")
    metrics.material_polled("exploded")
    assert metrics.rejected("maintenance_mode") is True
    assert metrics.rejected("forbidden") is True
    assert metrics.rejected("conflict") is False
    assert metrics.rejected("a free text message from a client") is False
    assert value(registry, "maintd_rejected_requests_total", reason="maintenance_mode") == 1
    assert value(registry, "maintd_rejected_requests_total", reason="forbidden") == 1
    assert {labels["result"] for labels in series(registry, "maintd_jobs_total")} == set(JOB_RESULTS)
    assert {labels["result"] for labels in series(registry, "maintd_material_polls_total")} == set(POLL_RESULTS)
    assert {labels["reason"] for labels in series(registry, "maintd_rejected_requests_total")} == set(REJECT_REASONS)


def test_no_free_text_in_labels(registry: CollectorRegistry, metrics: Metrics) -> None:
    m = maintenance("draining", updated_by="mallory", reason='upgrade "now" {please}', drain_id="drain-x")
    metrics.update(status(m, items=(mdu(), building(), scheduled())), None)
    text = generate_latest(registry).decode()
    for secret in ("mallory", "upgrade", "drain-x", "git.example.com", "agent-1", "unit"):
        assert secret not in text, secret


def test_exposition_passes_promtool(registry: CollectorRegistry, metrics: Metrics) -> None:
    promtool = need_tool("promtool", package="prometheus")
    metrics.update(draining_with_work(), None)
    metrics.job_finished("passed")
    metrics.rejected("too_large")
    metrics.update(status(maintenance("drained"), builtins("drained")), None)
    for exposition in (generate_latest(registry), generate_latest(daemon_registry())):
        result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        assert not result.stdout.strip() and not result.stderr.strip(), (result.stdout + result.stderr).decode()


def test_daemon_registry_has_process_metrics_and_can_be_made_twice() -> None:
    first, second = daemon_registry(), daemon_registry()
    Metrics(first)
    Metrics(second)  # no "Duplicated timeseries": each registry is its own
    names = {m.name for m in first.collect()}
    assert "process_cpu_seconds" in names or "process_resident_memory_bytes" in names
    assert "maintd_maintenance_state" in names


def test_state_sets_are_labelled_state(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.update(status(maintenance("draining"), builtins("pausing")), None)
    assert {tuple(sorted(labels)) for labels in series(registry, "maintd_maintenance_state")} == {("state",)}
    assert {tuple(sorted(labels)) for labels in series(registry, "maintd_subsystem_state")} == {("state", "subsystem")}
    assert value(registry, "maintd_maintenance_state", state="draining") == 1
    assert value(registry, "maintd_maintenance_state", state="normal") == 0
    assert value(registry, "maintd_subsystem_state", subsystem="agents", state="pausing") == 1
    assert value(registry, "maintd_subsystem_state", subsystem="agents", state="running") == 0


def test_the_daemon_registry_has_no_created_series() -> None:
    registry = daemon_registry()
    metrics = Metrics(registry)
    metrics.job_finished("passed")
    metrics.update(status(maintenance("draining", drain_id="d"), builtins("pausing")), None)
    metrics.update(status(maintenance("drained", drain_id="d"), builtins("drained")), None)
    for text in (generate_latest(registry).decode(), generate_openmetrics(registry).decode()):
        assert "maintd_jobs_total" in text and "maintd_drain_duration_seconds_count" in text
        assert "_created" not in text


def test_subsystem_failures_are_counted_from_the_status(registry: CollectorRegistry, metrics: Metrics) -> None:
    def batch(failures: int) -> SubsystemInfo:
        return SubsystemInfo(name="batch", state="running", in_flight=0, blocking=0, external=True, failures=failures)

    def agents(failures: int) -> SubsystemInfo:
        return SubsystemInfo(name="agents", state="running", in_flight=0, blocking=0, external=False, failures=failures)

    metrics.update(status(maintenance("normal"), (agents(0), batch(0))), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="agents") == 0
    assert value(registry, "maintd_subsystem_failures_total", subsystem="batch") == 0
    metrics.update(status(maintenance("normal"), (agents(2), batch(0))), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="agents") == 2

    # batch's process goes away with work in flight and is removed: its failure comes with
    # the removal, and its series stays while the status lists it with its work abandoned
    gone = RemovedSubsystem(name="batch", at=T0, reason="connection closed", abandoned=(external("batch", "1"),), failures=1)
    metrics.update(removing(status(maintenance("normal"), (agents(2),)), (gone,)), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="batch") == 1
    # it registers again: a new subsystem, whose failures start from 0; the counter never goes down
    metrics.update(removing(status(maintenance("normal"), (agents(2), batch(0))), (gone,)), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="batch") == 1
    metrics.update(removing(status(maintenance("normal"), (agents(2), batch(1))), (gone,)), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="batch") == 2
    # removed cleanly (nothing abandoned): no series left
    clean = RemovedSubsystem(name="batch", at=T0 + 1, reason="unregistered", abandoned=(), failures=1)
    metrics.update(removing(status(maintenance("normal"), (agents(2),)), (gone, clean)), None)
    assert value(registry, "maintd_subsystem_failures_total", subsystem="batch") is None
