"""Faults against the real daemon: a kill -9 mid-drain, a hung git remote, a subsystem
process killed while it holds work, a state directory that cannot be used, a disk that
fills up while the daemon runs.

Covered elsewhere, so not repeated here: a job that ignores SIGTERM is killed after the
grace (``test_jobserver.py::test_cancel_of_a_building_job_kills_its_process_group_after_the_grace``).

Nothing sleeps to synchronise: every wait is :func:`wait_for` with a deadline, or a
blocking read under a socket timeout.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, USER, Daemon, Line, wait_for
from tests.e2e.test_jobserver import World, job_row


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> World:
    return World(tmp_path, make_daemon)


def start(world: World, *, cancel_grace: str = "500ms", poll_timeout: str = "20s", **kw: Any) -> Daemon:
    """``world.start`` with another cancel grace or poll timeout."""
    config = world.config(**kw)
    config = config.replace('cancel_grace = "500ms"', f'cancel_grace = "{cancel_grace}"')
    config = config.replace('poll_timeout = "20s"', f'poll_timeout = "{poll_timeout}"')
    world.d = world.make_daemon(config=config, env={"PATH": f"{world.bin}:{os.environ['PATH']}"})
    return world.d


def store_check(db: Path) -> list[str]:
    """``PRAGMA integrity_check`` and ``foreign_key_check`` of the store, opened read-only."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        problems += [f"foreign key: {row}" for row in conn.execute("PRAGMA foreign_key_check")]
    conn.close()
    return problems


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def processes_running(needle: str) -> list[int]:
    """Pids of live processes whose command line mentions ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if needle.encode() in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def metric(d: Daemon, name: str, **labels: str) -> float:
    with urllib.request.urlopen(d.http_url() + "/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name}{{{wanted}}} in /metrics"
    return float(match.group(1))


# -- (a) kill -9 in the middle of a drain ------------------------------------------------------


def test_kill_9_mid_drain_loses_nothing_and_a_fresh_start_marks_the_job_interrupted(world: World) -> None:
    # A job that ignores SIGTERM and a long grace: the cancel is accepted, the job still builds.
    stages = '[[pipelines.stages]]\nname = "test"\n' + world.job("stubborn", extra="trap '' TERM; ")
    d = start(world, stages=stages, cancel_grace="60s")
    s = world.wait_status(lambda s: world.building(s) == ["stubborn"], "the job to build")
    item = s["running_systems"]["building_jobs"][0]["id"]
    wait_for(lambda: job_row(world, "stubborn")["state"] == "building", 15, "the store to record it building")
    enabled = world.ctl("enable", "--reason", "upgrade to 2.0")
    assert enabled.returncode == 0, enabled.stderr
    cancelled = world.ctl("cancel", item, "--reason", "stuck")
    assert cancelled.returncode == 0, cancelled.stderr
    s = world.status()
    assert s["maintenance"]["state"] == "draining" and world.building(s) == ["stubborn"], s
    before = world.ctl_json("history")["entries"]
    pid = next(a["pid"] for a in world.ctl_json("agents")["agents"] if a["pid"])

    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    os.killpg(pid, signal.SIGKILL)  # the orphaned job, as a reboot would end it
    db = d.state / "maintd.db"
    assert store_check(db) == ["ok"], "the store as the kill left it"

    d.start()
    s = world.wait_status(lambda s: all(x["state"] == "running" for x in s["subsystems"]), "all subsystems running")
    assert (s["maintenance"]["enabled"], s["maintenance"]["state"]) == (False, "normal")
    assert world.building(s) == [] and world.scheduled(s) == []
    row = job_row(world, "stubborn")
    assert row["state"] == "interrupted", row
    assert world.runs()[0]["state"] == "interrupted"

    # Nothing lost from the audit log: every entry from before the kill, the enable and the
    # cancel request with who and why among them.
    after = world.ctl_json("history")["entries"]
    assert after[: len(before)] == before
    entries = [(e["action"], e["by"], e["reason"], e["item"]) for e in after]
    assert ("enable", USER, "upgrade to 2.0", None) in entries, entries
    assert ("cancel_requested", USER, "stuck", item) in entries, entries
    assert ("cancel", USER, "stuck", item) in entries, entries
    assert d.stop() == 0

    assert store_check(db) == ["ok"], "the store after the fresh start and a clean stop"
    events = query(db, "SELECT state, detail FROM job_events WHERE job_id = ? ORDER BY id", row["id"])
    assert [state for state, _ in events] == ["scheduled", "building", "interrupted"], events
    assert events[-1][1] == "daemon restarted while building"


# -- (c) a git remote that hangs -------------------------------------------------------------

POLL_TIMEOUT = 2.0


def test_a_hung_remote_is_killed_at_poll_timeout_so_the_drain_ends(world: World) -> None:
    world.gate.touch()  # every git call hangs while the gate exists
    d = start(world, poll_timeout=f"{POLL_TIMEOUT:g}s")
    wait_for(lambda: Path(f"{world.gate}.entered").exists(), 15, "a poll to start and hang")
    wrapper = str(world.bin / "git")
    assert processes_running(wrapper), "the hung git"
    enabled_at = time.monotonic()
    assert world.ctl("enable", "--reason", "hung remote").returncode == 0
    s = world.status()
    assert s["maintenance"]["state"] == "draining"
    assert [i["kind"] for i in s["running_systems"]["material_update_in_progress"]] == ["material_update"]

    # The poll started before the enable, so the drain ends within the poll timeout (and a margin).
    world.wait_status(lambda s: s["maintenance"]["safe_to_restart"], "drained", timeout=POLL_TIMEOUT + 10)
    took = time.monotonic() - enabled_at
    assert took < POLL_TIMEOUT + 3, f"the drain took {took:.1f}s with a poll timeout of {POLL_TIMEOUT}s"
    assert world.gate.exists(), "the remote still hangs: the drain ended by the timeout, not by the remote"
    wait_for(lambda: not processes_running(wrapper), 10, "the hung git (and its children) to be killed")
    assert metric(d, "maintd_material_polls_total", result="timeout") == 1.0
    assert metric(d, "maintd_material_polls_total", result="ok") == 0.0
    assert f"timed out after {POLL_TIMEOUT:g}s" in d.log_text() or "timed out" in d.log_text()
    assert world.runs() == []  # no revision was seen, so nothing ran
    world.gate.unlink()


# -- (d) an external subsystem whose process dies while it holds work --------------------------

WORKER = textwrap.dedent(
    """
    import json, socket, sys, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    f = s.makefile("rb")
    s.sendall(json.dumps({"id": 1, "type": "register", "name": "victim"}).encode() + b"\\n")
    assert json.loads(f.readline())["ok"]
    items = [
        {"id": "job-1", "kind": "batch", "description": "export 1", "cancellable": True},
        {"id": "job-2", "kind": "batch", "description": "export 2", "cancellable": False},
    ]
    s.sendall(json.dumps({"id": 2, "type": "in_flight", "items": items}).encode() + b"\\n")
    assert json.loads(f.readline())["ok"]
    print("ready", flush=True)
    time.sleep(600)  # holds its work and never reads again
    """
)


def test_a_subsystem_process_killed_while_it_holds_work_is_removed_and_its_work_abandoned(make_daemon: Any) -> None:
    # Its work keeps blocking for reconnect_grace (tests/e2e/test_reconnect.py), then it is removed.
    daemon = make_daemon(config='[control]\nreconnect_grace = "300ms"\n')
    watcher = daemon.client()
    assert watcher.request("watch")["ok"]
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(daemon.socket)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        status = wait_for(
            lambda: (s := daemon.client().request("status")["result"]) and len(s["running_systems"]["other"]) == 2 and s,
            10,
            "the worker's work in status",
        )
        assert [i["id"] for i in status["running_systems"]["building_jobs"]] == []
        # The daemon pushes pause_intake to it, which it never reads; then it dies.
        assert daemon.maintctl("enable", "--reason", "drain with a dying worker").returncode == 0
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    disconnected = watcher.next_event(lambda m: m.get("event") == "subsystem_disconnected")
    assert disconnected["subsystem"] == "victim" and not disconnected["maintenance"]["safe_to_restart"]
    removed = watcher.next_event(lambda m: m.get("event") == "subsystem_removed")
    assert removed["subsystem"] == "victim"
    assert sorted(i["id"] for i in removed["items"]) == ["victim/job-1", "victim/job-2"]
    status = wait_for(
        lambda: (s := daemon.client().request("status")["result"]) and s["maintenance"]["safe_to_restart"] and s,
        10,
        "the drain to end without the dead worker",
    )
    assert "victim" not in {x["name"] for x in status["subsystems"]}
    (gone,) = [r for r in status["removed"] if r["name"] == "victim"]
    assert sorted(i["id"] for i in gone["abandoned"]) == ["victim/job-1", "victim/job-2"]
    history = daemon.client().request("history")["result"]["entries"]
    assert any(e["action"] == "subsystem_removed" and e["item"] == "victim" and "2 item(s)" in e["detail"] for e in history)
    assert "Traceback" not in daemon.log_text()


# -- (e) a state directory that cannot be used ----------------------------------------------


def unusable_under_a_file(tmp: Path) -> Path:
    (tmp / "plain-file").write_text("")
    return tmp / "plain-file" / "state"  # mkdir fails with ENOTDIR, even as root


def unusable_is_a_file(tmp: Path) -> Path:
    (tmp / "plain-file").write_text("")
    return tmp / "plain-file"


def unusable_db_is_a_directory(tmp: Path) -> Path:
    (tmp / "state" / "maintd.db").mkdir(parents=True)
    return tmp / "state"


@pytest.mark.parametrize(
    ("make_state", "says"),
    [
        (unusable_under_a_file, "Not a directory"),
        (unusable_is_a_file, "exists"),
        (unusable_db_is_a_directory, "maintd.db"),
    ],
    ids=["under-a-regular-file", "is-a-regular-file", "db-is-a-directory"],
)
def test_an_unusable_state_directory_exits_1_with_one_clear_line(
    make_daemon: Any, tmp_path: Path, make_state: Any, says: str
) -> None:
    state = make_state(tmp_path)
    d = make_daemon("--state-dir", str(state), start=False)
    result = subprocess.run(d.cmd, cwd=ROOT, env=d.env, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith(("maintd:", "ERROR", "CRITICAL"))]
    assert errors and all(str(state) in line for line in errors), output
    assert says in errors[-1], output
    if make_state is not unusable_db_is_a_directory:  # (the store's own error comes first there)
        assert output.splitlines() == errors == [f"maintd: cannot use state directory {state}: {errors[0].rsplit(': ', 1)[1]}"]
    assert not d.socket.exists(), "nothing should serve"


# -- (f) the disk fills up while the daemon runs ----------------------------------------------

FSIZE = 256 * 1024  # RLIMIT_FSIZE of the daemon: its WAL cannot grow past this
LIMITED = (
    "import os, resource, signal, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)
PIPELINE = (
    '[[pipelines]]\nname = "build"\n[[pipelines.stages]]\nname = "s"\n[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["true"]\n'
)


def start_with_small_disk(make_daemon: Any) -> Daemon:
    d = make_daemon(config=PIPELINE, start=False)
    d.cmd = [sys.executable, "-c", LIMITED, str(FSIZE), *d.cmd[1:]]
    d.start()
    assert d.proc is not None
    limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
    assert re.search(rf"Max file size\s+{FSIZE}\s+{FSIZE}", limits), limits
    return d


def fill_the_store(d: Daemon, client: Line) -> dict[str, Any]:
    """Config reloads, each one audited, until the store refuses one; returns that refusal."""
    for _ in range(5000):
        reply = client.request("reload")
        if not reply["ok"]:
            return reply
    raise AssertionError(f"the store never filled up: {(d.state / 'maintd.db-wal').stat().st_size} bytes of WAL")


def test_a_full_disk_refuses_enable_and_the_status_does_not_claim_it(make_daemon: Any) -> None:
    d = start_with_small_disk(make_daemon)
    client = d.client()
    refused = fill_the_store(d, client)
    assert refused["error"]["code"] == "store_unavailable", refused

    enable = d.maintctl("enable", "--reason", "upgrade")
    assert enable.returncode == 1, (enable.stdout, enable.stderr)
    assert "store_unavailable" in enable.stderr and "enable" in enable.stderr, enable.stderr
    assert "Traceback" not in enable.stderr
    maintenance = client.request("status")["result"]["maintenance"]
    assert (maintenance["enabled"], maintenance["state"], maintenance["updated_by"]) == (False, "normal", None)
    assert "Maintenance mode: off" in d.maintctl("status").stdout
    history = client.request("history")["result"]["entries"]
    assert "enable" not in [e["action"] for e in history]

    # The daemon stays up and serves.
    assert d.proc is not None and d.proc.poll() is None
    assert client.request("ping")["ok"]
    assert client.request("status")["ok"]
    assert d.stop() == 0


@pytest.mark.parametrize("change", ["pipeline_pause", "reload"])
def test_a_full_disk_leaves_a_refused_change_undone(make_daemon: Any, change: str) -> None:
    """A change the store could not record is refused, so it must not take effect either."""
    d = start_with_small_disk(make_daemon)
    client = d.client()
    fill_the_store(d, client)
    if change == "pipeline_pause":
        refused = client.request("pipeline_pause", pipeline="build")
    else:  # a second pipeline in the file, then a reload
        config = d.tmp / "maintd.toml"
        config.write_text(config.read_text() + PIPELINE.replace('"build"', '"deploy"'))
        refused = client.request("reload")
    assert refused["ok"] is False and refused["error"]["code"] == "store_unavailable", refused
    pipelines = client.request("pipelines")["result"]["pipelines"]
    shown = [(p["name"], p["paused"]) for p in pipelines]
    assert shown == [("build", False)], f"{change} was refused ({refused['error']['message']}), yet it took effect: {shown}"
