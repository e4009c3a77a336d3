"""A cancel of an external's item that timed out ends; the next one is sent (issue 9, item 10)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, wait_for
from tests.e2e.test_drain import register

CONFIG = '[control]\ncancel_timeout = "300ms"\n'
JOB = {"id": "job-1", "kind": "building_job", "description": "build #1", "cancellable": True}


def test_after_a_cancel_times_out_the_next_cancel_reaches_the_process(make_daemon) -> None:
    d = make_daemon(config=CONFIG)
    sub = register(d, "slow", [JOB])
    wait_for(lambda: d.status()["running_systems"]["building_jobs"], 10, "the job")

    first = d.maintctl("cancel", "slow/job-1")  # the process never answers this one
    assert first.returncode == 1 and "timeout" in first.stderr, first.stderr
    assert sub.next_event(lambda m: m.get("type") == "cancel")["item"] == "job-1"

    second = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(d.socket), "cancel", "slow/job-1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        asked = sub.next_event(lambda m: m.get("type") == "cancel")
        assert asked["item"] == "job-1"
        sub.send(type="cancel_result", item="job-1", ok=True)
        out, err = second.communicate(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, err
    assert "already waiting" not in err and "cancelled slow/job-1" in out
