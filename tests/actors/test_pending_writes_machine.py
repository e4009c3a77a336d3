"""Any interleaving of a disk that fills and empties with the scheduler's and agents' work:
a hypothesis state machine over the plain cores of ``test_pending_writes.py``."""

from __future__ import annotations

import contextlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.errors import MaintdError
from actors.jobs import JobExited
from actors.runs import Trigger
from tests.actors.test_pending_writes import Cores


class DiskFullMachine(RuleBasedStateMachine):
    """The plain cores on a store whose disk fills and empties at any step, while runs are
    triggered, jobs exit with any code, drains start and end and retry timers fire. Always:
    a core with writes waiting shows each as a blocking item and is never drained; no job
    starts twice; what the store holds for a job is its real result. At the end, with room again: every result is
    recorded as the job ended, every run has ended, nothing waits."""

    def __init__(self) -> None:
        super().__init__()
        self.c = Cores()
        self.c.agents.start()
        self.expected: dict[int, tuple[str, int]] = {}
        self.exited: set[int] = set()
        self.drains = 0

    def running(self) -> list[int]:
        return [spec.job_id for _, spec in self.c.procs.of("start_job") if spec.job_id not in self.exited]

    @precondition(lambda self: len(self.c.store.recent_runs()) < 4)
    @rule()
    def trigger(self) -> None:
        with contextlib.suppress(MaintdError):  # refused on a full disk (or in maintenance): the asker is told
            self.c.scheduler.handle(Trigger(pipeline="app", by="alice"))

    @rule()
    def deliver(self) -> None:
        self.c.deliver()

    @precondition(lambda self: self.running())
    @rule(data=st.data(), code=st.sampled_from([0, 0, 1, 2]))
    def job_exits(self, data: st.DataObject, code: int) -> None:
        job_id = data.draw(st.sampled_from(self.running()))
        self.exited.add(job_id)
        self.expected[job_id] = ("passed" if code == 0 else "failed", code)
        self.c.agents.handle(JobExited(job_id=job_id, returncode=code))

    @rule(full=st.booleans())
    def disk(self, full: bool) -> None:
        self.c.disk.full = full

    @rule(name=st.sampled_from(["scheduler", "agents"]))
    def retry_timer_fires(self, name: str) -> None:
        core = self.c.scheduler if name == "scheduler" else self.c.agents
        if f"store-retry:{name}" in self.c.timers.armed:
            self.c.fire(core)

    @rule()
    def drain_or_resume(self) -> None:
        for core in (self.c.scheduler, self.c.agents):
            if core.intake_open:
                core.pause(f"d{self.drains + 1}")
            else:
                core.resume(core.paused_for or "")
        self.drains += 1

    @invariant()
    def waiting_writes_block(self) -> None:
        for core in (self.c.scheduler, self.c.agents):
            assert len(self.c.pending_items(core)) == len(core.pending)
            assert all(i.blocks_restart for i in self.c.pending_items(core))
            if len(core.pending):
                assert not core.drain_complete(), f"{core.name} drained with {len(core.pending)} write(s) waiting"

    @invariant()
    def nothing_runs_twice(self) -> None:
        started = [spec.job_id for _, spec in self.c.procs.of("start_job")]
        assert len(started) == len(set(started)), started

    @invariant()
    def the_store_holds_real_results(self) -> None:
        for job_id, (state, code) in self.expected.items():
            row = self.c.store.job(job_id)
            assert row is not None
            if row.state in ("passed", "failed"):
                assert (row.state, row.returncode) == (state, code)

    def teardown(self) -> None:
        c = self.c
        c.disk.full = False
        for _ in range(50):
            for core in (c.scheduler, c.agents):
                if not core.intake_open:
                    core.resume(core.paused_for or "")
                if f"store-retry:{core.name}" in c.timers.armed:
                    c.fire(core)
            c.deliver()
            for job_id in self.running():
                self.exited.add(job_id)
                self.expected[job_id] = ("passed", 0)
                c.agents.handle(JobExited(job_id=job_id, returncode=0))
            c.deliver()
            if not self.running() and not len(c.scheduler.pending) and not len(c.agents.pending):
                break
        assert not len(c.scheduler.pending) and not len(c.agents.pending)
        for job_id, (state, code) in self.expected.items():
            row = c.store.job(job_id)
            assert row is not None and (row.state, row.returncode) == (state, code), (job_id, row)
        assert all(r.state != "running" for r in c.store.recent_runs()), c.store.recent_runs()
        assert all(j.state in ("passed", "failed") for r in c.store.recent_runs() for j in r.jobs)


test_disk_full_machine = DiskFullMachine.TestCase
test_disk_full_machine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
