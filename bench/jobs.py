"""Benchmark of the job server: jobs through the scheduler and agents, and drain latency.

Not a test: it measures and prints, next to the targets and the floors measured in the
same run. One run does:

1. Throughput: one pipeline with one stage of N jobs (``command = ["true"]``, default
   1,000) on A agents (default 4), triggered on the control socket, against the same N
   ``true`` processes spawned directly by a trio program with A concurrent workers (the
   floor: ``trio.lowlevel.open_process`` + ``wait``, in a process of its own), and
   against the same program when it also makes each job's workspace directory and log
   file the way ``daemon/processes.py`` does (what the daemon must do besides spawning:
   on a slow disk it is a real share), and against the same again when each job is also
   tracked as a process tree the way the daemon tracks it (``--tracking``, the daemon's
   ``[agents] process_tracking``: with cgroups, a cgroup made for each job, entered by the
   child through the /bin/sh shim, watched until empty and removed), through
   daemon/jobtree.py of the tree under test: the tracked floor, which tells what the
   tracking costs from what maintd itself costs. The daemon's time runs from the moment the
   ``trigger`` request is sent to the run's ``finished_at`` (the scheduler's clock,
   ``time.time()`` on the same machine: no polling in the figure); the time from the
   trigger *reply* is printed too (the reply comes once the N jobs are stored and the
   first ones handed to agents). The end is found by polling ``status`` every 200 ms,
   not by ``watch``: every ``in_flight_changed`` event carries the subsystem's whole
   item list (N scheduled jobs), encoded for each watcher, which would load the daemon.
2. Drain latency: the time from the last building job's exit to ``safe_to_restart``
   becoming true while in maintenance. A trial: trigger a one-job pipeline whose job
   blocks on a FIFO; once it is running, enable maintenance and wait until every other
   subsystem is drained; release the job, which writes ``time.time_ns()`` to a file as
   its very last action and ``os._exit(0)``s; a ``watch`` connection takes
   ``time.time_ns()`` when the ``state_changed`` event with ``safe_to_restart: true``
   arrives; latency = that - the job's timestamp. Then disable, and again. The floor is
   the same measure for a plain trio program that spawns the same command, releases it
   the same way and notices its exit (process exit detection + the clock reading).
3. The daemon's RSS (VmRSS and VmHWM from /proc/PID/status) at the end.

Every process this script starts is stopped in a ``finally``; the floor programs also
stop by themselves after a bounded time. Everything lives in one temporary directory.

    /tmp/venv/bin/python bench/jobs.py              # full run (about 15 s)
    /tmp/venv/bin/python bench/jobs.py --quick      # 200 jobs, 50 drain trials
    /tmp/venv/bin/python bench/jobs.py --agents 2 --jobs 500 --trials 30

Internal roles (used by the script itself): ``jobs.py _direct JOBS WORKERS [DIR [MODE]]``
runs the throughput floor (with DIR: workspaces and logs in it; with MODE, a
``process_tracking`` mode, each job tracked as the daemon tracks it), ``jobs.py _drainfloor TRIALS
DIR`` the drain-latency floor.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import IO_TIMEOUT, Daemon, LineClient, describe_tree, median, pct, source_env, verdict, wait_for_bulk_run

# Targets, printed next to the figures.
TARGET_RATIO = 1.5
TARGET_DRAIN_P99_MS = 10.0

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.2  # status polls while the throughput run goes on (each encodes up to N items)
TRIAL_TIMEOUT = 10.0  # every wait inside one drain trial
FLOOR_MAX_SECONDS = 300.0  # a floor program left behind by a killed parent stops by itself

# The job of a drain trial: block on the FIFO until released, then write the time as the
# very last action and leave without the interpreter's shutdown. -I -S: no site, no env.
PROBE_CODE = (
    "import os,sys,time\n"
    "f=os.open(sys.argv[1],os.O_RDONLY);os.read(f,1)\n"
    "o=os.open(sys.argv[2],os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o644)\n"
    "os.write(o,b'%d'%time.time_ns());os._exit(0)\n"
)


def probe_argv(fifo: str, out: str) -> list[str]:
    # The real interpreter, not a shim (pyenv's python3 is a shell script).
    return [os.path.realpath(sys.executable), "-I", "-S", "-c", PROBE_CODE, fifo, out]


def release(fifo: str, deadline: float) -> None:
    """Write one byte to ``fifo`` once its reader (the probe job) has it open."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: nobody reads yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise RuntimeError(f"the probe job never opened {fifo}: {exc}") from None
            time.sleep(0.001)
            continue
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        return


# --------------------------------------------------------------------------------------
# Floors (each runs in its own process)
# --------------------------------------------------------------------------------------


def direct_main(jobs: int, workers: int, files_dir: str | None = None, tracking_mode: str | None = None) -> int:
    """``jobs`` ``true`` processes, ``workers`` at a time, from trio: spawn and wait.

    With ``files_dir``, each job first gets what the daemon gives it (``open_job_log`` in
    daemon/statedir.py): a workspace directory (its cwd) and a log file (its stdout and
    stderr), made the same way, in the trio thread. With ``tracking_mode`` too, each job is
    also a job tree as the daemon makes it (``[agents] process_tracking``, through
    daemon/jobtree.py of the tree under test): its tree made (a cgroup), the command that
    joins it (the shim), spawned with the tree's marker, waited for until the tree is
    empty, and the tree let go (the cgroup removed).
    """
    import trio

    tracking: Any = None
    if tracking_mode is not None:
        from daemon import jobtree  # the source under test comes first on PYTHONPATH

        assert files_dir is not None
        tracking = jobtree.setup(tracking_mode, files_dir)

    def open_files(i: int) -> tuple[str | None, Any]:
        if files_dir is None:
            return None, subprocess.DEVNULL
        workspace = Path(files_dir, "workspaces", "bulk", "1", "all", f"j{i:05d}")
        log = Path(files_dir, "logs", "bulk", "1", "all", f"j{i:05d}.log")
        workspace.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        return str(workspace), open(log, "wb")

    async def run() -> dict:
        left = [jobs]
        failures = [0]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                cwd, out = open_files(left[0])
                argv, env, tree = ["true"], None, None
                if tracking is not None:
                    tree = tracking.job(left[0])
                    argv = tree.command(argv)
                    env = {"PATH": os.environ.get("PATH") or os.defpath, **tree.env}
                try:
                    proc = await trio.lowlevel.open_process(
                        argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd, env=env, start_new_session=True
                    )
                finally:
                    if out is not subprocess.DEVNULL:
                        out.close()
                if tree is not None:
                    tree.spawned(proc.pid)
                if await proc.wait() != 0:
                    failures[0] += 1
                if tree is not None:
                    tree.main_reaped()
                    await tree.wait_empty()
                    tree.close()

        with trio.fail_after(FLOOR_MAX_SECONDS):
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            async with trio.open_nursery() as nursery:
                if tracking is not None:
                    nursery.start_soon(tracking.run)  # the subreaper's reaping (cgroup: returns at once)
                async with trio.open_nursery() as workers_nursery:
                    for _ in range(workers):
                        workers_nursery.start_soon(worker)
                seconds = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                nursery.cancel_scope.cancel()
            if tracking is not None:
                tracking.close()
        mechanism = tracking.describe() if tracking is not None else None
        return {
            "jobs": jobs,
            "workers": workers,
            "seconds": seconds,
            "cpu": cpu,
            "failures": failures[0],
            "tracking": mechanism,
        }

    print(json.dumps(trio.run(run)), flush=True)
    return 0


def drain_floor_main(trials: int, workdir: str) -> int:
    """Spawn the probe, release it, notice its exit: latency from its timestamp."""
    import trio

    fifo = os.path.join(workdir, "floor.fifo")
    out = os.path.join(workdir, "floor.ts")
    os.mkfifo(fifo)

    async def run() -> list[int]:
        latencies = []
        with trio.fail_after(FLOOR_MAX_SECONDS):
            for _ in range(trials):
                with trio.fail_after(TRIAL_TIMEOUT):
                    proc = await trio.lowlevel.open_process(
                        probe_argv(fifo, out),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                    while True:
                        try:
                            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                            break
                        except OSError as exc:
                            if exc.errno != errno.ENXIO:
                                raise
                            await trio.sleep(0.001)
                    # the same pause as the daemon's trial has before the release: none
                    os.write(fd, b"x")
                    os.close(fd)
                    code = await proc.wait()
                    seen = time.time_ns()
                if code != 0:
                    raise RuntimeError(f"the probe exited with {code}")
                # outside the timed part: a plain read of a few bytes
                latencies.append(seen - int(Path(out).read_bytes()))  # noqa: ASYNC240
                os.unlink(out)
        return latencies

    print(json.dumps(trio.run(run)), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------


def write_config(path: Path, args: argparse.Namespace, fifo: str, out: str) -> None:
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "[agents]",
        f"count = {args.agents}",
        f'process_tracking = "{args.tracking}"',
        'cancel_grace = "1s"',
        "[maintenance]",
        'subsystem_restart_delay = "100ms"',
        "",
        "[[pipelines]]",
        'name = "bulk"',
        "[[pipelines.stages]]",
        'name = "all"',
    ]
    width = max(4, len(str(args.jobs)))
    for i in range(1, args.jobs + 1):
        lines += ["[[pipelines.stages.jobs]]", f'name = "j{i:0{width}d}"', 'command = ["true"]']
    lines += [
        "",
        "[[pipelines]]",
        'name = "probe"',
        "[[pipelines.stages]]",
        'name = "last"',
        "[[pipelines.stages.jobs]]",
        'name = "probe"',
        f"command = {json.dumps(probe_argv(fifo, out))}",
        "",
    ]
    path.write_text("\n".join(lines))


class Watcher:
    """A ``watch`` connection: lines in arrival order, each with the time its chunk came."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.buf = b""
        self.sock.sendall(b'{"id":1,"type":"watch"}\n')
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            line, _ = self.next_line(deadline)
            msg = json.loads(line)
            if msg.get("id") == 1:
                if not msg.get("ok"):
                    raise RuntimeError(f"watch refused: {msg}")
                break

    def close(self) -> None:
        self.sock.close()

    def discard_pending(self) -> None:
        """Drop everything received so far (without waiting)."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    raise RuntimeError("the daemon closed the watch connection")
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        self.buf = b""

    def next_line(self, deadline: float) -> tuple[bytes, int]:
        """The next line and the time.time_ns() at which the chunk holding it arrived."""
        now_ns = time.time_ns()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no event from the daemon before the deadline")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            now_ns = time.time_ns()
            if not data:
                raise RuntimeError("the daemon closed the watch connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line, now_ns

    def wait_safe(self, deadline: float) -> int:
        """Receive time of the first ``state_changed`` event with ``safe_to_restart``."""
        while True:
            line, at = self.next_line(deadline)
            if b'"state_changed"' not in line:
                continue
            event = json.loads(line)
            if event.get("event") == "state_changed" and event["maintenance"]["safe_to_restart"]:
                return at


def daemon_round(d: Daemon, c: LineClient, args: argparse.Namespace) -> dict:
    """One bulk run: trigger, poll status until nothing is scheduled or building, read the run."""
    cpu0 = cpu_seconds(d.proc.pid)
    t_sent = time.time()
    trig = c.request("trigger", pipeline="bulk")
    t_reply = time.time()
    run, polls = wait_for_bulk_run(d, c, trig["counter"], time.monotonic() + args.round_timeout, POLL_INTERVAL)
    cpu = cpu_seconds(d.proc.pid) - cpu0
    passed = sum(j["state"] == "passed" for j in run["jobs"])
    if run["state"] != "passed" or passed != args.jobs:
        raise RuntimeError(f"bulk/{trig['counter']}: {run['state']}, {passed} of {args.jobs} jobs passed")
    end = run["finished_at"]
    return {
        "seconds": end - t_sent,
        "from_reply": end - t_reply,
        "reply_ms": (t_reply - t_sent) * 1000,
        "polls": polls,
        "cpu": cpu,
    }


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far, its children not counted."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct_round(args: argparse.Namespace, env: dict, files_dir: Path | None = None, tracked: bool = False) -> dict:
    cmd = [sys.executable, str(HERE), "_direct", str(args.jobs), str(args.agents)]
    if files_dir is not None:
        shutil.rmtree(files_dir, ignore_errors=True)
        files_dir.mkdir()
        cmd.append(str(files_dir))
        if tracked:
            cmd.append(args.tracking)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.round_timeout + 30, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the direct-spawn floor failed ({done.returncode}):\n{done.stderr[-2000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if res["failures"]:
        raise RuntimeError(f"{res['failures']} direct `true` processes failed")
    if files_dir is not None:
        shutil.rmtree(files_dir, ignore_errors=True)
    return res


def subsystems_ready(status: dict) -> bool:
    """Draining, agents paused with the probe as its only blocking item, the rest drained."""
    if status["maintenance"]["state"] != "draining":
        return False
    for s in status["subsystems"]:
        if s["name"] == "agents":
            if s["state"] != "paused" or s["blocking"] != 1:
                return False
        elif s["state"] != "drained":
            return False
    return True


def drain_trials(d: Daemon, c: LineClient, args: argparse.Namespace, fifo: str, out: str) -> dict:
    w = Watcher(d.sock)
    latencies: list[int] = []
    t_start = time.monotonic()
    try:
        for _ in range(args.trials):
            deadline = time.monotonic() + TRIAL_TIMEOUT
            with_suppress_unlink(out)
            c.request("trigger", pipeline="probe")
            # the probe runs: its agent has it building; wait until it is an in-flight item
            while True:
                s = c.request("status")
                if [i["job"] for i in s["running_systems"]["building_jobs"]] == ["probe"]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the probe job did not start building")
                time.sleep(0.002)
            c.request("enable", reason="bench: drain latency")
            while not subsystems_ready(c.request("status")):
                if time.monotonic() > deadline:
                    raise RuntimeError("the drain did not reach 'only the probe is left'")
                time.sleep(0.002)
            w.discard_pending()
            release(fifo, deadline)  # waits until the probe has the FIFO open
            seen = w.wait_safe(deadline)
            with open(out, "rb") as f:
                latencies.append(seen - int(f.read()))
            c.request("disable")
    finally:
        w.close()
    return {"latencies": latencies, "seconds": time.monotonic() - t_start}


def with_suppress_unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def drain_floor(args: argparse.Namespace, tmp: Path, env: dict) -> list[int]:
    workdir = tmp / "drainfloor"
    workdir.mkdir()
    cmd = [sys.executable, str(HERE), "_drainfloor", str(args.trials), str(workdir)]
    timeout = args.trials * TRIAL_TIMEOUT + 30
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the drain floor failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    fifo = str(tmp / "probe.fifo")
    out = str(tmp / "probe.ts")
    os.mkfifo(fifo)
    config = tmp / "maintd.toml"
    write_config(config, args, fifo, out)
    res: dict[str, Any] = {"daemon_rounds": [], "direct_rounds": [], "files_rounds": [], "tracked_rounds": []}
    d = Daemon(tmp, config, env)
    ok = False
    try:
        d.wait_ready(START_TIMEOUT)
        c = LineClient(d.sock)
        try:
            # ABBA: direct, files, tracked, daemon, daemon, tracked, ... so that drift hits all alike
            for r in range(args.rounds):
                order = ("direct", "files", "tracked", "daemon")
                for name in order if r % 2 == 0 else reversed(order):
                    if name == "direct":
                        res["direct_rounds"].append(direct_round(args, env))
                    elif name == "files":
                        res["files_rounds"].append(direct_round(args, env, tmp / "direct-files"))
                    elif name == "tracked":
                        res["tracked_rounds"].append(direct_round(args, env, tmp / "direct-tracked", tracked=True))
                    else:
                        res["daemon_rounds"].append(daemon_round(d, c, args))
            res["mem_after_jobs"] = d.proc_status()
            res["drain"] = drain_trials(d, c, args, fifo, out)
            res["drain_floor"] = drain_floor(args, tmp, env)
            d.check_alive()
            res["mem"] = d.proc_status()
            res["pid"] = d.proc.pid
        finally:
            c.close()
        ok = True
    finally:
        try:
            if not ok:
                tail = d.log_text()[-3000:]
                if tail.strip():
                    print(f"--- maintd log (tail) ---\n{tail}\n---", file=sys.stderr)
        finally:
            d.stop()
    return res


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def report(args: argparse.Namespace, source: Path, res: dict, total: float) -> None:
    import trio

    w = print
    n = args.jobs
    w(
        f"maintd job server benchmark  (python {sys.version.split()[0]}, trio {trio.__version__}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f})"
    )
    w(f"tree: {describe_tree(source)}")
    w("")
    dr, fr = res["daemon_rounds"], res["direct_rounds"]
    d_s = median([r["seconds"] for r in dr])
    d_reply = median([r["from_reply"] for r in dr])
    f_s = median([r["seconds"] for r in fr])
    w(
        f"1. throughput: {n:,} jobs `true`, {args.agents} agents / {args.agents} concurrent direct spawns, "
        f"{args.rounds} alternating round(s), median:"
    )
    w(f"  {'':44}{'wall s':>9}{'jobs/s':>9}{'cpu ms/job':>11}   rounds (s)")

    def cpu_ms(rounds: list[dict]) -> str:
        return f"{median([r['cpu'] for r in rounds]) / n * 1e3:>11.2f}"

    rounds = " ".join(f"{r['seconds']:.2f}" for r in dr)
    w(f"  {'daemon, trigger sent -> run finished_at':44}{d_s:>9.2f}{n / d_s:>9.0f}{cpu_ms(dr)}   {rounds}")
    rounds = " ".join(f"{r['from_reply']:.2f}" for r in dr)
    w(f"  {'daemon, trigger reply -> run finished_at':44}{d_reply:>9.2f}{n / d_reply:>9.0f}   {rounds}")
    rounds = " ".join(f"{r['seconds']:.2f}" for r in fr)
    w(f"  {'direct trio spawns (floor)':44}{f_s:>9.2f}{n / f_s:>9.0f}{cpu_ms(fr)}   {rounds}")
    fi = res["files_rounds"]
    fi_s = median([r["seconds"] for r in fi])
    rounds = " ".join(f"{r['seconds']:.2f}" for r in fi)
    w(f"  {'direct, + workspace dir and log file each':44}{fi_s:>9.2f}{n / fi_s:>9.0f}{cpu_ms(fi)}   {rounds}")
    tr = res["tracked_rounds"]
    tr_s = median([r["seconds"] for r in tr])
    rounds = " ".join(f"{r['seconds']:.2f}" for r in tr)
    w(f"  {'direct, + files + job tree (tracked floor)':44}{tr_s:>9.2f}{n / tr_s:>9.0f}{cpu_ms(tr)}   {rounds}")
    w("    (cpu ms/job: the spawning process's own CPU time, user + system, its children not counted)")
    w(f"    (the tracked floor: each job's tree as the daemon makes it: {tr[0]['tracking']})")
    w(f"  ratio daemon/direct: {d_s / f_s:.2f}x from the trigger request, {d_reply / f_s:.2f}x from its reply")
    w(
        f"  ratio daemon/(direct + workspace and log, as statedir.open_job_log makes them): {d_s / fi_s:.2f}x; "
        f"the files alone cost {(fi_s - f_s) / n * 1e3:.2f} ms a job here"
    )
    w(
        f"  ratio daemon/tracked floor (direct + files + the same process tracking): {d_s / tr_s:.2f}x; "
        f"tracking costs {(tr_s - fi_s) / n * 1e3:.2f} ms a job here, maintd itself {(d_s - tr_s) / n * 1e3:.2f} ms"
    )
    d_cpu, tr_cpu = (median([r["cpu"] for r in rounds]) for rounds in (dr, tr))
    w(f"  cpu daemon/tracked floor: {d_cpu / tr_cpu:.2f}x (less noisy than the wall time on a shared machine)")
    w(
        f"  the trigger reply took {median([r['reply_ms'] for r in dr]):.0f} ms (the {n:,} jobs stored and queued); "
        f"end found by {median([r['polls'] for r in dr]):.0f} status polls at {POLL_INTERVAL * 1000:.0f} ms, "
        f"the time itself is the run's finished_at"
    )
    w("")
    lat = sorted(x / 1e6 for x in res["drain"]["latencies"])
    flo = sorted(x / 1e6 for x in res["drain_floor"])
    w(
        f"2. drain latency: last job's exit (its own time.time_ns()) -> state_changed safe_to_restart on a watcher, "
        f"{len(lat)} trials ({res['drain']['seconds']:.1f} s), ms:"
    )
    w(f"  {'':44}{'p50':>8}{'p99':>8}{'max':>8}{'min':>8}")
    w(f"  {'daemon':44}{pct(lat, 0.5):>8.2f}{pct(lat, 0.99):>8.2f}{lat[-1]:>8.2f}{lat[0]:>8.2f}")
    w(f"  {'trio spawn + exit detection (floor)':44}{pct(flo, 0.5):>8.2f}{pct(flo, 0.99):>8.2f}{flo[-1]:>8.2f}{flo[0]:>8.2f}")
    w("")
    mem, mem1 = res["mem"], res["mem_after_jobs"]
    w(
        f"3. daemon memory (pid {res['pid']}): VmRSS {mem['VmRSS'] / 1024:.1f} MiB at the end "
        f"({mem1['VmRSS'] / 1024:.1f} MiB after the throughput rounds), peak VmHWM {mem['VmHWM'] / 1024:.1f} MiB"
    )
    w("")
    w("targets:")
    ratio = d_s / f_s
    w(
        f"  {n:,} jobs within {TARGET_RATIO:g}x of direct spawns        daemon/direct = {ratio:.2f}x "
        f"({d_reply / f_s:.2f}x from the trigger reply)   {verdict(ratio <= TARGET_RATIO)}"
    )
    w(f"  {'':47}daemon/tracked floor = {d_s / tr_s:.2f}x   {verdict(d_s / tr_s <= TARGET_RATIO)}")
    p99 = pct(lat, 0.99)
    w(
        f"  drain latency p99 under {TARGET_DRAIN_P99_MS:g} ms               p99 = {p99:.2f} ms "
        f"(floor {pct(flo, 0.99):.2f} ms)   {verdict(p99 < TARGET_DRAIN_P99_MS)}"
    )
    w(f"total time {total:.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Job server benchmark: jobs through scheduler and agents against direct spawns, and drain latency.",
    )
    parser.add_argument("--agents", type=int, default=4, help="agents, and concurrent direct spawns (default 4)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the throughput run (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating throughput rounds per side (default 2)")
    parser.add_argument("--trials", type=int, default=200, help="drain-latency trials (default 200)")
    parser.add_argument("--round-timeout", type=float, default=120.0, help="bound on one throughput round, s (default 120)")
    parser.add_argument(
        "--tracking",
        choices=("auto", "cgroup", "subreaper"),
        default="auto",
        help="[agents] process_tracking of the daemon and of the tracked floor (default auto)",
    )
    parser.add_argument("--source", type=Path, default=REPO, help="source tree to run maintd from (default: this checkout)")
    parser.add_argument("--quick", action="store_true", help="200 jobs, 1 round, 50 drain trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.rounds, args.trials = 200, 1, 50
    if (
        not 1 <= args.agents <= 256
        or not 1 <= args.jobs <= 100_000
        or not 1 <= args.rounds <= 10
        or not 1 <= args.trials <= 10_000
    ):
        parser.error("--agents 1-256, --jobs 1-100000, --rounds 1-10, --trials 1-10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the daemon is stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    source = args.source.resolve()
    env = source_env(source)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="maintd-jobs-bench-"))
    try:
        res = run_all(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, source, res, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_direct":
        extra = sys.argv[4:6]
        sys.exit(direct_main(int(sys.argv[2]), int(sys.argv[3]), *extra))
    if len(sys.argv) > 1 and sys.argv[1] == "_drainfloor":
        sys.exit(drain_floor_main(int(sys.argv[2]), sys.argv[3]))
    sys.exit(main())
