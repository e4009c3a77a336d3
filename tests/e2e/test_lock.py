"""One daemon per state directory: a second maintd on it exits 1 before it touches the store."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon, wait_for


def config(release: Path) -> str:
    wait = f'while [ ! -e "{release}" ]; do sleep 0.02; done'
    return (
        '[[pipelines]]\nname = "build"\n[[pipelines.stages]]\nname = "s"\n'
        f"[[pipelines.stages.jobs]]\nname = \"j\"\nshell = '''{wait}; echo done'''\n"
    )


def rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read without writing anything."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}


def jobs(d: Daemon) -> list[dict[str, Any]]:
    runs = d.client().request("runs")["result"]["runs"]
    return [j for r in runs for j in r["jobs"]]


@pytest.mark.parametrize("second", ["same command line", "another socket"])
def test_a_second_daemon_on_the_state_directory_exits_1_and_changes_nothing(
    make_daemon: Any, tmp_path: Path, second: str
) -> None:
    release = tmp_path / "release"
    first = make_daemon(config=config(release))
    triggered = first.maintctl("trigger", "build")
    assert triggered.returncode == 0, triggered
    wait_for(lambda: [j["state"] for j in jobs(first)] == ["building"], 15, "the job to build")
    before = rows(first.state / "maintd.db")

    cmd = list(first.cmd)
    if second == "another socket":
        cmd[cmd.index("--socket") + 1] = str(tmp_path / "other" / "control.sock")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=first.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the second maintd kept running on the same state directory")
    assert proc.returncode == 1, (out, err)
    assert first.proc is not None
    assert f"pid {first.proc.pid}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out

    assert rows(first.state / "maintd.db") == before  # not one row changed, the building job included
    assert first.proc.poll() is None
    release.touch()
    wait_for(lambda: [j["state"] for j in jobs(first)] == ["passed"], 15, "the job to pass")
    assert "interrupted" not in first.log_text()


def test_the_lock_is_released_when_the_daemon_exits(make_daemon: Any) -> None:
    first = make_daemon()
    assert first.stop() == 0
    again = Daemon(first.tmp).start()  # the same socket and state directory
    try:
        assert again.client().request("ping")["ok"]
        assert again.proc is not None
        assert (first.state / "maintd.lock").read_text().strip() == str(again.proc.pid)
    finally:
        again.stop()


def test_jobs_do_not_inherit_the_lock(make_daemon: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    first = make_daemon(config=config(release))
    assert first.maintctl("trigger", "build").returncode == 0
    wait_for(lambda: [j["state"] for j in jobs(first)] == ["building"], 15, "the job to build")
    lock = first.state / "maintd.lock"
    inode = lock.stat().st_ino
    job_pids = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and p.name != str(first.proc.pid if first.proc else 0) and _environ_has(p, str(release))
    ]
    assert job_pids, "the job's processes were not found"
    for pid in job_pids:
        for fd in (Path("/proc") / pid / "fd").iterdir():
            try:
                target = fd.stat()
            except OSError:
                continue
            assert target.st_ino != inode or target.st_dev != lock.stat().st_dev, f"job process {pid} holds the lock"
    release.touch()
    wait_for(lambda: [j["state"] for j in jobs(first)] == ["passed"], 15, "the job to pass")


def _environ_has(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False
