"""One agent's drain against the real daemon, real git and real jobs: ``maintctl agent disable
NAME`` lets that agent finish its job and gives it no more, while the other takes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER, wait_for
from tests.e2e.test_jobserver import World


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> World:
    return World(tmp_path, make_daemon)


def agents(world: World) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in world.ctl_json("agents")["agents"]}


def test_a_disabled_agent_finishes_its_job_and_the_other_takes_the_rest(world: World) -> None:
    stages = (
        '[[pipelines.stages]]\nname = "test"\n'
        + world.job("a")
        + world.job("b")
        + '[[pipelines.stages]]\nname = "package"\n'
        + world.job("c")
        + world.job("d")
    )
    d = world.start(agents=2, stages=stages)
    world.wait_status(lambda s: sorted(world.building(s)) == ["a", "b"], "the first stage on both agents")

    disabled = world.ctl("agent", "disable", "agent-1")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.strip() == "agent agent-1 disabled: it finishes its job and takes no more."
    listed = agents(world)
    assert (listed["agent-1"]["state"], listed["agent-1"]["disabled"]) == ("building", True)
    assert (listed["agent-2"]["state"], listed["agent-2"]["disabled"]) == ("building", False)
    assert listed["agent-1"]["host"] is None and listed["agent-1"]["slots"] == 1 and listed["agent-1"]["busy"] == 1
    text = world.ctl("agents").stdout
    assert "HEARTBEAT" in text and "building (disabled)" in text and "local" in text
    again = world.ctl("agent", "disable", "agent-1")
    assert (again.returncode, again.stdout.strip()) == (0, "agent agent-1 is already disabled")

    # its job runs to its end; then the next stage's two jobs both go to agent-2, one after the other
    world.finish("a")
    world.finish("b")
    s = world.wait_status(lambda s: len(world.building(s)) == 1 and world.scheduled(s), "one job building, one waiting")
    (first,) = world.building(s)
    assert s["running_systems"]["building_jobs"][0]["agent"] == "agent-2"
    assert agents(world)["agent-1"]["state"] == "disabled"
    world.finish(first)
    (second,) = {"c", "d"} - {first}
    world.wait_status(lambda s: world.building(s) == [second], "the other job, once agent-2 is free")
    world.finish(second)
    wait_for(lambda: world.runs()[0]["state"] == "passed", 15, "the run to pass")
    jobs = {j["name"]: (j["state"], j["agent"]) for j in world.runs()[0]["jobs"]}
    assert jobs["c"] == jobs["d"] == ("passed", "agent-2")
    assert {jobs["a"][1], jobs["b"][1]} == {"agent-1", "agent-2"} and jobs["a"][0] == jobs["b"][0] == "passed"

    # maintenance: disabling is taken (it only narrows the intake), enabling is not
    assert world.ctl("enable", "--reason", "upgrade").returncode == 0
    world.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained")
    refused = world.ctl("agent", "enable", "agent-1")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "maintctl: maintenance_mode: maintenance mode is on: enabling agent agent-1 is refused until it is turned off"
    )
    assert world.ctl("agent", "disable", "agent-2").returncode == 0
    assert world.ctl("disable").returncode == 0

    unknown = world.ctl("agent", "enable", "agent-9")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "maintctl: not_found: no agent named 'agent-9'; the agents are agent-1, agent-2 (`maintctl agents` lists them)"
    )

    history = [(e["action"], e["item"], e["by"]) for e in world.ctl_json("history")["entries"] if "agent" in e["action"]]
    assert history == [
        ("agent_disable", "agent-1", USER),
        ("agent_disable", "agent-1", USER),  # the second, which changed nothing
        ("agent_enable_refused", "agent-1", USER),
        ("agent_disable", "agent-2", USER),
    ]
    text = world.ctl("history").stdout
    assert "agent_enable_refused agent-1: maintenance mode is on" in text and "maintctl agent enable agent-1" in text

    # kept across a restart of the daemon
    assert d.stop() == 0
    d.start()
    world.wait_status(lambda s: all(x["state"] == "running" for x in s["subsystems"]), "all subsystems running")
    assert {name: a["state"] for name, a in agents(world).items()} == {"agent-1": "disabled", "agent-2": "disabled"}
    enabled = world.ctl("agent", "enable", "agent-1")
    assert (enabled.returncode, enabled.stdout.strip()) == (0, "agent agent-1 enabled: it takes jobs again.")
    assert agents(world)["agent-1"]["state"] == "idle"
