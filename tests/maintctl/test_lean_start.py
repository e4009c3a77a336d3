"""maintctl's start-up: what ``maintctl status`` imports, and the argparse-free reading of its
command line.

A process start is most of what ``maintctl status`` costs (bench/control.py measures it
against ``python -c pass``), and what it imports before its first byte goes out is the
part maintd controls. These tests hold the status path to the standard library's lighter
modules and check that :func:`maintctl.cli.parse_plain` reads every command line it
accepts as argparse does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maintctl.arguments import PLAIN, build_parser, parse_plain
from tests.conftest import ROOT, Daemon

#: What the status path must not import: the daemon's machinery, the actors, and the
#: heavier libraries (msgspec alone is more than half a bare interpreter's start-up).
FORBIDDEN = ("trio", "pykka", "hypercorn", "msgspec", "jinja2", "prometheus_client", "croniter", "argparse", "typing")
#: The only modules of maintd's own packages that maintctl status may load.
ALLOWED_OWN = {
    "maintctl",
    "maintctl.cli",
    "maintctl.arguments",
    "maintctl.client",
    "maintctl.render",
    "daemon",
    "daemon.paths",
    "daemon.escape",
    "daemon.times",
    "maintctl.foresight",
}

SCRIPT = """
import contextlib, io, json, sys
before = set(sys.modules)
from maintctl.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "new": sorted(set(sys.modules) - before)}))
"""


def run_status(socket: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--socket", socket, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_imports_only_what_it_needs(daemon: Daemon) -> None:
    """Against a real daemon: the status is printed, and of all the modules loaded on the
    way (beyond what the interpreter had at start-up) none is a heavy library or a module of
    the daemon or the actors."""
    result = run_status(str(daemon.socket), "status")
    assert result["code"] == 0
    assert "Maintenance mode: off" in result["out"]
    new = result["new"]
    heavy = [m for m in new if m.split(".")[0] in FORBIDDEN]
    assert heavy == [], f"maintctl status imported {heavy}"
    own = [m for m in new if m.split(".")[0] in ("maintctl", "daemon", "actors") and m not in ALLOWED_OWN]
    assert own == [], f"maintctl status imported {own}"


def test_status_json_is_the_daemons_result(daemon: Daemon) -> None:
    """``--json`` (read by stdlib json, not msgspec) prints the daemon's status result as it
    is: the same object a line client gets."""
    result = run_status(str(daemon.socket), "--json", "status")
    assert result["code"] == 0
    printed = json.loads(result["out"])
    reply = daemon.client().request("status")["result"]
    assert printed["maintenance"] == reply["maintenance"]
    assert [s["name"] for s in printed["subsystems"]] == [s["name"] for s in reply["subsystems"]]
    assert "msgspec" not in result["new"]


def test_a_non_json_reply_is_a_one_line_error(tmp_path: Path) -> None:
    """A peer that answers with a line that is not JSON: exit 3 and one line, no traceback."""
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\xff not json\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "maintctl", "--socket", path, "status"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "MAINTD_SOCKET": path},
        )
    finally:
        thread.join(10)
        server.close()
    assert done.returncode == 3, done.stderr
    assert "not JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


WORDS = st.sampled_from(
    [
        *sorted(PLAIN),
        *("enable", "cancel", "--json", "--utc", "--socket", "--socket=", "--socket=/s", "/s", "-x", "--sock", "--", "-h"),
    ]
)


def argparse_reads(argv: list[str]) -> dict | None:
    try:
        return vars(build_parser().parse_args(argv))
    except SystemExit:
        return None


@given(st.lists(WORDS, max_size=6))
def test_parse_plain_reads_as_argparse_does(argv: list[str]) -> None:
    """Every command line :func:`parse_plain` accepts, argparse accepts with the same
    meaning; it leaves the rest to argparse."""
    plain = parse_plain(argv)
    if plain is not None:
        assert argparse_reads(argv) == vars(plain)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--json", "status"],
        ["status", "--socket", "/run/x.sock"],
        ["--socket=/run/x.sock", "inflight", "--json"],
        ["--socket", "status", "status"],
    ],
)
def test_parse_plain_reads_the_usual_lines(argv: list[str]) -> None:
    """The lines an admin types are read without argparse, as argparse reads them."""
    plain = parse_plain(argv)
    assert plain is not None
    assert vars(plain) == argparse_reads(argv)


@pytest.mark.parametrize(
    "argv",
    [[], ["status", "-h"], ["--sock", "/s", "status"], ["status", "status"], ["--socket", "-x", "status"], ["enable"]],
)
def test_parse_plain_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert parse_plain(argv) is None
