"""Benchmark of the remote agents (issue 12): jobs through maintd's Celery backend, and drain latency.

Not a test: it measures and prints, next to the targets and the floors measured in the
same run. One run, in one temporary directory, starts its own ``redis-server`` on a free
loopback port (no persistence) and two ``maintd-agent`` workers, ``w1`` and ``w2``
(``python -m remote.worker --slots 2``, each in a session of its own, with a work dir of
its own: two hosts), then:

1. Throughput: one pipeline with one stage of N jobs (``command = ["true"]``, default
   1,000) through a maintd with ``[agents] backend = "celery"`` on those 4 slots, timed
   from the moment the ``trigger`` request is sent to the run's ``finished_at`` (the end
   found by polling ``status``, as bench/jobs.py does), against two floors, each the same
   N tasks (:data:`remote.contract.TASK_NAME` with a :class:`remote.contract.RemoteJob`
   for ``true``, to a worker's queue: the same task code on the same workers) sent
   straight to Celery by a plain client in a process of its own, which learns of each
   end the way Celery's own ``AsyncResult.get`` does on Redis (the result backend's
   publish on the task's key; here one pattern subscription for all):

   - windowed: at most one task in flight per slot (4), the next one sent to a worker as
     soon as one of its tasks has ended: what maintd does (it publishes only to a slot
     known to be idle, so the broker never holds a backlog);
   - burst: all N sent at once (half to each worker's queue), the broker holding the
     backlog: the fastest Celery does with these workers.

   Daemon and floor rounds alternate (ABBA); medians, and the ratios. For each round the
   daemon's and the floor client's CPU time, redis-server's and the workers' CPU time and
   the broker's commands (``INFO commandstats``, reset before each round) are noted: per
   job, what each side costs and asks of the broker. A job's way is split in four, for
   maintd and the windowed floor, from the run's rows and the tasks' results
   (``RemoteResult.started_at``/``finished_at``, same host, same clock): handed to a slot
   (sent) -> running on the worker -> its end -> the client knows -> the next job handed
   to that slot. With ``--events`` a second receiver of Celery's task events splits the
   first step further (published, received by the worker, in a pool process, running);
   it costs both sides alike, so it is off by default.
2. Drain latency: the time from the last job's end to ``safe_to_restart`` while in
   maintenance, measured as bench/jobs.py measures it (a one-job pipeline whose job blocks
   on a FIFO; once it is the only thing the drain waits for, it is released, writes
   ``time.time_ns()`` to a file as its very last action and ``os._exit(0)``s; a ``watch``
   connection takes the time the ``state_changed`` event with ``safe_to_restart: true``
   arrives). The job runs on a worker, which here is this machine, so the same FIFO
   works. The same trials on a second maintd with the default local backend are the
   reference; the two alternate in blocks of 5 trials. A remote trial is also split in
   three: the job's end -> its tree found empty on the worker (the task's
   ``finished_at``) -> the end entry in the job's Redis stream (the entry id's time, in
   ms) -> ``safe_to_restart``.

Every process this script starts is stopped in a ``finally``: the daemons, the workers
(their whole session killed), redis-server, and any job process left under the temporary
directory. Every wait is bounded.

    /work/main/.venv/bin/python bench/celery_jobs.py            # full run (1,000 jobs, 3 rounds, 30 trials; ~80 s)
    /work/main/.venv/bin/python bench/celery_jobs.py --quick    # 200 jobs, 1 round, 10 trials (~15 s)
    /work/main/.venv/bin/python bench/celery_jobs.py --rounds 5 --events

Internal role (used by the script itself): ``celery_jobs.py _floor MODE JOBS BROKER ROUND``
runs one floor round (MODE ``window`` or ``burst``) and prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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

from _common import Daemon, LineClient, describe_tree, median, pct, source_env, stop_process, verdict, wait_for_bulk_run
from jobs import Watcher, cpu_seconds, probe_argv, release, subsystems_ready, with_suppress_unlink

TARGET_RATIO = 1.5

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
REDIS_SERVER = "/usr/bin/redis-server"
QUEUE = "maintd"
#: the workers: two hosts of 2 slots each
WORKERS = (("w1", 2), ("w2", 2))
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.2  # status polls while a throughput round goes on
TRIAL_TIMEOUT = 15.0  # every wait inside one drain trial
TRIAL_BLOCK = 5  # drain trials on one daemon before the other's turn
FLOOR_MAX_SECONDS = 300.0  # a floor program left behind by a killed parent stops by itself
MARK = b"MAINTD_JOB="


# --------------------------------------------------------------------------------------
# The floors: a plain Celery client (in a process of its own)
# --------------------------------------------------------------------------------------


def floor_main(mode: str, jobs: int, broker: str, round_no: int) -> int:
    """Send ``jobs`` ``true`` tasks to the workers' queues and wait for every result.

    ``window``: one task in flight per slot, the next one to a worker as soon as one of its
    tasks has ended. ``burst``: all sent at once. The results are learnt from the result
    backend's publish on each task's key (what ``AsyncResult.get`` waits on with Redis),
    through one pattern subscription made before the first send.
    """
    import msgspec
    import redis

    from remote.contract import TASK_NAME, RemoteJob, make_app, worker_queue

    signal.alarm(int(FLOOR_MAX_SECONDS))
    app: Any = make_app(broker)
    client = redis.Redis.from_url(broker, socket_timeout=30)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe("celery-task-meta-*")
    # the subscription is in place once its confirmation is read
    deadline = time.monotonic() + 10
    while sub.subscribed is False or not sub.patterns:
        if time.monotonic() > deadline:
            raise RuntimeError("no subscription to the results")
        sub.get_message(timeout=0.1)
    with app.producer_or_acquire() as warm:  # the connection made before the clock starts
        warm.connection.ensure_connection()
    width = max(4, len(str(jobs)))
    payloads = []
    for i in range(jobs):
        name = f"j{i + 1:0{width}d}"
        job = RemoteJob(
            task_id=f"floor-{mode}-{round_no}-{i}",
            job_id=i + 1,
            pipeline=f"floor-{mode}",
            pipeline_counter=round_no,
            stage="all",
            stage_counter=1,
            job=name,
            argv=("true",),
            env={
                "GO_PIPELINE_NAME": f"floor-{mode}",
                "GO_PIPELINE_COUNTER": str(round_no),
                "GO_STAGE_NAME": "all",
                "GO_STAGE_COUNTER": "1",
                "GO_JOB_NAME": name,
            },
            grace=1.0,
        )
        payloads.append((job.task_id, msgspec.to_builtins(job)))
    slots = [name for name, n in WORKERS for _ in range(n)]
    in_flight: dict[str, str] = {}  # task id -> worker
    sent_at: dict[str, float] = {}
    steps: list[tuple[float, float, float]] = []  # sent -> started, started -> finished, finished -> seen
    last_seen: dict[str, list[float]] = {name: [] for name, _ in WORKERS}  # a worker's ends, for the next send
    gaps: list[float] = []  # an end seen -> the next task sent to that worker
    failures = 0
    done = 0
    sent = 0

    def send(worker: str) -> None:
        nonlocal sent
        task, payload = payloads[sent]
        sent += 1
        in_flight[task] = worker
        if last_seen[worker]:
            gaps.append(time.time() - last_seen[worker].pop())
        sent_at[task] = time.time()
        app.send_task(TASK_NAME, args=[payload], task_id=task, queue=worker_queue(QUEUE, worker), retry=False)

    cpu0 = time.process_time()
    t0 = time.time()
    if mode == "burst":
        while sent < jobs:
            send(WORKERS[sent % len(WORKERS)][0])
    else:
        while slots and sent < jobs:
            send(slots.pop())
    t_sent = time.time()
    while done < jobs:
        msg = sub.get_message(timeout=30)
        if msg is None:
            if time.time() - t0 > FLOOR_MAX_SECONDS:
                raise RuntimeError(f"{done} of {jobs} tasks ended")
            continue
        meta = json.loads(msg["data"])
        if meta.get("status") not in ("SUCCESS", "FAILURE"):
            continue
        seen = time.time()
        worker = in_flight.pop(meta.get("task_id"), None)
        if worker is None:
            continue
        done += 1
        result = meta.get("result")
        if meta["status"] != "SUCCESS" or not isinstance(result, dict) or result.get("returncode") != 0:
            failures += 1
        else:
            started, finished = result["started_at"], result["finished_at"]
            steps.append((started - sent_at[meta["task_id"]], finished - started, seen - finished))
        last_seen[worker].append(seen)
        if mode == "window" and sent < jobs:
            send(worker)
    seconds = time.time() - t0
    cpu = time.process_time() - cpu0
    sub.close()
    client.close()
    figures = {"seconds": seconds, "send_s": t_sent - t0, "cpu": cpu, "failures": failures}
    figures["steps"] = [median([x[i] for x in steps]) for i in range(3)] + [median(gaps)]
    figures["sent"] = sent_at
    print(json.dumps(figures), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# redis-server and the workers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of our own on a loopback port: no persistence, in a session of its own."""

    def __init__(self, folder: Path) -> None:
        binary = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        folder.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [
            binary,
            *["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder)],
            *["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(folder / "redis.log")],
        ]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        import redis

        self.client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=10)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited while starting with code {self.proc.returncode}")
                with contextlib.suppress(redis.RedisError):
                    if self.client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT:.0f} s")
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise

    def reset_stats(self) -> None:
        self.client.config_resetstat()

    def command_stats(self) -> dict[str, int]:
        """Calls per command since the last reset (``INFO commandstats``)."""
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in self.client.info("commandstats").items()}

    def result_keys(self) -> set[bytes]:
        return set(self.client.scan_iter(match="celery-task-meta-*", count=1000))

    def results(self, keys: set[bytes]) -> dict[str, dict]:
        """The RemoteResult of each of these tasks, by task id."""
        out = {}
        keys = sorted(keys)
        for i in range(0, len(keys), 500):
            for key, raw in zip(keys[i : i + 500], self.client.mget(keys[i : i + 500]), strict=True):
                result = json.loads(raw).get("result") if raw else None
                if isinstance(result, dict) and result.get("started_at") and result.get("finished_at"):
                    out[key.decode().removeprefix("celery-task-meta-")] = result
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        stop_process(self.proc)


class Worker:
    """``python -m remote.worker`` (maintd-agent) in a session of its own."""

    def __init__(self, tmp: Path, name: str, slots: int, broker: str, env: dict) -> None:
        from remote.contract import node_name
        from remote.worker import short_host

        self.name = name
        self.node = node_name(name, short_host())
        self.work_dir = tmp / f"agent-{name}"
        self.log_path = tmp / f"agent-{name}.log"
        command = [
            *[sys.executable, "-m", "remote.worker", "--broker", broker, "--name", name],
            *["--slots", str(slots), "--work-dir", str(self.work_dir), "--queue", QUEUE],
            *["--heartbeat", "1", "--log-level", "warning"],
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(tmp), start_new_session=True
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def session_cpu(self) -> float:
        """CPU time of the worker and its pool processes (its session), children reaped counted."""
        total = 0.0
        for pid in session_pids(self.proc.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        """SIGTERM to the session (a warm shutdown: nothing runs by now), then SIGKILL to it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def session_pids(sid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(name)) == sid:
                    found.append(int(name))
    return found


def wait_workers(broker: str, workers: list[Worker]) -> None:
    """Until each worker answers a Celery ping."""
    from remote.contract import make_app

    app: Any = make_app(broker)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for w in workers:
            while True:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"maintd-agent {w.name} exited with {w.proc.returncode}:\n{w.log_text()[-2000:]}")
                with contextlib.suppress(Exception):
                    if any(w.node in reply for reply in app.control.ping(destination=[w.node], timeout=0.5)):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"maintd-agent {w.name} did not answer a ping within {START_TIMEOUT:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            app.close()


class EventLog:
    """With --events: Celery's task events, as a second receiver next to maintd's (a thread
    here): when each task was sent (after its publish), received by the worker, and started
    in a pool process, by task id. It costs both sides alike."""

    KINDS = ("task-sent", "task-received", "task-started", "task-succeeded")

    def __init__(self, broker: str) -> None:
        import threading

        from remote.contract import make_app

        self.app: Any = make_app(broker)
        self.times: dict[str, dict[str, float]] = {}
        self.receiver: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="events", daemon=True)
        self.thread.start()
        if not self.ready.wait(START_TIMEOUT):
            raise RuntimeError("the event receiver did not start")

    def _on(self, event: dict) -> None:
        self.times.setdefault(event.get("uuid", ""), {})[event["type"]] = event["timestamp"]

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self.receiver = self.app.events.Receiver(conn, handlers={k: self._on for k in self.KINDS})
                self.ready.set()
                self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # noqa: BLE001 - told at the end
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(5)  # the workers' heartbeats (every second) wake it
        with contextlib.suppress(Exception):
            self.app.close()


def event_steps(events: EventLog | None, sent: dict[str, float], results: dict[str, dict]) -> list[float] | None:
    """Medians, per task: sent (handed to a slot, or the floor's send) -> published (task-sent),
    -> received by the worker, -> started in a pool process, -> the job running (after its
    spawn); the job's end -> task-succeeded."""
    if events is None:
        return None
    rows = []
    for task, at in sent.items():
        ev, r = events.times.get(task, {}), results.get(task)
        if r is None or any(k not in ev for k in EventLog.KINDS):
            continue
        rows.append(
            (
                ev["task-sent"] - at,
                ev["task-received"] - ev["task-sent"],
                ev["task-started"] - ev["task-received"],
                r["started_at"] - ev["task-started"],
                ev["task-succeeded"] - r["finished_at"],
            )
        )
    return [median([x[i] for x in rows]) for i in range(5)] if rows else None


def job_processes(root: Path) -> list[int]:
    """Live job processes (MAINTD_JOB in their environment) whose cwd is below ``root``."""
    found = []
    prefix = str(root.resolve()) + os.sep
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if (env.startswith(MARK) or b"\0" + MARK in env) and (cwd + os.sep).startswith(prefix):
            found.append(int(name))
    return found


def kill_jobs_left(root: Path) -> None:
    deadline = time.monotonic() + 10
    while pids := job_processes(root):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            print(f"celery_jobs.py: job processes {pids} would not go", file=sys.stderr)
            return
        time.sleep(0.01)


# --------------------------------------------------------------------------------------
# The daemons
# --------------------------------------------------------------------------------------


def probe_pipeline(fifo: str, out: str) -> list[str]:
    return [
        "[[pipelines]]",
        'name = "probe"',
        "[[pipelines.stages]]",
        'name = "last"',
        "[[pipelines.stages.jobs]]",
        'name = "probe"',
        f"command = {json.dumps(probe_argv(fifo, out))}",
        "",
    ]


def write_celery_config(path: Path, args: argparse.Namespace, broker: str, fifo: str, out: str) -> None:
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "[agents]",
        'backend = "celery"',
        'cancel_grace = "1s"',
        "[celery]",
        f'broker = "{broker}"',
        f'queue = "{QUEUE}"',
        'heartbeat = "1s"',
        'lost_timeout = "30s"',
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
    lines += ["", *probe_pipeline(fifo, out)]
    path.write_text("\n".join(lines))


def write_local_config(path: Path, fifo: str, out: str) -> None:
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "[agents]",
        "count = 4",
        'cancel_grace = "1s"',
        "[maintenance]",
        'subsystem_restart_delay = "100ms"',
        "",
        *probe_pipeline(fifo, out),
    ]
    path.write_text("\n".join(lines))


class Side:
    """One maintd under test: its folder, FIFO, timestamp file, daemon and client."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        self.fifo = str(self.dir / "probe.fifo")
        self.out = str(self.dir / "probe.ts")
        os.mkfifo(self.fifo)
        self.config = self.dir / "maintd.toml"
        self.d: Daemon | None = None
        self.c: LineClient | None = None
        self.w: Watcher | None = None
        self.latencies: list[int] = []
        #: remote only: per trial, (job end -> tree empty on the worker, -> end entry in Redis, -> safe), ns
        self.parts: list[tuple[int, int, int]] = []
        self.redis: Redis | None = None

    def start(self, env: dict) -> None:
        self.d = Daemon(self.dir, self.config, env)
        self.d.wait_ready(START_TIMEOUT)
        self.c = LineClient(self.d.sock)

    def stop(self) -> None:
        for closing in (self.w, self.c):
            if closing is not None:
                with contextlib.suppress(OSError):
                    closing.close()
        if self.d is not None:
            self.d.stop()
        # a probe left blocked (a failed trial): let it go
        with contextlib.suppress(OSError):
            fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
            os.write(fd, b"x")
            os.close(fd)


def wait_slots(side: Side) -> None:
    """Until the daemon knows both workers, with their slots, idle."""
    want = {name: n for name, n in WORKERS}
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        side.d.check_alive()
        rows = side.c.request("agents")["agents"]
        have = {r["name"]: r["slots"] for r in rows if r["state"] == "idle"}
        if have == want:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"maintd did not see the workers' slots within {START_TIMEOUT:.0f} s: {rows}")
        time.sleep(0.05)


def daemon_round(side: Side, args: argparse.Namespace, redis: Redis, workers: list[Worker], events: EventLog | None) -> dict:
    """One bulk run: trigger, poll status until nothing is scheduled or building, read the run."""
    d, c = side.d, side.c
    wait_slots(side)
    keys0 = redis.result_keys()
    redis.reset_stats()
    cpu0 = cpu_seconds(d.proc.pid)
    rcpu0 = cpu_seconds(redis.proc.pid)
    wcpu0 = sum(w.session_cpu() for w in workers)
    t_sent = time.time()
    trig = c.request("trigger", pipeline="bulk")
    t_reply = time.time()
    run, _polls = wait_for_bulk_run(d, c, trig["counter"], time.monotonic() + args.round_timeout, POLL_INTERVAL)
    cpu = cpu_seconds(d.proc.pid) - cpu0
    rcpu = cpu_seconds(redis.proc.pid) - rcpu0
    wcpu = sum(w.session_cpu() for w in workers) - wcpu0
    commands = redis.command_stats()
    results = redis.results(redis.result_keys() - keys0)
    job_s = [r["finished_at"] - r["started_at"] for r in results.values()]
    steps = daemon_steps(run["jobs"], results)
    handed = {j["id"]: j["started_at"] for j in run["jobs"]}
    sent = {task: handed[int(task.rsplit("-", 2)[1])] for task in results if int(task.rsplit("-", 2)[1]) in handed}
    passed = sum(j["state"] == "passed" for j in run["jobs"])
    if run["state"] != "passed" or passed != args.jobs:
        raise RuntimeError(f"bulk/{trig['counter']}: {run['state']}, {passed} of {args.jobs} jobs passed")
    end = run["finished_at"]
    return {
        "seconds": end - t_sent,
        "from_reply": end - t_reply,
        "reply_ms": (t_reply - t_sent) * 1000,
        "cpu": cpu,
        "redis_cpu": rcpu,
        "workers_cpu": wcpu,
        "commands": commands,
        "job_s": job_s,
        "steps": steps,
        "events": event_steps(events, sent, results),
    }


def daemon_steps(jobs: list[dict], results: dict[str, dict]) -> list[float]:
    """Medians, per job: handed to a slot -> running on the worker, running -> its end on the
    worker, that end -> recorded by maintd, and recorded -> the next job handed to that slot.
    The task id ends with the job's id and the time it was handed (ms)."""
    by_job = {int(task.rsplit("-", 2)[1]): r for task, r in results.items()}
    steps = []
    slots: dict[str, list[dict]] = {}
    for j in jobs:
        r = by_job.get(j["id"])
        if r is None or j["started_at"] is None or j["finished_at"] is None:
            continue
        steps.append((r["started_at"] - j["started_at"], r["finished_at"] - r["started_at"], j["finished_at"] - r["finished_at"]))
        slots.setdefault(j["agent"], []).append(j)
    gaps = []
    for on_slot in slots.values():
        on_slot.sort(key=lambda j: j["started_at"])
        gaps += [b["started_at"] - a["finished_at"] for a, b in itertools.pairwise(on_slot)]
    return [median([x[i] for x in steps]) for i in range(3)] + [median(gaps)]


def floor_round(
    mode: str, round_no: int, args: argparse.Namespace, env: dict, redis: Redis, workers: list[Worker], events: EventLog | None
) -> dict:
    keys0 = redis.result_keys()
    redis.reset_stats()
    rcpu0 = cpu_seconds(redis.proc.pid)
    wcpu0 = sum(w.session_cpu() for w in workers)
    cmd = [sys.executable, str(HERE), "_floor", mode, str(args.jobs), redis.url, str(round_no)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.round_timeout + 30, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} floor failed ({done.returncode}):\n{done.stderr[-2000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if res["failures"]:
        raise RuntimeError(f"{res['failures']} floor tasks failed")
    res["redis_cpu"] = cpu_seconds(redis.proc.pid) - rcpu0
    res["workers_cpu"] = sum(w.session_cpu() for w in workers) - wcpu0
    res["commands"] = redis.command_stats()
    results = redis.results(redis.result_keys() - keys0)
    res["job_s"] = [r["finished_at"] - r["started_at"] for r in results.values()]
    res["events"] = event_steps(events, res.pop("sent"), results)
    return res


def drain_trial(side: Side) -> None:
    """One trial (bench/jobs.py's): the probe building, maintenance on, the rest drained,
    the probe released; its end to safe_to_restart on the watcher."""
    c = side.c
    deadline = time.monotonic() + TRIAL_TIMEOUT
    with_suppress_unlink(side.out)
    c.request("trigger", pipeline="probe")
    while True:
        s = c.request("status")
        if [i["job"] for i in s["running_systems"]["building_jobs"]] == ["probe"]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: the probe job did not start building")
        time.sleep(0.002)
    c.request("enable", reason="bench: drain latency")
    while not subsystems_ready(c.request("status")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: the drain did not reach 'only the probe is left': {c.request('status')}")
        time.sleep(0.002)
    side.w.discard_pending()
    release(side.fifo, deadline)  # waits until the probe has the FIFO open
    seen = side.w.wait_safe(deadline)
    with open(side.out, "rb") as f:
        ended = int(f.read())
    side.latencies.append(seen - ended)
    if side.redis is not None:
        side.parts.append(remote_parts(side, ended, seen))
    c.request("disable")


def remote_parts(side: Side, ended: int, seen: int) -> tuple[int, int, int]:
    """Where the time of a remote trial went: the probe's end to its RemoteResult's
    finished_at (the worker saw the job's tree empty), to the XADD of the stream's end entry
    (its id: the Redis server's clock, in ms), to safe_to_restart on the watcher."""
    (run,) = side.c.request("runs", pipeline="probe", limit=1)["runs"]
    (job,) = run["jobs"]
    pattern = f"maintd:log:maintd-*-{job['id']}-{round(job['started_at'] * 1000)}"
    (stream,) = list(side.redis.client.scan_iter(match=pattern, count=10000))
    ((entry_id, fields),) = side.redis.client.xrevrange(stream, count=1)
    finished = round(json.loads(fields[b"end"])["finished_at"] * 1e9)
    added = int(entry_id.split(b"-")[0]) * 1_000_000
    return finished - ended, added - finished, seen - added


def drain_trials(sides: list[Side], trials: int) -> float:
    t0 = time.monotonic()
    for side in sides:
        side.w = Watcher(side.d.sock)
    left = {side.name: trials for side in sides}
    while any(left.values()):
        for side in sides:
            for _ in range(min(TRIAL_BLOCK, left[side.name])):
                drain_trial(side)
                left[side.name] -= 1
    return time.monotonic() - t0


def run_all(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    res: dict[str, Any] = {"daemon": [], "window": [], "burst": []}
    redis: Redis | None = None
    workers: list[Worker] = []
    remote = Side(tmp, "celery")
    local = Side(tmp, "local")
    events: EventLog | None = None
    ok = False
    try:
        redis = Redis(tmp / "redis")
        res["broker"] = redis.url
        for name, slots in WORKERS:
            workers.append(Worker(tmp, name, slots, redis.url, env))
        wait_workers(redis.url, workers)
        write_celery_config(remote.config, args, redis.url, remote.fifo, remote.out)
        write_local_config(local.config, local.fifo, local.out)
        remote.redis = redis
        remote.start(env)
        local.start(env)
        if args.events:
            events = EventLog(redis.url)
        # ABBA: daemon, window, burst, burst, window, daemon, ... so that drift hits all alike
        order = ("daemon", "window", "burst")
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else reversed(order):
                if name == "daemon":
                    res["daemon"].append(daemon_round(remote, args, redis, workers, events))
                else:
                    res[name].append(floor_round(name, r + 1, args, env, redis, workers, events))
        if events is not None:
            events.stop()
            events = None
        res["drain_seconds"] = drain_trials([remote, local], args.trials)
        res["drain_remote"] = remote.latencies
        res["drain_local"] = local.latencies
        res["drain_parts"] = remote.parts
        remote.d.check_alive()
        local.d.check_alive()
        ok = True
    finally:
        # the cleanup is bounded: a SIGTERM or Ctrl-C during it waits until it is done
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if not ok:
                for side in (remote, local):
                    tail = side.d.log_text()[-3000:] if side.d is not None else ""
                    if tail.strip():
                        print(f"--- maintd ({side.name}) log (tail) ---\n{tail}\n---", file=sys.stderr)
                for w in workers:
                    tail = w.log_text()[-2000:]
                    if tail.strip():
                        print(f"--- maintd-agent {w.name} log (tail) ---\n{tail}\n---", file=sys.stderr)
        finally:
            if events is not None:
                events.stop()
            for side in (remote, local):
                side.stop()
            for w in workers:
                w.stop()
            kill_jobs_left(tmp)
            if redis is not None:
                redis.stop()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return res


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def per_job_commands(rounds: list[dict], n: int, top: int = 8) -> str:
    """The broker's commands per job, median over the rounds, the most called first."""
    names = {k for r in rounds for k in r["commands"]}
    per = {k: median([r["commands"].get(k, 0) for r in rounds]) / n for k in names}
    best = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    total = sum(per.values())
    return f"{total:.1f} in all: " + ", ".join(f"{k} {v:.1f}" for k, v in best if v >= 0.05)


def report(args: argparse.Namespace, source: Path, res: dict, total: float, command: str) -> None:
    import celery

    w = print
    n = args.jobs
    slots = sum(s for _, s in WORKERS)
    load = os.getloadavg()
    w(
        f"maintd remote agents (Celery) benchmark  (python {sys.version.split()[0]}, celery {celery.__version__}, "
        f"{os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})"
    )
    w(f"tree: {describe_tree(source)}")
    w(f"command: {command}")
    w(
        f"broker: redis-server on {res['broker']} (no persistence); workers: "
        + ", ".join(f"{name} --slots {s}" for name, s in WORKERS)
        + " (python -m remote.worker, heartbeat 1 s)"
    )
    w("")
    dr, wr, br = res["daemon"], res["window"], res["burst"]
    d_s = median([r["seconds"] for r in dr])
    d_reply = median([r["from_reply"] for r in dr])
    w_s = median([r["seconds"] for r in wr])
    b_s = median([r["seconds"] for r in br])
    w(f"1. throughput: {n:,} `true` jobs on {slots} slots, {args.rounds} alternating round(s) per side, median:")
    w(f"  {'':50}{'wall s':>8}{'jobs/s':>8}{'client':>8}{'redis':>8}{'workers':>9}{'all':>7}   rounds (s)")
    w(f"  {'':50}{'':16}{'cpu ms/job':>25}")

    def row(label: str, rounds: list[dict], key: str = "seconds") -> None:
        s = median([r[key] for r in rounds])
        cpu = median([r["cpu"] for r in rounds]) / n * 1e3
        rcpu = median([r["redis_cpu"] for r in rounds]) / n * 1e3
        wcpu = median([r["workers_cpu"] for r in rounds]) / n * 1e3
        each = " ".join(f"{r[key]:.2f}" for r in rounds)
        w(f"  {label:50}{s:>8.2f}{n / s:>8.0f}{cpu:>8.2f}{rcpu:>8.2f}{wcpu:>9.2f}{cpu + rcpu + wcpu:>7.2f}   {each}")

    row("maintd (celery), trigger sent -> run finished_at", dr)
    w(f"  {'maintd (celery), trigger reply -> run finished_at':50}{d_reply:>8.2f}{n / d_reply:>8.0f}")
    row(f"floor: plain client, <= {slots} in flight (windowed)", wr)
    row(f"floor: plain client, all {n:,} sent at once (burst)", br)
    w("    (client cpu: maintd's own, or the floor client's; workers: the two workers' sessions, job processes included;")
    w(f"     all: the three added, what {os.cpu_count()} cpus must do per job, shared with whatever else runs here)")
    w(f"  ratio maintd/windowed floor: {d_s / w_s:.2f}x ({d_reply / w_s:.2f}x from the trigger reply)")
    w(f"  ratio maintd/burst floor:    {d_s / b_s:.2f}x;  windowed/burst: {w_s / b_s:.2f}x")
    w(f"  per job, maintd costs {(d_s - w_s) / n * 1e3:.2f} ms of wall time more than the windowed floor")
    w(f"  the trigger reply took {median([r['reply_ms'] for r in dr]):.0f} ms")
    w(f"  per slot and job (ms; cycle = {slots} slots x wall / jobs; job = on the worker, spawn to tree found empty):")
    for label, rounds in (("maintd", dr), ("windowed", wr), ("burst", br)):
        cycle = median([slots * r["seconds"] / n for r in rounds]) * 1e3
        job = median([sum(r["job_s"]) / max(1, len(r["job_s"])) for r in rounds]) * 1e3
        rest = cycle - job
        w(f"    {label + ':':10}cycle {cycle:6.2f}  job {job:6.2f}  the rest (pool, result, events, client) {rest:6.2f}")
    w("  a job's way (ms, medians; the windowed floor's client in maintd's place):")
    w(f"    {'':10}{'handed/sent -> running':>24}{'running -> end':>16}{'end -> client knows':>21}{'-> next on slot':>17}")
    for label, rounds in (("maintd", dr), ("windowed", wr)):
        st = [median([r["steps"][i] for r in rounds]) * 1e3 for i in range(4)]
        w(f"    {label + ':':10}{st[0]:>24.2f}{st[1]:>16.2f}{st[2]:>21.2f}{st[3]:>17.2f}")
    if args.events:
        w("  the start of a job, from Celery's events (ms, medians; --events):")
        heads = ("handed/sent -> published", "-> received", "-> in a pool", "-> running", "end -> succeeded")
        w(f"    {'':10}" + "".join(f"{h:>26}" if i == 0 else f"{h:>18}" for i, h in enumerate(heads)))
        for label, rounds in (("maintd", dr), ("windowed", wr), ("burst", br)):
            got = [r["events"] for r in rounds if r["events"]]
            if got:
                st = [median([g[i] for g in got]) * 1e3 for i in range(5)]
                w(f"    {label + ':':10}{st[0]:>26.2f}" + "".join(f"{x:>18.2f}" for x in st[1:]))
    w("  the broker's commands per job (INFO commandstats, median of the rounds):")
    w(f"    maintd:   {per_job_commands(dr, n)}")
    w(f"    windowed: {per_job_commands(wr, n)}")
    w(f"    burst:    {per_job_commands(br, n)}")
    w("")
    rem = sorted(x / 1e6 for x in res["drain_remote"])
    loc = sorted(x / 1e6 for x in res["drain_local"])
    w(
        f"2. drain latency: the last job's end (its own time.time_ns()) -> state_changed safe_to_restart on a watcher, "
        f"{len(rem)} trials each, alternating in blocks of {TRIAL_BLOCK} ({res['drain_seconds']:.1f} s), ms:"
    )
    w(f"  {'':50}{'p50':>8}{'p99':>8}{'max':>8}{'min':>8}")
    rows = (("remote job (celery backend, worker on this host)", rem), ("local job (local backend, a second maintd)", loc))
    for label, lat in rows:
        w(f"  {label:50}{pct(lat, 0.5):>8.2f}{pct(lat, 0.99):>8.2f}{lat[-1]:>8.2f}{lat[0]:>8.2f}")
    w(f"  ratio remote/local: p50 {pct(rem, 0.5) / pct(loc, 0.5):.1f}x, p99 {pct(rem, 0.99) / pct(loc, 0.99):.1f}x")
    w("  the remote job's time, in parts (the stream entry's time has a resolution of 1 ms):")
    names = ("the job's end -> its tree found empty on the worker", "-> the end entry in the Redis stream", "-> safe_to_restart")
    for i, label in enumerate(names):
        part = sorted(p[i] / 1e6 for p in res["drain_parts"])
        w(f"    {label:48}{pct(part, 0.5):>8.2f}{pct(part, 0.99):>8.2f}{part[-1]:>8.2f}{part[0]:>8.2f}")
    w("")
    w("targets:")
    ratio = d_s / w_s
    w(
        f"  {n:,} jobs within {TARGET_RATIO:g}x of the same tasks sent straight to Celery (windowed)   "
        f"maintd/floor = {ratio:.2f}x   {verdict(ratio <= TARGET_RATIO)}"
    )
    w(f"  {'':78}maintd/burst = {d_s / b_s:.2f}x   {verdict(d_s / b_s <= TARGET_RATIO)}")
    w(f"  drain latency p99, remote job: {pct(rem, 0.99):.2f} ms against {pct(loc, 0.99):.2f} ms for a local job (no target)")
    load = os.getloadavg()
    w(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; total time {total:.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Remote agents benchmark: jobs through maintd's Celery backend against the same tasks sent "
        "straight to Celery, and drain latency against a local job.",
    )
    parser.add_argument("--jobs", type=int, help="jobs in a throughput round (default 1000)")
    parser.add_argument("--rounds", type=int, help="alternating throughput rounds per side (default 3)")
    parser.add_argument("--trials", type=int, help="drain-latency trials per backend (default 30)")
    parser.add_argument("--round-timeout", type=float, default=300.0, help="bound on one throughput round, s (default 300)")
    parser.add_argument("--source", type=Path, default=REPO, help="source tree to run maintd from (default: this checkout)")
    parser.add_argument("--quick", action="store_true", help="200 jobs, 1 round, 10 drain trials (unless given)")
    parser.add_argument(
        "--events", action="store_true", help="also receive Celery's task events, to split a job's start into its steps"
    )
    args = parser.parse_args(argv)
    defaults = (200, 1, 10) if args.quick else (1000, 3, 30)
    args.jobs, args.rounds, args.trials = (
        given if given is not None else default
        for given, default in zip((args.jobs, args.rounds, args.trials), defaults, strict=True)
    )
    if not 1 <= args.jobs <= 100_000 or not 1 <= args.rounds <= 10 or not 1 <= args.trials <= 10_000:
        parser.error("--jobs 1-100000, --rounds 1-10, --trials 1-10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every process is stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    source = args.source.resolve()
    env = source_env(source)
    sys.path.insert(0, str(source))  # remote.contract and remote.worker of the tree under test
    command = " ".join(["python", "bench/celery_jobs.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="maintd-celery-bench-"))
    try:
        res = run_all(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, source, res, time.monotonic() - t0, command)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        sys.exit(floor_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
    sys.exit(main())
