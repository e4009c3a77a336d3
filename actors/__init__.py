"""maintd's actors: state and decisions only. No trio, no sockets, no subprocesses.

Effects are asked for through the ports in :mod:`actors.ports`; the daemon implements
them and tests fake them.
"""

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    IllegalTransition,
    MaintdError,
    NotCancellable,
    NotFound,
    SubsystemGone,
)
from .future import CallbackFuture
from .maintenance import Machine, MaintenanceEvent, Transition
from .status import Event, HistoryEntry, MaintenanceInfo, Status, SubsystemInfo
from .subsystem import SubsystemActor, SubsystemCore
from .supervisor import SupervisorActor, SupervisorCore
from .types import InFlightItem, MaintenanceState, OnDeadline, SubsystemState

__all__ = [
    "BadRequest",
    "CallbackFuture",
    "Conflict",
    "Event",
    "Forbidden",
    "HistoryEntry",
    "IllegalTransition",
    "InFlightItem",
    "Machine",
    "MaintdError",
    "MaintenanceEvent",
    "MaintenanceInfo",
    "MaintenanceState",
    "NotCancellable",
    "NotFound",
    "OnDeadline",
    "Status",
    "SubsystemActor",
    "SubsystemCore",
    "SubsystemGone",
    "SubsystemInfo",
    "SubsystemState",
    "SupervisorActor",
    "SupervisorCore",
    "Transition",
]
