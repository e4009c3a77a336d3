"""Prometheus metrics: the maintenance state machine, the drain and the job server's counters.

:class:`Metrics` takes a ``CollectorRegistry`` (each test uses a fresh one; the daemon uses
:func:`daemon_registry`). :meth:`Metrics.update` is a :class:`~daemon.hub.StatusHub`
listener: it runs in the trio thread on every publication, so it only compares and sets.
:meth:`Metrics.job_finished`, :meth:`Metrics.material_polled` and :meth:`Metrics.rejected`
may be called from any thread (prometheus_client's metrics take their own locks).

Label values are identifiers only: states, result codes, subsystem names and item kinds,
which the control protocol restricts to ``[a-z0-9_.-]``. Free text (reasons, user names,
descriptions) never goes into a label.

A state set is a gauge with a ``state`` label, one series per state and 1 on the current
one: ``maintd_maintenance_state{state="drained"} 1`` and
``maintd_subsystem_state{subsystem="agents",state="paused"} 1`` (prometheus_client's ``Enum``
would name the label after the metric, and every rule would need ``ignoring(...)``).
Counters and histograms have no ``_created`` series (:class:`MaintdRegistry`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    gc_collector,
    platform_collector,
    process_collector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.status import Event, Status
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, SCHEDULED_JOB, MaintenanceState, SubsystemState

log = logging.getLogger("maintd.metrics")

MAINTENANCE_STATES = tuple(s.value for s in MaintenanceState)  # normal, draining, drained
SUBSYSTEM_STATES = tuple(s.value for s in SubsystemState)  # running, unknown, pausing, paused, drained, failed
BUILTIN_KINDS = (MATERIAL_UPDATE, BUILDING_JOB, SCHEDULED_JOB)
#: The kinds of work each built-in subsystem holds, which have series from the start; any
#: other kind (an external's, a ``pending_write``) gets one once seen, kept while its subsystem is.
KINDS_OF_BUILTIN = {"materials": (MATERIAL_UPDATE,), "scheduler": (SCHEDULED_JOB,), "agents": (BUILDING_JOB,)}
JOB_RESULTS = ("passed", "failed", "cancelled", "interrupted")
POLL_RESULTS = ("ok", "error", "timeout")
#: The error codes that count as a rejected request; :meth:`Metrics.rejected` ignores the others.
REJECT_REASONS = ("maintenance_mode", "forbidden", "bad_request", "unknown_type", "too_large")
#: A drain takes seconds (nothing in flight) to hours (a long build): 1 s to 4 h.
DRAIN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, float("inf"))


class MaintdRegistry(CollectorRegistry):
    """A registry whose counters and histograms have no ``_created`` series.

    prometheus_client adds one to each by default (a timestamp per series, of no use to a
    rule and doubling the series); its switch for that is process-wide, this is for maintd's
    registry only.
    """

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            if metric.type in ("counter", "histogram", "summary", "gaugehistogram"):
                metric.samples = [s for s in metric.samples if not s.name.endswith(("_created", "_gcreated"))]
            yield metric


class _DrainEta(Collector):
    def __init__(self, seconds_left: Callable[[], tuple[float, float] | None]) -> None:
        self.seconds_left = seconds_left

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(DRAIN_ETA, DRAIN_ETA_HELP, labels=["estimate"])

    def collect(self) -> Iterator[Metric]:
        try:
            left = self.seconds_left()
        except Exception:
            log.exception("the drain's ETA could not be computed")
            left = None
        family = GaugeMetricFamily(DRAIN_ETA, DRAIN_ETA_HELP, labels=["estimate"])
        for estimate, value in zip(("p50", "p90"), left or (math.nan, math.nan), strict=True):
            family.add_metric([estimate], value)
        yield family


DRAIN_ETA = "maintd_drain_eta_seconds"
DRAIN_ETA_HELP = "Seconds from now until the drain is expected to end (p50, p90 of history); 0 drained, NaN unknown"


def daemon_registry() -> CollectorRegistry:
    """A registry for the daemon: ours plus the process, platform and GC collectors.

    A registry of its own rather than the global ``REGISTRY``, so that running the daemon
    twice in one process (as a test may) never registers a name twice.
    """
    registry = MaintdRegistry()
    process_collector.ProcessCollector(registry=registry)
    platform_collector.PlatformCollector(registry=registry)
    gc_collector.GCCollector(registry=registry)
    return registry


class StateSet:
    """A gauge with one series per state, labelled ``state``: 1 on the current state, 0 on the others.

    A collector of its own, so that a scrape never sees a change half made (two states at 1,
    or none): the current state is one entry, replaced at once.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], states: Iterable[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = [*labelnames, "state"]
        self.states = tuple(states)
        self._current: dict[tuple[str, ...], str] = {}  # label values -> the current state
        registry.register(self)

    def set(self, state: str, *labels: str) -> None:
        self._current[labels] = state

    def remove(self, *labels: str) -> None:
        self._current.pop(labels, None)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, current in self._current.copy().items():
            for state in self.states:
                family.add_metric([*labels, state], 1 if state == current else 0)
        return [family]


class OptionalGauge:
    """A gauge without labels that has no sample at all while its value is None (rather than a 0 that means something)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float | None = None  # set in the trio thread, read by the exposition's: one assignment
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation)
        value = self.value
        if value is not None:
            family.add_metric([], value)
        return [family]


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, version: str = "unknown") -> None:
        self.registry = registry
        self.version = version
        r = registry
        self.maintenance_state = StateSet(
            "maintd_maintenance_state",
            "Maintenance mode state: normal, draining (intake stopped, work in flight) or drained (safe to restart)",
            (),
            MAINTENANCE_STATES,
            r,
        )
        self.safe_to_restart = Gauge("maintd_safe_to_restart", "1 when the server is safe to restart (drained)", registry=r)
        self.state_changed = Gauge(
            "maintd_maintenance_state_changed_timestamp_seconds",
            "When the maintenance state last changed (seconds since the epoch)",
            registry=r,
        )
        self.deadline = OptionalGauge(
            "maintd_drain_deadline_timestamp_seconds",
            "The drain's deadline (seconds since the epoch); no sample when there is none",
            r,
        )
        self.overdue = Gauge("maintd_drain_overdue", "1 when the drain deadline passed and the drain is not done", registry=r)
        self.ttl_end = OptionalGauge(
            "maintd_maintenance_ttl_timestamp_seconds",
            "When maintenance should be over, as `maintctl enable --ttl` said (seconds since the epoch); "
            "no sample when there is none",
            r,
        )
        self.ttl_expired = Gauge(
            "maintd_maintenance_ttl_expired",
            "1 while maintenance mode is on past its --ttl (it is never turned off for it)",
            registry=r,
        )
        self.subsystem_state = StateSet(
            "maintd_subsystem_state", "What the supervisor knows of each subsystem", ("subsystem",), SUBSYSTEM_STATES, r
        )
        self.in_flight = Gauge(
            "maintd_in_flight_items",
            "Items of work in flight, by subsystem and kind (material_update, building_job, scheduled_job, "
            "pending_write or an external's kind); only for the kinds a subsystem holds",
            ["subsystem", "kind"],
            registry=r,
        )
        self.drain_duration = Histogram(
            "maintd_drain_duration_seconds",
            "From turning maintenance mode on to drained (safe to restart), once per drain",
            buckets=DRAIN_BUCKETS,
            registry=r,
        )
        self.jobs = Counter("maintd_jobs", "Jobs finished, by result", ["result"], registry=r)
        self.polls = Counter("maintd_material_polls", "Material and config repo polls, by result", ["result"], registry=r)
        self.rejections = Counter("maintd_rejected_requests", "Control requests refused, by error code", ["reason"], registry=r)
        self.store_pending = Gauge(
            "maintd_store_pending_writes",
            "Results the store refused (disk full, ...), kept in memory and retried; each blocks a restart",
            registry=r,
        )
        self.store_failures = Counter(
            "maintd_store_write_failures", "Attempts to record a result that the store refused", registry=r
        )
        self._store_failures_seen = 0
        self.build = Info("maintd_build", "The running maintd", registry=r)
        self.build.info({"version": version})
        self.tracking = Info("maintd_job_tracking", "How a job's processes are found: cgroup or subreaper", registry=r)
        self.backend_up = Gauge(
            "maintd_agents_backend_up",
            "Whether the remote agents' broker answers (0: the state of the jobs on other hosts is unknown); "
            "only with [agents] backend = celery",
            ["backend"],
            registry=r,
        )
        for result in JOB_RESULTS:
            self.jobs.labels(result=result)
        for result in POLL_RESULTS:
            self.polls.labels(result=result)
        for reason in REJECT_REASONS:
            self.rejections.labels(reason=reason)
        self.maintenance_state.set(MaintenanceState.NORMAL.value)

        # What the last update saw (trio thread only).
        self._state: str | None = None
        self._deadline_shown: float | None = None
        self._ttl_shown: float | None = None
        self._kinds: dict[str, set[str]] = {}  # subsystem -> kinds it has series for
        self._drain_id: str | None = None
        self._drain_started: float | None = None  # time.monotonic() when the drain was first seen
        self._drain_observed = False
        self._last_status: Status | None = None
        self._counted: object = None  # the RunningSystems last counted, and its counts
        self._counts: dict[tuple[str, str], int] = {}
        self._shown_state: dict[str, str] = {}  # what the gauges hold now
        self._shown_count: dict[tuple[str, str], int] = {}
        self._init_failures(r)

    # -- the StatusHub listener (trio thread) ----------------------------------------------

    def update(self, status: Status, event: Event | None = None) -> None:
        # Events in a burst share one status object: the gauges only move when it changes.
        if status is self._last_status:
            return
        self._last_status = status
        m = status.maintenance
        if m.state != self._state:
            self.maintenance_state.set(m.state)
            self.state_changed.set(time.time())
        self.safe_to_restart.set(1 if m.safe_to_restart else 0)
        self.overdue.set(1 if m.overdue else 0)
        if m.deadline != self._deadline_shown:
            self._deadline_shown = m.deadline
            self.deadline.value = m.deadline
        self.ttl_expired.set(1 if m.ttl_expired else 0)
        if m.ttl_end != self._ttl_shown:
            self._ttl_shown = m.ttl_end
            self.ttl_end.value = m.ttl_end
        self._update_drain(m.state, m.drain_id)
        self._update_failures(status)
        self._state = m.state
        store = status.store
        self.store_pending.set(store.pending_writes)
        if store.write_failures > self._store_failures_seen:
            self.store_failures.inc(store.write_failures - self._store_failures_seen)
            self._store_failures_seen = store.write_failures

        rs = status.running_systems
        if rs is not self._counted:  # the supervisor keeps the object while no items change
            counts: dict[tuple[str, str], int] = {}
            for item in rs.items():
                key = (item.subsystem, item.kind)
                counts[key] = counts.get(key, 0) + 1
            self._counted, self._counts = rs, counts
        counts = self._counts
        # Only what changed goes to the gauges: a drain publishes a status for every
        # subsystem that pauses, and a hundred subsystems times their series on each would
        # make every publication cost as much as the biggest.
        present: set[str] = set()
        for sub in status.subsystems:
            present.add(sub.name)
            if sub.state in SUBSYSTEM_STATES and self._shown_state.get(sub.name) != sub.state:
                self.subsystem_state.set(sub.state, sub.name)
                self._shown_state[sub.name] = sub.state
            kinds = self._kinds.get(sub.name)
            if kinds is None:
                kinds = self._kinds[sub.name] = set() if sub.external else set(KINDS_OF_BUILTIN.get(sub.name, ()))
        for subsystem, kind in counts:
            if subsystem in self._kinds:
                self._kinds[subsystem].add(kind)
        for name in list(self._kinds):
            if name not in present:
                self._forget(name)
                continue
            for kind in self._kinds[name]:
                value = counts.get((name, kind), 0)
                if self._shown_count.get((name, kind)) != value:
                    self.in_flight.labels(subsystem=name, kind=kind).set(value)
                    self._shown_count[name, kind] = value

    def _update_drain(self, state: str, drain_id: str | None) -> None:
        """Observe the drain's duration once, the first time a drain reaches drained."""
        if state == MaintenanceState.NORMAL or drain_id is None:
            self._drain_id = self._drain_started = None
            self._drain_observed = False
            return
        if drain_id != self._drain_id:
            self._drain_id = drain_id
            self._drain_started = time.monotonic()
            self._drain_observed = False
        if state == MaintenanceState.DRAINED and not self._drain_observed and self._drain_started is not None:
            self.drain_duration.observe(max(0.0, time.monotonic() - self._drain_started))
            self._drain_observed = True

    def _init_failures(self, r: CollectorRegistry) -> None:
        self.subsystem_failures = Counter(
            "maintd_subsystem_failures",
            "Failures of each subsystem: its actor died (and was restarted), or an external's process went away "
            "with work in flight; kept for an external removed with its work abandoned",
            ["subsystem"],
            registry=r,
        )
        self._failures_seen: dict[str, int] = {}  # subsystem -> the failures its status said, as counted

    def _update_failures(self, status: Status) -> None:
        """Count what each subsystem's ``failures`` grew by since the last status.

        A subsystem removed with work abandoned keeps its series (its last failure may have come
        with its removal) while the status lists it; one removed cleanly loses it. A name that
        registers again is a new subsystem whose ``failures`` start again from 0.
        """
        last_removal = {r.name: r for r in status.removed}  # oldest first: a name's last removal wins
        now: dict[str, int] = {name: r.failures for name, r in last_removal.items() if r.abandoned}
        present = {sub.name for sub in status.subsystems}
        for name in now.keys() & present:
            del now[name]  # an old removal of a name that registered again
        now.update((sub.name, sub.failures) for sub in status.subsystems)
        for name, failures in now.items():
            seen = self._failures_seen.get(name)
            child = self.subsystem_failures.labels(subsystem=name)
            if seen is not None and failures > seen:
                child.inc(failures - seen)
            elif seen is None or failures < seen:  # new, or a new subsystem of an old name
                child.inc(failures)
            self._failures_seen[name] = failures
        for name in list(self._failures_seen):
            if name not in now:
                del self._failures_seen[name]
                with contextlib.suppress(KeyError):
                    self.subsystem_failures.remove(name)

    def _forget(self, subsystem: str) -> None:
        """A subsystem went away: drop its series rather than leave them at their last value."""
        for kind in self._kinds.pop(subsystem, ()):
            self._shown_count.pop((subsystem, kind), None)
            with contextlib.suppress(KeyError):
                self.in_flight.remove(subsystem, kind)
        self._shown_state.pop(subsystem, None)
        self.subsystem_state.remove(subsystem)

    def drain_eta(self, seconds_left: Callable[[], tuple[float, float] | None]) -> None:
        """Add ``maintd_drain_eta_seconds{estimate="p50"|"p90"}``: seconds from now until the
        drain is expected to end, computed at each scrape by ``seconds_left`` (it depends on
        the time): 0 once drained; NaN when there is no estimate (maintenance off, or an
        item without history), as a Prometheus summary shows a quantile it has no data for.

        The label is not ``quantile``: Prometheus reserves that for summaries (``promtool
        check metrics`` refuses it on a gauge), and this is a gauge of two estimates."""
        self.registry.register(_DrainEta(seconds_left))

    # -- counters (any thread) -------------------------------------------------------------

    def job_finished(self, result: str) -> None:
        """A job reached a terminal state: passed, failed, cancelled or interrupted."""
        if result in JOB_RESULTS:
            self.jobs.labels(result=result).inc()
        else:
            log.warning("job result %r is not counted (not one of %s)", result, ", ".join(JOB_RESULTS))

    def job_tracking(self, mechanism: str) -> None:
        """Which mechanism finds a job's processes: ``cgroup`` or ``subreaper`` (set once)."""
        self.tracking.info({"mechanism": mechanism})

    def agents_backend(self, name: str, up: bool) -> None:
        """Whether the remote agents' broker answers."""
        self.backend_up.labels(backend=name).set(1 if up else 0)

    def material_polled(self, result: str) -> None:
        """A material or config repo poll ended: ok, error or timeout."""
        if result in POLL_RESULTS:
            self.polls.labels(result=result).inc()
        else:
            log.warning("poll result %r is not counted (not one of %s)", result, ", ".join(POLL_RESULTS))

    def rejected(self, reason: str) -> bool:
        """Count a refused control request by its error code; codes outside :data:`REJECT_REASONS` are not counted.

        Returns whether it was counted, so the caller may pass every error code it sends.
        """
        if reason not in REJECT_REASONS:
            return False
        self.rejections.labels(reason=reason).inc()
        return True
