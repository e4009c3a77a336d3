"""``enable --ttl``: past the TTL maintenance stays on and is raised (status, one event, the
log every hour), driven on :class:`~actors.supervisor.SupervisorCore` without threads."""

from __future__ import annotations

import logging

import pytest

from actors.errors import BadRequest
from actors.messages import Disable, Enable, TTLPassed
from actors.supervisor import TTL_TIMER, TTL_WARN_EVERY
from tests.actors.core_world import World


@pytest.fixture
def world() -> World:
    return World.reported()


def fire_ttl(world: World, after: float) -> None:
    """What the timers port does when the armed TTL timer's delay has passed."""
    delay, message, _target = world.timers.armed.pop(TTL_TIMER)
    assert delay == after
    world.clock.t += delay
    world.core.on_ttl_passed(message)


def ttl_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "past its TTL" in r.getMessage()]


def test_enable_with_a_ttl_arms_it_and_shows_its_end(world: World) -> None:
    start = world.clock.t
    world.core.enable(Enable(by="alice", ttl_seconds=4 * 3600))
    info = world.core.status().maintenance
    assert world.timers.armed[TTL_TIMER][0] == 4 * 3600
    assert info.ttl_end == start + 4 * 3600  # an epoch time, formatted only at the edges
    assert not info.ttl_expired and start + 4 * 3600 == world.core.ttl_end


def test_past_its_ttl_maintenance_stays_on_and_is_raised_once_as_an_event(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="maintd.supervisor")
    world.core.enable(Enable(by="alice", ttl_seconds=3600))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    fire_ttl(world, 3600)
    info = world.core.status().maintenance
    assert info.enabled and info.state == "drained" and info.ttl_expired
    assert world.events().count("ttl_expired") == 1
    assert world.sink.events[-1].maintenance.ttl_expired
    assert len(ttl_warnings(caplog)) == 1 and "alice" in ttl_warnings(caplog)[0]
    # Nothing was told to resume: the subsystems stay paused.
    assert all("ResumeIntake" not in type(m).__name__ for r in world.refs.values() for ref in r for m in ref.told)


def test_the_log_warns_every_hour_while_expired_and_the_event_is_not_repeated(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="maintd.supervisor")
    world.core.enable(Enable(by="alice", ttl_seconds=600))
    fire_ttl(world, 600)
    fire_ttl(world, TTL_WARN_EVERY)
    fire_ttl(world, TTL_WARN_EVERY)
    warnings = ttl_warnings(caplog)
    assert len(warnings) == 3 and "120 min past" in warnings[-1]
    assert world.events().count("ttl_expired") == 1
    assert TTL_TIMER in world.timers.armed and world.core.machine.enabled


def test_disable_clears_the_ttl_and_a_late_timer_of_that_drain_changes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="maintd.supervisor")
    drain = world.core.enable(Enable(by="alice", ttl_seconds=600)).drain_id or ""
    fire_ttl(world, 600)
    world.core.disable(Disable(by="bob"))
    info = world.core.status().maintenance
    assert TTL_TIMER not in world.timers.armed and info.ttl_end is None and not info.ttl_expired
    caplog.clear()
    world.core.on_ttl_passed(TTLPassed(drain_id=drain))  # fired as it was disarmed
    assert ttl_warnings(caplog) == [] and TTL_TIMER not in world.timers.armed


def test_a_re_enable_starts_without_the_old_ttl(world: World) -> None:
    old = world.core.enable(Enable(by="alice", ttl_seconds=600)).drain_id or ""
    fire_ttl(world, 600)
    world.core.disable(Disable(by="alice"))
    world.core.enable(Enable(by="bob"))
    info = world.core.status().maintenance
    assert info.ttl_end is None and not info.ttl_expired and TTL_TIMER not in world.timers.armed
    world.core.on_ttl_passed(TTLPassed(drain_id=old))  # the old drain's timer, late
    assert not world.core.status().maintenance.ttl_expired


@pytest.mark.parametrize("ttl", [0.0, -5.0])
def test_a_ttl_of_zero_or_less_is_refused_before_anything_happens(world: World, ttl: float) -> None:
    with pytest.raises(BadRequest, match="ttl_seconds"):
        world.core.enable(Enable(by="alice", ttl_seconds=ttl))
    assert world.state() == "normal" and world.audits == [] and world.core.version == 0
