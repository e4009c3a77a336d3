"""The HTTP side of the daemon: ``/metrics``, the status page and GoCD's maintenance API.

Served inside the daemon's trio loop by hypercorn's HTTP/1.1 connection handler, with a small
ASGI app; no HTTP is parsed here. Connections are accepted by :func:`daemon.fds.serve_listener`,
at most :func:`daemon.fds.http_connection_cap` at a time, so that a flood of them cannot take
the descriptors the control socket and the jobs need. GET and HEAD only (anything else is 405),
but for GoCD's enable and disable (POST, with a token; :mod:`daemon.gocd_api`); while in
maintenance any other request that would change something is 503 with GoCD's message. Routes:

- ``/metrics``: the Prometheus exposition (text, or OpenMetrics when asked for), generated
  in a worker thread so that a slow scrape never stalls the control socket.
- ``/``: the status page, server-rendered, refreshed every 5 s by the browser.
- ``/go/api/admin/maintenance_mode/info`` (and maintd's older ``/api/maintenance_mode/info``),
  ``/go/api/admin/maintenance_mode/enable`` and ``.../disable``: GoCD's API, from
  :mod:`daemon.gocd_api` (a bearer token when ``[http] tokens_file`` is set).

Every page and the JSON are built from the newest :class:`~actors.status.Status` the hub
holds (frozen structs, read in the loop). When the server listens on a loopback address
only requests whose ``Host`` is a loopback name are answered (421 otherwise), so that a
web page elsewhere cannot read the status through DNS rebinding.

The GoCD JSON is :mod:`daemon.gocd_api`'s and the pages are :mod:`daemon.status_page`'s;
this module is the ASGI app that routes to them and the server that runs it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import hypercorn.config
import msgspec
import trio
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client.exposition import choose_encoder

from actors.status import Status

from . import fds
from .gocd_api import API_PREFIX, DISABLE_PATH, ENABLE_PATH, IN_MAINTENANCE, INFO_PATHS, GocdApi
from .gocd_api import message as api_message
from .metrics import Metrics
from .status_page import HELP_PATH, render_error_page, render_help_page, render_status_page
from .tokens import TokenHolder

log = logging.getLogger("maintd.http")

__all__ = ["App", "HttpError", "parse_listen", "serve_http"]

BACKLOG = 128  # connections past the cap wait here, holding no descriptor of ours
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
HTML_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
]


#: GoCD's API before the first status: JSON, like its other answers.
STARTING = api_message(503, "maintd is starting", (b"retry-after", b"1"))


class HttpError(Exception):
    """The HTTP listener cannot be opened (bad address, port in use, no permission)."""


class StatusSource(Protocol):
    status: Status | None


# -- listen address -------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port). Raises ValueError."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", listen)
    if not match:
        raise ValueError(f"not HOST:PORT or [IPV6]:PORT: {listen!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port out of range: {listen!r}")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise HttpError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


# -- the ASGI app -----------------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class App:
    """A plain ASGI app over the hub's newest status and the metrics registry."""

    def __init__(
        self, hub: StatusSource, metrics: Metrics, *, check_host: bool = False, clock: Any = None, api: GocdApi | None = None
    ) -> None:
        self.hub = hub
        self.api = api or GocdApi(TokenHolder(None))
        self.metrics = metrics
        self.check_host = check_host
        self.clock = clock or time.time
        # Scrapes get threads of their own, two at most: a burst of them never takes the
        # threads the rest of the daemon uses through trio.to_thread.
        self.exposition_limiter = trio.CapacityLimiter(2)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets: hypercorn closes the connection
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        head = method == "HEAD"
        if self.check_host and not _is_loopback(_host_of(headers.get("host", ""))):
            await self.respond(send, 421, self.error_html(421, "Misdirected Request: use a loopback address"), HTML_HEADERS, head)
            return
        path = scope["path"]
        status = self.hub.status
        if method not in ("GET", "HEAD"):
            if path in (ENABLE_PATH, DISABLE_PATH) and method == "POST":
                answer = await self.api.change(scope, headers) if status is not None else STARTING
                await self.respond(send, *answer, head)
                return
            if status is not None and status.maintenance.enabled and not path.startswith(API_PREFIX):
                # GoCD's ModeAwareFilter: while in maintenance, what would change something waits;
                # its JSON to a client that speaks JSON, else the page (ServerUnavailabilityResponse)
                if "json" in headers.get("accept", "") or "json" in headers.get("content-type", ""):
                    body, kind = msgspec.json.encode({"message": IN_MAINTENANCE}), [(b"content-type", b"application/json")]
                else:
                    body, kind = self.error_html(503, IN_MAINTENANCE), HTML_HEADERS
                await self.respond(send, 503, body, kind, head)
                return
            extra = [(b"allow", b"GET, HEAD")]
            await self.respond(
                send, 405, self.error_html(405, "Method Not Allowed: this server is read-only"), [*HTML_HEADERS, *extra], head
            )
            return
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = await trio.to_thread.run_sync(encoder, self.metrics.registry, limiter=self.exposition_limiter)
            await self.respond(send, 200, body, [(b"content-type", content_type.encode())], head)
        elif path in INFO_PATHS:
            answer = await self.api.info(scope, headers, status) if status is not None else STARTING
            await self.respond(send, *answer, head)
        elif path in (ENABLE_PATH, DISABLE_PATH):
            await self.respond(send, *api_message(405, "use POST", (b"allow", b"POST")), head)
        elif path == HELP_PATH:
            page = render_help_page(status, version=self.metrics.version, now=self.clock())
            await self.respond(send, 200, page.encode(), HTML_HEADERS, head)
        elif path != "/":
            await self.respond(send, 404, self.error_html(404, "Not Found"), HTML_HEADERS, head)
        elif status is None:
            await self.respond(
                send, 503, self.error_html(503, "maintd is starting"), [*HTML_HEADERS, (b"retry-after", b"1")], head
            )
        else:
            now = self.clock()
            foresight = getattr(self.hub, "foresight", None)  # the hub's, if it has one (tests' sources do not)
            if foresight is not None and status.eta is None:
                status = msgspec.structs.replace(status, eta=foresight.eta(status, now))
            backend = getattr(self.hub, "agents_backend", None)
            if backend is not None and status.agents_backend is None:
                status = msgspec.structs.replace(status, agents_backend=backend)
            config_repos = getattr(self.hub, "config_repos", None)
            page = render_status_page(status, version=self.metrics.version, now=now, config_repos=config_repos)
            await self.respond(send, 200, page.encode(), HTML_HEADERS, head)

    def error_html(self, code: int, message: str) -> bytes:
        return render_error_page(code, message, self.hub.status, version=self.metrics.version, now=self.clock()).encode()

    @staticmethod
    async def respond(send: Send, code: int, body: bytes, headers: list[tuple[bytes, bytes]], head: bool) -> None:
        length = [] if code == 204 else [(b"content-length", str(len(body)).encode())]  # RFC 9110: none on a 204
        await send({"type": "http.response.start", "status": code, "headers": [*headers, *SECURITY_HEADERS, *length]})
        await send({"type": "http.response.body", "body": b"" if head else body})


def _host_of(host_header: str) -> str:
    """``127.0.0.1:9187`` -> ``127.0.0.1``; ``[::1]:9187`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


# -- the server ------------------------------------------------------------------------------


async def serve_http(
    listen: str,
    hub: StatusSource,
    metrics: Metrics,
    *,
    api: GocdApi | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started((host, port))`` with the port really bound.

    Raises :class:`HttpError` when the address cannot be bound (before ``started``).
    """
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise HttpError(str(exc)) from None
    sock = _open_socket(host, port)
    bound_port = sock.getsockname()[1]
    sock.listen(BACKLOG)
    config = hypercorn.config.Config()
    config.accesslog = None
    server_log = logging.getLogger("maintd.http.server")
    server_log.setLevel(max(server_log.getEffectiveLevel(), logging.WARNING))
    config.errorlog = server_log
    config.include_server_header = False
    config.alpn_protocols = ["http/1.1"]
    config.keep_alive_timeout = 30  # Prometheus scrapes every 15-60 s over one connection; an idle one goes after this
    app = wrap_app(App(hub, metrics, check_host=_is_loopback(host), api=api), config.wsgi_max_body_size, "asgi")
    # hypercorn's own serve() accepts without bound (and logs a traceback per EMFILE): the
    # accept loop is ours, capped; each connection is still hypercorn's (its TCPServer).
    context = WorkerContext(None)
    cap = fds.http_connection_cap()
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def connection(stream: trio.SocketStream) -> None:
        await TCPServer(app, config, context, ConnectionState({}), stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(fds.serve_listener, listener, connection, what="http", limit=cap))
        shown = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
        log.info("http on %s (at most %d connections at a time)", shown, cap)
        task_status.started((host, bound_port))
