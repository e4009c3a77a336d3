"""Times as people and other programs read them: the one place a time becomes text.

The status, its events and items carry seconds since the epoch (floats); each edge formats
them here: the GoCD API and the control socket's history (:func:`iso`), the status page
(:func:`utc`), ``maintctl`` (:func:`human`, :func:`span`, :func:`seconds_until`: local time with
its zone, or UTC under ``--utc``). Nothing
parses a time back out of text. ``maintctl`` loads this module on its way to its first
byte: :mod:`datetime` is imported only when a time is formatted.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a few ms of maintctl's start-up
    import datetime


def _utc(ts: float) -> datetime.datetime | None:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def iso(ts: float | None, timespec: str = "milliseconds") -> str | None:
    """ISO 8601 in UTC with a ``Z`` (``2026-11-29T03:35:42.926Z``), or None for none.

    ``timespec="seconds"`` gives GoCD's own form (``2026-11-29T03:35:42Z``). A time out of
    range comes back as its number, never as an exception.
    """
    if ts is None:
        return None
    when = _utc(ts)
    if when is None:
        return str(ts)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def utc(ts: float | None) -> str:
    """``2026-11-29 03:35:42 UTC`` (the status page), ``-`` for none."""
    if ts is None:
        return "-"
    when = _utc(ts)
    return str(ts) if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _local(ts: float | None, form: str) -> str:
    """``ts`` in the local time zone as ``form``; ``-`` for none; a time out of range as its number."""
    if ts is None:
        return "-"
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ts).strftime(form)
    except (OverflowError, ValueError, OSError, TypeError):
        return str(ts)


def local(ts: float | None) -> str:
    """``2026-11-29 04:35:42`` in the local time zone (``maintctl``'s tables), ``-`` for none."""
    return _local(ts, "%Y-%m-%d %H:%M:%S")


def seconds_until(ts: float | None, now: float | None = None) -> float | None:
    """How long until ``ts`` (never below zero), or None for none."""
    if ts is None:
        return None
    try:
        return max(0.0, ts - (time.time() if now is None else now))
    except TypeError:  # not a number: nothing to count down to
        return None


def human(ts: float | None, in_utc: bool = False) -> str:
    """``2026-11-29 04:35:42 CET``: in the local time zone with its name, or ``2026-11-29
    03:35:42 UTC`` when ``in_utc``; ``-`` for none. A time out of range comes back as its number."""
    if ts is None:
        return "-"
    if in_utc:
        return utc(ts)
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, ValueError, OSError, TypeError):
        return str(ts)


def span(seconds: float | None) -> str:
    """A length of time as people say it: ``45s``, ``4m12s``, ``2h05m``, ``3d4h``; ``-`` for none."""
    if seconds is None:
        return "-"
    try:
        whole = max(0, int(seconds))
    except (OverflowError, ValueError, TypeError):
        return str(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def about(seconds: float) -> str:
    """A duration, rounded for people: ``40 s``, ``6 min``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{max(0, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def hhmm(ts: float | None) -> str:
    """``02:14`` in the local time zone (an ETA, "safe since"), ``-`` for none."""
    return _local(ts, "%H:%M")
