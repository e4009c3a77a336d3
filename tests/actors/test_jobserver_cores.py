"""The job server's plain cores, without threads: a real in-memory Store, recording fakes for
peers, processes and timers, a fake clock, and ``emit`` as ``list.append``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.agents import AgentsCore
from actors.config_guard import ApplyConfig, ConfigGuardCore, SetPipelinePaused
from actors.definitions import JobDef, MaterialDef, PipelineDef, StageDef
from actors.errors import MaintdError
from actors.handout import AgentsPaused, AnnounceIdle, Assign, CancelJobs, GiveBack, JobFinished, TakenBack, WantWork
from actors.jobs import FilesFetched, JobExited, JobSpec, JobState, PollFinished
from actors.materials import ConfigRepoFiles, MaterialChanged, MaterialsCore, PollDue
from actors.messages import Cancel, Cancelled, CancelRefused, Drained, GetInfo, InFlightReport, IntakePaused
from actors.peers import PeerRef
from actors.runs import CancelRun, PipelinesChanged, PipelinesWanted, TimerDue, Trigger
from actors.scheduler import SchedulerCore
from actors.store import Store, StoreError
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, SCHEDULED_JOB
from tests.actors.fakes import FakeClock, FakeTimers

# --- fakes ----------------------------------------------------------------------------


class FakePeers:
    """Records ``tell(name, message)``; ``ref(name)`` is the real PeerRef over it, one per name."""

    def __init__(self) -> None:
        self.told: list[tuple[str, Any]] = []
        self.refs: dict[str, PeerRef] = {}

    def tell(self, name: str, message: Any) -> None:
        self.told.append((name, message))

    def ref(self, name: str) -> PeerRef:
        return self.refs.setdefault(name, PeerRef(self, name))  # type: ignore[arg-type]

    def to(self, name: str, kind: type = object) -> list[Any]:
        return [m for n, m in self.told if n == name and isinstance(m, kind)]


class FakeProcesses:
    """The ProcessPort: each call is recorded as (method, *args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        self.calls.append(("poll_material", reply_to, key, url, branch, timeout))

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        self.calls.append(("fetch_files", reply_to, key, url, revision, timeout))

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        self.calls.append(("start_job", reply_to, msgspec.structs.replace(spec, started_at=None)))

    def stop_job(self, job_id: int, grace: float) -> None:
        self.calls.append(("stop_job", job_id, grace))

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        self.calls.append(("report_jobs", reply_to, job_ids))

    def of(self, method: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == method]


class World:
    def __init__(self) -> None:
        self.store, self.peers, self.procs = Store(":memory:"), FakePeers(), FakeProcesses()
        self.timers, self.clock, self.sent = FakeTimers(), FakeClock(), []

    def emitted(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    def drained(self) -> bool:
        return any(m.drain_id == "d1" for m in self.emitted(Drained))

    def job(self, job_id: int) -> tuple[str, str | None, str | None]:
        row = self.store.job(job_id)
        assert row is not None
        return row.state, row.agent, row.cancelled_by

    def job_ids(self, run_id: int = 1) -> dict[str, int]:
        return {j.name: j.id for j in self.store.jobs_of_run(run_id)}


@pytest.fixture
def w() -> World:
    return World()


def maintd_error(code: str) -> Any:
    return pytest.raises(MaintdError, check=lambda e: e.code == code)


# --- definitions and cores ----------------------------------------------------------------

APP = MaterialDef(name="app", url="https://git.example/app.git", poll_interval="30s", poll_timeout="2m")
PIPES = MaterialDef(name="pipes", url="https://git.example/pipes.git", poll_interval="45s", poll_timeout="1m")
PIPE = PipelineDef(
    name="app",
    materials=["app"],
    stages=[
        StageDef(name="build", jobs=[JobDef(name="compile", command=["make"]), JobDef(name="package", command=["tar"])]),
        StageDef(name="test", jobs=[JobDef(name="unit", command=["pytest"])]),
    ],
)
OTHER = PipelineDef(name="docs", stages=[StageDef(name="site", jobs=[JobDef(name="render", shell="make site")])])


def materials(w: World, poll: str | None = None) -> MaterialsCore:
    core = MaterialsCore(
        "materials", w.sent.append, materials=[APP], config_repos=[PIPES], processes=w.procs,
        timers=w.timers, clock=w.clock, store=w.store, peers=w.peers,
    )  # fmt: skip
    if poll is not None:
        core.handle(PollDue(poll))
    return core


def scheduler(w: World, *, trigger: bool = True, agents: int = 0) -> SchedulerCore:
    """A scheduler; by default ``app`` is triggered (run 1) and ``agents`` agents took its oldest jobs."""
    core = SchedulerCore(
        "scheduler", w.sent.append, pipelines=[PIPE], store=w.store, peers=w.peers,
        timers=w.timers, clock=w.clock, work_root="/srv/maintd",
    )  # fmt: skip
    if trigger:
        core.handle(Trigger(pipeline="app", by="alice"))
    for i in range(agents):
        core.handle(WantWork(f"agent-{i + 1}"))
    return core


def queued(core: SchedulerCore) -> list[str]:
    return [spec.job for spec in core.queue]


def agents(w: World, items: Any = ()) -> AgentsCore:
    return AgentsCore(
        "agents", w.sent.append, items, count=2, store=w.store, peers=w.peers, processes=w.procs, clock=w.clock, grace=5.0
    )


def new_spec(w: World, job: str = "compile") -> JobSpec:
    """A job scheduled in the store, as the scheduler hands it to an agent."""
    counter = w.store.next_counter("app")
    run_id = w.store.create_run("app", counter, "user", "alice", {}, w.clock.now())
    (job_id,) = w.store.create_jobs(run_id, "app", counter, "build", 0, ((job, f"/logs/{job}.log"),), w.clock.now())
    return JobSpec(
        job_id=job_id, run_id=run_id, pipeline="app", pipeline_counter=counter, stage="build", stage_counter=1,
        job=job, argv=(job,), workspace="/ws", log=f"/logs/{job}.log", agent="",
    )  # fmt: skip


def building(w: World) -> tuple[AgentsCore, JobSpec]:
    core, spec = agents(w), new_spec(w)
    core.handle(Assign(agent="agent-1", spec=spec))
    return core, spec


def guard(w: World) -> ConfigGuardCore:
    return ConfigGuardCore(
        "config", w.sent.append, pipelines=[PIPE], materials={"app"}, store=w.store, peers=w.peers, clock=w.clock
    )


# --- materials ----------------------------------------------------------------------------


def test_materials_start_arms_every_poll_timer_at_zero_and_paused_they_poll_nothing(w: World) -> None:
    core = materials(w)
    core.start()
    me = w.peers.ref("materials")
    assert w.timers.armed == {"poll:app": (0, PollDue("app"), me), "poll:config:pipes": (0, PollDue("config:pipes"), me)}
    core.pause("d1")
    assert w.timers.armed == {}  # disarmed
    core.handle(PollDue("app"))
    core.handle(PollDue("config:pipes"))
    assert w.procs.calls == [] and core.items == {}


def test_poll_due_starts_one_material_update_that_refuses_cancel(w: World) -> None:
    core = materials(w, poll="app")
    core.handle(PollDue("app"))  # already polling: nothing more
    (item,) = core.items.values()
    assert (item.id, item.kind, item.cancellable, item.blocks_restart) == ("materials/app", MATERIAL_UPDATE, False, True)
    assert w.procs.calls == [("poll_material", w.peers.ref("materials"), "app", APP.url, "main", 120.0)]
    # when its poll_timeout ends it (the status page says so); not an ETA: expected_end stays the externals'
    assert (item.timeout_at, item.expected_end) == (item.started_at + 120.0, None)
    assert w.emitted(InFlightReport)[-1].items == (item,)
    core.cancel(Cancel(item_id="materials/app", by="alice"))
    (refusal,) = w.emitted(CancelRefused)
    assert refusal.code == "not_cancellable" and "partial clone" in refusal.reason
    assert "materials/app" in core.items and w.emitted(Cancelled) == []


def test_a_paused_materials_core_drains_only_when_the_running_poll_finishes(w: World) -> None:
    core = materials(w, poll="app")
    core.pause("d1")
    assert w.emitted(IntakePaused) == [IntakePaused(subsystem="materials", drain_id="d1")] and not w.drained()
    core.handle(PollFinished(key="app", revision="r1"))
    assert w.emitted(Drained) == [Drained(subsystem="materials", drain_id="d1")]
    assert "poll:app" not in w.timers.armed  # not re-armed while paused


def test_a_new_revision_is_recorded_and_told_to_the_scheduler_once(w: World) -> None:
    core = materials(w, poll="app")
    core.handle(PollFinished(key="app", revision="r1"))
    assert w.store.last_revision("app") == "r1" and core.items == {}
    assert w.peers.told == [("scheduler", MaterialChanged(material="app", revision="r1"))]
    assert w.timers.armed["poll:app"][:2] == (30.0, PollDue("app"))
    core.handle(PollDue("app"))
    core.handle(PollFinished(key="app", revision="r1"))  # the same revision again
    assert len(w.peers.told) == 1


@pytest.mark.parametrize(
    "result",
    [PollFinished(key="app", error="fatal: could not read from remote"), PollFinished(key="app", timed_out=True, error="killed")],
    ids=["failed", "timed-out"],
)
def test_a_failed_or_timed_out_poll_tells_nobody_and_rearms_at_the_interval(w: World, result: PollFinished) -> None:
    core = materials(w, poll="app")
    core.handle(result)
    assert w.peers.told == [] and w.store.last_revision("app") is None and core.items == {}
    assert w.timers.armed["poll:app"][0] == 30.0


def test_a_config_repo_revision_fetches_its_files_for_the_config_guard(w: World) -> None:
    core = materials(w, poll="config:pipes")
    w.clock.t += 40.0  # the poll took 40 s: the fetch has a poll_timeout of its own from now
    core.handle(PollFinished(key="config:pipes", revision="c1"))
    assert w.procs.of("fetch_files") == [(w.peers.ref("materials"), "config:pipes", PIPES.url, "c1", 60.0)]
    assert core.items["materials/config:pipes"].timeout_at == w.clock.now() + 60.0
    assert w.peers.told == []  # the scheduler hears nothing of a config repo
    core.handle(FilesFetched(key="config:pipes", revision="c1", files={"a.toml": "x"}))
    assert w.peers.told == [("config", ConfigRepoFiles(repo="pipes", revision="c1", files={"a.toml": "x"}))]


def test_a_drain_does_not_end_while_a_config_repo_fetch_it_started_is_running(w: World) -> None:
    # Else the configuration changes after the daemon said it was safe to restart.
    core = materials(w, poll="config:pipes")
    core.handle(PollFinished(key="config:pipes", revision="c1"))
    assert len(w.procs.of("fetch_files")) == 1
    core.pause("d1")
    assert not w.drained(), "Drained was sent while fetch_files was still running"
    core.handle(FilesFetched(key="config:pipes", revision="c1", files={}))
    assert w.drained()


def test_a_config_repo_poll_that_ends_during_a_drain_fetches_nothing(w: World) -> None:
    core = materials(w, poll="config:pipes")
    core.pause("d1")
    assert not w.drained()
    core.handle(PollFinished(key="config:pipes", revision="c1"))
    assert w.procs.of("fetch_files") == [] and w.drained()
    assert w.store.last_revision("config:pipes") is None  # taken up after the drain


# --- scheduler ----------------------------------------------------------------------------


def test_trigger_queues_stage_one_as_scheduled_jobs_and_want_work_dispatches_the_oldest(w: World) -> None:
    core = scheduler(w, trigger=False)
    result = core.handle(Trigger(pipeline="app", by="alice"))
    (run,) = w.store.recent_runs()
    assert result == {"pipeline": "app", "counter": 1, "run_id": run.id}
    assert (run.state, run.trigger, run.triggered_by) == ("running", "user", "alice")
    ids = w.job_ids(run.id)
    assert list(ids) == ["compile", "package"] and {j.state for j in run.jobs} == {"scheduled"}
    assert set(core.items) == {f"scheduler/job-{i}" for i in ids.values()}
    for item in core.items.values():
        assert (item.kind, item.blocks_restart, item.cancellable) == (SCHEDULED_JOB, False, True)
    core.handle(WantWork("agent-1"))
    (assign,) = w.peers.to("agents", Assign)
    assert (assign.agent, assign.spec.job_id, assign.spec.agent) == ("agent-1", ids["compile"], "agent-1")
    assert assign.spec.env["GO_PIPELINE_NAME"] == "app" and assign.spec.argv == ("make",)
    assert set(core.items) == {f"scheduler/job-{ids['package']}"} and queued(core) == ["package"]


def test_want_work_while_more_messages_wait_is_handed_out_once_idle_in_one_store_write(w: World) -> None:
    core = scheduler(w)
    ids = w.job_ids()
    writes: list[Any] = []
    hand_out_many = w.store.hand_out_many
    w.store.hand_out_many = lambda pairs: writes.append(pairs) or hand_out_many(pairs)  # type: ignore[method-assign]
    core.busy = lambda: True  # type: ignore[method-assign]
    core.handle(WantWork("agent-1"))
    core.handle(WantWork("agent-2"))
    assert w.peers.to("agents", Assign) == [] and queued(core) == ["compile", "package"]
    core.busy = lambda: False  # type: ignore[method-assign]
    core.on_idle()
    assert writes == [((ids["compile"], "agent-1"), (ids["package"], "agent-2"))]
    assert [(a.agent, a.spec.job_id) for a in w.peers.to("agents", Assign)] == [
        ("agent-1", ids["compile"]),
        ("agent-2", ids["package"]),
    ]
    assert w.job(ids["compile"]) == ("scheduled", "agent-1", None) and w.job(ids["package"]) == ("scheduled", "agent-2", None)
    assert core.items == {} and queued(core) == []
    core.on_idle()  # nothing left to hand out: no write
    assert len(writes) == 1


def test_a_paused_scheduler_is_drained_with_jobs_scheduled_and_triggers_nothing(w: World) -> None:
    core = scheduler(w)
    core.pause("d1")
    assert w.drained() and len(core.items) == 2  # scheduled jobs do not block
    with maintd_error("maintenance_mode"):
        core.handle(Trigger(pipeline="app", by="alice"))
    core.handle(MaterialChanged(material="app", revision="r1"))
    core.handle(TimerDue("app"))
    assert len(w.store.recent_runs()) == 1 and queued(core) == ["compile", "package"]
    core.resume("d1")
    core.handle(MaterialChanged(material="app", revision="r2"))
    assert [r.trigger for r in w.store.recent_runs()] == ["material", "user"]


def test_a_passed_stage_queues_the_next_one_even_while_paused(w: World) -> None:
    core = scheduler(w, agents=2)
    core.pause("d1")
    ids = w.job_ids()
    core.handle(JobFinished(job_id=ids["compile"], state=JobState.PASSED))
    assert queued(core) == []  # package is still running
    core.handle(JobFinished(job_id=ids["package"], state=JobState.PASSED))
    assert queued(core) == ["unit"]
    unit = w.store.job(w.job_ids()["unit"])
    assert unit is not None and (unit.stage, unit.stage_index, unit.state) == ("test", 1, "scheduled")


def test_a_failed_job_ends_the_run_failed_and_queues_nothing_more(w: World) -> None:
    core = scheduler(w, agents=2)
    ids = w.job_ids()
    core.handle(JobFinished(job_id=ids["compile"], state=JobState.FAILED))
    core.handle(JobFinished(job_id=ids["package"], state=JobState.PASSED))
    (run,) = w.store.recent_runs()
    assert (run.state, run.finished_at) == ("failed", w.clock.now())
    assert queued(core) == [] and "unit" not in w.job_ids()


def test_cancel_of_a_scheduled_job_records_who_cancelled_it(w: World) -> None:
    core = scheduler(w)
    package = w.job_ids()["package"]
    core.cancel(Cancel(item_id=f"scheduler/job-{package}", by="bob"))
    assert w.job(package) == ("cancelled", None, "bob")
    assert [m.item_id for m in w.emitted(Cancelled)] == [f"scheduler/job-{package}"]
    assert queued(core) == ["compile"] and f"scheduler/job-{package}" not in core.items


def test_cancel_run_cancels_scheduled_jobs_and_asks_agents_to_stop_building_ones(w: World) -> None:
    core = scheduler(w, agents=1)  # compile is building
    ids = w.job_ids()
    core.handle(CancelRun(pipeline="app", counter=1, by="bob"))
    assert w.job(ids["package"]) == ("cancelled", None, "bob")
    assert w.peers.to("agents", CancelJobs) == [CancelJobs(job_ids=(ids["compile"],), by="bob")]
    assert core.items == {} and w.store.recent_runs()[0].state == "running"
    core.handle(JobFinished(job_id=ids["compile"], state=JobState.CANCELLED))
    assert w.store.recent_runs()[0].state == "cancelled"


def test_cancel_run_answers_how_many_jobs_it_cancelled(w: World) -> None:
    core = scheduler(w)
    result = core.handle(CancelRun(pipeline="app", counter=1, by="bob"))
    assert w.store.recent_runs()[0].state == "cancelled"
    assert result["cancelled_jobs"] == 2  # both scheduled jobs


def test_a_job_is_handed_out_in_the_store_and_given_back_to_the_front_of_the_queue(w: World) -> None:
    core = scheduler(w, agents=1)
    (assign,) = w.peers.to("agents", Assign)
    assert w.job(assign.spec.job_id) == ("scheduled", "agent-1", None)  # on its way to agent-1
    core.handle(GiveBack(token=7, holding=()))
    assert w.peers.to("agents", TakenBack) == [TakenBack(7)]
    assert queued(core) == ["compile", "package"] and core.queue[0].agent == ""
    assert f"scheduler/job-{assign.spec.job_id}" in core.items
    assert w.job(assign.spec.job_id) == ("scheduled", None, None)
    core.handle(GiveBack(token=8, holding=()))  # nothing handed out: nothing comes back twice
    assert queued(core) == ["compile", "package"]
    core.handle(WantWork("agent-2"))
    assert w.peers.to("agents", Assign)[-1] == Assign(agent="agent-2", spec=msgspec.structs.replace(assign.spec, agent="agent-2"))


def test_a_give_back_keeps_the_jobs_the_agents_hold(w: World) -> None:
    core = scheduler(w, agents=2)
    compile_, package = (a.spec.job_id for a in w.peers.to("agents", Assign))
    core.handle(GiveBack(token=1, holding=(compile_,)))
    assert queued(core) == ["package"] and w.job(package) == ("scheduled", None, None)
    core.handle(GiveBack(token=2, holding=()))  # compile is held (building): not handed out any more
    assert queued(core) == ["package"]


def test_a_restarted_scheduler_does_not_queue_a_job_on_its_way_to_an_agent(w: World) -> None:
    scheduler(w, agents=1)  # compile handed to agent-1
    ids = w.job_ids()
    restarted = scheduler(w, trigger=False)
    restarted.start()
    assert queued(restarted) == ["package"]
    restarted.handle(GiveBack(token=1, holding=()))  # the agents did not get it: now it is queued
    assert queued(restarted) == ["compile", "package"] and restarted.queue[0].env["GO_JOB_NAME"] == "compile"
    assert w.job(ids["compile"]) == ("scheduled", None, None)


def test_a_cancelled_run_queues_no_next_stage_when_its_jobs_pass_before_the_cancel_reaches_them(w: World) -> None:
    core = scheduler(w, agents=2)
    ids = w.job_ids()
    core.handle(CancelRun(pipeline="app", counter=1, by="bob"))
    assert w.job(ids["compile"]) == ("scheduled", "agent-1", "bob")  # the cancel is recorded
    for job_id in ids.values():
        core.handle(JobFinished(job_id=job_id, state=JobState.PASSED))
    assert queued(core) == [] and "unit" not in w.job_ids()
    assert w.store.recent_runs()[0].state == "cancelled"


def test_a_new_scheduler_on_the_same_store_requeues_the_scheduled_jobs(w: World) -> None:
    scheduler(w, agents=1)
    ids = w.job_ids()
    w.store.set_job_state(ids["compile"], JobState.BUILDING, w.clock.now(), agent="agent-1")
    w.peers.told.clear()
    restarted = scheduler(w, trigger=False)
    restarted.start()
    assert queued(restarted) == ["package"] and set(restarted.items) == {f"scheduler/job-{ids['package']}"}
    restarted.handle(WantWork("agent-2"))
    assert [a.spec.job for a in w.peers.to("agents", Assign)] == ["package"]
    restarted.handle(JobFinished(job_id=ids["compile"], state=JobState.PASSED))
    restarted.handle(JobFinished(job_id=ids["package"], state=JobState.PASSED))
    assert queued(restarted) == ["unit"]  # the restored run goes on to its next stage


# --- agents -------------------------------------------------------------------------------


def test_assign_starts_the_job_and_shows_it_building_on_its_agent(w: World) -> None:
    core, spec = building(w)
    assert w.procs.calls == [("start_job", w.peers.ref("agents"), spec)]
    item = core.items[f"agents/job-{spec.job_id}"]
    assert (item.kind, item.agent, item.cancellable, item.blocks_restart) == (BUILDING_JOB, "agent-1", True, True)
    assert w.job(spec.job_id) == ("building", "agent-1", None)


def test_paused_agents_tell_the_scheduler_and_send_assignments_back(w: World) -> None:
    core, spec = agents(w), new_spec(w)
    core.pause("d1")
    core.handle(Assign(agent="agent-1", spec=spec))
    (give_back,) = w.peers.to("scheduler", GiveBack)
    assert w.peers.told == [("scheduler", AgentsPaused()), ("scheduler", give_back)] and give_back.holding == ()
    assert w.procs.calls == [] and core.items == {} and w.job(spec.job_id)[0] == "scheduled"
    core.handle(Assign(agent="agent-2", spec=new_spec(w, "package")))  # sent before the GiveBack was handled
    assert len(w.peers.told) == 2 and w.procs.calls == []  # dropped: the scheduler takes it back
    core.handle(TakenBack(give_back.token))
    core.resume("d1")
    core.handle(Assign(agent="agent-1", spec=spec))  # handed out again: taken
    assert w.procs.of("start_job") == [(w.peers.ref("agents"), spec)]


def test_paused_agents_drain_only_after_the_building_job_exits(w: World) -> None:
    core, spec = building(w)
    core.pause("d1")
    assert not w.drained()
    core.handle(JobExited(job_id=spec.job_id, returncode=0))
    assert w.drained() and core.items == {}
    assert w.peers.to("scheduler", WantWork) == []  # paused: no new work


@pytest.mark.parametrize(("returncode", "state"), [(0, JobState.PASSED), (1, JobState.FAILED)])
def test_a_job_exit_is_recorded_and_the_scheduler_told(w: World, returncode: int, state: JobState) -> None:
    core, spec = building(w)
    core.handle(JobExited(job_id=spec.job_id, returncode=returncode))
    row = w.store.job(spec.job_id)
    assert row is not None and (row.state, row.returncode) == (state.value, returncode)
    assert w.peers.to("scheduler", JobFinished) == [JobFinished(job_id=spec.job_id, state=state)]
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-1")] and core.items == {}


def test_cancel_stops_the_job_and_it_stays_in_flight_until_it_exits(w: World) -> None:
    core, spec = building(w)
    core.cancel(Cancel(item_id=f"agents/job-{spec.job_id}", by="carol"))
    core.handle(CancelJobs(job_ids=(spec.job_id, 999), by="bob"))  # the scheduler's cancel-run too
    assert w.procs.of("stop_job") == [(spec.job_id, 5.0)] * 2 and len(w.emitted(Cancelled)) == 1
    assert f"agents/job-{spec.job_id}" in core.items
    core.handle(JobExited(job_id=spec.job_id, returncode=-15))
    assert w.job(spec.job_id) == ("cancelled", "agent-1", "carol")
    assert w.peers.to("scheduler", JobFinished) == [JobFinished(job_id=spec.job_id, state=JobState.CANCELLED)]


def test_agents_ask_for_work_for_each_idle_agent_and_a_restarted_core_keeps_old_jobs_busy(w: World) -> None:
    agents(w).start()
    assert w.peers.told == [("scheduler", WantWork("agent-1")), ("scheduler", WantWork("agent-2"))]
    old, first = building(w)
    second = new_spec(w, "package")
    w.peers.told.clear()
    core = agents(w, items=tuple(old.items.values()))
    core.start()
    assert w.peers.told == [("scheduler", WantWork("agent-2"))]
    assert w.procs.of("report_jobs") == [(w.peers.ref("agents"), (first.job_id,))]  # its exit may have been lost
    core.handle(Assign(agent="agent-1", spec=second))
    assert [m.holding for m in w.peers.to("scheduler", GiveBack)] == [(first.job_id,)]
    core.handle(JobExited(job_id=first.job_id, returncode=0))
    assert w.job(first.job_id)[0] == "passed"
    assert w.peers.to("scheduler", JobFinished) == [JobFinished(job_id=first.job_id, state=JobState.PASSED)]


def test_restarted_agents_give_back_a_job_whose_assign_was_lost_and_drop_the_late_assign(w: World) -> None:
    spec = new_spec(w)
    w.store.hand_out_many(((spec.job_id, "agent-1"),))  # the scheduler handed it out; the Assign was lost (or is late)
    core = agents(w)
    core.start()
    (give_back,) = w.peers.to("scheduler", GiveBack)
    assert give_back.holding == () and w.peers.to("scheduler", WantWork) == []  # no work until it is taken back
    core.handle(Assign(agent="agent-1", spec=spec))  # late: the scheduler takes it back, so it is dropped
    assert w.procs.of("start_job") == [] and core.items == {}
    core.handle(AnnounceIdle())  # a restarted scheduler: the GiveBack may have been lost with its inbox
    first, again = w.peers.to("scheduler", GiveBack)
    assert again.token != first.token
    core.handle(TakenBack(first.token))  # an old answer: still waiting
    assert w.peers.to("scheduler", WantWork) == []
    core.handle(TakenBack(again.token))
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-1"), WantWork("agent-2")]


def test_restarted_agents_learn_building_jobs_and_cancels_from_the_store(w: World) -> None:
    old, spec = building(w)
    old.cancel(Cancel(item_id=f"agents/job-{spec.job_id}", by="carol"))
    assert w.job(spec.job_id) == ("building", "agent-1", "carol")  # the cancel is recorded at once
    w.procs.calls.clear()
    core = agents(w)  # restarted with nothing from the supervisor
    core.start()
    (item,) = core.items.values()
    assert (item.id, item.agent, item.description) == (f"agents/job-{spec.job_id}", "agent-1", "app/1/build/compile on agent-1")
    assert core.agents == {"agent-1": spec.job_id, "agent-2": None}
    assert w.procs.calls == [
        ("report_jobs", w.peers.ref("agents"), (spec.job_id,)),  # its exit may have been lost
        ("stop_job", spec.job_id, 5.0),  # so may the cancel
    ]
    assert w.peers.told[-1:] == [("scheduler", WantWork("agent-2"))]
    core.handle(JobExited(job_id=spec.job_id, returncode=-15))
    assert w.job(spec.job_id) == ("cancelled", "agent-1", "carol")
    core.handle(JobExited(job_id=spec.job_id, returncode=-15))  # told again (report_jobs): nothing more
    assert w.peers.to("scheduler", JobFinished) == [JobFinished(job_id=spec.job_id, state=JobState.CANCELLED)]


def test_a_daemon_restart_queues_handed_out_jobs_again_and_cancels_those_asked_to(w: World) -> None:
    scheduler(w, agents=2)  # both handed out
    ids = w.job_ids()
    w.store.request_cancel(ids["package"], "bob")
    w.store.recover(w.clock.now())
    assert w.job(ids["compile"]) == ("scheduled", None, None)
    assert w.job(ids["package"]) == ("cancelled", "agent-2", "bob")
    restarted = scheduler(w, trigger=False)
    restarted.start()
    assert queued(restarted) == ["compile"]


# --- config guard -----------------------------------------------------------------------


def test_configuration_changes_are_refused_in_maintenance(w: World) -> None:
    core = guard(w)
    core.pause("d1")
    with maintd_error("maintenance_mode"):
        core.handle(SetPipelinePaused(pipeline="app", paused=True, by="alice"))
    with maintd_error("maintenance_mode"):
        core.handle(ApplyConfig(pipelines=(PIPE, OTHER), materials=frozenset({"app"}), by="alice"))
    assert w.peers.told == [] and w.store.audit_entries() == [] and core.paused == set()


def test_pausing_a_pipeline_publishes_it_and_writes_an_audit_row(w: World) -> None:
    core = guard(w)
    with maintd_error("not_found"):
        core.handle(SetPipelinePaused(pipeline="nope", paused=True, by="alice"))
    assert core.handle(SetPipelinePaused(pipeline="app", paused=True, by="alice")) == {"pipeline": "app", "paused": True}
    assert w.peers.told == [("scheduler", PipelinesChanged(pipelines=(PIPE,), paused=frozenset({"app"})))]
    with maintd_error("conflict"):
        core.handle(SetPipelinePaused(pipeline="app", paused=True, by="alice"))
    assert [(e.action, e.by, e.target) for e in w.store.audit_entries()] == [("pipeline_pause", "alice", "app")]


def test_applying_a_config_publishes_it_and_writes_an_audit_row(w: World) -> None:
    core = guard(w)
    assert core.handle(ApplyConfig(pipelines=(PIPE, OTHER), materials=frozenset({"app"}), by="alice")) == {"pipelines": 2}
    assert w.peers.told == [("scheduler", PipelinesChanged(pipelines=(PIPE, OTHER)))]
    assert [(e.action, e.by) for e in w.store.audit_entries()] == [("config_reload", "alice")]


PIPELINE_FILE = '[[pipelines]]\nname = "{name}"\nmaterials = ["{material}"]\n[[pipelines.stages]]\nname = "build"\n'
PIPELINE_FILE += '[[pipelines.stages.jobs]]\nname = "make"\ncommand = ["make"]\n'


def test_config_repo_files_merge_the_valid_pipelines_only(w: World) -> None:
    core = guard(w)
    files = {
        "good.toml": PIPELINE_FILE.format(name="from-repo", material="app"),
        "broken.toml": "[[pipelines]\nname = ",
        "unknown-material.toml": PIPELINE_FILE.format(name="lost", material="nowhere"),
        "clash.toml": PIPELINE_FILE.format(name="app", material="app"),
    }
    core.handle(ConfigRepoFiles(repo="pipes", revision="c1", files=files))
    (published,) = w.peers.to("scheduler", PipelinesChanged)
    assert [p.name for p in published.pipelines] == ["app", "from-repo"]
    assert published.pipelines[0] == PIPE  # the config file's "app" wins over the repo's
    assert {p.name: p.source for p in core.handle(GetInfo())} == {"app": "config file", "from-repo": "config repo pipes"}


def test_a_restarted_scheduler_restores_the_runs_of_pipelines_it_learns_later(w: World) -> None:
    """A config repo's pipelines reach a (re)started scheduler after its start: the runs in
    progress of those pipelines come back then, scheduled jobs queued again and a stage whose
    jobs all ended going on. Before, they were left `running` in the store for ever."""
    scheduler(w, agents=1)  # app/1: compile handed to agent-1, package scheduled
    ids = w.job_ids()
    w.store.set_job_state(ids["compile"], JobState.PASSED, w.clock.now(), returncode=0)  # ended while it was down
    restarted = SchedulerCore(
        "scheduler", w.sent.append, pipelines=[], store=w.store, peers=w.peers,
        timers=w.timers, clock=w.clock, work_root="/srv/maintd",
    )  # fmt: skip
    restarted.start()
    assert queued(restarted) == [] and restarted.runs == {}
    restarted.handle(PipelinesChanged(pipelines=(PIPE,)))
    assert queued(restarted) == ["package"]
    restarted.handle(PipelinesChanged(pipelines=(PIPE, OTHER)))  # a run restored already is not again
    assert queued(restarted) == ["package"]
    restarted.handle(WantWork("agent-2"))
    assert queued(restarted) == []
    restarted.handle(JobFinished(job_id=ids["package"], state=JobState.PASSED))
    assert queued(restarted) == ["unit"]  # the run went on to its next stage


def test_a_restarted_scheduler_asks_the_config_guard_for_the_pipelines_and_gets_the_config_repos(w: World) -> None:
    """A scheduler actor restarted alone knows only the config file's pipelines: it asks, and
    the guard publishes every pipeline, a config repo's included, with the pauses."""
    g = guard(w)
    g.start()
    g.handle(ConfigRepoFiles(repo="pipes", revision="c1", files={"p.toml": PIPELINE_FILE.format(name="docs", material="app")}))
    core = scheduler(w, trigger=False)
    core.start()
    wanted = w.peers.to("config", PipelinesWanted)
    assert wanted
    w.peers.told.clear()
    g.handle(wanted[0])
    published = w.peers.to("scheduler", PipelinesChanged)
    assert published and {p.name for p in published[-1].pipelines} == {"app", "docs"}
    core.handle(published[-1])
    core.handle(Trigger(pipeline="docs", by="alice"))
    assert queued(core) == ["make"]


class AuditFails(Store):
    def audit(self, *args: Any, **kwargs: Any) -> int:
        raise StoreError("the audit log cannot be written (disk full)")


def test_a_trigger_that_cannot_be_audited_starts_no_run(w: World) -> None:
    w.store = AuditFails(":memory:")
    core = scheduler(w, trigger=False)
    with maintd_error("store_unavailable"):
        core.handle(Trigger(pipeline="app", by="alice"))
    assert w.store.recent_runs() == [] and queued(core) == [] and core.items == {}


def test_a_trigger_is_audited_with_its_run_and_peer(w: World) -> None:
    scheduler(w, trigger=False).handle(Trigger(pipeline="app", by="alice", peer="pid 7"))
    (entry,) = w.store.audit_entries()
    assert (entry.action, entry.by, entry.target, entry.detail) == ("trigger", "alice", "app/1", "pid 7")


def test_a_cancel_run_that_cannot_be_audited_cancels_nothing(w: World) -> None:
    core = scheduler(w, agents=1)
    ids = w.job_ids()
    w.store.audit = AuditFails.audit.__get__(w.store)  # type: ignore[method-assign]
    with maintd_error("store_unavailable"):
        core.handle(CancelRun(pipeline="app", counter=1, by="bob"))
    assert w.job(ids["package"]) == ("scheduled", None, None) and w.peers.to("agents", CancelJobs) == []
    assert w.store.recent_runs()[0].state == "running"
