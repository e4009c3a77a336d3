"""``maintd_jobs_total`` against the real daemon: every job that ends counts once, by its result,
whichever subsystem ended it (the agents for a building job, the scheduler for a scheduled one)."""

from __future__ import annotations

import os
import signal
import urllib.request

from tests.conftest import wait_for
from tests.e2e.test_jobserver import World, world  # noqa: F401 (the fixture)


def jobs_total(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('maintd_jobs_total{result="'):
            labels, number = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(number)
    return out


def test_each_cancelled_job_counts_once_building_or_scheduled(world: World) -> None:  # noqa: F811
    stage = '[[pipelines.stages]]\nname = "test"\n' + world.job("one") + world.job("two") + world.job("three")
    d = world.start(agents=2, stages=stage)
    base = d.http_url()
    s = world.wait_status(lambda s: len(world.building(s)) == 2 and len(world.scheduled(s)) == 1, "two building, one scheduled")
    (waiting,) = s["running_systems"]["scheduled_jobs"]
    cancelled = world.ctl("cancel", waiting["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: jobs_total(base)["cancelled"] == 1, 10, "the job cancelled while scheduled to be counted")

    result = world.ctl("cancel-run", "build/1")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: world.runs()[0]["state"] == "cancelled", 15, "the run to be cancelled")
    assert sorted(j["state"] for j in world.runs()[0]["jobs"]) == ["cancelled"] * 3
    wait_for(lambda: jobs_total(base)["cancelled"] == 3, 10, "each of the three cancelled jobs to be counted")
    assert jobs_total(base) == {"passed": 0, "failed": 0, "cancelled": 3, "interrupted": 0}


def test_jobs_a_dead_daemon_left_are_counted_at_the_next_start(world: World) -> None:  # noqa: F811
    d = world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    (agent,) = [a for a in world.ctl_json("agents")["agents"] if a["pid"]]
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    os.killpg(agent["pid"], signal.SIGKILL)  # the orphaned job, as a reboot would end it
    d.start()
    wait_for(lambda: d.log_text().count("http on ") == 2, 10, "the new process's http line")
    base = d.http_url()
    assert jobs_total(base) == {"passed": 0, "failed": 0, "cancelled": 0, "interrupted": 1}
