"""A pykka future that can call back when it is done.

The trio shell must never block on a future (DESIGN.md). Actors create this future for
every ``ask`` (see ``_create_future`` on our actor classes) and the shell registers a
callback that wakes trio through ``TrioToken.run_sync_soon``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pykka import ThreadingFuture


class CallbackFuture(ThreadingFuture[Any]):
    """``ThreadingFuture`` plus ``add_done_callback``.

    A callback runs once, in the thread that completes the future, or at once in the
    caller's thread if the future is already done. Callbacks must not raise; one that does
    is ignored so that it cannot break the actor that set the value.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[CallbackFuture], None]] = []

    def add_done_callback(self, fn: Callable[[CallbackFuture], None]) -> None:
        with self._condition:
            if self._result is None:
                self._callbacks.append(fn)
                return
        _call(fn, self)

    @property
    def done(self) -> bool:
        return self._result is not None

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        self._run_callbacks()

    def set_exception(self, exc_info: Any = None) -> None:
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        super().set_exception(exc_info)
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        with self._condition:
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _call(fn, self)


def _call(fn: Callable[[CallbackFuture], None], future: CallbackFuture) -> None:
    try:
        fn(future)
    except Exception:
        import logging

        logging.getLogger(__name__).exception("future callback raised")
