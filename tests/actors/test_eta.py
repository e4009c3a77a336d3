"""The drain ETA: with seeded histories, the estimates are what the durations say (issue 14)."""

from __future__ import annotations

import pytest

from actors.eta import RECENT, Durations, drain_eta, item_eta, quantile
from actors.types import BUILDING_JOB, SCHEDULED_JOB, InFlightItem

NOW = 1_000_000.0


def job(pipeline: str, stage: str, name: str, started: float, **kw: object) -> InFlightItem:
    return InFlightItem(
        id=f"agents/{pipeline}-{stage}-{name}",
        subsystem="agents",
        kind=BUILDING_JOB,
        description=f"{pipeline}/1/{stage}/1/{name}",
        started_at=started,
        cancellable=True,
        pipeline=pipeline,
        stage=stage,
        job=name,
        **kw,  # type: ignore[arg-type]
    )


def test_quantiles_are_numpys_linear_ones() -> None:
    assert quantile([10.0], 0.9) == 10.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([float(i) for i in range(1, 11)], 0.9) == pytest.approx(9.1)
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_a_job_with_its_own_history_ends_at_its_start_plus_its_p50_and_p90() -> None:
    history = Durations(jobs={("build", "test", "unit"): [60.0, 120.0, 180.0, 240.0, 300.0]})
    eta = item_eta(job("build", "test", "unit", NOW - 30), history, NOW)
    assert (eta.basis, eta.samples, eta.overdue) == ("job", 5, False)
    assert eta.p50 == NOW - 30 + 180.0
    assert eta.p90 == pytest.approx(NOW - 30 + 276.0)


def test_only_the_recent_runs_count() -> None:
    recent, old = [10.0] * RECENT, [1000.0] * 50
    eta = item_eta(job("p", "s", "j", NOW), Durations(jobs={("p", "s", "j"): recent + old}), NOW)
    assert eta.p90 == NOW + 10.0 and eta.samples == RECENT


def test_without_its_own_history_a_job_falls_back_to_its_stage_then_to_its_pipeline() -> None:
    history = Durations(jobs={("p", "s", "other"): [100.0], ("p", "t", "x"): [1000.0], ("q", "s", "j"): [5.0]})
    by_stage = item_eta(job("p", "s", "new", NOW), history, NOW)
    assert (by_stage.basis, by_stage.p50) == ("stage", NOW + 100.0)
    by_pipeline = item_eta(job("p", "u", "new", NOW), history, NOW)
    assert by_pipeline.basis == "pipeline" and by_pipeline.p50 == NOW + quantile([100.0, 1000.0], 0.5)
    none = item_eta(job("r", "s", "j", NOW), history, NOW)
    assert (none.basis, none.p50, none.p90) == ("none", None, None)


def test_an_item_past_its_p90_is_overdue_and_expected_to_end_now_at_the_earliest() -> None:
    eta = item_eta(job("p", "s", "j", NOW - 500), Durations(jobs={("p", "s", "j"): [60.0, 90.0]}), NOW)
    assert eta.overdue and eta.p50 == NOW and eta.p90 == NOW


def test_an_external_subsystems_own_end_wins_over_history() -> None:
    item = job("p", "s", "j", NOW, expected_end=NOW + 42)
    eta = item_eta(item, Durations(jobs={("p", "s", "j"): [600.0]}), NOW)
    assert (eta.basis, eta.p50, eta.p90) == ("external", NOW + 42, NOW + 42)


def test_the_drain_ends_with_its_last_item_and_is_unknown_while_an_item_has_no_history() -> None:
    history = Durations(jobs={("p", "s", "a"): [100.0], ("p", "s", "b"): [300.0, 500.0]})
    a, b = job("p", "s", "a", NOW), job("p", "s", "b", NOW - 100)
    eta = drain_eta([a, b], history, NOW)
    assert eta.p50 == NOW - 100 + 400.0 and eta.p90 == pytest.approx(NOW - 100 + 480.0) and eta.unknown == ()
    stranger = InFlightItem(id="batch/x", subsystem="batch", kind="export", description="x", started_at=NOW, cancellable=False)
    eta = drain_eta([a, b, stranger], history, NOW)
    assert (eta.p50, eta.p90, eta.unknown) == (None, None, ("batch/x",))
    assert drain_eta([], history, NOW).p50 is None


def test_a_scheduled_job_is_not_estimated_as_building() -> None:
    item = InFlightItem(
        id="scheduler/1", subsystem="scheduler", kind=SCHEDULED_JOB, description="p/1/s/1/j", started_at=NOW,
        cancellable=True, pipeline="p", stage="s", job="j",
    )  # fmt: skip
    assert item_eta(item, Durations(jobs={("p", "s", "j"): [10.0]}), NOW).basis == "none"


def test_a_deadline_preview_sorts_each_item_by_what_the_deadline_would_do_to_it() -> None:
    from actors.eta import CANCELLED_AT_DEADLINE, ENDS_BEFORE, HOLDS_PAST_DEADLINE, PROBABLY_ENDS_BEFORE, deadline_preview
    from actors.types import MATERIAL_UPDATE

    history = Durations(jobs={("p", "s", "quick"): [60.0], ("p", "s", "even"): [100.0, 3000.0], ("p", "s", "slow"): [7200.0]})
    mdu = InFlightItem(
        id="materials/app", subsystem="materials", kind=MATERIAL_UPDATE, description="app", started_at=NOW, cancellable=False
    )
    items = [job("p", "s", "quick", NOW), job("p", "s", "even", NOW), job("p", "s", "slow", NOW), mdu]
    deadline = NOW + 1800
    cancel = {f.item.id: f.verdict for f in deadline_preview(items, history, NOW, deadline, cancel_at_deadline=True)}
    assert cancel == {
        "agents/p-s-quick": ENDS_BEFORE,
        "agents/p-s-even": PROBABLY_ENDS_BEFORE,
        "agents/p-s-slow": CANCELLED_AT_DEADLINE,
        "materials/app": HOLDS_PAST_DEADLINE,  # no history, and a material update is never cancelled
    }
    wait = {f.item.id: f.verdict for f in deadline_preview(items, history, NOW, deadline, cancel_at_deadline=False)}
    assert wait["agents/p-s-slow"] == HOLDS_PAST_DEADLINE and wait["agents/p-s-quick"] == ENDS_BEFORE


def test_a_material_update_ends_by_its_materials_recent_polls() -> None:
    from actors.types import MATERIAL_UPDATE, MaterialRef

    mdu = InFlightItem(
        id="materials/app", subsystem="materials", kind=MATERIAL_UPDATE, description="material app", started_at=NOW,
        cancellable=False, material=MaterialRef(name="app", url="/srv/app", branch="main"),
    )  # fmt: skip
    eta = item_eta(mdu, Durations(materials={"app": [2.0, 4.0], "other": [99.0]}), NOW)
    assert (eta.basis, eta.p50, eta.samples) == ("material", NOW + 3.0, 2)
    assert item_eta(mdu, Durations(materials={"other": [99.0]}), NOW).basis == "none"
