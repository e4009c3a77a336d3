"""Hostile input, authorisation and socket handling, on a real maintd and its real socket.

Every test talks to a daemon subprocess over its Unix socket (or through the real
maintctl). Nothing sleeps to synchronise: waits are blocking reads under a socket
timeout, or :func:`wait_for` with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, USER, Daemon, Line, wait_for

SMALL_LIMIT = 4096
SMALL_LIMIT_CONFIG = f"[control]\nmax_line_bytes = {SMALL_LIMIT}\n"


# -- helpers ---------------------------------------------------------------------------------


def assert_serves(client: Line) -> dict[str, Any]:
    """A status round trip on ``client`` works; returns the status."""
    reply = client.request("status")
    assert reply["ok"] is True, reply
    assert reply["result"]["maintenance"]["state"], reply
    return reply["result"]


def error_of(reply: dict[str, Any], code: str) -> str:
    """Assert ``reply`` is an error with ``code``; return its message."""
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    return reply["error"]["message"]


def read_until_closed(client: Line) -> list[dict[str, Any]]:
    """Every line the daemon still sends before it closes the connection."""
    lines = []
    while True:
        try:
            lines.append(client.recv())
        except (EOFError, ConnectionResetError):
            return lines


def subsystem_names(status: dict[str, Any]) -> set[str]:
    return {s["name"] for s in status["subsystems"]}


def daemon_on(make_daemon: Any, path: Path, config: str | None = None) -> Daemon:
    """A daemon started with ``--socket path`` (the fixture's own path is overridden)."""
    d = make_daemon("--socket", str(path), config=config, start=False)
    d.socket = path
    return d.start()


# -- 1. bad input ---------------------------------------------------------------------------

BAD_LINES = [
    # (line, code, echoed id, substring of the message)
    pytest.param(b"{not json", "bad_request", None, "invalid JSON", id="invalid-json"),
    pytest.param(b"[1, 2]", "bad_request", None, "JSON object", id="json-array"),
    pytest.param(b'"status"', "bad_request", None, "JSON object", id="json-string"),
    pytest.param(b'{"id": 7, "type": "reboot"}', "unknown_type", 7, "reboot", id="unknown-type"),
    pytest.param(b'{"id": "abc", "type": "x" }', "unknown_type", "abc", "known types", id="unknown-type-str-id"),
    pytest.param(
        b'{"id": 8, "type": "enable", "deadline_seconds": "soon"}',
        "bad_request",
        8,
        "$.deadline_seconds",
        id="wrong-field-type",
    ),
    pytest.param(b'{"id": 9, "type": "status", "force": true}', "bad_request", 9, "force", id="unknown-field"),
    pytest.param(b'{"id": 10}', "bad_request", 10, "type", id="missing-type"),
    pytest.param(b'{"id": 11, "type": 5}', "bad_request", 11, "type", id="type-not-string"),
    pytest.param(b"\xff\xfe\xfd", "bad_request", None, "", id="invalid-utf8-bytes"),
    pytest.param(b'{"type": "cancel", "item": "\xff\xfe"}', "bad_request", None, "", id="invalid-utf8-in-string"),
    pytest.param(b"[" * 100_000, "bad_request", None, "", id="deep-nesting"),
    pytest.param(b'{"type": "status", "x": ' + b"[" * 100_000 + b"}", "bad_request", None, "", id="deep-nesting-in-field"),
    pytest.param(b'{"id": ' + str(2**64).encode() + b', "type": "status"}', "bad_request", None, "$.id", id="huge-int-id"),
    pytest.param(b'{"id": ' + b"9" * 5000 + b', "type": "status"}', "bad_request", None, "", id="5000-digit-id"),
    pytest.param(b'{"id": true, "type": "status"}', "bad_request", None, "$.id", id="bool-id"),
]


@pytest.mark.parametrize(("line", "code", "echoed", "text"), BAD_LINES)
def test_bad_line_gets_an_error_and_the_connection_goes_on(
    daemon: Daemon, line: bytes, code: str, echoed: Any, text: str
) -> None:
    client = daemon.client()
    client.send_raw(line + b"\n")
    reply = client.recv()
    assert reply["id"] == echoed, reply
    assert text in error_of(reply, code)
    assert_serves(client)
    assert_serves(daemon.client())
    assert f"connection of {USER} failed" not in daemon.log_text()


def test_empty_lines_are_ignored(daemon: Daemon) -> None:
    client = daemon.client()
    client.send_raw(b"\n\n   \n\t\r\n")
    reply = client.request("ping")
    assert reply == {"id": 1, "ok": True, "result": {"pong": True}}


# -- 2. line length limit -------------------------------------------------------------------


def test_line_over_1mib_without_newline_closes_the_connection(daemon: Daemon) -> None:
    client = daemon.client()
    client.send_raw(b"x" * ((1 << 20) + 1))
    lines = read_until_closed(client)
    assert len(lines) == 1, lines
    assert "1048576" in error_of(lines[0], "too_large")
    assert_serves(daemon.client())


def test_smaller_configured_limit_closes_the_connection(make_daemon: Any) -> None:
    d = make_daemon(config=SMALL_LIMIT_CONFIG)
    client = d.client()
    client.send_raw(b'{"type": "status", "reason": "' + b"x" * SMALL_LIMIT)
    lines = read_until_closed(client)
    assert len(lines) == 1, lines
    assert str(SMALL_LIMIT) in error_of(lines[0], "too_large")
    assert_serves(d.client())


def test_line_over_the_limit_with_newline_is_refused_and_the_connection_goes_on(make_daemon: Any) -> None:
    d = make_daemon(config=SMALL_LIMIT_CONFIG)
    client = d.client()
    client.send_raw(b'{"id": 1, "type": "disable", "reason": "' + b"x" * SMALL_LIMIT + b'"}\n')
    reply = client.recv()
    assert str(SMALL_LIMIT) in error_of(reply, "too_large")
    assert_serves(client)
    # A line just under the limit is decoded as usual.
    client.send_raw(b'{"id": 5, "type": "ping", "pad": "' + b"x" * (SMALL_LIMIT - 100) + b'"}\n')
    assert "pad" in error_of(client.recv(), "bad_request")


# -- 3. clients that go away ----------------------------------------------------------------


def test_abrupt_disconnects_do_not_disturb_the_daemon(daemon: Daemon) -> None:
    other = daemon.client()
    assert_serves(other)
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(daemon.socket))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(daemon.socket))
            s.sendall(b'{"id": 1, "type": "sta')
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(daemon.socket))
            s.sendall(b'{"id": 1, "type": "status"}\n{"id": 2, "type": "history"}\n{"id": 3')
    assert_serves(other)
    assert_serves(daemon.client())
    assert f"connection of {USER} failed" not in daemon.log_text()


# -- 4. a client that never reads -----------------------------------------------------------


def flood(path: Path, stop: threading.Event, outcome: list[BaseException]) -> None:
    """Send status requests and never read, until the daemon closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(30)
        s.connect(str(path))
        chunk = b'{"type": "status"}\n' * 1000
        try:
            for _ in range(2000):  # at most 2M requests, far more than any queue holds
                if stop.is_set():
                    return
                s.sendall(chunk)
        except OSError as exc:
            outcome.append(exc)


@pytest.mark.parametrize("config", ["[control]\nclient_queue = 8\n", None], ids=["queue-8", "default-queue"])
def test_a_client_that_never_reads_is_disconnected(make_daemon: Any, config: str | None) -> None:
    d = make_daemon(config=config)
    other = d.client()
    stop, outcome = threading.Event(), []
    thread = threading.Thread(target=flood, args=(d.socket, stop, outcome), daemon=True)
    thread.start()
    try:
        while True:  # round trips keep working while the flood runs
            assert_serves(other)
            thread.join(0.01)
            if not thread.is_alive():
                break
    finally:
        stop.set()
        thread.join(30)
    assert outcome and isinstance(outcome[0], (BrokenPipeError, ConnectionResetError)), outcome
    wait_for(lambda: "does not read its replies" in d.log_text(), 10, "the log to say the connection was closed")
    assert f"closing connection of {USER}" in d.log_text()
    assert_serves(other)
    assert_serves(d.client())


# -- 5./6. subsystems -----------------------------------------------------------------------

SUBSYSTEM_MESSAGES = [
    ("in_flight", {"items": []}),
    ("intake_paused", {"drain_id": "d1"}),
    ("drained", {"drain_id": "d1"}),
    ("cancel_result", {"item": "x", "ok": True}),
]


@pytest.mark.parametrize(("kind", "fields"), SUBSYSTEM_MESSAGES, ids=[m[0] for m in SUBSYSTEM_MESSAGES])
def test_subsystem_messages_need_register_first(daemon: Daemon, kind: str, fields: dict[str, Any]) -> None:
    client = daemon.client()
    assert "register first" in error_of(client.request(kind, **fields), "bad_request")
    assert_serves(client)


@pytest.mark.parametrize("name", ["Upper", "has space", "", "-dash", "x" * 64, "a/b"])
def test_register_refuses_bad_names(daemon: Daemon, name: str) -> None:
    client = daemon.client()
    error_of(client.request("register", name=name), "bad_request")
    assert name not in subsystem_names(assert_serves(client))


def test_register_conflicts_and_removal_on_close(daemon: Daemon) -> None:
    watcher = daemon.client()
    assert watcher.request("watch")["ok"]
    first, second = daemon.client(), daemon.client()
    assert first.request("register", name="ext-one")["ok"]
    assert "ext-one" in error_of(second.request("register", name="ext-one"), "conflict")
    assert "already registered" in error_of(first.request("register", name="ext-two"), "conflict")
    status = assert_serves(second)
    [view] = [s for s in status["subsystems"] if s["name"] == "ext-one"]
    assert view["external"] is True
    assert "ext-two" not in subsystem_names(status)
    assert first.request("in_flight", items=[])["ok"]  # registered: subsystem messages are taken

    first.close()
    event = watcher.next_event(lambda e: e.get("event") == "subsystem_removed")
    assert event["subsystem"] == "ext-one"
    status = assert_serves(second)
    assert "ext-one" not in subsystem_names(status)
    assert "ext-one" in {r["name"] for r in status["removed"]}
    # The name is free again.
    assert second.request("register", name="ext-one")["ok"]


# -- 6b. large replies, many watchers -------------------------------------------------------


def test_a_multi_megabyte_status_reaches_slow_readers_whole_and_alike(daemon: Daemon) -> None:
    """A reply bigger than the socket buffer is written in part at once and the rest by the
    connection's writer, from one buffer shared by every reader; each gets it whole."""

    def items_of(name: str, first: str = "") -> list[dict[str, Any]]:
        return [
            {"id": f"item-{i:03d}", "kind": "backup_run", "description": (first if i == 0 and first else f"{name} " + "d" * 1000)}
            for i in range(700)
        ]  # 0.7 MB a line: under the line limit; three of them make a 2 MB status

    subsystems = {}
    for name in ("big-a", "big-b", "big-c"):
        subsystems[name] = daemon.client()
        assert subsystems[name].request("register", name=name)["ok"]
        assert subsystems[name].request("in_flight", items=items_of(name))["ok"]
    reader = daemon.client()
    wait_for(lambda: len(assert_serves(reader)["running_systems"]["other"]) == 2100, what="the 2,100 items shown")
    expected = [(f"{name}/item-{i:03d}", item["description"]) for name in subsystems for i, item in enumerate(items_of(name))]

    watchers = []
    for _ in range(3):
        w = daemon.client()
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        w.send(id=1, type="watch")
        watchers.append(w)
    snapshots = [w.recv() for w in watchers]  # each read through a small receive buffer
    plain = reader.request("status")
    for snapshot in snapshots:
        assert snapshot["id"] == 1 and snapshot["ok"] is True
        other = snapshot["result"]["running_systems"]["other"]
        assert [(item["id"], item["description"]) for item in other] == expected
        assert snapshot["result"] == plain["result"]
    assert len(json.dumps(plain)) > 2_000_000

    # After the snapshot, each watcher gets the next change once, in order.
    assert subsystems["big-b"].request("in_flight", items=items_of("big-b", first="changed"))["ok"]
    seqs = []
    for w in watchers:
        event = w.next_event(lambda e: e.get("event") == "in_flight_changed")
        assert event["subsystem"] == "big-b" and event["items"][0]["description"] == "changed"
        seqs.append(event["seq"])
    assert len(set(seqs)) == 1, seqs
    assert_serves(daemon.client())


# -- 7. authorisation -----------------------------------------------------------------------


@pytest.fixture
def open_socket_dir() -> Iterator[Path]:
    """A folder that ``nobody`` may traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="maintd-auth-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def maintctl_as_nobody(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "maintctl"]
    env = {**os.environ, "MAINTD_SOCKET": str(d.socket), "HOME": "/nonexistent"}
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def maintenance(d: Daemon) -> dict[str, Any]:
    return assert_serves(d.client())["maintenance"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to run maintctl as nobody")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run maintctl as nobody")
def test_unprivileged_user_may_read_but_not_change_state(make_daemon: Any, open_socket_dir: Path) -> None:
    d = daemon_on(make_daemon, open_socket_dir / "control.sock", config='[control]\nmode = "0666"\n')
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o666

    status = maintctl_as_nobody(d, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["maintenance"]["state"] == "normal"

    def refused(*args: str) -> None:
        result = maintctl_as_nobody(d, *args)
        assert result.returncode == 1, (args, result.returncode, result.stdout, result.stderr)
        assert "forbidden" in result.stderr, result.stderr

    refused("enable", "--reason", "not mine to enable")
    assert maintenance(d)["enabled"] is False
    assert maintenance(d)["state"] == "normal"
    refused("cancel", "jobs:123")

    root = d.maintctl("enable", "--reason", "root may")
    assert root.returncode == 0, root.stderr
    after = maintenance(d)
    assert after["enabled"] is True and after["updated_by"] == "root"

    refused("disable", "--reason", "nobody may not")
    for args in (
        ("trigger", "build"),
        ("pipeline", "pause", "build"),
        ("reload",),
        ("cancel-run", "build/1"),
        ("agent", "enable", "agent-1"),
    ):
        refused(*args)
    assert maintenance(d)["enabled"] is True
    assert "refused enable from nobody" in d.log_text()
    assert "refused disable from nobody" in d.log_text()
    history = json.loads(d.maintctl("history", "--json").stdout)["entries"]
    refusals = [(e["item"], e["by"]) for e in history if e["action"] == "forbidden"]
    expected = ["enable", "cancel", "disable", "trigger", "pipeline_pause", "reload", "cancel_run", "agent_enable"]
    assert refusals == [(action, "nobody") for action in expected]


# -- 8./9. the socket file ------------------------------------------------------------------


def test_socket_file_mode_is_0660_by_default(daemon: Daemon) -> None:
    mode = daemon.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    assert not mode & stat.S_IWOTH


def test_stale_socket_is_replaced(make_daemon: Any) -> None:
    first = make_daemon()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(15)
    assert first.socket.is_socket(), "a killed daemon leaves its socket file behind"

    second = daemon_on(make_daemon, first.socket)
    assert_serves(second.client())
    assert "removing stale socket" in second.log_text()


def test_second_daemon_on_a_served_socket_exits(make_daemon: Any) -> None:
    live = make_daemon()
    rival = make_daemon("--socket", str(live.socket), start=False)
    result = subprocess.run(rival.cmd, cwd=ROOT, env=rival.env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"another maintd is serving {live.socket}" in result.stdout + result.stderr
    assert live.socket.is_socket()
    assert_serves(live.client())
