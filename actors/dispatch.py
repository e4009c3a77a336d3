"""The scheduler's side of the hand-out: queued jobs go to the agents that asked for work,
and come back to the front of the queue when the agents give them back.

:class:`HandOut` is a part of :class:`~actors.scheduler.SchedulerCore` (its first base),
moved here as it is: it works on the core's queue, waiting agents and handed-out jobs.
The messages between the scheduler and the agents are in :mod:`actors.handout`.
"""

from __future__ import annotations

import collections
import functools
from typing import TYPE_CHECKING, Any

import msgspec

from .handout import Assign, GiveBack, TakenBack, job_item_id
from .jobs import JobSpec, JobState
from .pending import PendingWrites
from .ports import JobStore, PeerTable
from .runs import Run, job_spec
from .types import InFlightItem, qualify


class HandOut:
    """Handing queued jobs to waiting agents, and taking back those the agents did not take."""

    # the core's, set in SchedulerCore.__init__
    name: str
    items: dict[str, InFlightItem]
    store: JobStore
    peers: PeerTable
    pending: PendingWrites
    work_root: str
    queue: collections.deque[JobSpec]
    waiting: collections.deque[str]
    handed: dict[int, JobSpec | None]
    runs: dict[int, Run]
    run_of_job: dict[int, int]
    cancelled_runs: dict[int, str]

    if TYPE_CHECKING:

        def report(self) -> None: ...

        def record_job_state(self, job_id: int, state: JobState, **fields: Any) -> None: ...

        def finished(self, job_id: int, state: JobState) -> None: ...

        def item_of(self, spec: JobSpec) -> InFlightItem: ...

    def dispatch(self) -> None:
        moved = False
        while self.queue and self.waiting:
            specs = []
            while self.queue and self.waiting:
                spec = msgspec.structs.replace(self.queue.popleft(), agent=self.waiting.popleft())
                self.items.pop(qualify(self.name, job_item_id(spec.job_id)), None)
                specs.append(spec)
            moved = True
            # Recorded before the Assigns go (one write, not waited for): the store carries out
            # its messages in order, so a restarted scheduler reading what to queue again, and
            # restarted agents reading what was on its way to them, both find it. Only this
            # scheduler changes a scheduled job, so the write cannot find one that is not.
            hand_outs = tuple((spec.job_id, spec.agent) for spec in specs)
            self.pending.later(
                f"{len(hand_outs)} job(s) handed out",
                functools.partial(self.store.hand_out_many, hand_outs),
                functools.partial(self.store.later, lambda s, h=hand_outs: s.hand_out_many(h), "hand_out_many"),
            )
            for spec in specs:
                self.handed[spec.job_id] = spec
                self.peers.tell("agents", Assign(agent=spec.agent, spec=spec))
        if moved:
            self.report()

    def on_idle(self) -> None:
        if self.queue and self.waiting:
            self.dispatch()

    def give_back(self, msg: GiveBack) -> None:
        """The agents hold only ``msg.holding``: every other job handed out comes back."""
        # the agents ask again for their idle agents once they hear TakenBack; nothing is
        # handed out before it goes
        self.waiting.clear()
        holding = set(msg.holding)
        back = [job_id for job_id in self.handed if job_id not in holding]
        for job_id in holding:
            self.handed.pop(job_id, None)
        for job_id in reversed(back):  # to the front of the queue, in the order they were handed out
            self.take_back(job_id)
        self.peers.tell("agents", TakenBack(msg.token))
        self.report()

    def reschedule(self, job_id: int) -> None:
        """A building job whose agent was lost (the store has it scheduled again): to the front of the queue."""
        self.handed.setdefault(job_id, None)
        self.take_back(job_id)
        self.dispatch()
        self.report()

    def take_back(self, job_id: int) -> None:
        spec = self.handed.pop(job_id)
        run = self.runs.get(self.run_of_job.get(job_id, -1))
        if run is None or job_id not in run.pending:
            return
        if run.run_id in self.cancelled_runs:
            by = self.cancelled_runs[run.run_id]
            self.record_job_state(job_id, JobState.CANCELLED, cancelled_by=by)
            self.finished(job_id, JobState.CANCELLED)
            return
        if spec is None:
            spec = self.rebuild_spec(run, job_id)
            if spec is None:
                return
        self.pending.write(f"job {job_id} back in the queue", functools.partial(self.store.take_back, job_id))
        spec = msgspec.structs.replace(spec, agent="")
        self.queue.appendleft(spec)
        self.items[qualify(self.name, job_item_id(job_id))] = self.item_of(spec)

    def rebuild_spec(self, run: Run, job_id: int) -> JobSpec | None:
        """The spec of a job restored as handed out; None (and the job cancelled) if its definition is gone."""
        row = self.store.job(job_id)
        if row is None:
            return None
        job_def = next((j for j in run.pipeline.stages[row.stage_index].jobs if j.name == row.name), None)
        if job_def is None:
            self.record_job_state(job_id, JobState.CANCELLED, cancelled_by="maintd", detail="job no longer in the configuration")
            self.finished(job_id, JobState.CANCELLED)
            return None
        return job_spec(run, row.stage_index, job_def, job_id, row.log_path, self.work_root, row.scheduled_at)
