"""The seed's maintenance-mode bullets, against the real daemon, real git and real jobs.

Jobs wait for a release file that the test creates, so the test decides when work ends;
a git wrapper on the daemon's PATH can hold a poll open the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER, Daemon, wait_for

GIT = "/usr/bin/git"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        [GIT, "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


class World:
    def __init__(self, tmp: Path, make_daemon: Any) -> None:
        self.tmp = tmp
        self.make_daemon = make_daemon
        self.repo = tmp / "app"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        self.commit("first")
        self.release = tmp / "release"
        self.release.mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.gate = tmp / "gate"
        wrapper = self.bin / "git"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'if [ -e "{self.gate}" ]; then touch "{self.gate}.entered"; '
            f'while [ -e "{self.gate}" ]; do sleep 0.02; done; fi\n'
            f'exec {GIT} "$@"\n'
        )
        wrapper.chmod(0o755)
        self.d: Daemon | None = None

    def commit(self, message: str) -> str:
        (self.repo / "file.txt").write_text(message)
        git(self.repo, "add", "file.txt")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")

    def job(self, name: str, extra: str = "") -> str:
        wait = f'while [ ! -e "{self.release}/$GO_JOB_NAME" ]; do sleep 0.02; done'
        return (
            f'[[pipelines.stages.jobs]]\nname = "{name}"\n'
            "shell = '''echo started $GO_PIPELINE_NAME/$GO_PIPELINE_COUNTER rev $GO_REVISION_APP; "
            f"{extra}{wait}; echo finished'''\n"
        )

    def config(self, *, agents: int = 2, stages: str | None = None, timer: str | None = None, extra: str = "") -> str:
        stages = stages or (
            '[[pipelines.stages]]\nname = "test"\n'
            + self.job("unit")
            + '[[pipelines.stages]]\nname = "package"\n'
            + self.job("tarball")
        )
        timer_line = f'timer = "{timer}"\n' if timer else ""
        return (
            f'[agents]\ncount = {agents}\ncancel_grace = "500ms"\n'
            f'[maintenance]\nsubsystem_restart_delay = "100ms"\n'
            f'[[materials]]\nname = "app"\nurl = "{self.repo}"\npoll_interval = "200ms"\npoll_timeout = "20s"\n'
            f"{extra}"
            f'[[pipelines]]\nname = "build"\nmaterials = ["app"]\n{timer_line}{stages}'
        )

    def start(self, **kw: Any) -> Daemon:
        self.d = self.make_daemon(config=self.config(**kw), env={"PATH": f"{self.bin}:{os.environ['PATH']}"})
        return self.d

    def status(self) -> dict:
        assert self.d is not None
        return self.d.status()

    def wait_status(self, predicate: Any, what: str, timeout: float = 15) -> dict:
        def check() -> dict | None:
            s = self.status()
            return s if predicate(s) else None

        return wait_for(check, timeout, what)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.d is not None
        return self.d.maintctl(*args)

    def ctl_json(self, *args: str) -> Any:
        result = self.ctl(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def runs(self) -> list[dict]:
        return self.ctl_json("runs", "--limit", "50")["runs"]

    def building(self, s: dict) -> list[str]:
        return [i["job"] for i in s["running_systems"]["building_jobs"]]

    def scheduled(self, s: dict) -> list[str]:
        return [i["job"] for i in s["running_systems"]["scheduled_jobs"]]

    def finish(self, job: str) -> None:
        (self.release / job).touch()


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> World:
    return World(tmp_path, make_daemon)


def job_row(world: World, name: str, counter: int = 1) -> dict:
    run = next(r for r in world.runs() if r["counter"] == counter)
    return next(j for j in run["jobs"] if j["name"] == name)


def test_a_new_revision_triggers_a_run_whose_stages_run_in_order(world: World) -> None:
    world.start()
    s = world.wait_status(lambda s: world.building(s) == ["unit"], "the first stage to build")
    assert s["running_systems"]["building_jobs"][0]["agent"].startswith("agent-")
    world.finish("unit")
    world.wait_status(lambda s: world.building(s) == ["tarball"], "the second stage")
    world.finish("tarball")
    wait_for(lambda: world.runs() and world.runs()[0]["state"] == "passed", 15, "the run to pass")
    (run,) = world.runs()
    assert (run["pipeline"], run["counter"], run["trigger"]) == ("build", 1, "material")
    assert [(j["stage"], j["name"], j["state"]) for j in run["jobs"]] == [
        ("test", "unit", "passed"),
        ("package", "tarball", "passed"),
    ]
    logs = world.ctl("logs", str(run["jobs"][0]["id"]))
    assert logs.returncode == 0
    assert f"started build/1 rev {git(world.repo, 'rev-parse', 'HEAD')}" in logs.stdout and "finished" in logs.stdout


def test_maintenance_stops_polling_triggering_and_idle_agents_and_lets_busy_ones_finish(world: World) -> None:
    world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    assert world.ctl("enable", "--reason", "upgrade").returncode == 0
    s = world.wait_status(lambda s: [x["state"] for x in s["subsystems"]] == ["drained", "drained", "paused", "drained"], "pause")
    assert not s["maintenance"]["safe_to_restart"]

    # no new polls, no new runs: a new revision goes unseen while in maintenance
    world.commit("second")
    refused = world.ctl("trigger", "build")
    assert refused.returncode == 1 and "maintenance_mode" in refused.stderr
    for args in (("pipeline", "pause", "build"), ("reload",)):
        r = world.ctl(*args)
        assert r.returncode == 1 and "maintenance_mode" in r.stderr, (args, r.stderr)

    # the busy agent finishes; the next stage is queued as scheduled jobs and none starts
    world.finish("unit")
    # the next stage's job is reported by the scheduler on its own; it does not hold the drain
    s = world.wait_status(lambda s: s["maintenance"]["safe_to_restart"] and world.scheduled(s), "drained, next stage queued")
    assert world.scheduled(s) == ["tarball"] and world.building(s) == []
    assert [r["counter"] for r in world.runs()] == [1]
    assert s["running_systems"]["material_update_in_progress"] == []

    assert world.ctl("disable").returncode == 0
    # the new revision's run may start on the other agent at the same time
    world.wait_status(lambda s: "tarball" in world.building(s), "the scheduled job to start after disable")
    wait_for(lambda: len(world.runs()) == 2, 15, "the new revision to trigger a run after disable")
    world.finish("tarball")


def test_a_material_update_in_progress_holds_the_drain_and_cannot_be_cancelled(world: World) -> None:
    world.gate.touch()
    world.start()
    wait_for(lambda: Path(f"{world.gate}.entered").exists(), 15, "a poll to start")
    world.ctl("enable")
    s = world.wait_status(lambda s: s["running_systems"]["material_update_in_progress"], "the MDU in status")
    assert s["maintenance"]["state"] == "draining"
    (mdu,) = s["running_systems"]["material_update_in_progress"]
    refused = world.ctl("cancel", mdu["id"])
    assert refused.returncode == 1 and "not_cancellable" in refused.stderr and "partial clone" in refused.stderr
    world.gate.unlink()
    world.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained once the poll ends")


def test_cancel_of_a_building_job_kills_its_process_group_after_the_grace(world: World) -> None:
    world.start(stages='[[pipelines.stages]]\nname = "test"\n' + world.job("stubborn", extra="trap '' TERM; "))
    s = world.wait_status(lambda s: world.building(s) == ["stubborn"], "the job to build")
    item = s["running_systems"]["building_jobs"][0]["id"]
    result = world.ctl("cancel", item, "--reason", "stuck")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: world.runs()[0]["state"] == "cancelled", 15, "the run to end cancelled")
    row = job_row(world, "stubborn")
    assert (row["state"], row["cancelled_by"]) == ("cancelled", USER)
    history = world.ctl_json("history")["entries"]
    assert any(e["action"] == "cancel" and e["item"] == item and e["reason"] == "stuck" for e in history)


def test_cancel_run_cancels_its_building_and_scheduled_jobs(world: World) -> None:
    stage = '[[pipelines.stages]]\nname = "test"\n' + world.job("one") + world.job("two")
    world.start(agents=1, stages=stage)
    world.wait_status(lambda s: len(world.building(s)) == 1 and len(world.scheduled(s)) == 1, "one building, one scheduled")
    result = world.ctl("cancel-run", "build/1")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: world.runs()[0]["state"] == "cancelled", 15, "the run to be cancelled")
    assert sorted(j["state"] for j in world.runs()[0]["jobs"]) == ["cancelled", "cancelled"]
    s = world.status()
    assert world.building(s) == [] and world.scheduled(s) == []


def test_kill_9_while_a_job_builds_then_a_fresh_start_marks_it_interrupted_and_maintenance_off(world: World) -> None:
    d = world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    world.ctl("enable")
    pid = world.ctl_json("agents")["agents"][0]["pid"] or next(a["pid"] for a in world.ctl_json("agents")["agents"] if a["pid"])
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    os.killpg(pid, signal.SIGKILL)  # the orphaned job, as a reboot would end it
    d.start()
    s = world.wait_status(lambda s: all(x["state"] == "running" for x in s["subsystems"]), "all subsystems running")
    assert s["maintenance"]["enabled"] is False
    row = job_row(world, "unit")
    assert row["state"] == "interrupted"
    assert world.runs()[0]["state"] == "interrupted"


def test_the_timer_triggers_runs_except_in_maintenance(world: World) -> None:
    stages = '[[pipelines.stages]]\nname = "quick"\n[[pipelines.stages.jobs]]\nname = "q"\ncommand = ["true"]\n'
    world.start(timer="* * * * * *", stages=stages)
    wait_for(lambda: sum(r["trigger"] == "timer" for r in world.runs()) >= 1, 15, "a timer run")
    world.ctl("enable")
    world.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained")
    before = len(world.runs())
    assert world.d is not None
    wait_for(lambda: world.d.log_text().count("timer trigger of build skipped: maintenance mode") >= 2, 15, "skipped timers")
    assert len(world.runs()) == before


def test_scheduled_jobs_survive_the_restart_that_maintenance_made_safe(world: World) -> None:
    d = world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    world.ctl("enable", "--reason", "upgrade")
    world.finish("unit")
    s = world.wait_status(lambda s: s["maintenance"]["safe_to_restart"] and world.scheduled(s), "safe, next stage queued")
    assert world.scheduled(s) == ["tarball"]
    assert d.stop() == 0  # the restart the operator was waiting for
    d.start()
    s = world.wait_status(lambda s: world.building(s) == ["tarball"], "the scheduled job to run after the restart")
    assert s["maintenance"]["enabled"] is False
    world.finish("tarball")
    wait_for(lambda: world.runs()[0]["state"] == "passed", 15, "the run to pass")


def test_pipelines_as_code_are_merged_and_config_repos_are_not_polled_in_maintenance(world: World, tmp_path: Path) -> None:
    repo = tmp_path / "pipelines"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "deploy.toml").write_text(
        '[[pipelines]]\nname = "deploy"\nmaterials = ["app"]\n'
        '[[pipelines.stages]]\nname = "ship"\n[[pipelines.stages.jobs]]\nname = "ship"\ncommand = ["true"]\n'
    )
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "deploy")
    extra = f'[[config_repos]]\nname = "pipelines"\nurl = "{repo}"\npoll_interval = "200ms"\n'
    world.start(extra=extra)
    wait_for(lambda: "deploy" in [p["name"] for p in world.ctl_json("pipelines")["pipelines"]], 15, "the merged pipeline")
    source = next(p["source"] for p in world.ctl_json("pipelines")["pipelines"] if p["name"] == "deploy")
    assert source == "config repo pipelines"

    world.ctl("enable")
    world.wait_status(lambda s: s["maintenance"]["state"] != "normal", "maintenance")
    (repo / "later.toml").write_text(
        '[[pipelines]]\nname = "later"\n[[pipelines.stages]]\nname = "s"\n'
        '[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["true"]\n'
    )
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "later")
    world.finish("unit")
    world.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained")
    assert "later" not in [p["name"] for p in world.ctl_json("pipelines")["pipelines"]]
    world.ctl("disable")
    wait_for(lambda: "later" in [p["name"] for p in world.ctl_json("pipelines")["pipelines"]], 15, "the repo polled again")
    world.finish("tarball")


def test_agents_and_pipelines_are_listed(world: World) -> None:
    world.start(agents=2)
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    agents = world.ctl_json("agents")["agents"]
    assert sorted(a["state"] for a in agents) == ["building", "idle"]
    busy = next(a for a in agents if a["state"] == "building")
    assert busy["pid"] and "build/1/test/unit" in busy["job"]
    text = world.ctl("agents").stdout
    assert "building" in text and "idle" in text
    (pipeline,) = world.ctl_json("pipelines")["pipelines"]
    assert (pipeline["name"], pipeline["stages"], pipeline["paused"]) == ("build", ["test", "package"], False)
    paused = world.ctl("pipeline", "pause", "build")
    assert paused.returncode == 0 and world.ctl_json("pipelines")["pipelines"][0]["paused"] is True
    refused = world.ctl("trigger", "build")
    assert refused.returncode == 1 and "paused" in refused.stderr
    world.finish("unit")
    world.finish("tarball")
