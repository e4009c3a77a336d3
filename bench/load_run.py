"""The daemon and the load generators, from the main process of bench/load.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import LineClient, stop_process
from load_loop import STEP_TIMEOUT, raise_nofile

START_TIMEOUT = 60.0  # the daemon parses a config of J jobs first
STEADY_SECONDS = 3.0
POLL_STATUS_INTERVAL = 0.2
#: the script the load generators run as (its internal roles ``_subsystems`` and the rest)
SCRIPT = Path(__file__).resolve().with_name("load.py")


def write_config(path: Path, jobs: int) -> None:
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "[agents]",
        "count = 0",  # nothing runs: the J jobs stay scheduled
        "",
        "[[pipelines]]",
        'name = "bulk"',
        "[[pipelines.stages]]",
        'name = "all"',
    ]
    width = max(5, len(str(jobs)))
    for i in range(1, jobs + 1):
        lines += ["[[pipelines.stages.jobs]]", f'name = "j{i:0{width}d}"', 'command = ["true"]']
    path.write_text("\n".join(lines) + "\n")


class Daemon(_common.Daemon):
    """The daemon with a raised RLIMIT_NOFILE, and the highest VmRSS seen by proc_status."""

    def __init__(self, tmp: Path, config: Path, env: dict) -> None:
        super().__init__(tmp, config, env, preexec_fn=raise_nofile)
        self.max_rss_kb = 0

    def proc_status(self) -> dict[str, int]:
        out = super().proc_status()
        self.max_rss_kb = max(self.max_rss_kb, out.get("VmRSS", 0))
        return out

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> int:
        """Voluntary and involuntary, summed over the daemon's threads: a thread woken by
        another (a crossing) is a voluntary switch of the one that waited."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with contextlib.suppress(OSError), open(task / "status") as f:
                total += sum(int(line.split()[-1]) for line in f if "ctxt_switches:" in line)
        return total

    def limits_nofile(self) -> str:
        with open(f"/proc/{self.proc.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
        return "?"


class Child:
    """A load generator: JSON commands on its stdin, one JSON answer line each on its stdout."""

    def __init__(self, role: str, sock: str, tmp: Path, env: dict) -> None:
        self.role = role
        self.err_path = tmp / f"{role}.err"
        self.proc: subprocess.Popen | None = None
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), f"_{role}", sock],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                preexec_fn=raise_nofile,
            )
        self.buf = b""

    def call(self, cmd: str, timeout: float = STEP_TIMEOUT + 30, **fields: Any) -> dict:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.role}: no answer to {cmd} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise RuntimeError(f"{self.role} exited ({self.proc.wait()}) during {cmd}:\n{self.err_tail()}")
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        result = json.loads(line)
        if not result.get("ok"):
            raise RuntimeError(f"{self.role}: {cmd} failed: {result.get('error')} (lost connections: {result.get('lost')})")
        return result

    def err_tail(self) -> str:
        try:
            return self.err_path.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        stop_process(proc, terminate=False)  # it stops once its stdin is closed
        if proc.stdout is not None:
            proc.stdout.close()


def wait_scheduled(d: Daemon, c: LineClient, jobs: int) -> tuple[float, int]:
    """Poll status until the scheduler shows ``jobs`` items; (seconds, status size)."""
    t0 = time.monotonic()
    while True:
        d.check_alive()
        status = c.request("status")
        sched = [s for s in status["subsystems"] if s["name"] == "scheduler"]
        if sched and sched[0]["in_flight"] >= jobs and len(status["running_systems"]["scheduled_jobs"]) >= jobs:
            return time.monotonic() - t0, len(json.dumps(status, separators=(",", ":")))
        if time.monotonic() - t0 > STEP_TIMEOUT:
            raise RuntimeError(f"{jobs} jobs were not scheduled within {STEP_TIMEOUT:.0f} s")
        time.sleep(POLL_STATUS_INTERVAL)


def run_all(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    config = tmp / "maintd.toml"
    write_config(config, args.jobs)
    res: dict[str, Any] = {"cycles": [], "probes": [], "syncs": [], "rss": {}}
    d = Daemon(tmp, config, env)
    children: list[Child] = []
    ok = False
    t_start = time.monotonic()
    try:
        d.wait_ready(START_TIMEOUT)
        res["start_s"] = time.monotonic() - t_start
        res["daemon_nofile"] = d.limits_nofile()
        c = LineClient(d.sock)
        try:
            agents = c.request("agents")
            res["agents"] = agents
            trig = c.request("trigger", pipeline="bulk")
            res["trigger"] = trig
            res["scheduled_s"], res["status_size_jobs_only"] = wait_scheduled(d, c, args.jobs)
        finally:
            c.close()
        res["rss"]["jobs scheduled"] = d.proc_status()

        subs = Child("subsystems", d.sock, tmp, env)
        children.append(subs)
        crowd = Child("crowd", d.sock, tmp, env)
        children.append(crowd)
        # The status sampler has a process of its own: a 5 MB reply comes through a socket
        # buffer of about 200 KB, so a reader that is also busy with 499 watchers would
        # measure its own delays between reads, not the daemon's answer.
        sampler = Child("sampler", d.sock, tmp, env)
        children.append(sampler)
        pingers = args.connections - args.watchers - args.subsystems - 2
        t0 = time.monotonic()
        res["subs_setup"] = subs.call("setup", subsystems=args.subsystems, items=args.items)
        res["crowd_setup"] = crowd.call("setup", watchers=args.watchers - 1, pingers=pingers, timeout=600)
        sampler.call("setup", watchers=0, pingers=0, sampler=True)
        res["setup_s"] = time.monotonic() - t0
        d.check_alive()
        res["connections"] = res["subs_setup"]["connections"] + res["crowd_setup"]["connections"] + 1
        res["pingers"] = pingers
        res["rss"]["all connected"] = d.proc_status()
        cpu0 = d.cpu_seconds()

        sampler.call("start_bg", phase="steady", status_interval=args.status_interval)
        crowd.call("start_bg", phase="steady", status_interval=args.status_interval)
        crowd.call("phase", phase="steady", seconds=STEADY_SECONDS, timeout=STEADY_SECONDS + 30)
        res["rss"]["steady"] = d.proc_status()
        crowd.call("phase", phase="cycles")
        sampler.call("phase", phase="cycles")
        t_cycles = time.monotonic()
        cycles_cpu0, switches0 = d.cpu_seconds(), d.context_switches()
        for i in range(args.cycles):
            r = subs.call("cycle", i=i)
            res["cycles"].append(r)
            res["syncs"].append(crowd.call("sync", seq=r["last_seq"]))
            d.check_alive()
            d.proc_status()
        res["cycles_s"] = time.monotonic() - t_cycles
        res["cycles_cpu_s"] = d.cpu_seconds() - cycles_cpu0
        res["cycles_switches"] = d.context_switches() - switches0
        res["rss"]["after cycles"] = d.proc_status()
        for i in range(args.probes):
            r = subs.call("probe", i=i)
            res["probes"].append(r)
            res["syncs"].append(crowd.call("sync", seq=r["last_seq"]))
            d.check_alive()
        res["daemon_cpu_s"] = d.cpu_seconds() - cpu0
        res["crowd"] = crowd.call("stop")
        sampled = sampler.call("stop")
        for key in ("status_ms", "status_sizes", "status_errors"):
            res["crowd"][key] = sampled[key]
        res["subs"] = subs.call("stop")
        d.check_alive()
        res["rss"]["end"] = d.proc_status()
        res["max_rss_kb"] = d.max_rss_kb
        res["pid"] = d.proc.pid
        res["run_s"] = time.monotonic() - t_start
        ok = True
    finally:
        try:
            for child in children:
                child.stop()
            if not ok:
                for child in children:
                    tail = child.err_tail()
                    if tail.strip():
                        print(f"--- {child.role} stderr (tail) ---\n{tail}\n---", file=sys.stderr)
                tail = d.log_text()[-3000:]
                if tail.strip():
                    print(f"--- maintd log (tail) ---\n{tail}\n---", file=sys.stderr)
        finally:
            d.stop()
            res["log"] = d.log_text()
            res["exit_code"] = d.proc.returncode if d.proc else None
    return res
