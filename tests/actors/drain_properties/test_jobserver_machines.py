"""The job server's machines: :class:`JobServerMachine`, and two that search for defects
(a cancel-run at any moment; failing cores and a killed daemon).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.actors.drain_properties.jobserver_machine import JobServerMachine
from tests.actors.drain_properties.jobserver_model import CORES
from tests.actors.drain_properties.remote_machine import RemoteJobServerMachine
from tests.actors.drain_properties.runs import COUNTS, DEFECT_SETTINGS, SETTINGS, USERS

JobServerMachine.TestCase.settings = SETTINGS
TestJobServerMachine = JobServerMachine.TestCase


class JobServerCancelRunRaceMachine(JobServerMachine):
    """:class:`JobServerMachine` where a run may be cancelled at any time, also while
    one of its jobs is on its way to an agent."""

    @precondition(lambda self: self.running_runs())
    @rule(data=st.data(), by=st.sampled_from(USERS))
    def cancel_run(self, data: st.DataObject, by: str) -> None:
        self.cancel_a_run(data, by)

    # fewer rules, so that the races between a cancel and the messages on their way come up
    cancel_item = daemon_restarts = drain_to_the_end = all_work_finishes = None  # type: ignore[assignment]


JobServerCancelRunRaceMachine.TestCase.settings = settings(DEFECT_SETTINGS, stateful_step_count=15)
TestJobServerCancelRunRaceMachine = JobServerCancelRunRaceMachine.TestCase


class JobServerCoreFailureMachine(JobServerMachine):
    """:class:`JobServerMachine` plus failures: a core fails and the supervisor starts a
    fresh one (with nothing queued for it, or with messages in its inbox, which pykka
    drops), and the daemon is killed."""

    @precondition(lambda self: not self.bus.pending())
    @rule(name=st.sampled_from(CORES))
    def core_restarts_when_idle(self, name: str) -> None:
        """A core fails with nothing queued for it and the supervisor starts a fresh one."""
        self.step()
        self.fail_core(name)

    @rule(name=st.sampled_from(CORES))
    def core_restarts(self, name: str) -> None:
        """A core fails and the supervisor starts a fresh one; what was queued for it is lost
        (pykka drops the inbox of a failed actor)."""
        self.step()
        self.fail_core(name)

    @rule()
    def daemon_killed(self) -> None:
        """maintd is killed (SIGKILL, OOM): whatever waited in an inbox is lost; then it starts again."""
        self.step()
        COUNTS["jobserver messages lost in a killed daemon"] += self.bus.pending()
        self.restart_daemon()


JobServerCoreFailureMachine.TestCase.settings = DEFECT_SETTINGS
TestJobServerCoreFailureMachine = JobServerCoreFailureMachine.TestCase


RemoteJobServerMachine.TestCase.settings = DEFECT_SETTINGS
TestRemoteJobServerMachine = RemoteJobServerMachine.TestCase
