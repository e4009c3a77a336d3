"""sd_notify(3) without libsystemd: ``READY=1``, ``STATUS=``, ``WATCHDOG=1`` and friends.

:class:`Notifier` takes ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` from the environment once
and removes them (as ``sd_notify``'s ``unset_environment`` does), so the daemon's children
(git, jobs) neither see nor reuse them. Outside systemd every send is a no-op returning
False. A send never blocks the trio loop: the datagram socket is non-blocking, and a
datagram the service manager cannot take at once is dropped with a warning.

:func:`describe` turns a status snapshot into the one line ``systemctl status`` shows.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

import trio

from actors.eta import DrainEta
from actors.status import Status
from actors.types import BUILDING_JOB, MATERIAL_UPDATE, SCHEDULED_JOB

from .times import hhmm

log = logging.getLogger("maintd.notify")


class Notifier:
    """One service manager connection (or none). Safe to call from the trio thread only."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self._status: str | None = None
        self._sock: socket.socket | None = None
        self._failing = False  # warn once per run of failed sends, not on every ping

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and unset ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is on when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or this process's pid (sd_watchdog_enabled(3)).
        """
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if usec_text:
            try:
                usec = int(usec_text)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
            if usec is not None and usec <= 0:
                usec = None
            if usec is not None and pid_text and pid_text != str(os.getpid()):
                log.info("WATCHDOG_PID=%s is not this process (%d): no watchdog pings", pid_text, os.getpid())
                usec = None
        return cls(address, usec)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram; False when not under systemd or when it failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc.strerror or exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd at %s again", self.address.replace("\0", "@"))
            self._failing = False
        return True

    def status(self, text: str) -> None:
        """``STATUS=text``, only when it differs from the last one sent."""
        text = " ".join(text.split())  # one line: the protocol is newline-separated
        if text != self._status and self.send(f"STATUS={text}"):
            self._status = text

    def extend_timeout(self, seconds: float) -> None:
        """``EXTEND_TIMEOUT_USEC``: the next message comes within ``seconds``, or time out."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    async def watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` from the trio loop until cancelled; return at once if off.

        A loop that stops running (a blocking call, a deadlock) stops the pings, and
        systemd kills and restarts the service after ``WatchdogSec``.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        log.info("watchdog: pinging every %.3gs", interval)
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_NOUNS = {
    MATERIAL_UPDATE: ("material update", "material updates"),
    BUILDING_JOB: ("building job", "building jobs"),
    SCHEDULED_JOB: ("scheduled job", "scheduled jobs"),
}


def _count(n: int, kind: str) -> str:
    one, many = _NOUNS.get(kind, (f"{kind} item", f"{kind} items"))
    return f"{n} {one if n == 1 else many}"


#: How :func:`describe` counts the items of each group of a status.
_GROUP_WORDS = {
    "material_update_in_progress": "polling",
    "building_jobs": "building",
    "scheduled_jobs": "scheduled",
    "other": "other",
}


def describe(status: Status, eta: DrainEta | None = None) -> str:
    """The drain's progress in words, e.g. ``draining: waiting for agents (2 building jobs);
    materials, scheduler, config drained; expected drained by 02:14 (p90 02:19)``.

    The ETA is given as clock times, which stay true while nothing changes (systemd is
    told only on a change)."""
    m = status.maintenance
    rs = status.running_systems
    if not m.enabled:
        counts = [f"{len(items)} {_GROUP_WORDS[group]}" for group, items in rs.groups() if items]
        return "normal: maintenance off; " + (", ".join(counts) if counts else "idle")
    if m.safe_to_restart:
        return "drained: safe to restart"
    blocking: dict[str, dict[str, int]] = {}
    for item in rs.items():
        if item.blocks_restart:
            kinds = blocking.setdefault(item.subsystem, {})
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
    waiting, drained = [], []
    for sub in status.subsystems:
        if sub.state == "drained":
            drained.append(sub.name)
            continue
        what = [_count(n, kind) for kind, n in blocking.get(sub.name, {}).items()]
        if sub.state != "paused" or not what:
            what.insert(0, sub.state)
        waiting.append(f"{sub.name} ({', '.join(what)})")
    text = "draining: waiting for " + ", ".join(waiting) if waiting else "draining"
    if drained:
        text += "; " + ", ".join(drained) + " drained"
    if m.overdue:
        text += "; past the deadline"
    if eta is not None and eta.items:
        if eta.p50 is not None and eta.p90 is not None:
            text += f"; expected drained by {hhmm(eta.p50)} (p90 {hhmm(eta.p90)})"
        else:
            text += f"; no estimate ({len(eta.unknown)} item(s) without history)"
    return text
