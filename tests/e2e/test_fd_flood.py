"""A flood of connections does not lock the admin out.

The daemon runs under ``prlimit --nofile=SOFT:HARD`` (low, so that a flood is cheap); the
test opens more idle connections than the hard limit and checks that the control socket
still answers an admin at once, and that running out of descriptors is logged once, with
no traceback.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import fds
from tests.conftest import ROOT, Daemon, wait_for
from tests.daemon.test_units import one, unit

SOFT, HARD = 128, 256
PRLIMIT = shutil.which("prlimit")
pytestmark = pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")

CONFIG = (
    '[[pipelines]]\nname = "p"\n[[pipelines.stages]]\nname = "s"\n'
    '[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["sh", "-c", "echo hello"]\n'
)


def limited(make_daemon: Any) -> Daemon:
    d = make_daemon(config=CONFIG, start=False)
    assert PRLIMIT is not None
    d.cmd = [PRLIMIT, f"--nofile={SOFT}:{HARD}", *d.cmd]  # prlimit execs maintd: same pid
    return d.start()


def open_files_limits(pid: int) -> tuple[int, int]:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture
def flood() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def open_idle(held: list[socket.socket], family: int, address: Any, count: int) -> None:
    """``count`` connections that never send a byte (non-blocking: one the server's backlog
    has no room for is left connecting)."""
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(address)
        held.append(s)


def maintctl(d: Daemon, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(d.socket), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result, time.monotonic() - started


def emfile_lines(d: Daemon) -> list[str]:
    return [x for x in d.log_text().splitlines() if "EMFILE" in x or "Too many open files" in x]


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(make_daemon: Any) -> None:
    d = limited(make_daemon)
    assert d.proc is not None
    assert open_files_limits(d.proc.pid) == (HARD, HARD)
    assert f"open files limit raised from {SOFT} to {HARD}" in d.log_text()


def test_idle_http_connections_past_the_limit_leave_the_admin_an_answer(make_daemon: Any, flood: list[socket.socket]) -> None:
    d = limited(make_daemon)
    assert d.proc is not None
    host, _, port = d.http_url().removeprefix("http://").rpartition(":")  # waits for the http line
    open_idle(flood, socket.AF_INET, (host, int(port)), HARD + 100)
    # The daemon takes connections up to its cap (a quarter of 256 here), then leaves the
    # rest in the backlog; without a cap it took them until it had no descriptor left.
    wait_for(lambda: fd_count(d.proc.pid) >= HARD // 4, 15, "the daemon to accept the flood")  # type: ignore[union-attr]

    for command in (["status"], ["trigger", "p"], ["enable", "--reason", "flood"], ["disable"]):
        result, took = maintctl(d, *command)
        assert result.returncode == 0, (command, result.stderr)
        assert took < 5, (command, took)
    # A job needs descriptors too (pipes, its log): the reserve leaves them.
    runs = wait_for(
        lambda: [r for r in d.client().request("runs")["result"]["runs"] if r["state"] == "passed"], 15, "the run to pass"
    )
    assert runs[0]["pipeline"] == "p"
    assert fd_count(d.proc.pid) < HARD
    assert re.findall(r"at most (\d+) connections at a time", d.log_text()) == [str(HARD // 4)]
    assert "Traceback" not in d.log_text()
    assert len(emfile_lines(d)) <= 1, emfile_lines(d)


def test_running_out_of_descriptors_is_logged_once_a_minute_without_a_traceback(
    make_daemon: Any, flood: list[socket.socket]
) -> None:
    # Control connections are not capped (only root, the daemon's user and the admin group
    # may open the socket): a flood of them runs the daemon out of descriptors for real.
    d = limited(make_daemon)
    assert d.proc is not None
    open_idle(flood, socket.AF_UNIX, str(d.socket), HARD + 50)
    wait_for(lambda: emfile_lines(d), 15, "the daemon to run out of descriptors")
    # Watch the log while accept keeps failing (every 100 ms): it must stay at one line,
    # where trio's own accept loop logged a traceback each time.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert len(emfile_lines(d)) == 1, emfile_lines(d)
        time.sleep(0.1)
    line = emfile_lines(d)[0]
    assert "control socket: cannot accept a connection: EMFILE" in line and f"open files limit {HARD}" in line
    assert "Traceback" not in d.log_text()
    # Once the flood ends the daemon accepts again.
    for s in flood:
        s.close()
    flood.clear()
    result, _ = maintctl(d, "status")
    assert result.returncode == 0, result.stderr
    assert d.proc.poll() is None


def test_the_unit_gives_more_descriptors_than_the_http_cap_and_the_reserve() -> None:
    limit = int(one(unit("maintd.service")["Service"], "LimitNOFILE"))
    assert limit >= fds.HTTP_MAX_CONNECTIONS + fds.FD_RESERVE
    assert fds.http_connection_cap(limit) == fds.HTTP_MAX_CONNECTIONS
    assert fds.http_connection_cap(1024) == 1024 - fds.FD_RESERVE  # systemd's default soft limit
