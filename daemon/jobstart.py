"""Starting a job's main process: its workspace, log and tree made and the process spawned,
all in one worker-thread call (:func:`start`), and the handle the runner waits on
(:class:`JobProcess`, through a pidfd).

trio's ``open_process`` would cross to a worker thread a second time for the spawn alone
(1,000 ``true`` jobs, old and new alternating, 14 rounds each at a load of about 5 on 2 CPUs:
median 2.80 s against 3.15 s, daemon CPU 2.04 s against 2.29 s; at a load of 8-10 the
difference was lost in the noise). The workspace and
log are made by :mod:`daemon.statedir` (no symlink below the state directory is followed),
the tree by the :class:`~daemon.jobtree.Tracking` in use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import IO

import trio

from actors import jobs
from actors.jobs import JobSpec
from daemon.jobtree import JobTree, Tracking
from daemon.statedir import append_to_log, open_job_log

__all__ = ["JobProcess", "job_argv", "job_env", "start"]


class JobProcess:
    """A job's main process, spawned in a worker thread (:func:`start`) and waited for in
    the loop through a pidfd: what the runner uses of :class:`trio.Process`. ``pidfd`` is
    opened right after the spawn, before anything can reap it."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = pidfd
        self._wait_lock = trio.Lock()  # one waiter on the pidfd at a time (the run and a stop both wait)

    @property
    def returncode(self) -> int | None:
        code = self._popen.poll()
        if code is not None:
            self._close_pidfd()
        return code

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait(self) -> int:
        async with self._wait_lock:
            if self.returncode is None:
                fd = self._pidfd
                assert fd is not None
                # closed meanwhile by a look at returncode that found it exited: that is the wait's end too
                with contextlib.suppress(trio.ClosedResourceError):
                    await trio.lowlevel.wait_readable(fd)
                self._popen.wait()  # it has exited: this reaps it (if no look did) without blocking
                self._close_pidfd()
        assert self._popen.returncode is not None
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)  # nothing once it is reaped: never a recycled pid


def job_argv(spec: JobSpec) -> list[str]:
    return jobs.job_argv(spec.argv, spec.shell)


def start(spec: JobSpec, root: str | None, tracking: Tracking | None) -> tuple[JobProcess | None, JobTree | None, str | None]:
    """Make the job's workspace, log and tree and spawn its main process (in a worker thread).

    ``(process, tree, None)``, or ``(None, None, error)`` when it could not be started: the
    reason is then at the end of its log, and nothing of it is left (no tree, no open file).
    """
    try:
        argv = job_argv(spec)
        log_file, tree = prepare(spec, root, tracking)
    except Exception as exc:  # noqa: BLE001 - becomes the reply's error
        error = f"cannot start: {exc}"
        append_to_log(spec.log, error, root)
        return None, None, error
    try:
        popen = subprocess.Popen(
            tree.command(argv) if tree is not None else argv,
            cwd=spec.workspace,
            env=job_env(spec, tree),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()  # it cannot be waited for: it must not run unseen
            popen.wait()
            raise
    except Exception as exc:  # noqa: BLE001 - becomes the reply's error
        error = f"cannot start: {exc}"
        with contextlib.suppress(OSError, ValueError):
            log_file.write(f"maintd: {error}\n".encode())
        if tree is not None:
            tree.close()
        return None, None, error
    finally:
        log_file.close()
    return JobProcess(popen, pidfd), tree, None


def prepare(spec: JobSpec, root: str | None, tracking: Tracking | None) -> tuple[IO[bytes], JobTree | None]:
    """The job's log and its tree (in a worker thread: file system calls)."""
    log_file = open_job_log(spec, root)
    if tracking is None:
        return log_file, None
    tree = None
    try:
        tree = tracking.job(spec.job_id)
        check_executable(job_argv(spec)[0], spec)  # the shim would only say it in the log
    except BaseException:
        log_file.close()
        if tree is not None:
            tree.close()
        raise
    return log_file, tree


def check_executable(program: str, spec: JobSpec) -> None:
    """FileNotFoundError, as subprocess would raise it, when ``program`` cannot be run."""
    if os.sep in program:
        found = os.path.join(spec.workspace, program)  # relative to the job's cwd
    else:
        found = shutil.which(program, path=job_env(spec).get("PATH")) or ""
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise FileNotFoundError(2, "No such file or directory", program)


def job_env(spec: JobSpec, tree: JobTree | None = None) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "HOME": spec.workspace,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    # The marker last: a job's env cannot take it away.
    return {**base, **spec.env, **(tree.env if tree is not None else {})}
