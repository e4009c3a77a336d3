"""An external subsystem's lines take one thread crossing (issue 11): the connection hands
each one to the subsystem's core, which runs in the supervisor's thread, and the supervisor
handles what the core emits there too. Before, every line went through the supervisor
(``FromExternal``) to an actor thread of its own and came back to the supervisor: two
passes, seven thread crossings per pause, and a hundred threads woken for a hundred
processes.

One trio run: the real control server on one end of a socket pair, the real bridge, hub
and supervisor; the test is the process on the other end.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pykka
import trio
import trio.lowlevel

from actors.messages import Enable, ExternalLeft, ForExternal, InFlightReport
from actors.supervisor_actor import SupervisorActor
from daemon.bridge import Bridge, WallClock
from daemon.config import Config
from daemon.hub import StatusHub
from daemon.server import ControlServer
from tests.actors.fakes import FakeTimers


class RecordingSupervisor(SupervisorActor):
    """The real supervisor, which also keeps every message it is sent."""

    def __init__(self, record: Record, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    def on_receive(self, message: Any) -> Any:
        with self.record.lock:
            self.record.received.append(message)
        return super().on_receive(message)


class Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Any] = []

    def __call__(self) -> list[Any]:
        with self.lock:
            return list(self.received)


class Process:
    """The external process: one end of the socket pair, a line at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, **message: Any) -> None:
        await self.stream.send_all(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        with trio.fail_after(5):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                assert data, "the daemon closed the connection"
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


def subsystem(hub: StatusHub, name: str) -> Any:
    status = hub.status
    return None if status is None else next((s for s in status.subsystems if s.name == name), None)


async def wait_until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    """Poll with a deadline: the supervisor works in its own thread."""
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await trio.sleep(0.002)


async def test_each_line_of_an_external_crosses_one_thread_to_its_core_in_the_supervisor() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    hub = StatusHub(bridge, on_fatal=lambda error: None)
    received = Record()
    ref = RecordingSupervisor.start(received, clock=WallClock(), timers=FakeTimers(), sink=hub)
    server = ControlServer(bridge, ref, hub, Config())  # the test's user is the daemon's: an admin
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
            process = Process(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
            await process.send(type="register", id=1, name="worker")
            assert (await process.receive())["ok"] is True
            job = {"id": "job-1", "kind": "building_job", "description": "build", "cancellable": True}
            await process.send(type="in_flight", items=[job])
            await wait_until(lambda: (s := subsystem(hub, "worker")) is not None and s.in_flight == 1, "the job shown")

            # No thread of its own: the supervisor is the only actor.
            assert pykka.ActorRegistry.get_all() == [ref]
            mark = len(received())
            info = await bridge.ask(ref, Enable(by="alice"), timeout=5)
            assert await process.receive() == {"type": "pause_intake", "drain_id": info.drain_id}
            await process.send(type="intake_paused", drain_id=info.drain_id)
            await process.send(type="in_flight", items=[])
            await process.send(type="drained", drain_id=info.drain_id)
            await wait_until(lambda: hub.status is not None and hub.status.maintenance.safe_to_restart, "safe to restart")

            after = received()[mark:]
            # Each line is one message from trio to the supervisor, for the core; what the
            # core answers is handled by the same thread: nothing else goes through.
            lines = [type(m.message).__name__ for m in after if isinstance(m, ForExternal)]
            assert lines == ["PauseIntake", "ExternalIntakePaused", "ExternalInFlight", "ExternalDrained"], after
            answers = [m for m in after if not isinstance(m, ForExternal | Enable)]
            assert [type(m).__name__ for m in answers] == ["IntakePaused", "InFlightReport", "Drained"], after
            assert answers[1].from_process and answers[1].items == ()

            # Its removal still comes after every line it sent before it closed.
            await process.send(type="in_flight", items=[job])
            await process.stream.aclose()
            await wait_until(lambda: any(isinstance(m, ExternalLeft) for m in received()), "the removal")
            tail = received()[len(after) + mark :]
            left = next(i for i, m in enumerate(tail) if isinstance(m, ExternalLeft))
            assert [len(m.items) for m in tail[:left] if isinstance(m, InFlightReport)] == [1], tail
            nursery.cancel_scope.cancel()
    finally:
        pykka.ActorRegistry.stop_all()
