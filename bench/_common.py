"""What the benchmarks share: percentiles, the verdict word, which tree was measured, and
the daemon under test with a blocking client for it.

The benchmarks run as scripts (``python bench/NAME.py``), so this folder is on sys.path.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_TIMEOUT = 10.0
IO_TIMEOUT = 10.0


def pct(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: list) -> float:
    v = sorted(values)
    n = len(v)
    if not n:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def describe_tree(source: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(source)
    if not rev:
        return str(source)
    return f"{source} @ {rev}" + (" (with uncommitted changes)" if dirty else "")


def source_env(source: Path) -> dict[str, str]:
    """The environment for the daemon and maintctl: ``source`` first on PYTHONPATH, so they
    run from it even when another checkout is installed (editable) in the venv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MAINTD_SOCKET", None)
    return env


def stop_process(proc: subprocess.Popen | None, *, terminate: bool = True) -> None:
    """SIGTERM (unless ``terminate`` is False: it stops by itself), wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    if terminate:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


class LineClient:
    """A blocking newline-JSON client for requests (replies only; no watch on it)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.n = 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def raw(self, type_: str, **fields: Any) -> bytes:
        self.n += 1
        self.sock.sendall(json.dumps({"id": self.n, "type": type_, **fields}).encode() + b"\n")
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise RuntimeError(f"the daemon closed the connection (after {type_})")
        return line

    def request(self, type_: str, **fields: Any) -> Any:
        reply = json.loads(self.raw(type_, **fields))
        if reply.get("id") != self.n:
            raise RuntimeError(f"unexpected reply to {type_}: {str(reply)[:300]}")
        if not reply.get("ok"):
            raise RuntimeError(f"{type_} refused: {reply.get('error')}")
        return reply["result"]


class Daemon:
    """``python -m daemon`` on ``config`` in ``tmp`` (socket, state and log there), HTTP off."""

    def __init__(self, tmp: Path, config: Path, env: dict, preexec_fn: Callable[[], None] | None = None) -> None:
        self.sock = str(tmp / "maintd.sock")
        self.log_path = tmp / "maintd.log"
        cmd = [
            *[sys.executable, "-m", "daemon", "--config", str(config)],
            *["--socket", self.sock, "--state-dir", str(tmp / "state"), "--log-level", "warning", "--http", "off"],
        ]
        self.proc: subprocess.Popen | None = None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(tmp),
                env=env,
                preexec_fn=preexec_fn,
            )

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"maintd exited during the run with code {self.proc.returncode}")

    def wait_ready(self, timeout: float) -> None:
        """Until a ping is answered (the daemon may parse a big config first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                c = LineClient(self.sock)
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
                continue
            try:
                c.request("ping")
                return
            finally:
                c.close()
        raise RuntimeError(f"maintd did not answer on {self.sock} within {timeout:.0f} s")

    def proc_status(self) -> dict[str, int]:
        """VmRSS, VmHWM (kB) and Threads from /proc."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
        return out


def wait_for_bulk_run(
    d: Daemon, c: LineClient, counter: int, deadline: float, poll: float, what: str = "bulk"
) -> tuple[dict, int]:
    """Wait (polling ``status`` every ``poll`` s, not ``watch``) until no job is scheduled or
    building, then until run ``what``/``counter`` has its ``finished_at`` (the scheduler records
    it just after its last JobFinished: it may trail the status by a moment); the run, and how
    many status polls it took."""
    polls = 0
    while True:
        time.sleep(poll)
        polls += 1
        d.check_alive()
        line = c.raw("status")
        if b'"scheduled_jobs":[]' in line and b'"building_jobs":[]' in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {what} run did not finish in time")
    while True:
        (run,) = c.request("runs", pipeline=what, limit=1)["runs"]
        if run["counter"] == counter and run["finished_at"] is not None:
            return run, polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {what}/{counter} has no finished_at: {run['state']}")
        time.sleep(0.01)
