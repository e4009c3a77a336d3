"""The status carries times as seconds since the epoch; only the edges turn them into text."""

from __future__ import annotations

from actors.messages import Disable, Enable
from actors.supervisor import SupervisorCore
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers


def test_every_time_in_the_status_its_events_and_history_is_the_clock_s_float() -> None:
    clock, sink = FakeClock(1_800_000_000.25), FakeSink()
    core = SupervisorCore(clock=clock, timers=FakeTimers(), sink=sink)
    info = core.enable(Enable(by="alice", reason="upgrade", deadline_seconds=1800))
    assert (info.updated_on, info.deadline) == (1_800_000_000.25, 1_800_001_800.25)
    core.flush_status()
    assert sink.status is not None and sink.status.maintenance.updated_on == 1_800_000_000.25
    clock.t += 5
    off = core.disable(Disable(by="bob"))
    assert (off.updated_on, off.deadline) == (1_800_000_005.25, None)
    assert [e.at for e in sink.events if e.event == "state_changed"][-1] == 1_800_000_005.25
    assert [(h.action, h.at) for h in core.history if h.action != "all_drained"] == [
        ("enable", 1_800_000_000.25),
        ("disable", 1_800_000_005.25),
    ]
