"""The store's actor: :class:`StoreActor` owns one :class:`~actors.store.Store` in its own
thread (a connection belongs to the thread that opened it), commits queued calls together
(group commit) and answers through pykka proxies; :class:`SyncStore` lets other actors call
it as if it were the plain Store (they ask downward to the store, never the other way).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pykka

from .budget import STORE_WAIT
from .eta import RECENT, Durations
from .future import CallbackFuture
from .store import Store, StoreError

log = logging.getLogger(__name__)


#: The Store methods that StoreActor answers and SyncStore forwards.
METHODS = (
    "next_counter", "create_run", "create_jobs", "set_job_state", "hand_out_many", "take_back",
    "request_cancel", "finish_run", "recover", "record_revision", "last_revision", "audit", "job", "jobs_of_run", "recent_runs",
    "set_pipeline_paused", "paused_pipelines",
    "agent_jobs", "scheduled_jobs", "job_events", "audit_entries",
)  # fmt: skip


#: The most calls one group commit holds (the actor commits sooner once its inbox is empty).
GROUP_MAX = 200


class StoreCall:
    """One Store method call sent to a :class:`StoreActor` by :class:`SyncStore`.

    ``reply`` is answered once the call's writes are committed (None: nobody waits; a
    failure is logged).
    """

    __slots__ = ("args", "kwargs", "name", "reply")

    def __init__(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], reply: pykka.ThreadingFuture[Any] | None
    ) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.reply = reply

    def answer(self, ok: bool, value: Any) -> None:
        if self.reply is not None:
            if ok:
                self.reply.set(value)
            else:
                self.reply.set_exception((type(value), value, value.__traceback__))
        elif not ok:
            log.error("the store could not record %s: %s", self.name, value)

    def dead(self) -> None:
        if self.reply is not None:
            self.reply.set_exception((pykka.ActorDeadError, pykka.ActorDeadError("the store has stopped"), None))
        else:
            log.error("the store has stopped; %s was not recorded", self.name)


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

    def recent_durations(self, limit_per_key: int = RECENT) -> Durations:
        """:meth:`Store.recent_durations`, for the trio shell's ETA (a read: nothing to commit first
        but the open group, so that a job's result sent before the ask is in it)."""
        self._flush()
        return self._open().recent_durations(limit_per_key)

    def _run(self, call: StoreCall) -> tuple[bool, Any]:
        try:
            return True, getattr(self._open(), call.name)(*call.args, **call.kwargs)
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


class SyncStore:
    """The Store's methods over a :class:`StoreActor`, each blocking for its answer
    (which comes once its writes are committed)."""

    def __init__(self, proxy: Any, timeout: float = STORE_WAIT) -> None:
        self._ref = proxy.actor_ref
        self._timeout = timeout

    def later(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Send a write without waiting for it; the store carries out its messages in order,
        so later reads and writes see it. A failure is logged (it cannot be refused here)."""
        try:
            self._ref.tell(StoreCall(name, args, kwargs, None))
        except pykka.ActorDeadError:
            log.error("the store has stopped; %s was not recorded", name)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        try:
            self._ref.tell(StoreCall(name, args, kwargs, reply))
            return reply.get(timeout=self._timeout)
        except pykka.Timeout:
            raise StoreError(f"the store did not answer {name} within {self._timeout:g}s") from None
        except pykka.ActorDeadError:
            raise StoreError(f"the store has stopped; {name} was not carried out") from None


def _actor_method(name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(Store, name))
    def call(self: StoreActor, *args: Any, **kwargs: Any) -> Any:
        self._flush()  # a proxy call is answered as soon as it returns: what came before is committed first
        return getattr(self._open(), name)(*args, **kwargs)

    return call


def _sync_method(name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(Store, name))
    def call(self: SyncStore, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    return call


for _name in METHODS:
    setattr(StoreActor, _name, _actor_method(_name))
    setattr(SyncStore, _name, _sync_method(_name))
