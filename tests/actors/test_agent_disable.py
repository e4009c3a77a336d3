"""One agent's drain (``maintctl agent disable|enable NAME``), on the plain agents core: a
real in-memory Store, recording peers and processes (those of test_jobserver_cores.py)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.agents import AgentInfo, AgentsCore, SetAgentEnabled
from actors.errors import MaintdError
from actors.handout import AgentsPaused, Assign, GiveBack, JobFinished, TakenBack, WantWork
from actors.jobs import JobExited, JobState
from actors.messages import GetInfo
from actors.store import Store, StoreError
from tests.actors.test_jobserver_cores import World, agents, building, new_spec


@pytest.fixture
def w() -> World:
    return World()


def disable(core: AgentsCore, name: str = "agent-1", by: str = "alice") -> Any:
    return core.handle(SetAgentEnabled(name=name, enabled=False, by=by, peer="pid 7 maintctl agent disable"))


def enable(core: AgentsCore, name: str = "agent-1", by: str = "alice") -> Any:
    return core.handle(SetAgentEnabled(name=name, enabled=True, by=by, peer="pid 8 maintctl agent enable"))


def rows(core: AgentsCore) -> dict[str, tuple[str, bool]]:
    return {row.name: (row.state, row.disabled) for row in core.handle(GetInfo())}


def audits(w: World) -> list[tuple[str, str, str | None, str | None, str | None]]:
    return [(e.action, e.by, e.target, e.reason, e.detail) for e in w.store.audit_entries()]


def started(w: World) -> AgentsCore:
    core = agents(w)
    core.start()
    w.peers.told.clear()
    return core


def test_a_disabled_idle_agent_is_taken_off_the_waiting_list_and_gives_back_an_assign(w: World) -> None:
    core = started(w)
    assert disable(core) == {"agent": "agent-1", "state": "disabled", "changed": True}
    # the scheduler forgets both waiting agents, and hears again of the one that takes work
    assert w.peers.told == [("scheduler", AgentsPaused()), ("scheduler", WantWork("agent-2"))]
    spec = new_spec(w)
    core.handle(Assign(agent="agent-1", spec=spec))  # on its way before the scheduler heard
    (give_back,) = w.peers.to("scheduler", GiveBack)
    assert give_back.holding == () and w.procs.of("start_job") == [] and core.items == {}
    core.handle(TakenBack(give_back.token))
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-2")] * 2  # never agent-1
    assert rows(core) == {"agent-1": ("disabled", True), "agent-2": ("idle", False)}


def test_a_disabled_agent_finishes_its_job_uncancelled_and_asks_for_no_more(w: World) -> None:
    core, spec = building(w)
    assert disable(core) == {"agent": "agent-1", "state": "building", "changed": True}
    assert w.peers.to("scheduler", AgentsPaused) == []  # not waiting: nothing to take back
    assert rows(core)["agent-1"] == ("building", True)
    core.handle(JobExited(job_id=spec.job_id, returncode=0))
    assert w.job(spec.job_id) == ("passed", "agent-1", None)
    assert w.procs.of("stop_job") == []  # it ran to its end
    assert w.peers.to("scheduler", JobFinished) == [JobFinished(job_id=spec.job_id, state=JobState.PASSED)]
    assert w.peers.to("scheduler", WantWork) == []
    assert rows(core)["agent-1"] == ("disabled", True)


def test_enabling_asks_for_work_for_the_agent(w: World) -> None:
    core = started(w)
    disable(core)
    w.peers.told.clear()
    assert enable(core) == {"agent": "agent-1", "state": "idle", "changed": True}
    assert w.peers.told == [("scheduler", WantWork("agent-1"))]
    spec = new_spec(w)
    core.handle(Assign(agent="agent-1", spec=spec))
    assert w.procs.of("start_job") == [(w.peers.ref("agents"), spec)]


def test_enabling_a_busy_agent_asks_for_work_when_its_job_ends(w: World) -> None:
    core, spec = building(w)
    disable(core)
    enable(core)
    assert w.peers.to("scheduler", WantWork) == []
    core.handle(JobExited(job_id=spec.job_id, returncode=0))
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-1")]


def test_disabling_twice_says_so_and_is_no_error(w: World) -> None:
    core = started(w)
    disable(core)
    w.peers.told.clear()
    assert disable(core, by="bob") == {"agent": "agent-1", "state": "disabled", "changed": False}
    assert enable(core, name="agent-2") == {"agent": "agent-2", "state": "idle", "changed": False}
    assert w.peers.told == []
    assert audits(w) == [
        ("agent_disable", "alice", "agent-1", None, "pid 7 maintctl agent disable"),
        ("agent_disable", "bob", "agent-1", "already disabled", "pid 7 maintctl agent disable"),
        ("agent_enable", "alice", "agent-2", "already enabled", "pid 8 maintctl agent enable"),
    ]


def test_an_unknown_agent_is_not_found_and_the_message_names_the_agents(w: World) -> None:
    core = started(w)
    with pytest.raises(MaintdError) as refused:
        disable(core, name="agent-9")
    assert refused.value.code == "not_found"
    assert refused.value.message == ("no agent named 'agent-9'; the agents are agent-1, agent-2 (`maintctl agents` lists them)")
    assert audits(w) == [] and w.peers.told == []


def test_disabling_is_taken_in_maintenance_and_the_agent_stays_idle_after_it(w: World) -> None:
    core = started(w)
    core.pause("d1")
    w.peers.told.clear()
    assert disable(core) == {"agent": "agent-1", "state": "disabled", "changed": True}
    assert w.peers.told == []  # paused: the scheduler's waiting list is empty already
    assert rows(core) == {"agent-1": ("disabled", True), "agent-2": ("paused", False)}
    core.resume("d1")
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-2")]
    assert [a[0] for a in audits(w)] == ["agent_disable"]


def test_enabling_is_refused_in_maintenance_says_why_and_is_audited_as_refused(w: World) -> None:
    core = started(w)
    disable(core)
    core.pause("d1")
    w.peers.told.clear()
    with pytest.raises(MaintdError) as refused:
        enable(core)
    assert refused.value.code == "maintenance_mode"
    assert refused.value.message == "maintenance mode is on: enabling agent agent-1 is refused until it is turned off"
    assert core.disabled == {"agent-1"} and w.store.disabled_agents() == ["agent-1"]
    assert w.peers.told == []
    assert audits(w)[-1] == ("agent_enable_refused", "alice", "agent-1", refused.value.message, "pid 8 maintctl agent enable")
    core.resume("d1")
    assert w.peers.to("scheduler", WantWork) == [WantWork("agent-2")]


class RecordingPeers:
    """Notes, at each tell, which audit entries the store holds by then."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.seen: list[tuple[Any, list[str]]] = []

    def tell(self, name: str, message: Any) -> None:
        self.seen.append((message, [e.action for e in self.w.store.audit_entries()]))
        self.w.peers.tell(name, message)

    def ref(self, name: str) -> Any:
        return self.w.peers.ref(name)


def test_the_change_is_recorded_and_audited_before_it_takes_effect(w: World) -> None:
    peers = RecordingPeers(w)
    core = AgentsCore("agents", w.sent.append, count=2, store=w.store, peers=peers, processes=w.procs, clock=w.clock, grace=5.0)
    core.start()
    peers.seen.clear()
    disable(core)
    enable(core)
    assert peers.seen == [
        (AgentsPaused(), ["agent_disable"]),
        (WantWork("agent-2"), ["agent_disable"]),
        (WantWork("agent-1"), ["agent_disable", "agent_enable"]),
    ]


class AuditFails(Store):
    def set_agent_disabled(self, *args: Any, **kwargs: Any) -> int:
        raise StoreError("the store at :memory: could not record the agent_disable of agent-1: disk I/O error")


def test_a_change_the_store_cannot_record_is_refused_and_not_made(w: World) -> None:
    w.store = AuditFails(":memory:")
    core = started(w)
    with pytest.raises(StoreError):
        disable(core)
    assert core.disabled == set() and w.peers.told == []
    assert rows(core)["agent-1"] == ("idle", False)


def test_a_restarted_core_keeps_the_disabled_agents(w: World) -> None:
    core = started(w)
    disable(core, name="agent-2")
    w.peers.told.clear()
    again = agents(w)  # the agents actor failed and was started again
    again.start()
    assert again.disabled == {"agent-2"}
    assert w.peers.told == [("scheduler", WantWork("agent-1"))]
    assert rows(again) == {"agent-1": ("idle", False), "agent-2": ("disabled", True)}
    assert enable(again, name="agent-2")["changed"] is True
    assert w.store.disabled_agents() == []


def test_an_agent_disabled_that_is_no_longer_configured_can_still_be_enabled(w: World) -> None:
    w.store.set_agent_disabled("agent-5", True, "alice", w.clock.now())  # before [agents] count went down
    core = started(w)
    assert enable(core, name="agent-5") == {"agent": "agent-5", "state": "idle", "changed": True}
    assert w.store.disabled_agents() == [] and w.peers.told == []


# -- the seams a subclass with several slots an agent overrides ---------------------------


class Workers(AgentsCore):
    """Two workers of two slots each (as RemoteAgentsCore names them: ``NAME#1`` .. ``NAME#N``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agents = {f"{w}#{i}": None for w in ("w1", "w2") for i in (1, 2)}
        self.hooked: list[tuple[str, bool]] = []

    def slots_of(self, name: str) -> list[str]:
        return [key for key in self.agents if self.agent_name(key) == name]

    def agent_name(self, key: str) -> str:
        return key.partition("#")[0]

    def on_agent_enabled(self, name: str, enabled: bool) -> None:
        self.hooked.append((name, enabled))


def test_an_agent_of_several_slots_is_disabled_and_listed_as_one(w: World) -> None:
    core = Workers("agents", w.sent.append, count=0, store=w.store, peers=w.peers, processes=w.procs, clock=w.clock, grace=5.0)
    core.start()
    spec = new_spec(w)
    core.handle(Assign(agent="w1#2", spec=spec))
    w.peers.told.clear()
    assert disable(core, name="w1") == {"agent": "w1", "state": "building", "changed": True}
    assert w.peers.told == [("scheduler", AgentsPaused()), ("scheduler", WantWork("w2#1")), ("scheduler", WantWork("w2#2"))]
    info = core.handle(GetInfo())
    assert [(r.name, r.state, r.slots, r.busy, r.disabled) for r in info] == [
        ("w1", "building", 2, 1, True),
        ("w2", "idle", 2, 0, False),
    ]
    assert isinstance(info[0], AgentInfo) and info[0].host is None and "app/1/build/compile" in (info[0].job or "")
    core.handle(JobExited(job_id=spec.job_id, returncode=0))
    assert WantWork("w1#2") not in w.peers.to("scheduler", WantWork)
    disable(core, name="w1")  # no change: no hook
    enable(core, name="w1")
    assert w.peers.told[-2:] == [("scheduler", WantWork("w1#1")), ("scheduler", WantWork("w1#2"))]
    assert core.hooked == [("w1", False), ("w1", True)]
    with pytest.raises(MaintdError, match=r"the agents are w1, w2 \("):
        disable(core, name="w1#1")  # a slot is not an agent
