"""Job tracking without cgroups: the daemon is the child subreaper, jobs carry a marker.

Every job's environment has ``MAINTD_JOB=<instance>:<job_id>``; its processes are the
processes of the daemon's user whose ``/proc/<pid>/environ`` holds it (a process that
clears its environment escapes: the cgroup mechanism has no such hole). A scan races with
processes that appear and vanish: every read may fail and is then skipped, and a kill is
repeated until a scan finds nothing, since a fork can slip between a scan and its kill; and
an empty scan is trusted only if no pid was handed out during it, or the next scan is empty
too (a double fork's grandchild, born after ``/proc`` was listed, is in the next listing).
Signals go through a pidfd opened before the marker is checked again, so a recycled pid
is never signalled.

With ``PR_SET_CHILD_SUBREAPER`` an orphan of a job (a double fork, ``setsid ... &``) is
re-parented to the daemon, not to init: the daemon must reap it, without stealing the exit
status of a process trio waits for (a job's main process, git). A zombie child is reaped
here only if it is

- in a session that is neither its own nor the daemon's (every process the daemon spawns
  starts a session of its own, so this is a job's orphan), or
- a pid a scan saw carrying one of our markers, and not a job's main process, or
- still a zombie ``ZOMBIE_GRACE`` seconds after it was first seen (trio reaps its own at once).

Reaping runs on SIGCHLD (at most every ``REAP_EVERY`` seconds) and in every scan. SIGCHLD also wakes the jobs waiting for their
last process: the last one of a tree is always the daemon's child when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import time

import trio

from . import procfs
from .jobtree import MARK, TrackingError, marker

log = logging.getLogger("maintd.jobtree")

PR_SET_CHILD_SUBREAPER = 36
ZOMBIE_GRACE = 10.0
REAP_EVERY = 0.2
FIRST_LOOK = 0.02  # the wait between two scans starts here and doubles up to LAST_LOOK
LAST_LOOK = 1.0


def _set_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        raise TrackingError(f"cannot become the child subreaper: {exc}") from None


class SubreaperTracking:
    mechanism = "subreaper"

    def __init__(self, instance: str) -> None:
        _set_subreaper()
        self.instance = instance
        self.where = f"{MARK}={instance}:<job id>"
        self.me = os.getpid()
        self.uid = os.getuid()
        self.my_sid = os.getsid(0)
        self.mains: set[int] = set()  # jobs' main processes: trio reaps them
        self.marked: set[int] = set()  # pids seen carrying one of our markers
        self._zombies: dict[int, float] = {}  # unknown zombie child -> when first seen
        self.changed = trio.Event()  # set (and replaced) when a child exits

    def describe(self) -> str:
        return f"subreaper and environment marker ({self.where})"

    def job(self, job_id: int) -> MarkerTree:
        return MarkerTree(self, marker(self.instance, job_id))

    # -- scanning and reaping ------------------------------------------------------------

    def live(self, wanted: bytes, prefix: bool = False) -> list[int]:
        """:meth:`scan`, but an empty answer is one to trust.

        A scan is no snapshot: a process born after ``/proc`` was listed, whose parent then
        exited before its turn (a double fork), is missed. An empty scan counts only when no
        pid was handed out meanwhile, or when the scan right after it is empty too (the
        missed process is in that one's listing)."""
        empty_before = False
        while True:
            before = procfs.last_pid()
            found = self.scan(wanted, prefix)
            if found:
                return found
            if empty_before or procfs.last_pid() == before:
                return []
            empty_before = True

    def scan(self, wanted: bytes, prefix: bool = False) -> list[int]:
        """The live processes whose marker is ``wanted`` (or starts with it); reaps orphans."""
        found = []
        zombies: set[int] = set()
        ours = self.instance.encode()
        for pid in procfs.pids():
            if pid == self.me:
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid != self.uid:
                    continue
            except OSError:
                continue
            env = procfs.environ(pid)
            if env == b"":  # a zombie (or a kernel thread): ours to reap?
                self._reap_one(pid, zombies)
                continue
            value = procfs.marker_of(pid, env)
            if value is None or not value.startswith(ours):
                continue
            self.marked.add(pid)
            if value == wanted or (prefix and value.startswith(wanted)):
                found.append(pid)
        self._forget(zombies)
        return found

    def reap(self) -> None:
        """Reap the zombie children that are not trio's (see the module docstring)."""
        zombies: set[int] = set()
        for pid in procfs.pids():
            self._reap_one(pid, zombies)
        self._forget(zombies)

    def _reap_one(self, pid: int, zombies: set[int]) -> None:
        st = procfs.stat(pid)
        if st is None or st[1] != self.me or st[0] != "Z" or pid in self.mains:
            return
        zombies.add(pid)
        sid = st[2]
        first = self._zombies.setdefault(pid, time.monotonic())
        if (sid not in (pid, self.my_sid)) or pid in self.marked or time.monotonic() - first > ZOMBIE_GRACE:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            self._zombies.pop(pid, None)
            self.marked.discard(pid)

    def _forget(self, zombies: set[int]) -> None:
        for pid in list(self._zombies):
            if pid not in zombies:
                del self._zombies[pid]
        if len(self.marked) > 4096:  # forget the pids that are gone
            self.marked = {pid for pid in self.marked if os.path.exists(f"/proc/{pid}")}

    def close(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def kick(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def run(self) -> None:
        """Wake the jobs that wait for their last process on every SIGCHLD, and reap orphans
        (at most every ``REAP_EVERY`` seconds: a pass reads every process's stat)."""
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            incoming = signals.__aiter__()
            pending = False
            last = -math.inf
            while True:
                with trio.move_on_after(REAP_EVERY if pending else math.inf):
                    await incoming.__anext__()
                    self.kick()
                    pending = True
                if pending and trio.current_time() - last >= REAP_EVERY:
                    pending = False
                    last = trio.current_time()
                    try:
                        self.reap()
                    except Exception:
                        log.exception("cannot reap orphans")

    async def wait_change(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self.changed.wait()

    async def kill_marked(self, wanted: bytes, prefix: bool = False) -> int:
        """SIGKILL every process marked ``wanted`` until none is left; how many the first scan found."""
        first: int | None = None
        look = FIRST_LOOK
        while pids := self.live(wanted, prefix):
            if first is None:
                first = len(pids)
            for pid in pids:
                self.send(pid, signal.SIGKILL, wanted, prefix)
            await self.wait_change(look)
            look = min(look * 2, LAST_LOOK)
        return first or 0

    def send(self, pid: int, sig: int, wanted: bytes, prefix: bool = False) -> None:
        """Signal ``pid`` if it (still) carries the marker: a pidfd pins it while we check."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            value = procfs.marker_of(pid)
            if value is not None and (value == wanted or (prefix and value.startswith(wanted))):
                signal.pidfd_send_signal(fd, sig)
        except OSError:
            pass
        finally:
            os.close(fd)

    async def sweep(self, timeout: float) -> int:
        """Kill the marked processes a dead daemon of this state directory left."""
        wanted = f"{self.instance}:".encode()
        found = 0
        with trio.move_on_after(timeout):
            found = await self.kill_marked(wanted, prefix=True)
            return found
        left = self.live(wanted, prefix=True)
        raise TrackingError(f"processes left by an earlier maintd did not end within {timeout:g}s: pids {left}")


class MarkerTree:
    def __init__(self, tracking: SubreaperTracking, value: str) -> None:
        self.tracking = tracking
        self.value = value.encode()
        self.env = {MARK: value}
        self.main = -1

    def command(self, argv: list[str]) -> list[str]:
        return argv

    def spawned(self, pid: int) -> None:
        if pid > 0:
            self.main = pid
            self.tracking.mains.add(pid)

    def main_reaped(self) -> None:
        self.tracking.mains.discard(self.main)

    def pids(self) -> list[int]:
        return self.tracking.live(self.value)

    def count(self) -> int:
        return len(self.pids())

    def signal(self, sig: int) -> int:
        pids = self.pids()
        for pid in pids:
            self.tracking.send(pid, sig, self.value)
        return len(pids)

    async def wait_empty(self) -> None:
        look = FIRST_LOOK
        while self.pids():
            await self.tracking.wait_change(look)
            look = min(look * 2, LAST_LOOK)

    async def kill_all(self) -> int:
        return await self.tracking.kill_marked(self.value)

    def close(self) -> None:
        self.main_reaped()
