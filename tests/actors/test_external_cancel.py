"""An external's cancel that timed out ends: the next cancel of the item is sent (issue 9, item 10)."""

from __future__ import annotations

from typing import Any

from actors.external import ExternalCore
from actors.future import CallbackFuture
from actors.messages import Cancel, CancelRefused, CancelTimedOut, ExternalCancelResult, ExternalInFlight
from tests.actors.fakes import item


class Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def make() -> tuple[ExternalCore, Link, list[Any]]:
    emitted: list[Any] = []
    link = Link()
    core = ExternalCore("ext", emitted.append, link)
    core.handle(ExternalInFlight(items=(item("ext", "job-1"),)))
    return core, link, emitted


def cancels(link: Link) -> list[str]:
    return [m["item"] for m in link.sent if m["type"] == "cancel"]


def refusals(emitted: list[Any]) -> list[str]:
    return [m.code for m in emitted if isinstance(m, CancelRefused)]


def test_a_second_cancel_while_the_first_is_awaited_is_a_conflict_and_after_its_timeout_it_is_sent() -> None:
    core, link, emitted = make()
    first = CallbackFuture()
    core.cancel(Cancel(item_id="ext/job-1", by="alice", reply=first))
    core.cancel(Cancel(item_id="ext/job-1", by="bob", reply=CallbackFuture()))
    assert cancels(link) == ["job-1"] and refusals(emitted) == ["conflict"]

    core.handle(CancelTimedOut(item_id="ext/job-1", reply=first))  # alice's maintctl gave up
    second = CallbackFuture()
    core.cancel(Cancel(item_id="ext/job-1", by="carol", reply=second))
    assert cancels(link) == ["job-1", "job-1"] and refusals(emitted) == ["conflict"]
    core.handle(ExternalCancelResult(item="job-1", ok=True))
    (done,) = [m for m in emitted if type(m).__name__ == "Cancelled"]
    assert done.by == "carol" and done.reply is second


def test_a_stale_timeout_does_not_end_a_newer_cancel() -> None:
    core, link, emitted = make()
    old, new = CallbackFuture(), CallbackFuture()
    core.cancel(Cancel(item_id="ext/job-1", by="alice", reply=old))
    core.handle(CancelTimedOut(item_id="ext/job-1", reply=old))
    core.cancel(Cancel(item_id="ext/job-1", by="bob", reply=new))
    core.handle(CancelTimedOut(item_id="ext/job-1", reply=old))  # late, for the first one
    core.cancel(Cancel(item_id="ext/job-1", by="carol", reply=CallbackFuture()))
    assert refusals(emitted) == ["conflict"] and cancels(link) == ["job-1", "job-1"]


def test_a_cancel_nobody_waits_for_gives_way_to_an_operators_cancel() -> None:
    core, link, emitted = make()
    core.cancel(Cancel(item_id="ext/job-1", by="deadline", reply=None))  # the drain deadline's
    core.cancel(Cancel(item_id="ext/job-1", by="alice", reply=CallbackFuture()))
    assert cancels(link) == ["job-1", "job-1"] and refusals(emitted) == []


def test_a_second_deadline_cancel_while_one_is_outstanding_is_not_sent_again() -> None:
    """Two drains' deadlines cancel the same unanswered item: the process gets one cancel line
    (found by the drain state machine in CI); an operator's cancel still gets through."""
    core, link, emitted = make()
    core.cancel(Cancel(item_id="ext/job-1", by="deadline"))
    core.cancel(Cancel(item_id="ext/job-1", by="deadline"))
    assert cancels(link) == ["job-1"] and refusals(emitted) == []
    core.cancel(Cancel(item_id="ext/job-1", by="alice", reply=CallbackFuture()))
    assert cancels(link) == ["job-1", "job-1"]
