"""The supervisor's roster driven directly (no threads): an external that leaves, one whose
process goes away with blocking work (it keeps blocking for the grace), and one that comes back."""

from __future__ import annotations

import pytest

from actors.errors import StillLeaving
from actors.messages import Enable, ExternalGone, PauseIntake, ReconnectGraceEnded
from tests.actors.core_world import World
from tests.actors.fakes import item

GRACE = 10.0


@pytest.fixture
def away() -> World:
    """Maintenance on; ``backup``, an external, has reported one blocking item and is drained."""
    w = World(names=(), grace=GRACE)
    w.add("backup", external=True)
    w.core.enable(Enable(by="alice"))
    w.report("backup", item("backup", "dump"))
    w.pause_and_drain("backup")
    return w


def test_an_external_that_leaves_is_told_and_removed_once_its_actor_has_passed_on_what_it_sent(away: World) -> None:
    away.core.unregister("backup", "connection closed")
    assert away.ref("backup").told[-1] == ExternalGone(reason="connection closed")
    with pytest.raises(StillLeaving):
        away.add("backup", external=True)
    away.core.disconnect("backup", "connection closed")
    assert away.states() == {"backup": "disconnected"} and away.state() == "draining"


def test_a_disconnected_externals_work_keeps_blocking_until_the_grace_ends(away: World) -> None:
    away.core.disconnect("backup", "connection closed")
    view = away.core.views["backup"]
    assert (view.disconnected, view.reconnect_by, view.ref) == ("connection closed", away.clock.now() + GRACE, None)
    assert away.ref("backup").stopped
    assert away.timers.armed["reconnect:backup"][:2] == (GRACE, ReconnectGraceEnded(name="backup", generation=1))
    assert away.state() == "draining"
    away.core.on_reconnect_grace_ended(ReconnectGraceEnded(name="backup", generation=1))
    assert "backup" not in away.core.views and away.state() == "drained"
    removed = away.core.removed[-1]
    assert (removed.name, [i.id for i in removed.abandoned]) == ("backup", ["backup/dump"])
    assert away.audits[-1] == ("subsystem_removed", "maintd")
    assert [a for a, _ in away.history()][-3:] == ["subsystem_disconnected", "subsystem_removed", "all_drained"]


def test_an_external_that_leaves_with_nothing_blocking_is_removed_at_once(away: World) -> None:
    away.report("backup")
    away.core.disconnect("backup", "connection closed")
    assert "backup" not in away.core.views and "reconnect:backup" not in away.timers.armed


def test_an_external_back_in_time_holds_its_earlier_work_until_it_reports_it(away: World) -> None:
    away.core.disconnect("backup", "connection closed")
    away.add("backup", external=True)
    fresh = away.ref("backup")
    assert len(away.refs["backup"]) == 2 and fresh.told == [PauseIntake(drain_id=away.core.drain_id or "")]
    assert away.states() == {"backup": "unknown"} and [i.id for i in away.core.views["backup"].items] == ["backup/dump"]
    same = (item("backup", "dump"),)
    away.report("backup", item("backup", "other"))  # not the process's own report: the earlier work still blocks
    assert {i.id for i in away.core.views["backup"].items} == {"backup/dump", "backup/other"}
    away.report("backup", *same, from_process=True)  # the process reported its work: the earlier is released
    view = away.core.views["backup"]
    assert (view.abandoned, view.reconnect_by) == ((), None) and "reconnect:backup" not in away.timers.armed
    away.report("backup")
    away.pause_and_drain("backup")
    assert away.state() == "drained"


def test_the_grace_ending_after_it_came_back_releases_the_earlier_work(away: World) -> None:
    away.core.disconnect("backup", "connection closed")
    away.add("backup", external=True)
    away.core.on_reconnect_grace_ended(ReconnectGraceEnded(name="backup", generation=0))  # an earlier one's
    assert [i.id for i in away.core.views["backup"].items] == ["backup/dump"]
    away.core.on_reconnect_grace_ended(ReconnectGraceEnded(name="backup", generation=1))
    assert away.core.views["backup"].items == () and "backup" in away.core.views


def test_a_process_that_goes_away_with_work_in_flight_is_a_failure_of_its_subsystem(away: World) -> None:
    def failures() -> dict[str, int]:
        assert away.sink.status is not None
        return {s.name: s.failures for s in away.sink.status.subsystems}

    assert failures() == {"backup": 0}
    away.core.disconnect("backup", "connection closed")
    assert failures() == {"backup": 1}  # disconnected: its work blocks with nobody to end it
    away.core.on_reconnect_grace_ended(ReconnectGraceEnded(name="backup", generation=1))
    assert away.sink.status is not None
    (removed,) = away.sink.status.removed
    assert (removed.name, removed.failures) == ("backup", 1)  # removed, its work abandoned: still one failure


def test_a_process_that_goes_away_with_nothing_in_flight_is_no_failure() -> None:
    w = World(names=(), grace=GRACE)
    w.add("backup", external=True)
    w.report("backup")
    w.core.disconnect("backup", "connection closed")
    assert w.sink.status is not None
    (removed,) = w.sink.status.removed
    assert (removed.failures, removed.abandoned) == (0, ())


def test_non_blocking_work_abandoned_at_once_is_a_failure() -> None:
    w = World(names=(), grace=GRACE)
    w.add("backup", external=True)
    w.report("backup", item("backup", "note", blocks=False))
    w.core.disconnect("backup", "connection closed")
    assert w.sink.status is not None
    (removed,) = w.sink.status.removed
    assert (removed.failures, [i.id for i in removed.abandoned]) == (1, ["backup/note"])
