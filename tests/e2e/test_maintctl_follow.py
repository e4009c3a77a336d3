"""maintctl against the real daemon over time: ``wait`` says each change, ``watch`` and ``wait``
go on across a restart of maintd, ``logs --follow`` and ``--all``, and ``forget``."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon, Line, wait_for
from tests.e2e.test_jobserver import World


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> World:
    return World(tmp_path, make_daemon)


class Running:
    """A maintctl process whose stdout is read line by line as it comes."""

    def __init__(self, socket: Path, *args: str) -> None:
        env = {**os.environ, "MAINTD_SOCKET": str(socket), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maintctl", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, text: str, timeout: float = 20) -> str:
        """The first line from now on that holds ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout}s; seen: {self.seen}") from None
            if line is None:
                raise AssertionError(f"maintctl ended before a line with {text!r}; seen: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout)
        while (line := self.lines.get(timeout=5)) is not None:
            self.seen.append(line)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_wait_says_what_it_waits_on_as_it_changes(world: World) -> None:
    d = world.start()
    s = world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    job_id = s["running_systems"]["building_jobs"][0]["id"]
    assert d.maintctl("enable").returncode == 0
    waiting = Running(d.socket, "wait", "--timeout", "1m")
    try:
        line = waiting.expect(f"{job_id} build/1/test/unit still building (")
        assert line.endswith("s)")
        world.finish("unit")
        waiting.expect(f"{job_id} build/1/test/unit done (")
        waiting.expect("agents drained")
        assert waiting.finish() == 0
        assert waiting.seen[-1] == "Safe to restart."
    finally:
        waiting.stop()


def test_wait_quiet_prints_only_the_last_line(world: World) -> None:
    d = world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    assert d.maintctl("enable").returncode == 0
    waiting = Running(d.socket, "wait", "--quiet")
    try:
        world.wait_status(lambda s: s["maintenance"]["state"] == "draining", "the drain")
        world.finish("unit")
        assert waiting.finish() == 0
        assert waiting.seen == ["Safe to restart."]
    finally:
        waiting.stop()
    timed_out = d.maintctl("wait", "--quiet", "--timeout", "1s")  # safe already: exit 0, one line
    assert (timed_out.returncode, timed_out.stdout) == (0, "Safe to restart.\n")


def restart(d: Daemon) -> None:
    """Killed (a SIGTERM drains first, which a waiting wait rightly takes as safe) and started again."""
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.stop()
    d.start()


def test_watch_goes_on_across_a_restart_of_maintd(daemon: Daemon) -> None:
    watching = Running(daemon.socket, "watch")
    try:
        watching.expect("Maintenance mode: off")
        restart(daemon)
        watching.expect("maintd restarted")
        watching.expect("Maintenance mode: off")  # the new daemon's status
        assert daemon.maintctl("enable", "--reason", "after the restart").returncode == 0
        watching.expect("state_changed")
        assert watching.proc.poll() is None  # still watching: only Ctrl-C or --until ends it
        watching.proc.send_signal(signal.SIGINT)
        assert watching.finish() == 130
    finally:
        watching.stop()


def test_watch_until_ends_on_its_own(daemon: Daemon) -> None:
    started = time.monotonic()
    done = daemon.maintctl("watch", "--until", "1s")
    assert done.returncode == 0, done
    assert "Maintenance mode: off" in done.stdout and time.monotonic() - started >= 1


def test_wait_goes_on_across_a_restart_of_maintd(daemon: Daemon) -> None:
    waiting = Running(daemon.socket, "wait", "--timeout", "1m")
    try:
        waiting.expect("maintenance mode off")
        restart(daemon)
        waiting.expect("maintd restarted")
        assert waiting.proc.poll() is None
        assert daemon.maintctl("enable").returncode == 0  # nothing runs: drained at once
        assert waiting.finish() == 0
        assert waiting.seen[-1] == "Safe to restart."
    finally:
        waiting.stop()


def test_logs_follow_prints_what_the_job_writes_until_it_ends(world: World) -> None:
    d = world.start(stages='[[pipelines.stages]]\nname = "test"\n' + world.job("unit", extra="echo first; "))
    s = world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    job = next(j for j in world.runs()[0]["jobs"] if j["name"] == "unit")["id"]
    following = Running(d.socket, "logs", "--follow", str(job))
    try:
        following.expect("first")
        assert following.proc.poll() is None
        world.finish("unit")
        following.expect("finished")
        assert following.finish() == 0
        assert following.proc.stderr is not None and f"[job {job} passed]" in following.proc.stderr.read()
    finally:
        following.stop()
    assert s


def test_logs_all_shows_the_whole_log_and_the_offsets_keep_characters_whole(world: World) -> None:
    lines = "seq 1 40000; printf 'caf\\303\\251%.0s' $(seq 1 5000); echo; "
    d = world.start(stages='[[pipelines.stages]]\nname = "test"\n' + world.job("unit", extra=lines))
    world.finish("unit")
    wait_for(lambda: world.runs() and world.runs()[0]["state"] == "passed", 30, "the run to pass")
    job = world.runs()[0]["jobs"][0]["id"]
    log = (d.state / "logs" / "build" / "1" / "test" / "unit.log").read_text()
    assert len(log.encode()) > 200_000
    tail = d.maintctl("logs", str(job))
    assert tail.stdout.startswith("[... showing the last 65536 of ")
    whole = d.maintctl("logs", "--all", str(job))
    assert whole.returncode == 0, whole
    assert whole.stdout == log
    # by offset, a few bytes at a time: a two-byte character is never cut in two
    c = Line(d.socket)
    offset, text = 0, ""
    while True:
        r = c.request("logs", job=job, max_bytes=7, offset=offset)["result"]
        assert "\ufffd" not in r["text"]
        text += r["text"]
        offset = r["next_offset"]
        if offset >= r["size"] or offset > 200:
            break
    assert text == log.encode()[:offset].decode()
    c.close()


def test_a_removed_subsystems_work_is_shown_abandoned_and_forget_clears_it(make_daemon: Any) -> None:
    d = make_daemon(config='[control]\nreconnect_grace = "0s"\n')
    batch = Line(d.socket)
    assert batch.request("register", name="batch")["ok"]
    batch.send(type="in_flight", items=[{"id": "7", "kind": "sleep", "description": "sleep 30", "cancellable": True}])
    d.wait_status(lambda s: s["running_systems"]["other"], "the item")
    batch.close()
    d.wait_status(lambda s: s["removed"], "batch to be removed")
    shown = d.maintctl("status").stdout
    row = next(line for line in shown.splitlines() if "batch/7" in line)
    assert "[abandoned]" in row and "cancellable" not in row
    assert "maintctl forget" in shown
    listed = d.maintctl("inflight").stdout
    assert "nothing in flight" in listed and "Abandoned by removed subsystems" in listed
    row = next(line for line in listed.splitlines() if "batch/7" in line)
    assert "[abandoned]" in row and "cancellable" not in row
    forgot = d.maintctl("forget", "batch")
    assert forgot.returncode == 0, forgot
    assert "cleared batch and its 1 abandoned item(s)" in forgot.stdout
    assert d.status()["removed"] == []
    assert "batch/7" not in d.maintctl("inflight").stdout
    again = d.maintctl("forget", "batch")
    assert again.returncode == 1 and "not_found" in again.stderr
    history = d.client().request("history")["result"]["entries"]
    (entry,) = [e for e in history if e["action"] == "forget"]
    assert entry["item"] == "batch" and "1 abandoned item(s) cleared" in entry["detail"] and "pid " in entry["detail"]


def test_window_runs_the_command_once_drained_then_disables(world: World, tmp_path: Path) -> None:
    d = world.start()
    world.wait_status(lambda s: world.building(s) == ["unit"], "a job to build")
    seen = tmp_path / "seen.json"
    check = f'"{sys.executable}" -m maintctl --json status > "{seen}"'
    window = Running(d.socket, "window", "--reason", "backup", "--", "sh", "-c", f"{check}; echo backed up")
    try:
        window.expect("build/1/test/unit still building (")
        assert not seen.exists()  # not run while a job builds
        world.finish("unit")
        window.expect("backed up")
        assert window.finish() == 0
        assert "maintenance mode: off" in window.seen[-1]
    finally:
        window.stop()
    assert json.loads(seen.read_text())["maintenance"]["safe_to_restart"] is True  # what the command saw
    assert world.status()["maintenance"]["enabled"] is False
    history = world.ctl_json("history")["entries"]
    steps = [(e["action"], e.get("item"), (e.get("detail") or "").split(";")[0]) for e in history]
    steps = [step for step in steps if step[0] in ("enable", "disable", "window")]
    command = f"sh -c '{check}; echo backed up'"
    assert steps == [
        ("enable", None, "pid " + steps[0][2].partition("pid ")[2]),
        ("window", command, "command started"),
        ("window", command, "command ended, exit code 0"),
        ("disable", None, steps[3][2]),
    ]
    ended = history[[e["action"] for e in history].index("window") + 1]
    assert "drain-" in ended["detail"] and "pid " in ended["detail"]
    world.finish("tarball")  # the next stage, started once maintenance went off: nothing left running at the stop


def test_window_leaves_maintenance_on_when_the_command_fails(daemon: Daemon) -> None:
    done = daemon.maintctl("window", "--reason", "upgrade", "--", "sh", "-c", "echo trying; exit 3")
    assert done.returncode == 3, done
    assert "trying" in done.stdout
    assert "failed (exit code 3): maintenance mode stays ON" in done.stderr
    m = daemon.status()["maintenance"]
    assert m["enabled"] and m["reason"] == "upgrade"
    missing = daemon.maintctl("disable"), daemon.maintctl("window", "--reason", "r", "--", "/nonexistent/cmd")
    assert missing[1].returncode == 127 and "command not found" in missing[1].stderr
    history = daemon.client().request("history")["result"]["entries"]
    ended = [e["detail"].split(";")[0] for e in history if e["action"] == "window" and "ended" in e["detail"]]
    assert ended == ["command ended, exit code 3", "command ended, exit code 127"]
