"""Fuzz the control socket of ONE real maintd with hypothesis.

Inputs: random bytes and JSON-ish token soup; truncated and split valid requests; lines
around and over a small ``max_line_bytes``; invalid UTF-8; deep nesting; huge numbers;
a wrong type, a value out of its constraints or a missing value for every field of every
request type (taken from the msgspec Structs of ``daemon/protocol.py``); unknown fields;
a ``register`` followed by nonsense; and abrupt disconnects mid-line.

After every input (``Fuzzer.run``):

- the daemon process is alive and has logged no traceback;
- a separate, long-lived control connection gets a correct status reply in time;
- the fuzzed connection got, line by line and in order, the reply that the protocol says
  (the daemon's own decoder is the oracle for which lines are malformed, and with which
  code): an error with a known code, or an ok reply, or nothing for a subsystem message
  without an id; it was closed only right after a ``too_large`` reply;
- the maintenance state changed only by an ``enable``/``disable`` that was answered ok,
  and the audit log gained an entry for each state-changing request answered ok and
  for nothing else;
- the daemon's VmRSS stays within ``RSS_GROWTH`` of its size at the start.

Every input tried and every failure are counted; the totals are printed when the module's
daemon stops (run with ``-s`` to see them).
"""

from __future__ import annotations

import collections
import contextlib
import re
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from daemon import protocol as p
from maintctl import render
from tests.conftest import Daemon, Line, wait_for

LIMIT = 16384  # the fuzzed daemon's max_line_bytes
DEADLINE = 5.0  # every reply, on the fuzzed and the control connection, comes within this
RSS_GROWTH = 50 << 20
BUILTINS = ("materials", "scheduler", "agents", "config")
KNOWN_CODES = {
    "bad_request", "unknown_type", "too_large", "forbidden", "not_found", "conflict",
    "not_cancellable", "maintenance_mode", "timeout", "subsystem_gone", "unavailable",
    "internal", "store_unavailable", "bad_config",
}  # fmt: skip
#: What a request that decodes may be refused with. Not here: internal (a bug), timeout and
#: unavailable (nothing here is slow or restarting), store_unavailable (the store is fine).
REFUSALS = {"bad_request", "forbidden", "not_found", "conflict", "not_cancellable", "maintenance_mode", "subsystem_gone"}
TOO_DEEP = "invalid JSON: nested too deeply"
PUSHED = {"event", "pause_intake", "resume_intake", "cancel"}
SUBSYSTEM_TAGS = {cls.__struct_config__.tag for cls in p.SUBSYSTEM_MESSAGES}
READ_ONLY = ("status", "inflight", "history", "ping", "pipelines", "agents", "runs", "logs")
#: The audit entries that a request answered ok leaves (and only such a request).
AUDITED = {
    "enable": "enable", "disable": "disable", "cancel": "cancel_requested", "trigger": "trigger",
    "cancel_run": "cancel_run", "pipeline_pause": "pipeline_pause", "pipeline_unpause": "pipeline_unpause",
    "reload": "config_reload", "register": "register", "window": "window", "forget": "forget",
    "agent_disable": "agent_disable", "agent_enable": "agent_enable",
}  # fmt: skip
#: Audit entries that a refused request leaves (an agent's enable in maintenance).
AUDITED_REFUSALS = {"agent_enable_refused"}

REQUESTS: dict[str, mi.StructType] = {cls.__struct_config__.tag: mi.type_info(cls) for cls in p.AnyRequest.__args__}  # type: ignore[attr-defined]

TOTALS: collections.Counter[str] = collections.Counter()
FAILURES: list[str] = []


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],  # (no explain: it replays hundreds of inputs)
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- values from the msgspec type information ------------------------------------------------

JSON_KINDS = ("null", "bool", "int", "float", "str", "array", "object")


def accepted_kinds(t: Any) -> set[str]:
    match t:
        case mi.NoneType():
            return {"null"}
        case mi.BoolType():
            return {"bool"}
        case mi.IntType():
            return {"int"}
        case mi.FloatType():
            return {"int", "float"}
        case mi.StrType() | mi.LiteralType():
            return {"str"}
        case mi.ListType():
            return {"array"}
        case mi.StructType():
            return {"object"}
        case mi.UnionType():
            return set().union(*(accepted_kinds(x) for x in t.types))
    raise AssertionError(f"no JSON kinds for {t}")


def value_of_kind(kind: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(),
        "bool": st.booleans(),
        "int": st.integers(-(2**70), 2**70),
        "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
        "str": st.text(max_size=12),
        "array": st.lists(st.integers() | st.text(max_size=4) | st.none(), max_size=3),
        "object": st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=4), max_size=3),
    }[kind]


def bounds(t: Any, low: Any, high: Any) -> tuple[Any, Any]:
    lo = t.ge if t.ge is not None else (t.gt if t.gt is not None else low)
    hi = t.le if t.le is not None else (t.lt if t.lt is not None else high)
    return lo, hi


def valid_value(t: Any) -> st.SearchStrategy[Any]:
    """A value that the type accepts (small, so that lines stay under the limit)."""
    match t:
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            lo, hi = bounds(t, -(2**63), 2**63 - 1)
            return st.integers(lo, hi)
        case mi.FloatType():
            lo, hi = bounds(t, None, None)
            ints = st.integers(int(lo) if lo is not None else -(2**53), int(hi) if hi is not None else 2**53)
            return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False) | ints
        case mi.StrType() if t.pattern is not None:
            return st.from_regex(t.pattern, fullmatch=True)
        case mi.StrType():
            lo, hi = t.min_length or 0, t.max_length
            small = st.text(min_size=lo, max_size=min(hi or 24, 24))
            return small | st.just("x" * hi) if hi is not None else small
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.UnionType():
            return st.one_of(*(valid_value(x) for x in t.types))
        case mi.ListType():
            return st.lists(valid_value(t.item_type), min_size=t.min_length or 0, max_size=3)
        case mi.StructType():
            return struct_value(t)
    raise AssertionError(f"no values for {t}")


def broken_value(t: Any) -> st.SearchStrategy[Any]:
    """A value of an accepted JSON kind that breaks the type's constraints (or nothing, if none)."""
    options: list[st.SearchStrategy[Any]] = []
    match t:
        case mi.IntType():
            lo, hi = bounds(t, None, None)
            if lo is not None:
                options.append(st.integers(lo - 2**70, lo - 1))
            if hi is not None:
                options.append(st.integers(hi + 1, hi + 2**70))
        case mi.FloatType():
            lo, hi = bounds(t, None, None)
            if lo is not None:
                options.append(st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False))
            if hi is not None:
                options.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False))
        case mi.StrType():
            if t.max_length is not None:
                options.append(st.integers(t.max_length + 1, t.max_length + 50).map(lambda n: "y" * n))
            if t.min_length:
                options.append(st.just(""))
            if t.pattern is not None:
                options.append(st.text(max_size=70).filter(lambda s: re.search(t.pattern, s) is None))
        case mi.LiteralType():
            options.append(st.text(max_size=10).filter(lambda s: s not in t.values))
        case mi.UnionType():
            # Broken for every member that accepts the same kind; ints below an int's bound
            # would fit nothing else in these unions.
            for member in t.types:
                kinds = accepted_kinds(member)
                if not any(kinds & accepted_kinds(other) for other in t.types if other is not member):
                    options.append(broken_value(member))
    options = [o for o in options if not o.is_empty]
    return st.one_of(*options) if options else st.nothing()


def struct_value(ti: mi.StructType) -> st.SearchStrategy[dict[str, Any]]:
    required = {f.encode_name: valid_value(f.type) for f in ti.fields if f.required}
    optional = {f.encode_name: valid_value(f.type) for f in ti.fields if not f.required}
    if ti.cls is p.InFlightMessage:
        (items,) = [f for f in ti.fields if f.name == "items"]
        required["items"] = st.lists(valid_value(items.type.item_type), min_size=1, max_size=3)
    values = st.fixed_dictionaries(required, optional=optional)
    if ti.tag_field is None:
        return values
    # The tag first or last: the decoder must find it either way.
    return st.tuples(values, st.booleans()).map(
        lambda vb: {ti.tag_field: ti.tag, **vb[0]} if vb[1] else {**vb[0], ti.tag_field: ti.tag}
    )


def any_request(tags: Any = None) -> st.SearchStrategy[dict[str, Any]]:
    tags = list(tags or REQUESTS)
    return st.sampled_from(tags).flatmap(lambda tag: struct_value(REQUESTS[tag]))


def encode(message: Any) -> bytes:
    return msgspec.json.encode(message)


#: Every (request type, field path, type) there is: the request fields, the fields of an
#: in_flight item, and the tag itself.
FIELD_CASES: list[tuple[str, tuple[Any, ...], Any]] = []
for _tag, _ti in REQUESTS.items():
    FIELD_CASES.append((_tag, ("type",), mi.StrType()))
    for _f in _ti.fields:
        FIELD_CASES.append((_tag, (_f.encode_name,), _f))
        if isinstance(_f.type, mi.ListType) and isinstance(_f.type.item_type, mi.StructType):
            FIELD_CASES += [(_tag, (_f.encode_name, 0, _g.encode_name), _g) for _g in _f.type.item_type.fields]


def json_path(path: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


# -- the harness -----------------------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def frame(data: bytes) -> list[bytes | None]:
    """The lines the daemon dispatches from ``data``, as ``ControlServer.read_lines`` frames
    them: blank lines skipped, ``None`` for a line over the limit."""
    lines: list[bytes | None] = []
    *complete, rest = data.split(b"\n")
    for line in complete:
        if len(line) > LIMIT:
            lines.append(None)
        elif line.strip():
            lines.append(line)
    if len(rest) > LIMIT:  # no newline yet, and already too long: the daemon closes
        lines.append(None)
    return lines


class Fuzzer:
    """One daemon, one long-lived control connection, and the checks after each input."""

    def __init__(self, d: Daemon) -> None:
        assert d.proc is not None
        self.d = d
        self.pid = d.proc.pid
        self.control = Line(d.socket, timeout=DEADLINE)
        wait_for(self._started, 15, "every built-in subsystem to run")
        self.http = d.http_url()
        self.rss_start = rss(self.pid)
        self.rss_peak = self.rss_start
        self.history = self.control.request("history")["result"]["entries"]
        self.log_offset = len(d.log.read_bytes())
        self.n = 0

    # the one entry point

    def run(
        self,
        kind: str,
        chunks: list[bytes],
        *,
        close: bool = False,
        register: bool = False,
        after: Callable[..., None] | None = None,
    ) -> None:
        """Send ``chunks`` on a fresh connection and check every invariant; count it."""
        self.n += 1
        TOTALS["inputs"] += 1
        TOTALS[f"inputs: {kind}"] += 1
        try:
            self._run(chunks, close=close, register=register, after=after)
        except Exception as exc:
            TOTALS["failures"] += 1
            TOTALS[f"failures: {kind}"] += 1
            FAILURES.append(f"{kind}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
            self.resync()
            raise

    def resync(self) -> None:
        """After a failed input: start the next one from what the daemon says now."""
        with contextlib.suppress(Exception):
            if self.status()["maintenance"]["enabled"]:
                self.control.request("disable", reason="fuzz reset")
            self.history = self.control.request("history")["result"]["entries"]
            self.log_offset = len(self.d.log.read_bytes())

    def _run(self, chunks: list[bytes], *, close: bool, register: bool, after: Callable[..., None] | None) -> None:
        before = self.status()["maintenance"]
        name = f"fuzz-{self.n}" if register else None
        self.reported: list[str] = []
        oks: list[str] = []
        with contextlib.ExitStack() as closing:
            sock = closing.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.settimeout(DEADLINE)
            sock.connect(str(self.d.socket))
            reader = sock.makefile("rb")
            closing.callback(reader.close)  # (the socket's fd stays open while its reader is)
            if name is not None:
                sock.sendall(encode({"id": "fuzz-register", "type": "register", "name": name}) + b"\n")
                reply = [m for m in self.read(reader, until="fuzz-register") if "ok" in m][-1]
                assert reply == {"id": "fuzz-register", "ok": True, "result": reply.get("result")}, reply
                oks.append("register")
            data = b"".join(chunks)
            sentinel: str | None = f"sentinel-{self.n}"
            tail = b"\n" + encode({"id": sentinel, "type": "ping"}) + b"\n"
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
                if not close:
                    sock.sendall(tail)
            except (BrokenPipeError, ConnectionResetError):
                sentinel, tail = None, b""  # the daemon closed it: the replies must say why
            if not close:  # (with close, the socket closes mid-line here)
                messages = list(self.read(reader, until=sentinel))
                oks += self.check_replies(frame(data + tail), messages, registered=name is not None, sentinel=sentinel)
                if after is not None and name is not None:
                    after(self, name)
        self.check_after(before, oks, name)

    def read(self, reader: Any, until: str | None) -> Iterator[dict[str, Any]]:
        """Lines from the daemon up to the reply with id ``until`` (with None: up to EOF)."""
        while True:
            try:
                line = reader.readline()
            except TimeoutError:
                raise AssertionError(f"no reply within {DEADLINE}s") from None
            except ConnectionResetError:
                return
            if not line:
                return
            message = msgspec.json.decode(line)
            assert isinstance(message, dict), message
            yield message
            if until is not None and "ok" in message and message.get("id") == until:
                return

    def check_replies(
        self, lines: list[bytes | None], messages: list[dict[str, Any]], *, registered: bool, sentinel: str | None
    ) -> list[str]:
        """Match the replies to the lines sent, in order; return the request types answered ok."""
        for m in messages:
            if "ok" not in m:
                assert m.get("type") in PUSHED, f"a line that is neither a reply nor a known push: {m}"
        replies = [m for m in messages if "ok" in m]
        closed = sentinel is None or not replies or replies[-1].get("id") != sentinel
        oks: list[str] = []
        i = 0
        for line in lines:
            if line is None:
                assert i < len(replies), "no reply to a line over the limit"
                error_of(replies[i], "too_large", str(LIMIT))
                i += 1
                if closed and i == len(replies):
                    return oks  # closed for that line: the only reason to close
                continue
            try:
                request = p.decode_request(line)
            except p.ProtocolError as exc:
                assert i < len(replies), f"no reply to the bad line {line[:80]!r}"
                reply = replies[i]
                i += 1
                message = error_of(reply, exc.code)
                if message != TOO_DEEP:  # (how deep is too deep depends on the decoding thread's stack)
                    assert (reply["id"], message) == (exc.request_id, exc.message), (line[:200], reply)
                continue
            tag = request.__struct_config__.tag
            duplicates = tag == "in_flight" and len({w.id for w in request.items}) != len(request.items)
            if tag == "in_flight" and registered and not duplicates:
                self.reported = sorted(w.id for w in request.items)  # what the status will show
            if tag in SUBSYSTEM_TAGS and registered and request.id is None and not duplicates:
                continue
            assert i < len(replies), f"no reply to {line[:200]!r}"
            reply = replies[i]
            i += 1
            assert reply["id"] == request.id, (line[:200], reply)
            if reply["ok"]:
                assert set(reply) == {"id", "ok", "result"}, reply
                oks.append(tag)
                registered = registered or tag == "register"
            else:
                code = reply["error"]["code"]
                assert code in REFUSALS, f"{tag} refused with {code}: {reply['error']['message']} ({line[:200]!r})"
                if tag in SUBSYSTEM_TAGS and not registered:
                    assert "register first" in error_of(reply, "bad_request")
        assert not closed, f"the connection was closed, not after a line over the limit; replies: {replies[-3:]}"
        assert i == len(replies), f"more replies than lines: {replies[i:]}"
        return oks

    def _started(self) -> bool:
        subsystems = self.control.request("status")["result"]["subsystems"]
        return {s["name"]: s["state"] for s in subsystems if s["name"] in BUILTINS} == dict.fromkeys(BUILTINS, "running")

    def status(self) -> dict[str, Any]:
        reply = self.control.request("status")
        assert reply["ok"] is True, reply
        result = reply["result"]
        assert result["maintenance"]["state"] in {"normal", "draining", "drained"}, result["maintenance"]
        states = {s["name"]: s["state"] for s in result["subsystems"]}
        for builtin in BUILTINS:
            assert states.get(builtin) not in (None, "failed"), f"{builtin} is {states.get(builtin)}: {result['subsystems']}"
        return result

    def check_after(self, before: dict[str, Any], oks: list[str], name: str | None) -> None:
        assert self.d.proc is not None and self.d.proc.poll() is None, f"maintd exited with {self.d.proc.returncode}"
        log = self.d.log.read_bytes()
        new_log, self.log_offset = log[self.log_offset :], len(log)
        errors = [line for line in new_log.splitlines() if line.startswith((b"ERROR", b"CRITICAL")) or b"Traceback" in line]
        assert not errors, b"\n".join(errors)[:3000].decode(errors="replace")
        status = self.status()
        maintenance = status["maintenance"]
        toggles = [t for t in oks if t in ("enable", "disable")]
        if toggles:
            assert maintenance["enabled"] is (toggles[-1] == "enable"), (oks, maintenance)
        else:  # nothing it was asked with an ok reply changed it
            keys = ("enabled", "updated_by", "updated_on", "reason", "deadline")
            assert {k: maintenance[k] for k in keys} == {k: before[k] for k in keys}, (before, maintenance)
        history = self.control.request("history")["result"]["entries"]
        new = new_entries(self.history, history)
        counted = collections.Counter(
            e["action"] for e in new if e["action"] != "subsystem_removed" and e["action"] not in AUDITED_REFUSALS
        )
        expected = collections.Counter(AUDITED[t] for t in oks if t in AUDITED)
        assert counted == expected, f"the audit log gained {dict(counted)}; requests answered ok: {oks}"
        if name is not None:
            wait_for(lambda: name not in {s["name"] for s in self.status()["subsystems"]}, DEADLINE, f"{name} to be removed")
            wait_for(lambda: not items_of(self.status(), name), DEADLINE, f"the items of {name} to go with it")
        if maintenance["enabled"]:  # back to normal for the next input
            assert self.control.request("disable", reason="fuzz reset")["ok"]
            history = self.control.request("history")["result"]["entries"]
        self.history = history
        size = rss(self.pid)
        self.rss_peak = max(self.rss_peak, size)
        assert size - self.rss_start < RSS_GROWTH, f"VmRSS grew by {(size - self.rss_start) >> 20} MiB"


def new_entries(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of ``new`` after the end of ``old`` (both are the newest N, oldest first)."""
    if not old:
        return new
    for end in range(len(new), 0, -1):
        overlap = min(end, len(old))
        if new[end - overlap : end] == old[-overlap:]:
            return new[end:]
    return new


def error_of(reply: dict[str, Any], code: str, text: str = "") -> str:
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["code"] in KNOWN_CODES
    assert text in reply["error"]["message"], reply
    return reply["error"]["message"]


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    # A disconnected subsystem's blocking work is removed after reconnect_grace: short here.
    config = f'[control]\nmax_line_bytes = {LIMIT}\nreconnect_grace = "100ms"\n'
    d = Daemon(tmp_path_factory.mktemp("fuzz"), config=config).start()
    try:
        f = Fuzzer(d)
        yield f
        print(
            f"\nfuzz totals: {TOTALS['inputs']} inputs tried, {TOTALS['failures']} failed; "
            f"VmRSS {f.rss_start >> 20} MiB at the start, peak {f.rss_peak >> 20} MiB"
        )
        for key in sorted(k for k in TOTALS if ": " in k):
            print(f"  {key}: {TOTALS[key]}")
        distinct = collections.Counter(re.sub(r"fuzz-\d+|-?\d[\d.e+]*", "N", failure)[:160] for failure in FAILURES)
        for failure, count in distinct.most_common():
            print(f"  {count} failed input(s): {failure}")
    finally:
        d.stop()


# -- the inputs ------------------------------------------------------------------------------

TOKENS = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b"\n", b" ", b"null", b"true", b"false", b"0", b"-1", b"1e999",
    b'"type"', b'"id"', b'"status"', b'"enable"', b'"register"', b'"in_flight"', b'"items"', b'"name"', b'"\\u0000"',
    b'"\\ud800"', b"\xff", b"\x00", b"\r",
]  # fmt: skip


@fuzz(300)
@given(data=st.binary(max_size=3000) | st.lists(st.sampled_from(TOKENS), max_size=200).map(b"".join))
def test_random_bytes(fuzzer: Fuzzer, data: bytes) -> None:
    fuzzer.run("random bytes", [data])


@fuzz(200)
@given(
    request=any_request(),
    cut=st.floats(0, 1, exclude_max=True),
    then=st.sampled_from(["newline", "merged", "split"]),
    more=any_request(READ_ONLY),
)
def test_truncated_and_split_requests(
    fuzzer: Fuzzer, request: dict[str, Any], cut: float, then: str, more: dict[str, Any]
) -> None:
    line = encode(request)
    head = line[: int(len(line) * cut)]
    if then == "newline":  # half a request, then the end of the line
        chunks = [head + b"\n"]
    elif then == "merged":  # half a request, then a whole one on the same line
        chunks = [head + encode(more) + b"\n"]
    else:  # a whole request in two writes
        chunks = [head, line[len(head) :] + b"\n"]
    fuzzer.run("truncated or split request", chunks)


@fuzz(120)
@given(
    complete=st.lists(any_request(READ_ONLY), max_size=3),
    request=any_request(),
    cut=st.floats(0, 1, exclude_max=True),
    big=st.booleans(),
)
def test_abrupt_disconnect_mid_line(
    fuzzer: Fuzzer, complete: list[dict[str, Any]], request: dict[str, Any], cut: float, big: bool
) -> None:
    line = encode(request)
    head = line[: int(len(line) * cut)] if not big else b'{"type": "enable", "reason": "' + b"z" * (2 * LIMIT)
    fuzzer.run("abrupt disconnect", [b"".join(encode(r) + b"\n" for r in complete) + head], close=True)


@fuzz(100)
@given(
    size=st.integers(LIMIT - 8, LIMIT + 8) | st.integers(LIMIT + 1, 4 * LIMIT) | st.integers(LIMIT // 2, LIMIT),
    tag=st.sampled_from(sorted(REQUESTS)),
    filler=st.sampled_from([b"x", b"\xc3\xa9", b"\\n", b" "]),
    then=st.sampled_from(["newline", "sentinel", "left open"]),
    raw=st.booleans(),
)
def test_lines_around_and_over_the_limit(fuzzer: Fuzzer, size: int, tag: str, filler: bytes, then: str, raw: bool) -> None:
    head = b"" if raw else b'{"type": "' + tag.encode() + b'", "reason": "'
    tail = b"" if raw else b'"}'
    body = (filler * size)[: max(0, size - len(head) - len(tail))]
    line = (head + body + tail)[:size]
    if then == "left open" and size > LIMIT:
        closed_for_too_large(fuzzer, line)  # no newline and nothing more: too_large, then closed
        return
    fuzzer.run("line around the limit", [line + b"\n"] if then == "newline" else [line])


def closed_for_too_large(fuzzer: Fuzzer, line: bytes) -> None:
    """A line over the limit with no newline: one too_large reply, then the daemon closes."""
    fuzzer.n += 1
    TOTALS["inputs"] += 1
    TOTALS["inputs: line over the limit, left open"] += 1
    try:
        before = fuzzer.status()["maintenance"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(DEADLINE)
            sock.connect(str(fuzzer.d.socket))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(line)
            messages = list(fuzzer.read(sock.makefile("rb"), until=None))
        assert len(messages) == 1, messages
        error_of(messages[0], "too_large", str(LIMIT))
        fuzzer.check_after(before, [], None)
    except Exception as exc:
        TOTALS["failures"] += 1
        TOTALS["failures: line over the limit, left open"] += 1
        FAILURES.append(f"line over the limit, left open: {exc}")
        raise


BAD_UTF8 = [
    b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
]  # fmt: skip


@fuzz(150)
@given(
    request=any_request(), bad=st.lists(st.sampled_from(BAD_UTF8), min_size=1, max_size=3).map(b"".join), where=st.floats(0, 1)
)
def test_invalid_utf8(fuzzer: Fuzzer, request: dict[str, Any], bad: bytes, where: float) -> None:
    line = encode(request)
    strings = [m.end() - 1 for m in re.finditer(rb'"[^"\\]*"', line)]
    inside = strings and where < 0.5  # inside a string, or anywhere
    at = strings[int(where * 2 * len(strings)) % len(strings)] if inside else int(len(line) * where)
    fuzzer.run("invalid UTF-8", [line[:at] + bad + line[at:] + b"\n"])


@fuzz(100)
@given(
    depth=st.integers(1, 64) | st.integers(64, LIMIT // 5),
    opener=st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"":[', b"]}")]),
    closed=st.booleans(),
    place=st.sampled_from(["line", "unknown field", "id", "reason", "items", "item field"]),
    tag=st.sampled_from(sorted(REQUESTS)),
)
def test_deep_nesting(fuzzer: Fuzzer, depth: int, opener: tuple[bytes, bytes], closed: bool, place: str, tag: str) -> None:
    nest = opener[0] * depth + (b"1" + opener[1] * depth if closed else b"")
    lines = {
        "line": nest,
        "unknown field": b'{"type": "' + tag.encode() + b'", "x": ' + nest + b"}",
        "id": b'{"type": "' + tag.encode() + b'", "id": ' + nest + b"}",
        "reason": b'{"type": "enable", "reason": ' + nest + b"}",
        "items": b'{"type": "in_flight", "items": ' + nest + b"}",
        "item field": b'{"type": "in_flight", "items": [{"id": "a", "kind": "k", "description": ' + nest + b"}]}",
    }
    fuzzer.run("deep nesting", [lines[place] + b"\n"])


EDGE_NUMBERS = [
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
    "18446744073709551615", "18446744073709551616", "4611686018427387904", "4611686018427387905",
    "16777216", "16777217", "31622400", "31622400.000001", "1.7976931348623157e308", "1.8e308",
    "5e-324", "2.5e-324", "-0", "-0.0", "0e0", "1E400", "01", "+1", ".5", "1.", "0x10", "1e", "NaN", "Infinity",
]  # fmt: skip
NUMBER_FIELDS = [(tag, path) for tag, path, _ in FIELD_CASES if path[-1] != "type"]
HUGE_NUMBERS = st.one_of(
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.integers(1, 5000).map(lambda n: "-" + "9" * n),
    st.integers(1, 4000).map(lambda n: f"1e{n}"),
    st.integers(1, 4000).map(lambda n: f"-1.5e-{n}"),
    st.integers(-(2**300), 2**300).map(str),
    st.floats().map(repr),  # nan and inf too: not JSON
    st.sampled_from(EDGE_NUMBERS),
)


@fuzz(200)
@given(case=st.sampled_from(NUMBER_FIELDS), number=HUGE_NUMBERS, data=st.data())
def test_huge_numbers(fuzzer: Fuzzer, case: tuple[str, tuple[Any, ...]], number: str, data: st.DataObject) -> None:
    tag, path = case
    marker = "@@NUMBER@@"
    message = data.draw(struct_value(REQUESTS[tag]))
    put(message, path, marker)
    line = encode(message).replace(encode(marker), number.encode())
    fuzzer.run("huge number", [line + b"\n"])


def put(message: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = message
    for part in path[:-1]:
        target = target[part]
    if value is MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


MISSING = object()


@pytest.mark.parametrize(("tag", "path", "field"), FIELD_CASES, ids=[f"{t}{json_path(p)[1:]}" for t, p, _ in FIELD_CASES])
@fuzz(12)
@given(data=st.data())
def test_wrong_type_or_value_of_every_field(
    fuzzer: Fuzzer, tag: str, path: tuple[Any, ...], field: Any, data: st.DataObject
) -> None:
    message = data.draw(struct_value(REQUESTS[tag]))
    t = field.type if isinstance(field, mi.Field) else field
    wrong = [k for k in JSON_KINDS if k not in accepted_kinds(t)]
    choices = [st.sampled_from(wrong).flatmap(value_of_kind)]
    if not (broken := broken_value(t)).is_empty:
        choices.append(broken)
    required = path == ("type",) or (isinstance(field, mi.Field) and field.required)
    if required:
        choices.append(st.just(MISSING))
    value = data.draw(st.one_of(*choices))
    put(message, path, value)
    line = encode(message)
    # The protocol's own decoder says this is a bad request, and where.
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_request(line)
    if path == ("type",):
        assert caught.value.code in ("bad_request", "unknown_type"), caught.value.message
    else:
        assert caught.value.code == "bad_request", caught.value.message
        if value is MISSING:
            assert f"missing required field `{path[-1]}`" in caught.value.message, caught.value.message
        else:
            assert json_path(path) in caught.value.message, caught.value.message
    fuzzer.run("wrong type or value", [line + b"\n"])


@fuzz(100)
@given(request=any_request(), key=st.text(max_size=12), value=st.sampled_from(JSON_KINDS).flatmap(value_of_kind))
def test_unknown_fields(fuzzer: Fuzzer, request: dict[str, Any], key: str, value: Any) -> None:
    ti = REQUESTS[request["type"]]
    if key in {f.encode_name for f in ti.fields} or key == "type":
        key = key + "_unknown"
    line = encode({**request, key: value})
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_request(line)
    assert caught.value.code == "bad_request" and "unknown field" in caught.value.message, caught.value.message
    fuzzer.run("unknown field", [line + b"\n"])


NONSENSE = st.one_of(
    any_request(sorted(SUBSYSTEM_TAGS)).map(encode),  # subsystem messages, valid or not for the state
    any_request(sorted(set(REQUESTS) - {"cancel"})).map(encode),  # (a cancel of its own item waits for its answer)
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
    st.sampled_from(FIELD_CASES).flatmap(lambda c: struct_value(REQUESTS[c[0]])).map(encode).map(lambda b: b[: len(b) // 2]),
)


def items_of(status: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [i for items in status["running_systems"].values() for i in items if i["subsystem"] == name]


def operator_views_work(fuzzer: Fuzzer, name: str) -> None:
    """What the subsystem reported shows for operators: `maintctl status`/`inflight` render
    it and the HTTP status page and GoCD's API answer 200."""
    # An in_flight message is taken in order but shown a moment later.
    expected = [f"{name}/{item}" for item in fuzzer.reported]

    def shown() -> dict[str, Any] | None:
        status = fuzzer.status()
        return status if sorted(i["id"] for i in items_of(status, name)) == sorted(expected) else None

    status = wait_for(shown, DEADLINE, f"the status to show {expected}")
    mine = {g: [i for i in items if i["subsystem"] == name] for g, items in status["running_systems"].items()}
    problems = []
    try:
        render.status({**status, "running_systems": mine, "removed": []})
        render.items_table([i for items in mine.values() for i in items])
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is the finding
        problems.append(f"maintctl status/inflight cannot show it ({type(exc).__name__}: {exc})")
    others = [i for items in status["running_systems"].values() for i in items if i["subsystem"] != name]
    if not others:  # (else the pages show more than this input's work)
        for path in ("/", "/api/maintenance_mode/info"):
            try:
                with urllib.request.urlopen(fuzzer.http + path, timeout=DEADLINE) as response:
                    assert response.status == 200
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is the finding
                problems.append(f"GET {path} fails ({exc})")
    assert not problems, "; ".join(problems) + f" -- after {name} reported {mine}"


@fuzz(200)
@given(lines=st.lists(NONSENSE, min_size=1, max_size=8))
def test_register_then_nonsense(fuzzer: Fuzzer, lines: list[bytes]) -> None:
    fuzzer.run("register then nonsense", [b"\n".join(lines) + b"\n"], register=True, after=operator_views_work)


def test_zz_the_daemon_stayed_up_and_bounded(fuzzer: Fuzzer) -> None:
    """After every input above (each checked on its own as it went): still serving, and its
    VmRSS never more than ``RSS_GROWTH`` over the start."""
    fuzzer.run("final check", [b'{"id": 1, "type": "status"}\n'])
    growth = fuzzer.rss_peak - fuzzer.rss_start
    assert growth < RSS_GROWTH, f"VmRSS grew by {growth >> 20} MiB"
