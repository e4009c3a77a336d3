"""maintd's job task on a Celery worker: one job run as a local agent runs it (``maintd-agent``).

:func:`register` puts :data:`~remote.contract.TASK_NAME` on the worker's app. The task runs
in a prefork pool process, in that process's main thread, one job at a time, and is plain
synchronous code:

- the job: its argv (or ``/bin/sh -c shell``), ``PATH``/``HOME``/``LANG`` with the job's
  own environment (the GO_* variables) and the marker ``MAINTD_JOB=<task id>`` last, in the
  workspace ``<work dir>/workspaces/<pipeline>/<counter>/<stage>/<job>`` (made without
  following a symlink below the work dir, as :mod:`daemon.statedir` does), stdin
  ``/dev/null``, stdout and stderr into one pipe, in a session of its own;
- its output: read from the pipe as it comes, appended to ``<work dir>/logs/<task id>.log``
  and added to the Redis stream :func:`~remote.contract.log_stream` (``start`` first,
  ``data`` chunks, ``end`` last, then the stream expires after ``STREAM_TTL``). While
  Redis cannot be reached the entries wait in memory (at most ``PENDING_MAX`` bytes of
  output: beyond that the oldest go, and the stream says how much) and are sent when it
  answers again;
- its processes: the pool process is the child subreaper, so what the job leaves behind
  (a double fork, ``setsid ... &``) is re-parented to it and reaped here; the job's
  processes are those whose ``/proc/PID/environ`` has the marker (as
  :mod:`daemon.subreaper` finds them: a process that clears its environment escapes). The
  job ends only when none is left: after the main process exits, the rest are killed after
  ``grace`` (``leftovers = "kill"``, counted in the result) or waited for (``"wait"``);
- a timeout, or a revoke with ``terminate=True`` (SIGTERM to this pool process, caught here
  while the task runs): SIGTERM to every process of the job, SIGKILL after ``grace`` to
  those left, then the result (``timed_out`` or ``cancelled``).

The task returns a :class:`~remote.contract.RemoteResult` (as a JSON object) whatever the job
did; a job that cannot start has ``returncode`` None and ``error`` ``cannot start: ...``.
Nothing waits by spinning: the loop sleeps in ``poll`` on the pipe and a self-pipe written
on SIGCHLD and SIGTERM, with a timeout for the next deadline or the next look at ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

import msgspec

from actors.jobs import job_argv
from daemon import procfs
from daemon.jobtree import MARK
from daemon.statedir import make_dirs
from remote.contract import STREAM_MAXLEN, STREAM_TTL, TASK_NAME, JobStart, RemoteJob, RemoteResult, log_stream

__all__ = ["JobRun", "register"]

log = logging.getLogger("maintd.agent")

PR_SET_CHILD_SUBREAPER = 36
#: the wait between two looks at /proc for the job's processes starts here and doubles up to LAST_LOOK
FIRST_LOOK = 0.02
LAST_LOOK = 1.0
READ_SIZE = 65536
#: output kept in memory while Redis cannot be reached (bytes); beyond it the oldest is dropped
PENDING_MAX = 64 * 1024 * 1024
#: between two tries to reach Redis while the job runs
RETRY_EVERY = 1.0
#: how long the task keeps trying to send the stream's last entries once the job has ended
END_FLUSH_TIMEOUT = 300.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.:@+-]+")


# -- the job's processes in /proc (daemon.procfs: no trio there) -------------------------------


def set_subreaper() -> None:
    """Make this process the child subreaper: orphans of its jobs are re-parented to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot become the child subreaper: {os.strerror(code)}")


class Tree:
    """The job's processes: every descendant of this pool process (the child subreaper: an
    orphan of the job comes back to it, whatever it did to its session or its environment),
    and every process whose environment has ``MAINTD_JOB=<value>`` (of this user; all, as
    root). Zombies are not counted: the task reaps them."""

    def __init__(self, value: str) -> None:
        self.value = value.encode()
        self.me = os.getpid()
        self.uid = os.getuid()

    def scan(self) -> list[int]:
        parents: dict[int, int] = {}
        for pid in procfs.pids():
            if pid == self.me:
                continue
            stat = procfs.stat(pid)
            if stat is not None and stat[0] != "Z":
                parents[pid] = stat[1]
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        found: set[int] = set()
        below = [self.me]
        while below:
            for child in children.get(below.pop(), ()):
                if child not in found:
                    found.add(child)
                    below.append(child)
        for pid in parents:
            if pid in found:
                continue
            if self.uid != 0:
                try:
                    if os.stat(f"/proc/{pid}").st_uid != self.uid:
                        continue
                except OSError:
                    continue
            if procfs.marker_of(pid) == self.value:
                found.add(pid)
        return sorted(found)

    def ours(self, pid: int) -> bool:
        """``pid`` (pinned by a pidfd) is still the job's: marked, or below this process."""
        if procfs.marker_of(pid) == self.value:
            return True
        for _ in range(4096):  # up its parents to this process (or to init: not ours)
            stat = procfs.stat(pid)
            if stat is None or stat[1] <= 1:
                return False
            pid = stat[1]
            if pid == self.me:
                return True
        return False

    def live(self) -> list[int]:
        """:meth:`scan`, but an empty answer is one to trust: a double fork's grandchild born
        after ``/proc`` was listed, whose parent exited before its turn, is in the next
        listing; so an empty scan counts only if no pid was handed out meanwhile, or if the
        scan after it is empty too."""
        empty_before = False
        while True:
            before = procfs.last_pid()
            found = self.scan()
            if found:
                return found
            if empty_before or procfs.last_pid() == before:
                return []
            empty_before = True

    def send(self, pids: list[int], sig: int) -> None:
        """Signal each pid that is still the job's (:meth:`ours`): a pidfd pins it while we check."""
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if self.ours(pid):
                    signal.pidfd_send_signal(fd, sig)
            except OSError:
                pass
            finally:
                os.close(fd)


# -- the Redis stream -------------------------------------------------------------------------


class Stream:
    """The job's entries for its Redis stream, sent in order by a thread of their own (the job's
    loop never waits for Redis); kept while Redis cannot be reached, tried again every
    RETRY_EVERY seconds."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key
        self._cond = threading.Condition()
        self._pending: deque[dict[str, bytes]] = deque()
        self._pending_bytes = 0
        self._dropped = 0  # bytes of output dropped while Redis could not be reached
        self._closing = False
        self._given_up = False
        self._finished = False
        self._thread: threading.Thread | None = None

    def add(self, **fields: bytes) -> None:
        with self._cond:
            self._pending.append(fields)
            self._pending_bytes += len(fields.get("data", b""))
            self._cap()
            self._cond.notify()
            if self._thread is None and self.client is not None:
                self._thread = threading.Thread(target=self._send_all, name=f"stream {self.key}", daemon=True)
                self._thread.start()

    def _cap(self) -> None:
        while self._pending_bytes > PENDING_MAX and len(self._pending) > 1 and "data" in self._pending[0]:
            size = len(self._pending.popleft()["data"])
            self._pending_bytes -= size
            self._dropped += size

    def close(self, timeout: float) -> bool:
        """Send the rest and set the stream to expire, waiting at most ``timeout``; True if done."""
        if self.client is None:
            return True
        with self._cond:
            if self._thread is None:
                return True
            self._closing = True
            self._cond.notify()
            if not self._cond.wait_for(lambda: self._finished, timeout):
                self._given_up = True
                self._cond.notify()
                log.error("gave up on the stream %s: Redis did not answer for %gs", self.key, timeout)
                return False
        return True

    def _send_all(self) -> None:
        failing = False
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if self._given_up:
                    return
                batch = list(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                dropped, self._dropped = self._dropped, 0
                last = self._closing
            entries = batch
            if dropped:
                note = f"maintd: {dropped} bytes of output lost while Redis could not be reached; the agent's log has them\n"
                entries = [{"data": note.encode()}, *batch]
            try:
                pipe = self.client.pipeline(transaction=False)
                for fields in entries:
                    pipe.xadd(self.key, fields, maxlen=STREAM_MAXLEN, approximate=True)
                if last:
                    pipe.expire(self.key, STREAM_TTL)
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - any failure of Redis: keep the entries, try again
                if not failing:
                    log.warning("cannot write the stream %s (trying again every %gs): %s", self.key, RETRY_EVERY, exc)
                    failing = True
                with self._cond:
                    self._pending.extendleft(reversed(batch))
                    self._pending_bytes += sum(len(fields.get("data", b"")) for fields in batch)
                    self._dropped += dropped
                    self._cap()
                    retry_at = time.monotonic() + RETRY_EVERY
                    while not self._given_up and (left := retry_at - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            if failing:
                log.info("the stream %s is written again", self.key)
                failing = False
            if last:
                with self._cond:
                    if not self._pending:
                        self._finished = True
                        self._cond.notify_all()
                        return


# -- one job ----------------------------------------------------------------------------------


def _workspace_parts(job: RemoteJob) -> list[str]:
    parts = [job.pipeline, str(job.pipeline_counter), job.stage, job.job]
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"unsafe name for a folder: {part!r}")
    return parts


class JobRun:
    """One job, from its workspace to its result (:meth:`run`). Runs in the main thread: it
    installs handlers for SIGTERM (a cancel) and SIGCHLD for its duration."""

    def __init__(self, job: RemoteJob, *, work_dir: str, worker: str, client: Any) -> None:
        self.job = job
        self.work_dir = os.path.abspath(work_dir)
        self.worker = worker
        self.stream = Stream(client, log_stream(job.task_id))
        self.tree = Tree(job.task_id)
        self.log_fd: int | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.main_code: int | None = None
        self.started_at: float | None = None
        self.cancel_asked = False
        self.cancelled = False
        self.timed_out = False
        self.leftovers = 0
        self._wake_r = self._wake_w = -1
        self._changed = False  # a child exited since the last look

    # the parts

    def output(self, data: bytes) -> None:
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, data)
            except OSError as exc:
                log.warning("job %s: cannot write its log, no more of it goes there: %s", self.job.task_id, exc)
                os.close(self.log_fd)
                self.log_fd = None
        self.stream.add(data=data)

    def _open_log(self) -> None:
        if not _SAFE_NAME.fullmatch(self.job.task_id) or self.job.task_id.startswith("."):
            raise ValueError(f"unsafe task id for a file name: {self.job.task_id!r}")
        folder = make_dirs(self.work_dir, os.path.join(self.work_dir, "logs"))
        try:
            name = f"{self.job.task_id}.log"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder)  # an old log, a link or a FIFO: never written through
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
            self.log_fd = os.open(name, flags, 0o666, dir_fd=folder)
        finally:
            os.close(folder)

    def _workspace(self) -> str:
        path = os.path.join(self.work_dir, "workspaces", *_workspace_parts(self.job))
        os.close(make_dirs(self.work_dir, path))
        return path

    def _env(self, workspace: str) -> dict[str, str]:
        base = {
            "PATH": os.environ.get("PATH") or os.defpath,
            "HOME": workspace,
            "LANG": os.environ.get("LANG") or "C.UTF-8",
        }
        return {**base, **self.job.env, MARK: self.job.task_id}  # the marker last: the job's env cannot take it away

    def _result(self, error: str | None = None) -> RemoteResult:
        return RemoteResult(
            returncode=self.main_code,
            error=error,
            timed_out=self.timed_out,
            leftovers=self.leftovers,
            cancelled=self.cancelled,
            worker=self.worker,
            pid=self.popen.pid if self.popen is not None else None,
            started_at=self.started_at,
            finished_at=time.time(),
        )

    # signals: both only note it and wake the loop

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.cancel_asked = True
        self._wake()

    def _on_sigchld(self, signum: int, frame: Any) -> None:
        self._changed = True
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b".")

    # the run

    def run(self) -> RemoteResult:
        """Run the job to its end; never raises for what the job does.

        SIGTERM stays caught until the result is sent: a revoke that comes just after the
        job's end must not kill the pool process before its result is out."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        old_chld = signal.signal(signal.SIGCHLD, self._on_sigchld)
        try:
            try:
                result = self._run()
            except Exception as exc:
                log.exception("job %s: the agent failed", self.job.task_id)
                result = self._result(f"agent error: {exc}")
            finally:
                signal.signal(signal.SIGCHLD, old_chld)
                wake_r, wake_w = self._wake_r, self._wake_w
                self._wake_r = self._wake_w = -1  # a late signal must not write to a reused fd
                os.close(wake_r)
                os.close(wake_w)
                if self.log_fd is not None:
                    os.close(self.log_fd)
                    self.log_fd = None
            self.stream.add(end=msgspec.json.encode(result))
            self.stream.close(END_FLUSH_TIMEOUT)
            return result
        finally:
            signal.signal(signal.SIGTERM, old_term)

    def _cannot_start(self, error: str) -> RemoteResult:
        log.warning("job %s: %s", self.job.task_id, error)
        self.output(f"maintd: {error}\n".encode())
        return self._result(error)

    def _run(self) -> RemoteResult:
        try:
            argv = job_argv(self.job.argv, self.job.shell)
            self._open_log()
            workspace = self._workspace()
            set_subreaper()
        except (OSError, ValueError) as exc:
            return self._cannot_start(f"cannot start: {exc}")
        if self.cancel_asked:  # revoked before anything ran
            self.cancelled = True
            return self._result()
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self.popen = subprocess.Popen(
                    argv,
                    cwd=workspace,
                    env=self._env(workspace),
                    stdin=subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=write_fd,
                    start_new_session=True,
                )
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                return self._cannot_start(f"cannot start: {exc}")
            finally:
                os.close(write_fd)
            self.started_at = time.time()
            log.info("job %s: started, pid %d", self.job.task_id, self.popen.pid)
            self.stream.add(start=msgspec.json.encode(JobStart(worker=self.worker, pid=self.popen.pid, at=self.started_at)))
            try:
                self._watch(read_fd)
            except BaseException:
                self._kill_all()  # a failure of ours: nothing of the job may be left running unseen
                raise
        finally:
            os.close(read_fd)
        return self._result()

    def _reap(self) -> None:
        """Collect every exited child: the main process's status, and the orphans of the job."""
        assert self.popen is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.popen.pid:
                self.main_code = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.main_code  # subprocess must not wait for it again

    def _stop(self) -> float:
        """SIGTERM to the main process and every process of the job, once each; when to SIGKILL."""
        assert self.popen is not None
        if self.main_code is None:
            self.popen.send_signal(signal.SIGTERM)
        self.tree.send([pid for pid in self.tree.live() if pid != self.popen.pid], signal.SIGTERM)
        return time.monotonic() + max(0.0, self.job.grace)

    def _sigkill(self, pids: list[int]) -> None:
        assert self.popen is not None
        if self.main_code is None:
            with contextlib.suppress(OSError):
                self.popen.send_signal(signal.SIGKILL)
        self.tree.send(pids, signal.SIGKILL)

    def _kill_all(self) -> None:
        """SIGKILL everything of the job until none is left (for a failure of our own)."""
        if self.popen is None:
            return
        look = FIRST_LOOK
        while True:
            with contextlib.suppress(OSError):
                self._reap()
            pids = self.tree.live()
            if not pids and self.main_code is not None:
                return
            self._sigkill(pids)
            if select.select([self._wake_r], [], [], look)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            look = min(look * 2, LAST_LOOK)

    def _watch(self, read_fd: int) -> None:
        """Copy the output and follow the tree until the main process is reaped and none is left."""
        job = self.job
        os.set_blocking(read_fd, False)
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        reading = True
        deadline = math.inf if job.timeout is None else time.monotonic() + job.timeout
        kill_at = math.inf  # SIGKILL to what is left (a stop, or leftovers)
        killing = False
        leftover_phase = False
        look = FIRST_LOOK
        next_look = 0.0
        while True:
            self._reap()
            now = time.monotonic()
            if self.cancel_asked and not self.cancelled:
                self.cancelled = True
                log.info("job %s: cancelled, stopping it", job.task_id)
                if not killing:
                    kill_at = min(kill_at, self._stop())
            if now >= deadline and not self.timed_out and not self.cancelled:
                self.timed_out = True
                log.info("job %s: timed out after %gs, stopping it", job.task_id, job.timeout)
                if not killing:
                    kill_at = min(kill_at, self._stop())
            stopping = self.cancelled or self.timed_out
            if self.main_code is not None and not leftover_phase:
                leftover_phase = True
                next_look = 0.0
                if not stopping and job.leftovers != "wait":
                    kill_at = now + max(0.0, job.grace)
            if now >= kill_at and not killing:
                killing = True
                next_look = 0.0
            # the tree is looked at once the main process is gone or the kill has begun: on
            # a child's exit, and at growing intervals
            if (self.main_code is not None or killing) and (self._changed or now >= next_look):
                self._changed = False
                pids = self.tree.live()
                if not pids and self.main_code is not None:
                    break
                if killing:
                    if leftover_phase and not stopping and not self.leftovers and pids:
                        self.leftovers = len(pids)
                        note = f"killed {len(pids)} leftover process{'es' if len(pids) != 1 else ''}"
                        log.info("job %s: %s after its main process exited", job.task_id, note)
                    self._sigkill(pids)
                next_look = now + look
                look = min(look * 2, LAST_LOOK)
            wake = min(deadline if not stopping else math.inf, kill_at if not killing else math.inf)
            if self.main_code is not None or killing:
                wake = min(wake, next_look)
            timeout_ms = -1 if wake == math.inf else max(0, math.ceil((wake - time.monotonic()) * 1000))
            for fd, _event in poller.poll(timeout_ms):
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif reading and self._read(read_fd) is False:
                    reading = False
                    poller.unregister(read_fd)
        # none of the job is left: what they wrote is in the pipe (an escaped process may hold it open)
        while reading and self._read(read_fd):
            pass
        if self.leftovers:
            self.output(f"maintd: killed {self.leftovers} leftover process{'es' if self.leftovers != 1 else ''}\n".encode())

    def _read(self, fd: int) -> bool | None:
        """One read of the pipe: True if it gave output, None if it has nothing now, False at its end."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return None
        if not data:
            return False
        self.output(data)
        return True


# -- the task -----------------------------------------------------------------------------------

_clients: dict[tuple[int, str], Any] = {}


def redis_client(url: str) -> Any:
    """One Redis client per process and URL (a pool process makes its own after the fork)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        _clients[key] = client
    return client


def register(app: Any, work_dir: str) -> Any:
    """Put the job task on ``app``; jobs run under ``work_dir``."""

    @app.task(name=TASK_NAME, bind=True, typing=False)
    def run_job(self: Any, job: Any) -> dict[str, Any]:
        worker = self.request.hostname or ""
        client = redis_client(self.app.conf.broker_url)
        try:
            spec = msgspec.convert(job, RemoteJob)
        except msgspec.ValidationError as exc:
            error = f"cannot start: the job is not a RemoteJob: {exc}"
            stream = Stream(client, log_stream(self.request.id))
            stream.add(data=f"maintd: {error}\n".encode())
            result = RemoteResult(returncode=None, error=error, worker=worker, finished_at=time.time())
            stream.add(end=msgspec.json.encode(result))
            stream.close(END_FLUSH_TIMEOUT)
            return msgspec.to_builtins(result)
        try:
            result = JobRun(spec, work_dir=work_dir, worker=worker, client=client).run()
        except Exception as exc:
            log.exception("job %s: the agent failed", spec.task_id)
            result = RemoteResult(returncode=None, error=f"agent error: {exc}", worker=worker, finished_at=time.time())
        return msgspec.to_builtins(result)

    return run_job
