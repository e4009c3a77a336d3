"""Item 8 of issue 9: the scheduler arms the timers of what changed, never of every pipeline.

Each arm costs a croniter computation (about 0.4 ms) and a trio task; with every pipeline
re-armed on each firing, 300 pipelines on one schedule cost 300 x 300 arms a minute. The
scheduler core runs here with a real in-memory store and a Timers port that counts its calls.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.definitions import JobDef, PipelineDef, StageDef
from actors.runs import PipelinesChanged, TimerDue, Trigger
from actors.scheduler import SchedulerCore
from actors.store import Store
from tests.actors.fakes import FakeClock, FakeTimers
from tests.actors.test_jobserver_cores import FakePeers

N = 300


class CountingTimers(FakeTimers):
    def __init__(self) -> None:
        super().__init__()
        self.arms: list[str] = []
        self.disarms: list[str] = []

    def arm(self, key: str, delay: float, message: Any, target: Any = None) -> None:
        self.arms.append(key)
        super().arm(key, delay, message, target)

    def disarm(self, key: str) -> None:
        self.disarms.append(key)
        super().disarm(key)

    def reset(self) -> None:
        self.arms.clear()
        self.disarms.clear()


def pipeline(name: str, timer: str | None = "* * * * *") -> PipelineDef:
    return PipelineDef(name=name, timer=timer, stages=[StageDef(name="s", jobs=[JobDef(name="j", command=["true"])])])


PIPELINES = tuple(pipeline(f"p{i:03d}") for i in range(N))


@pytest.fixture
def world() -> tuple[SchedulerCore, CountingTimers, Store]:
    timers, store = CountingTimers(), Store(":memory:")
    core = SchedulerCore(
        "scheduler", lambda _m: None, pipelines=list(PIPELINES), store=store, peers=FakePeers(),
        timers=timers, clock=FakeClock(), work_root="/srv/maintd",
    )  # fmt: skip
    core.start()
    return core, timers, store


def test_start_arms_each_timer_once(world: Any) -> None:
    _core, timers, _store = world
    assert sorted(timers.arms) == sorted(f"cron:{p.name}" for p in PIPELINES)
    assert set(timers.armed) == {f"cron:{p.name}" for p in PIPELINES}


def test_pausing_one_pipeline_among_300_arms_no_timer(world: Any) -> None:
    core, timers, _store = world
    timers.reset()
    core.handle(PipelinesChanged(pipelines=PIPELINES, paused=frozenset({"p007"})))
    assert len(timers.arms) + len(timers.disarms) <= 2, (len(timers.arms), len(timers.disarms))
    assert core.paused_pipelines == {"p007"}
    assert set(timers.armed) == {f"cron:{p.name}" for p in PIPELINES}  # every timer still armed


def test_a_firing_rearms_only_its_own_pipeline(world: Any) -> None:
    core, timers, store = world
    core.handle(PipelinesChanged(pipelines=PIPELINES, paused=frozenset({"p001"})))
    timers.reset()
    core.handle(TimerDue("p000"))
    assert timers.arms == ["cron:p000"]
    assert timers.disarms == []
    assert [r.pipeline for r in store.recent_runs()] == ["p000"]  # it did trigger
    timers.reset()
    core.handle(TimerDue("p001"))  # paused: skipped, but its next firing is armed
    assert timers.arms == ["cron:p001"]
    assert [r.pipeline for r in store.recent_runs()] == ["p000"]


def test_a_configuration_change_rearms_only_the_changed_schedules(world: Any) -> None:
    core, timers, _store = world
    changed = list(PIPELINES)
    changed[5] = pipeline("p005", "*/5 * * * *")  # new schedule
    changed[6] = pipeline("p006", None)  # no timer any more
    del changed[7]  # gone
    changed.append(pipeline("new"))  # added
    timers.reset()
    core.handle(PipelinesChanged(pipelines=tuple(changed)))
    assert sorted(timers.arms) == ["cron:new", "cron:p005"]
    assert sorted(timers.disarms) == ["cron:p005", "cron:p006", "cron:p007"]
    assert {"cron:p006", "cron:p007"}.isdisjoint(timers.armed)
    assert len(timers.armed) == N - 1
    # a firing already on its way for a pipeline whose timer is gone triggers nothing and arms nothing
    timers.reset()
    core.handle(TimerDue("p006"))
    core.handle(TimerDue("p007"))
    assert timers.arms == []


def test_a_user_trigger_arms_no_timer(world: Any) -> None:
    core, timers, _store = world
    timers.reset()
    core.handle(Trigger(pipeline="p010", by="alice"))
    assert timers.arms == []
