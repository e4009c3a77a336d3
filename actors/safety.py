"""The one answer to "is running work in the way of a restart?", used everywhere it is asked.

``safe_to_restart`` is the maintenance state ``drained``, which the supervisor reaches only
when every subsystem has stopped its intake and :func:`blocking` finds nothing in any of
them. GoCD's ``has_running_systems`` (the HTTP info), the ``maintd_in_flight_items`` counts and
``maintctl wait`` must never say otherwise, so they all come from these two functions: a
``has_running_systems: true`` means exactly "not safe to restart because of running work".
"""

from __future__ import annotations

from collections.abc import Iterable

from .status import RunningSystems
from .types import InFlightItem


def blocking(items: Iterable[InFlightItem]) -> list[InFlightItem]:
    """The items a restart would break: those that say ``blocks_restart``, whatever their kind."""
    return [item for item in items if item.blocks_restart]


def has_running_work(running: RunningSystems) -> bool:
    """Whether any work listed in a status keeps the server from being safe to restart."""
    return any(item.blocks_restart for item in running.items())
