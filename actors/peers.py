"""How subsystems find each other across restarts.

A subsystem actor that fails is replaced by a fresh one with a new ref. Other actors and
the process runner hold a :class:`PeerRef` instead, which looks the current ref up at the
moment of each ``tell``; the supervisor keeps the table up to date.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka


class Peers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, Any] = {}
        self._held: dict[str, list[Any]] = {}

    def set(self, name: str, ref: Any) -> None:
        """The current actor of ``name`` (None while it is failed). Held messages go to a new one.

        A new actor that has died already (it failed at once, or the daemon is stopping)
        raises nothing here: the messages it did not take stay held for the next one, in
        order, and the caller (the supervisor) goes on.
        """
        with self._lock:
            self._refs[name] = ref
            if ref is None:
                return
            held = self._held.pop(name, [])
            for i, message in enumerate(held):
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:
                    self._held[name] = held[i:]
                    return

    def tell(self, name: str, message: Any) -> None:
        """Tell the current actor of ``name``; while it is being restarted, hold the message for it."""
        with self._lock:
            ref = self._refs.get(name)
            if ref is not None:
                try:
                    ref.tell(message)
                    return
                except pykka.ActorDeadError:
                    pass
            self._held.setdefault(name, []).append(message)

    def current(self, name: str) -> Any:
        """The live actor ref of ``name``, or None while it is failed or unknown."""
        with self._lock:
            ref = self._refs.get(name)
        return ref if ref is not None and ref.is_alive() else None

    def ref(self, name: str) -> PeerRef:
        return PeerRef(self, name)


class PeerRef:
    """Quacks like an ActorRef for ``tell``: the process runner replies through it."""

    def __init__(self, peers: Peers, name: str) -> None:
        self.peers = peers
        self.name = name

    def tell(self, message: Any) -> None:
        self.peers.tell(self.name, message)
