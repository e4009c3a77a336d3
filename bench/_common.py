"""What the benchmarks share: percentiles, the verdict word and which tree was measured.

The benchmarks run as scripts (``python bench/NAME.py``), so this folder is on sys.path.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path


def pct(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


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
