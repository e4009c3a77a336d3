"""The remote agents' core (Celery workers' slots) on a real in-memory store, with fake ports."""

from __future__ import annotations

from typing import Any

import pytest

from actors.handout import Assign, Reschedule, WantWork
from actors.jobs import JobExited, JobStarted, JobState
from actors.messages import Cancel, Notice
from actors.remote_agents import BACKEND_UNAVAILABLE, RemoteAgentsCore, RemoteWorker, WorkersSeen
from tests.actors.test_jobserver_cores import World, new_spec, scheduler

LOST = 30.0


class FakeRemote:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def set_consuming(self, agent: str, enabled: bool) -> None:
        self.calls.append(("set_consuming", agent, enabled))

    def forget_job(self, job_id: int) -> None:
        self.calls.append(("forget_job", job_id))


@pytest.fixture
def w() -> World:
    return World()


def core(w: World, remote: FakeRemote | None = None) -> RemoteAgentsCore:
    c = RemoteAgentsCore(
        "agents", w.sent.append, store=w.store, peers=w.peers, processes=w.procs, remote=remote or FakeRemote(),
        clock=w.clock, grace=5.0, lost_timeout=LOST, broker="redis://broker:6379/0",
    )  # fmt: skip
    c.start()
    return c


def worker(name: str, slots: int, heartbeat: float, online: bool = True) -> RemoteWorker:
    return RemoteWorker(
        name=name, host=f"host-{name}", node=f"{name}@host-{name}", slots=slots, heartbeat=heartbeat, online=online
    )


def seen(c: RemoteAgentsCore, *workers: RemoteWorker, error: str | None = None) -> None:
    c.handle(WorkersSeen(workers=workers, broker_error=error))


def wants(w: World) -> list[str]:
    return [m.agent for m in w.peers.to("scheduler", WantWork)]


def test_no_slot_is_offered_before_its_worker_is_heard_from_then_each_of_its_slots_is(w: World) -> None:
    c = core(w)
    assert wants(w) == [] and c.info() == []
    seen(c, worker("w1", 2, w.clock.now()))
    assert wants(w) == ["w1#1", "w1#2"]
    (row,) = c.info()
    assert (row.name, row.state, row.host, row.slots, row.busy) == ("w1", "idle", "host-w1", 2, 0)


def test_a_job_on_a_slot_builds_and_ends_with_its_real_result(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    assert [s.job_id for _, s in w.procs.of("start_job")] == [spec.job_id]
    assert w.job(spec.job_id)[:2] == ("building", "w1#1")
    c.handle(JobStarted(job_id=spec.job_id, pid=4242))
    assert c.info()[0].state == "building" and c.info()[0].busy == 1
    c.handle(JobExited(job_id=spec.job_id, returncode=0))
    assert w.job(spec.job_id)[0] == "passed" and c.items == {}


def test_a_worker_silent_for_lost_timeout_is_lost_and_its_job_rescheduled_with_an_audit_entry(w: World) -> None:
    remote = FakeRemote()
    c = core(w, remote)
    seen(c, worker("w1", 1, w.clock.now()), worker("w2", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    last = w.clock.now()
    w.clock.t += LOST - 1
    seen(c, worker("w1", 1, last), worker("w2", 1, w.clock.now()))
    assert w.job(spec.job_id)[0] == "building" and c.blocking  # until lost_timeout it blocks
    w.clock.t += 2
    seen(c, worker("w1", 1, last), worker("w2", 1, w.clock.now()))
    row = w.store.job(spec.job_id)
    assert (row.state, row.agent, row.started_at) == ("scheduled", None, None)
    assert w.peers.to("scheduler", Reschedule) == [Reschedule(job_id=spec.job_id)]
    assert ("forget_job", spec.job_id) in remote.calls
    assert c.items == {} and not c.blocking
    (entry,) = [e for e in w.store.audit_entries() if e.action == "job_rescheduled"]
    assert "w1 lost" in entry.detail and entry.by == "maintd"
    events = {n.event for n in w.emitted(Notice)}
    assert {"agent_lost", "job_rescheduled"} <= events
    states = {r.name: r.state for r in c.info()}
    assert states == {"w1": "lost", "w2": "idle"}
    # the lost worker's slot is offered no more; the other worker's is
    w.peers.told.clear()
    c.handle(Assign(agent="w1#1", spec=new_spec(w, "package")))
    assert w.procs.of("start_job")[-1][1].job_id == spec.job_id  # nothing new started on w1


def test_the_job_of_a_lost_worker_whose_cancel_was_asked_ends_cancelled_not_run_again(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    c.cancel(Cancel(item_id=f"agents/job-{spec.job_id}", by="alice"))
    last = w.clock.now()
    w.clock.t += LOST + 1
    seen(c, worker("w1", 1, last))
    assert w.job(spec.job_id) == ("cancelled", "w1#1", "alice")
    assert w.peers.to("scheduler", Reschedule) == []


def test_while_the_broker_is_down_held_jobs_block_and_no_worker_is_lost(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    last = w.clock.now()
    seen(c, worker("w1", 1, last), error="ConnectionError: refused")
    (item,) = [i for i in c.items.values() if i.kind == BACKEND_UNAVAILABLE]
    assert item.blocks_restart and not item.cancellable and "state of 1 remote job(s) is unknown" in item.description
    w.clock.t += LOST * 3  # far past lost_timeout: no heartbeat could arrive
    seen(c, worker("w1", 1, last), error="ConnectionError: refused")
    assert w.job(spec.job_id)[0] == "building" and c.info()[0].state == "unknown"
    assert not c.takes_work("w1#1")  # no slot offered while it is down
    # back: the item goes, and the worker's clock starts again from now (not lost at once)
    seen(c, worker("w1", 1, last))
    assert [i for i in c.items.values() if i.kind == BACKEND_UNAVAILABLE] == []
    assert w.job(spec.job_id)[0] == "building" and c.info()[0].state == "building"
    w.clock.t += LOST + 1
    seen(c, worker("w1", 1, last))
    assert w.job(spec.job_id)[0] == "scheduled"  # silent for lost_timeout after the broker came back


def test_the_broker_down_with_nothing_held_does_not_block(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()), error="ConnectionError: refused")
    assert c.items == {} and c.info()[0].state == "unknown"


def test_a_task_that_never_reached_a_worker_is_queued_again_not_failed(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    c.handle(JobExited(job_id=spec.job_id, returncode=None, error="not published: refused", unstarted=True))
    assert w.job(spec.job_id)[0] == "scheduled"
    assert w.peers.to("scheduler", Reschedule) == [Reschedule(job_id=spec.job_id)]


def test_after_a_restart_the_store_s_remote_building_jobs_are_held_again_and_asked_after(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    w.procs.calls.clear()
    again = core(w)  # a new daemon: the store still has the job building on w1#1
    assert f"agents/job-{spec.job_id}" in again.items and again.blocking
    assert w.procs.of("report_jobs") == [(w.peers.ref("agents"), (spec.job_id,))]
    again.handle(JobExited(job_id=spec.job_id, returncode=3))
    assert w.job(spec.job_id)[0] == "failed"


def test_a_worker_that_says_it_is_offline_takes_no_work_and_is_lost_only_after_lost_timeout(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    spec = new_spec(w)
    c.handle(Assign(agent="w1#1", spec=spec))
    seen(c, worker("w1", 1, w.clock.now(), online=False))  # Celery says so when it reconnects, too
    assert w.job(spec.job_id)[0] == "building" and not c.takes_work("w1#1")
    last = w.clock.now()
    w.clock.t += LOST + 1
    seen(c, worker("w1", 1, last, online=False))
    assert c.info()[0].state == "lost" and w.job(spec.job_id)[0] == "scheduled"


def test_a_lost_worker_is_back_only_once_heard_from_after_it_was_lost(w: World) -> None:
    c = core(w)
    seen(c, worker("w1", 1, w.clock.now()))
    last = w.clock.now()
    w.clock.t += LOST + 1
    seen(c, worker("w1", 1, last))
    assert c.info()[0].state == "lost"
    seen(c, worker("w1", 1, last), error="ConnectionError: refused")
    w.peers.told.clear()
    seen(c, worker("w1", 1, last))  # the broker back: its old heartbeat does not bring it back
    assert c.info()[0].state == "lost" and wants(w) == []
    w.clock.t += 1
    w.peers.told.clear()
    seen(c, worker("w1", 1, w.clock.now()))
    assert c.info()[0].state == "idle" and wants(w) == ["w1#1"]


def test_the_scheduler_queues_a_rescheduled_job_first_and_hands_it_to_a_waiting_agent(w: World) -> None:
    sched = scheduler(w, agents=1)
    (first,) = w.peers.to("agents", Assign)
    w.store.set_job_state(first.spec.job_id, JobState.BUILDING, w.clock.now(), agent="agent-1")
    assert w.store.reschedule(first.spec.job_id, w.clock.now(), "rescheduled: agent-1 lost")
    sched.handle(WantWork("agent-2"))
    w.peers.told.clear()
    sched.handle(Reschedule(job_id=first.spec.job_id))
    assigns = w.peers.to("agents", Assign)
    assert [a.spec.job_id for a in assigns] == [first.spec.job_id] or sched.queue[0].job_id == first.spec.job_id


def test_recover_keeps_building_jobs_for_remote_agents(w: World) -> None:
    spec, local = new_spec(w), new_spec(w, "package")
    w.store.set_job_state(spec.job_id, JobState.BUILDING, w.clock.now(), agent="w1#1")
    w.store.set_job_state(local.job_id, JobState.BUILDING, w.clock.now(), agent="agent-1")  # before a switch of backend
    assert w.store.recover(w.clock.now(), keep_building=True) == ([local.job_id], [])
    assert w.job(spec.job_id)[0] == "building" and w.job(local.job_id)[0] == "interrupted"
    assert w.store.recover(w.clock.now()) == ([spec.job_id], [])
    assert w.job(spec.job_id)[0] == "interrupted"


def test_a_lost_worker_can_still_be_disabled_by_name_and_its_row_says_so(w: World) -> None:
    from actors.agents import SetAgentEnabled

    c = core(w)
    seen(c, worker("w1", 2, w.clock.now()))
    last = w.clock.now()
    w.clock.t += LOST + 1
    seen(c, worker("w1", 2, last))
    assert c.handle(SetAgentEnabled(name="w1", enabled=False, by="alice"))["changed"] is True
    (row,) = c.info()
    assert (row.name, row.state, row.disabled, row.slots) == ("w1", "lost", True, 2)
