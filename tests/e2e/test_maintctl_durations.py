"""maintctl's duration arguments are bounded: a huge one is a usage error, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Daemon

HUGE = ["100000000d", "9" * 400 + "d", "367d"]  # 400 digits parse to inf


@pytest.mark.parametrize("value", HUGE)
def test_wait_timeout_past_the_bound_is_a_usage_error(daemon: Daemon, value: str) -> None:
    # Maintenance is off: a wait with a valid timeout would block, so the old code reached
    # the socket timeout with the huge value and died of OverflowError (exit 1).
    waited = daemon.maintctl("wait", "--timeout", value, timeout=15)
    assert waited.returncode == 2, waited
    assert "at most 366d" in waited.stderr
    assert "Traceback" not in waited.stderr


@pytest.mark.parametrize("value", HUGE)
def test_enable_deadline_past_the_bound_is_refused_before_the_daemon_sees_it(daemon: Daemon, value: str) -> None:
    enabled = daemon.maintctl("enable", "--deadline", value)
    assert enabled.returncode == 2, enabled
    assert "at most 366d" in enabled.stderr
    assert "Traceback" not in enabled.stderr
    # Nothing reached the daemon (an inf deadline used to go as JSON null: maintenance on, no deadline).
    assert daemon.client().request("status")["result"]["maintenance"]["enabled"] is False


def test_durations_up_to_the_bound_are_taken(daemon: Daemon) -> None:
    enabled = daemon.maintctl("enable", "--deadline", "366d")
    assert enabled.returncode == 0, enabled
    assert daemon.client().request("status")["result"]["maintenance"]["deadline"] is not None
    waited = daemon.maintctl("wait", "--timeout", "366d", timeout=15)  # nothing runs: safe at once
    assert waited.returncode == 0, waited


@pytest.mark.parametrize("value", ["-5s", "nan", "inf", "1e9", ""])
@pytest.mark.parametrize("option", ["wait --timeout", "enable --deadline", "enable --ttl"])
def test_negative_nan_and_inf_are_not_durations(tmp_path: Path, option: str, value: str) -> None:
    command, flag = option.split()
    result = subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(tmp_path / "none.sock"), command, f"{flag}={value}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "not a duration" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0", "0s", "367d"])
def test_a_ttl_of_zero_or_past_the_bound_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(tmp_path / "none.sock"), "enable", f"--ttl={value}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert ("more than zero" in result.stderr or "at most 366d" in result.stderr) and "Traceback" not in result.stderr
