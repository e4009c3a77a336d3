"""The drain's ETA from seeded histories: a real Store on a SQLite file (jobs written through its
own methods), the materials core's measured polls, and what the shell makes of them: the
status's ``eta`` (through the hub's JSON), the deadline preview and the metric."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from actors.errors import BadRequest
from actors.eta import CANCELLED_AT_DEADLINE, ENDS_BEFORE, HOLDS_PAST_DEADLINE, PROBABLY_ENDS_BEFORE, Durations
from actors.jobs import JobState, PollFinished
from actors.materials import MaterialsCore, PollDue
from actors.status import MaintenanceInfo, RunningSystems, Status
from actors.store import Store
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, InFlightItem, MaterialRef
from daemon import foresight as foresight_module
from daemon.foresight import Foresight
from daemon.hub import StatusHub
from daemon.metrics import Metrics
from tests.actors.test_jobserver_cores import APP, World

T0 = 1_700_000_000.0
NOW = T0 + 10_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "maintd.db"))
    yield s
    s.close()


def run_job(store: Store, pipeline: str, stage: str, name: str, took: float, *, start: float, state: str = "passed") -> int:
    """One job that built for ``took`` seconds from ``start`` and ended in ``state``, through the store's methods."""
    run_id = store.create_run(pipeline, store.next_counter(pipeline), "user", "alice", {}, start)
    (job_id,) = store.create_jobs(run_id, pipeline, 1, stage, 0, ((name, f"/logs/{name}.log"),), start)
    store.set_job_state(job_id, JobState.BUILDING, start, agent="agent-1")
    store.set_job_state(job_id, state, start + took, returncode=0)
    return job_id


def seed(store: Store) -> None:
    """build/test/unit took 100..500 s (newest last), lint 30 s; a cancelled and an interrupted run do not count."""
    for i, took in enumerate((100.0, 200.0, 300.0, 400.0, 500.0)):
        run_job(store, "build", "test", "unit", took, start=T0 + i * 1000, state="passed" if i % 2 == 0 else "failed")
    run_job(store, "build", "test", "lint", 30.0, start=T0)
    run_job(store, "build", "test", "unit", 9999.0, start=T0 + 9000, state="cancelled")
    run_job(store, "build", "test", "unit", 7777.0, start=T0 + 9100, state="interrupted")


def job(
    local: str, job_name: str, *, started_at: float = NOW - 60, pipeline: str = "build", cancellable: bool = True
) -> InFlightItem:
    return InFlightItem(
        id=f"agents/{local}", subsystem="agents", kind=BUILDING_JOB, description=local, started_at=started_at,
        cancellable=cancellable, pipeline=pipeline, stage="test", job=job_name, counter=7,
    )  # fmt: skip


def status_of(
    *items: InFlightItem, enabled: bool = True, deadline: float | None = None, on_deadline: str | None = None
) -> Status:
    m = MaintenanceInfo(
        enabled=enabled, state="draining" if enabled else "normal", safe_to_restart=False, updated_by="alice",
        updated_on=NOW - 120, reason=None, deadline=deadline, overdue=False, on_deadline=on_deadline, drain_id="drain-1",
    )  # fmt: skip
    return Status(
        maintenance=m,
        subsystems=(),
        running_systems=RunningSystems(
            building_jobs=tuple(i for i in items if i.kind == BUILDING_JOB),
            material_update_in_progress=tuple(i for i in items if i.kind == MATERIAL_UPDATE),
        ),
    )


class Immediate:
    """A bridge that runs at once what it is given for the trio thread."""

    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)


def foresight_of(durations: Durations, now: float = NOW) -> Foresight:
    f = Foresight(bridge=None, clock=lambda: now)  # type: ignore[arg-type]
    f.set_durations(durations)
    return f


def status_eta(foresight: Foresight, status: Status) -> dict[str, Any]:
    hub = StatusHub(bridge=None, on_fatal=lambda error: None)  # type: ignore[arg-type]
    hub.foresight = foresight
    hub.status = status
    return msgspec.json.decode(hub.status_json())["eta"]


def test_recent_durations_are_each_jobs_newest_passed_and_failed_runs(store: Store) -> None:
    seed(store)
    durations = store.recent_durations()
    assert durations.jobs == {("build", "test", "unit"): (500.0, 400.0, 300.0, 200.0, 100.0), ("build", "test", "lint"): (30.0,)}
    assert durations.materials == {}
    assert store.recent_durations(limit_per_key=2).jobs[("build", "test", "unit")] == (500.0, 400.0)


def test_the_status_eta_is_what_the_seeded_history_says(store: Store) -> None:
    seed(store)
    foresight = foresight_of(store.recent_durations())
    unit, lint = job("job-1", "unit", started_at=NOW - 60), job("job-2", "lint", started_at=NOW - 10)
    eta = status_eta(foresight, status_of(unit, lint))
    by_id = {e["item_id"]: e for e in eta["items"]}
    # unit: p50 of 100..500 is 300, p90 is 460 (linear between ranks); lint: its one run, 30 s
    assert by_id["agents/job-1"] == {
        "item_id": "agents/job-1", "p50": NOW - 60 + 300, "p90": NOW - 60 + 460, "basis": "job", "samples": 5, "overdue": False,
    }  # fmt: skip
    assert (by_id["agents/job-2"]["p50"], by_id["agents/job-2"]["p90"]) == (NOW + 20, NOW + 20)
    assert (eta["p50"], eta["p90"], eta["unknown"]) == (NOW + 240, NOW + 400, [])


def test_an_item_past_its_p90_is_overdue_and_one_without_history_leaves_the_drain_unknown(store: Store) -> None:
    seed(store)
    foresight = foresight_of(store.recent_durations())
    late = job("job-1", "unit", started_at=NOW - 1000)
    new = job("job-3", "deploy", pipeline="release")  # no job, stage or pipeline history
    eta = status_eta(foresight, status_of(late, new))
    by_id = {e["item_id"]: e for e in eta["items"]}
    assert by_id["agents/job-1"]["overdue"] is True and by_id["agents/job-1"]["p90"] == NOW
    assert by_id["agents/job-3"] == {
        "item_id": "agents/job-3",
        "p50": None,
        "p90": None,
        "basis": "none",
        "samples": 0,
        "overdue": False,
    }
    assert (eta["p50"], eta["p90"], eta["unknown"]) == (None, None, ["agents/job-3"])


def test_the_status_eta_follows_new_durations_and_the_clock() -> None:
    now = [NOW]
    foresight = Foresight(bridge=None, clock=lambda: now[0])  # type: ignore[arg-type]
    hub = StatusHub(bridge=None, on_fatal=lambda error: None)  # type: ignore[arg-type]
    hub.foresight, hub.status = foresight, status_of(job("job-1", "unit", started_at=NOW - 60))
    assert msgspec.json.decode(hub.status_json())["eta"]["p50"] is None
    foresight.set_durations(Durations(jobs={("build", "test", "unit"): (100.0,)}))
    assert msgspec.json.decode(hub.status_json())["eta"]["p50"] == NOW + 40
    now[0] = NOW + 50  # past its one run's end: overdue, expected "now"
    eta = msgspec.json.decode(hub.status_json())["eta"]
    assert eta["items"][0]["overdue"] is True and eta["p50"] == NOW + 50


def test_a_status_change_that_leaves_the_work_as_it_was_does_not_compute_the_eta_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drain changes the status many times a second; the ETA of 10,000 items takes ~12 ms
    (bench/load.py: 44 -> 57 ms of CPU a cycle before this was cached)."""
    foresight = foresight_of(Durations(jobs={("build", "test", "unit"): (100.0,)}))
    computed: list[float] = []
    real = foresight_module.drain_eta
    monkeypatch.setattr(foresight_module, "drain_eta", lambda items, d, now: computed.append(now) or real(items, d, now))
    hub = StatusHub(bridge=None, on_fatal=lambda error: None)  # type: ignore[arg-type]
    hub.foresight = foresight
    first = status_of(job("job-1", "unit"))
    hub._apply(first, None)
    before = msgspec.json.decode(hub.status_json())
    paused = msgspec.structs.replace(first, maintenance=msgspec.structs.replace(first.maintenance, state="drained"))
    hub._apply(paused, None)  # a new status, the same running systems
    after = msgspec.json.decode(hub.status_json())
    assert after["maintenance"]["state"] == "drained" and after["eta"] == before["eta"]
    assert len(computed) == 1
    hub._apply(status_of(job("job-1", "unit"), job("job-2", "unit")), None)  # the work changed
    assert len(msgspec.json.decode(hub.status_json())["eta"]["items"]) == 2 and len(computed) == 2


def test_the_materials_core_measures_its_polls_for_the_eta() -> None:
    w = World()
    told: list[tuple[str, tuple[float, ...]]] = []
    core = MaterialsCore(
        "materials", w.sent.append, materials=[APP], config_repos=[], processes=w.procs, timers=w.timers,
        clock=w.clock, store=w.store, peers=w.peers, on_durations=lambda name, d: told.append((name, d)),
    )  # fmt: skip
    for took in (12.0, 3.0):
        core.handle(PollDue("app"))
        w.clock.t += took
        core.handle(PollFinished(key="app", revision="r1"))
    assert told == [("app", (12.0,)), ("app", (3.0, 12.0))]  # newest first
    assert list(core.durations["app"]) == [3.0, 12.0]
    core.handle(PollDue("app"))
    (polling,) = core.items.values()
    assert polling.material is not None and polling.material.name == "app"
    foresight = Foresight(bridge=Immediate(), clock=lambda: polling.started_at)  # type: ignore[arg-type]
    foresight.material_durations(*told[-1])  # as the daemon passes them on (materials' on_durations)
    (item,) = foresight.eta(status_of(polling), now=polling.started_at).items
    assert (item.basis, item.samples, item.p50, item.p90) == ("material", 2, polling.started_at + 7.5, polling.started_at + 11.1)


def test_a_deadline_preview_from_history_changes_nothing_and_says_what_the_deadline_would_do(store: Store) -> None:
    seed(store)
    foresight = foresight_of(store.recent_durations())
    lint = job("job-2", "lint", started_at=NOW)  # ends at +30
    unit = job("job-1", "unit", started_at=NOW)  # p50 +300, p90 +460
    stuck = job("job-3", "deploy", pipeline="release")  # no history, cancellable
    mdu = InFlightItem(
        id="materials/app", subsystem="materials", kind=MATERIAL_UPDATE, description="app", started_at=NOW,
        cancellable=False, material=MaterialRef(name="app", url="u", branch="main"),
    )  # fmt: skip
    status = status_of(lint, unit, stuck, mdu)
    preview = foresight.preview(status, 400.0, True)
    assert preview.deadline == NOW + 400 and preview.cancel_at_deadline
    verdicts = {f.item.id: f.verdict for f in preview.items}
    assert verdicts == {
        "agents/job-2": ENDS_BEFORE,
        "agents/job-1": PROBABLY_ENDS_BEFORE,
        "agents/job-3": CANCELLED_AT_DEADLINE,
        "materials/app": HOLDS_PAST_DEADLINE,
    }
    no_cancel = {f.item.id: f.verdict for f in foresight.preview(status, 400.0, False).items}
    assert no_cancel["agents/job-3"] == HOLDS_PAST_DEADLINE
    # Without a deadline: the running drain's own, and its own choice to cancel.
    running = status_of(unit, deadline=NOW + 100, on_deadline="cancel")
    (only,) = foresight.preview(running, None, None).items
    assert (only.verdict, foresight.preview(running, None, None).deadline) == (CANCELLED_AT_DEADLINE, NOW + 100)
    with pytest.raises(BadRequest, match="no deadline"):
        foresight.preview(status_of(unit, enabled=False), None, None)


def test_the_drain_eta_metric_is_seconds_from_now_and_nan_when_unknown(store: Store) -> None:
    seed(store)
    foresight = foresight_of(store.recent_durations())
    metrics = Metrics(CollectorRegistry())
    current: list[Status | None] = [status_of(job("job-1", "unit", started_at=NOW - 60))]
    metrics.drain_eta(lambda: foresight.seconds_left(current[0]))

    def values() -> dict[str, float]:
        text = generate_latest(metrics.registry).decode()
        lines = [line for line in text.splitlines() if line.startswith("maintd_drain_eta_seconds{")]
        return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in lines}

    assert values() == {"p50": 240.0, "p90": 400.0}
    current[0] = status_of(job("job-3", "deploy", pipeline="release"))
    assert all(math.isnan(v) for v in values().values()) and set(values()) == {"p50", "p90"}
    current[0] = msgspec.structs.replace(
        status_of(), maintenance=msgspec.structs.replace(status_of().maintenance, state="drained", safe_to_restart=True)
    )
    assert values() == {"p50": 0.0, "p90": 0.0}
    current[0] = status_of(job("job-1", "unit"), enabled=False)
    assert all(math.isnan(v) for v in values().values())
