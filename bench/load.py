"""Load benchmark: one real daemon with many connections, watchers, subsystems and jobs.

Not a test: it builds a load, measures and prints, next to the targets. One run does:

0. The load, against one daemon (``python -m daemon --http off``) started in a temporary
   directory with a raised RLIMIT_NOFILE: a pipeline with one stage of J jobs (default
   10,000) and ``[agents] count = 0``, so that all J stay scheduled once triggered (the run
   checks that the config is accepted and that J jobs are scheduled); then C control
   connections (default 1,000) at once: S registered external subsystems (default 100)
   that each report I in-flight items (default 100, ``building_job``, cancellable, so they
   block a restart and stay ``paused`` in every drain), W ``watch`` connections (default
   500), one admin connection, one status sampler and the rest ``ping`` clients (about
   200 pings/s in all). The connections are driven by three load-generator processes of
   their own (plain epoll, no trio), so the daemon shares no GIL with them: "subsystems"
   (the S subsystems, the admin connection and one watcher, the observer), "crowd" (the
   other W-1 watchers and the ping clients) and "sampler" (the status sampler alone: a
   multi-megabyte reply crosses a socket buffer of about 200 KB many times, and a reader
   busy with 499 watchers would time its own gaps between reads). All times are
   ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process).
1. Enable to all IntakePaused: N cycles (default 20) of ``enable``, wait until every
   external subsystem has received ``pause_intake`` and answered ``intake_paused`` and the
   daemon shows every subsystem ``paused`` or ``drained``, then ``disable`` and wait until
   every subsystem has received ``resume_intake`` and the daemon shows them running. "The
   daemon shows" is read from the observer's ``watch`` stream (each ``subsystem_state``
   event goes out with the status snapshot that has the change, so a ``status`` at that
   moment shows it), then confirmed by a ``status`` request whose reply is also timed.
   Between cycles the crowd's watchers catch up on every event first (each cycle starts
   with no backlog).
2. ``status`` latency p50/p99 and reply size: the sampler sends ``status`` every 100 ms
   (one request at a time) during the cycles and probes (the cached status is rebuilt
   after each change, so most requests pay the encoding) and during a steady phase with
   no changes (the cached reply: the cost of sending it).
3. Event fan-out to the W watchers: from the moment a request is sent until each watcher
   has the event line: the ``state_changed`` event of each ``enable`` and of each
   ``disable``, and the ``in_flight_changed`` event of P probes (default 20: one
   subsystem reports its items again with one description changed). p50/p99/max across
   all watchers, and the median over requests of the time until the last watcher has it.
   Every watcher also checks that the event ``seq`` numbers it gets have no gap.
4. The daemon's VmRSS and VmHWM (/proc/PID/status) at full load, its threads and CPU.

Every process this script starts is stopped in a ``finally``; the load generators also
stop by themselves when their stdin closes or after a bounded time. Only Unix sockets in a
temporary directory are used.

    /tmp/venv/bin/python bench/load.py              # the full load (about 1-2 minutes)
    /tmp/venv/bin/python bench/load.py --quick      # 200 connections, 1,000 jobs, 5 cycles

Internal roles (used by the script itself): ``load.py _subsystems SOCKET``, ``load.py
_crowd SOCKET`` and ``load.py _sampler SOCKET`` are the load generators; each takes JSON commands on stdin and answers
each with one JSON line on stdout.

This script holds the options and the entry point; each role is a module beside it:
``load_loop.py`` (the load generators' event loop), ``load_subsystems.py`` (the external
subsystems, the admin connection and the observer), ``load_crowd.py`` (the crowd and the
sampler), ``load_run.py`` (the daemon and the load generators, from the main process) and
``load_report.py`` (the figures next to the targets).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from _common import source_env
from load_crowd import crowd_main
from load_loop import nofile, raise_nofile
from load_report import report
from load_run import run_all
from load_subsystems import subsystems_main

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark: one daemon with many connections, watchers, subsystems and jobs."
    )
    parser.add_argument("--connections", type=int, default=1000, help="control connections in all (default 1000)")
    parser.add_argument("--watchers", type=int, default=500, help="of which watch connections (default 500)")
    parser.add_argument("--subsystems", type=int, default=100, help="of which registered subsystems (default 100)")
    parser.add_argument("--items", type=int, default=100, help="in-flight items each subsystem reports (default 100)")
    parser.add_argument("--jobs", type=int, default=10_000, help="scheduled jobs (default 10000)")
    parser.add_argument("--cycles", type=int, default=20, help="enable/disable cycles (default 20)")
    parser.add_argument("--probes", type=int, default=20, help="in_flight fan-out probes (default 20)")
    parser.add_argument(
        "--status-interval", type=float, default=0.1, help="seconds between the sampler's status requests (default 0.1)"
    )
    parser.add_argument("--source", type=Path, default=REPO, help="source tree to run maintd from (default: this checkout)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 connections (100 watch, 20 subsystems x 20 items), 1,000 jobs, 5 cycles, 5 probes",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.watchers, args.subsystems, args.items = 200, 100, 20, 20
        args.jobs, args.cycles, args.probes = 1000, 5, 5
    if (
        args.watchers < 1
        or not 1 <= args.subsystems <= 1000
        or args.connections < args.watchers + args.subsystems + 2
        or args.connections > 20_000
        or not 1 <= args.items <= 10_000
        or not 1 <= args.jobs <= 100_000
        or not 1 <= args.cycles <= 1000
        or not 0 <= args.probes <= 1000
        or not 0.01 <= args.status_interval <= 10
    ):
        parser.error(
            "need 1-1000 subsystems, at least 1 watcher, connections >= watchers + subsystems + 2 (at most 20000), "
            "items 1-10000, jobs 1-100000, cycles 1-1000, probes 0-1000, --status-interval 0.01-10 s"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every process is stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    if nofile() < args.connections + 100:
        print(
            f"load.py: RLIMIT_NOFILE is {nofile()} (hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}); "
            f"{args.connections} connections need more",
            file=sys.stderr,
        )
        return 2
    source = args.source.resolve()
    env = source_env(source)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="maintd-load-bench-"))
    try:
        res = run_all(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, source, res, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_subsystems":
        sys.exit(subsystems_main(sys.argv[2]))
    if len(sys.argv) > 2 and sys.argv[1] in ("_crowd", "_sampler"):
        sys.exit(crowd_main(sys.argv[2]))
    sys.exit(main())
