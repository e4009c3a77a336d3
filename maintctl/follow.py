"""A ``watch`` subscription that outlives the daemon's process: ``maintctl watch`` and ``wait``.

When the connection drops (maintd restarted, was upgraded, crashed), :class:`Subscription`
says so, reconnects with back-off (0.1 s doubling to 5 s) and subscribes again; the new
subscription's first status comes back as a fresh snapshot, and whether the daemon on the
other end is a new process (its pid, read from the kernel with ``SO_PEERCRED``) decides
between "maintd restarted" and "reconnected". Only a daemon that cannot be trusted
(:class:`~maintctl.client.Untrusted`) ends it: that is never retried.
"""

from __future__ import annotations

import _socket
import struct
import time

from .client import Client, DaemonError, Unreachable, Untrusted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


def peer_pid(client: Client) -> int:
    """The pid of the process that serves the socket, as the kernel says."""
    pid, _uid, _gid = struct.unpack("3i", client.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid


class Subscription:
    """``watch`` on the control socket, again after every lost connection.

    :meth:`start` connects once (a daemon that is not running at all is exit 3, as for any
    command) and returns the first status; :meth:`next` returns the next event, or a status
    snapshot (``{"type": "snapshot", "status": ...}``) after a reconnection, or None once
    ``deadline`` (a :func:`time.monotonic` time) passes. ``say`` gets each note for people.
    """

    def __init__(self, client: Client, say: Callable[[str], None]) -> None:
        self.path = client.path
        self.say = say
        self.client: Client | None = client
        self.pid = 0
        self.restarts = 0

    def start(self) -> dict[str, Any]:
        """Subscribe on the connection given (closed by whoever opened it)."""
        assert self.client is not None
        status = self.client.request("watch")
        self.pid = peer_pid(self.client)
        return status

    def _subscribe(self) -> dict[str, Any]:
        client = Client(self.path)
        try:
            status = client.request("watch")
        except BaseException:
            client.close()
            raise
        self.client = client
        self.pid = peer_pid(client)
        return status

    def request(self, type_: str) -> Any:
        """A request on the current connection (the events that arrive meanwhile are kept)."""
        if self.client is None:
            raise Unreachable("maintd cannot be reached")
        return self.client.request(type_)

    def status(self) -> dict[str, Any] | None:
        """The status now, or None when the connection is lost (:meth:`next` reconnects)."""
        try:
            return self.request("status")
        except Untrusted:
            raise
        except Unreachable:
            return None

    def next(self, deadline: float | None) -> dict[str, Any] | None:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                assert self.client is not None
                message = self.client.events.pop(0) if self.client.events else self.client.read(timeout=left)
            except Untrusted:
                raise
            except Unreachable as exc:
                status = self._reconnect(str(exc), deadline)
                if status is None:
                    return None
                return {"type": "snapshot", "status": status}
            if message is None:
                return None
            if message.get("type") == "event":
                return message

    def _reconnect(self, why: str, deadline: float | None) -> dict[str, Any] | None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.say(f"lost maintd ({why}); reconnecting")
        delay = FIRST_DELAY
        old = self.pid
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            try:
                status = self._subscribe()
            except Untrusted:
                raise
            except (Unreachable, DaemonError):  # not up yet, or up and not serving yet
                continue
            if self.pid != old:
                self.restarts += 1
                self.say("maintd restarted")
            else:
                self.say("reconnected to maintd")
            return status

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
