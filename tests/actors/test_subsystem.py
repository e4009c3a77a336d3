"""The subsystem contract on the plain core, without threads."""

from typing import Any

from actors.external import ExternalCore
from actors.messages import Cancel, Cancelled, CancelRefused, Drained, InFlightReport, IntakePaused
from actors.subsystem import SubsystemCore
from tests.actors.fakes import item


def make(items: Any = ()) -> tuple[SubsystemCore, list[Any]]:
    sent: list[Any] = []
    return SubsystemCore("jobs", sent.append, items), sent


def test_pause_acknowledges_and_drains_at_once_when_idle() -> None:
    core, sent = make()
    core.pause("d1")
    assert sent == [IntakePaused(subsystem="jobs", drain_id="d1"), Drained(subsystem="jobs", drain_id="d1")]
    assert not core.intake_open


def test_drained_waits_for_blocking_work_and_is_sent_once() -> None:
    core, sent = make([item("jobs", "1")])
    core.pause("d1")
    assert [type(m) for m in sent] == [IntakePaused]
    core.remove("jobs/1")
    assert [type(m) for m in sent] == [IntakePaused, InFlightReport, Drained]
    core.remove("jobs/1")  # removing again changes nothing
    core.report()
    assert [type(m) for m in sent].count(Drained) == 1


def test_work_that_does_not_block_restart_does_not_hold_the_drain() -> None:
    core, sent = make([item("jobs", "s", "scheduled_job", blocks=False)])
    core.pause("d1")
    assert Drained(subsystem="jobs", drain_id="d1") in sent


def test_new_blocking_work_after_drained_clears_it_and_drains_again() -> None:
    core, sent = make()
    core.pause("d1")
    core.add(item("jobs", "late"))
    core.remove("jobs/late")
    assert [m for m in sent if isinstance(m, Drained)] == [Drained(subsystem="jobs", drain_id="d1")] * 2


def test_resume_opens_the_gate() -> None:
    core, _ = make()
    core.pause("d1")
    core.resume("d1")
    assert core.intake_open


def test_cancel_a_material_update_is_always_refused() -> None:
    core, sent = make([item("materials", "app", "material_update", cancellable=True)])
    core.cancel(Cancel(item_id="materials/app", by="alice"))
    (refusal,) = sent
    assert isinstance(refusal, CancelRefused)
    assert refusal.code == "not_cancellable" and "partial clone" in refusal.reason
    assert "materials/app" in core.items


def test_cancel_unknown_and_uncancellable_items_are_refused() -> None:
    core, sent = make([item("jobs", "1", cancellable=False)])
    core.cancel(Cancel(item_id="jobs/none", by="a"))
    core.cancel(Cancel(item_id="jobs/1", by="a"))
    assert [(m.code, m.item_id) for m in sent] == [("not_found", "jobs/none"), ("not_cancellable", "jobs/1")]


def test_cancel_accepted_removes_the_item() -> None:
    core, sent = make([item("jobs", "1")])
    core.cancel(Cancel(item_id="jobs/1", by="alice", reason="stuck"))
    assert isinstance(sent[0], Cancelled) and sent[0].by == "alice"
    assert core.items == {}


class Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def test_an_external_subsystem_is_paused_only_when_the_process_says_so() -> None:
    from actors.messages import ExternalDrained, ExternalIntakePaused

    link, sent = Link(), []
    core = ExternalCore("ext", sent.append, link)
    core.pause("d1")
    assert link.sent == [{"type": "pause_intake", "drain_id": "d1"}]
    assert sent == []
    core.handle(ExternalIntakePaused(drain_id="old"))  # stale: ignored
    assert sent == []
    core.handle(ExternalIntakePaused(drain_id="d1"))
    assert sent == [IntakePaused(subsystem="ext", drain_id="d1")]
    core.handle(ExternalDrained(drain_id="d1"))
    assert sent[-1] == Drained(subsystem="ext", drain_id="d1")
