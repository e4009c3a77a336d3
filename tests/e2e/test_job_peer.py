"""A job's own processes cannot change maintd's state (issue 9, item 10).

Jobs run as the daemon's user, an admin: a job whose shell runs ``maintctl enable`` (or
disable, trigger, pipeline pause, reload, cancel-run, cancel, agent disable) was obeyed and audited as
``enable by root``. Each is refused ``forbidden`` with the reason, and the audit log names
the peer's pid and command line, for refused and accepted requests alike.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.test_jobserver import World

ATTEMPTS = (
    "enable --reason from-a-job",
    "disable",
    "trigger build",
    "pipeline pause build",
    "reload",
    "cancel-run build/1",
    "cancel build/1/test/meddler",
    "forget batch",
    "agent disable agent-1",
)


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> World:
    return World(tmp_path, make_daemon)


def test_a_job_running_maintctl_is_refused_and_the_audit_log_names_the_process(world: World, tmp_path: Path) -> None:
    out, done = tmp_path / "job.out", tmp_path / "job.done"
    socket = tmp_path / "d0" / "run" / "control.sock"  # make_daemon's first daemon
    tries = "".join(
        # this checkout's maintctl (a job's environment is maintd's own, not the test's)
        f'PYTHONPATH="{ROOT}" "{sys.executable}" -m maintctl --socket "{socket}" {args} >> "{out}" 2>&1; '
        f'echo "rc=$?" >> "{out}"; '
        for args in ATTEMPTS
    )
    stages = (
        '[[pipelines.stages]]\nname = "test"\n'
        f"[[pipelines.stages.jobs]]\nname = \"meddler\"\nshell = '''{tries}touch \"{done}\"'''\n"
    )
    d = world.start(stages=stages)
    wait_for(done.exists, 60, "the job's maintctl attempts")
    text = out.read_text()
    assert text.count("rc=1") == len(ATTEMPTS), text
    assert text.count("forbidden") == len(ATTEMPTS), text
    assert "refused to a job's own processes" in text and "a job may not change maintd's state" in text
    s = world.status()
    assert not s["maintenance"]["enabled"]

    # The operator's own request is taken, and audited with its process.
    assert d.maintctl("enable", "--reason", "operator").returncode == 0
    history = world.ctl_json("history")["entries"]
    refused = [e for e in history if e["action"] == "forbidden"]
    assert sorted(e["item"] for e in refused) == sorted(
        ["enable", "disable", "trigger", "pipeline_pause", "reload", "cancel_run", "cancel", "forget", "agent_disable"]
    )
    enable = next(e for e in refused if e["item"] == "enable")
    assert (
        "pid " in enable["detail"]
        and "-m maintctl --socket" in enable["detail"]
        and "enable --reason from-a-job" in enable["detail"]
    )
    (accepted,) = [e for e in history if e["action"] == "enable"]
    assert accepted["reason"] == "operator" and "-m maintctl enable --reason operator" in accepted["detail"]
