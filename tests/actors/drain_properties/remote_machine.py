"""Machine 3: the job server with remote agents (Celery workers w1 and w2, one slot each).

:class:`JobServerMachine`'s scheduler and rules, with :class:`RemoteAgentsCore` for the
agents, and what only remote agents meet: heartbeats, a worker that dies (its job's
attempt is forgotten once it is found lost, and the job runs again), the broker going down
and coming back, and a restart of maintd that the remote jobs live through.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from actors.jobs import JobState
from actors.messages import Cancel, PauseIntake
from actors.remote_agents import BACKEND_UNAVAILABLE, RemoteAgentsCore, RemoteWorker, WorkersSeen
from actors.subsystem import SubsystemCore
from tests.actors.drain_properties.jobserver_machine import JobServerMachine
from tests.actors.drain_properties.jobserver_model import CORES, job_of
from tests.actors.drain_properties.runs import COUNTS

LOST = 30.0
WORKERS = ("w1", "w2")


class FakeRemote:
    """The RemoteWorkers port: a forgotten attempt no longer runs (as far as maintd knows)."""

    def __init__(self, machine: RemoteJobServerMachine) -> None:
        self.machine = machine

    def set_consuming(self, agent: str, enabled: bool) -> None:
        pass

    def forget_job(self, job_id: int) -> None:
        procs = self.machine.procs
        procs.running.pop(job_id, None)
        procs.stopping.discard(job_id)
        procs.started.discard(job_id)  # the next attempt is a new start
        COUNTS["remote attempts forgotten"] += 1


class RemoteJobServerMachine(JobServerMachine):
    def __init__(self) -> None:
        self.alive = dict.fromkeys(WORKERS, True)
        self.heard = dict.fromkeys(WORKERS, 0.0)
        self.broker_up = True
        self.remote = FakeRemote(self)
        super().__init__()

    def spawn(self, name: str, items: Any) -> None:
        if name != "agents":
            super().spawn(name, items)
            return
        core: SubsystemCore = RemoteAgentsCore(
            "agents", self.emitted.append, items, store=self.store, peers=self.bus, processes=self.procs,
            remote=self.remote, clock=self.clock, grace=5.0, lost_timeout=LOST,
        )  # fmt: skip
        core.paused_for = self.drain_id
        self.agents_paused = self.drain_id is not None
        self.cores[name] = core
        core.report()
        core.start()
        if self.drain_id is not None:
            self.bus.tell(name, PauseIntake(drain_id=self.drain_id))
        self.send_heartbeats()

    def send_heartbeats(self) -> None:
        """What the runner tells every heartbeat: the workers, when each was heard from, the broker."""
        now = self.clock.now()
        for name in WORKERS:
            if self.alive[name] and self.broker_up:
                self.heard[name] = now
        workers = tuple(
            RemoteWorker(name=n, host=f"host-{n}", node=f"{n}@host-{n}", slots=1, heartbeat=self.heard[n] or None)
            for n in WORKERS
            if self.heard[n]
        )
        self.bus.tell("agents", WorkersSeen(workers=workers, broker_error=None if self.broker_up else "ConnectionError"))

    # -- the remote world's rules --------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0]))
    def heartbeat(self, seconds: float) -> None:
        self.step()
        self.clock.t += seconds
        self.send_heartbeats()

    @precondition(lambda self: any(self.alive.values()))
    @rule(name=st.sampled_from(WORKERS))
    def worker_dies(self, name: str) -> None:
        """kill -9 of a worker: its job's processes may go on, but nothing of it reaches maintd."""
        self.step()
        self.alive[name] = False

    @precondition(lambda self: not all(self.alive.values()))
    @rule(name=st.sampled_from(WORKERS))
    def worker_comes_back(self, name: str) -> None:
        self.step()
        self.alive[name] = True
        self.send_heartbeats()

    @rule()
    def lost_timeout_passes(self) -> None:
        self.step()
        self.clock.t += LOST + 1
        self.send_heartbeats()

    @precondition(lambda self: self.broker_up)
    @rule()
    def broker_goes_down(self) -> None:
        self.step()
        self.broker_up = False
        self.send_heartbeats()

    @precondition(lambda self: not self.broker_up)
    @rule()
    def broker_comes_back(self) -> None:
        self.step()
        self.broker_up = True
        self.send_heartbeats()

    def exit(self, job_id: int, code: int) -> None:
        """A job's end reaches maintd only through the broker, from a live worker; else later."""
        row = self.store.job(job_id)
        worker = (row.agent or "").partition("#")[0] if row is not None else ""
        if not self.broker_up or not self.alive.get(worker, True):
            COUNTS["remote job ends held back"] += 1
            return
        super().exit(job_id, code)

    def revive(self) -> None:
        self.alive = dict.fromkeys(WORKERS, True)
        self.broker_up = True
        self.send_heartbeats()
        self.pump()

    @precondition(lambda self: self.procs.running or self.bus.inbox["agents"])
    @rule(data=st.data())
    def drain_to_the_end(self, data: st.DataObject) -> None:
        """The base's, once the workers and the broker are there to tell the jobs' ends."""
        self.revive()
        super().drain_to_the_end(data)

    def restart_daemon(self) -> None:
        """maintd restarts; the remote jobs run on (they are not its children)."""
        dropped = {id(m.reply) for q in self.bus.inbox.values() for _s, m in q if isinstance(m, Cancel)}
        self.cancels = [(i, t) for i, t in self.cancels if id(t) not in dropped]
        for q in self.bus.inbox.values():
            q.clear()
        self.procs.exits.clear()  # a new runner: it finds each job again from the store
        self.clock.t += 5
        interrupted, _queued = self.store.recover(self.clock.now(), keep_building=True)
        assert interrupted == [], f"remote jobs marked interrupted: {interrupted}"
        COUNTS["remote restarts with jobs running"] += bool(self.procs.running)
        self.drain_id = None
        for name in CORES:
            self.spawn(name, ())

    def finish_all_work(self) -> None:
        """The workers and the broker are back and heard from: then every job ends."""
        self.revive()
        super().finish_all_work()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def nothing_lost(self) -> None:  # the base's, on the items that are jobs
        COUNTS["jobserver checks"] += 1
        assert self.violations == []
        if self.bus.pending():
            return
        agents = self.cores["agents"]
        jobs = [j for r in self.store.recent_runs(limit=100_000) for j in r.jobs]
        building = {j.id for j in jobs if j.state == JobState.BUILDING}
        scheduled = {j.id for j in jobs if j.state == JobState.SCHEDULED}
        queued = [spec.job_id for spec in self.cores["scheduler"].queue]
        assert len(queued) == len(set(queued)), f"a job is queued twice: {queued}"
        assert scheduled == set(queued), f"scheduled {sorted(scheduled)} but queued {sorted(queued)}"
        job_items = {job_of(i) for i, item in agents.items.items() if item.kind != BACKEND_UNAVAILABLE}
        assert job_items == building, f"building {sorted(building)}, agents {sorted(job_items)}"
        # a job runs in at most one attempt, the one maintd follows
        assert set(self.procs.running) <= building, f"running {sorted(self.procs.running)}, building {sorted(building)}"
        busy = [j for j in agents.agents.values() if j is not None]
        assert sorted(busy) == sorted(building)

    @invariant()
    def never_drained_while_a_remote_job_s_state_is_unknown(self) -> None:
        agents = self.cores["agents"]
        if self.bus.pending() or agents.paused_for is None:
            return
        held = any(j is not None for j in agents.agents.values())
        if not self.broker_up and held:
            COUNTS["remote checks: broker down with a job held"] += 1
            assert not agents.drain_complete(), "drained while the broker is down and a remote job is held"
        if agents.drain_complete():
            assert not held
