"""The read-only HTTP side of the daemon: ``/metrics``, the status page and GoCD's info API.

Served inside the daemon's trio loop by hypercorn's HTTP/1.1 connection handler, with a small
ASGI app; no HTTP is parsed here. Connections are accepted by :func:`daemon.fds.serve_listener`,
at most :func:`daemon.fds.http_connection_cap` at a time, so that a flood of them cannot take
the descriptors the control socket and the jobs need. GET and HEAD only (anything else is 405). Routes:

- ``/metrics``: the Prometheus exposition (text, or OpenMetrics when asked for), generated
  in a worker thread so that a slow scrape never stalls the control socket.
- ``/``: the status page, server-rendered, refreshed every 5 s by the browser.
- ``/api/maintenance_mode/info``: GoCD's ``GET /go/api/admin/maintenance_mode/info`` shape.

Every page and the JSON are built from the newest :class:`~actors.status.Status` the hub
holds (frozen structs, read in the loop). When the server listens on a loopback address
only requests whose ``Host`` is a loopback name are answered (421 otherwise), so that a
web page elsewhere cannot read the status through DNS rebinding.
"""

from __future__ import annotations

import datetime as dt
import html
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
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

from actors.safety import has_running_work
from actors.status import Status, SubsystemInfo
from actors.types import InFlightItem

from . import fds
from .metrics import Metrics

log = logging.getLogger("maintd.http")

__all__ = ["App", "HttpError", "gocd_info", "parse_listen", "render_status_page", "serve_http"]

REFRESH_SECONDS = 5
BACKLOG = 128  # connections past the cap wait here, holding no descriptor of ours
DOC_URL = "https://api.gocd.org/current/#maintenance-mode-info"
INFO_PATH = "/api/maintenance_mode/info"
#: The built-in subsystems, in drain order, and how GoCD's checklist names each.
CHECKLIST = (
    ("materials", "Waiting for material subsystem to stop..", "Stopped material subsystem."),
    ("config repos", "Waiting for config repository polling to stop..", "Stopped polling on config repositories."),
    ("scheduler", "Waiting for scheduling subsystem to stop..", "Stopped scheduling subsystem."),
    ("agents", "Waiting for agent subsystem to stop..", "Stopped agent subsystem."),
    ("config", "Waiting for config changes to stop..", "Stopped config changes."),
)
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
_MATERIAL = re.compile(r"^(material|config repo) ([^:\s]+): (.*) \(([^()]*)\)$")


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


# -- time and text ---------------------------------------------------------------------------


def _human(ts: float | str | None) -> str:
    """Seconds since the epoch or an ISO time -> ``2026-11-29 03:35:42 UTC``."""
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, str):
        try:
            when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return ts
    else:
        try:
            when = dt.datetime.fromtimestamp(ts, dt.UTC)
        except (OverflowError, ValueError, OSError):
            return str(ts)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: float) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return str(ts)


def e(value: Any) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


# -- GoCD's info JSON -------------------------------------------------------------------------


def _pipeline_counter(item: InFlightItem) -> int | None:
    """The pipeline counter, from the description ``PIPELINE/COUNTER/STAGE/JOB``: InFlightItem has no field for it."""
    if not item.pipeline or not item.stage:
        return None
    match = re.match(rf"{re.escape(item.pipeline)}/(\d+)/{re.escape(item.stage)}/", item.description)
    return int(match.group(1)) if match else None


def _material(item: InFlightItem) -> dict[str, Any]:
    """GoCD's material representation plus ``mdu_start_time``; maintd polls git only."""
    match = _MATERIAL.match(item.description)
    if match and item.subsystem == "materials":
        attributes: dict[str, Any] = {
            "name": match.group(2),
            "url": match.group(3),
            "branch": match.group(4),
            "auto_update": True,
            "config_repo": match.group(1) == "config repo",
        }
        kind = "git"
    else:  # an external subsystem's material update: only its description is known
        attributes = {"name": item.local_id, "url": None, "description": item.description, "auto_update": True}
        kind = "unknown"
    return {"type": kind, "attributes": attributes, "mdu_start_time": _iso(item.started_at)}


def _job(item: InFlightItem, state: str) -> dict[str, Any]:
    counter = _pipeline_counter(item)
    return {
        "pipeline_name": item.pipeline,
        "pipeline_counter": counter,
        # maintd runs each stage once (no re-runs), so a known stage's counter is "1"; GoCD sends it as a string.
        "stage_counter": "1" if counter is not None else None,
        "stage_name": item.stage,
        "name": item.job or item.local_id,
        "state": state,
        "scheduled_date": _iso(item.started_at),
        "agent_uuid": item.agent,
    }


def _other(item: InFlightItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "subsystem": item.subsystem,
        "kind": item.kind,
        "description": item.description,
        "start_time": _iso(item.started_at),
        "blocks_restart": item.blocks_restart,
        "cancellable": item.cancellable,
    }


def gocd_info(status: Status) -> dict[str, Any]:
    """GoCD's maintenance mode info; ``attributes`` only while maintenance mode is on.

    ``has_running_systems`` is "not safe to restart because of running work": any listed
    item that blocks the restart, whatever its group, from :func:`actors.safety.has_running_work`,
    the computation the supervisor's ``safe_to_restart`` uses. An item that says
    ``blocks_restart: false`` (a scheduled job, which survives a restart) is listed but
    does not count.
    """
    m = status.maintenance
    info: dict[str, Any] = {
        "_links": {"self": {"href": INFO_PATH}, "doc": {"href": DOC_URL}},
        "is_maintenance_mode": m.enabled,
        "metadata": {"updated_by": m.updated_by, "updated_on": m.updated_on},
    }
    if m.enabled:
        rs = status.running_systems
        info["attributes"] = {
            "has_running_systems": has_running_work(rs),
            "running_systems": {
                "material_update_in_progress": [_material(i) for i in rs.material_update_in_progress],
                "building_jobs": [_job(i, "Building") for i in rs.building_jobs],
                "scheduled_jobs": [_job(i, "Scheduled") for i in rs.scheduled_jobs],
                "other": [_other(i) for i in rs.other],
            },
        }
    return info


# -- the status page --------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#2c3e50;color:#fff;padding:.6em 1.5em}header h1{font-size:1.25em;margin:0}
header nav a{color:#cfe3ff;margin-right:1em;font-size:.9em}
main{padding:.8em 1.5em;max-width:1150px}
section{background:#fff;border:1px solid #dde1e6;border-radius:4px;padding:.3em 1.1em .5em;margin:0 0 .8em}
h2{font-size:1.05em;margin:.4em 0}
.state{font-size:1.15em;font-weight:600;margin:.3em 0}
.on{color:#9a5b00}.off{color:#2a6f2a}.safe{color:#2a6f2a;font-weight:600}.unsafe{color:#b02a2a;font-weight:600}
.columns{display:flex;flex-wrap:wrap;gap:0 3em}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}dt{color:#59606b}dd{margin:0}
ul.checklist{list-style:none;padding:0;margin:.4em 0}ul.checklist li{padding:.1em 0}
li.done:before{content:"\\2714";color:#2a6f2a;margin-right:.5em}
li.waiting:before{content:"\\231B";margin-right:.5em}
.detail{color:#59606b;font-size:.9em;margin-left:.5em}
table{border-collapse:collapse;width:100%;margin:.2em 0 .5em}caption{text-align:left;font-weight:600;padding:.2em 0}
th,td{text-align:left;padding:.2em .6em;border-bottom:1px solid #e5e8ec;font-size:.92em;vertical-align:top}
th{background:#f0f2f5}.empty{color:#59606b;font-style:italic;margin:.3em 0}code{font-size:.9em}
p.detail{margin:.2em 0 0}
.banner{background:#fff3cd;border-top:2px solid #e0a800;color:#5c4400;padding:.7em 1.5em;font-weight:600}
footer{color:#59606b;font-size:.85em;padding:.8em 1.5em}
"""


def _layout(title: str, body: str, status: Status | None, version: str, now: float) -> str:
    banner = ""
    if status is not None and status.maintenance.enabled:
        m = status.maintenance
        banner = (
            '<div id="maintenance-banner" class="banner" role="status">'
            f"{e(m.updated_by or 'someone')} turned on maintenance mode at {e(_human(m.updated_on))}."
            "</div>\n"
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f'<header><h1>maintd: {e(title)}</h1><nav><a href="/">Status</a>'
        f'<a href="{INFO_PATH}">Maintenance info (JSON)</a><a href="/metrics">Metrics</a></nav></header>\n'
        f"<main>\n{body}</main>\n"
        f"{banner}"
        f"<footer>maintd {e(version)} &middot; read-only &middot; this page refreshes every {REFRESH_SECONDS} s "
        f"&middot; generated at {e(_human(now))}</footer>\n"
        "</body></html>\n"
    )


def _table(headings: Iterable[str], rows: list[list[str]], empty: str, caption: str | None = None) -> str:
    """Rows hold HTML already escaped."""
    if not rows:
        return f'<p class="empty">{e(empty)}</p>\n'
    head = "".join(f"<th>{e(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _stage_key(item: InFlightItem) -> str:
    counter = _pipeline_counter(item)
    if item.pipeline and item.stage:
        return f"{item.pipeline} / {counter if counter is not None else '?'} / {item.stage}"
    return item.subsystem


def _stages(items: tuple[InFlightItem, ...], state: str, empty: str) -> str:
    groups: dict[str, list[InFlightItem]] = {}
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        groups.setdefault(_stage_key(item), []).append(item)
    if not groups:
        return f'<p class="empty">{e(empty)}</p>\n'
    out = []
    for stage, jobs in groups.items():
        rows = [
            [e(j.job or j.local_id), e(state), e(_human(j.started_at)), e(j.agent or "-"), f"<code>{e(j.id)}</code>"]
            for j in jobs
        ]
        out.append(
            _table(("Job", "State", "Scheduled at" if state == "Scheduled" else "Since", "Agent", "Item"), rows, "", stage)
        )
    return "".join(out)


def _mdus(items: tuple[InFlightItem, ...]) -> str:
    rows = []
    for item in sorted(items, key=lambda i: (i.started_at, i.id)):
        match = _MATERIAL.match(item.description)
        if match and item.subsystem == "materials":
            kind = "Git (config repo)" if match.group(1) == "config repo" else "Git"
            name, where = match.group(2), f"{match.group(3)} ({match.group(4)})"
        else:
            kind, name, where = item.subsystem, item.local_id, item.description
        rows.append([e(kind), e(name), e(where), e(_human(item.started_at))])
    return _table(("Type", "Name", "URL", "Started at"), rows, "No material update is running.")


def _checklist(status: Status) -> str:
    subs = {s.name: s for s in status.subsystems}
    mdus = status.running_systems.material_update_in_progress
    lines = []
    for key, waiting, stopped in CHECKLIST:
        if key == "config repos":
            sub = subs.get("materials")
            polling = sum(1 for i in mdus if i.subsystem == "materials" and i.local_id.startswith("config:"))
            done = sub is not None and (sub.state == "drained" or (sub.state == "paused" and polling == 0))
            detail = f"{polling} config repo poll(s) running" if polling else ""
        else:
            sub = subs.get(key)
            if sub is None:
                continue
            done = sub.state == "drained"
            detail = _sub_detail(sub)
        lines.append(_check_line(done, waiting, stopped, detail, key.replace(" ", "-")))
    for sub in status.subsystems:
        if not sub.external:
            continue
        lines.append(
            _check_line(
                sub.state == "drained",
                f"Waiting for external subsystem {sub.name} to stop..",
                f"Stopped external subsystem {sub.name}.",
                _sub_detail(sub),
                f"external-{sub.name}",
            )
        )
    return '<ul class="checklist" id="subsystem-checklist">' + "".join(lines) + "</ul>\n"


def _sub_detail(sub: SubsystemInfo) -> str:
    if sub.state == "failed":
        return f"failed, being restarted{': ' + sub.last_error if sub.last_error else ''}"
    if sub.state == "drained":
        return f"{sub.in_flight} item(s) kept across a restart" if sub.in_flight else ""
    parts = [sub.state]
    if sub.blocking:
        parts.append(f"{sub.blocking} item(s) holding the restart")
    return ", ".join(parts)


def _check_line(done: bool, waiting: str, stopped: str, detail: str, slug: str) -> str:
    cls, text = ("done", stopped) if done else ("waiting", waiting)
    extra = f'<span class="detail">({e(detail)})</span>' if detail else ""
    return f'<li class="{cls}" data-subsystem="{e(slug)}">{e(text)}{extra}</li>'


def render_status_page(status: Status, *, version: str, now: float) -> str:
    m = status.maintenance
    rs = status.running_systems
    parts = ['<section id="maintenance">\n']
    if m.enabled:
        parts.append(f'<p class="state on">Maintenance mode is ON: {e(m.state)}</p>\n')
        if m.safe_to_restart:
            parts.append('<p class="safe" id="safe-to-restart">Safe to restart: yes. Every subsystem has stopped.</p>\n')
        else:
            parts.append(
                '<p class="unsafe" id="safe-to-restart">Safe to restart: no. Some subsystems are still in progress.</p>\n'
            )
        rows = [
            ("Turned on by", m.updated_by or "-"),
            ("At", _human(m.updated_on)),
            ("Reason", m.reason or "-"),
            ("Deadline", _human(m.deadline) + (" (passed: overdue)" if m.overdue else "") if m.deadline else "none"),
        ]
        if m.deadline:
            rows.append(("At the deadline", "cancel what is cancellable" if m.on_deadline == "cancel" else "wait"))
        rows.append(("Drain", m.drain_id or "-"))
        parts.append(
            '<div class="columns"><div><h2>Maintenance</h2><dl>'
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
            + "</dl></div>\n<div><h2>Subsystems</h2>\n"
            + _checklist(status)
            + "</div></div>\n"
        )
    else:
        parts.append('<p class="state off">Maintenance mode is off.</p>\n')
        parts.append(
            '<p class="unsafe" id="safe-to-restart">Safe to restart: no. Turn maintenance mode on and wait for '
            "every subsystem to stop: <code>maintctl enable --reason WHY</code>, then <code>maintctl wait</code>.</p>\n"
        )
        if m.updated_by:
            parts.append(f"<p>Last turned off by {e(m.updated_by)} at {e(_human(m.updated_on))}.</p>\n")
    parts.append("</section>\n")

    sub_rows = [
        [
            e(s.name) + (" (external)" if s.external else ""),
            e(s.state),
            e(s.in_flight),
            e(s.blocking),
            e(s.failures) + (f" <span class='detail'>{e(s.last_error)}</span>" if s.last_error else ""),
        ]
        for s in status.subsystems
    ]
    parts.append(
        '<section id="subsystems"><h2>Subsystem states</h2>\n'
        + _table(("Subsystem", "State", "In flight", "Holding the restart", "Failures"), sub_rows, "No subsystem.")
        + "</section>\n"
    )
    parts.append(
        '<section id="running-stages"><h2>Running Stages</h2>\n'
        + _stages(rs.building_jobs, "Building", "No job is building.")
        + "<p class='detail'>Cancel a job with <code>maintctl cancel ITEM</code>.</p></section>\n"
    )
    parts.append(
        '<section id="running-mdus"><h2>Running MDUs</h2>\n'
        + _mdus(rs.material_update_in_progress)
        + "<p class='detail'>Material updates cannot be cancelled: a partial clone can corrupt the repository. "
        "Wait for them to finish.</p></section>\n"
    )
    parts.append(
        '<section id="scheduled-stages"><h2>Scheduled Stages</h2>\n'
        + _stages(rs.scheduled_jobs, "Scheduled", "No job is scheduled.")
        + "<p class='detail'>Scheduled jobs are kept across a restart; they do not hold it back.</p></section>\n"
    )
    other_rows = [
        [
            e(i.subsystem),
            e(i.kind),
            e(i.description),
            e(_human(i.started_at)),
            "yes" if i.blocks_restart else "no",
            f"<code>{e(i.id)}</code>" + ("" if i.cancellable else " (not cancellable)"),
        ]
        for i in sorted(rs.other, key=lambda i: (i.subsystem, i.started_at, i.id))
    ]
    externals = [s for s in status.subsystems if s.external]
    if externals or other_rows:
        parts.append(
            '<section id="external"><h2>External subsystems</h2>\n'
            + _table(
                ("Subsystem", "Kind", "Work", "Since", "Holds the restart", "Item"),
                other_rows,
                "No external work in flight.",
            )
            + "</section>\n"
        )
    if status.removed:
        removed_rows = [[e(r.name), e(_human(r.at)), e(r.reason), e(len(r.abandoned))] for r in status.removed[-10:]]
        parts.append(
            '<section id="removed"><h2>Subsystems that went away</h2>\n'
            + _table(("Subsystem", "At", "Why", "Items abandoned"), removed_rows, "")
            + "</section>\n"
        )
    return _layout("Server Maintenance Mode", "".join(parts), status, version, now)


def render_error_page(code: int, message: str, status: Status | None, *, version: str, now: float) -> str:
    body = f'<section id="error"><h2>{code}</h2><p>{e(message)}</p><p><a href="/">Back to the status page</a></p></section>\n'
    return _layout(f"{code} {message}", body, status, version, now)


# -- the ASGI app -----------------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class App:
    """A plain ASGI app over the hub's newest status and the metrics registry."""

    def __init__(self, hub: StatusSource, metrics: Metrics, *, check_host: bool = False, clock: Any = None) -> None:
        self.hub = hub
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
        if method not in ("GET", "HEAD"):
            extra = [(b"allow", b"GET, HEAD")]
            await self.respond(
                send, 405, self.error_html(405, "Method Not Allowed: this server is read-only"), [*HTML_HEADERS, *extra], head
            )
            return
        path = scope["path"]
        status = self.hub.status
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = await trio.to_thread.run_sync(encoder, self.metrics.registry, limiter=self.exposition_limiter)
            await self.respond(send, 200, body, [(b"content-type", content_type.encode())], head)
        elif path not in ("/", INFO_PATH):
            await self.respond(send, 404, self.error_html(404, "Not Found"), HTML_HEADERS, head)
        elif status is None:
            await self.respond(
                send, 503, self.error_html(503, "maintd is starting"), [*HTML_HEADERS, (b"retry-after", b"1")], head
            )
        elif path == "/":
            page = render_status_page(status, version=self.metrics.version, now=self.clock())
            await self.respond(send, 200, page.encode(), HTML_HEADERS, head)
        else:
            body = msgspec.json.encode(gocd_info(status))
            await self.respond(send, 200, body, [(b"content-type", b"application/json")], head)

    def error_html(self, code: int, message: str) -> bytes:
        return render_error_page(code, message, self.hub.status, version=self.metrics.version, now=self.clock()).encode()

    @staticmethod
    async def respond(send: Send, code: int, body: bytes, headers: list[tuple[bytes, bytes]], head: bool) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [*headers, *SECURITY_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
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
    app = wrap_app(App(hub, metrics, check_host=_is_loopback(host)), config.wsgi_max_body_size, "asgi")
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
