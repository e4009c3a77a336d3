"""Benchmark: does the scheduler's cost grow with what changed, or with what exists?

Not a test: it measures and prints. For each size (10 pipelines, then 1,000, in the same
run) it starts the real daemon (``python -m daemon``) in a temporary directory with that
many pipelines on one cron schedule (every 5 seconds, the sixth cron field) plus a
``probe`` pipeline without a timer, pauses every timed pipeline (``pipeline_pause``, one
request each, as an operator would), lets the schedule fire, then measures:

1. ``trigger probe``: the reply time (median and worst of a few, each after a firing);
2. ``enable``: the reply time, and the time until every subsystem acknowledged the pause
   (maintenance state ``drained``; nothing is building, so that is the scheduler's turn).

The ratios 1,000 / 10 are printed next to the figures. Before issue 9's item 8 every firing,
pause and configuration change re-armed the timers of all pipelines (about 0.4 ms each), so
with 1,000 paused pipelines each 5-second burst cost the scheduler 1,000 x 1,000 arms and it
never caught up: those figures are then printed as ``> LIMIT`` (timed out).

    .venv/bin/python bench/timers.py                     # 10 and 1,000 pipelines
    .venv/bin/python bench/timers.py --sizes 10 300      # other sizes
    .venv/bin/python bench/timers.py --source /tmp/old   # another tree (e.g. before the fix)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import Daemon, LineClient, describe_tree, median, source_env

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
SCHEDULE = "*/5 * * * * *"  # every 5 seconds (croniter's sixth field is seconds)
START_TIMEOUT = 120.0


class TimedOut(Exception):
    pass


def write_config(path: Path, n: int) -> None:
    parts = ["[agents]\ncount = 2\n"]
    job = '[[pipelines.stages]]\nname = "s"\n[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["true"]\n'
    parts.append(f'[[pipelines]]\nname = "probe"\n{job}')
    for i in range(n):
        parts.append(f'[[pipelines]]\nname = "p{i:04d}"\ntimer = "{SCHEDULE}"\n{job}')
    path.write_text("\n".join(parts))


def timed(c: LineClient, limit: float, type_: str, **fields: object) -> float:
    """The reply time of one request, in seconds; TimedOut past ``limit`` or when the daemon
    answers that its actor did not answer in time (the 30 s ask timeout)."""
    c.sock.settimeout(limit)
    t0 = time.monotonic()
    try:
        reply = json.loads(c.raw(type_, **fields))
    except TimeoutError:
        raise TimedOut(type_) from None
    if not reply.get("ok"):
        if reply.get("error", {}).get("code") == "timeout":
            raise TimedOut(f"{type_}: the daemon's own timeout after {time.monotonic() - t0:.1f} s")
        raise RuntimeError(f"{type_} refused: {reply.get('error')}")
    return time.monotonic() - t0


def wait_state(c: LineClient, state: str, limit: float, t0: float) -> float:
    while True:
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            raise TimedOut(f"maintenance state {state}")
        c.sock.settimeout(left)
        try:
            if c.request("status")["maintenance"]["state"] == state:
                return time.monotonic() - t0
        except TimeoutError:
            raise TimedOut(f"maintenance state {state}") from None
        time.sleep(0.01)


def next_firing_after(t: float) -> float:
    """Seconds from now until just after the next multiple of 5 s of wall-clock time (a firing)."""
    return (5 - t % 5) + 0.3


def measure(n: int, tmp: Path, env: dict, limit: float, triggers: int) -> dict:
    work = tmp / f"n{n}"
    work.mkdir()
    config = work / "maintd.toml"
    write_config(config, n)
    d = Daemon(work, config, env)
    out: dict = {"n": n}
    try:
        d.wait_ready(START_TIMEOUT)
        c = LineClient(d.sock)
        try:
            t0 = time.monotonic()
            for i in range(n):
                c.request("pipeline_pause", pipeline=f"p{i:04d}")
            out["pause_all_s"] = time.monotonic() - t0
            time.sleep(next_firing_after(time.time()))  # let the schedule fire on the paused pipelines
            replies: list[float] = []
            try:
                for _ in range(triggers):
                    replies.append(timed(c, limit, "trigger", pipeline="probe"))
                    time.sleep(next_firing_after(time.time()))
            except TimedOut as exc:
                print(f"  {n} pipelines: trigger timed out ({exc})", flush=True)
                replies.append(float("inf"))
            out["trigger_s"] = replies
            t0 = time.monotonic()
            try:
                out["enable_reply_s"] = timed(c, limit, "enable", reason="bench: timers")
                out["enable_drained_s"] = wait_state(c, "drained", limit, t0)
            except TimedOut as exc:
                print(f"  {n} pipelines: enable timed out ({exc})", flush=True)
                out.setdefault("enable_reply_s", float("inf"))
                out["enable_drained_s"] = float("inf")
            d.check_alive()
        finally:
            c.close()
    finally:
        d.stop()
    return out


def fmt(seconds: float, limit: float) -> str:
    if seconds == float("inf"):
        return "timed out (see above)"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(a: float, b: float) -> str:
    if a == float("inf"):
        return "inf"
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--limit", type=float, default=60.0, help="give up on one reply after this long (s)")
    parser.add_argument("--triggers", type=int, default=3, help="trigger replies measured per size")
    parser.add_argument("--source", type=Path, default=REPO, help="the tree to run the daemon from")
    args = parser.parse_args()
    env = source_env(args.source.resolve())
    print(f"tree: {describe_tree(args.source.resolve())}")
    print(f"schedule {SCHEDULE!r} on every timed pipeline, all paused; a `probe` pipeline without a timer")
    results = []
    with tempfile.TemporaryDirectory(prefix="maintd-bench-timers-") as tmp:
        for n in args.sizes:
            r = measure(n, Path(tmp), env, args.limit, args.triggers)
            results.append(r)
            worst = max(r["trigger_s"])
            print(
                f"{n:>5} pipelines: pause all {fmt(r['pause_all_s'], args.limit)}"
                f" ({fmt(r['pause_all_s'] / n, args.limit)} each); trigger reply median"
                f" {fmt(median(r['trigger_s']), args.limit)}, worst {fmt(worst, args.limit)};"
                f" enable reply {fmt(r['enable_reply_s'], args.limit)},"
                f" all subsystems paused (drained) after {fmt(r['enable_drained_s'], args.limit)}",
                flush=True,
            )
    if len(results) >= 2:
        small, big = results[0], results[-1]
        print(
            f"ratio {big['n']}/{small['n']} pipelines: trigger reply (median)"
            f" {ratio(median(big['trigger_s']), median(small['trigger_s']))},"
            f" enable -> drained {ratio(big['enable_drained_s'], small['enable_drained_s'])},"
            f" pause (each) {ratio(big['pause_all_s'] / big['n'], small['pause_all_s'] / small['n'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
