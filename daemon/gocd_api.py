"""GoCD's maintenance-mode API: ``GET /go/api/admin/maintenance_mode/info`` and, with
tokens, ``POST .../enable`` and ``.../disable``, answered as GoCD answers them.

:func:`gocd_info` builds the info JSON from a :class:`~actors.status.Status` (GoCD's
``MaintenanceModeInfoRepresenter``); :class:`GocdApi` answers the requests that
:mod:`daemon.http` routes to it. Without ``[http] tokens_file`` only the info is served, at
:data:`INFO_PATH` (the path maintd always had) and :data:`GOCD_INFO_PATH`, to anyone; with
it, both need a bearer token (``Authorization: Bearer NAME.SECRET``, :mod:`daemon.tokens`),
and enable/disable need one with the admin role. Enable and disable go through the control
server's own request handling (:meth:`daemon.server.ControlServer.on_behalf`): checked,
audited and refused exactly as the socket's, with the token's name as ``updated_by``.

GoCD's answers, from its source (api-server-maintenance-mode-v1 and the security filters):
204 on a change; 409 ``Failed to enable server maintenance mode. Server is already in
maintenance mode.`` (or ``...disable... Server is not in maintenance mode.``); 401 ``You
are not authenticated!`` with no token and ``Invalid Personal Access Token.`` with a wrong
one; 403 ``You are not authorized to perform this action.``; 400 when a POST has neither
a JSON body nor ``X-GoCD-Confirm: true``; every JSON error is ``{"message": ...}``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import msgspec
import trio

from actors.errors import MaintdError
from actors.safety import has_running_work
from actors.status import Status
from actors.types import InFlightItem

from . import protocol as p
from .times import iso
from .tokens import TokenPeer, Tokens

DOC_URL = "https://api.gocd.org/current/#maintenance-mode-info"
#: maintd's own path of the info, kept for what already reads it (and the status page's link)
INFO_PATH = "/api/maintenance_mode/info"
API_PREFIX = "/go/api/admin/maintenance_mode/"
GOCD_INFO_PATH = API_PREFIX + "info"
ENABLE_PATH = API_PREFIX + "enable"
DISABLE_PATH = API_PREFIX + "disable"
INFO_PATHS = (GOCD_INFO_PATH, INFO_PATH)
MEDIA_TYPE = b"application/vnd.go.cd.v1+json; charset=utf-8"
#: GoCD's ModeAwareFilter: a request that changes something while in maintenance.
IN_MAINTENANCE = "Server is in maintenance mode, please try later."
NOT_AUTHENTICATED = "You are not authenticated!"
INVALID_TOKEN = "Invalid Personal Access Token."
FORBIDDEN = "You are not authorized to perform this action."
ALREADY_ON = "Failed to enable server maintenance mode. Server is already in maintenance mode."
ALREADY_OFF = "Failed to disable server maintenance mode. Server is not in maintenance mode."
CONFIRM_MISSING = "Missing required header 'X-GoCD-Confirm' with value 'true'"
JSON_EXPECTED = "You must specify a 'Content-Type' of 'application/json'"
BEARER = re.compile(r"bearer (.*)", re.IGNORECASE | re.DOTALL)
HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?\Z")
#: What an error code of the control server is over HTTP (anything else: 500).
HTTP_CODE = {"forbidden": 403, "bad_request": 400, "timeout": 504, "unavailable": 503, "store_unavailable": 503}

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


def _iso(ts: float | None) -> str | None:
    """GoCD's time format: ISO 8601 UTC to the second."""
    return iso(ts, timespec="seconds")


def _material(item: InFlightItem) -> dict[str, Any]:
    """GoCD's git material representation plus ``mdu_start_time``. maintd polls with
    ``git ls-remote`` (no checkout): no destination, filter or submodule folder, no shallow
    clone, every material polled (``auto_update``); ``config_repo`` is maintd's own."""
    material = item.material
    if material is not None:
        attributes: dict[str, Any] = {
            "url": material.url,
            "destination": None,
            "filter": None,
            "invert_filter": False,
            "name": material.name,
            "auto_update": True,
            "branch": material.branch,
            "submodule_folder": None,
            "shallow_clone": False,
            "config_repo": material.config_repo,
        }
        kind = "git"
    else:  # an external subsystem's material update: only its description is known
        attributes = {"name": item.local_id, "url": None, "description": item.description, "auto_update": True}
        kind = "unknown"
    return {"type": kind, "attributes": attributes, "mdu_start_time": _iso(item.started_at)}


def _job(item: InFlightItem, state: str) -> dict[str, Any]:
    counter = item.counter
    return {
        "pipeline_name": item.pipeline,
        "pipeline_counter": counter,
        # maintd runs each stage once (no re-runs), so a known stage's counter is "1"; GoCD sends it as a string.
        "stage_counter": "1" if counter is not None else None,
        "stage_name": item.stage,
        "name": item.job or item.local_id,
        "state": state,
        # when the job was scheduled (GoCD's JobInstance.scheduledDate), not when it started
        "scheduled_date": _iso(item.scheduled_at if item.scheduled_at is not None else item.started_at),
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


#: How GoCD shows an item of each group of :meth:`actors.status.RunningSystems.groups`.
ENTRY = {
    "material_update_in_progress": _material,
    "building_jobs": lambda item: _job(item, "Building"),
    "scheduled_jobs": lambda item: _job(item, "Scheduled"),
    "other": _other,
}


def gocd_info(status: Status, self_url: str = INFO_PATH) -> dict[str, Any]:
    """GoCD's maintenance mode info; ``attributes`` only while maintenance mode is on.

    ``has_running_systems`` is "not safe to restart because of running work": any listed
    item that blocks the restart, whatever its group, from :func:`actors.safety.has_running_work`,
    the computation the supervisor's ``safe_to_restart`` uses. An item that says
    ``blocks_restart: false`` (a scheduled job, which survives a restart) is listed but
    does not count. ``self_url``: the absolute URL it was asked at (GoCD's ``_links.self``).
    """
    m = status.maintenance
    info: dict[str, Any] = {
        "_links": {"self": {"href": self_url}, "doc": {"href": DOC_URL}},
        "is_maintenance_mode": m.enabled,
        "metadata": {"updated_by": m.updated_by, "updated_on": _iso(m.updated_on)},
    }
    if m.enabled:
        rs = status.running_systems
        info["attributes"] = {
            "has_running_systems": has_running_work(rs),
            "running_systems": {group: [ENTRY[group](i) for i in items] for group, items in rs.groups()},
        }
    return info


# -- the requests ---------------------------------------------------------------------------------


class Control(Protocol):
    async def on_behalf(self, peer: Any, request: Any) -> Any: ...


class TokenSource(Protocol):
    tokens: Tokens | None


def _json(code: int, body: Any, *extra: tuple[bytes, bytes]) -> Answer:
    return code, msgspec.json.encode(body), [(b"content-type", MEDIA_TYPE), *extra]


def message(code: int, text: str, *extra: tuple[bytes, bytes]) -> Answer:
    """GoCD's error shape: ``{"message": TEXT}``."""
    return _json(code, {"message": text}, *extra)


def unauthenticated(text: str) -> Answer:
    return message(401, text, (b"www-authenticate", b'Bearer realm="maintd"'))


class GocdApi:
    """Answers GoCD's maintenance-mode requests; :mod:`daemon.http` sends what it returns."""

    def __init__(self, tokens: TokenSource, control: Control | None = None, public_url: str | None = None) -> None:
        self.keys = tokens
        self.control = control
        self.public_url = public_url.rstrip("/") if public_url else None
        # One scrypt at a time: a flood of wrong tokens takes one core, never the loop.
        self.limiter = trio.CapacityLimiter(1)

    def url(self, scope: dict[str, Any], headers: dict[str, str]) -> str:
        """The absolute URL asked for: ``[http] public_url`` or the Host header as its base."""
        if self.public_url:
            return self.public_url + scope["path"]
        host = headers.get("host", "")
        if not HOST.match(host):
            server_host, port = scope.get("server") or ("127.0.0.1", 0)
            host = f"[{server_host}]:{port}" if ":" in server_host else f"{server_host}:{port}"
        return f"{scope.get('scheme', 'http')}://{host}{scope['path']}"

    async def authenticate(self, tokens: Tokens, scope: dict[str, Any], headers: dict[str, str]) -> TokenPeer | Answer:
        found = BEARER.fullmatch(headers.get("authorization", "").strip())
        if not found or not found.group(1).strip():
            return unauthenticated(NOT_AUTHENTICATED)
        entry = await trio.to_thread.run_sync(tokens.check, found.group(1).strip(), limiter=self.limiter)
        if entry is None:
            return unauthenticated(INVALID_TOKEN)
        client = scope.get("client")
        address = f"{client[0]} port {client[1]}" if client else "?"
        return TokenPeer(entry, address)

    async def info(self, scope: dict[str, Any], headers: dict[str, str], status: Status) -> Answer:
        tokens = self.keys.tokens
        if tokens is not None:
            peer = await self.authenticate(tokens, scope, headers)
            if not isinstance(peer, TokenPeer):
                return peer
        code, body, extra = _json(200, gocd_info(status, self.url(scope, headers)))
        if scope["path"] == INFO_PATH:  # maintd's own path keeps the media type it always had
            extra = [(b"content-type", b"application/json")]
        return code, body, extra

    async def change(self, scope: dict[str, Any], headers: dict[str, str]) -> Answer:
        """POST enable or disable: 204, or GoCD's error."""
        tokens = self.keys.tokens
        if tokens is None or self.control is None:
            return message(404, "maintd's HTTP API changes nothing without tokens: set [http] tokens_file (see the README)")
        peer = await self.authenticate(tokens, scope, headers)
        if not isinstance(peer, TokenPeer):
            return peer
        if problem := _body_problem(headers):
            return message(400, problem)
        enable = scope["path"] == ENABLE_PATH
        request = p.EnableRequest() if enable else p.DisableRequest()
        try:
            await self.control.on_behalf(peer, request)
        except MaintdError as exc:
            if exc.code == "conflict":
                return message(409, ALREADY_ON if enable else ALREADY_OFF)
            if exc.code == "forbidden":
                return message(403, FORBIDDEN)
            return message(HTTP_CODE.get(exc.code, 500), exc.message)
        except trio.TooSlowError:
            return message(504, "no answer in time; the request may still take effect")
        return 204, b"", [(b"content-type", MEDIA_TYPE)]


def _body_problem(headers: dict[str, str]) -> str | None:
    """GoCD's check of a POST: a body must be JSON; without one, ``X-GoCD-Confirm`` must be there."""
    has_body = (
        headers.get("content-length", "0").strip() not in ("", "0") or "chunked" in headers.get("transfer-encoding", "").lower()
    )
    if has_body:
        mime = headers.get("content-type", "").split(";")[0].strip().lower()
        return None if mime == "application/json" else JSON_EXPECTED
    return None if "x-gocd-confirm" in headers else CONFIRM_MISSING
