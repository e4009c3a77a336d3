"""The job runner: job processes (and, through :mod:`daemon.git`, git), run by trio.

Implements :class:`actors.ports.ProcessPort`. Every port method is called from an actor's
thread and does nothing there but :meth:`Bridge.call_soon`; the work is a trio task in the
runner's nursery, and the answer goes back with ``reply_to.tell(message)``. Polls and
config-repo reads are :class:`daemon.git.Git`'s; a job is started (its workspace and log
under the state directory, its tree, its spawn) in one worker-thread call by
:mod:`daemon.jobstart`.

Every child runs in a session (and so a process group) of its own. A job is more than its
group: it is every process it starts (:mod:`daemon.jobtree`), whatever they do to their
session, so a cancel, a timeout and the daemon's stop end all of them, and the job ends
(:class:`JobExited` is told) only when none is left. The main process's exit code is the
job's result; what it left running is killed after ``kill_grace`` (``leftover_processes =
"kill"``) or waited for (``"wait"``), and the job's log says so. No task lets an exception
out: a failure becomes the ``error`` of the reply, or a log line, and the nursery lives on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import trio

from actors.jobs import JobExited, JobSpec, JobStarted
from daemon.bridge import Bridge
from daemon.git import Git, killpg
from daemon.jobstart import JobProcess, start
from daemon.jobtree import JobTree, Tracking

__all__ = ["ProcessRunner"]

log = logging.getLogger("maintd.processes")

_REAP_TIMEOUT = 5.0  # after a SIGKILL, how long to wait for the kernel to let the process go
#: How many ended jobs' exits the runner keeps, to tell them again (report_jobs)
EXITS_KEPT = 10_000


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    process: JobProcess | None = None
    tree: JobTree | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    stop_grace: float | None = None  # a stop asked for before the process was there
    reported: bool = False


def spawn(nursery: trio.Nursery, fn: Any, *args: Any) -> None:
    """Start ``fn(*args)`` in ``nursery``. Runs through ``run_sync_soon``: must not raise."""
    try:
        nursery.start_soon(fn, *args)
    except Exception:
        log.exception("cannot start a task for %s", getattr(fn, "__name__", fn))


def tell(reply_to: Any, message: Any) -> None:
    """Tell an actor ``message``; one that has stopped meanwhile is a log line (nobody is left to tell)."""
    try:
        reply_to.tell(message)
    except Exception as exc:  # noqa: BLE001 - an actor that has stopped meanwhile: nobody left to tell
        log.warning("cannot deliver %s: %r", type(message).__name__, exc)


class ProcessRunner:
    """Runs git and job processes for the actors (:class:`actors.ports.ProcessPort`)."""

    def __init__(
        self,
        bridge: Bridge,
        nursery: trio.Nursery,
        *,
        git: str = "git",
        kill_grace: float = 10.0,
        root: str | os.PathLike[str] | None = None,
        tracking: Tracking | None = None,
        leftovers: str = "kill",
    ) -> None:
        self.bridge = bridge
        #: the state directory: jobs' workspaces and logs are made inside it without following
        #: a symlink below it (None: the paths are taken as they are)
        self.root = None if root is None else os.path.abspath(root)
        self.nursery = nursery
        self._git = Git(git)
        self.kill_grace = kill_grace  # between SIGTERM and SIGKILL when a job's timeout passes
        #: finds every process of a job (None: the job is its process group, as git is)
        self.tracking = tracking
        self.leftovers = leftovers  # "kill" (after kill_grace) or "wait"
        if tracking is not None:
            nursery.start_soon(tracking.run)
        self._jobs: dict[int, _Job] = {}
        #: the JobExited told for each job that ended, newest last (at most EXITS_KEPT)
        self._exits: collections.OrderedDict[int, JobExited] = collections.OrderedDict()
        self._closed = False

    # -- the port: called from actor threads, nothing but call_soon ----------------------

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        self.bridge.call_soon(self._spawn, self._poll, reply_to, key, url, branch, timeout)

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        self.bridge.call_soon(self._spawn, self._fetch, reply_to, key, url, revision, timeout)

    def start_job(self, reply_to: Any, spec: JobSpec) -> None:
        self.bridge.call_soon(self._start_job, reply_to, spec)

    def stop_job(self, job_id: int, grace: float) -> None:
        self.bridge.call_soon(self._stop_job, job_id, grace)

    def report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        # In order behind every start_job and stop_job asked before it.
        self.bridge.call_soon(self._report_jobs, reply_to, tuple(job_ids))

    # -- for the daemon (trio thread) ------------------------------------------------------

    def running(self) -> int:
        """How many jobs are live (started or being started, not yet exited)."""
        return len(self._jobs)

    async def aclose(self) -> None:
        """Shutdown: SIGKILL every process of every live job and wait (bounded) for them to go."""
        self._closed = True
        jobs = list(self._jobs.values())
        for job in jobs:
            job.stop_grace = 0.0
            if job.process is not None:
                self._spawn(self._terminate, job, 0.0)
        with trio.move_on_after(_REAP_TIMEOUT):
            for job in jobs:
                await job.exited.wait()

    # -- trio side -------------------------------------------------------------------------

    def _spawn(self, fn: Any, *args: Any) -> None:
        spawn(self.nursery, fn, *args)

    _tell = staticmethod(tell)

    # polls and config-repo files (daemon.git)

    async def _poll(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        self._tell(reply_to, await self._git.poll(key, url, branch, timeout))

    async def _fetch(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        self._tell(reply_to, await self._git.fetch(key, url, revision, timeout))

    # jobs

    def _start_job(self, reply_to: Any, spec: JobSpec) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        try:
            if self._closed:
                closed = JobExited(job_id=spec.job_id, returncode=None, error="cannot start: the runner is closed")
                self._exited(reply_to, None, closed)
                return
            if spec.job_id in self._jobs:
                log.warning("job %s is running already; a second start is ignored", spec.job_id)
                return
            job = _Job(spec)
            self._jobs[spec.job_id] = job  # at once, so that a stop_job right behind finds it
            self._exits.pop(spec.job_id, None)
            try:
                self.nursery.start_soon(self._run_job, reply_to, job)
            except Exception:
                del self._jobs[spec.job_id]
                raise
        except Exception as exc:
            log.exception("cannot start job %s", spec.job_id)
            self._exited(reply_to, None, JobExited(job_id=spec.job_id, returncode=None, error=f"cannot start: {exc}"))

    def _exited(self, reply_to: Any, job: _Job | None, message: JobExited) -> None:
        """Tell a job's exit (once), and keep it to tell again."""
        if job is not None:
            if job.reported:
                return
            job.reported = True
        self._exits[message.job_id] = message
        self._exits.move_to_end(message.job_id)
        while len(self._exits) > EXITS_KEPT:
            self._exits.popitem(last=False)
        self._tell(reply_to, message)

    def _report_jobs(self, reply_to: Any, job_ids: tuple[int, ...]) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        try:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if (exited := self._exits.get(job_id)) is not None:
                    self._tell(reply_to, exited)
                elif job is not None:
                    if job.process is not None:
                        self._tell(reply_to, JobStarted(job_id=job_id, pid=job.process.pid))
                    # else: still starting; its JobStarted (or JobExited) comes as usual
                else:
                    error = "lost: the process runner has no record of this job"
                    self._tell(reply_to, JobExited(job_id=job_id, returncode=None, error=error))
        except Exception:
            log.exception("cannot report jobs %s", job_ids)

    def _stop_job(self, job_id: int, grace: float) -> None:
        """Runs through ``run_sync_soon``: must not raise."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        grace = max(0.0, grace) if isinstance(grace, int | float) and not math.isnan(grace) else 0.0
        if job.process is None:
            job.stop_grace = grace if job.stop_grace is None else min(job.stop_grace, grace)
            return
        self._spawn(self._terminate, job, grace)

    async def _terminate(self, job: _Job, grace: float) -> None:
        """SIGTERM to every process of the job; SIGKILL to all that are left after ``grace``."""
        proc = job.process
        assert proc is not None
        try:
            if job.tree is None:
                if proc.returncode is None:
                    killpg(proc.pid, signal.SIGTERM)
                    with trio.move_on_after(grace):
                        await proc.wait()
                    if proc.returncode is None:
                        killpg(proc.pid, signal.SIGKILL)
                return
            job.tree.signal(signal.SIGTERM)  # the main process with the rest: once each
            with trio.move_on_after(grace):
                await proc.wait()
                await job.tree.wait_empty()
            if proc.returncode is None or job.tree.count():
                await job.tree.kill_all()
            if proc.returncode is None:  # a stop in the instant before the child joined its tree
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        except Exception:
            log.exception("cannot stop job %s", job.spec.job_id)

    async def _run_job(self, reply_to: Any, job: _Job) -> None:
        spec = job.spec
        try:
            await self._run_job_process(reply_to, job)
        except Exception as exc:
            log.exception("job %s: the runner failed", spec.job_id)
            code = job.process.returncode if job.process is not None else None
            self._exited(reply_to, job, JobExited(job_id=spec.job_id, returncode=code, error=f"runner error: {exc}"))
        finally:
            if self._jobs.get(spec.job_id) is job:
                del self._jobs[spec.job_id]
            job.exited.set()

    async def _run_job_process(self, reply_to: Any, job: _Job) -> None:
        spec = job.spec
        # The folders, the log, the tree and the spawn are file system calls (and a vfork):
        # not in the loop that serves the socket, and all in one worker-thread call (trio's
        # open_process would cross to a thread a second time for the spawn alone).
        proc, job.tree, error = await trio.to_thread.run_sync(start, spec, self.root, self.tracking)
        if proc is None:
            self._exited(reply_to, job, JobExited(job_id=spec.job_id, returncode=None, error=error))
            return
        if job.tree is not None:
            job.tree.spawned(proc.pid)

        job.process = proc
        timed_out = False
        leftovers = 0
        emptied = False
        try:
            self._tell(reply_to, JobStarted(job_id=spec.job_id, pid=proc.pid))
            if self._closed:
                self._spawn(self._terminate, job, 0.0)
            elif job.stop_grace is not None:
                self._spawn(self._terminate, job, job.stop_grace)
            with trio.move_on_at(self._deadline(spec)) as scope:
                await proc.wait()
                if job.tree is not None:
                    job.tree.main_reaped()
                    leftovers = await self._leftovers(job)
                    emptied = True  # nothing can join an empty tree: nothing to kill below
            if scope.cancelled_caught:
                timed_out = True
                log.info("job %s: timed out after %ss, stopping it", spec.job_id, spec.timeout)
                await self._terminate(job, self.kill_grace)
                await proc.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_REAP_TIMEOUT):
                if proc.returncode is None:  # cancelled (shutdown) or a failure above: leave nothing behind
                    killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
                # whatever the job left running goes with it
                if job.tree is None:
                    killpg(proc.pid, signal.SIGKILL)
                elif not emptied and (killed := await job.tree.kill_all()):
                    log.info("job %s: killed %d process(es) of it that were left", spec.job_id, killed)
            if job.tree is not None:
                job.tree.main_reaped()
                job.tree.close()
            self._exited(
                reply_to,
                job,
                JobExited(job_id=spec.job_id, returncode=proc.returncode, timed_out=timed_out, leftovers=leftovers),
            )

    def _deadline(self, spec: JobSpec) -> float:
        return math.inf if spec.timeout is None else trio.current_time() + spec.timeout

    async def _leftovers(self, job: _Job) -> int:
        """The main process has exited: wait for the rest of the tree, or kill it after the grace.

        How many were killed (0: none was left, or they ended by themselves)."""
        tree = job.tree
        assert tree is not None
        if self.leftovers == "wait":
            await tree.wait_empty()
            return 0
        with trio.move_on_after(self.kill_grace):
            await tree.wait_empty()
            return 0
        killed = await tree.kill_all()
        if killed:
            note = f"killed {killed} leftover process{'es' if killed != 1 else ''}"
            log.info("job %s: %s after its main process exited", job.spec.job_id, note)
            _note_in_log(job.spec.log, note)
        return killed


def _note_in_log(path: str, note: str) -> None:
    """Best effort: a line at the end of a job's log, never written through a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.write(fd, f"maintd: {note}\n".encode())
    os.close(fd)
