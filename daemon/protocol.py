"""The control socket protocol: newline-delimited JSON on a Unix stream socket.

One JSON object a line, each way. Requests carry an optional ``id`` that the reply
echoes: ``{"id": N, "ok": true, "result": {...}}`` or
``{"id": N, "ok": false, "error": {"code": "...", "message": "..."}}``. Events for
``watch`` subscribers are lines of their own with ``"type": "event"``.

Trust model: the socket's file mode decides who may connect; the peer's credentials
(SO_PEERCRED) decide who may change state. Nothing a client sends can crash the daemon:
every line is decoded by one msgspec decoder built once, and every failure becomes an
error reply with a stable code. This module imports only msgspec, so that maintctl
starts fast.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

MAX_LINE = 1 << 20

Id = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | Annotated[str, Meta(max_length=200)] | None
# \Z, not $: in Python's re (which msgspec uses) `$` also matches before a trailing newline.
Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")]
Kind = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,62}\Z")]
Text = Annotated[str, Meta(max_length=4096)]
#: Seconds since the epoch, within what a date can show (years 1970 to 9999).
Epoch = Annotated[float, Meta(ge=0, le=253402300799)]


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    id: Id = None


class StatusRequest(Request, tag="status"):
    pass


class InflightRequest(Request, tag="inflight"):
    pass


class HistoryRequest(Request, tag="history"):
    pass


class WatchRequest(Request, tag="watch"):
    pass


class PingRequest(Request, tag="ping"):
    pass


class EnableRequest(Request, tag="enable"):
    reason: Text | None = None
    deadline_seconds: Annotated[float, Meta(ge=0, le=366 * 86400)] | None = None
    on_deadline: Literal["wait", "cancel"] = "wait"
    ttl_seconds: Annotated[float, Meta(ge=0, le=366 * 86400)] | None = None  # 0: refused by the supervisor
    if_version: Annotated[int, Meta(ge=0, le=2**62)] | None = None


class PreviewRequest(Request, tag="preview"):
    """What a deadline would do to the work that blocks a restart now; changes nothing.
    Without ``deadline_seconds``: the running drain's deadline; without ``cancel_at_deadline``: its choice."""

    deadline_seconds: Annotated[float, Meta(ge=0, le=366 * 86400)] | None = None
    cancel_at_deadline: bool | None = None


class DisableRequest(Request, tag="disable"):
    reason: Text | None = None
    if_drain_id: Annotated[str, Meta(max_length=100)] | None = None


class CancelRequest(Request, tag="cancel"):
    item: Annotated[str, Meta(min_length=1, max_length=300)]
    reason: Text | None = None


class PipelinesRequest(Request, tag="pipelines"):
    pass


class AgentsRequest(Request, tag="agents"):
    pass


class RunsRequest(Request, tag="runs"):
    pipeline: Annotated[str, Meta(max_length=100)] | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 20


class LogsRequest(Request, tag="logs"):
    """Without ``offset``: the last ``max_bytes`` of the log. With it: at most ``max_bytes``
    from ``offset`` on (``maintctl logs --follow`` and ``--all`` page through it)."""

    job: Annotated[int, Meta(ge=1, le=2**62)]
    max_bytes: Annotated[int, Meta(ge=1, le=16 << 20)] = 65536
    offset: Annotated[int, Meta(ge=0, le=2**62)] | None = None


class TriggerRequest(Request, tag="trigger"):
    pipeline: Annotated[str, Meta(min_length=1, max_length=100)]


class PipelinePauseRequest(Request, tag="pipeline_pause"):
    pipeline: Annotated[str, Meta(min_length=1, max_length=100)]


class PipelineUnpauseRequest(Request, tag="pipeline_unpause"):
    pipeline: Annotated[str, Meta(min_length=1, max_length=100)]


class AgentDisableRequest(Request, tag="agent_disable"):
    """One agent's drain: agent ``name`` finishes its job and takes no more (allowed in maintenance)."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]


class AgentEnableRequest(Request, tag="agent_enable"):
    """Agent ``name`` takes work again (refused ``maintenance_mode`` in maintenance)."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]


class ReloadRequest(Request, tag="reload"):
    pass


class CancelRunRequest(Request, tag="cancel_run"):
    pipeline: Annotated[str, Meta(min_length=1, max_length=100)]
    counter: Annotated[int, Meta(ge=1, le=2**62)]
    stage: Annotated[str, Meta(max_length=100)] | None = None


class ForgetRequest(Request, tag="forget"):
    """Clear a removed subsystem (and the work it abandoned) from the status."""

    subsystem: Name


class WindowRequest(Request, tag="window"):
    """A step of ``maintctl window`` for the audit log: the command it runs in a drained
    window (``command_started``), and how that ended (``command_ended``, its exit code)."""

    step: Literal["command_started", "command_ended"]
    command: Text
    exit_code: Annotated[int, Meta(ge=-255, le=255)] | None = None
    drain_id: Annotated[str, Meta(max_length=100)] | None = None


class RegisterRequest(Request, tag="register"):
    name: Name


class WireItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: Kind
    description: Text = ""
    cancellable: bool = False
    blocks_restart: bool = True
    started_at: Epoch | None = None
    expected_end: Epoch | None = None


class InFlightMessage(Request, tag="in_flight"):
    items: Annotated[list[WireItem], Meta(max_length=100_000)]


class IntakePausedMessage(Request, tag="intake_paused"):
    drain_id: Annotated[str, Meta(max_length=100)]


class DrainedMessage(Request, tag="drained"):
    drain_id: Annotated[str, Meta(max_length=100)]


class CancelResultMessage(Request, tag="cancel_result"):
    item: Annotated[str, Meta(max_length=200)]
    ok: bool
    reason: Text | None = None


AnyRequest = Union[
    StatusRequest,
    InflightRequest,
    HistoryRequest,
    WatchRequest,
    PingRequest,
    EnableRequest,
    PreviewRequest,
    DisableRequest,
    CancelRequest,
    RegisterRequest,
    PipelinesRequest,
    AgentsRequest,
    RunsRequest,
    LogsRequest,
    TriggerRequest,
    PipelinePauseRequest,
    PipelineUnpauseRequest,
    AgentDisableRequest,
    AgentEnableRequest,
    ReloadRequest,
    CancelRunRequest,
    ForgetRequest,
    WindowRequest,
    InFlightMessage,
    IntakePausedMessage,
    DrainedMessage,
    CancelResultMessage,
]

#: Requests that only a registered subsystem may send.
SUBSYSTEM_MESSAGES = (InFlightMessage, IntakePausedMessage, DrainedMessage, CancelResultMessage)
KNOWN_TYPES = tuple(sorted(cls.__struct_config__.tag for cls in AnyRequest.__args__))  # type: ignore[attr-defined]

decoder = msgspec.json.Decoder(AnyRequest)
encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()


class ProtocolError(Exception):
    """A line that is not a valid request. ``code`` is ``bad_request`` or ``unknown_type``."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def decode_request(line: bytes) -> AnyRequest:
    """Decode one line, or raise :class:`ProtocolError` that says what is wrong with it."""
    try:
        return decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string.
        error: Exception = exc
    except RecursionError:
        raise ProtocolError("bad_request", "invalid JSON: nested too deeply") from None
    # Slow path, only for bad input: find the id to echo and tell an unknown type apart.
    try:
        raw = _any_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_request", f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_request", "invalid JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_request", "a request is a JSON object, one a line")
    request_id = raw.get("id")
    if not _echoable(request_id):
        request_id = None
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "a request needs a string field `type`", request_id)
    if kind not in KNOWN_TYPES:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise ProtocolError("unknown_type", f"unknown request type {shown!r}; known types: {', '.join(KNOWN_TYPES)}", request_id)
    raise ProtocolError("bad_request", str(error), request_id)


def _echoable(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return value is None or (isinstance(value, str) and len(value) <= 200)


def ok_reply(request_id: Any, result: Any) -> bytes:
    return encoder.encode({"id": request_id, "ok": True, "result": result}) + b"\n"


def ok_reply_raw(request_id: Any, result_json: bytes) -> tuple[bytes, bytes, bytes]:
    """An ok reply around a result that is already encoded (the cached status), in three parts.

    The middle part is ``result_json`` itself, not a copy: a multi-megabyte status sent to
    five hundred watchers is one object in memory, not five hundred.
    """
    return b'{"id":' + encoder.encode(request_id) + b',"ok":true,"result":', result_json, b"}\n"


def error_reply(request_id: Any, code: str, message: str) -> bytes:
    return encoder.encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}}) + b"\n"


def encode_line(message: Any) -> bytes:
    return encoder.encode(message) + b"\n"
