"""systemd/maintd-agent.service: it verifies, it is locked down, and its stop is a warm shutdown.

As tests/daemon/test_units.py does for maintd's units (a throw-away root for ``verify``,
``security --offline``); skipped without systemd-analyze, except under CI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.daemon.test_units import MAX_EXPOSURE, STUB_TARGETS, UNITS, one, timespan, tool, unit


def test_the_agent_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    shutil.copy(UNITS / "maintd-agent.service", system / "maintd-agent.service")
    bin_dir = root / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "maintd-agent").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "maintd-agent").chmod(0o755)
    lib = root / "usr" / "lib" / "systemd" / "system"
    lib.mkdir(parents=True)
    for target in STUB_TARGETS:
        (lib / target).write_text("[Unit]\nDescription=stub\nDefaultDependencies=no\n")
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "maintd-agent.service"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def test_the_agent_unit_exposure_is_low() -> None:
    analyze = tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNITS / "maintd-agent.service")], capture_output=True, timeout=60
    )
    out = result.stdout.decode(errors="replace")
    match = re.search(r"Overall exposure level for maintd-agent\.service: (\d+(?:\.\d+)?)", out)
    assert match, out + result.stderr.decode(errors="replace")
    assert float(match.group(1)) <= MAX_EXPOSURE, out


def test_the_agent_stops_warm_and_keeps_its_state() -> None:
    service = unit("maintd-agent.service")["Service"]
    # SIGTERM to the worker only (Celery's warm shutdown); to a pool process it is a cancel.
    assert one(service, "KillSignal") == "SIGTERM" and one(service, "KillMode") == "mixed"
    assert timespan(one(service, "TimeoutStopSec")) >= 600  # running jobs finish first
    assert one(service, "StateDirectory") == "maintd-agent"
    assert one(service, "EnvironmentFile") == "-/etc/maintd/agent.env"
    assert one(service, "ExecStart").startswith("/usr/local/bin/maintd-agent --work-dir %S/maintd-agent ")
    assert one(service, "User") == "maintd-agent"


def test_the_agent_user_is_made_by_sysusers(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    made = subprocess.run(
        [sysusers, f"--root={root}", str(UNITS / "maintd-agent.sysusers")], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert re.search(r"^maintd-agent:x:\d+:\d+:.*:/var/lib/maintd-agent:", (root / "etc" / "passwd").read_text(), re.M)
