"""daemon/times.py formats every time the edges show; maintctl renders the status's epoch floats."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest

from daemon import times
from maintctl import render
from tests.synthetic import T0, draining_with_work, external, maintenance, status, sub


def test_the_formats() -> None:
    assert times.iso(T0 + 3.926) == "2026-11-29T03:35:42.926Z"
    assert times.iso(T0 + 3.926, timespec="seconds") == "2026-11-29T03:35:42Z"
    assert times.utc(T0) == "2026-11-29 03:35:39 UTC"
    assert times.iso(None) is None and times.utc(None) == "-" and times.local(None) == "-"
    assert times.iso(1e300) == "1e+300"  # out of range: the number, never a traceback
    assert times.seconds_until(T0 + 10, now=T0) == 10 and times.seconds_until(T0, now=T0 + 10) == 0
    assert times.seconds_until("soon") is None and times.local("x") == "x"


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local time zone is Paris's (CET, UTC+1 in November) for the test."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_maintctl_shows_the_status_times_in_local_time_with_the_zone(paris: None, monkeypatch: pytest.MonkeyPatch) -> None:
    reply = msgspec.to_builtins(draining_with_work())
    assert reply["maintenance"]["updated_on"] == T0 + 3.926  # a number on the wire
    text = render.status(reply)
    assert "turned on by root at 2026-11-29 04:35:42 CET" in text
    assert "deadline: 2026-11-29 05:05:42 CET" in text
    assert "since 2026-11-29 04:35:39 CET" in text  # an item's start: the same way
    monkeypatch.setattr(render, "UTC", True)  # maintctl --utc
    text = render.status(reply)
    assert "turned on by root at 2026-11-29 03:35:42 UTC" in text
    assert "deadline: 2026-11-29 04:05:42 UTC" in text
    assert "since 2026-11-29 03:35:39 UTC" in text
    assert "T03:35" not in text and "CET" not in text  # one way to show a time


def test_spans() -> None:
    assert [times.span(s) for s in (0, 45.9, 252, 7500, 3 * 86400 + 4 * 3600 + 5)] == ["0s", "45s", "4m12s", "2h05m", "3d4h"]
    assert times.span(None) == "-" and times.span(float("inf")) == "inf"


def test_maintctl_counts_down_a_reconnect_from_its_float() -> None:
    disconnected = msgspec.structs.replace(sub("batch", "disconnected", blocking=1, external=True), reconnect_by=1e12)
    reply = msgspec.to_builtins(status(maintenance("draining"), (disconnected,), (external(),)))
    assert "(disconnected, waiting " in render.status(reply)
