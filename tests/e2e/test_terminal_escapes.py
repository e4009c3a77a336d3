"""Text a client chose never reaches a terminal raw (issue 9, item 10).

An external subsystem reports an item whose id and description hold an OSC sequence that
retitles a terminal (ESC ] 0 ; pwned BEL), a carriage return and a right-to-left override;
an operator's reason holds the same. ``maintctl status``, ``inflight``, ``watch`` and
``history`` (human mode) and the daemon's log show them as visible escapes, never raw.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Daemon, wait_for
from tests.e2e.test_drain import register

EVIL = "\x1b]0;pwned\x07\r\u202e"
RAW = ("\x1b", "\x07", "\r", "\u202e")
SHOWN = "\\x1b]0;pwned\\x07\\x0d\\u202e"


def assert_clean(text: str, where: str) -> None:
    found = [repr(c) for c in RAW if c in text]
    assert not found, f"{where} holds raw {', '.join(found)}: {text!r}"


def maintctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    """maintctl's bytes as printed (``text=True`` would turn a raw ``\\r`` into a newline)."""
    env = {**os.environ, "MAINTD_SOCKET": str(daemon.socket)}
    return subprocess.run([sys.executable, "-m", "maintctl", *args], cwd=ROOT, env=env, capture_output=True, timeout=30)


def text_of(data: bytes) -> str:
    return data.decode("utf-8", errors="strict")


def test_maintctl_and_the_log_show_escapes_not_raw_control_characters(daemon: Daemon, tmp_path: Path) -> None:
    job = {"id": f"job{EVIL}1", "kind": "building_job", "description": f"build {EVIL} txt", "cancellable": True}
    sub = register(daemon, "evil", [job])
    wait_for(lambda: daemon.status()["running_systems"]["building_jobs"], 10, "the evil item")
    watched = tmp_path / "watch.out"
    with watched.open("wb") as sink:
        watch = subprocess.Popen(
            [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "watch"], cwd=ROOT, stdout=sink
        )
    try:
        wait_for(lambda: b"evil/job" in watched.read_bytes(), 15, "the watch snapshot")
        for command in ("status", "inflight"):
            result = maintctl(daemon, command)
            assert result.returncode == 0, result.stderr
            out = text_of(result.stdout)
            assert_clean(out, f"maintctl {command}")
            assert f"evil/job{SHOWN}1" in out and f"build {SHOWN} txt" in out

        assert maintctl(daemon, "enable", "--reason", f"upgrade {EVIL}").returncode == 0
        cancel = subprocess.Popen(
            [sys.executable, "-m", "maintctl", "--socket", str(daemon.socket), "cancel", f"evil/job{EVIL}1", "--reason", EVIL],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        asked = sub.next_event(lambda m: m.get("type") == "cancel")
        assert asked["item"] == f"job{EVIL}1"
        sub.send(type="cancel_result", item=asked["item"], ok=True)
        out, err = cancel.communicate(timeout=30)
        assert cancel.returncode == 0, err
        assert_clean(text_of(out + err), "maintctl cancel")
        # The events of the cancel name the item: wait for them in the watch's output.
        wait_for(lambda: b"cancelled by" in watched.read_bytes(), 15, "the cancelled event in watch")

        history = maintctl(daemon, "history")
        assert history.returncode == 0, history.stderr
        out = text_of(history.stdout)
        assert_clean(out, "maintctl history")
        assert f"upgrade {SHOWN}" in out and f"evil/job{SHOWN}1" in out
    finally:
        watch.terminate()
        watch.wait(30)
    assert_clean(text_of(watched.read_bytes()), "maintctl watch")
    assert f"evil/job{SHOWN}1" in text_of(watched.read_bytes())

    log = text_of(daemon.log.read_bytes())
    assert_clean(log, "the daemon's log")
    assert f"evil/job{SHOWN}1" in log and f"upgrade {SHOWN}" in log
