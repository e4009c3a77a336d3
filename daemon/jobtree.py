"""A job is every process it starts: the interface, and which mechanism tracks it.

A job's processes are found whatever they do to their session or process group (``setsid``,
``setpgid``, a double fork, ``nohup``), by one of two mechanisms:

- ``cgroup`` (:mod:`daemon.cgroup`): each job runs in a cgroup v2 of its own, entered by the
  child before it runs anything; ``cgroup.events`` says when the last process left and
  ``cgroup.kill`` ends them all at once. Used where a writable cgroup2 hierarchy exists: a
  unit with ``Delegate=yes``, or root.
- ``subreaper`` (:mod:`daemon.subreaper`): the daemon is the child subreaper of everything
  it starts and every job carries an environment marker, found by scanning ``/proc`` (as
  Jenkins' ProcessTreeKiller does). A process that clears its environment escapes it.

Both set ``MAINTD_JOB=<instance>:<job_id>`` in every job's environment, where ``<instance>``
is :func:`instance_id` of the state directory: a restarted daemon on the same state
directory finds what the previous one left, and tells its own jobs' processes apart.
Job cgroups are ``<base>/job-<job_id>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Protocol

__all__ = ["MARK", "MODES", "JobTree", "Tracking", "TrackingError", "instance_id", "marker", "setup"]

log = logging.getLogger("maintd.jobtree")

#: The environment variable every job process carries
MARK = "MAINTD_JOB"
MODES = ("auto", "cgroup", "subreaper")
#: How long the start-up sweep of a dead daemon's leftovers may take
SWEEP_TIMEOUT = 10.0


class TrackingError(Exception):
    """The mechanism asked for cannot be used here; the message says why."""


def instance_id(state_dir: str | os.PathLike[str]) -> str:
    """12 hex digits that name one state directory (the same across restarts)."""
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]


def marker(instance: str, job_id: int) -> str:
    """The value of ``MAINTD_JOB`` for one job."""
    return f"{instance}:{job_id}"


class JobTree(Protocol):
    """The processes of one job. Made before the job's main process is spawned."""

    #: what the job's environment gets on top of its own
    env: dict[str, str]

    def command(self, argv: list[str]) -> list[str]:
        """The command to spawn for ``argv``: it joins the tree before it runs anything."""

    def spawned(self, pid: int) -> None:
        """The main process is there (its pid), or ``-1``: it could not be spawned."""

    def main_reaped(self) -> None:
        """The main process's exit status has been collected."""

    def count(self) -> int:
        """How many of the job's processes are alive now."""

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every process of the job; how many there were."""

    async def wait_empty(self) -> None:
        """Return once none of the job's processes is left."""

    async def kill_all(self) -> int:
        """SIGKILL every process of the job until none is left; how many the first round found."""

    def close(self) -> None:
        """Let go of what the tree holds (a cgroup, file descriptors). Not async; idempotent."""


class Tracking(Protocol):
    """One mechanism, for the daemon's life."""

    mechanism: str  # "cgroup" or "subreaper"
    where: str  # the cgroup folder, or what the marker is

    def job(self, job_id: int) -> JobTree:
        """Make a job's tree (file system calls: run it in a thread)."""

    async def sweep(self, timeout: float) -> int:
        """Kill what a dead daemon of this state directory left; how many processes it found."""

    async def run(self) -> None:
        """Background duty for the daemon's life (the subreaper reaps orphans); may return at once."""

    def describe(self) -> str:
        """One line for the log and ``maintctl status``."""

    def close(self) -> None:
        """At the daemon's end, once its jobs are gone: remove what it made, if it can."""


def setup(mode: str, state_dir: str | os.PathLike[str]) -> Tracking:
    """The mechanism for ``[agents] process_tracking`` (``auto``: cgroup if it can, else subreaper).

    Raises :class:`TrackingError` when ``cgroup`` is asked for and cannot be had.
    """
    from . import cgroup, subreaper  # one idea a file: each mechanism on its own

    instance = instance_id(state_dir)
    if mode not in MODES:
        raise TrackingError(f"unknown process_tracking {mode!r}: one of {', '.join(MODES)}")
    if mode in ("auto", "cgroup"):
        try:
            return cgroup.CgroupTracking.open(instance)
        except TrackingError as exc:
            if mode == "cgroup":
                raise
            log.info("no cgroup v2 for the jobs (%s); tracking them with the subreaper and the %s marker", exc, MARK)
    return subreaper.SubreaperTracking(instance)


async def start(mode: str, state_dir: str | os.PathLike[str], timeout: float = SWEEP_TIMEOUT) -> Tracking:
    """Set up the mechanism and kill what a dead daemon of this state directory left.

    For the daemon's start, before the store marks the jobs that were building ``interrupted``
    and before the control socket is served: nobody can be told "safe to restart" while a
    dead daemon's job still runs. Raises :class:`TrackingError` (it did not end in time, or
    ``cgroup`` was asked for and cannot be had).
    """
    tracking = setup(mode, state_dir)  # (the daemon says which, once it is ready)
    found = await tracking.sweep(timeout)
    if found:
        log.warning("killed %d process(es) left running by jobs of an earlier maintd", found)
    return tracking
