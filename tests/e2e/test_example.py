"""End to end: examples/batch_worker.py as a real process, with real jobs, drained by the real daemon."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon, wait_for

EXAMPLE = ROOT / "examples" / "batch_worker.py"
DESCRIPTION = re.compile(r"batch job (\d+) \(sleep ([\d.]+), pid (\d+)\)")


def running(pid: int) -> bool:
    """Whether ``pid`` is a live ``sleep`` (not gone, not a zombie waiting to be reaped).

    The name comes from ``stat``: ``cmdline`` can still be empty just after the exec.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    name, _, rest = stat.partition("(")[2].rpartition(")")
    return name == "sleep" and rest.split()[0] != "Z"


class Worker:
    """One run of the example, and what the daemon shows of it."""

    def __init__(self, d: Daemon, log: Path, *args: str) -> None:
        self.daemon = d
        self.log = log
        self.pids: set[int] = set()
        self.max_jobs = int(args[args.index("--max-jobs") + 1]) if "--max-jobs" in args else 2
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), "--socket", str(d.socket), *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def jobs(self, s: dict[str, Any] | None = None) -> dict[str, int]:
        """The worker's building jobs in status: item id -> the pid its description names."""
        s = s if s is not None else self.daemon.status()
        jobs = {}
        for item in s["running_systems"]["building_jobs"]:
            if item["subsystem"] == "batch":
                match = DESCRIPTION.fullmatch(item["description"])
                assert match, item
                jobs[item["id"]] = int(match[3])
        self.pids.update(jobs.values())
        assert len(jobs) <= self.max_jobs, jobs
        return jobs

    def wait_jobs(self, predicate: Any, what: str) -> dict[str, int]:
        def check() -> dict[str, int] | None:
            assert self.proc.poll() is None, f"the worker exited with {self.proc.returncode}:\n{self.output()}"
            jobs = self.jobs()
            return jobs if predicate(jobs) else None

        return wait_for(check, 10, what)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids:  # jobs of a worker that was killed are orphans: end them here
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A killed worker's jobs block for reconnect_grace (tests/e2e/test_reconnect.py): short here."""
    d = Daemon(tmp_path, config='[control]\nreconnect_grace = "300ms"\n').start()
    yield d
    d.stop()


@pytest.fixture
def start_worker(daemon: Daemon, tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def start(*args: str) -> Worker:
        worker = Worker(daemon, tmp_path / f"worker{len(workers)}.log", *args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def subsystem(s: dict[str, Any], name: str = "batch") -> dict[str, Any] | None:
    return next((sub for sub in s["subsystems"] if sub["name"] == name), None)


def test_it_registers_and_its_real_jobs_show_as_building_jobs(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "30", "--max-jobs", "2")
    jobs = worker.wait_jobs(lambda j: len(j) == 2, "two jobs in status")
    assert set(jobs) == {"batch/job-1", "batch/job-2"}
    wait_for(lambda: all(running(pid) for pid in jobs.values()), 10, "both jobs running")

    s = daemon.status()
    assert subsystem(s) == {
        "name": "batch",
        "state": "running",
        "in_flight": 2,
        "blocking": 2,
        "external": True,
        "failures": 0,
        "last_error": None,
        "reconnect_by": None,
        "pause_asked_at": None,
    }
    item = next(i for i in s["running_systems"]["building_jobs"] if i["id"] == "batch/job-1")
    assert item["kind"] == "building_job" and item["cancellable"] and item["blocks_restart"]
    assert DESCRIPTION.fullmatch(item["description"])[2] == "30"  # type: ignore[index]
    text = daemon.maintctl("status").stdout
    assert "batch/job-1" in text and "batch job 1 (sleep 30" in text


def test_enable_stops_its_intake_and_wait_returns_once_its_jobs_have_ended(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "1.5", "--max-jobs", "2")
    worker.wait_jobs(lambda j: len(j) == 2, "two jobs in status")

    enabled = daemon.maintctl("enable", "--reason", "example drain")
    assert enabled.returncode == 0, enabled.stderr
    assert "draining" in enabled.stdout
    seen: set[str] = set()

    def drained() -> bool:
        s = daemon.status()
        seen.update(worker.jobs(s))
        return s["maintenance"]["safe_to_restart"]

    waiter = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "wait", "--timeout", "30s"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(drained, 30, "safe_to_restart in status")
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, out + err
    assert "Safe to restart" in out

    s = daemon.status()
    assert s["maintenance"]["state"] == "drained" and s["maintenance"]["safe_to_restart"]
    assert subsystem(s)["state"] == "drained" and worker.jobs(s) == {}  # type: ignore[index]
    # The pause found two jobs running; the worker said drained only after they had ended, and
    # started none after the pause: in its own log and in everything status showed meanwhile.
    lines = worker.output().splitlines()
    pause = next(n for n, line in enumerate(lines) if "pause_intake" in line)
    assert "intake closed, 2 job(s) running" in lines[pause]
    after = lines[pause + 1 :]
    assert [line for line in after if " ended (exit 0)" in line]
    assert f"drained (drain {s['maintenance']['drain_id']})" in after[-1]
    assert not [line for line in after if " started" in line]
    started = {f"batch/{m[1]}" for line in lines if (m := re.search(r"(job-\d+) started", line))}
    assert seen <= started
    assert worker.proc.poll() is None


def test_cancel_kills_the_real_job_and_the_item_goes(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "60", "--max-jobs", "2")
    jobs = worker.wait_jobs(lambda j: len(j) == 2, "two jobs in status")
    pid = jobs["batch/job-1"]
    assert running(pid)

    cancelled = daemon.maintctl("cancel", "batch/job-1", "--reason", "stuck")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled batch/job-1" in cancelled.stdout
    wait_for(lambda: not running(pid), 10, f"job-1 (pid {pid}) to die")
    # Its slot is free again: job-3 takes it, and never are more than two jobs running.
    after = worker.wait_jobs(lambda j: len(j) == 2 and "batch/job-1" not in j, "job-1 gone, job-3 in")
    assert set(after) == {"batch/job-2", "batch/job-3"} and running(after["batch/job-2"])
    assert "job-1 ended (killed by SIGTERM)" in worker.output()

    history = json.loads(daemon.maintctl("history", "--json").stdout)["entries"]
    assert [(e["item"], e["reason"]) for e in history if e["action"] == "cancel"] == [("batch/job-1", "stuck")]


def test_disable_opens_its_intake_again(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "0.5", "--max-jobs", "1")
    worker.wait_jobs(lambda j: len(j) == 1, "a job in status")
    assert daemon.maintctl("enable").returncode == 0
    assert daemon.maintctl("wait", "--timeout", "30s").returncode == 0
    last = max(int(m) for m in re.findall(r"job-(\d+) started", worker.output()))

    assert daemon.maintctl("disable").returncode == 0
    jobs = worker.wait_jobs(lambda j: any(int(i.rpartition("-")[2]) > last for i in j), "a new job after disable")
    assert len(jobs) == 1
    s = daemon.status()
    assert s["maintenance"]["state"] == "normal" and subsystem(s)["state"] == "running"  # type: ignore[index]
    assert "resume_intake" in worker.output()


def test_a_worker_registering_during_maintenance_starts_nothing_until_disable(daemon: Daemon, start_worker: Any) -> None:
    assert daemon.maintctl("enable").returncode == 0
    worker = start_worker("--every", "100ms", "--job-seconds", "30")
    s = daemon.wait_status(lambda s: (subsystem(s) or {}).get("state") == "drained", "batch drained")
    assert s["maintenance"]["safe_to_restart"] and worker.jobs(s) == {}
    assert " started" not in worker.output()
    assert daemon.maintctl("disable").returncode == 0
    worker.wait_jobs(lambda j: "batch/job-1" in j, "job-1 after disable")


def test_a_killed_worker_is_removed_and_its_jobs_shown_abandoned(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "60", "--max-jobs", "1")
    jobs = worker.wait_jobs(lambda j: len(j) == 1, "a job in status")
    worker.proc.kill()
    worker.proc.wait(10)
    s = daemon.wait_status(lambda s: subsystem(s) is None, "batch removed")
    (gone,) = [r for r in s["removed"] if r["name"] == "batch"]
    assert [i["id"] for i in gone["abandoned"]] == list(jobs)
    assert worker.jobs(s) == {}


def test_sigterm_stops_its_jobs_and_exits_0(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "60", "--max-jobs", "2")
    jobs = worker.wait_jobs(lambda j: len(j) == 2, "two jobs in status")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(15) == 0, worker.output()
    assert not any(running(pid) for pid in jobs.values())
    daemon.wait_status(lambda s: subsystem(s) is None, "batch removed")
    assert "got SIGTERM" in worker.output() and "Traceback" not in worker.output()


def test_it_exits_3_when_the_daemon_goes_away(daemon: Daemon, start_worker: Any) -> None:
    worker = start_worker("--every", "100ms", "--job-seconds", "60", "--max-jobs", "1")
    jobs = worker.wait_jobs(lambda j: len(j) == 1, "a job in status")
    assert daemon.proc is not None
    daemon.proc.kill()  # a crash: no drain on the way out, the connection just closes
    daemon.proc.wait(15)
    assert worker.proc.wait(15) == 3, worker.output()
    assert not any(running(pid) for pid in jobs.values())
    assert re.search(r"(maintd closed|lost) the connection", worker.output()) and "Traceback" not in worker.output()


def test_it_exits_3_plainly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--socket", str(tmp_path / "none.sock")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "maintd is not running" in result.stderr and "Traceback" not in result.stderr


def test_a_second_worker_with_the_same_name_is_refused_with_exit_1(daemon: Daemon, start_worker: Any) -> None:
    first = start_worker("--every", "1s", "--job-seconds", "30")
    wait_for(lambda: subsystem(daemon.status()), 10, "batch registered")
    second = start_worker("--every", "1s", "--job-seconds", "30")
    assert second.proc.wait(15) == 1
    assert "refused to register 'batch': conflict" in second.output() and "Traceback" not in second.output()
    assert first.proc.poll() is None


def test_help_says_what_it_does() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--socket", "--name", "--every", "--job-seconds", "--max-jobs"):
        assert option in result.stdout


def test_a_repeated_pause_is_answered_each_time_and_a_cancel_of_no_job_is_refused() -> None:
    # Both are rare with the real daemon (a repeat follows an actor restart; a cancel can race a
    # job's end), so the worker's handler is driven here over a socket pair.
    spec = importlib.util.spec_from_file_location("batch_worker", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(example)
    finally:
        del sys.modules[spec.name]
    worker = example.Worker(example.parse_args(["--socket", "unused"]))
    worker.sock.close()
    worker.sock, daemon_end = socket.socketpair()
    daemon_end.settimeout(10)
    lines = daemon_end.makefile("rb")
    try:
        worker.handle({"id": 1, "ok": True, "result": {"name": "batch", "maintenance": "normal", "drain_id": None}})
        assert json.loads(lines.readline()) == {"type": "in_flight", "items": []}
        for _ in range(2):
            worker.handle({"type": "pause_intake", "drain_id": "drain-1"})
            assert json.loads(lines.readline()) == {"type": "intake_paused", "drain_id": "drain-1"}
            assert json.loads(lines.readline()) == {"type": "drained", "drain_id": "drain-1"}
        worker.handle({"type": "cancel", "item": "job-9"})
        answer = json.loads(lines.readline())
        assert answer["type"] == "cancel_result" and answer["item"] == "job-9" and answer["ok"] is False
        assert "no job job-9" in answer["reason"]
    finally:
        lines.close()
        daemon_end.close()
        worker.sock.close()
