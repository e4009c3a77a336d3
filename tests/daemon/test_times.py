"""daemon/times.py formats every time the edges show; maintctl renders the status's epoch floats."""

from __future__ import annotations

import msgspec

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


def test_maintctl_shows_the_status_times_from_their_floats() -> None:
    reply = msgspec.to_builtins(draining_with_work())
    assert reply["maintenance"]["updated_on"] == T0 + 3.926  # a number on the wire
    text = render.status(reply)
    assert "turned on by root at 2026-11-29T03:35:42.926Z" in text
    assert "deadline: 2026-11-29T04:05:42.926Z" in text


def test_maintctl_counts_down_a_reconnect_from_its_float() -> None:
    disconnected = msgspec.structs.replace(sub("batch", "disconnected", blocking=1, external=True), reconnect_by=1e12)
    reply = msgspec.to_builtins(status(maintenance("draining"), (disconnected,), (external(),)))
    assert "(disconnected, waiting " in render.status(reply)
