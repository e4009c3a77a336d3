"""The state directory's disk fills while two jobs build, and comes back: no result is lost.

The state directory is a small tmpfs of its own, filled with a ballast file while the jobs
build and given back by deleting it, so space really goes and really returns (an
RLIMIT_FSIZE, as in test_faults.py, cannot be raised from outside the process). Mounting
needs root: the test skips otherwise, with the reason, except under CI=true, where it must
run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.pending import RETRY_MAX
from tests.conftest import Daemon, wait_for

TMPFS_SIZE = 8 * 1024 * 1024


def job(name: str, gate: Path, code: int) -> str:
    # no output: its log is on the full disk too, and its exit code is the result to keep
    return (
        f'[[pipelines.stages.jobs]]\nname = "{name}"\n'
        f"shell = '''while [ ! -e \"{gate}\" ]; do sleep 0.02; done; exit {code}'''\n"
    )


def config(gate: Path) -> str:
    return (
        '[agents]\ncount = 2\ncancel_grace = "500ms"\n'
        + '[[pipelines]]\nname = "alpha"\n[[pipelines.stages]]\nname = "build"\n'
        + job("a", gate, 0)
        + '[[pipelines.stages]]\nname = "ship"\n[[pipelines.stages.jobs]]\nname = "s"\ncommand = ["true"]\n'
        + '[[pipelines]]\nname = "beta"\n[[pipelines.stages]]\nname = "build"\n'
        + job("b", gate, 3)
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE bytes at tmp_path/d0/state, where make_daemon's first daemon keeps its state."""
    state = tmp_path / "d0" / "state"
    state.mkdir(parents=True)
    ci = os.environ.get("CI") == "true"
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the state directory needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0750", "tmpfs", str(state)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        if ci:
            pytest.fail(f"cannot mount a tmpfs as root under CI: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the disk has not one byte left; the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += f.write(chunk) or 0
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def metrics(d: Daemon) -> dict[str, float]:
    with urllib.request.urlopen(d.http_url() + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r"^(maintd_store_\w+) (\S+)$", text, re.MULTILINE)}


def test_results_obtained_while_the_disk_is_full_are_recorded_when_space_returns(
    small_disk: Path, make_daemon: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    d = make_daemon(config=config(gate), start=False)
    assert d.state == small_disk
    d.start()
    watch = d.client()
    assert watch.request("watch")["ok"]
    for pipeline in ("alpha", "beta"):
        triggered = d.maintctl("trigger", pipeline)
        assert triggered.returncode == 0, triggered.stderr
    client = d.client()

    def status() -> dict[str, Any]:
        return client.request("status")["result"]

    def jobs() -> dict[str, tuple[str, int | None]]:
        rows = query(d.state / "maintd.db", "SELECT name, state, returncode FROM jobs ORDER BY id")
        return {name: (state, code) for name, state, code in rows}

    wait_for(lambda: jobs() == {"a": ("building", None), "b": ("building", None)}, 15, "both jobs building")
    enabled = d.maintctl("enable", "--reason", "disk check")
    assert enabled.returncode == 0, enabled.stderr

    ballast = d.state / "ballast"
    assert fill(ballast) > 0
    gate.touch()  # both jobs end on the full disk: a passes, b fails with 3

    def waiting(s: dict[str, Any]) -> list[dict[str, Any]]:
        return [i for i in s["running_systems"]["other"] if i["kind"] == "pending_write"]

    wait_for(lambda: not status()["running_systems"]["building_jobs"], 15, "both jobs to end")
    s = wait_for(lambda: len(waiting(s := status())) == 2 and s, 15, "both results kept, waiting for the store")
    assert all(x["state"] != "failed" and x["failures"] == 0 for x in s["subsystems"]), s["subsystems"]
    assert s["store"]["state"] == "degraded" and s["store"]["pending_writes"] == 2 and s["store"]["since"], s["store"]
    assert "full" in s["store"]["last_error"], s["store"]
    ids = dict(query(d.state / "maintd.db", "SELECT name, id FROM jobs"))
    assert sorted(i["description"].split(" waiting")[0] for i in waiting(s)) == [
        f"the result of job {ids['a']} (passed)",
        f"the result of job {ids['b']} (failed)",
    ], waiting(s)
    assert all(i["blocks_restart"] for i in waiting(s))
    assert (s["maintenance"]["state"], s["maintenance"]["safe_to_restart"]) == ("draining", False)
    assert jobs() == {"a": ("building", None), "b": ("building", None)}  # nothing recorded: the disk is full
    shown = d.maintctl("status")
    assert "Store: DEGRADED, 2 result(s) waiting to be written" in shown.stdout, shown.stdout
    assert "Safe to restart: no" in shown.stdout
    with urllib.request.urlopen(d.http_url() + "/api/maintenance_mode/info", timeout=10) as response:
        info = json.loads(response.read())["attributes"]
    assert info["has_running_systems"] is True
    assert [o["kind"] for o in info["running_systems"]["other"]] == ["pending_write", "pending_write"]
    m = metrics(d)
    assert m["maintd_store_pending_writes"] == 2 and m["maintd_store_write_failures_total"] >= 1, m
    # the retries go on failing for a while: still never safe
    wait_for(lambda: status()["store"]["write_failures"] >= 3, 15, "the store to refuse the retries too")
    assert not status()["maintenance"]["safe_to_restart"]
    assert d.proc is not None and d.proc.poll() is None

    emptied = time.monotonic()
    ballast.unlink()  # space comes back
    watch.sock.settimeout(30)  # the next retry may be RETRY_MAX away, with no event meanwhile
    safe = watch.next_event(lambda e: e.get("type") == "event" and e["maintenance"]["safe_to_restart"])
    took = time.monotonic() - emptied
    assert took < RETRY_MAX + 3, f"written {took:.1f}s after space came back; retries are at most {RETRY_MAX}s apart"
    print(f"results written and safe {took:.2f}s after space came back")  # `pytest -s` shows it
    # the moment it says safe, both real results are in the store
    # (the next stage's job `s` may come a moment later: the scheduler creates it once it hears
    # of a's end, and a restart before that would create it from the store's run anyway)
    assert {k: v for k, v in jobs().items() if k in ("a", "b")} == {"a": ("passed", 0), "b": ("failed", 3)}, safe
    wait_for(lambda: jobs().get("s") == ("scheduled", None), 10, "the next stage's job scheduled")
    s = status()
    assert s["store"] == {**s["store"], "state": "ok", "pending_writes": 0, "last_error": None}
    assert not waiting(s)
    assert metrics(d)["maintd_store_pending_writes"] == 0

    # The runs finish: beta failed; alpha goes on to its next stage once maintenance is off.
    assert d.maintctl("disable").returncode == 0
    runs = query(d.state / "maintd.db", "SELECT pipeline, state FROM runs ORDER BY id")
    wait_for(
        lambda: (
            query(d.state / "maintd.db", "SELECT pipeline, state FROM runs ORDER BY id")
            == [("alpha", "passed"), ("beta", "failed")]
        ),
        15,
        f"both runs to finish (were {runs})",
    )
    assert jobs()["s"] == ("passed", 0)
    s = status()
    assert all(x["failures"] == 0 for x in s["subsystems"]), s["subsystems"]
    assert d.proc.poll() is None
    assert "Traceback" not in d.log_text()
    assert d.stop() == 0
