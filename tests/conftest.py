"""Shared fixtures: a real maintd process on a real Unix socket, and a line client.

No sleeps as synchronisation: every wait polls with a deadline or waits on a line.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Who the daemon sees on the other end of a test's maintctl: the tests need not run as root.
#: (From the uid, as the daemon does: getpass.getuser() reads $USER, which su may leave behind.)
USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition", every: float = 0.005) -> Any:
    """Poll ``predicate`` (every ``every`` seconds) until it returns a truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] != b"Z"


class Line:
    """A blocking newline-JSON client on the control socket, for tests."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, **message: Any) -> None:
        self.sock.sendall(msgspec.json.encode(message) + b"\n")

    def recv(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise EOFError("daemon closed the connection")
        return msgspec.json.decode(line)

    def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id; return its reply, keeping events seen meanwhile."""
        self.next_id += 1
        self.send(id=self.next_id, type=type_, **fields)
        while True:
            message = self.recv()
            if message.get("type") == "event":
                self.events.append(message)
            elif message.get("id") == self.next_id:
                return message
            else:
                self.events.append(message)

    def next_event(self, predicate: Any = lambda e: True) -> dict[str, Any]:
        """The next pushed line (event or subsystem message) that satisfies ``predicate``."""
        while True:
            message = self.events.pop(0) if self.events else self.recv()
            if predicate(message):
                return message

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Daemon:
    """A real ``maintd`` process for one test."""

    def __init__(self, tmp: Path, *args: str, config: str | None = None, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.socket = tmp / "run" / "control.sock"
        self.state = tmp / "state"
        self.log = tmp / "maintd.log"
        cmd = [
            sys.executable,
            "-m",
            "daemon",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state),
            "--http",
            "127.0.0.1:0",
        ]
        if config is not None:
            path = tmp / "maintd.toml"
            path.write_text(config)
            cmd += ["--config", str(path)]
        self.cmd = cmd + list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: list[Line] = []

    def start(self) -> Daemon:
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        wait_for(self._ready, 15, f"maintd to serve {self.socket}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"maintd exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(self.socket))
        except OSError:
            return False
        return True

    def client(self) -> Line:
        line = Line(self.socket)
        self.clients.append(line)
        return line

    def status(self) -> dict[str, Any]:
        """The socket's ``status`` answer, on a connection of its own."""
        c = Line(self.socket)
        try:
            return c.request("status")["result"]
        finally:
            c.close()

    def wait_status(self, predicate: Any, what: str, timeout: float = 10) -> dict[str, Any]:
        """The first status that satisfies ``predicate``, polled until ``timeout``."""
        return wait_for(lambda: s if predicate(s := self.status()) else None, timeout, what)

    def maintctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "MAINTD_SOCKET": str(self.socket), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "maintctl", *args],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> int:
        for c in self.clients:
            c.close()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text()

    def http_url(self) -> str:
        """The base URL of this daemon's HTTP server (it listens on a free port)."""
        import re

        found = wait_for(lambda: re.findall(r"http on (\S+):(\d+)", self.log_text()), 10, "the http line in the log")
        host, port = found[-1]
        return f"http://{host}:{port}"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:
    made: list[Daemon] = []

    def make(*args: str, config: str | None = None, start: bool = True, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(tmp_path / f"d{len(made)}", *args, config=config, env=env)
        d.tmp.mkdir(parents=True, exist_ok=True)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.stop()
