"""An external's core runs in the supervisor's thread (issue 11), and fails as an actor does:
the supervisor hears ``SubsystemFailed``, later messages find it dead, and no cancel is left
without an answer."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.errors import SubsystemGone
from actors.external import ExternalCore, ExternalHost
from actors.future import CallbackFuture
from actors.messages import (
    Cancel,
    ExternalInFlight,
    ForExternal,
    InFlightReport,
    PauseIntake,
    ReportInFlight,
    SubsystemFailed,
)
from tests.actors.fakes import item


class Link:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.routed: Any = None

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def route_to(self, actor: Any) -> None:
        self.routed = actor


class Inbox:
    """The supervisor's inbox, delivered by hand."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def tell(self, message: Any) -> None:
        self.messages.append(message)

    def deliver(self) -> list[Any]:
        """Hand every ForExternal to its host; return what else came (what the core emitted)."""
        other = []
        while self.messages:
            message = self.messages.pop(0)
            if isinstance(message, ForExternal):
                message.host.receive(message.message)
            else:
                other.append(message)
        return other


class Exploding(ExternalCore):
    def handle(self, message: Any) -> Any:
        if isinstance(message, ExternalInFlight) and not message.items:
            raise RuntimeError("boom")
        return super().handle(message)


def make() -> tuple[ExternalHost, Link, Inbox]:
    inbox, link = Inbox(), Link()
    host = ExternalHost(Exploding("ext", inbox.tell, link), inbox, generation=3)  # type: ignore[arg-type]
    return host, link, inbox


def test_the_host_routes_its_link_to_itself_and_reports_through_the_supervisors_inbox() -> None:
    host, link, inbox = make()
    assert link.routed is host
    assert [type(m.message) for m in inbox.messages] == [ReportInFlight]  # as an actor's on_start
    assert inbox.deliver() == [InFlightReport(subsystem="ext", items=())]
    link.routed.tell(PauseIntake(drain_id="d1"))
    assert inbox.deliver() == [] and link.sent == [{"type": "pause_intake", "drain_id": "d1"}]


def test_a_core_that_raises_fails_like_an_actor_and_answers_every_cancel() -> None:
    host, link, inbox = make()
    link.routed.tell(ExternalInFlight(items=(item("ext", "job-1"),)))
    inbox.deliver()
    waiting = CallbackFuture()
    host.tell(Cancel(item_id="ext/job-1", by="alice", reply=waiting))  # sent to the process
    queued = CallbackFuture()
    host.tell(ExternalInFlight(items=()))  # the core raises on this one
    host.tell(Cancel(item_id="ext/job-1", by="bob", reply=queued))  # still on its way
    emitted = inbox.deliver()
    assert SubsystemFailed(subsystem="ext", generation=3, error="RuntimeError('boom')") in emitted
    assert not host.is_alive()
    with pytest.raises(SubsystemGone):
        waiting.get(timeout=0)
    with pytest.raises(SubsystemGone):
        queued.get(timeout=0)
    with pytest.raises(pykka.ActorDeadError):
        link.routed.tell(ExternalInFlight(items=()))
