#!/usr/bin/env python3
"""A batch worker that joins maintd's drain as an external subsystem.

While its intake is open it starts a real job (``sleep N`` in a process group of its own)
every ``--every`` seconds, at most ``--max-jobs`` at once, and reports the jobs as
cancellable ``building_job`` items described as "batch job 3 (sleep 20, pid 4242)".
On ``pause_intake`` it stops starting jobs and answers ``intake_paused`` at once (again
for a repeated pause), then ``drained`` once its last job has ended; ``resume_intake``
opens the intake again. ``cancel`` sends SIGTERM to the job's process group and SIGKILL
5 s later if it is still alive; the item stays reported until the job has really ended.

One selectors loop, no threads: the socket, a wake-up socket for signals, and a tick that
reaps finished jobs with ``poll()``. Exit 0 on SIGTERM/SIGINT, 1 if maintd refuses the
registration, 3 if maintd is not running or goes away; the jobs are stopped first.

    python examples/batch_worker.py --every 3s --job-seconds 15
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from daemon.paths import default_socket
except ImportError:  # run from a checkout where maintd is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from daemon.paths import default_socket

TICK = 0.1  # seconds between looks at the jobs
KILL_AFTER = 5.0  # seconds from SIGTERM to SIGKILL
SEND_TIMEOUT = 10.0  # maintd reads every line; a send stuck this long means it is gone

log = logging.getLogger("batch_worker")


class Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    number: int
    argv: list[str]
    proc: subprocess.Popen[bytes]
    started_at: float
    kill_at: float | None = None  # set by a cancel: when the SIGKILL follows the SIGTERM

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone: the next tick reaps it
            os.killpg(self.proc.pid, signum)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buffer = b""
        self.intake_open = False  # opened by the register reply if maintenance mode is off
        self.drain_id: str | None = None  # the drain whose pause_intake was answered last
        self.drained_sent = False
        self.jobs: dict[str, Job] = {}
        self.count = 0
        self.next_start = 0.0

    def connect(self) -> None:
        try:
            self.sock.connect(str(self.args.socket))
        except OSError as exc:
            raise Exit(3, f"maintd is not running (cannot connect to {self.args.socket}: {exc.strerror})") from None
        self.sock.settimeout(SEND_TIMEOUT)
        self.send({"id": 1, "type": "register", "name": self.args.name})

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise Exit(3, f"lost the connection to maintd: {exc}") from None

    def receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise Exit(3, f"lost the connection to maintd: {exc}") from None
        if not data:
            raise Exit(3, "maintd closed the connection (did it stop?)")
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in filter(bytes.strip, lines):
            self.handle(json.loads(line))

    def report(self) -> None:
        items = [
            {"id": job_id, "kind": "building_job", "cancellable": True, "blocks_restart": True, "started_at": job.started_at,
             "description": f"batch job {job.number} ({' '.join(job.argv)}, pid {job.proc.pid})"}
            for job_id, job in self.jobs.items()
        ]  # fmt: skip
        self.send({"type": "in_flight", "items": items})

    def handle(self, message: dict[str, Any]) -> None:
        match message:
            case {"id": 1, "ok": True, "result": result}:
                self.intake_open = result["maintenance"] == "normal"  # else a pause_intake follows
                log.info("registered as %s (maintenance: %s)", result["name"], result["maintenance"])
                self.report()
            case {"id": 1, "ok": False, "error": error}:
                raise Exit(1, f"maintd refused to register {self.args.name!r}: {error['code']}: {error['message']}")
            case {"ok": False, "error": error}:
                log.warning("maintd answered an error: %s: %s", error["code"], error["message"])
            case {"type": "pause_intake", "drain_id": drain_id}:
                self.intake_open, self.drain_id, self.drained_sent = False, drain_id, False
                log.info("pause_intake (drain %s): intake closed, %d job(s) running", drain_id, len(self.jobs))
                self.send({"type": "intake_paused", "drain_id": drain_id})
                self.check_drained()
            case {"type": "resume_intake", "drain_id": drain_id}:
                self.intake_open, self.drain_id, self.next_start = True, None, time.monotonic()
                log.info("resume_intake (drain %s): intake open", drain_id)
            case {"type": "cancel", "item": item}:
                self.cancel(item)
            case _:
                log.warning("ignored a message: %s", message)

    def cancel(self, item: str) -> None:
        job = self.jobs.get(item)
        if job is None:
            log.info("cancel %s: no such job", item)
            reason = f"no job {item} here (it may have just ended)"
            self.send({"type": "cancel_result", "item": item, "ok": False, "reason": reason})
            return
        if job.kill_at is None:
            job.kill_at = time.monotonic() + KILL_AFTER
            job.signal(signal.SIGTERM)
        log.info("cancel %s: sent SIGTERM to process group %d", item, job.proc.pid)
        self.send({"type": "cancel_result", "item": item, "ok": True})

    def check_drained(self) -> None:
        if self.drain_id is not None and not self.jobs and not self.drained_sent:
            self.drained_sent = True
            log.info("drained (drain %s)", self.drain_id)
            self.send({"type": "drained", "drain_id": self.drain_id})

    def tick(self) -> None:
        now = time.monotonic()
        changed = False
        for job_id, job in list(self.jobs.items()):
            if (code := job.proc.poll()) is not None:
                del self.jobs[job_id]
                changed = True
                log.info("%s ended (%s)", job_id, f"exit {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}")
            elif job.kill_at is not None and now >= job.kill_at:
                job.kill_at = None  # SIGKILL cannot be ignored: a later tick reaps it
                job.signal(signal.SIGKILL)
                log.info("%s outlived its SIGTERM: sent SIGKILL", job_id)
        if self.intake_open and len(self.jobs) < self.args.max_jobs and now >= self.next_start:
            self.count += 1
            argv = ["sleep", f"{self.args.job_seconds:g}"]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0)
            self.jobs[f"job-{self.count}"] = Job(self.count, argv, proc, time.time())
            log.info("job-%d started: %s (pid %d)", self.count, " ".join(argv), proc.pid)
            self.next_start = now + self.args.every
            changed = True
        if changed:
            self.report()
            self.check_drained()

    def stop_jobs(self) -> None:
        """SIGTERM to every job; SIGKILL to those still alive KILL_AFTER seconds later."""
        for job in self.jobs.values():
            job.signal(signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER
        for job_id, job in self.jobs.items():
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.signal(signal.SIGKILL)
                job.proc.wait()
            log.info("%s stopped", job_id)
        self.jobs.clear()

    def run(self, wakeup: socket.socket) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(wakeup, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select(TICK):
                if key.fileobj is wakeup:
                    log.info("got %s: stopping %d job(s)", signal.Signals(wakeup.recv(1)[0]).name, len(self.jobs))
                    self.stop_jobs()
                    with contextlib.suppress(Exit):
                        self.report()  # an empty report: nothing shows as abandoned
                    return 0
                self.receive()
            self.tick()


def duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d*)?)(ms|s|m|h)?", text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 5, 5s, 500ms or 2m)")
    return float(match[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match[2]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start `sleep` jobs now and then, and join maintd's drain over its control socket.",
        epilog="Exit codes: 0 stopped by SIGTERM/SIGINT, 1 registration refused, 3 maintd is not running or went away.",
    )
    add = parser.add_argument
    add("--socket", metavar="PATH", type=Path, default=default_socket(), help="maintd's socket (default: %(default)s)")
    add("--name", default="batch", help="the subsystem name to register as (default: %(default)s)")
    add("--every", metavar="DURATION", type=duration, default=5.0, help="start a job this often (default: 5s)")
    add("--job-seconds", metavar="SECONDS", type=duration, default=20.0, help="each job sleeps this long (default: 20)")
    add("--max-jobs", metavar="N", type=int, default=2, help="at most this many jobs at once (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.max_jobs < 1:
        parser.error("--max-jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name}[{os.getpid()}]: %(message)s")
    wakeup, wakeup_w = socket.socketpair()
    wakeup_w.setblocking(False)
    signal.set_wakeup_fd(wakeup_w.fileno())  # a signal writes its number there and wakes the loop
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    worker = Worker(args)
    try:
        worker.connect()
        return worker.run(wakeup)
    except Exit as exc:
        log.error("%s; exiting", exc)
        return exc.code
    finally:
        worker.stop_jobs()


if __name__ == "__main__":
    sys.exit(main())
