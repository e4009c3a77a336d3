"""When the drain will end, from the history maintd keeps: pure functions, no clock of their own.

A building job's expected duration is the p50 and p90 of its recent runs (the same pipeline,
stage and job); a job with no history falls back to its stage's jobs, then to its
pipeline's. A material update's is the p50/p90 of its material's recent polls. An item that
carries its own ``expected_end`` (an external subsystem said so) keeps it: theirs wins.

Honest about what it does not know: an item with no history has no estimate (``basis`` is
``"none"``) and the drain has none either while such an item blocks; an item already past
its p90 is ``overdue`` (against history), and is expected to end "now" at the earliest.
The drain ends when its last blocking item does: its p50/p90 are the largest of the items'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from .types import BUILDING_JOB, MATERIAL_UPDATE, InFlightItem

#: How many recent durations count for one key (older runs say less about the next one).
RECENT = 20

#: Where an estimate came from, most specific first.
BASES = ("external", "job", "stage", "pipeline", "material", "none")


class Durations(msgspec.Struct, frozen=True, kw_only=True):
    """Recent durations in seconds, newest first, by key: jobs by (pipeline, stage, job),
    material updates by material name."""

    jobs: Mapping[tuple[str, str, str], Sequence[float]] = {}
    materials: Mapping[str, Sequence[float]] = {}


class ItemEta(msgspec.Struct, frozen=True, kw_only=True):
    """One blocking item's expected end (epoch seconds), or None without a basis."""

    item_id: str
    p50: float | None
    p90: float | None
    basis: str
    samples: int = 0
    overdue: bool = False


class DrainEta(msgspec.Struct, frozen=True, kw_only=True):
    """The drain's expected end; ``p50``/``p90`` are None while an item without history blocks
    (``unknown`` names those items) or when nothing blocks (``items`` is empty)."""

    p50: float | None
    p90: float | None
    items: tuple[ItemEta, ...]
    unknown: tuple[str, ...] = ()


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between closest ranks, as numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _job_samples(durations: Durations, pipeline: str, stage: str, job: str) -> tuple[str, list[float]]:
    exact = list(durations.jobs.get((pipeline, stage, job), ()))[:RECENT]
    if exact:
        return "job", exact
    for basis, same in (("stage", lambda k: k[0] == pipeline and k[1] == stage), ("pipeline", lambda k: k[0] == pipeline)):
        pooled = [d for key, ds in durations.jobs.items() if same(key) for d in list(ds)[:RECENT]]
        if pooled:
            return basis, pooled
    return "none", []


def item_eta(item: InFlightItem, durations: Durations, now: float) -> ItemEta:
    """When ``item`` is expected to end, from its own ``expected_end`` or from history."""
    if item.expected_end is not None:
        return ItemEta(item_id=item.id, p50=item.expected_end, p90=item.expected_end, basis="external")
    basis, samples = "none", []
    if item.kind == BUILDING_JOB and item.pipeline and item.stage and item.job:
        basis, samples = _job_samples(durations, item.pipeline, item.stage, item.job)
    elif item.kind == MATERIAL_UPDATE and item.material is not None:
        samples = list(durations.materials.get(item.material.name, ()))[:RECENT]
        basis = "material" if samples else "none"
    if not samples:
        return ItemEta(item_id=item.id, p50=None, p90=None, basis="none")
    p50 = item.started_at + quantile(samples, 0.5)
    p90 = item.started_at + quantile(samples, 0.9)
    return ItemEta(
        item_id=item.id,
        p50=max(p50, now),
        p90=max(p90, now),
        basis=basis,
        samples=len(samples),
        overdue=now > p90,
    )


def drain_eta(blocking: Iterable[InFlightItem], durations: Durations, now: float) -> DrainEta:
    """The drain's expected end: the latest of its blocking items' ends."""
    etas = tuple(item_eta(item, durations, now) for item in blocking)
    unknown = tuple(e.item_id for e in etas if e.p50 is None)
    if not etas or unknown:
        return DrainEta(p50=None, p90=None, items=etas, unknown=unknown)
    return DrainEta(
        p50=max(e.p50 for e in etas if e.p50 is not None),
        p90=max(e.p90 for e in etas if e.p90 is not None),
        items=etas,
    )


#: What a deadline is expected to do to one blocking item, by its ETA.
ENDS_BEFORE = "ends_before"  # its p90 is before the deadline
PROBABLY_ENDS_BEFORE = "probably_ends_before"  # its p50 is before, its p90 after
CANCELLED_AT_DEADLINE = "cancelled_at_deadline"  # expected to run past it, cancellable, and the deadline cancels
HOLDS_PAST_DEADLINE = "holds_past_deadline"  # expected to run past it (or no history) and nothing will cancel it


class Foreseen(msgspec.Struct, frozen=True, kw_only=True):
    item: InFlightItem
    eta: ItemEta
    verdict: str


def deadline_preview(
    blocking: Iterable[InFlightItem], durations: Durations, now: float, deadline: float, cancel_at_deadline: bool
) -> tuple[Foreseen, ...]:
    """What a deadline at ``deadline`` would do to each blocking item, from the ETAs; changes nothing.

    An item without history is not assumed to end: the deadline cancels it if it can, else it may hold the drain."""
    foreseen = []
    for item in blocking:
        eta = item_eta(item, durations, now)
        if eta.p90 is not None and eta.p90 <= deadline:
            verdict = ENDS_BEFORE
        elif eta.p50 is not None and eta.p50 <= deadline:
            verdict = PROBABLY_ENDS_BEFORE
        elif cancel_at_deadline and item.cancellable:
            verdict = CANCELLED_AT_DEADLINE
        else:
            verdict = HOLDS_PAST_DEADLINE
        foreseen.append(Foreseen(item=item, eta=eta, verdict=verdict))
    return tuple(foreseen)
