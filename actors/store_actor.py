"""The store's actor: :class:`StoreActor` owns one :class:`~actors.store.Store` in its own
thread (a connection belongs to the thread that opened it), commits queued calls together
(group commit) and answers the trio shell's proxy calls (:meth:`StoreActor.call`, a typed
query on the Store); :class:`SyncStore` lets other actors call it as if it were the plain
Store, method for method (they ask downward to the store, never the other way). No call
names a Store method by a string: each carries a callable on the Store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pykka

from .budget import STORE_WAIT
from .eta import RECENT, Durations
from .future import CallbackFuture
from .jobs import JobState
from .schema import AuditRow, JobEvent, JobRow, MaintenanceRow, RunRow
from .store import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


#: The most calls one group commit holds (the actor commits sooner once its inbox is empty).
GROUP_MAX = 200


class StoreCall:
    """One call of the Store sent to a :class:`StoreActor` by :class:`SyncStore`: ``write``
    is carried out on the actor's Store; ``what`` names it in what is logged or raised.

    ``reply`` is answered once the call's writes are committed (None: nobody waits; a
    failure is logged).
    """

    __slots__ = ("reply", "what", "write")

    def __init__(self, write: Callable[[Store], Any], what: str, reply: pykka.ThreadingFuture[Any] | None) -> None:
        self.write = write
        self.what = what
        self.reply = reply

    def answer(self, ok: bool, value: Any) -> None:
        if self.reply is not None:
            if ok:
                self.reply.set(value)
            else:
                self.reply.set_exception((type(value), value, value.__traceback__))
        elif not ok:
            log.error("the store could not record %s: %s", self.what, value)

    def dead(self) -> None:
        if self.reply is not None:
            self.reply.set_exception((pykka.ActorDeadError, pykka.ActorDeadError("the store has stopped"), None))
        else:
            log.error("the store has stopped; %s was not recorded", self.what)


class StoreActor(pykka.ThreadingActor):
    """Owns one :class:`Store`, opened in the actor's own thread.

    If the store cannot be opened the actor stays up and answers every call with that
    :class:`StoreError`, so the asker learns why rather than just that the actor died.

    Group commit: :class:`StoreCall` messages (from :class:`SyncStore`) that find more
    messages behind them in the inbox run in one open transaction, each in a savepoint,
    and are committed together once the inbox is empty (or after :data:`GROUP_MAX` calls,
    or before any other message); only then is each caller answered, so nobody hears
    "recorded" before it is committed. A call refused on its own (ValueError) is rolled
    back alone; if the group fails as a whole (a StoreError: disk full, ...) it is rolled
    back and its calls are carried out again one by one, each in its own transaction, so
    each caller gets its own answer. Proxy calls (the trio shell's) commit the open group
    first and then run alone, answered at once as pykka does.
    """

    use_daemon_thread = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._store: Store | None = None
        self._error: StoreError | None = None
        #: the calls of the open group and their outcomes (ok, value), not yet answered
        self._pending: list[tuple[StoreCall, bool, Any]] = []

    @staticmethod
    def _create_future() -> CallbackFuture:
        return CallbackFuture()

    def on_start(self) -> None:
        try:
            self._store = Store(self._path)
        except StoreError as exc:
            log.error("%s", exc)
            self._error = exc

    def on_stop(self) -> None:
        self._flush()
        if self._store is not None:
            self._store.close()
            self._store = None
        # StoreCalls still queued are answered now: nobody waits for a stopped store until a timeout.
        # Other messages go back in the inbox, in order, for pykka's own teardown to answer.
        others = []
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, StoreCall):
                envelope.message.dead()
            else:
                others.append(envelope)
        for envelope in others:
            self.actor_inbox.put(envelope)

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, StoreCall):
            self._flush()
            return super().on_receive(message)
        store = self._store
        if store is None or (not store._group and self.actor_inbox.empty()):
            message.answer(*self._run(message))  # alone: its own transaction
            return None
        if not store._group:
            try:
                store.begin_group()
            except StoreError:
                message.answer(*self._run(message))
                return None
        ok, value = self._run(message)
        if not ok and isinstance(value, StoreError):
            self._redo(message)
            return None
        self._pending.append((message, ok, value))
        if len(self._pending) >= GROUP_MAX or self.actor_inbox.empty():
            self._flush()
        return None

    def _run(self, call: StoreCall) -> tuple[bool, Any]:
        try:
            return True, call.write(self._open())
        except Exception as exc:  # noqa: BLE001 - the caller's answer
            return False, exc

    def _flush(self) -> None:
        """Commit the open group and answer its callers."""
        store = self._store
        if store is None or not store._group:
            return
        try:
            store.commit_group()
        except StoreError:
            self._redo()
            return
        pending, self._pending = self._pending, []
        for call, ok, value in pending:
            call.answer(ok, value)

    def _redo(self, failed: StoreCall | None = None) -> None:
        """The group failed: roll it back and carry out its calls (and ``failed``) one by one."""
        store = self._open()
        store.abort_group()
        calls = [call for call, _, _ in self._pending] + ([failed] if failed is not None else [])
        self._pending = []
        for call in calls:
            call.answer(*self._run(call))

    def _open(self) -> Store:
        if self._store is None:
            raise StoreError(self._error.message if self._error else f"the store at {self._path} is closed")
        return self._store

    def call(self, query: Callable[[Store], T]) -> T:
        """For a proxy (the trio shell: ``proxy.call(lambda s: s.recent_runs(limit=5))``):
        ``query`` on the Store, after the open group is committed, answered at once."""
        self._flush()  # a proxy call is answered as soon as it returns: what came before is committed first
        return query(self._open())


class SyncStore:
    """The Store's methods over a :class:`StoreActor`, each blocking for its answer
    (which comes once its writes are committed). Each sends the actor a :class:`StoreCall`
    whose ``what`` is the method's name, as the errors and the log say it."""

    def __init__(self, proxy: Any, timeout: float = STORE_WAIT) -> None:
        self._ref = proxy.actor_ref
        self._timeout = timeout

    def later(self, write: Callable[[Store], object], what: str) -> None:
        """Send ``write`` without waiting for it; the store carries out its messages in order,
        so later reads and writes see it. A failure is logged (it cannot be refused here)."""
        try:
            self._ref.tell(StoreCall(write, what, None))
        except pykka.ActorDeadError:
            log.error("the store has stopped; %s was not recorded", what)

    def _call(self, query: Callable[[Store], T], what: str) -> T:
        reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        try:
            self._ref.tell(StoreCall(query, what, reply))
            return cast(T, reply.get(timeout=self._timeout))
        except pykka.Timeout:
            raise StoreError(f"the store did not answer {what} within {self._timeout:g}s") from None
        except pykka.ActorDeadError:
            raise StoreError(f"the store has stopped; {what} was not carried out") from None

    # -- runs and jobs (as :class:`~actors.store.Store`) ----------------------------------------

    def next_counter(self, pipeline: str) -> int:
        return self._call(lambda s: s.next_counter(pipeline), "next_counter")

    def create_run(
        self, pipeline: str, counter: int, trigger: str, triggered_by: str, revisions: dict[str, str], at: float
    ) -> int:
        return self._call(lambda s: s.create_run(pipeline, counter, trigger, triggered_by, revisions, at), "create_run")

    def create_jobs(
        self,
        run_id: int,
        pipeline: str,
        pipeline_counter: int,
        stage: str,
        stage_index: int,
        jobs: tuple[tuple[str, str], ...],
        at: float,
    ) -> list[int]:
        return self._call(
            lambda s: s.create_jobs(run_id, pipeline, pipeline_counter, stage, stage_index, jobs, at), "create_jobs"
        )

    def set_job_state(
        self,
        job_id: int,
        state: JobState | str,
        at: float,
        *,
        agent: str | None = None,
        returncode: int | None = None,
        cancelled_by: str | None = None,
        detail: str | None = None,
    ) -> None:
        return self._call(
            lambda s: s.set_job_state(
                job_id, state, at, agent=agent, returncode=returncode, cancelled_by=cancelled_by, detail=detail
            ),
            "set_job_state",
        )

    def hand_out_many(self, hand_outs: tuple[tuple[int, str], ...]) -> list[bool]:
        return self._call(lambda s: s.hand_out_many(hand_outs), "hand_out_many")

    def take_back(self, job_id: int) -> bool:
        return self._call(lambda s: s.take_back(job_id), "take_back")

    def reschedule(self, job_id: int, at: float, detail: str) -> bool:
        return self._call(lambda s: s.reschedule(job_id, at, detail), "reschedule")

    def request_cancel(self, job_id: int, by: str) -> bool:
        return self._call(lambda s: s.request_cancel(job_id, by), "request_cancel")

    def finish_run(self, run_id: int, state: str, at: float) -> bool:
        return self._call(lambda s: s.finish_run(run_id, state, at), "finish_run")

    def recover(
        self, at: float, on_end: Callable[[str], None] | None = None, *, keep_building: bool = False
    ) -> tuple[list[int], list[int]]:
        return self._call(lambda s: s.recover(at, on_end, keep_building=keep_building), "recover")

    # -- revisions and audit ---------------------------------------------------------------

    def record_revision(self, material: str, revision: str, at: float) -> bool:
        return self._call(lambda s: s.record_revision(material, revision, at), "record_revision")

    def last_revision(self, material: str) -> str | None:
        return self._call(lambda s: s.last_revision(material), "last_revision")

    def audit(
        self, action: str, by: str, at: float, reason: str | None = None, target: str | None = None, detail: str | None = None
    ) -> int:
        return self._call(lambda s: s.audit(action, by, at, reason, target, detail), "audit")

    def set_pipeline_paused(self, pipeline: str, paused: bool, by: str, at: float, detail: str | None = None) -> int:
        return self._call(lambda s: s.set_pipeline_paused(pipeline, paused, by, at, detail), "set_pipeline_paused")

    def paused_pipelines(self) -> list[str]:
        return self._call(lambda s: s.paused_pipelines(), "paused_pipelines")

    def set_agent_disabled(
        self, agent: str, disabled: bool, by: str, at: float, reason: str | None = None, detail: str | None = None
    ) -> int:
        return self._call(lambda s: s.set_agent_disabled(agent, disabled, by, at, reason, detail), "set_agent_disabled")

    def disabled_agents(self) -> list[str]:
        return self._call(lambda s: s.disabled_agents(), "disabled_agents")

    def recent_durations(self, limit_per_key: int = RECENT) -> Durations:
        return self._call(lambda s: s.recent_durations(limit_per_key), "recent_durations")

    def save_maintenance(self, row: MaintenanceRow, reason: str | None = None, detail: str | None = None) -> int:
        return self._call(lambda s: s.save_maintenance(row, reason, detail), "save_maintenance")

    def maintenance(self) -> MaintenanceRow | None:
        return self._call(lambda s: s.maintenance(), "maintenance")

    # -- queries ---------------------------------------------------------------------------

    def job(self, job_id: int) -> JobRow | None:
        return self._call(lambda s: s.job(job_id), "job")

    def jobs_of_run(self, run_id: int) -> list[JobRow]:
        return self._call(lambda s: s.jobs_of_run(run_id), "jobs_of_run")

    def recent_runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunRow]:
        return self._call(lambda s: s.recent_runs(limit, pipeline), "recent_runs")

    def agent_jobs(self) -> list[JobRow]:
        return self._call(lambda s: s.agent_jobs(), "agent_jobs")

    def scheduled_jobs(self) -> list[JobRow]:
        return self._call(lambda s: s.scheduled_jobs(), "scheduled_jobs")

    def job_events(self, job_id: int) -> list[JobEvent]:
        return self._call(lambda s: s.job_events(job_id), "job_events")

    def audit_entries(self, limit: int = 100) -> list[AuditRow]:
        return self._call(lambda s: s.audit_entries(limit), "audit_entries")
