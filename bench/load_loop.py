"""The load generators' event loop (bench/load.py): epoll, nonblocking sockets, lines in,
buffered sends; the parent's commands come on stdin, one JSON answer line each goes to stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import IO_TIMEOUT

STEP_TIMEOUT = 60.0  # every wait for one step (a cycle, a probe, a sync, a setup batch)
CHILD_MAX_SECONDS = 900.0  # a load generator left behind by a killed parent stops by itself
NOFILE_WANTED = 65536
RECV_SIZE = 1 << 20
HEAD_KEEP = 256 * 1024  # of a big line (a status snapshot), only the head is kept

now_ns = time.monotonic_ns
PROBE_RE = re.compile(rb"probe-(\d+)\b")
SEQ_RE = re.compile(rb'^\{"type":"event","seq":(\d+)')


def raise_nofile() -> None:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows (in every process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Lost(Exception):
    pass


class Conn:
    """One connection. ``skip``: the next line is big; keep only its head and its size."""

    __slots__ = ("closed", "fd", "head", "on_big", "on_line", "rbuf", "role", "size", "skip", "sock", "state", "wbuf")

    def __init__(self, sock: socket.socket, role: str, on_line: Callable[..., None]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.on_line = on_line
        self.on_big: Callable[..., None] | None = None
        self.skip = False
        self.head = bytearray()
        self.size = 0
        self.role = role
        self.closed: str | None = None
        self.state: Any = None


class Loop:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.cmd_buf = b""
        self.commands: list[dict] = []
        self.stdin_closed = False
        self.lost: list[tuple[str, str]] = []
        self.deadline = time.monotonic() + CHILD_MAX_SECONDS
        os.set_blocking(0, False)
        self.ep.register(0, select.EPOLLIN)

    def connect(self, role: str, on_line: Callable[..., None]) -> Conn:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(IO_TIMEOUT)
        s.connect(self.path)
        s.setblocking(False)
        conn = Conn(s, role, on_line)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLIN)
        return conn

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            raise Lost(f"{conn.role}: send on a closed connection ({conn.closed})")
        if conn.wbuf:
            conn.wbuf += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.drop(conn, f"send failed: {exc}")
            return
        if sent < len(data):
            conn.wbuf += data[sent:]
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(conn, f"send failed: {exc}")
            return
        del conn.wbuf[:sent]
        if not conn.wbuf:
            self.ep.modify(conn.fd, select.EPOLLIN)

    def drop(self, conn: Conn, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = reason
        self.lost.append((conn.role, reason))
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.ep.unregister(conn.fd)
        self.conns.pop(conn.fd, None)
        conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.closed = conn.closed or "closed by us"
            conn.sock.close()
        self.conns.clear()
        self.ep.close()

    def poll(self, timeout: float) -> None:
        if time.monotonic() > self.deadline:
            raise Lost(f"ran for more than {CHILD_MAX_SECONDS:.0f} s")
        for fd, ev in self.ep.poll(timeout):
            if fd == 0:
                self.read_stdin()
                continue
            conn = self.conns.get(fd)
            if conn is None:
                continue
            if ev & select.EPOLLOUT:
                self.flush(conn)
            if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.drop(conn, f"recv failed: {exc}")
                    continue
                if not data:
                    self.drop(conn, "the daemon closed the connection")
                    continue
                self.feed(conn, data, now_ns())

    def feed(self, conn: Conn, data: bytes, t: int) -> None:
        pos = 0
        n = len(data)
        while pos < n and not conn.closed:
            end = data.find(b"\n", pos)
            if conn.skip:
                stop = n if end < 0 else end
                room = HEAD_KEEP - len(conn.head)
                if room > 0:
                    conn.head += data[pos : min(stop, pos + room)]
                conn.size += stop - pos
                if end < 0:
                    return
                conn.skip = False
                head, size = bytes(conn.head), conn.size + 1
                conn.head = bytearray()
                conn.size = 0
                pos = end + 1
                assert conn.on_big is not None
                conn.on_big(conn, head, size, t)
                continue
            if end < 0:
                conn.rbuf += data[pos:]
                return
            if conn.rbuf:
                line = bytes(conn.rbuf) + data[pos:end]
                conn.rbuf = bytearray()
            else:
                line = data[pos:end]
            pos = end + 1
            conn.on_line(conn, line, t)

    def read_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.stdin_closed = True
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.ep.unregister(0)
            return
        self.cmd_buf += data
        while b"\n" in self.cmd_buf:
            line, _, self.cmd_buf = self.cmd_buf.partition(b"\n")
            if line.strip():
                self.commands.append(json.loads(line))

    def run_until(
        self, done: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT, tick: Callable[[], float] | None = None
    ) -> None:
        """Poll until ``done()``; ``tick()`` (if any) runs each turn and returns the next poll timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.stdin_closed:
                raise Lost("the parent went away")
            if time.monotonic() > deadline:
                raise Lost(f"timed out after {timeout:.0f} s waiting for {what}")
            wait = tick() if tick is not None else 0.05
            self.poll(wait)

    def serve(self, handlers: dict[str, Callable[[dict], dict]], tick: Callable[[], float] | None = None) -> int:
        """The child's main loop: run the parent's commands one at a time, answer each on stdout."""
        while True:
            while not self.commands:
                if self.stdin_closed:
                    return 0
                if time.monotonic() > self.deadline:
                    return 1
                self.poll(tick() if tick is not None else 0.05)
            cmd = self.commands.pop(0)
            name = cmd.pop("cmd")
            try:
                result = handlers[name](cmd)
                result["ok"] = True
            except Lost as exc:
                result = {"ok": False, "error": str(exc)}
            result["lost"] = self.lost[:20]
            result["lost_count"] = len(self.lost)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
            if name == "stop":
                self.close_all()
                return 0


def usage_now() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}
