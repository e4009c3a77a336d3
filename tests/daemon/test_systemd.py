"""The daemon's systemd side, against the real daemon and a real ``$NOTIFY_SOCKET``.

The test plays the service manager: it binds an AF_UNIX datagram socket, points
``NOTIFY_SOCKET`` at it, and reads what the daemon says. Every wait is on that socket, on
the control socket or on the process, each with a deadline; jobs wait on a release file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.status import MaintenanceInfo, RunningSystems, Status, SubsystemInfo
from actors.types import InFlightItem
from daemon import stopping
from daemon.notify import Notifier, describe
from daemon.times import hhmm
from tests.conftest import ROOT, Daemon, wait_for

Message = dict[str, str]


class NotifySocket:
    """The service manager's end of ``$NOTIFY_SOCKET``; ``seen`` keeps every message, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[Message] = []

    def _recv(self, timeout: float) -> Message | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.seen.append(message)
        return message

    def wait(self, predicate: Callable[[Message], bool], what: str, timeout: float = 15.0) -> Message:
        """The next message that satisfies ``predicate``, read within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._recv(remaining)
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last messages: {self.seen[-8:]}")

    def drain_queue(self) -> list[Message]:
        """Whatever is queued now (a local datagram is queued by the time sendto returns)."""
        got = []
        while (message := self._recv(0.001)) is not None:
            got.append(message)
        return got

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.seen if "STATUS" in m]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def building(s: dict[str, Any]) -> list[str]:
    return sorted(i["job"] for i in s["running_systems"]["building_jobs"])


def pipeline_config(release: Path, jobs: tuple[str, ...] = ("unit",), stop_drain_timeout: str = "30s") -> str:
    """One pipeline whose jobs run until ``release/JOB`` exists."""
    text = (
        f'[daemon]\nstop_drain_timeout = "{stop_drain_timeout}"\n'
        f'[agents]\ncount = {len(jobs)}\ncancel_grace = "500ms"\n'
        '[[pipelines]]\nname = "build"\n[[pipelines.stages]]\nname = "test"\n'
    )
    for job in jobs:
        wait = f'while [ ! -e "{release}/$GO_JOB_NAME" ]; do sleep 0.02; done'
        text += f"[[pipelines.stages.jobs]]\nname = \"{job}\"\nshell = '''echo started; {wait}; echo finished'''\n"
    return text


def start_building(make_daemon: Any, tmp_path: Path, notify: NotifySocket, **kw: Any) -> tuple[Daemon, Path]:
    release = tmp_path / "release"
    release.mkdir()
    jobs = kw.get("jobs", ("unit",))
    d = make_daemon(config=pipeline_config(release, **kw), env={"NOTIFY_SOCKET": str(notify.path)})
    notify.wait(lambda m: m.get("READY") == "1", "READY=1")
    assert d.maintctl("trigger", "build").returncode == 0
    d.wait_status(lambda s: building(s) == sorted(jobs), "the jobs to build", timeout=15)
    notify.wait(lambda m: m.get("STATUS") == f"normal: maintenance off; {len(jobs)} building", "the building STATUS line")
    return d, release


def job_states(make_daemon: Any, state_dir: Path) -> dict[str, str]:
    """The stored job results, read through a fresh daemon on the same state directory."""
    d = make_daemon("--state-dir", str(state_dir))
    runs = d.maintctl("runs", "--json")
    assert runs.returncode == 0, runs.stderr
    return {j["name"]: j["state"] for r in json.loads(runs.stdout)["runs"] for j in r["jobs"]}


# -- READY, STATUS, WATCHDOG, STOPPING -------------------------------------------------------


def test_ready_comes_once_the_control_socket_answers(make_daemon: Any, notify_socket: NotifySocket) -> None:
    d = make_daemon(start=False, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    starter = threading.Thread(target=d.start)
    starter.start()
    try:
        notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(d.socket))  # already served when READY=1 is sent
    finally:
        starter.join(20)
    first = notify_socket.wait(lambda m: "STATUS" in m, "the first STATUS line")
    assert first["STATUS"] == "normal: maintenance off; idle"
    assert "STOPPING" not in str(notify_socket.seen)


def test_status_lines_tell_the_drain_in_words_and_only_when_they_change(make_daemon: Any, notify_socket: NotifySocket) -> None:
    d = make_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait(lambda m: m.get("STATUS") == "normal: maintenance off; idle", "the idle line")
    sub = d.client()
    assert sub.request("register", name="exporter")["ok"]
    sub.send(type="in_flight", items=[{"id": "j1", "kind": "building_job", "description": "export #1", "cancellable": True}])
    notify_socket.wait(lambda m: m.get("STATUS") == "normal: maintenance off; 1 building", "the external job counted")

    admin = d.client()
    assert admin.request("enable", reason="upgrade")["ok"]
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    notify_socket.wait(
        lambda m: (
            m.get("STATUS") == "draining: waiting for exporter (1 building job); materials, scheduler, agents, config drained"
            "; no estimate (1 item(s) without history)"
        ),
        "the line that names what the drain waits for",
    )
    # An item with its subsystem's own expected end: the line gives the drain's ETA, as clock times.
    end = time.time() + 600
    sub.send(type="in_flight", items=[{"id": "j1", "kind": "building_job", "cancellable": True, "expected_end": end}])
    notify_socket.wait(
        lambda m: m.get("STATUS", "").endswith(f"config drained; expected drained by {hhmm(end)} (p90 {hhmm(end)})"),
        "the line with the drain's ETA",
    )
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    notify_socket.wait(lambda m: m.get("STATUS") == "drained: safe to restart", "safe to restart")
    assert admin.request("disable")["ok"]
    notify_socket.wait(lambda m: m.get("STATUS") == "normal: maintenance off; idle", "maintenance off again")

    lines = notify_socket.statuses()
    assert all(a != b for a, b in itertools.pairwise(lines)), lines
    assert not any("STOPPING" in m for m in notify_socket.seen)


def test_watchdog_pings_come_every_half_watchdog_usec(make_daemon: Any, notify_socket: NotifySocket) -> None:
    make_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
    first = notify_socket.wait(lambda m: m.get("WATCHDOG") == "1", "a first ping")
    t0 = time.monotonic()
    for _ in range(3):
        notify_socket.wait(lambda m: m.get("WATCHDOG") == "1", "the next ping", timeout=5)
    assert first and time.monotonic() - t0 >= 0.25  # three intervals of 0.1s, with slack for the clock


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(make_daemon: Any, notify_socket: NotifySocket) -> None:
    d = make_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
    assert "is not this process" in d.log_text() and "watchdog: pinging" not in d.log_text()
    assert d.maintctl("status").returncode == 0
    assert not any("WATCHDOG" in m for m in notify_socket.seen + notify_socket.drain_queue())


def test_stopping_is_sent_only_after_sigterm(make_daemon: Any, notify_socket: NotifySocket) -> None:
    d = make_daemon(config="[daemon]\n", env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
    assert d.maintctl("enable").returncode == 0
    notify_socket.wait(lambda m: m.get("STATUS") == "drained: safe to restart", "drained")
    assert d.maintctl("disable").returncode == 0
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)  # a reload is not a stop
    wait_for(lambda: "configuration reloaded" in d.log_text(), 10, "the reload")
    assert not any("STOPPING" in m for m in notify_socket.seen + notify_socket.drain_queue())

    d.proc.send_signal(signal.SIGTERM)
    notify_socket.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
    assert d.proc.wait(15) == 0
    assert not d.socket.exists()


# -- the stop drain ----------------------------------------------------------------------


def test_sigterm_with_building_jobs_drains_first_and_the_jobs_pass(
    make_daemon: Any, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    d, release = start_building(make_daemon, tmp_path, notify_socket, jobs=("lint", "unit"))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    notify_socket.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
    notify_socket.wait(
        lambda m: m.get("STATUS", "").startswith("stopping, draining: waiting for agents (2 building jobs)"), "the stop drain"
    )
    s = d.status()  # the socket still serves during the drain
    assert s["maintenance"]["updated_by"] == "maintd" and s["maintenance"]["reason"] == stopping.STOP_REASON
    assert d.proc.poll() is None

    assert not any("EXTEND_TIMEOUT_USEC" in m for m in notify_socket.seen + notify_socket.drain_queue())
    (release / "lint").touch()
    notify_socket.wait(
        lambda m: m.get("STATUS", "").startswith("stopping, draining: waiting for agents (1 building job)"), "one left"
    )
    extend = notify_socket.wait(lambda m: "EXTEND_TIMEOUT_USEC" in m, "a timeout extension for the progress")
    assert stopping.STOP_TIMEOUT * 1e6 < int(extend["EXTEND_TIMEOUT_USEC"]) <= (30 + stopping.STOP_TIMEOUT) * 1e6
    assert d.proc.poll() is None
    (release / "unit").touch()
    notify_socket.wait(lambda m: m.get("STATUS") == "stopping, drained: safe to restart", "drained")
    assert d.proc.wait(15) == 0
    log = d.log_text()
    assert "stop stage 1/2 done: drained" in log and "stop stage 2/2" in log and "Traceback" not in log
    assert job_states(make_daemon, d.state) == {"lint": "passed", "unit": "passed"}


def test_a_drain_that_does_not_end_stops_after_stop_drain_timeout(
    make_daemon: Any, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    d, _release = start_building(make_daemon, tmp_path, notify_socket, stop_drain_timeout="1s")
    assert d.proc is not None
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(1 + stopping.STOP_TIMEOUT + 10) == 0
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.0
    log = d.log_text()
    assert "stop stage 1/2: not drained after 1s; stopping anyway with 1 blocking item(s): agents/" in log
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in notify_socket.seen + notify_socket.drain_queue())
    assert job_states(make_daemon, d.state) == {"unit": "interrupted"}


def test_a_second_sigterm_during_the_drain_stops_at_once(make_daemon: Any, tmp_path: Path, notify_socket: NotifySocket) -> None:
    d, _release = start_building(make_daemon, tmp_path, notify_socket, stop_drain_timeout="10m")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGINT)  # SIGINT is a stop like SIGTERM
    notify_socket.wait(lambda m: m.get("STATUS", "").startswith("stopping, draining"), "the stop drain")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(stopping.STOP_TIMEOUT + 10) == 0
    assert "received SIGTERM again: stopping now" in d.log_text()


def test_sigterm_when_already_drained_stops_without_waiting(make_daemon: Any, notify_socket: NotifySocket) -> None:
    d = make_daemon(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert d.maintctl("enable").returncode == 0
    notify_socket.wait(lambda m: m.get("STATUS") == "drained: safe to restart", "drained")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert "stop stage 1/2: already drained" in d.log_text()


def test_maintctl_disable_during_the_stop_drain_stops_at_once(
    make_daemon: Any, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    d, _release = start_building(make_daemon, tmp_path, notify_socket, stop_drain_timeout="10m")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    notify_socket.wait(lambda m: m.get("STATUS", "").startswith("stopping, draining"), "the stop drain")
    assert d.maintctl("disable").returncode == 0
    assert d.proc.wait(stopping.STOP_TIMEOUT + 10) == 0
    assert "maintenance mode was turned off during the stop drain; stopping now" in d.log_text()


# -- socket activation -----------------------------------------------------------------------

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(SOCKET_ACTIVATE is None and not os.environ.get("CI"), reason="systemd-socket-activate is not installed")
def test_socket_activation_serves_the_socket_systemd_passed(tmp_path: Path, notify_socket: NotifySocket) -> None:
    assert SOCKET_ACTIVATE is not None, "systemd-socket-activate is missing (CI is set: it must be installed)"
    path = tmp_path / "activated" / "control.sock"
    path.parent.mkdir()
    fallback = tmp_path / "not-used.sock"
    log_path = tmp_path / "maintd.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)}
    # systemd-socket-activate passes on only LISTEN_* and what -E names.
    cmd = [SOCKET_ACTIVATE, "-l", str(path), "--fdname=control", "-E", f"NOTIFY_SOCKET={notify_socket.path}"]
    cmd += ["-E", f"PATH={os.environ['PATH']}", sys.executable, "-m", "daemon"]
    cmd += ["--socket", str(fallback), "--state-dir", str(tmp_path / "state"), "--http", "off"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(path.is_socket, 10, "systemd-socket-activate to listen")
        ctl_env = {**os.environ, "MAINTD_SOCKET": str(path)}
        # The first connection starts the daemon; maintctl waits in the backlog meanwhile.
        result = subprocess.run(
            [sys.executable, "-m", "maintctl", "status"], cwd=ROOT, env=ctl_env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr + log_path.read_text()
        assert "Maintenance mode: off" in result.stdout
        notify_socket.wait(lambda m: m.get("READY") == "1", "READY=1")
        log_text = log_path.read_text()
        assert "socket activation: serving fd 3" in log_text
        assert not fallback.exists()
        enabled = subprocess.run(
            [sys.executable, "-m", "maintctl", "enable"], cwd=ROOT, env=ctl_env, capture_output=True, text=True, timeout=30
        )
        assert enabled.returncode == 0, enabled.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert path.is_socket()  # systemd's socket file is systemd's to remove
    assert "Traceback" not in log_path.read_text()


# -- the pieces, without a process ------------------------------------------------------------


def _status(state: str, subsystems: list[tuple[str, str, int]], items: list[InFlightItem], overdue: bool = False) -> Status:
    groups: dict[str, list[InFlightItem]] = {
        "material_update_in_progress": [],
        "building_jobs": [],
        "scheduled_jobs": [],
        "other": [],
    }
    names = {"material_update": "material_update_in_progress", "building_job": "building_jobs", "scheduled_job": "scheduled_jobs"}
    for item in items:
        groups[names.get(item.kind, "other")].append(item)
    return Status(
        maintenance=MaintenanceInfo(
            enabled=state != "normal",
            state=state,
            safe_to_restart=state == "drained",
            updated_by=None,
            updated_on=None,
            reason=None,
            deadline=None,
            overdue=overdue,
            on_deadline=None,
            drain_id=None,
        ),
        subsystems=tuple(SubsystemInfo(name=n, state=st, in_flight=k, blocking=k, external=False) for n, st, k in subsystems),
        running_systems=RunningSystems(**{k: tuple(v) for k, v in groups.items()}),
    )


def _item(sub: str, kind: str, n: int, blocks: bool = True) -> InFlightItem:
    return InFlightItem(
        id=f"{sub}/{n}", subsystem=sub, kind=kind, description="x", started_at=0.0, cancellable=True, blocks_restart=blocks
    )


def test_describe_says_what_the_drain_waits_for() -> None:
    idle = _status("normal", [("agents", "running", 0)], [])
    assert describe(idle) == "normal: maintenance off; idle"
    busy = _status(
        "normal",
        [("materials", "running", 1), ("agents", "running", 2)],
        [_item("materials", "material_update", 1), _item("agents", "building_job", 1), _item("agents", "building_job", 2)],
    )
    assert describe(busy) == "normal: maintenance off; 1 polling, 2 building"
    draining = _status(
        "draining",
        [("materials", "drained", 0), ("agents", "paused", 2), ("batch", "pausing", 1), ("config", "failed", 0)],
        [
            _item("agents", "building_job", 1),
            _item("agents", "building_job", 2),
            _item("agents", "scheduled_job", 3, blocks=False),
            _item("batch", "export", 1),
        ],
        overdue=True,
    )
    assert describe(draining) == (
        "draining: waiting for agents (2 building jobs), batch (pausing, 1 export item), config (failed); "
        "materials drained; past the deadline"
    )
    assert describe(_status("drained", [("agents", "drained", 0)], [])) == "drained: safe to restart"


def test_notifier_reads_and_unsets_the_environment_and_checks_watchdog_pid() -> None:
    env = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "x"}
    n = Notifier.from_environ(env)
    assert env == {"OTHER": "x"}
    assert n.address == "\0abstract" and n.watchdog_interval == 15.0
    other = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert Notifier.from_environ({}).send("READY=1") is False


def test_status_is_sent_once_per_change(tmp_path: Path) -> None:
    ns = NotifySocket(tmp_path / "n.sock")
    try:
        n = Notifier(str(ns.path))
        for text in ("a", "a", "b\nc", "b c", "a"):
            n.status(text)
        assert [m["STATUS"] for m in ns.drain_queue()] == ["a", "b c", "a"]
        n.close()
    finally:
        ns.close()
