"""The control socket server: one trio task pair per connection, every wait bounded.

Each connection has a reader (lines in, requests handled in order) and a writer fed by a
bounded queue. A client that does not read its replies fills its queue and is
disconnected; nobody else notices. A connection that sends ``register`` becomes an
external subsystem until it closes; its removal is shown in status and events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pykka
import trio

from actors.budget import ACTOR_ANSWER
from actors.errors import BadRequest, Conflict, MaintdError, StillLeaving
from actors.future import CallbackFuture
from actors.messages import (
    CancelTimedOut,
    Disable,
    Enable,
    ExternalCancelResult,
    ExternalDrained,
    ExternalInFlight,
    ExternalIntakePaused,
    Forget,
    GetHistory,
    Register,
    RequestCancel,
    Unregister,
)
from actors.types import InFlightItem, OnDeadline, qualify

from . import protocol as p
from .auth import Peer, peer_of
from .bridge import Bridge
from .config import Config, parse_duration
from .connection import Connection, ConnectionLink
from .fds import serve_listener
from .hub import StatusHub

log = logging.getLogger("maintd.control")

NO_REPLY = object()
FLUSH_TIMEOUT = 5.0
ASK_TIMEOUT = ACTOR_ANSWER  # actors/budget.py: longer than the actor waits on the store
#: How long a register waits for the same name's closing connection to be gone.
REREGISTER_WAIT = 2.0


class Caller:
    """Who asked, for a request that did not come on a connection (see ControlServer.on_behalf)."""

    __slots__ = ("peer",)

    def __init__(self, peer: Any) -> None:
        self.peer = peer


class ControlServer:
    def __init__(
        self,
        bridge: Bridge,
        supervisor: pykka.ActorRef[Any],
        hub: StatusHub,
        config: Config,
        jobs: Any = None,
        on_reject: Callable[[str], object] | None = None,
        foresight: Any = None,
    ) -> None:
        self.foresight = foresight  # daemon.foresight.Foresight: answers `preview`
        self.jobs = jobs
        self.on_reject = on_reject or (lambda code: False)
        self.bridge = bridge
        self.supervisor = supervisor
        self.hub = hub
        self.config = config.control
        self.cancel_timeout = parse_duration(config.control.cancel_timeout)
        self.require_ttl = config.maintenance.require_ttl
        self.connections = 0

    async def serve(
        self, listener: trio.SocketListener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_listener, listener, self.handle, what="control socket"))
            task_status.started()

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = peer_of(stream.socket, self.config.admin_group)  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("cannot read the peer's credentials: %s", exc)
            await stream.aclose()
            return
        conn = Connection(stream, peer, self.config.client_queue)
        self.connections += 1
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.writer)
                    await self.read_lines(conn)
                    # The client closed its end: flush what it is owed, within a bound.
                    conn.send_channel.close()
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.close_reason = conn.close_reason or "connection lost"
        except* Exception as group:  # a bug in one connection must not stop the server
            log.error("connection of %s failed", peer.user, exc_info=group)
            conn.close_reason = conn.close_reason or "internal error"
        finally:
            self.connections -= 1
            self.hub.unsubscribe(conn)
            if conn.subsystem is not None:
                self.supervisor.tell(Unregister(name=conn.subsystem, reason=conn.close_reason or "disconnected"))
            conn.closed = True
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def read_lines(self, conn: Connection) -> None:
        limit = self.config.max_line_bytes
        buffer = bytearray()
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                return
            buffer += data
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                line = bytes(buffer[start:end])
                start = end + 1
                if len(line) > limit:
                    self.on_reject("too_large")
                    conn.push(p.error_reply(None, "too_large", f"a line may hold at most {limit} bytes"))
                    continue
                if line.strip():
                    await self.dispatch(conn, line)
            del buffer[:start]
            if len(buffer) > limit:
                self.on_reject("too_large")
                conn.push(p.error_reply(None, "too_large", f"a line may hold at most {limit} bytes; closing"))
                conn.close_reason = "line over the size limit"
                return

    async def dispatch(self, conn: Connection, line: bytes) -> None:
        try:
            request = p.decode_request(line)
        except p.ProtocolError as exc:
            self.on_reject(exc.code)
            conn.push(p.error_reply(exc.request_id, exc.code, exc.message))
            return
        try:
            result = await self.handle_request(conn, request)
        except MaintdError as exc:
            self.on_reject(exc.code)
            if exc.code == "forbidden":
                await self.forbidden(conn, request.__struct_config__.tag)
            conn.push(p.error_reply(request.id, exc.code, exc.message))
        except trio.TooSlowError:
            conn.push(p.error_reply(request.id, "timeout", "no answer in time; the request may still take effect"))
        except pykka.ActorDeadError:
            conn.push(p.error_reply(request.id, "unavailable", "maintd is shutting down"))
        except Exception:
            log.exception("request %r failed", request)
            conn.push(p.error_reply(request.id, "internal", "internal error; the daemon's log has the details"))
        else:
            if result is NO_REPLY:
                return
            if isinstance(result, bytes):
                conn.push(*p.ok_reply_raw(request.id, result))
            else:
                conn.push(p.ok_reply(request.id, result))

    async def handle_request(self, conn: Connection, request: p.AnyRequest) -> Any:
        peer = conn.peer
        match request:
            case p.StatusRequest():
                return self.hub.status_json()
            case p.InflightRequest():
                return self.hub.inflight_json()
            case p.PingRequest():
                return {"pong": True}
            case p.PreviewRequest() if self.foresight is not None:
                return self.foresight.preview(self.hub.status, request.deadline_seconds, request.cancel_at_deadline)
            case p.WatchRequest():
                # Reply and subscription in one step, so that no event comes before the snapshot.
                self.hub.subscribe(conn, lambda status: p.ok_reply_raw(request.id, status))
                return NO_REPLY
            case p.HistoryRequest():
                if self.jobs is not None:  # the persistent audit log
                    return {"entries": await self.jobs.history()}
                return {"entries": await self.ask(GetHistory())}
            case p.EnableRequest():
                peer.require_admin("enable", self.config.admin_group)
                if self.require_ttl and request.ttl_seconds is None:
                    raise BadRequest(
                        "this maintd needs a TTL on every enable ([maintenance] require_ttl): give --ttl, e.g. --ttl 4h"
                    )
                info = await self.ask(
                    Enable(
                        by=peer.user,
                        reason=request.reason,
                        deadline_seconds=request.deadline_seconds,
                        on_deadline=OnDeadline(request.on_deadline),
                        peer=peer.detail,
                        ttl_seconds=request.ttl_seconds,
                        if_version=request.if_version,
                    )
                )
                log.info("%s turned on maintenance mode (reason: %s)", peer.user, request.reason or "none given")
                return info
            case p.DisableRequest():
                peer.require_admin("disable", self.config.admin_group)
                info = await self.ask(
                    Disable(by=peer.user, reason=request.reason, peer=peer.detail, if_drain_id=request.if_drain_id)
                )
                log.info("%s turned off maintenance mode", peer.user)
                return info
            case p.CancelRequest():
                peer.require_admin("cancel", self.config.admin_group)
                reply = CallbackFuture()
                item = await self.ask(
                    RequestCancel(item=request.item, by=peer.user, reason=request.reason, reply=reply, peer=peer.detail)
                )
                log.info("%s asked to cancel %s", peer.user, item)
                try:
                    return await self.bridge.wait(reply, self.cancel_timeout)
                except trio.TooSlowError:
                    # This cancel ends here: the next one of the item is sent, not refused.
                    self.supervisor.tell(CancelTimedOut(item_id=item, reply=reply))
                    raise
            case p.ForgetRequest():
                peer.require_admin("forget", self.config.admin_group)
                result = await self.ask(Forget(name=request.subsystem, by=peer.user, peer=peer.detail))
                log.info("%s cleared the removed subsystem %s", peer.user, request.subsystem)
                return result
            case p.WindowRequest():
                peer.require_admin("window", self.config.admin_group)
                return await self.window_step(peer, request)
            case p.RegisterRequest():
                return await self.register(conn, request)
            case p.InFlightMessage() | p.IntakePausedMessage() | p.DrainedMessage() | p.CancelResultMessage():
                name = conn.subsystem
                if name is None:
                    raise BadRequest(f"{request.__struct_config__.tag} is for registered subsystems; send register first")
                conn.tell_actor(self.to_actor(conn, name, request))
                return {"accepted": True} if request.id is not None else NO_REPLY
        if self.jobs is not None:
            result = await self.jobs.handle(request, peer, self.config.admin_group)
            if result is not NotImplemented:
                return result
        raise BadRequest(f"unhandled request type {request.__struct_config__.tag}")

    async def on_behalf(self, peer: Any, request: p.EnableRequest | p.DisableRequest) -> Any:
        """An enable or disable that came another way (GoCD's API over HTTP, daemon/gocd_api.py),
        ``peer`` saying who asked (a daemon.tokens.TokenPeer): checked, carried out, audited and
        refused (a refusal audited too) exactly as the socket's. Raises MaintdError."""
        caller = Caller(peer)
        try:
            return await self.handle_request(caller, request)  # type: ignore[arg-type]
        except MaintdError as exc:
            self.on_reject(exc.code)
            if exc.code == "forbidden":
                await self.forbidden(caller, request.__struct_config__.tag)  # type: ignore[arg-type]
            raise
        except pykka.ActorDeadError:
            raise MaintdError("maintd is shutting down", code="unavailable") from None

    async def forbidden(self, conn: Connection, action: str) -> None:
        peer = conn.peer
        why = f"a job's process: {peer.job}" if peer.job else "not an admin"
        who = f"uid {peer.uid}, {peer.detail}" if peer.uid is not None else peer.detail
        log.warning("refused %s from %s (%s; %s): forbidden", action, peer.user, who, why)
        if self.jobs is not None:
            detail = f"uid {peer.uid}; {peer.detail}; {why}" if peer.uid is not None else f"{peer.detail}; {why}"
            try:
                now = time.time()
                await self.jobs.stored(lambda s: s.audit("forbidden", peer.user, now, target=action, detail=detail))
            except (MaintdError, trio.TooSlowError) as exc:
                log.error("could not record the refused %s in the audit log: %s", action, exc)

    async def window_step(self, peer: Peer, request: p.WindowRequest) -> Any:
        """Audit a step of ``maintctl window`` (the command run in a drained window, how it ended)."""
        step = request.step.replace("_", " ") + ("" if request.exit_code is None else f", exit code {request.exit_code}")
        detail = f"{step}; {request.drain_id or 'no drain'}; {peer.detail}"
        log.info("%s: window: %s: %s", peer.user, request.command, detail)
        if self.jobs is None:  # no store: the log line above is the record
            return {"audited": False}
        now = time.time()
        await self.jobs.stored(lambda s: s.audit("window", peer.user, now, target=request.command, detail=detail))
        return {"audited": True}

    async def ask(self, message: Any) -> Any:
        return await self.bridge.ask(self.supervisor, message, ASK_TIMEOUT)

    async def register(self, conn: Connection, request: p.RegisterRequest) -> Any:
        conn.peer.require_admin("register", self.config.admin_group)
        if conn.subsystem is not None:
            raise Conflict(f"this connection is already registered as {conn.subsystem!r}")
        conn.held = []
        message = Register(
            name=request.name, link=ConnectionLink(self.bridge, conn), by=conn.peer.user, pid=conn.peer.pid, peer=conn.peer.detail
        )
        try:
            # The same name's earlier connection may be closing this very moment (a process
            # that reconnects at once): its removal takes a round trip through its actor.
            give_up = trio.current_time() + REREGISTER_WAIT
            while True:
                try:
                    result = await self.ask(message)
                    break
                except StillLeaving:
                    if trio.current_time() >= give_up:
                        raise
                    await trio.sleep(0.005)
        except BaseException:
            conn.held = None
            raise
        conn.subsystem = request.name
        log.info("subsystem %s registered (pid %s, user %s)", request.name, conn.peer.pid, conn.peer.user)
        conn.push(p.ok_reply(request.id, result))
        conn.release_held()
        return NO_REPLY

    def to_actor(self, conn: Connection, name: str, request: Any) -> Any:
        match request:
            case p.InFlightMessage(items=wire):
                ids = [w.id for w in wire]
                if len(set(ids)) != len(ids):
                    raise BadRequest("in_flight lists the same item id more than once")
                now = time.time()
                seen = {w.id: conn.first_seen.get(w.id, now) for w in wire}
                conn.first_seen = seen
                items = tuple(
                    InFlightItem(
                        id=qualify(name, w.id),
                        subsystem=name,
                        kind=w.kind,
                        description=w.description,
                        started_at=w.started_at if w.started_at is not None else seen[w.id],
                        cancellable=w.cancellable,
                        blocks_restart=w.blocks_restart,
                        expected_end=w.expected_end,
                    )
                    for w in wire
                )
                return ExternalInFlight(items=items)
            case p.IntakePausedMessage(drain_id=drain_id):
                return ExternalIntakePaused(drain_id=drain_id)
            case p.DrainedMessage(drain_id=drain_id):
                return ExternalDrained(drain_id=drain_id)
            case p.CancelResultMessage(item=item, ok=ok, reason=reason):
                return ExternalCancelResult(item=item, ok=ok, reason=reason)
        raise BadRequest("not a subsystem message")
