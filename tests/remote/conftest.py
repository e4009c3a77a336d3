"""Fixtures for remote agents: a real ``redis-server`` on a loopback port and real
``maintd-agent`` workers (``python -m remote.worker``), each in a session of its own.

- ``redis_server``: a :class:`RedisServer` (``.url``, ``.port``, ``.stop()``, ``.start()``)
  with an append-only file synced on every write, so a ``stop()`` then ``start()`` on the
  same port keeps every key (the broker-down tests). Without ``/usr/bin/redis-server`` the
  tests that use it skip, except under ``CI=true``, where they fail.
- ``start_worker(name, *, broker_url, slots=1, work_dir=None, queue="maintd", heartbeat=1.0)``:
  a :class:`Worker` once it answers a Celery ping (``.proc``, ``.name``, ``.node``,
  ``.work_dir``, ``.kill9()``, ``.stop()``); at teardown whatever is left of it goes, and
  so do the job processes it started (those whose ``MAINTD_JOB`` marker is set and whose
  ``HOME`` or working directory is below its work dir).

No sleeps as synchronisation: every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remote.contract import make_app, node_name
from remote.worker import short_host

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = "/usr/bin/redis-server"
MARK = b"MAINTD_JOB="


def need_redis_server() -> str:
    found = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so the remote agent tests must run")
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own: loopback, its own folder, data kept across a restart."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        #: more redis-server options (``--requirepass``); set before start()
        self.extra_args: tuple[str, ...] = ()

    def start(self, timeout: float = 15.0) -> None:
        """Start it (again: same port, same folder) and wait until it answers PING."""
        assert self.proc is None, "redis-server is running already"
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._pings():
            if self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                self.proc = None
                raise AssertionError(f"redis-server exited while starting:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(0.01)

    def _quick_client(self) -> Any:
        """A client that tries once (redis-py's default retries with backoff for seconds)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def _pings(self) -> bool:
        import redis

        client = self._quick_client()
        try:
            return bool(client.ping())
        except redis.AuthenticationError:  # (a ConnectionError) it answers: only not to us
            return True
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SHUTDOWN (the append-only file is synced) and wait for the process to end."""
        if self.proc is None:
            return
        import redis

        client = self._quick_client()
        with contextlib.suppress(redis.RedisError):
            client.shutdown()
        client.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(need_redis_server(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- workers --------------------------------------------------------------------------------


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def marked(value: str | None = None) -> list[int]:
    """Live processes whose MAINTD_JOB is ``value`` (any value: None)."""
    found = []
    for pid in _pids():
        for var in _environ(pid).split(b"\0"):
            if var.startswith(MARK) and (value is None or var[len(MARK) :] == value.encode()):
                found.append(pid)
                break
    return found


def job_processes(work_dir: Path) -> list[int]:
    """Processes of jobs run under ``work_dir``: marked, with their HOME or cwd below it."""
    root = str(work_dir.resolve())
    found = []
    for pid in marked():
        env = dict(var.partition(b"=")[::2] for var in _environ(pid).split(b"\0") if var)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        home = env.get(b"HOME", b"").decode(errors="replace")
        if any(path == root or path.startswith(root + os.sep) for path in (home, cwd)):
            found.append(pid)
    return found


def kill_until_gone(find: Callable[[], list[int]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pids := find():
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {pids} would not go")
        time.sleep(0.01)


def children(pid: int) -> list[int]:
    found = []
    for other in _pids():
        try:
            data = Path(f"/proc/{other}/stat").read_bytes()
        except OSError:
            continue
        if int(data[data.rfind(b")") + 2 :].split()[1]) == pid:
            found.append(other)
    return found


class Worker:
    """A running ``maintd-agent``: ``python -m remote.worker`` in a session of its own."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, node: str, work_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.name = name
        self.node = node
        self.work_dir = work_dir
        self.log_path = log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool(self) -> list[int]:
        """The pool processes (the worker's children)."""
        return children(self.proc.pid)

    def kill9(self) -> None:
        """SIGKILL to the worker and its pool processes (its whole session); the jobs it runs
        are in sessions of their own and live on, as on a host whose agent died."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Celery's warm shutdown: running jobs finish first); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        kill_until_gone(lambda: job_processes(self.work_dir))


def ping(app: Any, node: str) -> bool:
    try:
        return any(node in reply for reply in app.control.ping(destination=[node], timeout=0.5))
    except Exception:  # noqa: BLE001 - not up yet (the broker, or the worker)
        return False


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []
    apps: list[Any] = []

    def start(
        name: str,
        *,
        broker_url: str,
        slots: int = 1,
        work_dir: Path | str | None = None,
        queue: str = "maintd",
        heartbeat: float = 1.0,
        timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
        ping_url: str | None = None,
    ) -> Worker:
        """``extra_args`` go on the worker's command line; ``ping_url`` (default ``broker_url``)
        is the URL the readiness ping is sent through (one with the password, when the
        worker is given it in a file)."""
        folder = Path(work_dir) if work_dir is not None else tmp_path / f"agent-{name}"
        log_path = tmp_path / f"agent-{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        command = [
            sys.executable, "-m", "remote.worker",
            "--broker", broker_url,
            "--name", name,
            "--slots", str(slots),
            "--work-dir", str(folder),
            "--queue", queue,
            "--heartbeat", str(heartbeat),
            "--log-level", "info",
            *extra_args,
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=tmp_path, start_new_session=True
            )
        worker = Worker(proc, name, node_name(name, short_host()), folder, log_path)
        started.append(worker)
        app = make_app(ping_url or broker_url)
        apps.append(app)
        deadline = time.monotonic() + timeout
        while not ping(app, worker.node):
            if proc.poll() is not None:
                raise AssertionError(f"maintd-agent {name} exited with {proc.returncode}:\n{worker.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"maintd-agent {name} did not answer a ping within {timeout}s:\n{worker.log_text()[-3000:]}")
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.cleanup()
        for app in apps:
            with contextlib.suppress(Exception):
                app.close()  # type: ignore[attr-defined]
