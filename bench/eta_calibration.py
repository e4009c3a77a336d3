"""Benchmark: how well calibrated is the drain's ETA (actors/eta.py) against simulated drains?

Not a test: it simulates and prints. No daemon: pure functions and a seeded RNG, so a run
is reproducible. For each scenario (a family of job-duration distributions), every drain:

1. gives each of a few job keys (pipeline/stage/job) its own scale, and a history of
   ``RECENT`` past runs drawn from its distribution (what ``Store.recent_durations`` returns);
2. starts a drain with 1 to ``--max-items`` building jobs, each with a true duration drawn from
   the same distribution and already running for a uniform part of it (a job is caught
   mid-run: it has not ended when the drain starts);
3. asks :func:`actors.eta.drain_eta` at the drain's start, and compares its p50 and p90
   with the real end (the last job's).

Printed, per scenario: the fraction of drains that really ended by the p50 estimate and by
the p90 estimate (a calibrated p50 is 0.50, p90 0.90), the median absolute error of the p50
in seconds and relative to the real time left, and how many drains were overdue (real end
after the p90). The table goes into docs/eta.md.

    .venv/bin/python bench/eta_calibration.py                  # 300 drains a scenario, seed 14
    .venv/bin/python bench/eta_calibration.py --drains 1000 --seed 1
    .venv/bin/python bench/eta_calibration.py --time-items 10000   # also: one drain_eta over 10,000 items
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.eta import RECENT, Durations, drain_eta
from actors.types import BUILDING_JOB, InFlightItem

#: A scenario draws one duration (seconds) for a job of scale ``scale`` (its typical length).
Draw = Callable[[random.Random, float], float]

SCENARIOS: dict[str, Draw] = {
    "steady (lognormal sigma 0.2)": lambda rng, scale: scale * rng.lognormvariate(0, 0.2),
    "variable (lognormal sigma 0.6)": lambda rng, scale: scale * rng.lognormvariate(0, 0.6),
    "heavy tail (exponential)": lambda rng, scale: rng.expovariate(1 / scale),
    "bimodal (70% cache hit, 30% 8x)": lambda rng, scale: scale * (1 if rng.random() < 0.7 else 8) * rng.uniform(0.9, 1.1),
}

NOW = 1_800_000_000.0
KEYS = 6


def simulate(draw: Draw, rng: random.Random, max_items: int) -> tuple[float, float | None, float | None]:
    """One drain: (real end, p50, p90), all in seconds from the drain's start."""
    scales = {("p", "s", f"job{k}"): rng.uniform(30, 900) for k in range(KEYS)}
    history = {key: tuple(draw(rng, scale) for _ in range(RECENT)) for key, scale in scales.items()}
    items, ends = [], []
    for n in range(rng.randint(1, max_items)):
        key = rng.choice(list(scales))
        took = draw(rng, scales[key])
        elapsed = rng.uniform(0, took)
        item = InFlightItem(
            id=f"agents/job-{n}",
            subsystem="agents",
            kind=BUILDING_JOB,
            description="",
            started_at=NOW - elapsed,
            cancellable=True,
            pipeline=key[0],
            stage=key[1],
            job=key[2],
        )
        items.append(item)
        ends.append(took - elapsed)
    eta = drain_eta(items, Durations(jobs=history), NOW)
    p50 = None if eta.p50 is None else eta.p50 - NOW
    p90 = None if eta.p90 is None else eta.p90 - NOW
    return max(ends), p50, p90


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def calibrate(draw: Draw, drains: int, seed: int, max_items: int) -> dict[str, float]:
    rng = random.Random(seed)
    runs = [simulate(draw, rng, max_items) for _ in range(drains)]
    known = [(real, p50, p90) for real, p50, p90 in runs if p50 is not None and p90 is not None]
    return {
        "drains": len(known),
        "by_p50": sum(real <= p50 for real, p50, _ in known) / len(known),
        "by_p90": sum(real <= p90 for real, _, p90 in known) / len(known),
        "abs_error": median([abs(real - p50) for real, p50, _ in known]),
        "rel_error": median([abs(real - p50) / real for real, p50, _ in known if real > 0]),
    }


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| scenario | drains | ended by p50 | ended by p90 | median abs. error of p50 | median rel. error of p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        errors = f"{r['abs_error']:.0f} s | {r['rel_error']:.0%}"
        lines.append(f"| {name} | {r['drains']:.0f} | {r['by_p50']:.2f} | {r['by_p90']:.2f} | {errors} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drains", type=int, default=300, help="simulated drains per scenario (default 300)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--max-items", type=int, default=6, help="most building jobs in one drain (default 6)")
    parser.add_argument("--time-items", type=int, metavar="N", help="also time one drain_eta over N building jobs")
    args = parser.parse_args(argv)
    results = {name: calibrate(draw, args.drains, args.seed, args.max_items) for name, draw in SCENARIOS.items()}
    print(f"drain ETA calibration: {args.drains} drains a scenario, 1-{args.max_items} jobs each, seed {args.seed}\n")
    print(table(results))
    if args.time_items:
        took = time_eta(args.time_items)
        print(f"\none drain_eta over {args.time_items} items (half without history of their own): {took:.1f} ms")
    return 0


def time_eta(n: int, keys: int = 500) -> float:
    """Milliseconds for one :func:`drain_eta` over ``n`` building jobs of ``keys`` job keys (50
    pipelines), half of them new jobs that fall back to their stage's history: the best of 3."""
    rng = random.Random(1)
    history = {(f"p{k % 50}", "s", f"j{k}"): tuple(rng.uniform(10, 100) for _ in range(RECENT)) for k in range(keys)}
    items = [
        InFlightItem(
            id=f"agents/{i}",
            subsystem="agents",
            kind=BUILDING_JOB,
            description="",
            started_at=NOW,
            cancellable=True,
            pipeline=f"p{i % 50}",
            stage="s",
            job=f"j{i % keys}" if i % 2 else f"new{i}",
        )
        for i in range(n)
    ]
    durations = Durations(jobs=history)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        drain_eta(items, durations, NOW)
        best = min(best, time.perf_counter() - start)
    return best * 1000


if __name__ == "__main__":
    sys.exit(main())
