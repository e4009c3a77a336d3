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


def _p50_p90(samples: Sequence[float]) -> tuple[float, float]:
    return quantile(samples, 0.5), quantile(samples, 0.9)


class Lookup:
    """The p50/p90 durations of each job key, from one :class:`Durations`, each worked out
    once: a drain has many items of few jobs, and the stage and pipeline pools are built in
    one pass, the first time an item falls back to them (a scan of every key and a sort per
    item cost 330 ms for 10,000 items; this, 13 ms: ``bench/eta_calibration.py --time-items 10000``)."""

    def __init__(self, durations: Durations) -> None:
        self.durations = durations
        self._found: dict[tuple[str, str, str], tuple[str, int, float, float]] = {}
        self._fallback: dict[tuple[str, str], tuple[str, int, float, float]] = {}
        self._pools: tuple[dict[tuple[str, str], list[float]], dict[str, list[float]]] | None = None

    def job(self, pipeline: str, stage: str, job: str) -> tuple[str, int, float, float]:
        """(basis, samples, p50 duration, p90 duration); (``"none"``, 0, 0, 0) without history."""
        key = (pipeline, stage, job)
        found = self._found.get(key)
        if found is None:
            exact = list(self.durations.jobs.get(key, ()))[:RECENT]
            found = ("job", len(exact), *_p50_p90(exact)) if exact else self._pooled(pipeline, stage)
            self._found[key] = found
        return found

    def _pooled(self, pipeline: str, stage: str) -> tuple[str, int, float, float]:
        found = self._fallback.get((pipeline, stage))
        if found is not None:
            return found
        if self._pools is None:
            stages: dict[tuple[str, str], list[float]] = {}
            pipelines: dict[str, list[float]] = {}
            for (p, st, _job), ds in self.durations.jobs.items():
                recent = list(ds)[:RECENT]
                stages.setdefault((p, st), []).extend(recent)
                pipelines.setdefault(p, []).extend(recent)
            self._pools = (stages, pipelines)
        stages, pipelines = self._pools
        found = ("none", 0, 0.0, 0.0)
        if pooled := stages.get((pipeline, stage)):
            found = ("stage", len(pooled), *_p50_p90(pooled))
        elif pooled := pipelines.get(pipeline):
            found = ("pipeline", len(pooled), *_p50_p90(pooled))
        self._fallback[pipeline, stage] = found
        return found


def item_eta(item: InFlightItem, durations: Durations, now: float, lookup: Lookup | None = None) -> ItemEta:
    """When ``item`` is expected to end, from its own ``expected_end`` or from history.
    ``lookup``: one shared by the items of one call (see :class:`Lookup`)."""
    if item.expected_end is not None:
        return ItemEta(item_id=item.id, p50=item.expected_end, p90=item.expected_end, basis="external")
    basis, count, d50, d90 = "none", 0, 0.0, 0.0
    if item.kind == BUILDING_JOB and item.pipeline and item.stage and item.job:
        basis, count, d50, d90 = (lookup or Lookup(durations)).job(item.pipeline, item.stage, item.job)
    elif item.kind == MATERIAL_UPDATE and item.material is not None:
        samples = list(durations.materials.get(item.material.name, ()))[:RECENT]
        if samples:
            basis, count, (d50, d90) = "material", len(samples), _p50_p90(samples)
    if not count:
        return ItemEta(item_id=item.id, p50=None, p90=None, basis="none")
    p50 = item.started_at + d50
    p90 = item.started_at + d90
    return ItemEta(
        item_id=item.id,
        p50=max(p50, now),
        p90=max(p90, now),
        basis=basis,
        samples=count,
        overdue=now > p90,
    )


def drain_eta(blocking: Iterable[InFlightItem], durations: Durations, now: float) -> DrainEta:
    """The drain's expected end: the latest of its blocking items' ends."""
    lookup = Lookup(durations)
    etas = tuple(item_eta(item, durations, now, lookup) for item in blocking)
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
    lookup = Lookup(durations)
    for item in blocking:
        eta = item_eta(item, durations, now, lookup)
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
