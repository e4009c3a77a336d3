"""The model of the job server's machines: two pipelines, the inboxes between the cores
(:class:`Bus`) and the process runner (:class:`Processes`), which checks every start.
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING, Any

from actors.definitions import JobDef, PipelineDef, StageDef
from actors.jobs import JobExited, JobSpec, JobStarted
from actors.peers import PeerRef
from tests.actors.drain_properties.runs import COUNTS

if TYPE_CHECKING:
    from tests.actors.drain_properties.jobserver_machine import JobServerMachine

APP = PipelineDef(
    name="app",
    materials=["app"],
    stages=[
        StageDef(name="build", jobs=[JobDef(name="compile", command=["make"]), JobDef(name="package", command=["tar"])]),
        StageDef(name="test", jobs=[JobDef(name="unit", command=["pytest"])]),
    ],
)
DOCS = PipelineDef(name="docs", stages=[StageDef(name="site", jobs=[JobDef(name="render", command=["make", "site"])])])
CORES = ("scheduler", "agents")


class Ask:
    """A message asked of a core: the answer (or the error) lands here."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.open_when_handled: bool | None = None
        self.runs_created = 0


class Bus:
    """The Peers port: every ``tell`` goes into the named core's inbox, in order."""

    def __init__(self) -> None:
        self.seq = itertools.count()
        self.inbox: dict[str, collections.deque[tuple[int, Any]]] = {name: collections.deque() for name in CORES}
        self.refs: dict[str, PeerRef] = {}
        self.elsewhere: list[tuple[str, Any]] = []

    def tell(self, name: str, message: Any) -> None:
        if name not in self.inbox:  # a subsystem this machine does not model (config, materials)
            self.elsewhere.append((name, message))
            return
        self.inbox[name].append((next(self.seq), message))

    def ref(self, name: str) -> PeerRef:
        return self.refs.setdefault(name, PeerRef(self, name))  # type: ignore[arg-type]

    def pending(self) -> int:
        return sum(len(q) for q in self.inbox.values())


class Processes:
    """The ProcessPort: records running jobs and checks every start against the rules."""

    def __init__(self, machine: JobServerMachine) -> None:
        self.machine = machine
        self.running: dict[int, Any] = {}  # job id -> reply_to
        self.stopping: set[int] = set()
        self.started: set[int] = set()
        self.pid_of: dict[int, int] = {}
        self.exits: dict[int, JobExited] = {}  # what was told when each job ended (as the runner keeps it)
        self.pids = itertools.count(1000)

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        m = self.machine
        if m.agents_paused:  # from the messages the agents got, not from their own word
            m.violations.append(f"job {spec.job_id} was started while the agents were paused")
        if spec.job_id in self.started:
            m.violations.append(f"job {spec.job_id} was started twice")
        if spec.job_id in m.cancelled_jobs:
            m.violations.append(f"job {spec.job_id} was started after its cancel was accepted")
        self.started.add(spec.job_id)
        COUNTS["jobserver jobs started"] += 1
        self.running[spec.job_id] = reply_to
        self.pid_of[spec.job_id] = next(self.pids)
        reply_to.tell(JobStarted(job_id=spec.job_id, pid=self.pid_of[spec.job_id]))

    def stop_job(self, job_id: int, grace: float) -> None:
        if job_id in self.running:
            self.stopping.add(job_id)

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        """As ProcessRunner.report_jobs: started again for a running job, its exit again for an ended one."""
        COUNTS["jobserver jobs reported again"] += len(job_ids)
        for job_id in job_ids:
            if job_id in self.exits:
                reply_to.tell(self.exits[job_id])
            elif job_id in self.running:
                reply_to.tell(JobStarted(job_id=job_id, pid=self.pid_of[job_id]))
            else:
                reply_to.tell(JobExited(job_id=job_id, returncode=None, error="lost"))

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        raise AssertionError("no materials here")

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        raise AssertionError("no materials here")


def job_of(item_id: str) -> int:
    return int(item_id.partition("/")[2].removeprefix("job-"))
