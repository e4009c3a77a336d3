"""The defects the job server's machines found, each as its shrunk example."""

from __future__ import annotations

import pytest

from actors.jobs import TERMINAL
from actors.materials import MaterialChanged
from actors.messages import (
    Cancel,
    Cancelled,
    Drained,
)
from actors.runs import CancelRun, Trigger
from tests.actors.drain_properties.jobserver_machine import JobServerMachine


def run_to_the_end(m: JobServerMachine) -> dict[int, str]:
    """Maintenance off, messages flow, every running job exits 0; the state of every job."""
    if m.drain_id is not None:
        m.disable_all()
    for _ in range(100):
        m.pump()
        if not m.procs.running:
            break
        for job_id in sorted(m.procs.running):
            m.exit(job_id, 0)
    return {j.id: j.state for r in m.store.recent_runs(limit=100) for j in r.jobs}


def agents_inbox(m: JobServerMachine) -> list[str]:
    return [type(msg).__name__ for _seq, msg in m.bus.inbox["agents"]]


@pytest.mark.parametrize("given_back_because", ["the agent is busy", "the agents are paused"])
def test_regression_a_cancelled_run_runs_on_when_its_job_was_on_its_way_to_an_agent(given_back_because: str) -> None:
    """JobServerCancelRunRaceMachine, shrunk (the busy case)::

        state = JobServerCancelRunRaceMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.trigger(by='alice', pipeline='app')
        state.cancel_run(by='alice', data=data(...))   # Draw 1 (run): ('app', 2, 2)
        state.all_work_finishes()
        AssertionError: job 3 was cancelled (accepted) but ended passed

    CancelRun takes a job that is no longer queued for a building one and only tells the
    agents CancelJobs. When the Assign is still on its way, the agents give the job back
    (then Requeue, now GiveBack: that agent is busy, or the agents are paused), CancelJobs finds nothing, and
    the requeued job runs later: the run the user cancelled (and was told "cancelled_jobs:
    2") runs to the end. At start-up each agent asks for work twice (AgentsCore.start and
    the answer to the scheduler's AnnounceIdle), which is how a busy agent gets an Assign.
    """
    m = JobServerMachine()
    if given_back_because == "the agent is busy":
        m.ask("scheduler", Trigger(pipeline="app", by="alice"))  # run 1 goes to agent-1 and agent-2
        m.pump()  # both build; then both asked for work again (AnnounceIdle)
        m.ask("scheduler", Trigger(pipeline="app", by="alice"))  # run 2: to the same, busy agents
        run = 2
    else:
        m.bus.tell("scheduler", MaterialChanged(material="app", revision="r1"))
        m.enable()
        while m.bus.inbox["scheduler"]:  # agents ask for work, run 1 goes to them, then the pause
            m.deliver("scheduler")
        run = 1
    assert agents_inbox(m)[-2:] == ["Assign", "Assign"]  # run's jobs on their way
    ask = m.ask("scheduler", CancelRun(pipeline="app", counter=run, by="alice"))
    assert ask.error is None and ask.result["cancelled_jobs"] == 2
    states = run_to_the_end(m)
    cancelled = {j.id: states[j.id] for j in m.store.jobs_of_run(run)}
    assert set(cancelled.values()) == {"cancelled"}, f"the jobs of the cancelled run ended {cancelled}"
    assert next(r.state for r in m.store.recent_runs() if r.id == run) == "cancelled"


def test_regression_agents_failing_with_an_assign_queued_lose_the_job() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.core_restarts(name='agents')
        AssertionError: jobs that never ended: [(1, 'app', 'build', 'compile', 'scheduled'),
                                                (2, 'app', 'build', 'package', 'scheduled')]

    The scheduler drops a job from its queue (and from its in-flight items) when it sends
    the Assign. If the agents' actor fails with that Assign in its inbox, pykka drops it:
    the job stays ``scheduled`` in the store, in nobody's queue and in no status, and never
    runs until the daemon restarts.

    Fixed: the scheduler records the hand-out in the store before the Assign goes; the
    restarted agents find a job handed to them that they do not hold and give it back
    (GiveBack), dropping any late Assign until the scheduler answers TakenBack.
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    assert agents_inbox(m) == ["AnnounceIdle", "Assign", "Assign"]
    m.fail_core("agents")
    states = run_to_the_end(m)
    assert all(state in TERMINAL for state in states.values()), f"jobs that never ended: {states}"


def test_regression_agents_failing_with_a_job_exit_queued_never_drain() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.enable()
        state.job_exits(data=data(...))          # job 1, returncode 0
        state.core_restarts(name='agents')
        state.drain_to_the_end(data=data(...))   # job 2 exits
        AssertionError: agents still hold agents/job-1 (building) after every job exited

    The process runner tells the agents JobExited; if their actor fails with it queued,
    pykka drops it. The fresh actor restores job 1 as building, but its process is gone and
    will never exit again: job 1 stays ``building``, agent-1 stays busy, and the drain
    never completes (safe_to_restart never comes).

    Fixed: the restarted agents learn their building jobs from the store and ask the process
    port to tell again how each stands (``report_jobs``: its exit again for an ended one).
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    m.pump()
    m.enable()
    m.pump()
    m.exit(1, 0)
    assert agents_inbox(m) == ["JobExited"]
    m.fail_core("agents")
    m.exit(2, 0)
    m.pump()
    agents = m.cores["agents"]
    assert agents.items == {}, f"agents still hold {sorted(agents.items)} (building) after every job exited"
    assert Drained(subsystem="agents", drain_id=m.drain_id or "") in m.emitted


def test_regression_a_scheduler_restarted_while_an_assign_is_on_its_way_runs_the_job_twice() -> None:
    """JobServerCoreFailureMachine, shrunk::

        state = JobServerCoreFailureMachine()
        state.trigger(by='alice', pipeline='app')
        state.core_restarts(name='scheduler')
        AssertionError: ['job 1 was started twice', 'job 2 was started twice']

    The store says ``scheduled`` until the agents handle the Assign, so a scheduler that
    fails (its own inbox may even be empty) and is restarted while the Assigns are on their
    way restores those jobs and queues them again: each runs twice (also seen: the same job
    queued twice, and a cancel of the requeued item marking a running job ``cancelled``).

    Fixed: the hand-out is in the store (scheduled, with its agent) before the Assign goes;
    a restarted scheduler keeps such a job handed out, not queued, until the agents finish
    it or give it back.
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    assert agents_inbox(m) == ["AnnounceIdle", "Assign", "Assign"] and not m.bus.inbox["scheduler"]
    m.fail_core("scheduler")
    run_to_the_end(m)
    assert m.violations == []


def test_regression_agents_restarted_after_a_cancel_record_the_job_failed_not_cancelled() -> None:
    """JobServerCoreFailureMachine (core_restarts_when_idle), shrunk::

        state = JobServerMachine()
        state.trigger(by='alice', pipeline='app')
        state.deliver_all()
        state.cancel_item(by='alice', data=data(...))   # Draw 1 (item): 'agents/job-1'
        state.deliver_all()
        state.core_restarts_when_idle(name='agents')
        state.all_work_finishes()
        AssertionError: job 1 was cancelled (accepted) but ended failed

    Nothing is lost in transit here: the agents accepted alice's cancel and sent SIGTERM,
    but who cancelled lives only in AgentsCore.cancel_by, which a restarted core does not
    get back. The job exits -15 and is recorded ``failed`` with cancelled_by None, though
    the supervisor's history and the audit log say alice cancelled it.

    Fixed: a cancel asked for is recorded in the store (``request_cancel``); the restarted
    agents read it back (and stop the job again, in case the first stop was lost).
    """
    m = JobServerMachine()
    m.ask("scheduler", Trigger(pipeline="app", by="alice"))
    m.pump()
    token = object()
    m.bus.tell("agents", Cancel(item_id="agents/job-1", by="alice", reply=token))
    m.pump()
    assert any(isinstance(x, Cancelled) and x.reply is token for x in m.emitted)
    m.fail_core("agents")  # with nothing queued for it
    run_to_the_end(m)
    assert m.store.job(1).state == "cancelled" and m.store.job(1).cancelled_by == "alice"  # type: ignore[union-attr]
