"""Writes a subsystem could not record yet: kept in memory, in order, retried on a timer.

A result already obtained (a job's final state, a run's completion, the next stage's
jobs, a cancel) must not be lost because the store refused it (disk full, a state
directory gone read-only). A core hands each such write to its :class:`PendingWrites` as
``do``, a callable that carries the write out against the store and then does whatever
needed its answer (tell the scheduler a job finished, queue the new jobs). ``do`` raises
the store's :class:`~actors.store.StoreError` when the store cannot record it; then it is
kept, and so is every write handed over after it: one FIFO a core, flushed in order, so
a retried write is never overtaken by a later one (about the same job or run, or any
other). Nothing else is caught: a bug still fails the actor, as it did.

While writes wait, each is an in-flight item of kind ``pending_write`` that blocks a
restart (a restart would lose it): the drain cannot end and ``safe_to_restart`` stays
false wherever it is shown, by the same computation as for any other work. The core also
tells the supervisor :class:`WritesPending`, from which the status shows the store as
degraded (``store`` in the status, ``maintd_store_pending_writes``). Retries back off from
:data:`RETRY_FIRST` to :data:`RETRY_MAX` through the Timers port; the actor never sleeps.

Why items rather than a store flag that ``safe_to_restart`` would also consult: the drain,
``safe_to_restart``, ``has_running_systems``, the metric, ``maintctl wait`` and the stop
drain all follow blocking items already, so a waiting result holds each of them back
without one more input that any of them could forget; it is listed, with what it is and
why it waits, wherever work is listed. The ``store`` summary is for people and alerts.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from .ports import Clock, Mailbox, Timers
from .store import StoreError
from .types import InFlightItem, qualify

if TYPE_CHECKING:
    from .subsystem import SubsystemCore

log = logging.getLogger("maintd.store")

PENDING_WRITE = "pending_write"
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


class RetryWrites(msgspec.Struct, frozen=True):
    """The retry timer of a core's pending writes fired."""


class WritesPending(msgspec.Struct, frozen=True, kw_only=True):
    """To the supervisor: how the store stands for ``subsystem``'s writes.

    ``count`` writes wait (0: all recorded); ``failures`` is how many attempts failed since
    the last report (a delta, so a restarted core never takes a count back).
    """

    subsystem: str
    count: int
    last_error: str | None = None
    since: float | None = None
    failures: int = 0


class _Write:
    __slots__ = ("do", "item_id", "since", "what")

    def __init__(self, what: str, do: Callable[[], Any], item_id: str, since: float) -> None:
        self.what = what
        self.do = do
        self.item_id = item_id
        self.since = since


class PendingWrites:
    """The writes of one core that wait for the store. ``core`` is the SubsystemCore whose
    items show them; ``me`` is where the retry timer tells :class:`RetryWrites` (with no
    ``timers``, as in tests whose store never fails, only :meth:`nudge` retries)."""

    def __init__(self, core: SubsystemCore, *, timers: Timers | None, clock: Clock, me: Mailbox) -> None:
        self.core = core
        self.timers = timers
        self.clock = clock
        self.me = me
        self.queue: collections.deque[_Write] = collections.deque()
        self.last_error: str | None = None
        self.delay = RETRY_FIRST
        self._seq = 0
        self._failures = 0  # failed attempts not yet reported

    @property
    def timer_key(self) -> str:
        return f"store-retry:{self.core.name}"

    def __len__(self) -> int:
        return len(self.queue)

    def write(self, what: str, do: Callable[[], Any]) -> bool:
        """Carry out ``do`` now, or keep it behind the writes that wait; True if it was recorded now.

        ``what`` names it for people ("the result of job 5 (passed)").
        """
        if self.queue:
            self._show(self._keep(what, do))
            return False
        try:
            do()
        except StoreError as exc:
            self._keep(what, do)
            self.failed(exc)
            return False
        return True

    def later(self, what: str, do: Callable[[], Any], send: Callable[[], Any]) -> None:
        """A write sent without waiting for its answer (``send``, the store logs a failure):
        behind waiting writes it is kept and carried out with ``do`` instead, in order."""
        if self.queue:
            self._show(self._keep(what, lambda: _refusal_logged(what, do)))
        else:
            send()

    def retry(self) -> None:
        """Carry out the waiting writes in order; stop at the first the store still refuses."""
        if not self.queue:
            return
        done = 0
        while self.queue:
            try:
                self.queue[0].do()
            except StoreError as exc:
                self._drop_recorded()
                self.failed(exc)
                return
            self.queue.popleft()
            done += 1
        log.warning("the store records again: %d write(s) that waited are recorded", done)
        if self.timers is not None:
            self.timers.disarm(self.timer_key)
        self.delay = RETRY_FIRST
        self.last_error = None
        self._drop_recorded()
        self._report()

    def nudge(self) -> None:
        """Something was just recorded elsewhere: the store may work again, so try now."""
        if self.queue:
            self.retry()

    # -- keeping and showing ---------------------------------------------------------------

    def _keep(self, what: str, do: Callable[[], Any]) -> _Write:
        self._seq += 1
        write = _Write(what, do, qualify(self.core.name, f"write-{self._seq}"), self.clock.now())
        self.queue.append(write)
        return write

    def failed(self, exc: StoreError) -> None:
        first = self.last_error is None
        self.last_error = exc.message
        self._failures += 1
        if first:
            log.error("%d write(s) wait for the store, kept in memory and retried: %s", len(self.queue), exc.message)
        else:
            self.delay = min(self.delay * 2, RETRY_MAX)
        if self.timers is not None:
            self.timers.arm(self.timer_key, self.delay, RetryWrites(), self.me)
        self.changed()

    def _item(self, write: _Write) -> InFlightItem:
        return InFlightItem(
            id=write.item_id,
            subsystem=self.core.name,
            kind=PENDING_WRITE,
            description=f"{write.what} waiting to be written: {self.last_error or 'the store refused an earlier write'}",
            started_at=write.since,
            cancellable=False,
        )

    def _show(self, write: _Write) -> None:
        self.core.items[write.item_id] = self._item(write)
        self._report()

    def changed(self) -> None:
        """Show every waiting write as an item (with the newest error), and report."""
        for write in self.queue:
            self.core.items[write.item_id] = self._item(write)
        self._report()

    def _drop_recorded(self) -> None:
        """The items of the writes recorded go; those of the writes still waiting stay."""
        waiting = {w.item_id for w in self.queue}
        for item_id in [i for i, item in self.core.items.items() if item.kind == PENDING_WRITE and i not in waiting]:
            del self.core.items[item_id]

    def _report(self) -> None:
        failures, self._failures = self._failures, 0
        self.core.emit(
            WritesPending(
                subsystem=self.core.name,
                count=len(self.queue),
                last_error=self.last_error if self.queue else None,
                since=self.queue[0].since if self.queue else None,
                failures=failures,
            )
        )
        self.core.report()
        self.core.check_drained()


def _refusal_logged(what: str, do: Callable[[], Any]) -> None:
    """As a write sent unwaited: one the store refuses as such (ValueError) is logged, not raised."""
    try:
        do()
    except ValueError as exc:
        log.error("the store could not record %s: %s", what, exc)


def without_pending(items: Iterable[InFlightItem]) -> list[InFlightItem]:
    """In-flight items to restore into a fresh core, less the writes the failed one kept
    (they went with it; the store still says how the work stands, and the core learns it again)."""
    return [item for item in items if item.kind != PENDING_WRITE]
