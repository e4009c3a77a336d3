"""Item 7 of issue 9, against real daemons, real git repositories and real jobs.

(a) Start-up with a maintd.toml nested too deeply, a material url holding a NUL, or a
    duration out of bounds: exit 2 and one line on stderr, never a traceback.
(b) ``maintctl reload`` and SIGHUP with such a file, while a job is building: refused with
    the reason (reply and log line); the daemon, its job and its configuration go on.
(c) A config repo commit with a file of 4 KiB of nested arrays: that file is skipped with a
    warning; no repository's pipelines and no pause are lost.
(d) A paused pipeline stays paused after a daemon restart, and config-repo pipelines come
    back after it without a new commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon, wait_for
from tests.e2e.test_security import base_config, config_repo_section, ctl_json, git, make_repo, pipeline_names, pipeline_toml

DEEP = "x = " + "[" * 2000 + "]" * 2000 + "\n"  # 4 KiB of nested arrays

BAD_FILES = {
    "deep": (DEEP, "nested too deeply"),
    "deep-pipeline": (pipeline_toml("p") + "timer = " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    "nul-url": ('[[materials]]\nname = "m"\nurl = "/srv/a\\u0000b"\n', "a url cannot hold a NUL"),
    "poll-interval-1e38-days": (
        '[[materials]]\nname = "m"\nurl = "/srv/a"\npoll_interval = "1' + "0" * 38 + 'd"\n',
        "is too long: at most 30d - at `$.materials[0].poll_interval`",
    ),
    "poll-interval-1ms": (
        '[[materials]]\nname = "m"\nurl = "/srv/a"\npoll_interval = "1ms"\n',
        "is too short: at least 100ms - at `$.materials[0].poll_interval`",
    ),
    "job-timeout": (
        pipeline_toml("p", body='command = ["true"]\ntimeout = "400d"\n'),
        "timeout '400d' is too long: at most 30d - at `$.pipelines[0].stages[0].jobs[0].timeout`",
    ),
    "cancel-grace": ('[agents]\ncancel_grace = "999999d"\n', "at most 30d - at `$.agents.cancel_grace`"),
    "stop-drain": ('[daemon]\nstop_drain_timeout = "31d"\n', "at most 30d - at `$.daemon.stop_drain_timeout`"),
    "restart-delay": (
        '[maintenance]\nsubsystem_restart_delay = "100000000d"\n',
        "at most 30d - at `$.maintenance.subsystem_restart_delay`",
    ),
}


@pytest.mark.parametrize("text, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_at_start_up_is_one_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "maintd.toml"
    config.write_text(text)
    cmd = [sys.executable, "-m", "daemon", "--config", str(config), "--socket", str(tmp_path / "run" / "s.sock")]
    cmd += ["--state-dir", str(tmp_path / "state"), "--http", "off"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("maintd started with the bad file (it was accepted)")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"maintd: {config}: ") and expected in lines[0], lines[0]


def building_config(tmp_path: Path) -> tuple[str, Path]:
    fifo = tmp_path / "release.fifo"
    os.mkfifo(fifo)
    job = pipeline_toml("hold", body=f'shell = "cat {fifo} > /dev/null"\n')
    return base_config(job + pipeline_toml("other")), fifo


def release(fifo: Path) -> None:
    fd = os.open(fifo, os.O_WRONLY)  # the job has it open for reading: does not block
    os.close(fd)


def building(d: Daemon) -> list[str]:
    return [i["job"] for i in ctl_json(d, "status")["running_systems"]["building_jobs"]]


@pytest.mark.parametrize("how", ["maintctl", "sighup"])
@pytest.mark.parametrize("bad", ["deep", "nul-url", "poll-interval-1e38-days"])
def test_a_reload_that_fails_changes_nothing_and_says_why(make_daemon: Any, tmp_path: Path, how: str, bad: str) -> None:
    config, fifo = building_config(tmp_path)
    d = make_daemon(config=config)
    ctl_json(d, "trigger", "hold")
    wait_for(lambda: building(d) == ["j"], 20, "the job building")
    before = ctl_json(d, "pipelines")["pipelines"]

    text, expected = BAD_FILES[bad]
    (d.tmp / "maintd.toml").write_text(text)
    if how == "maintctl":
        reply = d.client().request("reload")
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == "bad_config" and expected in reply["error"]["message"], reply
        assert "\n" not in reply["error"]["message"]
    else:
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
    line = wait_for(
        lambda: [x for x in d.log_text().splitlines() if "reload by " in x and " refused: " in x], 20, "the refusal logged"
    )
    assert expected in line[0], line
    assert "Traceback" not in d.log_text()

    assert d.proc is not None and d.proc.poll() is None, d.log_text()
    assert ctl_json(d, "pipelines")["pipelines"] == before
    assert building(d) == ["j"]
    release(fifo)
    runs = wait_for(lambda: [r for r in ctl_json(d, "runs", "--pipeline", "hold")["runs"] if r["state"] == "passed"], 20)
    assert runs[0]["jobs"][0]["state"] == "passed"


def test_a_deeply_nested_config_repo_file_is_skipped_and_no_repo_or_pause_is_lost(make_daemon: Any, tmp_path: Path) -> None:
    good = make_repo(tmp_path / "good", {"good.toml": pipeline_toml("from-good")})
    pipes = make_repo(tmp_path / "pipes", {"a.toml": pipeline_toml("from-pipes")})
    repos = config_repo_section(good).replace('name = "pipelines"', 'name = "good"') + config_repo_section(pipes)
    d = make_daemon(config=base_config(repos))
    wait_for(lambda: pipeline_names(d) == {"from-good", "from-pipes"}, 20, "both repos merged")
    assert d.client().request("pipeline_pause", pipeline="from-good")["ok"]

    (pipes / "deep.toml").write_text(DEEP)
    git(pipes, "add", ".")
    git(pipes, "commit", "-q", "-m", "deep")
    revision = git(pipes, "rev-parse", "HEAD")
    wait_for(lambda: f"config repo pipelines at {revision[:12]}: 1 pipeline(s)" in d.log_text(), 20, "the commit merged")
    log = d.log_text()
    assert f"config repo pipelines, deep.toml at {revision[:12]}: arrays or tables nested too deeply; file skipped" in log
    assert "RecursionError" not in log and "Traceback" not in log
    shown = {p["name"]: p["paused"] for p in ctl_json(d, "pipelines")["pipelines"]}
    assert shown == {"from-good": True, "from-pipes": False}
    assert not [s for s in ctl_json(d, "status")["subsystems"] if s["state"] == "failed"]


def test_a_pause_and_the_config_repo_pipelines_survive_a_daemon_restart(make_daemon: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "pipes", {"a.toml": pipeline_toml("from-repo")})
    config = base_config(config_repo_section(repo) + pipeline_toml("from-file"))
    d = make_daemon(config=config)
    wait_for(lambda: pipeline_names(d) == {"from-file", "from-repo"}, 20, "the repo merged")
    for name in ("from-file", "from-repo"):
        reply = d.client().request("pipeline_pause", pipeline=name)
        assert reply["ok"], reply
    assert d.stop() == 0

    again = Daemon(d.tmp, config=config).start()  # the same state directory, no new commit
    try:
        wait_for(lambda: pipeline_names(again) == {"from-file", "from-repo"}, 20, "the repo's pipelines back")
        shown = {p["name"]: p["paused"] for p in ctl_json(again, "pipelines")["pipelines"]}
        assert shown == {"from-file": True, "from-repo": True}
        refused = again.client().request("trigger", pipeline="from-file")
        assert refused["ok"] is False and "paused" in refused["error"]["message"], refused
        history = ctl_json(again, "history")
        assert json.dumps(history).count("pipeline_pause") == 2
    finally:
        again.stop()
