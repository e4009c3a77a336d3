"""``SupervisorCore`` driven directly: no threads, fake ports, refs that record what they are told.

Each test sends the core the messages its actor would hand it and reads back what it told
the subsystems, armed on the timers, recorded in the history and the audit log, and published.
"""

from __future__ import annotations

import pytest

from actors.errors import BadRequest, Conflict, MaintdError, NotCancellable, NotFound
from actors.future import CallbackFuture
from actors.messages import (
    Cancel,
    Cancelled,
    CancelRefused,
    DeadlineReached,
    Disable,
    Drained,
    Enable,
    IntakePaused,
    PauseIntake,
    RequestCancel,
    RestartSubsystem,
    ResumeIntake,
    SubsystemFailed,
)
from actors.store import StoreError
from actors.supervisor import DEADLINE_TIMER
from actors.types import OnDeadline
from tests.actors.core_world import World
from tests.actors.fakes import item


@pytest.fixture
def world() -> World:
    return World.reported()


# -- enable, the drain, disable ----------------------------------------------------------


def test_a_drain_from_enable_to_drained_and_back_with_every_step_recorded(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    info = world.core.enable(Enable(by="alice", reason="upgrade"))
    drain = info.drain_id or ""
    assert [r.told for r in (world.ref("scheduler"), world.ref("agents"))] == [[PauseIntake(drain_id=drain)]] * 2
    assert world.states() == {"scheduler": "pausing", "agents": "pausing"}
    world.pause_and_drain("scheduler")
    world.core.on_intake_paused(IntakePaused(subsystem="agents", drain_id=drain))
    assert world.states() == {"scheduler": "drained", "agents": "paused"}
    assert world.state() == "draining"
    world.report("agents")
    world.core.on_drained(Drained(subsystem="agents", drain_id=drain))
    assert world.state() == "drained" and world.core.status().maintenance.safe_to_restart
    world.core.disable(Disable(by="bob"))
    assert world.ref("agents").told[-1] == ResumeIntake(drain_id=drain)
    assert world.states() == {"scheduler": "running", "agents": "running"} and world.state() == "normal"
    assert world.history() == [("enable", "alice"), ("all_drained", "maintd"), ("disable", "bob")]
    assert world.audits == [("enable", "alice"), ("disable", "bob")]


def test_acknowledgements_of_another_drain_change_nothing(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.core.on_intake_paused(IntakePaused(subsystem="agents", drain_id="drain-old"))
    world.core.on_drained(Drained(subsystem="agents", drain_id="drain-old"))
    assert world.states()["agents"] == "pausing"


def test_work_reported_after_drained_goes_back_to_draining_and_says_who(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    assert world.state() == "drained"
    world.report("agents", item("agents", "late"))
    assert world.state() == "draining" and world.states()["agents"] == "paused"
    last = world.core.history[-1]
    assert (last.action, last.by, last.reason) == ("work_appeared", "maintd", "not drained any more: agents")
    world.report("agents")
    assert world.state() == "draining"  # it must say drained again: the work it had may have left more
    world.core.on_drained(Drained(subsystem="agents", drain_id=world.core.drain_id or ""))
    assert world.state() == "drained"


def test_work_that_does_not_block_a_restart_does_not_hold_the_drain_back(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.report("scheduler", item("scheduler", "queued", "scheduled_job", blocks=False))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    assert world.state() == "drained"


def test_enable_with_no_subsystems_is_drained_at_once() -> None:
    world = World(names=())
    world.core.enable(Enable(by="alice"))
    assert world.state() == "drained"
    assert world.history() == [("enable", "alice"), ("all_drained", "maintd")]


def test_a_subsystem_registered_during_a_drain_is_paused_and_holds_it_back(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    world.add("backup", external=True)
    assert world.ref("backup").told == [PauseIntake(drain_id=world.core.drain_id or "")]
    assert world.states()["backup"] == "unknown" and world.state() == "draining"
    with pytest.raises(Conflict, match="already registered"):
        world.add("backup", external=True)


def test_an_enable_that_cannot_be_audited_does_not_happen(world: World) -> None:
    world.audit_fails = True
    with pytest.raises(StoreError):
        world.core.enable(Enable(by="alice", deadline_seconds=30))
    assert world.state() == "normal" and world.core.drain_id is None
    assert world.ref("agents").told == [] and DEADLINE_TIMER not in world.timers.armed
    assert world.history() == [] and world.sink.events[-1].event != "state_changed"


def test_a_disable_that_cannot_be_audited_leaves_maintenance_on(world: World) -> None:
    world.core.enable(Enable(by="alice", deadline_seconds=30))
    world.audit_fails = True
    with pytest.raises(StoreError):
        world.core.disable(Disable(by="bob"))
    assert world.state() == "draining" and DEADLINE_TIMER in world.timers.armed
    assert not any(isinstance(m, ResumeIntake) for m in world.ref("agents").told)


def test_a_negative_deadline_is_refused_before_anything_happens(world: World) -> None:
    with pytest.raises(BadRequest, match="zero or more"):
        world.core.enable(Enable(by="alice", deadline_seconds=-1))
    assert world.state() == "normal" and world.audits == []


def test_enable_twice_and_disable_when_off_are_refused_unaudited(world: World) -> None:
    with pytest.raises(Conflict, match="not on"):
        world.core.disable(Disable(by="bob"))
    world.core.enable(Enable(by="alice", reason="first"))
    with pytest.raises(Conflict, match="already on"):
        world.core.enable(Enable(by="bob", reason="second"))
    assert world.audits == [("enable", "alice")]
    assert world.core.maintenance_info().reason == "first"


# -- the deadline --------------------------------------------------------------------------


def test_a_deadline_that_waits_marks_the_drain_overdue_and_cancels_nothing(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    world.core.enable(Enable(by="alice", deadline_seconds=60))
    assert world.timers.armed[DEADLINE_TIMER][:2] == (60, DeadlineReached(drain_id=world.core.drain_id or ""))
    world.core.on_deadline_reached(DeadlineReached(drain_id=world.core.drain_id or ""))
    info = world.core.maintenance_info()
    assert info.overdue and info.on_deadline == "wait"
    assert world.events()[-1] == "overdue"
    assert not any(isinstance(m, Cancel) for m in world.ref("agents").told)


def test_a_deadline_of_an_earlier_drain_is_ignored(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    world.core.enable(Enable(by="alice", deadline_seconds=60, on_deadline=OnDeadline.CANCEL))
    world.core.on_deadline_reached(DeadlineReached(drain_id="drain-earlier"))
    assert not world.core.maintenance_info().overdue
    assert not any(isinstance(m, Cancel) for m in world.ref("agents").told)


def test_a_deadline_after_the_drain_ended_is_not_overdue(world: World) -> None:
    world.core.enable(Enable(by="alice", deadline_seconds=60, on_deadline=OnDeadline.CANCEL))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    world.core.on_deadline_reached(DeadlineReached(drain_id=world.core.drain_id or ""))
    assert not world.core.maintenance_info().overdue and "overdue" not in world.events()


def test_disable_disarms_the_deadline_and_forgets_it(world: World) -> None:
    world.core.enable(Enable(by="alice", deadline_seconds=60, on_deadline=OnDeadline.CANCEL))
    world.core.disable(Disable(by="bob"))
    info = world.core.maintenance_info()
    assert DEADLINE_TIMER not in world.timers.armed
    assert (info.deadline, info.on_deadline, info.overdue) == (None, None, False)


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_is_audited_before_it_goes_to_the_owner_and_answered_when_done(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    reply = CallbackFuture()
    assert world.core.request_cancel(RequestCancel(item="job1", by="alice", reply=reply)) == "agents/job1"
    assert world.audits == [("cancel_requested", "alice")]
    assert world.ref("agents").told == [Cancel(item_id="agents/job1", by="alice", reply=reply)]
    world.core.on_cancelled(Cancelled(subsystem="agents", item_id="agents/job1", by="alice", reply=reply))
    assert reply.get(timeout=0) == {"item": "agents/job1", "cancelled": True, "by": "alice"}
    assert world.history() == [("cancel", "alice")] and world.audits[-1] == ("cancel", "alice")


def test_a_cancel_that_cannot_be_audited_is_not_sent(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    world.audit_fails = True
    with pytest.raises(StoreError):
        world.core.request_cancel(RequestCancel(item="agents/job1", by="alice", reply=CallbackFuture()))
    assert world.ref("agents").told == []


def test_a_refused_cancel_answers_with_the_subsystems_reason(world: World) -> None:
    reply = CallbackFuture()
    world.core.on_cancel_refused(
        CancelRefused(
            subsystem="agents", item_id="agents/job1", code="conflict", reason="it already ended", by="alice", reply=reply
        )
    )
    with pytest.raises(MaintdError, match="it already ended") as refused:
        reply.get(timeout=0)
    assert refused.value.code == "conflict"


@pytest.mark.parametrize(
    ("ref", "error", "match"),
    [
        ("job9", NotFound, "no item 'job9'"),
        ("job1", BadRequest, "more than one item"),
        ("agents/mdu", NotCancellable, "partial clone"),
        ("agents/fixed", NotCancellable, "does not accept cancel"),
    ],
)
def test_cancels_that_are_refused_send_nothing(world: World, ref: str, error: type[Exception], match: str) -> None:
    world.report(
        "agents", item("agents", "job1"), item("agents", "mdu", "material_update"), item("agents", "fixed", cancellable=False)
    )
    world.report("scheduler", item("scheduler", "job1"))
    with pytest.raises(error, match=match):
        world.core.request_cancel(RequestCancel(item=ref, by="alice", reply=CallbackFuture()))
    assert world.audits == [] and world.ref("agents").told == []


# -- a subsystem that fails ------------------------------------------------------------------


def test_a_failed_subsystem_is_never_drained_and_its_restart_is_paused_for_the_drain(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    world.core.on_failed(SubsystemFailed(subsystem="agents", generation=0, error="boom"))
    assert world.state() == "draining" and world.states()["agents"] == "failed"
    status = world.core.status()
    assert next(s.last_error for s in status.subsystems if s.name == "agents") == "boom"
    assert world.timers.armed["restart:agents"][:2] == (1.0, RestartSubsystem(name="agents", generation=0))
    world.core.on_restart(RestartSubsystem(name="agents", generation=0))
    fresh = world.ref("agents")
    assert len(world.refs["agents"]) == 2 and fresh.told == [PauseIntake(drain_id=world.core.drain_id or "")]
    assert world.states()["agents"] == "unknown" and world.core.views["agents"].generation == 1
    world.report("agents")
    world.pause_and_drain("agents")
    assert world.state() == "drained"


def test_failures_and_restarts_of_an_earlier_generation_are_ignored(world: World) -> None:
    world.core.on_failed(SubsystemFailed(subsystem="agents", generation=0, error="boom"))
    world.core.on_restart(RestartSubsystem(name="agents", generation=0))
    world.core.on_failed(SubsystemFailed(subsystem="agents", generation=0, error="late"))
    assert world.states()["agents"] == "unknown" and world.core.views["agents"].failures == 1
    world.core.on_restart(RestartSubsystem(name="agents", generation=0))
    assert len(world.refs["agents"]) == 2  # not restarted twice


def test_a_failed_subsystems_work_cannot_be_cancelled_until_it_is_back(world: World) -> None:
    world.report("agents", item("agents", "job1"))
    world.core.on_failed(SubsystemFailed(subsystem="agents", generation=0, error="boom"))
    with pytest.raises(MaintdError, match="restarting") as refused:
        world.core.request_cancel(RequestCancel(item="agents/job1", by="alice", reply=CallbackFuture()))
    assert refused.value.code == "unavailable" and world.audits == []


def test_an_external_that_fails_while_leaving_is_removed_not_restarted(world: World) -> None:
    world.add("backup", external=True)
    world.core.unregister("backup", "connection closed")
    assert world.core.views["backup"].leaving == "connection closed"
    world.core.on_failed(SubsystemFailed(subsystem="backup", generation=0, error="boom"))
    assert "backup" not in world.core.views and "restart:backup" not in world.timers.armed
    assert world.ref("backup").stopped and world.core.removed[-1].name == "backup"
