"""A job is every process it starts, against the real daemon, on both tracking mechanisms.

A job's shell starts ``sleep`` in a session of its own (``setsid``: out of the job's process
group, which is all the daemon used to track) and writes its pid down; the test reads
``/proc`` and the daemon's status. The ``cgroup`` variant is skipped where no writable
cgroup2 exists (see ``tests/daemon/test_jobtree.py``: under ``CI=true`` as root it fails).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_for
from tests.daemon.test_jobtree import MECHANISMS, alive, cgroup_or_skip

GIT = "/usr/bin/git"


def escape(tmp: Path) -> str:
    """A job that starts ``sleep`` in a session of its own and writes both pids down."""
    p, m = tmp / "escaped.pid", tmp / "main.pid"
    return f'setsid sleep 300 & echo $! > "{p}.tmp"; mv "{p}.tmp" "{p}"; echo $$ > "{m}.tmp"; mv "{m}.tmp" "{m}"'


def config(tmp: Path, mechanism: str, shell: str, *, leftovers: str = "kill", grace: str = "500ms") -> str:
    repo = tmp / "app"
    repo.mkdir()
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run([GIT, "init", "-q", "-b", "main"], **run)  # type: ignore[call-overload]
    (repo / "f").write_text("x")
    subprocess.run([GIT, "add", "f"], **run)  # type: ignore[call-overload]
    commit = [GIT, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"]
    subprocess.run(commit, **run)  # type: ignore[call-overload]
    return (
        f'[agents]\ncount = 1\ncancel_grace = "{grace}"\nprocess_tracking = "{mechanism}"\n'
        f'leftover_processes = "{leftovers}"\n'
        f'[maintenance]\nsubsystem_restart_delay = "100ms"\n'
        f'[[materials]]\nname = "app"\nurl = "{repo}"\npoll_interval = "200ms"\n'
        f'[[pipelines]]\nname = "build"\nmaterials = ["app"]\n'
        f'[[pipelines.stages]]\nname = "s"\n[[pipelines.stages.jobs]]\nname = "j"\n'
        f"shell = '''{shell}'''\n"
    )


def building(d: Daemon) -> list[str]:
    return [i["job"] for i in d.status()["running_systems"]["building_jobs"]]


#: pids a test read: killed at its end whatever happened (a failed test leaves nothing running)
_seen: list[int] = []


def pid_in(path: Path) -> int:
    pid = wait_for(lambda: path.exists() and int(path.read_text()), 15, f"a pid in {path}")
    _seen.append(pid)
    return pid


@pytest.fixture(autouse=True)
def _kill_what_was_seen() -> Any:
    yield
    while _seen:
        pid = _seen.pop()
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def job_events(d: Daemon) -> list[tuple[str, str | None]]:
    with sqlite3.connect(d.state / "maintd.db") as db:
        return db.execute("SELECT state, detail FROM job_events ORDER BY id").fetchall()


@pytest.fixture(params=MECHANISMS)
def mechanism(request: Any, tmp_path: Path) -> str:
    if request.param == "cgroup":
        cgroup_or_skip(tmp_path / "probe")
    return request.param


def test_an_escaped_process_keeps_its_job_building_and_the_server_unsafe(
    make_daemon: Any, tmp_path: Path, mechanism: str
) -> None:
    escaped_file, main_file = tmp_path / "escaped.pid", tmp_path / "main.pid"
    d = make_daemon(config=config(tmp_path, mechanism, escape(tmp_path), leftovers="wait"))
    escaped = pid_in(escaped_file)
    main = pid_in(main_file)
    wait_for(lambda: not alive(main), 15, "the job's main process to exit")
    assert d.maintctl("enable", "--reason", "upgrade").returncode == 0
    assert alive(escaped)
    s = d.status()
    assert [i["job"] for i in s["running_systems"]["building_jobs"]] == ["j"]
    assert s["maintenance"]["safe_to_restart"] is False
    shown = d.maintctl("status")
    label = "cgroup v2" if mechanism == "cgroup" else "subreaper"
    assert f"Job tracking: {label}" in shown.stdout
    metrics = urllib.request.urlopen(d.http_url() + "/metrics", timeout=10).read().decode()
    assert f'maintd_job_tracking_info{{mechanism="{mechanism}"}} 1.0' in metrics
    os.kill(escaped, signal.SIGKILL)
    wait_for(lambda: d.status()["maintenance"]["safe_to_restart"], 15, "safe to restart once the last process ended")
    assert ("passed", None) in job_events(d)


def test_leftovers_are_killed_after_cancel_grace_and_the_log_says_so(make_daemon: Any, tmp_path: Path, mechanism: str) -> None:
    escaped_file = tmp_path / "escaped.pid"
    d = make_daemon(config=config(tmp_path, mechanism, escape(tmp_path)))
    escaped = pid_in(escaped_file)
    wait_for(lambda: ("passed", "killed 1 leftover process") in job_events(d), 15, "the job to pass with its leftover killed")
    assert not alive(escaped)
    logs = d.maintctl("logs", "1")
    assert "maintd: killed 1 leftover process" in logs.stdout


def test_kill_9_of_maintd_then_restart_ends_the_tree_before_anything_is_said(
    make_daemon: Any, tmp_path: Path, mechanism: str
) -> None:
    escaped_file, main_file = tmp_path / "escaped.pid", tmp_path / "main.pid"
    shell = escape(tmp_path) + "; exec sleep 300"
    d = make_daemon(config=config(tmp_path, mechanism, shell))
    escaped, main = pid_in(escaped_file), pid_in(main_file)
    assert d.maintctl("enable").returncode == 0
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    assert alive(escaped) and alive(main)  # what maintd's death leaves running
    d.start()  # returns once the control socket answers
    assert not alive(escaped) and not alive(main)
    assert "interrupted" in [state for state, _ in job_events(d)]
    log = d.log_text()
    assert "killed 2 process(es) left running by jobs of an earlier maintd" in log
    assert log.index("killed 2 process(es)") < log.index("marked interrupted")
    s = d.status()
    assert s["running_systems"]["building_jobs"] == []
