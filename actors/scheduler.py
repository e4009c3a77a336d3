"""The scheduling subsystem: triggers pipelines and queues their jobs (scheduled jobs).

A pipeline is triggered by a new revision of one of its materials, by its cron timer, or
by a user. Stages run in order; the jobs of a stage wait in the queue until an agent asks
for work. Paused, nothing is triggered (timers and material changes are logged as
skipped, a user's trigger is refused with ``maintenance_mode``), but a stage that
completes still queues its next stage: scheduled jobs are durable and do not hold back a
restart, so they are shown and cancellable, and only agents decide when they start.

The messages that ask for runs and the run being followed are in :mod:`actors.runs`; the
hand-out of queued jobs to the agents (a part of :class:`SchedulerCore`) in :mod:`actors.dispatch`.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from .definitions import PipelineDef, next_fire
from .dispatch import HandOut
from .errors import Conflict, MaintdError, NotFound
from .handout import (
    AgentsPaused,
    AnnounceIdle,
    CancelJobs,
    GiveBack,
    JobFinished,
    Reschedule,
    WantWork,
    job_item,
    job_item_id,
)
from .jobs import TERMINAL, JobSpec, JobState
from .materials import MaterialChanged
from .messages import Cancel, GetQueueLength
from .pending import PENDING_WRITE, PendingWrites, RetryWrites
from .ports import Clock, JobStore, PeerTable, Timers
from .runs import CancelRun, PipelinesChanged, PipelinesWanted, Run, TimerDue, Trigger, job_spec
from .store import StoreError
from .subsystem import Emit, SubsystemCore
from .types import SCHEDULED_JOB, InFlightItem, qualify

log = logging.getLogger("maintd.scheduler")


class SchedulerCore(HandOut, SubsystemCore):
    def __init__(
        self,
        name: str,
        emit: Emit,
        items: Iterable[InFlightItem] = (),
        *,
        pipelines: list[PipelineDef],
        store: JobStore,
        peers: PeerTable,
        timers: Timers,
        clock: Clock,
        work_root: str,
        on_job: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name, emit, ())
        self.pipelines = {p.name: p for p in pipelines}
        self.paused_pipelines: frozenset[str] = frozenset()
        self.store = store
        self.peers = peers
        self.me = peers.ref(name)
        self.timers = timers
        self.clock = clock
        self.work_root = work_root
        #: told the state of every job that ends here (cancelled before it started): the agents tell the others
        self.on_job = on_job or (lambda state: None)
        self.queue: collections.deque[JobSpec] = collections.deque()
        self.waiting: collections.deque[str] = collections.deque()
        self.runs: dict[int, Run] = {}
        self.run_of_job: dict[int, int] = {}
        #: run id -> who cancelled it: a job of such a run handed back by the agents is cancelled, not queued
        self.cancelled_runs: dict[int, str] = {}
        #: jobs handed to the agents (recorded in the store) and not finished: their spec, None when
        #: restored from the store (rebuilt if the agents give the job back)
        self.handed: dict[int, JobSpec | None] = {}
        #: writes the store refused, kept in order and retried (a result is never dropped)
        self.pending = PendingWrites(self, timers=timers, clock=clock, me=self.me)
        #: pipeline -> the cron schedule its armed timer follows
        self.armed: dict[str, str] = {}

    # -- start-up: the store is the truth ------------------------------------------------

    def start(self) -> None:
        # The pauses are the store's: a restarted scheduler does not forget them.
        self.paused_pipelines = frozenset(self.store.paused_pipelines())
        self.restore()
        self.arm_timers()
        self.report()
        self.check_drained()
        self.peers.tell("agents", AnnounceIdle())
        self.peers.tell("config", PipelinesWanted())

    def restore(self) -> None:
        """Runs in progress and their scheduled jobs come back from the store (after any restart).

        A run of a pipeline this scheduler does not know yet (one from a config repo, whose
        files come after the start) is left in the store and restored when a configuration
        brings its pipeline (:meth:`change_pipelines`); a run restored already is not again.
        """
        for row in self.store.recent_runs(limit=100_000):
            if row.state != "running" or row.id in self.runs:
                continue
            pipeline = self.pipelines.get(row.pipeline)
            jobs = row.jobs
            if pipeline is None or not jobs:
                continue
            run = Run(row.id, pipeline, row.counter, dict(row.revisions))
            run.stage_index = max(j.stage_index for j in jobs)
            self.runs[row.id] = run
            for job in jobs:
                if job.stage_index != run.stage_index:
                    continue
                self.run_of_job[job.id] = row.id
                if job.state in TERMINAL:
                    run.results[job.id] = JobState(job.state)
                    continue
                run.pending.add(job.id)
                if job.state == JobState.SCHEDULED and job.agent is not None:
                    # handed to the agents: an Assign may be on its way (never queued twice);
                    # if the agents did not take it, they give it back
                    self.handed[job.id] = None
                elif job.state == JobState.SCHEDULED:
                    stage = pipeline.stages[job.stage_index]
                    job_def = next((j for j in stage.jobs if j.name == job.name), None)
                    if job_def is None:
                        self.record_job_state(
                            job.id, JobState.CANCELLED, cancelled_by="maintd", detail="job no longer in the configuration"
                        )
                        run.pending.discard(job.id)
                        run.results[job.id] = JobState.CANCELLED
                        continue
                    spec = job_spec(run, job.stage_index, job_def, job.id, job.log_path, self.work_root, job.scheduled_at)
                    self.queue.append(spec)
            asked = [j.cancelled_by for j in jobs if j.id in run.pending]
            if asked and None not in asked:
                # CancelRun asks every job of the stage that has not ended (and records it):
                # the run was being cancelled when the previous scheduler stopped
                self.cancelled_runs[row.id] = str(asked[0])
            if not run.pending:
                self.stage_done(run)
        self.items = {item_id: item for item_id, item in self.items.items() if item.kind == PENDING_WRITE}
        for spec in self.queue:
            item = self.item_of(spec)
            self.items[item.id] = item

    def arm_timers(self) -> None:
        """At start: arm the timer of every pipeline that has one."""
        for p in self.pipelines.values():
            if p.timer:
                self.arm_timer(p.name, p.timer)

    def arm_timer(self, name: str, timer: str) -> None:
        """Arm the timer of one pipeline (about 0.4 ms with croniter): only ever for what changed."""
        now = self.clock.now()
        self.timers.arm(f"cron:{name}", max(next_fire(timer, now) - now, 0.0), TimerDue(name), self.me)
        self.armed[name] = timer

    def change_pipelines(self, pipelines: tuple[PipelineDef, ...], paused: frozenset[str]) -> None:
        """A new configuration: the timers of the pipelines whose schedule changed, and only those,
        are disarmed or armed again (pausing a pipeline changes no timer: a paused pipeline's timer
        fires and is skipped, as GoCD does)."""
        known = set(self.pipelines)
        self.pipelines = {p.name: p for p in pipelines}
        self.paused_pipelines = paused
        if set(self.pipelines) - known:
            # Runs of the pipelines that just became known (a config repo's, after a restart)
            # come back from the store now: their scheduled jobs queue again, and their
            # jobs' ends are heard.
            before = len(self.runs)
            self.restore()
            if len(self.runs) != before:
                self.report()
                self.check_drained()
                self.dispatch()
        for name, timer in list(self.armed.items()):
            p = self.pipelines.get(name)
            if p is None or p.timer != timer:
                self.timers.disarm(f"cron:{name}")
                del self.armed[name]
        for p in self.pipelines.values():
            if p.timer and p.name not in self.armed:
                self.arm_timer(p.name, p.timer)

    # -- triggering --------------------------------------------------------------------

    def trigger(self, pipeline_name: str, how: str, by: str, peer: str | None = None) -> dict[str, Any]:
        pipeline = self.pipelines.get(pipeline_name)
        if pipeline is None:
            raise NotFound(f"no pipeline named {pipeline_name!r} (`maintctl pipelines` lists them)")
        if pipeline_name in self.paused_pipelines:
            raise Conflict(f"pipeline {pipeline_name!r} is paused; unpause it first")
        now = self.clock.now()
        counter = self.store.next_counter(pipeline_name)
        if how == "user":  # audited before it takes effect: a trigger that cannot be recorded starts nothing
            self.store.audit("trigger", by, now, target=f"{pipeline_name}/{counter}", detail=peer)
        revisions = {m: rev for m in pipeline.materials if (rev := self.store.last_revision(m))}
        run_id = self.store.create_run(pipeline_name, counter, how, by, revisions, now)
        run = Run(run_id, pipeline, counter, revisions)
        self.runs[run_id] = run
        log.info("triggered %s/%d (%s by %s)", pipeline_name, counter, how, by)
        self.queue_stage(run, 0)
        return {"pipeline": pipeline_name, "counter": counter, "run_id": run_id}

    def automatic(self, pipeline_name: str, how: str) -> None:
        if not self.intake_open:
            log.info("%s trigger of %s skipped: maintenance mode", how, pipeline_name)
            return
        if pipeline_name in self.paused_pipelines:
            log.info("%s trigger of %s skipped: the pipeline is paused", how, pipeline_name)
            return
        try:
            self.trigger(pipeline_name, how, "maintd")
        except StoreError as exc:
            # nothing was obtained yet, so nothing is kept: the next timer or revision triggers it
            log.error("%s trigger of %s skipped: %s", how, pipeline_name, exc.message)

    def queue_stage(self, run: Run, index: int) -> None:
        """Make the jobs of stage ``index`` (one write: all or none) and queue them; if the
        store refuses, the run waits between stages until the write is retried and taken."""
        stage = run.pipeline.stages[index]
        now = self.clock.now()
        folder = os.path.join(self.work_root, "logs", run.pipeline.name, str(run.counter), stage.name)
        logs = tuple((job_def.name, os.path.join(folder, f"{job_def.name}.log")) for job_def in stage.jobs)

        def create() -> None:
            job_ids = self.store.create_jobs(run.run_id, run.pipeline.name, run.counter, stage.name, index, logs, now)
            run.stage_index = index
            run.pending = set()
            run.results = {}
            for job_def, job_id, (_, log_path) in zip(stage.jobs, job_ids, logs, strict=True):
                spec = job_spec(run, index, job_def, job_id, log_path, self.work_root, now)
                run.pending.add(job_id)
                self.run_of_job[job_id] = run.run_id
                self.queue.append(spec)
                self.items[qualify(self.name, job_item_id(job_id))] = self.item_of(spec)
            self.report()
            self.dispatch()

        self.pending.write(f"the jobs of {run.pipeline.name}/{run.counter}/{stage.name}", create)

    def record_job_state(self, job_id: int, state: JobState, **fields: Any) -> None:
        """A job's end decided here (a cancel): recorded now, or kept until the store takes it."""
        self.pending.write(
            f"the {state.value} state of job {job_id}",
            functools.partial(self.store.set_job_state, job_id, state, self.clock.now(), **fields),
        )
        if state in TERMINAL:
            self.on_job(state.value)

    def item_of(self, spec: JobSpec) -> InFlightItem:
        return job_item(self.name, spec, SCHEDULED_JOB, self.clock.now(), blocks_restart=False)

    def finished(self, job_id: int, state: JobState) -> None:
        self.handed.pop(job_id, None)
        run_id = self.run_of_job.pop(job_id, None)
        run = self.runs.get(run_id) if run_id is not None else None
        if run is None or job_id not in run.pending:
            return
        run.pending.discard(job_id)
        run.results[job_id] = state
        if not run.pending:
            self.stage_done(run)

    def stage_done(self, run: Run) -> None:
        states = set(run.results.values())
        cancelled = run.run_id in self.cancelled_runs  # its jobs may have ended before the cancel reached them
        if states <= {JobState.PASSED} and not cancelled and run.stage_index + 1 < len(run.pipeline.stages):
            self.queue_stage(run, run.stage_index + 1)
            return
        if states <= {JobState.PASSED} and not cancelled:
            final = "passed"
        else:
            final = "cancelled" if cancelled or JobState.CANCELLED in states else "failed"
        self.pending.write(
            f"the end of {run.pipeline.name}/{run.counter} ({final})",
            functools.partial(self.store.finish_run, run.run_id, final, self.clock.now()),
        )
        self.cancelled_runs.pop(run.run_id, None)
        log.info("%s/%d %s", run.pipeline.name, run.counter, final)
        del self.runs[run.run_id]

    # -- cancel --------------------------------------------------------------------------

    def on_cancel(self, item: InFlightItem, msg: Cancel) -> None:
        job_id = int(item.local_id.removeprefix("job-"))
        self.cancel_scheduled(job_id, msg.by)
        self.accept_cancel(msg)
        self.report()

    def cancel_scheduled(self, job_id: int, by: str) -> bool:
        for spec in self.queue:
            if spec.job_id == job_id:
                self.queue.remove(spec)
                self.items.pop(qualify(self.name, job_item_id(job_id)), None)
                self.record_job_state(job_id, JobState.CANCELLED, cancelled_by=by)
                self.finished(job_id, JobState.CANCELLED)
                return True
        return False

    def cancel_run(self, msg: CancelRun) -> dict[str, Any]:
        run = next((r for r in self.runs.values() if r.pipeline.name == msg.pipeline and r.counter == msg.counter), None)
        if run is None:
            raise NotFound(f"{msg.pipeline}/{msg.counter} is not running")
        if msg.stage is not None and run.pipeline.stages[run.stage_index].name != msg.stage:
            raise NotFound(f"stage {msg.stage!r} of {msg.pipeline}/{msg.counter} is not running")
        # audited before it takes effect: a cancel that cannot be recorded cancels nothing
        target = f"{msg.pipeline}/{msg.counter}" + (f"/{msg.stage}" if msg.stage else "")
        self.store.audit("cancel_run", msg.by, self.clock.now(), target=target, detail=msg.peer)
        building = []
        scheduled = 0
        for job_id in sorted(run.pending):
            if self.cancel_scheduled(job_id, msg.by):
                scheduled += 1
            else:
                building.append(job_id)
        if building:
            # Some of these may still be on their way to an agent and come back (GiveBack).
            # Recorded first: restarted agents (or a restarted scheduler) learn it from the store.
            for job_id in building:
                self.pending.write(f"the cancel of job {job_id}", functools.partial(self.store.request_cancel, job_id, msg.by))
            self.cancelled_runs[run.run_id] = msg.by
            self.peers.tell("agents", CancelJobs(job_ids=tuple(building), by=msg.by))
        self.report()
        return {"pipeline": msg.pipeline, "counter": msg.counter, "cancelled_jobs": scheduled + len(building)}

    # -- messages ----------------------------------------------------------------------

    def handle(self, message: Any) -> Any:
        match message:
            case MaterialChanged(material=material):
                for p in self.pipelines.values():
                    if material in p.materials:
                        self.automatic(p.name, "material")
            case TimerDue(pipeline=name):
                pipeline = self.pipelines.get(name)
                if pipeline is not None and pipeline.timer:
                    # its own next firing first: a refused trigger must not leave it unarmed
                    self.arm_timer(name, pipeline.timer)
                    self.automatic(name, "timer")
            case Trigger(pipeline=name, by=by, peer=peer):
                if not self.intake_open:
                    raise MaintdError(
                        "maintenance mode is on: pipelines cannot be triggered until it is turned off", code="maintenance_mode"
                    )
                return self.trigger(name, "user", by, peer)
            case WantWork(agent=agent):
                if agent not in self.waiting:
                    self.waiting.append(agent)
                if not self.busy():  # else on_idle hands out to every agent waiting by then, in one write
                    self.dispatch()
            case AgentsPaused():
                self.waiting.clear()
            case GiveBack():
                self.give_back(message)
            case JobFinished(job_id=job_id, state=state):
                self.pending.nudge()  # the agents just recorded its result: the store takes writes again
                self.finished(job_id, state)
            case Reschedule(job_id=job_id):
                self.reschedule(job_id)
            case RetryWrites():
                self.pending.retry()
            case CancelRun():
                return self.cancel_run(message)
            case PipelinesChanged(pipelines=pipelines, paused=paused):
                self.change_pipelines(pipelines, paused)
            case GetQueueLength():
                return len(self.queue)
            case _:
                return NotImplemented
        return None
