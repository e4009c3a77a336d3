"""The one bridge between trio and the actors.

Actors run in their own threads. The trio loop never blocks on them: it waits on a
:class:`~actors.future.CallbackFuture` whose callback wakes trio through
``TrioToken.run_sync_soon``. Actors reach trio only through the ports implemented here
and in :mod:`daemon.hub`, and each of those does nothing in the actor's thread but
``run_sync_soon``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pykka
import trio

from actors.future import CallbackFuture

log = logging.getLogger("maintd.bridge")


class Bridge:
    """Calls from the actors' threads into the trio thread, in order, in batches.

    ``TrioToken.run_sync_soon`` takes a lock and writes to trio's wake-up socket on every
    call; with a hundred actor threads publishing at once, that lock and that system call
    were most of what they did. Here a call is appended to a deque, and only the first
    call after a batch was taken schedules the next one: however many calls arrive while
    the trio thread is busy, they cost it one wake-up and run in one pass, in the order
    they were made.
    """

    #: At most this many calls in one pass, so that a flood cannot starve trio's other tasks.
    BATCH = 1000

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False
        self._after: dict[Callable[[], Any], None] = {}
        self._in_batch = False

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the trio thread, from any thread. ``fn`` must not raise.

        After the trio run has ended the call is dropped: nothing is left to receive it.
        """
        self._calls.append((fn, args))  # deque.append is atomic
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._run_batch)

    def after_batch(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` once after the calls of the current pass (trio thread only)."""
        if not self._after and not self._in_batch:
            self.token.run_sync_soon(self._run_after, idempotent=True)
        self._after[fn] = None

    def _run_batch(self) -> None:
        # Cleared before taking calls: a call appended from now on schedules another pass.
        self._scheduled = False
        calls = self._calls
        self._in_batch = True
        try:
            for _ in range(min(len(calls), self.BATCH)):
                fn, args = calls.popleft()
                fn(*args)
        finally:
            self._in_batch = False
        if calls and not self._scheduled:
            self._scheduled = True
            self.token.run_sync_soon(self._run_batch)
        self._run_after()

    def _run_after(self) -> None:
        after, self._after = self._after, {}
        for fn in after:
            fn()

    async def wait(self, future: CallbackFuture, timeout: float) -> Any:
        """Wait for ``future`` without blocking the loop; raise what it holds, or TooSlowError."""
        done = trio.Event()
        future.add_done_callback(lambda _f: self.call_soon(done.set))
        with trio.fail_after(timeout):
            await done.wait()
        return future.get(timeout=0)

    async def ask(self, ref: pykka.ActorRef[Any], message: Any, timeout: float = 10.0) -> Any:
        future = ref.ask(message, block=False)
        assert isinstance(future, CallbackFuture), "actors must create CallbackFutures"
        return await self.wait(future, timeout)


class WallClock:
    def now(self) -> float:
        return time.time()


class TrioTimers:
    """The actors' :class:`~actors.ports.Timers` port: trio tasks that sleep, then tell."""

    def __init__(self, bridge: Bridge, nursery: trio.Nursery) -> None:
        self.bridge = bridge
        self.nursery = nursery
        self.target: pykka.ActorRef[Any] | None = None
        self._scopes: dict[str, trio.CancelScope] = {}

    def arm(self, key: str, delay: float, message: Any, target: Any = None) -> None:
        self.bridge.call_soon(self._arm, key, delay, message, target)

    def disarm(self, key: str) -> None:
        self.bridge.call_soon(self._disarm, key)

    def _arm(self, key: str, delay: float, message: Any, target: Any) -> None:
        self._disarm(key)
        scope = trio.CancelScope()
        try:
            self.nursery.start_soon(self._fire, key, delay, message, target, scope)
        except RuntimeError as exc:
            # The nursery has closed (the daemon is stopping). Raised here, in a run_sync_soon
            # callback, it would crash trio itself and drop the calls after it in the batch.
            log.warning("timer %s not armed: %s", key, exc)
            return
        self._scopes[key] = scope

    def _disarm(self, key: str) -> None:
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.cancel()

    async def _fire(self, key: str, delay: float, message: Any, target: Any, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay)
            if self._scopes.get(key) is scope:
                del self._scopes[key]
            target = target or self.target
            if target is not None:
                target.tell(message)
