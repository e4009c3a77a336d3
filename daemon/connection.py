"""One control-socket connection: its bounded outgoing queue and writer, and, for an external
subsystem, the link its actor answers through (:class:`ConnectionLink`). Moved out of
:mod:`daemon.server`, which reads the lines and answers the requests.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import msgspec
import pykka
import trio

from actors.external import ExternalHost

from .auth import Peer
from .bridge import Bridge

log = logging.getLogger("maintd.control")


class Connection:
    """One client. ``push`` queues a line; a full queue means the client is not reading.

    While nothing is queued, ``push`` writes straight to the (non-blocking) socket: a
    reply or an event that fits in the socket's buffer costs one system call and no task
    switch. Whatever does not fit goes through the queue to the writer task, and so does
    everything after it until the queue is empty again, so the order is kept.
    """

    def __init__(self, stream: trio.SocketStream, peer: Peer, queue_size: int) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.peer = peer
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes | memoryview](queue_size)
        self.scope = trio.CancelScope()
        self.subsystem: str | None = None
        #: the registered subsystem's core (in the supervisor's thread): the process's lines go to it
        self.actor: ExternalHost | None = None
        self.held: list[bytes] | None = None
        self.first_seen: dict[str, float] = {}
        self.close_reason: str | None = None
        self.backlog = 0  # lines queued for the writer or being sent by it
        self.closed = False  # once set, the fd may belong to another connection

    def push(self, *parts: bytes | memoryview) -> None:
        """Send ``parts`` one after the other (a line may come in parts that share buffers)."""
        if self.closed:
            return
        for data in parts:
            if self.backlog == 0 and self.close_reason is None:
                try:
                    sent = os.write(self.fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # the peer is gone (EPIPE, ECONNRESET) or the socket closed
                    self.lost()
                    return
                if sent == len(data):
                    continue
                data = memoryview(data)[sent:]  # a view: no copy of a shared buffer
            try:
                self.send_channel.send_nowait(data)
            except trio.WouldBlock:
                self.kill("the client does not read its replies (its queue is full)")
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            self.backlog += 1

    def push_subsystem(self, data: bytes) -> None:
        """A line from the subsystem's actor; held back until the register reply is out."""
        if self.held is not None:
            self.held.append(data)
        else:
            self.push(data)

    def route_to(self, actor: ExternalHost) -> None:
        self.actor = actor

    def tell_actor(self, message: Any) -> None:
        """Hand one of the process's messages to its subsystem's core.

        A core that has failed drops it: its successor gets the process's items restored
        and, in a drain, a PauseIntake that asks again.
        """
        actor = self.actor
        if actor is None:
            return
        try:
            actor.tell(message)
        except pykka.ActorDeadError:
            log.info("%s: its core has failed; %s dropped", self.subsystem, type(message).__name__)

    def release_held(self) -> None:
        held, self.held = self.held or [], None
        for data in held:
            self.push(data)

    def kill(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            log.warning("closing connection of %s (pid %s): %s", self.peer.user, self.peer.pid, reason)
        self.scope.cancel()

    def lost(self) -> None:
        """A write failed: the peer is gone. Nothing more is sent; the handler closes up."""
        self.close_reason = self.close_reason or "connection lost"
        self.closed = True
        self.scope.cancel()

    async def writer(self) -> None:
        async with self.receive_channel:
            async for data in self.receive_channel:
                try:
                    await self.stream.send_all(data)
                finally:
                    self.backlog -= 1
                # A watcher waits long between events: do not keep its last line (maybe a
                # multi-megabyte status snapshot) alive meanwhile.
                del data


class ConnectionLink:
    """The :class:`~actors.ports.SubsystemLink` of a registered connection."""

    def __init__(self, bridge: Bridge, conn: Connection) -> None:
        self.bridge = bridge
        self.conn = conn

    def send(self, message: dict[str, Any]) -> None:
        self.bridge.call_soon(self.conn.push_subsystem, msgspec.json.encode(message) + b"\n")

    def route_to(self, actor: ExternalHost) -> None:
        # In order with the supervisor's answer to the register (or its restart of the actor).
        self.bridge.call_soon(self.conn.route_to, actor)
