"""maintd's actors: state and decisions only. No trio, no sockets, no subprocesses.

Effects are asked for through the ports in :mod:`actors.ports`; the daemon implements
them and tests fake them. Names are loaded on first use, so that a light module such as
:mod:`actors.definitions` can be imported (by maintctl) without starting pykka.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BadRequest": "errors",
    "Conflict": "errors",
    "Forbidden": "errors",
    "IllegalTransition": "errors",
    "MaintdError": "errors",
    "NotCancellable": "errors",
    "NotFound": "errors",
    "SubsystemGone": "errors",
    "CallbackFuture": "future",
    "Machine": "maintenance",
    "MaintenanceEvent": "maintenance",
    "Transition": "maintenance",
    "Event": "status",
    "HistoryEntry": "status",
    "MaintenanceInfo": "status",
    "Status": "status",
    "SubsystemInfo": "status",
    "SubsystemActor": "subsystem",
    "SubsystemCore": "subsystem",
    "SupervisorActor": "supervisor",
    "SupervisorCore": "supervisor",
    "InFlightItem": "types",
    "MaintenanceState": "types",
    "OnDeadline": "types",
    "SubsystemState": "types",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    return getattr(importlib.import_module(f"actors.{module}"), name)
