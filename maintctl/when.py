"""maintctl's durations and points in time: ``30m``, ``1h30m``, ``02:00``, ``2026-12-01T02:00Z``.

Every one becomes seconds from now, at most :data:`MAX_DURATION_DAYS` days: the daemon's
own bound on a drain deadline (daemon/protocol.py), and far below what a socket timeout
can hold. Standard library only, and loaded only by the commands that take one.
"""

from __future__ import annotations

import re
import time

#: The longest --deadline, --timeout or --until.
MAX_DURATION_DAYS = 366

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+|\d+(?:\.\d+)?")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")

HINT = "use a duration (30m, 1h30m), a time of day (02:00, the next one) or a date and time (2026-12-01T02:00Z)"


class BadTime(ValueError):
    """Not a duration nor a time, or out of bounds: the message says which, for people."""


def duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"1.5m"``, ``"1h30m"``, ``"250ms"`` -> seconds, at most the bound."""
    word = text.strip()
    if not _DURATION.fullmatch(word):
        raise BadTime(f"not a duration: {text!r} (use a number with ms, s, m, h or d, e.g. 30m or 1h30m)")
    parts = _PART.findall(word)
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts) if parts else float(word)
    return _bounded(seconds, word)


def _bounded(seconds: float, shown: str) -> float:
    if not 0 <= seconds <= MAX_DURATION_DAYS * 86400:  # also false for NaN and inf (400 digits)
        shown = shown if len(shown) <= 24 else shown[:20] + "..."
        raise BadTime(f"{shown!r} is too long: at most {MAX_DURATION_DAYS}d")
    return seconds


def seconds_to(text: str, now: float | None = None) -> float:
    """Seconds from ``now`` to ``text``: a duration, the next ``HH:MM[:SS]`` in the local time
    zone, or an ISO 8601 date and time (without a zone: local). A time already past is refused."""
    word = text.strip()
    now = time.time() if now is None else now
    if _DURATION.fullmatch(word):
        return duration(word)
    import datetime as dt

    clock = _CLOCK.fullmatch(word)
    if clock:
        today = dt.datetime.fromtimestamp(now).astimezone()
        hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
        at = today.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if at.timestamp() <= now:
            at = (today + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=second, microsecond=0)
        # across a change of the clocks, replace() may give a time an hour off: read it as local again
        at = at.replace(tzinfo=None).astimezone()
        return _bounded(at.timestamp() - now, word)
    if "T" in word or " " in word or re.fullmatch(r"\d{4}-\d{2}-\d{2}", word):
        try:
            at = dt.datetime.fromisoformat(word)
        except ValueError:
            raise BadTime(f"not a date and time: {text!r} ({HINT})") from None
        if at.tzinfo is None:
            at = at.astimezone()
        left = at.timestamp() - now
        if left <= 0:
            raise BadTime(f"{word} has already passed")
        return _bounded(left, word)
    raise BadTime(f"not a duration: {text!r} ({HINT})")
